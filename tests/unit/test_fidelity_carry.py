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


def test_restore_keeps_local_work_that_is_newer_than_the_carry(tmp_path):
    work, carry, there = tmp_path / "work", tmp_path / "carry", tmp_path / "there"
    a_run(work)
    fc.save(work, carry)
    checkpoint(there / "teacher", 3, b"three")
    (there / "teacher" / KEY_FILE).write_text("abc")
    lines = fc.restore(carry, there)
    assert "teacher: kept the local run (step 3)" in lines
    assert (there / "teacher" / "checkpoints" / "latest").read_text() == "step_000003\n"
    assert not (there / "teacher" / "checkpoints" / "step_000002").exists()


def test_restore_keeps_a_local_run_trained_from_other_settings(tmp_path):
    work, carry, there = tmp_path / "work", tmp_path / "carry", tmp_path / "there"
    a_run(work)
    fc.save(work, carry)
    (there / "teacher").mkdir(parents=True)
    (there / "teacher" / KEY_FILE).write_text("other")
    assert "teacher: kept the local run (trained from other settings than the carried one)" in fc.restore(carry, there)
    assert not (there / "teacher" / "checkpoints").exists()


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
