"""`tiercel distill RECIPE` (train), `tiercel distill cache-teacher RECIPE`, `tiercel distill generate-answers RECIPE`.

Under torchrun the same commands run multi-process: `torchrun --nproc_per_node 4 -m tiercel distill recipe.yaml`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.core import TyperGroup

from tiercel.cli.app import RECIPE_HELP, app

DEFAULT = "train"


class _DefaultToTrain(TyperGroup):
    """`tiercel distill RECIPE` means `tiercel distill train RECIPE`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [DEFAULT, *args]
        return super().parse_args(ctx, args)


distill_app = typer.Typer(cls=_DefaultToTrain, no_args_is_help=True,
                          help="Distill a student from a teacher (or fine-tune without one), as a recipe describes.")
app.add_typer(distill_app, name="distill")


def _overrides(items: list[str]) -> dict:
    """`--set distill.steps=10` pairs -> {"distill.steps": 10} (values parsed as YAML scalars)."""
    import yaml

    from tiercel.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected FIELD=VALUE, e.g. --set distill.steps=100")
        try:
            out[key] = yaml.safe_load(value)
        except (yaml.YAMLError, RecursionError):
            raise ConfigError(f"--set {item}: the value is not valid YAML; e.g. --set distill.steps=100") from None
    return out


@distill_app.command(DEFAULT)
def train(
    recipe: Path = typer.Argument(..., help=RECIPE_HELP),
    resume: bool = typer.Option(False, help="Continue from the newest checkpoint in the recipe's out directory."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: --set distill.steps=100 (repeatable)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
):
    """Train the student; it ends up in <out>/student, checkpoints in <out>/checkpoints."""
    from tiercel.distill.trainer import distill
    from tiercel.recipe import load_recipe

    summary = distill(load_recipe(recipe, _overrides(set_)), resume=resume, progress=not quiet)
    if summary.student:
        typer.echo(json.dumps(summary.model_dump(include={"student", "steps", "resumed_from", "val"}), default=str))


@distill_app.command("cache-teacher")
def cache_teacher(
    recipe: Path = typer.Argument(..., help="Recipe with teacher.kind cached, teacher.path and teacher.cache."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field (repeatable)."),
):
    """Run the teacher once and store its top-k logits per answer token (resumable, sharded over processes)."""
    from tiercel.distill.cache import cache_teacher as run
    from tiercel.recipe import load_recipe

    typer.echo(json.dumps(run(load_recipe(recipe, _overrides(set_))), default=str))


@distill_app.command("generate-answers")
def generate_answers(
    recipe: Path = typer.Argument(..., help="Recipe with teacher.kind generated and teacher.path."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field (repeatable)."),
):
    """Have the teacher answer every training prompt, converted to Falcon's grammar (resumable)."""
    from tiercel.distill.answers import generate_for_recipe
    from tiercel.recipe import load_recipe

    typer.echo(json.dumps(generate_for_recipe(load_recipe(recipe, _overrides(set_))), default=str))
