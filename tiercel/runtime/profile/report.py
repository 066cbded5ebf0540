"""Render a ProfileReport: rich tables (comparison, roofline, device estimates) and a PNG stage chart.

Tables need only rich (a base dependency); the chart imports matplotlib when called (`tiercel[profile]`).
Knows nothing about how the numbers were measured (runner.py).
"""

from __future__ import annotations

import math
from pathlib import Path

from tiercel.errors import require
from tiercel.fileio import atomic_path, plot_metadata
from tiercel.runtime.profile import roofline

STAGE_LABELS = {
    "preprocess": "preprocess",
    "vision_encoder": "vision encoder",
    "embed_tokens": "token embedding",
    "text_encoder": "text encoder",
    "first_token": "first token",
    "decode_token": "decode, per token",
    "generate_overhead": "search overhead",
    "postprocess": "post-process",
}
STAGE_COLORS = {
    "preprocess": "#9e9e9e",
    "vision_encoder": "#1f77b4",
    "embed_tokens": "#17becf",
    "text_encoder": "#2ca02c",
    "first_token": "#ff7f0e",
    "decode_token": "#d62728",
    "generate_overhead": "#9467bd",
    "postprocess": "#8c564b",
}
GRAPH_ORDER = ("vision_encoder", "embed_tokens", "encoder_model", "decoder_model", "decoder_with_past_model",
               "decoder_model_merged")
MB = 1e6


def _ms(stats: dict | None, spread: bool = True) -> str:
    if not stats or not stats.get("n"):
        return "-"
    p50 = _fmt(stats["p50"] * 1e3)
    return f"{p50} ({_fmt(stats['p90'] * 1e3)} / {_fmt(stats['p99'] * 1e3)})" if spread else p50


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def headline(report) -> str:
    s, m = report.settings, report.machine
    beams = s.num_beams if s.num_beams else "bundle's"
    return (f"{s.new_tokens} tokens forced per task, beams {beams}, {s.runs} runs after {s.warmup} warm-up, "
            f"{s.image_size}x{s.image_size} image; {m['cpu']}, {m['cores']} cores, load {m['load_average'][0]}")


def comparison_table(report):
    """One column per (bundle, backend): stage p50 (p90 / p99) ms, tokens/s, end-to-end, memory, sizes."""
    from rich.table import Table

    table = Table(title=f"tiercel profile: {headline(report)}", title_justify="left", show_lines=False)
    table.add_column("ms: p50 (p90 / p99)", no_wrap=True)
    for p in report.profiles:
        table.add_column(p.label, justify="right")
    ps = report.profiles
    for stage, label in STAGE_LABELS.items():
        table.add_row(label, *[_ms(p.stages.get(stage)) for p in ps])
    table.add_row("tokens/s (p50)", *[_fmt(p.tokens_per_s.get("p50", math.nan)) for p in ps])
    table.add_section()
    for tag in report.settings.tasks:
        table.add_row(f"{tag} end-to-end", *[_ms(p.tasks.get(tag)) for p in ps])
    if any(p.run_all for p in ps):
        n = len(report.settings.batch_tasks)
        table.add_row(f"run_all ({n} tasks) end-to-end", *[_ms(p.run_all["end_to_end"]) if p.run_all else "-" for p in ps])
        table.add_row("  vs sum of single runs", *[_fmt(p.run_all["sequential_p50"] * 1e3) if p.run_all else "-" for p in ps])
    table.add_section()
    table.add_row("load incl. sha256 (s)", *[f"{p.load_seconds:.2f}" for p in ps])
    table.add_row("peak RSS (MB)", *[f"{p.rss['peak'] / MB:.0f}" for p in ps])
    table.add_row("bundle size (MB)" if all(p.weights_bytes is None for p in ps) else "bundle / weights size (MB)",
                  *[f"{p.size_bytes / MB:.1f}" for p in ps])
    present = {g for p in ps for g in p.graphs}
    for g in [g for g in GRAPH_ORDER if g in present] + sorted(present - set(GRAPH_ORDER)):
        table.add_row(f"  {g} (MB)", *[f"{p.graphs[g]['bytes'] / MB:.2f} {p.graphs[g]['precision']}" if g in p.graphs else "-" for p in ps])
    return table


