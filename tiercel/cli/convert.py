"""`tiercel convert SRC DST`: a checkpoint as its family publishes it -> the layout tiercel loads.

`--from florence` (default): any Florence-2/Falcon checkpoint -> tiercel's native layout. `--from geochat`:
GeoChat in LLaVA-1.5's layout -> transformers' LLaVA layout, for the GeoChat teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from tiercel.cli.app import app


@app.command()
def convert(
    src: Path = typer.Argument(..., help="Checkpoint directory as its family publishes it."),
    dst: Path = typer.Argument(..., help="Output directory (must not exist unless --overwrite)."),
    source: str = typer.Option("florence", "--from", help="Source family: florence (Florence-2 / Falcon, native or "
                               "original layout) or geochat (GeoChat in LLaVA-1.5's layout)."),
    dtype: Literal["float32", "float16", "bfloat16"] = typer.Option(
        None, help="Weight dtype to write (default: float32; geochat: float16)."),
    vision_tower: Path = typer.Option(None, help="geochat: local directory of the CLIP GeoChat names "
                                      "(openai/clip-vit-large-patch14-336, transformers layout); needed when SRC "
                                      "holds no CLIP weights."),
    image_size: int = typer.Option(None, min=14, max=4096, help="geochat: image size CLIP's position embeddings are interpolated to "
                                   "(default 504, as GeoChat)."),
    overwrite: bool = typer.Option(False, help="Replace DST if it exists."),
):
    """Convert a checkpoint to the layout tiercel loads (native Florence-2, or transformers' LLaVA for GeoChat)."""
    from tiercel.models.convert import convert as run

    result = run(source, src, dst, dtype=dtype, overwrite=overwrite, vision_tower=vision_tower, image_size=image_size)
    for note in result["notes"]:
        typer.echo(f"  {note}")
    if source == "geochat":
        what = f"LLaVA, {result['image_size']} px, {result['image_tokens']} image tokens"
    else:
        what = result["preset"] or "custom shape"
    typer.echo(f"wrote {dst} ({what}, {result['params'] / 1e6:.1f}M parameters)")
