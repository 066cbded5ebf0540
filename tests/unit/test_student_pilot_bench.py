"""benchmarks/student_pilot.py reuses the teacher's scores of an earlier --out only for the same teacher file,
records and max_new_tokens, so a resumed run never reports another teacher's numbers."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import student_pilot  # noqa: E402

TEACHER = {"step": "final", "sha256": "ab" * 32, "max_new_tokens": 128}


def written(tmp_path: Path, teacher: dict, limit: int = 1200) -> Path:
    out = tmp_path / "student_long.json"
    out.write_text(json.dumps({"limit": limit, "teacher": {**teacher, "params": 1880000, "headline": {"REG_VG": 0.803},
                                                           "average": 1.144}, "runs": {}}))
    return out


def test_teacher_digest_matches_hashlib(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x" * (9 << 20) + b"tail")  # more than two of sha256_file's 4 MiB chunks
    assert student_pilot.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_teacher_and_records_reuse_the_scores(tmp_path):
    got = student_pilot.earlier_teacher(written(tmp_path, TEACHER), TEACHER, 1200)
    assert (got["average"], got["headline"]) == (1.144, {"REG_VG": 0.803})


@pytest.mark.parametrize("change", [{"sha256": "cd" * 32}, {"step": 33000}, {"max_new_tokens": 64}])
def test_another_teacher_or_length_scores_again(tmp_path, change):
    assert student_pilot.earlier_teacher(written(tmp_path, TEACHER), {**TEACHER, **change}, 1200) is None


def test_other_records_score_again(tmp_path):
    assert student_pilot.earlier_teacher(written(tmp_path, TEACHER, limit=64), TEACHER, 1200) is None


@pytest.mark.parametrize("text", [None, "{not json", json.dumps([1, 2]), json.dumps({"limit": 1200, "teacher": TEACHER})])
def test_missing_unreadable_or_unscored_scores_again(tmp_path, text):
    out = tmp_path / "student_long.json"
    if text is not None:
        out.write_text(text)
    assert student_pilot.earlier_teacher(out, TEACHER, 1200) is None


@pytest.mark.parametrize("text", ["0", "-5", "1.5", "x"])
def test_steps_below_one_or_not_whole_are_a_usage_error(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="expected a whole number of steps >= 1"):
        student_pilot.positive_steps(text)
    assert student_pilot.positive_steps("30000") == 30000


def test_unfinished_teacher_is_one_line_naming_its_folder(tmp_path, monkeypatch):
    from fidelity_config import load_config, teacher_stages

    monkeypatch.setattr(student_pilot, "FIDELITY", tmp_path)
    cfg = load_config(student_pilot.HERE / "recipes" / "fidelity.yaml", quick=False)
    n = len(teacher_stages(cfg))  # the last stage's folder: teacher_stageN (N > 1)
    last_out = tmp_path / f"teacher_stage{n}"
    with pytest.raises(SystemExit) as stop:
        student_pilot.final_teacher(cfg, {"train": str(tmp_path / "train.json"), "root": str(tmp_path)})
    assert str(stop.value) == f"{last_out}/student: the fidelity run's teacher has not finished; run benchmarks/fidelity.py first"
    (last_out / "student").mkdir(parents=True)
    (last_out / "student" / "model.safetensors").write_bytes(b"")
    last, teacher = student_pilot.final_teacher(cfg, {"train": str(tmp_path / "train.json"), "root": str(tmp_path)})
    assert (teacher, last["out"]) == (last_out / "student", str(last_out))


def test_shape_overrides_name_their_run_folder():
    got = student_pilot.json_object('{"vision_dims": [12, 24, 48, 64], "d_model": 56}')
    assert got == {"vision_dims": [12, 24, 48, 64], "d_model": 56}
    assert student_pilot.overrides_name(got) == "d_model-56_vision_dims-12-24-48-64"


@pytest.mark.parametrize("text", ["{not json", "[12, 24]", "{}", "7"])
def test_overrides_that_are_not_a_json_object_are_a_usage_error(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="expected a JSON object"):
        student_pilot.json_object(text)


def test_distill_changes_merge_key_by_key_and_name_their_folder():
    base = {"kd": 0.5, "hidden": {"vision": 0.5, "decoder_layers": {1: 1}}}
    got = student_pilot.merge(base, {"hidden": {"stages": 0.5}})
    assert got == {"kd": 0.5, "hidden": {"vision": 0.5, "decoder_layers": {1: 1}, "stages": 0.5}}
    assert base["hidden"] == {"vision": 0.5, "decoder_layers": {1: 1}}  # the YAML's recipe is not changed
    assert student_pilot.overrides_name(student_pilot.flat({"hidden": {"stages": 0.5}, "lr": 0.001})) == "hidden.stages-0.5_lr-0.001"


def test_seed_names_its_folder_and_seed_0_keeps_the_carried_names():
    from argparse import Namespace

    base = dict(steps=30000, init=None, overrides=None, distill={"hidden": {"stages": 0.5}}, final_teacher=True)
    # seed 0's folder is the one already carried (benchmarks/carry), so it must not change name
    assert student_pilot.run_name("kd_hidden", Namespace(**base, seed=0)) == "kd_hidden_30000_hidden.stages-0.5_final"
    assert (student_pilot.run_name("kd_hidden", Namespace(**base, seed=1))
            == "kd_hidden_30000_hidden.stages-0.5_seed1_final")
