"""The Typer app every verb module adds its commands to, and the options several verbs share."""

from __future__ import annotations

import typer

from tiercel import __version__

app = typer.Typer(
    name="tiercel",
    help="Distill, quantize, export and run remote-sensing vision-language models on edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# tiercel.runtime.generate.MAX_BEAMS, the runtime's bound on beams (not imported: `tiercel --help` stays light).
MAX_BEAMS = 32

# --option on run, eval and profile: passed to tiercel.runtime.load(options=...) through backends.parse_options
BACKEND_OPTION = typer.Option(
    None, "--option", help="Backend setting KEY=VALUE (repeatable): an onnxruntime session config entry such as "
    "session.intra_op.allow_spinning=0, an OpenVINO property such as PERFORMANCE_HINT=LATENCY, or for a PyTorch "
    "checkpoint dtype=fp32|fp16|bf16.")

# RECIPE on distill and pipeline: tiercel.recipe.load_recipe takes a file or a shipped recipe's name
RECIPE_HELP = "Recipe: a YAML file, or the name of a shipped recipe (`tiercel recipes` lists them)."


def _version(value: bool):
    if value:
        typer.echo(f"tiercel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
):
    """tiercel: Falcon / Florence-2 models, small and fast enough for the field."""
