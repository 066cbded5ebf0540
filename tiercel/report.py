"""The pipeline report: teacher / student / quantised students side by side, as markdown, JSON and PNG.

Reads only what the pipeline's stages wrote (eval/*.json, profile*.json, the bundles' manifests), so it can
be rebuilt at any time (`tiercel pipeline RECIPE --from report`). Device numbers are ESTIMATES and say so.
"""

from __future__ import annotations

import json
from pathlib import Path

from tiercel.fileio import atomic_path, atomic_write_text, finite, write_json
from tiercel.tasks import TAGS, get


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(pipeline) -> dict:
    """Everything the report shows, per model row."""
    out = pipeline.out
    prof = _load(out / "profile.json") or {"profiles": []}
    by_bundle = {Path(p["bundle"]).name: p for p in prof["profiles"]}
    rows = {}
    for label, bundle in pipeline.models().items():
        ev = _load(out / "eval" / f"{label}.json") or {}
        p = by_bundle.get(bundle.name, {})
        stages = p.get("stages", {})
        rows[label] = {
            "bundle": str(bundle),
            "average": ev.get("average_headline"),
            "headline": _values(ev),
            "protocol": ev.get("protocol", "tiercel"),
            "falcon": _falcon(ev),
            "size_mb": p.get("size_bytes", 0) / 1e6 if p else None,
            "stages_ms": {s: v["p50"] * 1e3 for s, v in stages.items()},
            "tasks_ms": {t: v["p50"] * 1e3 for t, v in p.get("tasks", {}).items() if isinstance(v, dict) and "p50" in v},
            "roofline": {st: {k: r.get(k) for k in ("precision", "bound", "peak", "bound_ms", "measured_ms")}
                         for st, r in p.get("roofline", {}).items()},
            "tokens_per_s": p.get("tokens_per_s", {}).get("p50") if isinstance(p.get("tokens_per_s"), dict) else p.get("tokens_per_s"),
            "estimates": {e.get("device", k): {"per_token_ms": e["per_token_ms"], "per_image_ms": e["per_image_ms"], "task_ms": e["task_ms"]}
                          for k, e in p.get("estimates", {}).items()},
        }
    ov = _load(out / "profile_openvino.json")
    quant = pipeline.done("quantize") or {}
    guard = {**{f"student-{s}": {"failed": msg} for s, msg in quant.get("failed", {}).items()},
             **{f"student-{s}": v.get("guard") for s, v in quant.get("bundles", {}).items()}}
    paired = _paired({label: out / "eval" / f"{label}.json" for label in rows})
    teacher = pipeline.done("teacher") or {}
    warnings = [c["warning"] for c in (teacher.get("prompt_check") or {}, teacher.get("image_check") or {}) if c.get("warning")]
    return {"rows": rows, "guard": guard, "paired": paired, "warnings": warnings, "machine": prof.get("machine"), "settings": prof.get("settings"),
            "estimate_formula": prof.get("estimate_formula"), "peaks": prof.get("peaks"), "openvino": ov["profiles"][0] if ov and ov.get("profiles") else None}


def _paired(evals: dict[str, Path]) -> dict[str, dict]:
    """{label: tiercel.evaluate.compare result} of each quantized student against the fp32 student, on the records
    both scored (their eval JSONs' kept predictions); {} when the student's eval has no rows (an older run)."""
    from tiercel.errors import DataError
    from tiercel.evaluate.compare import compare_rows, read_rows

    base = evals.get("student")
    if base is None or not base.is_file():
        return {}
    try:
        reference = read_rows(base)
    except DataError:
        return {}
    out = {}
    for label, path in evals.items():
        if label.startswith("student-") and path.is_file():
            try:
                out[label] = compare_rows(reference, read_rows(path), names=(str(base), str(path)))
            except DataError as err:
                out[label] = {"error": str(err)}
    return out


