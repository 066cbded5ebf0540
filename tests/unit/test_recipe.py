"""Recipes: every error at once with its field path, in one line; shipped recipes validate."""

from pathlib import Path

import pytest

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


def test_cached_teacher_cannot_do_hidden_states():
    with pytest.raises(ConfigError, match="a cached teacher holds only top-k logits"):
        parse_recipe({**BASE, "teacher": {"kind": "cached", "cache": "c", "path": "t"},
                      "distill": {"kd": 1.0, "hidden": {"vision": 1.0}}})


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


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[2].joinpath("recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    load_recipe(path)