def peaks_line(peaks) -> str:
    """This machine's measured peaks in one line: bandwidth and matmul FLOP/s per precision measured."""
    parts = [f"{peaks.bandwidth / 1e9:.1f} GB/s copy", f"fp32 {peaks.flops / 1e9:.0f}"]
    parts += [f"{kind} {value / 1e9:.0f}" for kind in ("bf16", "int8")
              if (value := getattr(peaks, f"{kind}_flops", None))]
    return ", ".join(parts[:1]) + "; matmul GFLOP/s: " + ", ".join(parts[1:])


def roofline_table(report):
    """Per profile and stage: the bound (memory, or compute at the stage's precision), its time on this machine,
    measured p50, and measured / bound."""
    from rich.table import Table

    table = Table(title=f"roofline on this machine ({peaks_line(report.peaks)}; measured in this run): "
                        "x bound = measured p50 / roofline time (1.00x = at the roofline)",
                  title_justify="left")
    for col in ("bundle", "stage", "precision", "GFLOP", "MB read", "bound", "bound ms", "p50 ms", "x bound"):
        table.add_column(col, justify="left" if col in ("bundle", "stage", "precision", "bound") else "right", no_wrap=True)
    for p in report.profiles:
        for stage, r in p.roofline.items():
            bound = r["bound"] if r["bound"] == "memory" else f"compute {r.get('peak', 'fp32')}"
            table.add_row(p.label, STAGE_LABELS[stage], r["precision"], f"{r['flops'] / 1e9:.3g}", f"{r['bytes'] / MB:.3g}",
                          bound, _fmt(r["bound_ms"]), _fmt(r["measured_ms"]), f"{r['ratio']:.2f}x")
        table.add_section()
    return table


def roofline_notes(report) -> list[str]:
    """Lines printed under the roofline table: how work and peaks were counted."""
    lines = ["roofline: FLOPs from the model shape (matmuls + convolutions), bytes = graph files + KV cache read; "
             f"peaks: {report.peaks.method}"]
    stand_in = sorted({roofline.compute_kind(r["precision"], p.backend, report.settings.options)
                       for p in report.profiles for r in p.roofline.values() if r.get("peak", "fp32") == "fp32"} - {"fp32"})
    if stand_in:
        lines.append(f"no {'/'.join(stand_in)} matmul peak was measured here: those stages' compute bounds use the "
                     "fp32 peak, which their kernels can beat (x bound below 1)")
    if any(p.weights_bytes is not None for p in report.profiles):
        lines.append("a checkpoint's bytes are its parameters per stage (the decoder's include lm_head, tied or not)")
    lines += [f"no roofline for {p.label}: {p.roofline_skipped}" for p in report.profiles if p.roofline_skipped]
    return lines


def precision_notes(report) -> list[str]:
    """A line when OpenVINO was profiled in f32 on a CPU that computes bf16: the option that may halve its time."""
    options = report.settings.options or {}
    bf16 = report.machine.get("cpu_bf16")
    if not bf16 or "INFERENCE_PRECISION_HINT" in options or not any(p.backend == "openvino" for p in report.profiles):
        return []
    return [f"this CPU computes bf16 ({', '.join(bf16)}): OpenVINO ran in f32, tiercel's default; "
            "--option INFERENCE_PRECISION_HINT=bf16 trades a little precision for speed (Florence-2-base shape on a "
            "2-core Zen 4: 1.87x end to end; docs/runtime.md)"]


def estimate_table(report):
    """ESTIMATED per-image / per-token / task latency on each device; `estimate_notes` says how."""
    from rich.table import Table

    table = Table(title="ESTIMATE, not measured: latency on edge devices from the bundle's bytes and FLOPs",
                  title_justify="left")
    table.add_column("device (estimate)", no_wrap=True)
    for p in report.profiles:
        table.add_column(f"{p.label}\nimage / token / task ms", justify="right")
    for key, d in report.devices.items():
        row = [f"{d.name}{' *' if d.unverified else ''}"]
        for p in report.profiles:
            e = p.estimates[key]
            row.append(f"{_fmt(e['per_image_ms'])} / {_fmt(e['per_token_ms'])} / {_fmt(e['task_ms'])}")
        table.add_row(*row)
    return table


