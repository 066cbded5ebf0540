"""benchmarks/teacher_stage_pilot.py: the new teacher stage is the YAML's last one with only the task weights, the
steps and the starting checkpoint changed, and a malformed --weight is a one-line usage error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import teacher_stage_pilot as pilot  # noqa: E402

LAST = {"name": "fidelity-teacher-2", "out": "/w/teacher_stage2", "seed": 0,
        "student": {"init": "checkpoint", "checkpoint": "/w/teacher/student"},
        "tokenizer": {"source": "file", "path": "/w/teacher/student/tokenizer.json"},
        "data": {"train": "/w/data/train.json", "max_answer_tokens": 96, "quad_order": "canonical",
                 "task_weights": {"REG_VG": 4, "PIX_CHG": 4}},
        "distill": {"steps": 6000, "lr": 3e-4, "warmup_steps": 100, "eval_every": 5000, "batch_size": 16}}


def test_stage_starts_from_the_finished_teacher_with_only_weights_and_steps_changed():
    teacher, out = Path("/w/teacher_stage2/student"), Path("/w/extra/teacher_stage3_500_PIX_CHG12")
    got = pilot.stage_recipe(LAST, teacher, {"PIX_CHG": 12.0}, 500, out)
    assert got["student"] == {"init": "checkpoint", "checkpoint": str(teacher)}
    assert got["tokenizer"] == {"source": "file", "path": str(teacher / "tokenizer.json")}
    assert got["data"] == {**LAST["data"], "task_weights": {"REG_VG": 4, "PIX_CHG": 12.0}}
    assert got["distill"] == {**LAST["distill"], "steps": 500, "warmup_steps": 50, "eval_every": 0}
    assert (got["out"], got["seed"]) == (str(out), 0)
    assert LAST["data"]["task_weights"]["PIX_CHG"] == 4 and LAST["distill"]["steps"] == 6000  # not modified


def test_run_name_is_one_folder_per_set_of_arguments():
    assert pilot.run_name({"PIX_CHG": 12.0, "PIX_SEG": 6.0}, 6000) == "teacher_stage3_6000_PIX_CHG12_PIX_SEG6"
    assert pilot.run_name({"PIX_CHG": 12.0}, 6000, stage=4) == "teacher_stage4_6000_PIX_CHG12"  # after a third stage


def test_weight_parses_task_and_value():
    assert pilot.weight("PIX_CHG=12") == ("PIX_CHG", 12.0)


@pytest.mark.parametrize("text, says", [("PIX_CHG", "expected TASK=W"), ("CHANGE=3", "expected TASK=W"),
                                         ("PIX_CHG=x", "a number >= 0"), ("PIX_CHG=-1", "a number >= 0")])
def test_bad_weight_is_a_usage_error(text, says):
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        pilot.weight(text)


def test_no_heads_weighs_dense_0_and_names_the_folder():
    last = {**LAST, "distill": {**LAST["distill"], "dense": {"answer": 1.0, "objects": 10.0, "cells": 4}}}
    teacher, out = Path("/w/teacher_stage2/student"), Path("/w/extra/x")
    got = pilot.stage_recipe(last, teacher, {"PIX_CHG": 12.0}, 500, out, heads=False)["distill"]
    assert got["dense"] == {"answer": 0.0, "objects": 0.0, "cells": 4} and "hidden" not in got  # the teacher has no teacher
    assert pilot.stage_recipe(last, teacher, {"PIX_CHG": 12.0}, 500, out)["distill"]["dense"] == last["distill"]["dense"]
    assert pilot.run_name({"PIX_CHG": 12.0}, 6000, heads=False) == "teacher_stage3_6000_PIX_CHG12_noheads"
