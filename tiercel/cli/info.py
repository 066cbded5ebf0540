"""`tiercel info PATH|PRESET`: parameters per component, sizes per precision, FLOPs and decoder bytes/token."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tiercel.cli.app import app


def _mb(x: float) -> str:
    return f"{x / 1e6:,.1f} MB"


@app.command()
def info(
    target: str = typer.Argument(..., help="A preset name (e.g. florence2-base) or a checkpoint directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    prompt_tokens: int = typer.Option(32, min=0, help="Prompt tokens assumed after the image tokens."),
    new_tokens: int = typer.Option(32, min=1, help="Generated tokens the self-attention KV is averaged over."),
):
    """Show where a model's parameters, bytes and FLOPs go. Reads no weights."""
    from rich.console import Console
    from rich.table import Table

    from tiercel.errors import ConfigError
    from tiercel.fileio import marker_is_ours
    from tiercel.models.checkpoint import resolve
    from tiercel.models.report import COMPONENTS, WEIGHT_BITS, model_report

    if marker_is_ours(Path(target) / "manifest.json"):
        raise ConfigError(f"{target}: is a bundle; `tiercel info` reads a checkpoint folder or a preset name (a bundle's "
                          f"model shape is in its manifest.json; `tiercel profile {target}` measures the bundle)")
    model, name = resolve(target)
    report = model_report(model, name, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    console = Console()
    shape = report.shape
    console.print(f"[bold]{name}[/bold]: {report.total_params / 1e6:.1f}M parameters, {shape.image_size}x{shape.image_size} input, "
                  f"{shape.image_tokens} image tokens")
    params = Table("component", "parameters", "share", title="Parameters")
    for comp in COMPONENTS:
        n = report.params[comp]
        label = "tied to embeddings" if comp == "lm_head" and report.tied_lm_head else f"{n / 1e6:.2f}M"
        params.add_row(comp, label, f"{100 * n / report.total_params:.1f}%")
    params.add_row("[bold]total[/bold]", f"[bold]{report.total_params / 1e6:.1f}M[/bold]", "100%")
    console.print(params)
    sizes = Table("precision", "weights", "decoder bytes/token", "of which weights", "cross-attn KV", "self-attn KV",
                  title=f"Sizes and per-token decoder reads ({report.encoder_tokens} encoder tokens, {report.new_tokens} new tokens)")
    for prec in WEIGHT_BITS:
        d = report.decoder_bytes_per_token(prec)
        sizes.add_row(prec, _mb(report.size_bytes(prec)), _mb(d["total"]), _mb(d["weights"]), _mb(d["cross_kv"]), _mb(d["self_kv"]))
    console.print(sizes)
    console.print(f"vision encoder: {report.vision_gflops:.1f} GFLOPs per image; text encoder: {report.encoder_gflops:.1f} GFLOPs "
                  f"for {report.encoder_tokens} tokens (1 multiply-add = 2 FLOPs)")
    console.print("[dim]int4 = 4 bits + an fp16 scale per 32 weights, the lm_head and token table in int8 (tiercel quantize's "
                  "default); KV cache fp32 with fp32 weights, fp16 otherwise[/dim]")
