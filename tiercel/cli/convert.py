"""`tiercel convert SRC DST`: any Florence-2/Falcon checkpoint directory -> tiercel's native layout."""

from __future__ import annotations

from pathlib import Path

import typer

from tiercel.cli import app


@app.command()
def convert(
    src: Path = typer.Argument(..., help="Checkpoint directory, native or original (remote-code) layout."),
    dst: Path = typer.Argument(..., help="Output directory (must not exist unless --overwrite)."),
    dtype: str = typer.Option("float32", help="Weight dtype to write: float32, float16 or bfloat16."),
    overwrite: bool = typer.Option(False, help="Replace DST if it exists."),
):
    """Convert a checkpoint to the native transformers layout with an <image> token and tiercel.json."""
    from tiercel.models.convert import convert_checkpoint

    result = convert_checkpoint(src, dst, dtype=dtype, overwrite=overwrite)
    for note in result["notes"]:
        typer.echo(f"  {note}")
    typer.echo(f"wrote {dst} ({result['preset'] or 'custom shape'}, {result['params'] / 1e6:.1f}M parameters)")
