"""`tiercel run BUNDLE --images DIR --out results.jsonl` through main(): the tiny bundle answers a folder as it
answers each image alone, a bad file is exit 3, Ctrl-C is 130 with a valid file, bad paths are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.unit.test_folder import FakeModel, paint
from tiercel.cli import main


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        paint(root / f"img_{i}.png", i)
    return root


def test_a_folder_through_the_tiny_bundle_matches_single_runs_and_a_bad_file_exits_3(bundle, photos, tmp_path, capsys):
    import tiercel.runtime as rt

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(photos / f"img_{i}.png")
    (photos / "img_1b.jpg").write_bytes(b"broken")
    out = tmp_path / "results.jsonl"
    args = ["run", str(bundle), "--images", str(photos), "--task", "IMG_CAP", "--max-new-tokens", "4", "--out", str(out)]
    assert main(args) == 3
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert {k: summary[k] for k in ("images", "done", "skipped", "failed")} == {"images": 4, "done": 3, "skipped": 0, "failed": 1}
    assert captured.err.count("warning: ") == 2 and "img_1b.jpg: cannot read image" in captured.err
    got = {line["image"]: line for line in map(json.loads, out.read_text().splitlines())}
    model = rt.load(bundle)
    for i in range(3):
        path = str(photos / f"img_{i}.png")
        assert got[path]["result"] == model.run(path, "IMG_CAP", max_new_tokens=4).to_dict()
    photos.joinpath("img_1b.jpg").unlink()
    assert main(args) == 0  # the rerun skips all three: nothing left to do is success
    assert json.loads(capsys.readouterr().out)["skipped"] == 3


@pytest.mark.parametrize("what", [["--task", "REG_DET_HBB", "--text", "ship"], ["--all", "--text", "ship"]])
def test_a_batched_folder_writes_the_lines_of_one_image_at_a_time(bundle, photos, tmp_path, capsys, monkeypatch, what):
    """--batch 2 answers the readable images two at a time (run_batch); the lines are the unbatched run's, in
    listing order, the unreadable file's error line in its place."""
    from tiercel.runtime.model import Model

    sizes, run_batch = [], Model.run_batch
    monkeypatch.setattr(Model, "run_batch", lambda self, items, **kw: sizes.append(len(items)) or run_batch(self, items, **kw))
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (64, 80 + 8 * i, 3), dtype=np.uint8)).save(photos / f"img_{i}.png")
    (photos / "img_1b.jpg").write_bytes(b"broken")
    lines = {}
    for batch in ("1", "2"):
        out = tmp_path / f"b{batch}.jsonl"
        args = ["run", str(bundle), "--images", str(photos), *what, "--max-new-tokens", "6", "--out", str(out)]
        assert main([*args, "--batch", batch]) == 3
        assert json.loads(capsys.readouterr().out)["failed"] == 1
        lines[batch] = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in out.read_text().splitlines()]
    assert lines["2"] == lines["1"] and len(lines["1"]) == 6 and "error" in lines["1"][2]
    per_image = 1 if "--task" in what else len(lines["1"][0]["result"])
    assert sizes == [2 * per_image, 2 * per_image]  # images 0-1 and 2-3 batched (the bad file between); 4 alone
    assert main(["run", str(bundle), "--images", str(photos), *what, "--batch", "0", "--out", str(tmp_path / "z.jsonl")]) == 1
    assert capsys.readouterr().err == "error: --batch: needs 1 or more images per batch (got 0)\n"


def test_a_folder_of_scenes_is_tiled_through_the_answer_hook(bundle, tmp_path):
    """The per-image step of run_folder takes Model.run_scene: each scene tiled, a corrupt one an error line."""
    pytest.importorskip("rasterio")
    import tiercel.runtime as rt
    from tiercel.runtime.folder import run_folder

    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "c.tif").write_bytes(b"not a raster")
    model, out = rt.load(bundle), tmp_path / "scenes.jsonl"

    def tiled(m, path):
        return m.run_scene(path, "REG_DET_HBB", text="ship", tile=128, overlap=16, max_new_tokens=4).to_dict()

    summary = run_folder(model, str(tmp_path / "*.*"), out, task="REG_DET_HBB", text="ship", load=lambda p: p, answer=tiled)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert (summary.done, summary.failed) == (2, 1)
    assert [line["result"] for line in got[:2]] == [tiled(model, str(tmp_path / f"{n}.png")) for n in "ab"]
    assert got[2]["error"].startswith(f"{tmp_path / 'c.tif'}: cannot read")


