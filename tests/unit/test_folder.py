"""tiercel.runtime.folder and .jsonl: a folder through a fake model, one JSON line per image, resumable, bad files
recorded and skipped. The fake answers each image with the number painted in its first pixel, so a line shows which
image it answered."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tiercel.errors import ConfigError
from tiercel.runtime.folder import list_images, run_folder
from tiercel.tasks.results import Count


class FakeModel:
    def __init__(self, interrupt_at: int | None = None, delay: float = 0.0):
        self.seen: list[int] = []
        self.interrupt_at, self.delay = interrupt_at, delay

    def run(self, image, task, text=None, **generation):
        if len(self.seen) == self.interrupt_at:
            raise KeyboardInterrupt
        time.sleep(self.delay)
        self.seen.append(int(image[0, 0, 0]))
        return Count(value=int(image[0, 0, 0]))


def paint(path, number: int) -> None:
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    rgb[0, 0, 0] = number
    Image.fromarray(rgb).save(path)


@pytest.fixture()
def photos(tmp_path):
    """img_00.png .. img_05.png painted 0..5, plus a text file and a hidden image that are not read."""
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(6):
        paint(root / f"img_{i:02d}.png", i)
    (root / "notes.txt").write_text("not an image")
    paint(root / ".hidden.png", 99)
    return root


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_image_is_answered_once_in_order(photos, tmp_path):
    model, out = FakeModel(), tmp_path / "results.jsonl"
    summary = run_folder(model, photos, out, task="IMG_CT", text="ship")
    assert model.seen == [0, 1, 2, 3, 4, 5]
    got = lines(out)
    assert [line["image"] for line in got] == [str(photos / f"img_{i:02d}.png") for i in range(6)]
    assert [list(line)[:4] for line in got] == [["image", "task", "text", "result"]] * 6
    assert [line["result"]["value"] for line in got] == [0, 1, 2, 3, 4, 5]
    assert all(line["task"] == "IMG_CT" and line["text"] == "ship" and line["seconds"] >= 0 for line in got)
    assert summary.to_dict() | {"seconds": 0, "images_per_s": 0} == {
        "images": 6, "done": 6, "skipped": 0, "failed": 0, "seconds": 0, "images_per_s": 0, "out": str(out)}


def test_a_rerun_skips_what_is_done_and_keeps_those_lines_byte_identical(photos, tmp_path):
    out = tmp_path / "results.jsonl"
    run_folder(FakeModel(), [photos / f"img_{i:02d}.png" for i in range(3)], out, task="IMG_CT", text="ship")
    before = out.read_bytes()
    model = FakeModel()
    summary = run_folder(model, photos, out, task="IMG_CT", text="ship")
    assert model.seen == [3, 4, 5] and (summary.done, summary.skipped) == (3, 3)
    assert out.read_bytes().startswith(before) and len(lines(out)) == 6
    other = FakeModel()  # another text is another question: nothing is skipped
    assert run_folder(other, photos, out, task="IMG_CT", text="car").skipped == 0 and len(other.seen) == 6


@pytest.mark.parametrize("tail", [b'{"image": "photos/img_05.png", "task": "IM', b'{"ima', b"\0" * 40])
def test_a_truncated_last_line_is_cut_and_its_image_answered_again(photos, tmp_path, tail):
    out = tmp_path / "results.jsonl"
    run_folder(FakeModel(), photos, out, task="IMG_CT", text="ship")
    good = b"".join(out.read_bytes().splitlines(keepends=True)[:5])
    out.write_bytes(good + tail)  # a crash while writing the sixth line (or zeros a power cut left)
    model = FakeModel()
    summary = run_folder(model, photos, out, task="IMG_CT", text="ship")
    assert model.seen == [5] and (summary.skipped, summary.done) == (5, 1)
    assert out.read_bytes().startswith(good) and [line["result"]["value"] for line in lines(out)] == [0, 1, 2, 3, 4, 5]


def test_a_corrupt_file_is_one_error_line_and_one_stderr_line_and_the_rest_run(photos, tmp_path, capsys):
    (photos / "img_02b.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "results.jsonl"
    model = FakeModel()
    summary = run_folder(model, photos, out, task="IMG_CT", text="ship")
    assert model.seen == [0, 1, 2, 3, 4, 5] and (summary.done, summary.failed) == (6, 1)
    bad = [line for line in lines(out) if "error" in line]
    assert bad == [{"image": str(photos / "img_02b.png"), "task": "IMG_CT", "text": "ship",
                    "error": f"{photos / 'img_02b.png'}: cannot read image (cannot identify image file "
                             f"'{photos / 'img_02b.png'}')"}]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: {bad[0]['error']} (recorded in {out})"]
    again = run_folder(FakeModel(), photos, out, task="IMG_CT", text="ship")  # errors are retried by default
    assert (again.skipped, again.failed) == (6, 1)
    assert run_folder(FakeModel(), photos, out, task="IMG_CT", text="ship", retry_errors=False).skipped == 7


@pytest.mark.parametrize("prefetch", [0, 3])
def test_an_exception_in_the_loader_for_one_image_does_not_stop_the_run(photos, tmp_path, prefetch):
    from tiercel.data.images import load_image

    def load(path):
        if path.endswith("img_03.png"):
            raise RuntimeError("decoder\nexploded")
        return load_image(path)

    out, model = tmp_path / "results.jsonl", FakeModel()
    summary = run_folder(model, photos, out, task="IMG_CT", text="ship", load=load, prefetch=prefetch)
    assert model.seen == [0, 1, 2, 4, 5] and summary.failed == 1
    assert lines(out)[3]["error"] == f"{photos / 'img_03.png'}: cannot read image (RuntimeError: decoder exploded)"


def test_the_prefetch_queue_never_holds_more_than_its_size(tmp_path):
    for i in range(30):
        paint(tmp_path / f"f{i:02d}.png", i)
    loaded, answered, ahead = [], [], []

    def load(path):  # runs in the prefetch thread: how far ahead of the model is it?
        ahead.append(len(loaded) - len(answered))
        loaded.append(path)
        return np.full((8, 8, 3), int(path[-6:-4]), dtype=np.uint8)

    def answer(model, image):
        answered.append(int(image[0, 0, 0]))
        time.sleep(0.005)  # slower than the loader: the queue fills up
        return {"n": int(image[0, 0, 0])}

    run_folder(None, str(tmp_path / "*.png"), tmp_path / "r.jsonl", task="IMG_CAP", load=load, answer=answer, prefetch=3)
    assert answered == list(range(30))
    assert 3 <= max(ahead) <= 4  # 3 in the queue, one in the loader's hand waiting for room


def test_ctrl_c_mid_run_leaves_a_valid_jsonl_and_no_thread(photos, tmp_path):
    out = tmp_path / "results.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_folder(FakeModel(interrupt_at=2), photos, out, task="IMG_CT", text="ship")
    assert [line["result"]["value"] for line in lines(out)] == [0, 1] and out.read_bytes().endswith(b"\n")
    assert not any(t.name == "tiercel-prefetch" and t.is_alive() for t in threading.enumerate())
    model = FakeModel()
    assert run_folder(model, photos, out, task="IMG_CT", text="ship").skipped == 2 and model.seen == [2, 3, 4, 5]


def test_an_overwrite_run_replaces_the_results_only_when_it_ends(photos, tmp_path):
    out = tmp_path / "results.jsonl"
    run_folder(FakeModel(), photos, out, task="IMG_CT", text="ship")
    before = out.read_bytes()
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in a run that starts over: the old results stay
        run_folder(FakeModel(interrupt_at=2), photos, out, task="IMG_CT", text="ship", overwrite=True)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["photos", "results.jsonl"]
    model = FakeModel()
    summary = run_folder(model, [photos / "img_00.png", photos / "img_01.png"], out, task="IMG_CT", text="ship",
                         overwrite=True)
    assert model.seen == [0, 1] and summary.skipped == 0  # started over, and only its lines remain
    assert [line["result"]["value"] for line in lines(out)] == [0, 1]
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    real = tmp_path / "kept" / "r.jsonl"  # a results file reached through a link: its target gets the new lines
    real.parent.mkdir()
    real.write_bytes(out.read_bytes())
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    run_folder(FakeModel(), [photos / "img_03.png"], link, task="IMG_CT", text="ship", overwrite=True)
    assert link.is_symlink() and [line["result"]["value"] for line in lines(real)] == [3]
    assert sorted(p.name for p in real.parent.iterdir()) == ["r.jsonl"]  # no temporary file left


def test_an_overwrite_whose_replace_fails_leaves_the_old_file_and_no_temporary(photos, tmp_path, monkeypatch):
    import os

    out = tmp_path / "results.jsonl"
    run_folder(FakeModel(), photos, out, task="IMG_CT", text="ship")
    before = out.read_bytes()

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_folder(FakeModel(), photos, out, task="IMG_CT", text="ship", overwrite=True)
    monkeypatch.undo()
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["photos", "results.jsonl"]
    assert run_folder(FakeModel(), photos, out, task="IMG_CT", text="ship").skipped == 6  # the lock was let go


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_dangling_link_in_the_folder_is_an_error_line_not_skipped(photos, tmp_path):
    (photos / "img_09.png").symlink_to(photos / "gone.png")
    out = tmp_path / "results.jsonl"
    summary = run_folder(FakeModel(), photos, out, task="IMG_CT", text="ship")
    assert (summary.images, summary.failed) == (7, 1)
    assert lines(out)[-1]["error"] == f"{photos / 'img_09.png'}: image not found"


def test_globs_and_folders_list_images_only(photos):
    (photos / "sub").mkdir()
    paint(photos / "sub" / "deep.JPG", 7)
    assert list_images(str(photos / "img_0[1-3].png")) == [str(photos / f"img_0{i}.png") for i in (1, 2, 3)]
    assert list_images(photos)[-1] == str(photos / "img_05.png") and len(list_images(photos)) == 6
    assert list_images(photos, recursive=True)[-1] == str(photos / "sub" / "deep.JPG")
    assert list_images(f"{photos}/**/*.JPG") == [str(photos / "sub" / "deep.JPG")]


@pytest.mark.parametrize("spec, message", [
    ("nowhere", "--images nowhere: no such folder, and no file matches it as a glob pattern; give a folder of "
                "images or a pattern such as 'photos/*.png'"),
    ("photos/*.txt", "--images photos/*.txt: matches no image files (.png, .jpg, .jpeg, .tif, .tiff, .bmp, .webp)"),
])
def test_a_path_that_names_no_images_is_one_line(photos, monkeypatch, spec, message):
    monkeypatch.chdir(photos.parent)
    with pytest.raises(ConfigError) as err:
        list_images(spec)
    assert str(err.value) == message


@pytest.mark.parametrize("content", [b"id,label\n1,ship\n", b'{"image": "a.png"}\n', b"\x89PNG\r\n\x1a\n\0\0",
                                     b'{"image": "a.png", "task": "IMG_CAP", "result": {}}\nmy notes\n'])
def test_an_out_that_is_not_a_tiercel_results_file_is_refused_and_left_as_it_is(photos, tmp_path, content):
    out = tmp_path / "mine.jsonl"
    out.write_bytes(content)
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=r"^--out .*mine.jsonl: line \d is not a tiercel result .* choose another path$"):
            run_folder(FakeModel(), photos, out, task="IMG_CT", text="ship", overwrite=overwrite)
    assert out.read_bytes() == content


def test_a_task_that_needs_more_than_one_image_is_refused_before_the_out_file_exists(photos, tmp_path):
    out = tmp_path / "results.jsonl"
    with pytest.raises(ConfigError, match=r"^--task PIX_CHG: needs two images"):
        run_folder(FakeModel(), photos, out, task="PIX_CHG")
    with pytest.raises(ConfigError, match=r"^--task REG_DET_HBB: needs --text"):
        run_folder(FakeModel(), photos, out, task="REG_DET_HBB")
    assert not out.exists()


def test_two_runs_never_append_to_one_file(tmp_path):
    from tiercel.runtime.jsonl import ResultsFile

    out = tmp_path / "results.jsonl"
    with ResultsFile(out), pytest.raises(ConfigError, match="another tiercel run is writing it"):
        ResultsFile(out)


def test_a_run_that_locks_a_file_an_overwrite_just_replaced_appends_to_the_new_one(tmp_path, monkeypatch):
    """The other run's --overwrite renames its new file into place and lets go of the old one's lock between this
    run's open and its lock: the lines must go to the file that is in the folder, not to the unlinked one."""
    from tiercel.runtime import jsonl

    out = tmp_path / "results.jsonl"
    out.write_text('{"image": "a.png", "task": "IMG_CT", "result": 1}\n')
    real, calls = jsonl._lock, []

    def lock(file, path, option):
        if not calls:  # the other run's close(): a new file renamed over the one this run has open
            new = tmp_path / ".new"
            new.write_text('{"image": "b.png", "task": "IMG_CT", "result": 2}\n')
            new.replace(out)
        calls.append(path)
        real(file, path, option)

    monkeypatch.setattr(jsonl, "_lock", lock)
    with jsonl.ResultsFile(out) as results:
        assert [x["image"] for x in results.lines] == ["b.png"]
        results.append({"image": "c.png", "task": "IMG_CT", "result": 3})
    assert len(calls) == 2
    assert [json.loads(x)["image"] for x in out.read_text().splitlines()] == ["b.png", "c.png"]


def test_overwrite_says_a_file_that_is_not_tiercel_results_is_not_replaced(tmp_path):
    from tiercel.errors import ConfigError
    from tiercel.runtime.jsonl import ResultsFile

    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"mine": 1}\n')
    with pytest.raises(ConfigError) as err:
        ResultsFile(notes, overwrite=True)
    assert str(err.value).endswith("so tiercel does not replace it, even with --overwrite; choose another path")
    assert notes.read_text() == '{"mine": 1}\n'
