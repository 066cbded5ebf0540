"""benchmarks/student_stage_pilot.py: each run is the student's own recipe started from the finished student with
only on_policy, the steps and the learning rate changed; the default rate is where the schedule ended; a
malformed --on-policy is a one-line usage error; the starting student's scores are reused only for the same file
and records."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import student_stage_pilot as pilot  # noqa: E402

BASE = {"name": "fidelity-kd_hidden-seed0", "out": "/w/students/kd_hidden/seed0", "seed": 0,
        "teacher": {"kind": "checkpoint", "path": "/w/teacher_stage2/student"},
        "student": {"preset": "tiny", "coord_init": "sinusoid"},
        "tokenizer": {"source": "file", "path": "/w/teacher_stage2/student/tokenizer.json"},
        "distill": {"steps": 30000, "lr": 0.002, "min_lr_ratio": 0.1, "warmup_steps": 500, "eval_every": 5000,
                    "kd": 0.5, "on_policy": 0.0}}


def test_stage_starts_from_the_finished_student_with_only_on_policy_steps_and_lr_changed():
    student, out = Path("/w/students/kd_hidden/seed0/student"), Path("/w/extra/student_stage_seed0_300_op0.5_lr0.0002")
    got = pilot.stage_recipe(BASE, student, 0.5, 300, 2e-4, out)
    assert got["student"] == {"preset": "tiny", "coord_init": "sinusoid", "init": "checkpoint", "checkpoint": str(student)}
    assert got["distill"] == {**BASE["distill"], "steps": 300, "warmup_steps": 30, "eval_every": 0, "on_policy": 0.5, "lr": 2e-4}
    assert (got["out"], got["teacher"], got["tokenizer"], got["seed"]) == (str(out), BASE["teacher"], BASE["tokenizer"], 0)
    assert BASE["distill"]["steps"] == 30000 and "init" not in BASE["student"]  # not modified


def test_default_lr_is_where_the_schedule_ended():
    assert pilot.ended_lr(BASE["distill"]) == pytest.approx(2e-4)
    assert pilot.ended_lr({"lr": 0.001}) == pytest.approx(1e-4)  # tiercel's min_lr_ratio default, 0.1


def test_run_name_is_one_folder_per_start_and_arguments():
    assert pilot.run_name(Path("/w/students/kd_hidden/seed0/student"), 0.5, 3000, 2e-4) == "student_stage_seed0_3000_op0.5_lr0.0002"
    assert pilot.run_name(Path("/w/extra/kd_hidden_60000_final/student"), 0.0, 300, 1e-3) == \
        "student_stage_kd_hidden_60000_final_300_op0_lr0.001"
    # another seed from the same student trains in its own folder; seed 0 keeps the carried runs' names
    assert pilot.run_name(Path("/w/extra/s_final/student"), 0.0, 3000, 2e-4, heads=False, seed=1) == \
        "student_stage_s_final_3000_op0_lr0.0002_noheads_seed1"


def test_probabilities_parse():
    assert pilot.probabilities("0,0.5") == [0.0, 0.5]
    assert pilot.probabilities("1") == [1.0]


@pytest.mark.parametrize("text", ["", "a", "0.5,1.5", "-0.1", "0.5,0.5"])
def test_bad_on_policy_is_a_usage_error(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected comma-separated probabilities in \\[0, 1\\]"):
        pilot.probabilities(text)


def test_start_scores_are_reused_only_for_the_same_file_and_records(tmp_path):
    out = tmp_path / "pilot.json"
    same = {"path": "/w/s", "sha256": "ab", "limit": 64, "max_new_tokens": 128}
    assert pilot.earlier(out, "start", same) is None  # no file yet
    out.write_text(json.dumps({"start": {**same, "headline": {"IMG_CLS": 0.9}, "average": 0.9}}))
    assert pilot.earlier(out, "start", same)["average"] == 0.9
    assert pilot.earlier(out, "start", {**same, "sha256": "cd"}) is None
    assert pilot.earlier(out, "start", {**same, "limit": 1200}) is None
    out.write_text("{not json")
    assert pilot.earlier(out, "start", same) is None


def test_divergence_is_set_only_where_given_and_named_in_the_folder():
    student, out = Path("/w/students/kd_hidden/seed0/student"), Path("/w/extra/x")
    assert "divergence" not in pilot.stage_recipe(BASE, student, 1.0, 300, 2e-4, out)["distill"]
    assert pilot.stage_recipe(BASE, student, 1.0, 300, 2e-4, out, "reverse_kl")["distill"]["divergence"] == "reverse_kl"
    assert pilot.run_name(student, 1.0, 3000, 2e-4, "reverse_kl") == "student_stage_seed0_3000_op1_lr0.0002_reverse_kl"


def test_no_heads_weighs_the_head_terms_0_and_names_the_folder():
    base = {**BASE, "distill": {**BASE["distill"], "hidden": {"vision": 0.5, "encoder": 0.5, "decoder": 0.5, "kind": "mse"},
                                "dense": {"answer": 1.0, "objects": 10.0, "cells": 4}}}
    student, out = Path("/w/students/kd_hidden/seed0/student"), Path("/w/extra/x")
    got = pilot.stage_recipe(base, student, 0.0, 300, 2e-4, out, heads=False)["distill"]
    assert got["hidden"] == {"vision": 0.0, "encoder": 0.0, "decoder": 0.0, "kind": "mse"}
    assert got["dense"] == {"answer": 0.0, "objects": 0.0, "cells": 4} and got["kd"] == 0.5
    assert pilot.stage_recipe(base, student, 0.0, 300, 2e-4, out)["distill"]["dense"] == base["distill"]["dense"]
    assert pilot.run_name(student, 0.0, 3000, 2e-4, heads=False) == "student_stage_seed0_3000_op0_lr0.0002_noheads"
