"""The pipeline's stage table: the names --from accepts are the stages that run, in that order."""

from tiercel.pipeline import STAGES, Pipeline
from tiercel.recipe import parse_recipe


def test_the_stage_table_and_the_stage_names_agree(tmp_path):
    recipe = parse_recipe(
        {"name": "x", "out": str(tmp_path), "data": {"train": "t.json"}, "tokenizer": {"source": "train"}}
    )
    stages = Pipeline(recipe, log=lambda m: None).stages()
    assert tuple(stages) == STAGES
    assert all(fn.__name__ == f"stage_{name}" for name, fn in stages.items())