def test_a_folder_of_scenes_from_the_cli_is_tiled(bundle, tmp_path, capsys):
    """--images with --tile: every scene in tiles, each line what Model.run_scene gives for that scene."""
    pytest.importorskip("rasterio")
    import tiercel.runtime as rt

    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    out = tmp_path / "scenes.jsonl"
    assert main(["run", str(bundle), "--images", str(tmp_path / "*.png"), "--task", "REG_DET_HBB", "--text", "ship",
                 "--tile", "128", "--overlap", "16", "--max-new-tokens", "4", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 2
    model = rt.load(bundle)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = [model.run_scene(str(tmp_path / f"{n}.png"), "REG_DET_HBB", text="ship", tile=128, overlap=16,
                            max_new_tokens=4).to_dict() for n in "ab"]
    assert [line["result"] for line in got] == want and want[0]["scene"]["tiles"] == 6  # 3 columns x 2 rows


def test_ctrl_c_exits_130_and_leaves_the_lines_written(monkeypatch, photos, tmp_path, capsys):
    import tiercel.evaluate

    monkeypatch.setattr(tiercel.evaluate, "open_predictor", lambda *a, **k: FakeModel(interrupt_at=2))
    out = tmp_path / "results.jsonl"
    assert main(["run", "unused", "--images", str(photos), "--task", "IMG_CAP", "--out", str(out)]) == 130
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().splitlines()[-1] == "aborted"
    assert [json.loads(line)["result"]["value"] for line in out.read_text().splitlines()] == [0, 1]


@pytest.mark.parametrize("extra, message", [
    (["--image", "{img}/img_0.png"], "--images: runs a folder; drop --image, --image2 and --region (or run one image with --image)"),
    (["--region", "[1, 2, 3, 4]"], "--images: runs a folder; drop --image, --image2 and --region (or run one image with --image)"),
    (["--out", "{tmp}/a.jsonl", "--images", "{tmp}/none"],
     "--images {tmp}/none: no such folder, and no file matches it as a glob pattern; give a folder of images or a "
     "pattern such as 'photos/*.png'"),
    (["--out", "{tmp}/notes.txt"], "--out {tmp}/notes.txt: line 1 is not a tiercel result "
     '({"image": ..., "task": ..., "result" or "error": ...}), so tiercel does not append to it; choose another path'),
    ([], "--out: --images and --out go together (e.g. --images photos/ --out results.jsonl)"),
    (["--geojson", "{tmp}/a.geojson", "--tile", "768", "--out", "{tmp}/a.jsonl"],
     "--geojson: not with --images (one GeoJSON per scene: run each with --image)"),
    (["--overlap", "64", "--out", "{tmp}/a.jsonl"], "--overlap: only with --tile (tiled scenes); add e.g. --tile 768"),
    (["--tile", "64", "--overlap", "64", "--out", "{tmp}/a.jsonl"],
     "--tile/--overlap: needs tile > overlap >= 0 (got tile 64, overlap 64); e.g. --tile 768 --overlap 128"),
])
def test_bad_folder_arguments_are_one_line_before_the_model_loads(photos, tmp_path, capsys, extra, message):
    (tmp_path / "notes.txt").write_text("mine\n")
    fill = {"{img}": str(photos), "{tmp}": str(tmp_path)}
    args = ["run", str(tmp_path / "no-bundle"), "--images", str(photos), "--task", "IMG_CAP", *extra]
    for old, new in fill.items():
        args, message = [a.replace(old, new) for a in args], message.replace(old, new)
    assert main(args) == 1
    assert capsys.readouterr().err == f"error: {message}\n"
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and not (tmp_path / "a.jsonl").exists()


@pytest.mark.parametrize("extra, message", [
    ([], "--image or --images: give one (an image file, or a folder or glob pattern of images)"),
    (["--out", "r.jsonl"], "--images: --images and --out go together (e.g. --images photos/ --out results.jsonl)"),
])
def test_run_needs_an_image_or_a_folder(capsys, extra, message):
    assert main(["run", "no-bundle", "--task", "IMG_CAP", *extra]) == 1
    assert capsys.readouterr().err == f"error: {message}\n"
