"""`tiercel data synth` output passes `tiercel data validate`; bad files exit 1 with a one-line summary."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def test_synth_output_passes_validate(tmp_path):
    out = tmp_path / "synth"
    done = run_cli("data", "synth", "--out", str(out), "--n", "42", "--size", "64", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}: 42 records" in " ".join(done.stdout.split())
    meta = json.loads((out / "meta.json").read_text())
    for split in ("train", "val", "test"):
        checked = run_cli("data", "validate", str(out / f"{split}.json"), "--root", str(out))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        n = sum(meta["counts"][split].values())
        assert f"all {n} records are valid" in checked.stdout
        assert "PIX_CHG" in checked.stdout  # the per-task table
    again = run_cli("data", "synth", "--out", str(out), "--n", "42", "--size", "64")
    assert again.returncode == 1 and again.stderr.strip().endswith("pass --overwrite or choose another --out")


def _bad_file(tmp_path, n_missing: int):
    record = {
        "conversations": [{"role": "user", "content": "<image>\n[IMG_CLS]\nClassify the image.\nUse one or a few words."},
                          {"role": "assistant", "content": "airport"}],
        "images": ["nowhere.png"],
        "crop": [],
    }  # fmt: skip
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(record) for _ in range(n_missing)) + "\n")
    return path


def test_validate_bad_file_exits_1_with_one_line(tmp_path):
    path = _bad_file(tmp_path, 60)
    report = tmp_path / "report.json"
    done = run_cli("data", "validate", str(path), "--root", str(tmp_path), "--json", str(report))
    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    assert errors == [f"error: {path}: 60 of 60 records are bad (missing image: 60)"]
    assert "record 49: missing image" in done.stdout and "record 50:" not in done.stdout
    assert "... and 10 more problems" in done.stdout
    saved = json.loads(report.read_text())
    assert saved["n_bad"] == 60 and len(saved["problems"]) == 60


def test_validate_limit(tmp_path):
    done = run_cli("data", "validate", str(_bad_file(tmp_path, 60)), "--limit", "5")
    assert done.returncode == 1
    assert done.stderr.strip().endswith("5 of 5 records are bad (missing image: 5)")


def test_validate_an_empty_file_exits_1_and_flags_what_cannot_be_trained_on(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    done = run_cli("data", "validate", str(empty))
    assert (done.returncode, done.stderr) == (
        1, f"error: {empty}: holds no records; a Falcon_SFT file is a JSON list or JSONL of records\n")
    (tmp_path / "notes.png").write_text("not an image")
    user = {"role": "user", "content": "<image>\n[IMG_CLS]\nClassify the image.\nUse one or a few words."}
    records = [{"conversations": [user], "images": ["notes.png"]},
               {"conversations": [user, {"role": "assistant", "content": "airport"}], "images": ["../x.png"]}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    done = run_cli("data", "validate", str(path))
    assert done.returncode == 1
    assert done.stderr == (f"error: {path}: 2 of 2 records are bad (image outside root: 1, no answer: 1, "
                           "unreadable image: 1)\n")
