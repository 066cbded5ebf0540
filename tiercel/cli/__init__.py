"""The `tiercel` command. One module per verb; each parses, validates and calls one library function.

Errors: a TiercelError prints as one line on stderr and exits 1. TIERCEL_DEBUG=1 re-raises it so the
traceback shows. Verb modules import heavy libraries (torch, onnx) inside their commands, so
`tiercel --help` stays fast.
"""

from __future__ import annotations

import os
import sys

import typer

from tiercel import __version__
from tiercel.errors import TiercelError

app = typer.Typer(
    name="tiercel",
    help="Distill, quantize, export and run remote-sensing vision-language models on edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# --option on run, eval and profile: passed to tiercel.runtime.load(options=...) through backends.parse_options
BACKEND_OPTION = typer.Option(
    None, "--option", help="Backend setting KEY=VALUE (repeatable): an onnxruntime session config entry such as "
    "session.intra_op.allow_spinning=0, an OpenVINO property such as PERFORMANCE_HINT=LATENCY, or for a PyTorch "
    "checkpoint dtype=fp32|fp16|bf16.")


def _version(value: bool):
    if value:
        typer.echo(f"tiercel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
):
    """tiercel: Falcon / Florence-2 models, small and fast enough for the field."""


def _register():
    # Each verb module adds its commands to `app` (or a sub-app) on import.
    from tiercel.cli import convert, data, distill, eval, export, info, pipeline, profile, quantize, run  # noqa: F401


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the Typer app, turning TiercelError into one line and exit code 1."""
    try:
        app(args=argv, standalone_mode=False)
    except TiercelError as err:
        if os.environ.get("TIERCEL_DEBUG") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
