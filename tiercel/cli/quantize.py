"""`tiercel quantize BUNDLE --out BUNDLE_Q --scheme SCHEME`: an fp32 bundle -> an int8/int4 bundle, guarded."""

from __future__ import annotations

from pathlib import Path

import typer

from tiercel.cli.app import app
from tiercel.quantize.settings import QuantizeSettings
from tiercel.quantize.settings import settings as make_settings

_F = QuantizeSettings.model_fields


def _opt(name: str, *flags: str, **kw):
    """A Typer option whose default and help are QuantizeSettings' (one place for both)."""
    return typer.Option(_F[name].default, *(flags or (f"--{name.replace('_', '-')}",)), help=_F[name].description, **kw)


@app.command()
def quantize(
    bundle: Path = typer.Argument(..., help="fp32 bundle directory written by `tiercel export` (split decoder)."),
    out: Path = typer.Option(..., "--out", help="Quantized bundle directory to write (must not exist unless --overwrite)."),
    scheme: str = _opt("scheme"),
    calib: Path = typer.Option(None, "--calib", help="Falcon_SFT file or `tiercel data synth` folder for calibration: int8-static's activation ranges, int4's GPTQ (onnxruntime) or AWQ / scale estimation where they beat data-free (NNCF); its val.json feeds the guard."),
    root: Path = typer.Option(None, "--root", help="Folder the calibration images are relative to (default: the file's folder)."),
    n: int = _opt("n"),
    max_drop: float = _opt("max_drop"),
    max_task_drop: float = _opt("max_task_drop"),
    val: Path = typer.Option(None, "--val", help="Falcon_SFT file for the accuracy guard (default: val.json beside --calib)."),
    n_val: int = _opt("n_val"),
    n_val_max: int = _opt("n_val_max"),
    min_agreement: float = _opt("min_agreement"),
    confidence: float = _opt("confidence"),
    block_size: int = _opt("block_size"),
    asymmetric: bool = typer.Option(False, "--asymmetric", help="int4 blocks with zero points instead of symmetric."),
    all_layers: bool = _opt("all_layers", "--all-layers"),
    policy: list[str] = typer.Option(None, "--policy", help=_F["policy"].description),
    backend: str = _opt("backend"),
    ratio: float = _opt("ratio"),
    max_new_tokens: int = _opt("max_new_tokens"),
    max_retries: int = _opt("max_retries"),
    sensitivity: bool = _opt("sensitivity", "--sensitivity"),
    engines: bool = _opt("engines", "--engines"),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    threads: int = typer.Option(None, "--threads", min=1, max=1024, help="Intra-op threads of the sessions that calibrate, rank layers and run the guard (default: the backend's, one per core); the output does not depend on it."),
):
    """Quantize a bundle: calibrate on real decode steps, guard accuracy against fp32, write checksums."""
    import json

    from tiercel.quantize import quantize_bundle

    roles = {}
    for item in policy or ():
        role, sep, leaf = item.partition("=")
        if not (sep and role.strip() and leaf.strip()):
            raise typer.BadParameter(f"expected ROLE=SCHEME, e.g. decoder=int8-weight-only (got '{item}')", param_hint="--policy")
        roles[role.strip()] = leaf.strip()
    settings = make_settings(option=lambda f: f"--{f.replace('_', '-')}", scheme=scheme, n=n, max_drop=max_drop,
                             max_task_drop=max_task_drop,
                             n_val=n_val, n_val_max=n_val_max, min_agreement=min_agreement, confidence=confidence, block_size=block_size,
                             symmetric=False if asymmetric else None, all_layers=all_layers, backend=backend, ratio=ratio,
                             max_new_tokens=max_new_tokens, max_retries=max_retries, sensitivity=sensitivity,
                             engines=engines, policy=roles or None)
    section = quantize_bundle(bundle, out, calib=calib, root=root, val=val, settings=settings, overwrite=overwrite,
                              log=lambda m: typer.echo(m, err=True), threads=threads)
    for name, row in section.sizes.items():
        typer.echo(f"  {name:24s} {section.graphs.get(name, '')[:16]:16s} {row['bytes'] / 1e6:9.2f} MB  x{row['ratio']:.3f}")
    guard = section.guard
    if guard.run:
        typer.echo(f"  guard: token agreement {guard.token_agreement:.3f}, average {guard.quantized_average:.4f} vs "
                   f"fp32 {guard.fp32_average:.4f} (drop {guard.drop:.2%}"
                   + (f", {guard.confidence:.0%} bound {guard.drop_bound:.2%}" if guard.drop_bound is not None else "")
                   + f"), {len(guard.attempts)} attempt(s), {guard.attempts[-1]['kept']}")
        if guard.max_task_drop is not None:
            from tiercel.quantize.guard import MIN_TASK_SAMPLES

            worst = max((t for t in guard.per_task if "drop_low" in guard.per_task[t]),
                        key=lambda t: guard.per_task[t]["drop_low"], default=None)
            typer.echo(f"  guard per task: no task's drop resolved over {guard.max_task_drop:.2%} (closest: {worst}, "
                       f"at least {guard.per_task[worst]['drop_low']:.2%})" if worst else
                       f"  guard per task: no task checked (each needs {MIN_TASK_SAMPLES} val samples and an fp32 "
                       "score above 0)")
        if guard.caution:
            typer.echo(f"  guard caution: {guard.caution}")
    else:
        typer.echo(f"  guard: not run ({guard.reason})")
    if sensitivity:
        from rich.console import Console

        from tiercel.quantize.sensitivity import table

        Console().print(table(json.loads((out / "sensitivity.json").read_text())))
    typer.echo(f"wrote {out} ({section.scheme}, {section.backend})")
