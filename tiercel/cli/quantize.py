"""`tiercel quantize BUNDLE --out BUNDLE_Q --scheme SCHEME`: an fp32 bundle -> an int8/int4 bundle, guarded."""

from __future__ import annotations

from pathlib import Path

import typer

from tiercel.cli import app


@app.command()
def quantize(
    bundle: Path = typer.Argument(..., help="fp32 bundle directory written by `tiercel export` (split decoder)."),
    out: Path = typer.Option(..., "--out", help="Quantized bundle directory to write (must not exist unless --overwrite)."),
    scheme: str = typer.Option("int8-static", "--scheme", help="int8-static, int8-dynamic, int4-weight-only or mixed."),
    calib: Path = typer.Option(None, "--calib", help="Falcon_SFT file or `tiercel data synth` folder for calibration: int8-static's activation ranges, int4's GPTQ (onnxruntime) or AWQ / scale estimation where they beat data-free (NNCF); its val.json feeds the guard."),
    root: Path = typer.Option(None, "--root", help="Folder the calibration images are relative to (default: the file's folder)."),
    n: int = typer.Option(128, "--n", help="Calibration samples; decoder steps are thinned to this many feeds per graph."),
    max_drop: float = typer.Option(0.01, "--max-drop", min=0.0, max=1.0, help="Largest relative drop of the 14-task average allowed on the val split."),
    val: Path = typer.Option(None, "--val", help="Falcon_SFT file for the accuracy guard (default: val.json beside --calib)."),
    n_val: int = typer.Option(224, "--n-val", min=1, help="Val samples the guard compares on, balanced over tasks (224: 16 per task)."),
    min_agreement: float = typer.Option(0.0, "--min-agreement", min=0.0, max=1.0, help="Also require this greedy token agreement with fp32 (0..1)."),
    confidence: float = typer.Option(0.9, "--confidence", help="The guard holds when this quantile of the paired-bootstrap drop is within --max-drop (0: the point drop decides)."),
    block_size: int = typer.Option(None, "--block-size", help="int4 block size: 32, 64 or 128 (default 32)."),
    asymmetric: bool = typer.Option(False, "--asymmetric", help="int4 blocks with zero points instead of symmetric."),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime, openvino (NNCF) or tensorrt (explicit Q/DQ ONNX)."),
    ratio: float = typer.Option(1.0, "--ratio", min=0.0, max=1.0, help="OpenVINO int4: share of layers in int4 (the rest int8)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Tokens generated per sample when calibrating and guarding."),
    sensitivity: bool = typer.Option(False, "--sensitivity", help="Write sensitivity.json (per-layer report) and print the top layers."),
    engines: bool = typer.Option(False, "--engines", help="With --backend tensorrt: also build INT8 TensorRT engines from the Q/DQ graphs (needs tensorrt and an NVIDIA GPU)."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
):
    """Quantize a bundle: calibrate on real decode steps, guard accuracy against fp32, write checksums."""
    import json

    from tiercel.quantize import quantize_bundle

    section = quantize_bundle(bundle, out, scheme, calib=calib, root=root, n=n, max_drop=max_drop, val=val, n_val=n_val,
                              min_agreement=min_agreement, confidence=confidence, block_size=block_size,
                              symmetric=False if asymmetric else None,
                              backend=backend, ratio=ratio, max_new_tokens=max_new_tokens, sensitivity=sensitivity, engines=engines,
                              overwrite=overwrite, log=lambda m: typer.echo(m, err=True))
    for name, row in section["sizes"].items():
        typer.echo(f"  {name:24s} {section['graphs'].get(name, '')[:16]:16s} {row['bytes'] / 1e6:9.2f} MB  x{row['ratio']:.3f}")
    guard = section["guard"]
    if guard["run"]:
        typer.echo(f"  guard: token agreement {guard['token_agreement']:.3f}, average {guard['quantized_average']:.4f} vs "
                   f"fp32 {guard['fp32_average']:.4f} (drop {guard['drop']:.2%}"
                   + (f", {guard['confidence']:.0%} bound {guard['drop_bound']:.2%}" if guard.get("drop_bound") is not None else "")
                   + f"), {len(guard['attempts'])} attempt(s), {guard['attempts'][-1]['kept']}")
        if guard.get("caution"):
            typer.echo(f"  guard caution: {guard['caution']}")
    else:
        typer.echo(f"  guard: not run ({guard['reason']})")
    if sensitivity:
        from rich.console import Console

        from tiercel.quantize.sensitivity import table

        Console().print(table(json.loads((out / "sensitivity.json").read_text())))
    typer.echo(f"wrote {out} ({section['scheme']}, {section['backend']})")