def _paired_table(paired: dict) -> list[str]:
    """Per task, each quantized student's change against the fp32 student with its paired 95% interval."""
    names = list(paired)
    ok = [n for n in names if "error" not in paired[n]]
    lines = ["", "## Quantized vs fp32 student, paired (eval split)", "",
             "Change of each task's headline (quantized / fp32 - 1) with its 95% interval over 1,000 paired resamples "
             "of the records (both scored on each resample; `tiercel compare`); points of the headline where the "
             "fp32 student scores 0. **Bold**: the interval is clear of 0, a change these records resolve.", "", "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    tags = [t for t in TAGS if any(t in paired[n]["per_task"] for n in ok)]
    for tag in tags:
        lines.append(f"| {tag} | " + " | ".join(
            _change(paired[n]["per_task"].get(tag)) if n in ok else "-" for n in names) + " |")
    lines.append("| average | " + " | ".join(_change(paired[n]["average"]) if n in ok else "-" for n in names) + " |")
    lines += [f"- {n}: {paired[n]['error']}" for n in names if n not in ok]
    return lines


def _change(s: dict | None) -> str:
    from tiercel.evaluate.compare import change_cell

    return change_cell(s)


def _per_task(rows: dict, names: list[str], protocol: str) -> list[str]:
    """The per-task table of headline x 100 under `protocol` (docs/eval.md)."""
    lines = ["", f"## Per task (headline metric x 100, {protocol} protocol)", "",
             "| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for tag in TAGS:
        cells = [_f(None if rows[n]["headline"].get(tag) is None else 100 * rows[n]["headline"][tag]) for n in names]
        lines.append(f"| {tag} | {get(tag).headline_of(protocol)} | " + " | ".join(cells) + " |")
    return lines


def _roofline(rows: dict, names: list[str], peaks: dict | None) -> list[str]:
    """Each model's measured stage p50 against its bound on the machine that profiled it (tiercel profile's
    roofline: memory, or compute at the graph's precision)."""
    have = [n for n in names if rows[n].get("roofline")]
    if not have:
        return []
    measured = ", ".join(f"{k} {peaks[f'{k}_matmul_gflops']:.0f}" for k in ("bf16", "int8") if (peaks or {}).get(f"{k}_matmul_gflops"))
    head = (f"Bounds on the profiling machine ({peaks['bandwidth_gbs']:.1f} GB/s; matmul GFLOP/s fp32 {peaks['matmul_gflops']:.0f}"
            f"{', ' + measured if measured else ''}); x bound = measured p50 / bound." if peaks else "x bound = measured p50 / bound.")
    lines = ["", "## Against the roofline", "", head, "", "| model | stage | precision | bound | bound ms | p50 ms | x bound |",
             "|---|---|---|---|---|---|---|"]
    for n in have:
        for stage, r in rows[n]["roofline"].items():
            bound = r["bound"] if r["bound"] == "memory" else f"compute {r.get('peak') or 'fp32'}"
            lines.append(f"| {n} | {stage} | {r['precision']} | {bound} | {r['bound_ms']:.2f} | {r['measured_ms']:.2f} | "
                         f"{r['measured_ms'] / r['bound_ms']:.2f}x |")
    return lines


def _falcon(ev: dict) -> dict | None:
    """{"average": ..., "headline": {tag: value}} of Falcon's protocol when the eval also computed it."""
    other = ev.get("protocols", {}).get("falcon")
    if other is None:
        return None
    return {"average": other.get("average_headline"), "headline": _values(other)}


def _values(scores: dict) -> dict[str, float]:
    """{tag: headline value} of one protocol's scores in an eval JSON."""
    return {t: h["value"] for t, h in scores.get("headline", {}).items()}


def _f(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def markdown(data: dict, recipe_name: str) -> str:
    rows = data["rows"]
    names = list(rows)
    lines = [f"# tiercel report: {recipe_name}", ""]
    if data.get("machine"):
        m = data["machine"]
        lines += [f"Measured on: {m.get('cpu', m)} ({m.get('cores', '?')} cores). Latencies are p50 over the profile runs.", ""]
    lines += [f"**Warning:** {w}" for w in data.get("warnings", [])] + ([""] if data.get("warnings") else [])
    lines += ["## Headline", "", "| model | 14-task average | size MB | vision ms | decode ms/token | " +
              " | ".join(f"{t} ms" for t in (data.get("settings") or {}).get("tasks", [])) + " |",
              "|---|---|---|---|---|" + "---|" * len((data.get("settings") or {}).get("tasks", []))]
    for n in names:
        r = rows[n]
        tasks_ms = [_f(r["tasks_ms"].get(t)) for t in (data.get("settings") or {}).get("tasks", [])]
        lines.append(f"| {n} | {_f(None if r['average'] is None else 100 * r['average'])} | {_f(r['size_mb'], '{:.2f}')} | "
                     f"{_f(r['stages_ms'].get('vision_encoder'))} | {_f(r['stages_ms'].get('decode_token'), '{:.2f}')} | " +
                     " | ".join(tasks_ms) + " |")
    protocol = rows[names[0]].get("protocol", "tiercel") if names else "tiercel"
    lines += _per_task(rows, names, protocol)
    if names and all(rows[n].get("falcon") for n in names):
        lines += _per_task({n: rows[n]["falcon"] for n in names}, names, "falcon")
        averages = [_f(None if rows[n]["falcon"]["average"] is None else 100 * rows[n]["falcon"]["average"]) for n in names]
        lines += ["| average | | " + " | ".join(averages) + " |"]
    stages = sorted({s for n in names for s in rows[n]["stages_ms"]})
    lines += ["", "## Latency per stage (ms, p50)", "", "| stage | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in stages:
        lines.append(f"| {s} | " + " | ".join(_f(rows[n]["stages_ms"].get(s), "{:.2f}") for n in names) + " |")
    lines += _roofline(rows, names, data.get("peaks"))
    devices = sorted({d for n in names for d in rows[n]["estimates"]})
    if devices:
        lines += ["", "## Device ESTIMATES (not measured)", "", f"Formula: {data.get('estimate_formula')}", "",
                  "| device | " + " | ".join(f"{n} ms/token" for n in names) + " | " + " | ".join(f"{n} ms/image" for n in names) + " |",
                  "|---|" + "---|" * (2 * len(names))]
        for d in devices:
            tok = [_f(rows[n]["estimates"].get(d, {}).get("per_token_ms"), "{:.2f}") for n in names]
            img = [_f(rows[n]["estimates"].get(d, {}).get("per_image_ms"), "{:.2f}") for n in names]
            lines.append(f"| {d} | " + " | ".join(tok) + " | " + " | ".join(img) + " |")
    if data.get("guard"):
        lines += ["", "## Accuracy guard (val split, quantised vs fp32 student)", "",
                  "| model | token agreement | drop | upper bound | verdict |", "|---|---|---|---|---|"]
        for n, g in data["guard"].items():
            if not g or "failed" in g:
                lines.append(f"| {n} | - | - | - | {'refused: ' + g['failed'] if g else 'not run'} |")
            elif not g.get("run", True):
                lines.append(f"| {n} | - | - | - | not run ({g.get('reason')}) |")
            else:
                bound = _f(None if g.get("drop_bound") is None else 100 * g["drop_bound"], "{:.2f}%")
                caution = "; caution: low token agreement, val decides little" if g.get("caution") else ""
                lines.append(f"| {n} | {g['token_agreement']:.3f} | {100 * g['drop']:.2f}% | {bound} | "
                             f"{'passed' if g['passed'] else 'failed'} ({len(g.get('attempts', []))} attempt(s)){caution} |")
    if data.get("paired"):
        lines += _paired_table(data["paired"])
    if data.get("openvino"):
        ov = data["openvino"]["stages"]
        lines += ["", "## student on OpenVINO (ms, p50)", "", "| stage | ms |", "|---|---|"]
        lines += [f"| {s} | {v['p50'] * 1e3:.2f} |" for s, v in ov.items()]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    """Two panels: task average per model, and where the time goes per model (p50 stages)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    names = list(rows)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    avg = [100 * (rows[n]["average"] or 0) for n in names]
    a.bar(names, avg, color="#4C72B0")
    a.set_ylabel("14-task average (headline x 100)")
    a.set_title("Accuracy")
    a.set_ylim(0, max(10.0, 1.15 * max(avg, default=0)))
    for i, v in enumerate(avg):
        a.text(i, v, f"{v:.1f}", ha="center", va="bottom")
    stages = ["vision_encoder", "text_encoder", "first_token", "decode_token"]
    bottom = [0.0] * len(names)
    for s in stages:
        vals = [rows[n]["stages_ms"].get(s, 0.0) for n in names]
        b.bar(names, vals, bottom=bottom, label=s)
        bottom = [x + y for x, y in zip(bottom, vals)]
    b.set_ylabel("ms (p50); decode_token is per token")
    b.set_title("Latency by stage")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(pipeline) -> dict[str, Path]:
    """Write report.md, report.json and report.png under the pipeline's out directory."""
    out = pipeline.out
    data = collect(pipeline)
    paths = {"markdown": out / "report.md", "json": out / "report.json", "png": out / "report.png"}
    atomic_write_text(paths["markdown"], markdown(data, pipeline.recipe.name))
    write_json(paths["json"], finite(data))
    plot(data, paths["png"])
    return paths
