"""`tiercel recipes`: the recipes that ship with tiercel. List them, print one, or copy one to a file to edit.

    tiercel recipes                          # each name and what it is for
    tiercel recipes show demo                # the YAML on stdout
    tiercel recipes copy demo my-demo.yaml   # a file to edit; an existing file is kept unless --overwrite

`tiercel pipeline` and `tiercel distill` take a shipped recipe's name wherever they take a YAML file.
"""

from __future__ import annotations

import typer

from tiercel.cli.app import app

recipes_app = typer.Typer(help="The shipped recipes: list them, print one, copy one to edit.",
                          invoke_without_command=True)
app.add_typer(recipes_app, name="recipes")


@recipes_app.callback()
def list_cmd(ctx: typer.Context):
    """List the shipped recipes (or: show NAME, copy NAME DEST)."""
    if ctx.invoked_subcommand is None:
        from tiercel import recipes

        width = max(map(len, recipes.names()))
        for name in recipes.names():
            typer.echo(f"{name:<{width}}  {recipes.summary(name)}")


@recipes_app.command("show")
def show_cmd(name: str = typer.Argument(..., help="Recipe name, as `tiercel recipes` lists it.")):
    """Print the recipe's YAML."""
    from tiercel import recipes

    typer.echo(recipes.get(name).read_text(), nl=False)


@recipes_app.command("copy")
def copy_cmd(
    name: str = typer.Argument(..., help="Recipe name, as `tiercel recipes` lists it."),
    dest: str = typer.Argument(None, help="File to write, or a folder for NAME.yaml (an existing one, or a path ending in /; default: ./NAME.yaml)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DEST if it exists."),
):
    """Write the recipe to a file to edit; run it with `tiercel pipeline FILE` or `tiercel distill FILE`."""
    from tiercel import recipes

    typer.echo(f"wrote {recipes.copy(name, dest, overwrite=overwrite)}")
