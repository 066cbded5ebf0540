"""Recipes: every error at once with its field path, in one line; the shipped recipes validate and are found by
name from any folder."""

import re

import pytest

from tiercel import recipes
from tiercel.cli import main
from tiercel.errors import ConfigError
from tiercel.recipe import dump_recipe, load_recipe, parse_recipe

BASE = {"name": "x", "data": {"train": "train.json"}, "tokenizer": {"source": "train"}}


def test_every_error_is_reported_with_its_path():
    bad = {**BASE, "distill": {"temperature": -1, "steps": 0}, "data": {"train": "t.json", "task_weights": {"IMG_FOO": 1}}}
    with pytest.raises(ConfigError) as err:
        parse_recipe(bad, "recipe.yaml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("recipe.yaml: ")
    assert "distill.temperature: Input should be greater than 0 (got -1)" in msg
    assert "distill.steps: Input should be greater than 0 (got 0)" in msg
    assert "data.task_weights: unknown task tag 'IMG_FOO'" in msg


def test_unknown_field_is_a_typo_error():
    with pytest.raises(ConfigError, match=r"distill.temprature: Extra inputs are not permitted"):
        parse_recipe({**BASE, "distill": {"temprature": 2.0}})


def test_kd_without_teacher_is_refused():
    with pytest.raises(ConfigError, match="distill.kd/hidden/on_policy need teacher.kind checkpoint or cached"):
        parse_recipe({**BASE, "distill": {"kd": 1.0}})


def test_object_cover_loss_needs_the_objects_file():
    message = r"distill.dense.objects \(or pipeline.train_teacher.dense.objects\) needs data.objects, the per-image"
    with pytest.raises(ConfigError, match=message):
        parse_recipe({**BASE, "distill": {"dense": {"objects": 1.0}}})
    with pytest.raises(ConfigError, match=message):
        parse_recipe({**BASE, "teacher": {"kind": "checkpoint", "path": "t"},
                      "pipeline": {"train_teacher": {"dense": {"objects": 1.0}}}})
    ok = parse_recipe({**BASE, "data": {"train": "train.json", "objects": "objects.json"}, "distill": {"dense": {"objects": 1.0}}})
    assert ok.distill.dense.cells == 4 and ok.distill.dense.answer == 0.0


def test_cached_teacher_cannot_do_hidden_states():
    with pytest.raises(ConfigError, match="a cached teacher holds only top-k logits"):
        parse_recipe({**BASE, "teacher": {"kind": "cached", "cache": "c", "path": "t"},
                      "distill": {"kd": 1.0, "hidden": {"vision": 1.0}}})


@pytest.mark.parametrize("teacher, message", [
    ({"kind": "cached", "cache": "c", "path": "t"}, "a cached teacher holds only top-k logits"),
    ({"kind": "none"}, "distill.kd/hidden/on_policy need teacher.kind"),
])
def test_vision_stages_need_a_live_teacher(teacher, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe({**BASE, "teacher": teacher, "distill": {"ce": 0, "hidden": {"stages": 1.0}}})
    alone = parse_recipe({**BASE, "teacher": {"kind": "checkpoint", "path": "t"},
                          "distill": {"ce": 0, "hidden": {"stages": 1.0, "stage_pairs": {0: 1}}}})
    assert alone.distill.hidden.stage_pairs == {0: 1}  # the stage loss alone is a loss to train on


def test_defaults_resolve_and_dump(tmp_path):
    (tmp_path / "r.yaml").write_text("name: x\ndata: {train: t.json}\ntokenizer: {source: train}\n")
    recipe = load_recipe(tmp_path / "r.yaml", overrides={"distill.steps": 7})
    assert recipe.distill.steps == 7 and recipe.distill.lr == 3e-4
    assert "steps: 7" in dump_recipe(recipe)


def test_yaml_errors_are_one_line(tmp_path):
    (tmp_path / "r.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"r.yaml: not valid YAML at line 2"):
        load_recipe(tmp_path / "r.yaml")
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_the_shipped_recipes_are_the_package_data():
    assert {"demo", "falcon-large_to_base", "florence2-large_to_base", "geochat-7b_to_falcon-base",
            "falcon-base_to_nano"} <= set(recipes.names())


@pytest.mark.parametrize("name", recipes.names())
def test_shipped_recipes_validate(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # found by name from any folder
    assert load_recipe(name).name == name
    assert recipes.summary(name)  # `tiercel recipes` has a line to show for it


def test_a_file_wins_over_a_shipped_name_and_a_folder_does_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("name: mine\ndata: {train: t.json}\ntokenizer: {source: train}\n")
    assert load_recipe("demo").name == "mine"
    (tmp_path / "demo").unlink()
    (tmp_path / "demo").mkdir()  # e.g. the output of `tiercel pipeline demo --out demo`
    assert load_recipe("demo").name == "demo"
    with pytest.raises(ConfigError, match=r"^elsewhere: is a folder, not a recipe file; give a YAML file or a "
                                          r"shipped recipe's name \(demo, "):
        (tmp_path / "elsewhere").mkdir()
        load_recipe("elsewhere")


def test_an_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^dmeo: recipe file not found; give a YAML file or a shipped recipe's "
                                          r"name \(demo, falcon-base_to_nano, "):
        load_recipe("dmeo")


def test_recipes_lists_shows_and_copies(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == recipes.names()
    assert main(["recipes", "show", "demo"]) == 0
    assert capsys.readouterr().out == recipes.get("demo").read_text()
    assert main(["recipes", "copy", "demo"]) == 0
    assert capsys.readouterr().out == "wrote demo.yaml\n"
    assert (tmp_path / "demo.yaml").read_text() == recipes.get("demo").read_text()
    (tmp_path / "mine").mkdir()
    assert main(["recipes", "copy", "falcon-base_to_nano", "mine"]) == 0
    assert capsys.readouterr().out == "wrote mine/falcon-base_to_nano.yaml\n"
    assert load_recipe(tmp_path / "mine" / "falcon-base_to_nano.yaml").name == "falcon-base_to_nano"


def test_recipes_copy_never_replaces_a_file_without_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.yaml").write_text("mine")
    assert main(["recipes", "copy", "demo", "my.yaml"]) == 1
    assert capsys.readouterr().err == "error: my.yaml: already exists; choose another path or pass --overwrite\n"
    assert (tmp_path / "my.yaml").read_text() == "mine"
    assert main(["recipes", "copy", "demo", "my.yaml", "--overwrite"]) == 1  # not a recipe: never replaced
    assert capsys.readouterr().err == ("error: my.yaml: is not a recipe, so it is not replaced even with --overwrite; "
                                       "choose another path or remove it yourself\n")
    assert (tmp_path / "my.yaml").read_text() == "mine"
    (tmp_path / "my.yaml").write_text("student: {preset: tiny}\n")  # an edited recipe: --overwrite replaces it
    assert main(["recipes", "copy", "demo", "my.yaml", "--overwrite"]) == 0
    assert (tmp_path / "my.yaml").read_text() == recipes.get("demo").read_text()


@pytest.mark.parametrize("content", ["student: [alice, bob]\n", "roster: {a: 1}\nstudent: {preset: tiny}\n"])
def test_recipes_copy_replaces_no_yaml_that_only_looks_like_a_recipe(tmp_path, monkeypatch, capsys, content):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "roster.yaml").write_text(content)
    assert main(["recipes", "copy", "demo", "roster.yaml", "--overwrite"]) == 1
    assert capsys.readouterr().err.startswith("error: roster.yaml: is not a recipe, so it is not replaced")
    assert (tmp_path / "roster.yaml").read_text() == content


def test_recipes_copy_into_a_folder_path_and_around_links_and_pipes(tmp_path, monkeypatch, capsys):
    import os

    monkeypatch.chdir(tmp_path)
    assert main(["recipes", "copy", "demo", "configs/sub/"]) == 0  # a trailing slash names a folder
    assert (tmp_path / "configs" / "sub" / "demo.yaml").read_text() == recipes.get("demo").read_text()
    os.symlink("nowhere.yaml", tmp_path / "dangling.yaml")
    assert main(["recipes", "copy", "demo", "dangling.yaml", "--overwrite"]) == 1
    assert os.readlink(tmp_path / "dangling.yaml") == "nowhere.yaml" and not (tmp_path / "nowhere.yaml").exists()
    os.mkfifo(tmp_path / "pipe.yaml")  # reading it to check would block for ever
    assert main(["recipes", "copy", "demo", "pipe.yaml", "--overwrite"]) == 1
    capsys.readouterr()


@pytest.mark.parametrize("args", [["recipes", "show", "nope"], ["recipes", "copy", "nope"]])
def test_an_unknown_recipe_name_is_one_line(args, capsys):
    assert main(args) == 1
    assert capsys.readouterr().err == (
        f"error: nope: no shipped recipe has this name; choose one of {', '.join(recipes.names())}\n")


def test_demo_reads_the_shipped_recipe_and_writes_only_under_out_from_any_folder(tmp_path, monkeypatch):
    import tiercel.pipeline

    seen = []

    def stop(recipe, **kwargs):
        seen.append(recipe)
        raise ConfigError("stopped")

    monkeypatch.setattr(tiercel.pipeline, "run_pipeline", stop)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert main(["demo", "--out", str(tmp_path / "run")]) == 1
    paths = [v for v in _values(seen[0].model_dump(mode="json")) if isinstance(v, str) and "/" in v]
    assert seen[0].name == "demo" and paths and all(p.startswith(f"{tmp_path / 'run'}/") or p == str(tmp_path / "run")
                                                    for p in paths), paths
    assert "demo_out" not in str(seen[0].model_dump())  # the recipe's own (cwd-relative) output paths are all moved


def _values(tree):
    for value in tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else [tree]:
        yield from _values(value) if isinstance(value, (dict, list)) else [value]


@pytest.mark.parametrize(
    "section, message",
    [
        ({"quantize": {"schemes": ["int8-statik"]}}, "quantize.schemes: unknown quantization scheme 'int8-statik'"),
        ({"quantize": {"block_size": 7}}, "quantize.block_size: must be one of 32, 64, 128 (got 7)"),
        ({"quantize": {"backend": "tflite"}}, "quantize.backend: unknown quantization backend 'tflite'"),
        (
            {"quantize": {"schemes": ["int4-weight-only"], "backend": "tensorrt"}},
            "quantize: quantize.backend tensorrt: supports int8-static (got quantize.scheme int4-weight-only)",
        ),
        (
            {"quantize": {"schemes": ["int8-dynamic"], "all_layers": True}},
            "quantize: quantize.all_layers puts int4's lm_head and embedding table in int4 too; it applies to "
            "int4-weight-only or a mixed policy with an int4 role (got int8-dynamic)",
        ),
        ({"profile": {"tasks": ["NOPE"]}}, "profile.tasks: unknown task tag 'NOPE'"),
        ({"export": {"backends": ["torch"]}}, "export.backends: unknown backend 'torch'; choose one of: onnxruntime"),
        (
            {"teacher": {"kind": "oracle"}},
            "teacher.kind: unknown teacher kind 'oracle'; choose one of: none, checkpoint",
        ),
    ],
)
def test_values_a_later_stage_would_fail_on_are_refused_at_load(section, message):
    # `quantize.schemes: [int8-statik]` used to validate, and the pipeline failed after training
    with pytest.raises(ConfigError) as err:
        parse_recipe({**BASE, **section}, "r.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_quantize_settings_have_one_set_of_defaults():
    """The CLI options, the recipe section and quantize_bundle read QuantizeSettings' defaults (they differed:
    n 32 vs 128, max_drop 0.05 vs 0.01); the pipeline hands every setting of the section to quantize_bundle."""
    import inspect

    import typer

    from tiercel.cli.quantize import quantize
    from tiercel.quantize.settings import QuantizeSettings

    defaults = QuantizeSettings()
    section = parse_recipe(BASE).quantize
    for name in type(section).model_fields:
        if name != "schemes":
            assert getattr(section, name) == getattr(defaults, name), name
    cli = {p.name: p.default for p in inspect.signature(quantize).parameters.values()}
    for name, field in QuantizeSettings.model_fields.items():
        if name in cli:
            option = cli[name]
            assert isinstance(option, typer.models.OptionInfo) and option.default == field.default, name
            assert option.help == field.description, name
    tuned = parse_recipe({**BASE, "quantize": {"backend": "openvino", "ratio": 0.5, "min_agreement": 0.9}}).quantize
    s = tuned.settings("int4-weight-only")
    assert (s.scheme, s.backend, s.ratio, s.min_agreement, s.n) == ("int4-weight-only", "openvino", 0.5, 0.9, 128)
    # all_layers reaches the schemes that write int4 and leaves the others' settings valid
    every = parse_recipe({**BASE, "quantize": {"schemes": ["int8-dynamic", "int4-weight-only", "mixed"],
                                               "all_layers": True}}).quantize
    assert [every.settings(x).all_layers for x in every.schemes] == [False, True, True]


def test_teacher_kinds_and_backends_come_from_their_registries():
    from tiercel.distill.kinds import TEACHER_KINDS
    from tiercel.recipe import TeacherSection
    from tiercel.runtime.backends import BACKENDS, bundle_backends

    assert all(k in TeacherSection.model_fields["kind"].description for k in TEACHER_KINDS)
    assert "torch" in BACKENDS and "torch" not in bundle_backends()
    assert parse_recipe({**BASE, "export": {"backends": bundle_backends()}}).export.backends == bundle_backends()


@pytest.mark.parametrize("key, value", [("distill.steps", True), ("distill.lr", False), ("data.max_answer_tokens", True),
                                        ("data.task_weights", {"IMG_CAP": True}), ("student.encoder_layers", [0, True])])
def test_a_number_field_refuses_true_and_false(key, value):
    from tiercel.recipe import load_recipe

    with pytest.raises(ConfigError, match=rf"demo: {re.escape(key)}: must be a number, not true/false"):
        load_recipe("demo", {key: value})  # read as 1 or 0 before: `--set distill.steps=true` trained 1 step
    assert load_recipe("demo", {"student.encoder_layers": [0, 1]}).student.encoder_layers == [0, 1]


@pytest.mark.parametrize("text, message", [
    ("name: x\ndata: {train: t.json}\ndistill:\n  steps: 5\n  steps: 100000\n", "'steps' is given twice (lines 4 and 5)"),
    ("name: x\ndata: {train: t.json}\ndistill: {ce: 1}\ndistill: {steps: 5}\n", "'distill' is given twice (lines 3 and 4)"),
])
def test_a_key_given_twice_is_one_line_instead_of_the_last_one_winning(tmp_path, text, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_recipe(tmp_path / "r.yaml")
    assert str(err.value) == f"{tmp_path / 'r.yaml'}: {message}; keep one of them"


def test_yaml_merge_keys_may_be_given_again(tmp_path):
    (tmp_path / "r.yaml").write_text("name: x\ndata: {train: t.json}\ntokenizer: {source: train}\n"
                                     "distill:\n  <<: {steps: 5, lr: 0.001}\n  steps: 7\n")
    got = load_recipe(tmp_path / "r.yaml").distill
    assert (got.steps, got.lr) == (7, 0.001)


@pytest.mark.parametrize("text, overrides, message", [
    ("", {"name": "y"}, "must be a mapping of sections"),
    ("- 1\n", {"name": "y"}, "must be a mapping of sections"),
    ("name: x\ndata: {train: t.json}\n", {"distill": 5, "distill.steps": 3},
     "--set distill.steps: distill is 5 in {path}, not a section whose fields can be set; set the whole section instead"),
])
def test_set_on_a_recipe_that_is_not_a_mapping_is_one_line(tmp_path, text, overrides, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_recipe(path, overrides=overrides)
    assert message.format(path=path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("student, message", [
    ({"overrides": {"d_model": 10_000_000}}, "overrides: d_model must be a whole number 1..131072 (got 10000000)"),
    ({"overrides": {"encoder_layers": 1_000_000}}, "overrides: encoder_layers must be a whole number 1..1024"),
    ({"overrides": {"d_model": float("nan")}}, "overrides: d_model must be a whole number 1..131072 (got nan)"),
    ({"overrides": {"vocab_size": 2000}}, "overrides.vocab_size: the student's vocabulary is its tokenizer's"),
    ({"overrides": {"dropout": 0.2}}, "overrides: unknown field 'dropout'"),
])
def test_student_overrides_are_checked_before_a_model_is_built(student, message):
    with pytest.raises(ConfigError) as err:
        parse_recipe({**BASE, "student": {"preset": "tiny", **student}})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("section, field, value", [("distill", "batch_size", 10**9), ("distill", "steps", 10**30),
                                                   ("distill", "grad_accum", 10**6), (None, "seed", -1), (None, "seed", 2**40)])
def test_sizes_that_would_never_fit_are_refused(section, field, value):
    recipe = {**BASE, section: {field: value}} if section else {**BASE, field: value}
    with pytest.raises(ConfigError, match=f"{field}: Input should be (less|greater) than or equal to"):
        parse_recipe(recipe)


def test_the_recipe_keys_copy_knows_are_the_recipes_fields():
    from tiercel.recipe import Recipe

    assert recipes.RECIPE_KEYS == set(Recipe.model_fields)


def test_merge_keys_of_an_anchor_nested_deeper_are_not_a_key_given_twice(tmp_path):
    (tmp_path / "r.yaml").write_text("name: x\ndata: {train: t.json}\ntokenizer: {source: train}\n"
                                     "base: &base {lr: 0.001, weight_decay: 0}\n"
                                     "pipeline: {other: &d {<<: *base, lr: 0.002}}\n"
                                     "distill: {<<: *d}\n")
    with pytest.raises(ConfigError) as err:  # loads as YAML; only the unknown top-level key is refused
        load_recipe(tmp_path / "r.yaml")
    assert "given twice" not in str(err.value) and "base" in str(err.value)


def test_set_fills_a_section_left_empty(tmp_path):
    (tmp_path / "r.yaml").write_text("name: x\ndata: {train: t.json}\ntokenizer: {source: train}\n"
                                     "teacher: {kind: checkpoint, path: t}\ndistill:\n  hidden:\n")
    got = load_recipe(tmp_path / "r.yaml", overrides={"distill.hidden.stages": 0.5})
    assert got.distill.hidden.stages == 0.5
