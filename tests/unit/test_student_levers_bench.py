"""benchmarks/student_levers.py compares a lever only with baselines distilled from the same teacher file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import student_levers  # noqa: E402


def run_folder(path: Path, teacher: Path) -> Path:
    path.mkdir(parents=True)
    (path / "recipe.yaml").write_text(f"teacher:\n  path: {teacher}\n")
    return path


def test_a_run_is_named_name_equals_folder():
    assert student_levers.named_run("wide=some/run") == ("wide", Path("some/run"))
    for text in ("wide", "=some/run", "wide="):
        with pytest.raises(argparse.ArgumentTypeError, match="expected NAME=RUN_FOLDER"):
            student_levers.named_run(text)


def test_a_lever_of_another_teacher_stops_before_any_scoring(tmp_path, monkeypatch, capsys):
    stage3, stage2 = tmp_path / "teacher_stage3" / "student", tmp_path / "teacher_stage2" / "student"
    bases = {n: (run_folder(tmp_path / n, stage3), tmp_path / n / "p.json.gz") for n in ("kd_hidden/seed0", "kd_hidden/seed1")}
    monkeypatch.setattr(student_levers, "baselines", lambda finished: bases)
    lever = run_folder(tmp_path / "lever", stage2)
    monkeypatch.setattr(student_levers, "score", lambda *a, **k: pytest.fail("scored before the teachers were checked"))
    monkeypatch.setattr(sys, "argv", ["student_levers.py", "--run", f"wide={lever}"])
    with pytest.raises(SystemExit) as stop:
        student_levers.main()
    assert stop.value.code == f"{lever}: wide distilled from {stage2}, not the baseline's teacher {stage3}"


def test_finished_baselines_are_the_fidelity_runs_evaluations_never_scored_again(tmp_path, monkeypatch):
    got = student_levers.baselines(finished=True)
    assert list(got) == ["kd_hidden/seed0_finish", "kd_hidden/seed1_finish"]
    assert got["kd_hidden/seed1_finish"][1] == student_levers.FIDELITY / "predictions" / "eval__kd_hidden__seed1.json.gz"
    stage3 = tmp_path / "teacher_stage3" / "student"
    bases = {n: (run_folder(tmp_path / n, stage3), tmp_path / n / "eval.json.gz") for n in got}
    monkeypatch.setattr(student_levers, "baselines", lambda finished: bases if finished else pytest.fail("not --finished"))
    monkeypatch.setattr(student_levers, "score", lambda *a, **k: pytest.fail("a finished baseline was scored"))
    lever = run_folder(tmp_path / "lever", stage3)
    monkeypatch.setattr(sys, "argv", ["student_levers.py", "--finished", "--run", f"wide={lever}"])
    with pytest.raises(SystemExit) as stop:
        student_levers.main()
    missing = tmp_path / "kd_hidden/seed0_finish" / "eval.json.gz"
    assert stop.value.code == (f"{missing}: not there; the fidelity run has not evaluated kd_hidden/seed0_finish "
                               "(benchmarks/fidelity.py)")


def test_the_table_gives_each_model_and_each_paired_change_per_task():
    change = {"base": 0.2, "other": 0.3, "change": 0.1, "relative": 0.5, "change_ci": [0.05, 0.15], "relative_ci": [0.25, 0.75]}
    level = {"base": 0.2, "other": 0.2, "change": 0.0, "relative": 0.0, "change_ci": [-0.02, 0.02], "relative_ci": [-0.1, 0.1]}
    results = {"teacher": {"headline": {"REG_VG": 0.8}, "average": 1.0},
               "models": {"kd_hidden/seed0": {"headline": {"REG_VG": 0.2}, "average": 0.7, "share_of_teacher": 0.7},
                          "wide": {"headline": {"REG_VG": 0.3}, "average": 0.75, "share_of_teacher": 0.75}},
               "paired": {"wide - kd_hidden/seed0": {"per_task": {"REG_VG": change}, "average": level}}}
    lines = student_levers.table(results).splitlines()
    assert lines[0] == "| task | teacher | kd_hidden/seed0 | wide | wide - kd_hidden/seed0 |"
    assert lines[2:] == [
        "| REG_VG | 0.800 | 0.200 | 0.300 | **+50.0% [+25.0%, +75.0%]** |",
        "| 14-task average | 1.000 | 0.700 | 0.750 | +0.0% [-10.0%, +10.0%] |",
        "| share of the teacher's | | 70.0% | 75.0% | |"]
