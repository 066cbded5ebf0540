"""`tiercel export CHECKPOINT --out BUNDLE`: a checkpoint -> a bundle checked for parity with PyTorch."""

from __future__ import annotations

from pathlib import Path

import typer

from tiercel.cli.app import app
from tiercel.runtime.backends import backends_help


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory (native or original Florence-2/Falcon layout)."),
    out: Path = typer.Option(..., "--out", help="Bundle directory to write (must not exist unless --overwrite)."),
    backend: list[str] = typer.Option(["onnxruntime"], "--backend", help=f"{backends_help(checkpoints=False)}; repeat for several. ONNX graphs are always written."),
    decoder: str = typer.Option("split", help="Decoder layout: split (faster per token) or merged (decoder_model_merged, smaller)."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    parity: bool = typer.Option(True, help="Check the bundle against PyTorch (per-graph diffs, greedy generations)."),
    precision: str = typer.Option("fp32", help="Graph precision: fp32, or fp16 for GPUs (onnxruntime CUDA, TensorRT); norms and softmax stay fp32."),
    max_batch: int = typer.Option(None, "--max-batch", min=1, help="With --backend tensorrt: rows the engines take per call (default: 14 tasks x num_beams)."),
):
    """Export a checkpoint to ONNX (and OpenVINO IR / TensorRT engines) with a manifest."""
    from tiercel.export.bundle import export_checkpoint
    from tiercel.runtime.bundle import read_bundle

    path = export_checkpoint(checkpoint, out, backends=tuple(dict.fromkeys(backend)), decoder=decoder, overwrite=overwrite, parity=parity,
                             precision=precision, max_batch=max_batch)
    manifest = read_bundle(path).manifest
    for name, report in manifest.parity.items():
        measure = report.get("measure", "max_abs_diff").replace("_", " ")
        typer.echo(f"  parity {name}: {measure} {report['worst']:.2g}, greedy identical {report['greedy_identical']}")
    typer.echo(f"wrote {path} ({len(manifest.graphs)} graphs, decoder {manifest.decoder})")
