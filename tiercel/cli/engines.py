"""`tiercel engines BUNDLE`: TensorRT engines for a bundle's ONNX graphs, built on the GPU that will run them."""

from __future__ import annotations

from pathlib import Path

import typer

from tiercel.cli.app import app


@app.command()
def engines(
    bundle: Path = typer.Argument(..., help="Bundle directory (from export or quantize); engines are added to it."),
    max_batch: int = typer.Option(None, "--max-batch", min=1, help="Rows the text graphs take per call (default: 14 tasks x the bundle's num_beams); larger batches run in chunks."),
    vision_batch: int = typer.Option(4, "--vision-batch", min=1, help="Images the vision graph takes per call (run_all sends 2)."),
    workspace_gb: float = typer.Option(None, "--workspace-gb", min=0.1, max=1024, help="Cap TensorRT's scratch memory while building, in GB (0.1 to 1024; default: TensorRT's)."),
    parity: bool = typer.Option(True, help="Check every engine against its ONNX graph on onnxruntime; keep nothing on a mismatch."),
):
    """Build TensorRT engines on this GPU (engines run only where they were built) and add them to BUNDLE."""
    from tiercel.export.tensorrt import add_engines

    rows = add_engines(bundle, max_batch=max_batch, vision_batch=vision_batch, workspace_gb=workspace_gb, parity=parity,
                       say=typer.echo)
    info = rows[0]["engine"]
    typer.echo(f"wrote {len(rows)} engines to {bundle / 'tensorrt'} (TensorRT {info['tensorrt']}, {info['gpu']}, "
               f"{', '.join(sorted({r['precision'] for r in rows}))}); run them with --backend tensorrt")
