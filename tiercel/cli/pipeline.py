"""`tiercel pipeline RECIPE`: every stage of a recipe, resumable, ending with the report; `tiercel demo` runs the
shipped `demo` recipe (tiercel/recipes/demo.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tiercel.cli.app import RECIPE_HELP, app

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


def _run(recipe_path: Path | Traversable, out: Path | None, from_stage: str | None, set_: list[str]):
    from tiercel.cli.distill import _overrides
    from tiercel.pipeline import relocate, run_pipeline
    from tiercel.recipe import load_recipe

    recipe = load_recipe(recipe_path, _overrides(set_))
    if out is not None:
        recipe = relocate(recipe, out)
    results = run_pipeline(recipe, from_stage=from_stage, log=lambda m: typer.echo(m, err=True))
    report = Path(results["report"]["markdown"])
    typer.echo(report.read_text().split("## Per task")[0].rstrip())
    typer.echo(f"\nreport: {report} (also {report.with_suffix('.json').name}, {report.with_suffix('.png').name})")


@app.command()
def pipeline(
    recipe: Path = typer.Argument(..., help=RECIPE_HELP),
    out: Path = typer.Option(None, help="Output directory for everything the run writes: the run, and the data and "
                             "teacher it generates (default: the recipe's out and paths)."),
    from_stage: str = typer.Option(None, "--from", help="Re-run from this stage: data, teacher, distill, export, quantize, eval, profile, report."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: --set distill.steps=100 (repeatable)."),
):
    """Run a recipe end to end (data, teacher, distill, export, quantize, eval, profile), then write the report."""
    _run(recipe, out, from_stage, set_)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), help="Output directory."),
    from_stage: str = typer.Option(None, "--from", help="Re-run from this stage."),
):
    """The built-in demo: synthetic benchmark -> teacher -> 4x smaller student -> fp32/int8/int4 bundles -> report."""
    from tiercel import recipes

    _run(recipes.get("demo"), out, from_stage, [])
