"""`tiercel pipeline`: every stage end to end on tiny models, skipping finished stages, --from, crash resume."""

import contextlib
import json
import os

import pytest
import yaml

pytest.importorskip("torch")

from tests.conftest import run_cli  # noqa: E402
from tiercel.pipeline import STAGES  # noqa: E402
from tiercel.recipe import parse_recipe  # noqa: E402
from tiercel.tasks import TAGS  # noqa: E402


def tiny_recipe(out):
    data = out / "data"
    return {
        "name": "tiny-pipeline", "out": str(out), "seed": 0,
        "data": {"train": str(data / "train.json"), "val": str(data / "val.json"), "test": str(data / "test.json"),
                 "root": str(data), "max_answer_tokens": 16},
        "pipeline": {"synth": {"n": 84, "size": 64, "seed": 1},
                     "train_teacher": {"preset": "tiny", "steps": 3, "batch_size": 2, "vocab_size": 300, "warmup_steps": 2}},
        "tokenizer": {"source": "teacher"},
        "teacher": {"kind": "checkpoint", "path": str(out / "teacher")},
        "student": {"preset": "tiny", "overrides": {"d_model": 32, "ffn_dim": 64, "decoder_layers": 1}},
        "distill": {"steps": 2, "batch_size": 2, "kd": 0.5, "ce": 0.5, "save_every": 2, "eval_limit": 4, "log_every": 1},
        "export": {"backends": ["onnxruntime"]},
        "quantize": {"schemes": ["int8-dynamic"], "n": 2, "max_drop": 1.0, "max_new_tokens": 8},
        "eval": {"limit": 1, "max_new_tokens": 8},
        "profile": {"runs": 1, "warmup": 0, "new_tokens": 2, "tasks": ["IMG_CAP"]},
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny recipe run once as a user would: `tiercel pipeline recipes/tiny.yaml --out run`, from a folder
    of its own, with the recipe's paths pointing elsewhere. Returns (out, each stage's summary, base folder)."""
    from tiercel.cli import main

    base = tmp_path_factory.mktemp("pipe")
    (base / "recipes").mkdir()
    (base / "recipes" / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe(base / "elsewhere")))
    (base / "cwd").mkdir()
    here = os.getcwd()
    os.chdir(base / "cwd")
    try:
        with open(_stderr_file(base), "w") as err, contextlib.redirect_stderr(err):
            assert main(["pipeline", str(base / "recipes" / "tiny.yaml"), "--out", str(base / "run")]) == 0
    finally:
        os.chdir(here)
    out = base / "run"
    results = {stage: json.loads((out / "stages" / f"{stage}.json").read_text()) for stage in STAGES}
    return out, results, base


def test_every_stage_runs_and_the_report_compares_the_models(finished):
    out, results, _ = finished
    assert list(results) == ["data", "teacher", "distill", "export", "quantize", "eval", "profile", "report"]
    report = (out / "report.md").read_text()
    for row in ("| teacher |", "| student |", "| student-int8-dynamic |"):
        assert row in report
    assert "ESTIMATES (not measured)" in report and "Jetson" in report
    assert "## Accuracy guard" in report and "| student-int8-dynamic | " in report.split("## Accuracy guard")[1]
    data = json.loads((out / "report.json").read_text())
    assert data["rows"]["student-int8-dynamic"]["size_mb"] < data["rows"]["student"]["size_mb"]
    paired = report.split("## Quantized vs fp32 student, paired")[1].split("\n## ")[0]  # the same eval records
    assert "| task | student-int8-dynamic |" in paired and "| average | " in paired
    averages = results["eval"]["models"]  # the stage's summary: each row's 14-task average, as the report's
    assert set(averages) == set(data["rows"]) and all(averages[k] == data["rows"][k]["average"] for k in averages)
    assert all(isinstance(v, float) for v in averages.values())
    assert set(data["paired"]) == {"student-int8-dynamic"} and set(data["paired"]["student-int8-dynamic"]["per_task"]) <= set(TAGS)
    assert (out / "report.png").stat().st_size > 10_000
    for stage in results:
        assert (out / "stages" / f"{stage}.json").is_file()
    teacher_run = yaml.safe_load((out / "teacher_run" / "recipe.yaml").read_text())["distill"]
    assert (teacher_run["steps"], teacher_run["warmup_steps"]) == (3, 2)  # pipeline.train_teacher's warmup reaches it
    check = results["teacher"]["prompt_check"]  # the trained teacher's answers to the 13 single-image prompts
    assert check["tasks"] == 13 and 1 <= check["distinct_answers"] <= 13 and check["image"].endswith(".png")
    assert (check["warning"] is not None) == (check["distinct_answers"] == 1) == ("**Warning:** the teacher gave one answer" in report)
    images = results["teacher"]["image_check"]  # the permuted-image gap over the val records of every task
    assert images["records_per_task"] == 16 and set(images["per_task"]) <= set(TAGS) and images["gap_permuted"] is not None
    assert images["data"].endswith("train.json")  # 1 val record per task here: no two to swap images between
    assert (images["warning"] is not None) == (images["gap_permuted"] < 0.01) == ("**Warning:** the teacher's answers barely" in report)


def _stderr_file(base):
    return base.with_name(f"{base.name}-stderr.txt")  # beside the run's folder, which a test lists


def test_every_long_stage_shows_its_progress_on_stderr(finished):
    _, _, base = finished
    err = _stderr_file(base).read_text()
    for line in ("[data/synth] 84/84 records in ", "[teacher/distill] 3/3 steps in ", "[distill] 2/2 steps in ",
                 "[export/student-fp32] 5/5 graphs in ", "[export/student-fp32/parity] ", "[quantize/int8-dynamic/guard] ",
                 "[eval/student-int8-dynamic] ", "[profile] "):
        assert f"\n{line}" in err, line
    assert err.index("[distill] ...") < err.index("[distill] 2/2 steps") < err.index("[distill] finished")


def test_a_second_run_skips_finished_stages(finished):
    from tiercel.pipeline import run_pipeline

    out, _, _ = finished
    logs = []
    run_pipeline(parse_recipe(tiny_recipe(out)), log=logs.append)
    assert all("skipped" in line for line in logs)


def test_from_reruns_that_stage_and_later(finished):
    from tiercel.pipeline import run_pipeline

    out, _, _ = finished
    logs = []
    run_pipeline(parse_recipe(tiny_recipe(out)), from_stage="profile", log=logs.append)
    assert "[eval] done earlier, skipped" in logs and "[profile] ..." in logs and "[report] ..." in logs


def test_a_scheme_the_guard_refuses_is_reported_and_the_run_goes_on(finished, tmp_path, monkeypatch):
    import shutil

    import tiercel.quantize.bundle as QB
    from tiercel.pipeline import run_pipeline
    from tiercel.quantize.guard import GuardError

    src, _, _ = finished
    out = tmp_path / "run"
    shutil.copytree(src, out)

    def refuse(*args, **kwargs):
        raise GuardError("student-int8-dynamic: int8-dynamic misses the accuracy floor after 5 attempts")

    monkeypatch.setattr(QB, "quantize_bundle", refuse)
    shutil.rmtree(out / "bundles" / "student-int8-dynamic")
    recipe = tiny_recipe(out)
    recipe["data"] = tiny_recipe(src)["data"]
    run_pipeline(parse_recipe(recipe), from_stage="quantize", log=lambda m: None)
    report = (out / "report.md").read_text()
    assert "| student-int8-dynamic | - | - | - | refused: student-int8-dynamic: int8-dynamic misses" in report
    assert "| student-int8-dynamic | " not in report.split("## Accuracy guard")[0]  # no scores for a bundle never made
    assert "## Quantized vs fp32 student, paired" not in report  # nothing quantized to compare


def test_crash_resumes_at_the_failed_stage(tmp_path, monkeypatch):
    from tiercel import pipeline as P

    out = tmp_path / "run"
    recipe = parse_recipe(tiny_recipe(out))

    def boom(self, results):
        raise RuntimeError("power cut during export")

    monkeypatch.setattr(P.Pipeline, "stage_quantize", boom)
    with pytest.raises(RuntimeError, match="power cut"):
        P.run_pipeline(recipe, log=lambda m: None)
    assert (out / "stages" / "export.json").is_file() and not (out / "stages" / "quantize.json").exists()
    monkeypatch.undo()
    logs = []
    P.run_pipeline(recipe, log=logs.append)
    assert logs[:4] == ["[data] done earlier, skipped", "[teacher] done earlier, skipped",
                        "[distill] done earlier, skipped", "[export] done earlier, skipped"]
    assert logs[4] == "[quantize] ..." and (out / "report.md").is_file()


def test_unknown_stage_is_one_line(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(tiny_recipe(tmp_path / "run")))
    out = run_cli("pipeline", str(path), "--from", "train")
    assert out.returncode == 1
    assert "error: --from: unknown stage 'train'; stages: data, teacher, distill" in out.stderr


def test_synth_never_replaces_a_data_folder_tiercel_did_not_write(tmp_path):
    from tiercel.errors import ConfigError
    from tiercel.pipeline import Pipeline

    recipe = tiny_recipe(tmp_path / "run")
    mine = tmp_path / "my_data"
    (mine / "images").mkdir(parents=True)
    (mine / "images" / "scene.tif").write_bytes(b"years of labelling")
    recipe["data"].update(root=str(mine), train=str(mine / "trian.json"))  # a typo: the file is train.json
    with pytest.raises(ConfigError) as err:
        Pipeline(parse_recipe(recipe)).stage_data(None)
    assert str(err.value) == (
        f"{mine / 'trian.json'}: training file not found, and pipeline.synth would generate into data.root ({mine}), "
        "which holds files tiercel did not write; point data.train at your training file, or set data.root to a new "
        "folder for the synthetic benchmark")
    assert (mine / "images" / "scene.tif").read_bytes() == b"years of labelling"


def test_pipeline_out_moves_every_output_of_the_run(tmp_path, monkeypatch):
    import tiercel.pipeline
    from tiercel.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path / "elsewhere")))
    seen = {}

    def fake(recipe, **kwargs):
        seen["recipe"] = recipe
        report = tmp_path / "new" / "report.md"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("# report\n")
        return {"report": {"markdown": str(report)}}

    monkeypatch.setattr(tiercel.pipeline, "run_pipeline", fake)
    assert main(["pipeline", str(path), "--out", str(tmp_path / "new")]) == 0
    r = seen["recipe"]
    outputs = [r.out, r.data.root, r.data.train, r.data.val, r.data.test, r.teacher.path]
    assert all(str(p).startswith(str(tmp_path / "new")) for p in outputs), outputs


def test_out_holds_every_output_of_the_run(finished):
    out, results, base = finished
    assert sorted(p.name for p in base.iterdir()) == ["cwd", "recipes", "run"]  # nothing at the recipe's own paths
    assert [p.name for p in (base / "recipes").iterdir()] == ["tiny.yaml"] and not any((base / "cwd").iterdir())
    for name in ("data/train.json", "teacher/tiercel.json", "teacher_run", "student", "bundles/teacher-fp32",
                 "bundles/student-fp32", "bundles/student-int8-dynamic", "report.md"):
        assert (out / name).exists(), name
    summaries = json.dumps(results)
    assert str(base / "elsewhere") not in summaries and str(out / "data" / "train.json") in summaries


def test_a_teacher_folder_tiercel_did_not_write_is_never_replaced(tmp_path):
    from tiercel.errors import ConfigError
    from tiercel.pipeline import run_pipeline

    recipe = tiny_recipe(tmp_path / "run")
    mine = tmp_path / "florence2-large"  # a downloaded checkpoint, meant as the teacher to fine-tune
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"weights")
    recipe["teacher"]["path"] = str(mine)
    with pytest.raises(ConfigError) as err:
        run_pipeline(parse_recipe(recipe), log=lambda m: None)
    assert str(err.value) == (
        f"teacher.path ({mine}): holds files tiercel did not write (no tiercel.json), and pipeline.train_teacher would "
        "replace them with the teacher it trains; set teacher.path to a new folder for the trained teacher, or remove "
        "pipeline.train_teacher")
    assert (mine / "model.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / "run").exists()  # refused before any stage ran


def test_a_foreign_data_root_is_refused_before_anything_is_written(tmp_path):
    from tiercel.errors import ConfigError
    from tiercel.pipeline import run_pipeline

    recipe = tiny_recipe(tmp_path / "run")
    (tmp_path / "my_data").mkdir()
    (tmp_path / "my_data" / "train.jsonl").write_text("{}\n")
    recipe["data"].update(root=str(tmp_path / "my_data"), train=str(tmp_path / "my_data" / "train.json"))
    with pytest.raises(ConfigError, match="holds files tiercel did not write; point data.train at your training file"):
        run_pipeline(parse_recipe(recipe), log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_data"]


def test_out_keeps_generated_teacher_answers_where_generate_answers_wrote_them(tmp_path):
    from tiercel.distill.answers import answers_path
    from tiercel.pipeline import relocate

    recipe = tiny_recipe(tmp_path / "run")
    recipe["pipeline"].pop("train_teacher")
    recipe["teacher"] = {"kind": "generated", "path": str(tmp_path / "teacher")}
    recipe["tokenizer"] = {"source": "train", "vocab_size": 300}
    recipe["distill"].update(kd=0.0, ce=1.0)
    moved = relocate(parse_recipe(recipe), tmp_path / "new")
    assert answers_path(moved) == tmp_path / "run" / "teacher_answers.json"  # an input of the pipeline: it stays
    assert moved.data.train == tmp_path / "new" / "data" / "train.json"


@pytest.mark.parametrize("change, problem", [
    ({"data.val": "nowhere/val.json"}, "data.val: nowhere/val.json: file not found"),
    ({"data.test": "nowhere/test.json", "data.root": "nowhere"},
     "data.test: nowhere/test.json: file not found; data.root: nowhere: folder not found"),
    ({"data.test": None}, "data.test: not set; the report scores the test split (eval.split)"),
    ({"distill.precision": "fp16"}, "distill.precision: fp16 needs a CUDA GPU (running on cpu); use bf16 or fp32"),
])
def test_a_recipe_a_later_stage_would_fail_on_is_refused_before_the_first(tmp_path, synth_dir, change, problem):
    import torch

    from tiercel.errors import ConfigError
    from tiercel.pipeline import run_pipeline

    if "distill.precision" in change and torch.cuda.is_available():
        pytest.skip("fp16 is allowed on a CUDA GPU")
    r = tiny_recipe(tmp_path / "run")
    del r["pipeline"]["synth"]  # the data exists already
    r["data"].update(train=str(synth_dir / "train.json"), val=str(synth_dir / "val.json"),
                     test=str(synth_dir / "test.json"), root=str(synth_dir))
    for dotted, value in change.items():
        section, field = dotted.split(".")
        r[section][field] = value
    with pytest.raises(ConfigError) as err:
        run_pipeline(parse_recipe(r), log=lambda m: None)
    assert str(err.value) == f"recipe: {problem}"
    assert not (tmp_path / "run").exists()  # no stage ran: no teacher trained, nothing written


def test_an_out_folder_holding_the_users_files_is_refused_before_anything_is_written(tmp_path):
    from tiercel.errors import ConfigError
    from tiercel.pipeline import run_pipeline

    out = tmp_path / "run"
    out.mkdir()
    (out / "report.md").write_text("MY REPORT")
    (out / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(out)))  # the recipe itself may live there
    with pytest.raises(ConfigError) as err:
        run_pipeline(parse_recipe(tiny_recipe(out)), log=lambda m: None)
    assert str(err.value) == (f"out ({out}): holds files tiercel did not write (report.md) and no earlier run of this "
                              "pipeline, whose files would replace them; choose a new folder for --out")
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml", "report.md"]
    assert (out / "report.md").read_text() == "MY REPORT"