def estimate_notes(report) -> list[str]:
    """The lines printed under the estimate table: formula, assumed efficiencies, what is unverified."""
    from tiercel.runtime.profile.devices import FORMULA

    effs = sorted({(d.mem_efficiency, d.compute_efficiency) for d in report.devices.values()})
    lines = [f"estimate: {FORMULA}; task = per image + {report.settings.new_tokens - 1} tokens",
             "assumed efficiencies (not measured on the devices): "
             + ", ".join(f"mem {m:g} / compute {c:g}" for m, c in effs)
             + "; peaks at each graph's precision as exported (an fp32 bundle uses the fp32 CUDA-core peak)"]
    if any(d.unverified for d in report.devices.values()):
        lines.append("* compute peaks derived from published sparse INT8 TOPS, core counts and clocks: unverified")
    return lines


def stage_segments(profile, new_tokens: int) -> list[tuple[str, float]]:
    """(stage, ms) making up one single-task run at p50: decode_token counts new_tokens - 1 steps."""
    out = []
    for stage in STAGE_LABELS:
        stats = profile.stages.get(stage)
        if not stats or not stats.get("n"):
            continue
        ms = stats["p50"] * 1e3 * (new_tokens - 1 if stage == "decode_token" else 1)
        out.append((stage, ms))
    return out


def plot(report, path) -> None:
    """Write a PNG: left, a stacked bar per profile of one task's p50 time by stage; right, decode ms per token
    measured against this machine's memory-bandwidth bound."""
    matplotlib = require("matplotlib", "profile", "the --plot chart")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = report.profiles
    n_tok = report.settings.new_tokens
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 1.9 + 0.6 * len(ps)), gridspec_kw={"width_ratios": [3, 1.3]})
    for row, p in enumerate(ps):
        left = 0.0
        segments = stage_segments(p, n_tok)
        total = sum(ms for _, ms in segments)
        for stage, ms in segments:
            name = f"decode ({n_tok - 1} tokens)" if stage == "decode_token" else STAGE_LABELS[stage]
            ax.barh(row, ms, left=left, color=STAGE_COLORS[stage], edgecolor="white", linewidth=0.5,
                    label=name if row == 0 else None)
            if total and ms / total > 0.07:
                ax.text(left + ms / 2, row, _fmt(ms), ha="center", va="center", fontsize=8, color="white")
            left += ms
        ax.text(left, row, f"  {_fmt(total)} ms", va="center", fontsize=9)
    ax.set_yticks(range(len(ps)), [p.label for p in ps])
    ax.invert_yaxis()
    ax.set_xlabel(f"ms for one task, sum of stage p50s ({n_tok} tokens forced: decode = {n_tok - 1} x per-token p50)")
    ax.set_title("where the time goes", loc="left", fontsize=10)
    ax.set_xlim(0, 1.18 * max(sum(ms for _, ms in stage_segments(p, n_tok)) for p in ps))  # room for the totals
    tok = [p.stages["decode_token"]["p50"] * 1e3 for p in ps]
    bound = [p.roofline.get("decode_token", {}).get("bound_ms", math.nan) for p in ps]
    ax2.barh(range(len(ps)), tok, color=STAGE_COLORS["decode_token"])
    ax2.scatter(bound, range(len(ps)), marker="|", s=400, linewidths=2.5, color="black", zorder=3,
                label="bandwidth bound on this machine")
    for row, (t, p) in enumerate(zip(tok, ps)):
        ax2.text(t, row, f"  {_fmt(t)} ms ({_fmt(p.tokens_per_s.get('p50', math.nan))} tok/s)", va="center", fontsize=8)
    ax2.set_yticks(range(len(ps)), [""] * len(ps))
    ax2.invert_yaxis()
    ax2.set_xlabel("ms per decode step (p50)")
    ax2.set_title("decode step vs its bound", loc="left", fontsize=10)
    ax2.set_xlim(0, 1.9 * max([*tok, *[b for b in bound if math.isfinite(b)]]))  # room for the labels
    handles, names = ax.get_legend_handles_labels()
    h2, n2 = ax2.get_legend_handles_labels()
    fig.legend(handles + h2, names + n2, loc="lower center", ncol=5, fontsize=8, frameon=False)
    m = report.machine
    fig.suptitle(f"tiercel profile on {m['cpu']} ({m['cores']} cores, load {m['load_average'][0]}; measured "
                 f"{peaks_line(report.peaks)})",
                 x=0.01, ha="left", fontsize=11)
    fig.tight_layout(rect=(0, 0.55 / (1.9 + 0.6 * len(ps)) + 0.04, 1, 1))
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:  # the temporary name has no suffix: the format comes from `path`'s
        fig.savefig(tmp, dpi=120, format=fmt, metadata=plot_metadata(fmt))
    plt.close(fig)
