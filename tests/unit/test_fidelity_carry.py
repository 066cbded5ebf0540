"""benchmarks/fidelity_carry.py: a fidelity run saved on one machine resumes in another folder, losing nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fidelity_carry as fc  # noqa: E402
from fidelity import Stages  # noqa: E402
from synth_runs import KEY_FILE  # noqa: E402


def checkpoint(run: Path, step: int, payload: bytes) -> None:
    ckpt = run / "checkpoints" / f"step_{step:06d}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(payload)
    (ckpt / "trainer_state.pt").write_bytes(payload[::-1])
    (run / "checkpoints" / "latest").write_text(ckpt.name + "\n")


def a_run(work: Path) -> None:
    """A work folder as fidelity.py leaves it mid-teacher: data and a finished student stage, a teacher at step 2."""
    stages = Stages(work / "stages")
    stages.run("data", {"n": 1}, lambda: {"folder": str(work / "data")})
    stages.run("train/ce/seed0", {"out": str(work / "ce")}, lambda: {"student": str(work / "ce" / "student")})
    (work / "data").mkdir()
    (work / "data" / "train.json").write_text("[]")
    teacher = work / "teacher"
    teacher.mkdir()
    (teacher / KEY_FILE).write_text("abc")
    (teacher / "metrics.jsonl").write_text(json.dumps({"step": 2, "out": str(teacher)}) + "\n")
    checkpoint(teacher, 1, b"one")
    checkpoint(teacher, 2, b"two")
    ce = work / "ce"
    (ce / "student").mkdir(parents=True)
    (ce / KEY_FILE).write_text("def")
    (ce / "student" / "model.safetensors").write_bytes(b"ce")


def test_stage_keys_do_not_depend_on_the_work_folder(tmp_path):
    a, b = Stages(tmp_path / "a" / "stages"), Stages(tmp_path / "elsewhere" / "b" / "stages")
    assert a.key({"out": str(tmp_path / "a" / "teacher")}) == b.key({"out": str(tmp_path / "elsewhere" / "b" / "teacher")})
    assert a.key({"out": str(tmp_path / "a" / "teacher")}) != a.key({"out": str(tmp_path / "a" / "student")})


def test_a_carried_run_resumes_in_another_folder_from_its_newest_checkpoint(tmp_path):
    work, carry, there = tmp_path / "work", tmp_path / "carry", tmp_path / "other" / "work"
    a_run(work)
    manifest = fc.save(work, carry)
    assert manifest["runs"] == {"ce": {"finished": True}, "teacher": {"finished": False, "step": 2}}
    assert "stages/data.json" not in manifest["files"] and "data/train.json" not in manifest["files"]
    assert "teacher/checkpoints/step_000001/model.safetensors" not in manifest["files"]  # only the newest
    assert str(work) not in (carry / "stages" / "train__ce__seed0.json").read_text()

    assert fc.restore(carry, there) == ["ce: finished from the carry", "teacher: step 2 from the carry"]
    assert (there / "teacher" / "checkpoints" / "latest").read_text() == "step_000002\n"
    assert (there / "teacher" / "checkpoints" / "step_000002" / "model.safetensors").read_bytes() == b"two"
    stored = json.loads((there / "stages" / "train__ce__seed0.json").read_text())
    assert stored["result"] == {"student": str(there / "ce" / "student")}
    assert stored["key"] == json.loads((work / "stages" / "train__ce__seed0.json").read_text())["key"]
    assert json.loads((there / "teacher" / "metrics.jsonl").read_text())["out"] == str(there / "teacher")
    assert not (there / "stages" / "data.json").exists()  # the data is made again from its seed


@pytest.mark.parametrize("local", ["run", "stage"])
def test_restore_writes_nothing_into_a_folder_that_holds_work(tmp_path, local):
    """A local run (newer, older or from other settings, or one started over with --fresh) is never mixed with the
    carry: restore leaves the folder as it is and says why."""
    work, carry, there = tmp_path / "work", tmp_path / "carry", tmp_path / "there"
    a_run(work)
    fc.save(work, carry)
    if local == "run":
        checkpoint(there / "teacher", 1, b"fresh")
        (there / "teacher" / KEY_FILE).write_text("abc")
    else:
        Stages(there / "stages").run("train/ce/seed0", {"out": "x"}, lambda: {"student": "x"})
    before = sorted(p.relative_to(there) for p in there.rglob("*"))
    lines = fc.restore(carry, there)
    what = "a training run (teacher)" if local == "run" else "a finished stage (stages/train__ce__seed0.json)"
    assert lines == [f"not restored: {there} already holds {what}; the run goes on from it "
                     "(move the folder away to start from the carry)"]
    assert sorted(p.relative_to(there) for p in there.rglob("*")) == before


def test_save_writes_latest_for_the_checkpoint_it_copied(tmp_path, monkeypatch):
    """The trainer may publish a newer checkpoint while the carry is saved: the carried `latest` names the one
    copied, not whatever the local pointer says by then; half-written files are left out."""
    work, carry = tmp_path / "work", tmp_path / "carry"
    a_run(work)
    (work / "teacher" / "checkpoints" / ".step_000003.tmp-123-ab").mkdir()
    (work / "teacher" / "checkpoints" / ".step_000003.tmp-123-ab" / "model.safetensors").write_bytes(b"half")
    (work / "stages" / ".x.json.tmp-123-cd").write_text("{}")
    chosen = work / "teacher" / "checkpoints" / "step_000001"
    monkeypatch.setattr(fc, "newest", lambda run: chosen if run.name == "teacher" else None)
    manifest = fc.save(work, carry)
    assert manifest["runs"]["teacher"] == {"finished": False, "step": 1}
    assert (carry / "teacher" / "checkpoints" / "latest").read_text() == "step_000001\n"
    assert not [f for f in manifest["files"] if ".tmp-" in f]


def test_restore_refuses_a_latest_that_names_a_checkpoint_not_carried(tmp_path):
    work, carry, there = tmp_path / "work", tmp_path / "carry", tmp_path / "there"
    a_run(work)
    fc.save(work, carry)
    pointer = carry / "teacher" / "checkpoints" / "latest"
    pointer.write_text("step_000009\n")
    manifest = json.loads((carry / fc.MANIFEST).read_text())
    manifest["files"]["teacher/checkpoints/latest"] = {"bytes": pointer.stat().st_size, "sha256": fc.sha256(pointer)}
    (carry / fc.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match=r"checkpoints/latest: names step_000009, which the carry does not hold"):
        fc.restore(carry, there)
    assert not there.exists()


def test_a_damaged_carry_is_refused_before_anything_is_written(tmp_path):
    work, carry, there = tmp_path / "work", tmp_path / "carry", tmp_path / "there"
    a_run(work)
    fc.save(work, carry)
    (carry / "teacher" / "checkpoints" / "step_000002" / "model.safetensors").write_bytes(b"tw0")
    with pytest.raises(SystemExit, match=r"step_000002/model.safetensors: missing or not what .*MANIFEST.json lists"):
        fc.restore(carry, there)
    assert not there.exists()


def test_save_replaces_a_carry_but_nothing_else(tmp_path):
    work, carry = tmp_path / "work", tmp_path / "carry"
    a_run(work)
    fc.save(work, carry)
    checkpoint(work / "teacher", 3, b"three")
    assert fc.save(work, carry)["runs"]["teacher"]["step"] == 3
    assert not (carry / "teacher" / "checkpoints" / "step_000002").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit, match="mine: exists and is not a carry"):
        fc.save(work, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
