"""The fidelity table of benchmarks/fidelity.py: columns from its results JSON, the issue's targets, the markdown.

Pure functions of the results dict that fidelity.py writes (no torch, no files), so the table can be re-rendered
from a JSON (`fidelity.py --render`) and the target checks tested on hand-made results. The targets are issue
#22's; a quantized bundle's drop is relative to the fp32 bundle on the same backend.
"""

from __future__ import annotations

from statistics import mean

from tiercel.tasks import TAGS, get

OBJECTIVES = {"ce": "CE", "kd": "KD", "kd_hidden": "KD+hidden"}  # student objectives, in table order
SCHEMES = {"fp32": "fp32", "int8-static": "int8-static", "int8-dynamic": "int8-dynamic", "int8-weight-only": "int8-wo",
           "int4-weight-only": "int4"}
BACKENDS = {"onnxruntime": "ORT", "openvino": "OV"}
TEACHER_GEOMETRY = {"REG_DET_HBB": 0.4, "REG_DET_OBB": 0.3, "REG_VG": 0.6, "PIX_SEG": 0.4, "PIX_CHG": 0.3}
GEOMETRY = tuple(TEACHER_GEOMETRY)
SIZE_RATIO = 4.0  # the student is at least this many times smaller than the teacher (parameters)
KD_RETENTION = 0.95  # KD student's 14-task average >= this share of the teacher's
MAX_DROP = {"int8-static": 0.01, "int8-dynamic": 0.01, "int8-weight-only": 0.01, "int4-weight-only": 0.03}  # vs fp32 bundle
EPS = 1e-9  # float noise in a comparison of equal scores


def bundle_key(backend: str, scheme: str) -> str:
    return f"bundle/{backend}/{scheme}"


def teacher_stage(i: int) -> str:
    """The stage name of the teacher's i-th training stage (the first keeps its name: adding a stage reuses it)."""
    return "teacher" if i == 0 else f"teacher/stage{i + 1}"


def column_keys() -> dict[str, str]:
    """Column key -> header, in table order: teacher, the students, the bundles per backend."""
    cols = {"teacher": "teacher", **OBJECTIVES}
    for backend, short in BACKENDS.items():
        for scheme, name in SCHEMES.items():
            cols[bundle_key(backend, scheme)] = f"{short} {name}"
    return cols


def columns(results: dict) -> dict[str, dict]:
    """Column key -> {"headline": {tag: value}, "average", "spread": {tag/"average": half-range over seeds} or {},
    "seeds": evaluated runs, "errors": [...]}. Students are the mean over their seeds; a column no run reached has
    no headline."""
    models = results.get("models", {})
    groups: dict[str, list[dict]] = {k: [] for k in column_keys()}
    for m in models.values():
        if _column_of(m) in groups:
            groups[_column_of(m)].append(m)
    return {key: _aggregate(runs) for key, runs in groups.items()}


def _column_of(model: dict) -> str:
    """The column a model's entry belongs to: its objective (PyTorch models), or its backend and scheme (bundles)."""
    return model.get("objective") if model.get("kind") == "torch" else bundle_key(model.get("backend"), model.get("scheme"))


def _aggregate(runs: list[dict]) -> dict:
    scored = [r["eval"] for r in runs if isinstance(r.get("eval"), dict) and "headline" in r["eval"]]
    errors = [r["error"] for r in runs if r.get("error")]
    if not scored:
        return {"headline": {}, "average": None, "spread": {}, "seeds": 0, "errors": errors}
    values = {tag: [s["headline"][tag] for s in scored if s["headline"].get(tag) is not None] for tag in TAGS}
    values["average"] = [s["average"] for s in scored if s.get("average") is not None]
    values = {k: v for k, v in values.items() if v}
    spread = {k: (max(v) - min(v)) / 2 for k, v in values.items()} if len(scored) > 1 else {}
    return {"headline": {k: mean(v) for k, v in values.items() if k != "average"},
            "average": mean(values["average"]) if "average" in values else None,
            "spread": spread, "seeds": len(scored), "errors": errors}


def targets(results: dict) -> list[dict]:
    """The issue's targets as rows {"target", "value", "status"}: status MET, MISSED or n/a (with why)."""
    cols = columns(results)
    rows = [_size_target(results.get("size_ratio"))]
    for kd in ("kd", "kd_hidden"):  # the two KD students: logits, and logits + hidden states
        rows.append(_retention_target(cols["teacher"]["average"], cols[kd]["average"], OBJECTIVES[kd]))
    for kd in ("kd", "kd_hidden"):
        rows.append(_kd_over_ce(cols[kd]["headline"], cols["ce"]["headline"], OBJECTIVES[kd]))
    refused = {_column_of(m) for m in results.get("models", {}).values() if _refusal(m)}
    for backend, short in BACKENDS.items():
        fp32 = cols[bundle_key(backend, "fp32")]
        for scheme, tol in MAX_DROP.items():
            row = _drop_target(f"{short} {SCHEMES[scheme]}", tol, fp32, cols[bundle_key(backend, scheme)])
            row["value"] += _resolved(results.get("models", {}).get(bundle_key(backend, scheme), {}), tol, row)
            if bundle_key(backend, scheme) in refused:  # the column is the scheme without the guard (fidelity.quantize)
                row["value"] += " (refused by the guard; quantized without it)"
            rows.append(row)
    teacher = cols["teacher"]["headline"]
    for tag, floor in TEACHER_GEOMETRY.items():
        value = teacher.get(tag)
        metric = get(tag).headline
        rows.append(_row(f"teacher {tag} {metric} >= {floor}", "-" if value is None else f"{value:.3f}",
                         None if value is None else value >= floor - EPS))
    return rows


def _resolved(model: dict, tol: float, row: dict) -> str:
    """For a missed drop target, which of its misses the test split resolves: the paired interval of the relative
    change (the run's compare stage, quantized against fp32 on the same records) lies wholly below -tol. A miss
    whose interval reaches -tol or above may be the records' noise (or a loss, but one within the tolerance, where
    the interval is below 0). "" when nothing missed or nothing compared."""
    paired = model.get("paired")
    if row["status"] != "MISSED" or not paired:
        return ""
    resolved, open_ = [], []
    for name in ("average", *GEOMETRY):
        cell = paired.get("average") if name == "average" else paired.get("per_task", {}).get(name)
        if not cell or cell.get("relative") is None or cell["relative"] >= -tol - EPS:
            continue
        ci = cell.get("relative_ci") or [None, None]
        if ci[1] is not None and ci[1] < -tol:
            resolved.append(name)
        else:  # not resolved past the tolerance; a loss all the same where the interval is below 0
            open_.append(f"{name} (a loss: interval below 0)" if ci[1] is not None and ci[1] < 0 else name)
    if not resolved and not open_:
        return ""
    return (f"; misses the paired {paired.get('confidence', 0.95):.0%} interval resolves (below -{tol:.0%}): "
            f"{', '.join(resolved) or 'none'}; not resolved: {', '.join(open_) or 'none'}")


def _row(target: str, value: str, met: bool | None, why: str = "no score") -> dict:
    return {"target": target, "value": value, "status": f"n/a ({why})" if met is None else ("MET" if met else "MISSED")}


def _size_target(ratio: float | None) -> dict:
    return _row(f"student >= {SIZE_RATIO:g}x smaller than the teacher (parameters)",
                "-" if ratio is None else f"{ratio:.2f}x", None if ratio is None else ratio >= SIZE_RATIO)


def _retention_target(teacher: float | None, kd: float | None, name: str = "KD") -> dict:
    target = f"{name} student 14-task average >= {KD_RETENTION:.0%} of the teacher's"
    if teacher is None or kd is None:
        return _row(target, "-", None)
    if teacher <= 0:
        return _row(target, f"{kd:.3f} vs {teacher:.3f}", None, "teacher average 0")
    return _row(target, f"{kd / teacher:.1%} ({kd:.3f} vs {teacher:.3f})", kd >= KD_RETENTION * teacher - EPS)


def _kd_over_ce(kd: dict, ce: dict, name: str = "KD") -> dict:
    target = f"{name} student above the CE student on each geometry task"
    if not all(tag in kd and tag in ce for tag in GEOMETRY):
        return _row(target, "-", None)
    value = ", ".join(f"{tag} {kd[tag]:.3f} vs {ce[tag]:.3f}" for tag in GEOMETRY)
    return _row(target, value, all(kd[tag] > ce[tag] + EPS for tag in GEOMETRY))


def _drop_target(name: str, tol: float, fp32: dict, quant: dict) -> dict:
    target = f"{name} <= {tol:.0%} below fp32 (relative) on the average and each geometry task"
    if fp32["average"] is None or quant["average"] is None:
        return _row(target, "-", None, "no fp32 score" if fp32["average"] is None else "no score")
    pairs = {"average": (fp32["average"], quant["average"])}
    pairs.update({tag: (fp32["headline"][tag], quant["headline"][tag]) for tag in GEOMETRY
                  if tag in fp32["headline"] and tag in quant["headline"]})
    # relative change; a task the fp32 bundle scores 0 on cannot drop
    cells = [f"{k} " + ("fp32 0" if f <= 0 else f"{(q - f) / f:+.1%}") for k, (f, q) in pairs.items()]
    met = all(q >= f * (1 - tol) - EPS for f, q in pairs.values()) and len(pairs) == len(GEOMETRY) + 1
    return _row(target, ", ".join(cells), met)


# ---- markdown ------------------------------------------------------------------------------------------
def render(results: dict) -> str:
    """The fidelity page: how it was run, the table, the targets, the image-use probe, the stage times."""
    cols, heads = columns(results), column_keys()
    parts = [_header(results), _table(results, cols, heads), "## Targets", "",
             "Quantized bundles are compared with the fp32 bundle on the same backend; \"1%\" is relative "
             "(quantized >= 0.99 x fp32), as the issue means it. Students: mean over seeds.", "",
             "| target | value | status |", "|---|---|---|"]
    parts += [f"| {t['target']} | {t['value']} | {t['status']} |" for t in results.get("targets") or targets(results)]
    parts += ["", _paired_tables(results), _probe_table(results), _constrained_table(results), _stage_table(results)]
    return "\n".join(parts).rstrip() + "\n"


def _header(r: dict) -> str:
    data, ev, m = r.get("data", {}), r.get("config", {}).get("eval", {}), r.get("machine", {})
    knobs = ", ".join(f"{k}={v}" for k, v in data.get("knobs_changed", {}).items()) or "default knobs"
    seeds = r.get("config", {}).get("student", {}).get("seeds", [])
    finish = ((r.get("config", {}).get("student", {}).get("finish") or {}).get("distill") or {}).get("steps")
    source = r.get("config", {}).get("bundles", {}).get("source", "kd")  # runs before the setting exported KD
    quick = "\n**--quick run: a plumbing check, the numbers mean nothing.**\n" if r.get("quick") else ""
    return "\n".join([
        "# Fidelity on the synthetic benchmark: teacher, students, quantized bundles", quick,
        "Written by `benchmarks/fidelity.py` from its JSON next to this file (`--render` rewrites it); not edited by hand.",
        "",
        f"- command: `{r.get('command')}`; commit {r.get('commit')}{' (dirty tree)' if r.get('dirty') else ''}",
        f"- machine: {m.get('cpu')}, {m.get('cores')} cores, load average {_load(m.get('loadavg_start'))} at the start, "
        f"{_load(m.get('loadavg_end'))} at the end; {r.get('started')} to {r.get('finished')}",
        f"- data: {data.get('n')} records at {data.get('size')} px, seed {data.get('seed')}, {knobs}; "
        f"{data.get('test_records')} test records, every one scored (limit {ev.get('limit')}), greedy, "
        f"max_new_tokens {ev.get('max_new_tokens')}",
        f"- students: mean of seeds {seeds} (± half their difference)"
        f"{f', each after its last stage (student.finish, {finish} steps)' if finish else ''}; bundles from the "
        f"{OBJECTIVES.get(source, source)} student of seed {seeds[0] if seeds else '-'}; values are headline x 100 (CIDEr: coco-caption's scale x 100)", ""])


def _load(values) -> str:
    return "-" if not values else "/".join(f"{v:.2f}" for v in values)


def _table(r: dict, cols: dict, heads: dict) -> str:
    lines = ["| task | " + " | ".join(heads.values()) + " |", "|---|" + "---|" * len(heads)]
    for tag in TAGS:
        cells = [_cell(cols[k]["headline"].get(tag), cols[k]["spread"].get(tag), cols[k]) for k in heads]
        lines.append(f"| {tag} ({get(tag).headline}) | " + " | ".join(cells) + " |")
    cells = [_cell(cols[k]["average"], cols[k]["spread"].get("average"), cols[k]) for k in heads]
    lines.append("| **14-task average** | " + " | ".join(f"**{c}**" for c in cells) + " |")
    extra = _extra_rows(r, heads)
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in extra.items()]
    errors = [f"- {heads[k]}: {e}" for k in heads for e in dict.fromkeys(cols[k]["errors"])]
    refused = [f"- {heads[_column_of(m)]}: {why}" for m in r.get("models", {}).values()
               if _column_of(m) in heads and (why := _refusal(m))]
    notes = [""] + ["Errors:"] + errors if errors else []
    if refused:
        notes += ["", "Refused by the accuracy guard on val (these columns are the scheme quantized without the guard, "
                      "so the test split shows what it costs):"] + refused
    return "\n".join(lines + notes + [""])


def _cell(value, spread, col) -> str:
    if value is None:
        return "error" if col["errors"] else "-"
    return f"{100 * value:.1f}" + (f" ±{100 * spread:.1f}" if spread is not None else "")


EXTRA_ROWS = {  # row name -> (where in a model's entry, how a mean over its runs is shown)
    "14-task average, Falcon protocol": (("eval", "falcon", "average"), lambda v: f"{100 * v:.1f}"),
    "parameters": (("params",), lambda v: f"{v / 1e6:.2f}M"),
    "train samples/s": (("train", "samples_per_s"), lambda v: f"{v:.1f}"),
    "bundle MB": (("bundle_bytes",), lambda v: f"{v / 1e6:.2f}"),
    "eval seconds": (("eval", "seconds"), lambda v: f"{v:.0f}"),
}


def _refusal(model: dict) -> str | None:
    """The guard's one line when it refused a bundle's scheme (fidelity.quantize then quantized it without the guard)."""
    return (_dig(model, ("quantize", "guard")) or {}).get("refused")


def _dig(entry: dict, path: tuple[str, ...]):
    for k in path:
        entry = entry.get(k) if isinstance(entry, dict) else None
    return entry


def _extra_rows(r: dict, heads: dict) -> dict[str, list[str]]:
    """EXTRA_ROWS and the accuracy guard's verdict per column (means over seeds)."""
    rows: dict[str, list[str]] = {name: [] for name in [*EXTRA_ROWS, "accuracy guard (val)"]}
    for key in heads:
        runs = [m for m in r.get("models", {}).values() if _column_of(m) == key]
        for name, (path, shown) in EXTRA_ROWS.items():
            got = [v for m in runs if (v := _dig(m, path)) is not None]
            rows[name].append(shown(mean(got)) if got else "-")
        guard = [(_dig(m, ("quantize", "guard")) or {}) | {"kept": _dig(m, ("quantize", "kept"))} for m in runs if m.get("quantize")]
        rows["accuracy guard (val)"].append(_guard(guard[0]) if guard else "-")
    return rows


def _guard(g: dict) -> str:
    """'held, 3 kept in fp32' (layers the guard kept in higher precision) from a quantized bundle's guard section."""
    if not g.get("run"):
        return "not run"
    if g.get("refused"):  # fidelity.quantize: the guard refused; the column is the scheme quantized without it
        return "refused: column unguarded"
    kept = (g.get("kept") or "").replace(" layers kept in ", " kept in ")
    return ("held" if g.get("passed") else "failed") + (f", {kept}" if kept else "")


def _probe_table(r: dict) -> str:
    heads = {"teacher": "teacher", **OBJECTIVES}
    gaps: dict[str, dict[str, list[float]]] = {k: {} for k in heads}
    for m in r.get("models", {}).values():
        for tag, p in ((m.get("probe") or {}).get("per_task") or {}).items():
            if m.get("objective") in gaps:
                gaps[m["objective"]].setdefault(tag, []).append(p["loss_gap_permuted"])
    if not any(gaps.values()):
        return ""
    lines = ["## Image use", "",
             "Image-use probe (`tiercel.evaluate.image_use`): teacher-forced loss per answer token with each record's "
             "images rolled to another record's, minus the loss with its own (nats; about 0: the answers do not depend "
             "on the image). Students: mean over seeds.", "",
             "| task | " + " | ".join(heads.values()) + " |", "|---|" + "---|" * len(heads)]
    for tag in TAGS:
        cells = [f"{mean(gaps[k][tag]):+.3f}" if gaps[k].get(tag) else "-" for k in heads]
        lines.append(f"| {tag} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def _paired_tables(r: dict) -> str:
    """The compare stages: each KD student against the CE student of its seed, each quantized bundle against its
    backend's fp32 bundle, on the same test records (paired bootstrap)."""
    models = r.get("models", {})
    found = {k: m for k, m in models.items() if m.get("paired") or m.get("paired_error")}
    if not found:
        return ""
    first = next((m["paired"] for m in found.values() if m.get("paired")), {})
    lines = ["## Paired comparisons", "",
             "The same test records scored on both models; each cell is the relative change of the headline "
             f"(other / base - 1) with its {first.get('confidence', 0.95):.0%} paired percentile interval over "
             f"{first.get('rounds', '-')} resamples of the records (`tiercel compare`, docs/eval.md). **Bold**: the "
             "interval excludes 0, so the test split resolves the change's sign. Per seed, not the seed means of "
             "the table above.", ""]
    for title, keys in (("Students against the CE student of their seed",
                         [k for k, m in found.items() if m.get("kind") == "torch"]),
                        ("Quantized bundles against the fp32 bundle on their backend",
                         [k for k, m in found.items() if m.get("kind") == "bundle"])):
        if not keys:
            continue
        heads = [_paired_head(k, models[k]) for k in keys]
        lines += [f"### {title}", "", "| task | " + " | ".join(heads) + " |", "|---|" + "---|" * len(keys)]
        for tag in (*TAGS, "average"):
            cells = []
            for k in keys:
                p = models[k].get("paired")
                cell = (p or {}).get("average") if tag == "average" else (p or {}).get("per_task", {}).get(tag)
                cells.append("error" if p is None else _paired_cell(cell))
            lines.append(f"| {'**14-task average**' if tag == 'average' else tag} | " + " | ".join(cells) + " |")
        errors = [f"- {_paired_head(k, models[k])}: {models[k]['paired_error']}" for k in keys if models[k].get("paired_error")]
        lines += [""] + (errors + [""] if errors else [])
    return "\n".join(lines)


def _paired_head(key: str, m: dict) -> str:
    if m.get("kind") == "bundle":
        return f"{BACKENDS.get(m['backend'], m['backend'])} {SCHEMES.get(m['scheme'], m['scheme'])}"
    return f"{OBJECTIVES.get(m.get('objective'), m.get('objective'))} s{m.get('seed')}"


def _paired_cell(c: dict | None) -> str:
    from tiercel.evaluate.compare import change_cell

    return change_cell(c)


def _constrained_table(r: dict) -> str:
    rows = [(key, m) for key, m in r.get("models", {}).items() if m.get("constrained") or m.get("constrained_error")]
    if not rows:
        return ""
    limit = r.get("config", {}).get("constrained", {}).get("limit")
    lines = ["## Constrained decoding", "",
             f"The first {limit} test records per task on each bundle, greedy, decoded three ways "
             "(benchmarks/constrained_decoding.py's modes): unconstrained, under the answer grammar one token per "
             "step, and under the grammar with jump-forward (a token the grammar forces costs no decoder step of its "
             "own). Averages are headline x 100 over the 14 tasks; steps are per answer.", "",
             "| bundle | parse warnings, free -> constrained | average free / stepwise / jump-forward "
             "| tokens free / constrained | decoder steps, stepwise -> jump-forward |", "|---|---|---|---|---|"]
    heads = column_keys()
    for key, m in rows:
        c, name = m.get("constrained"), heads.get(_column_of(m), key)
        if not c:
            lines.append(f"| {name} | {m.get('constrained_error')} | | | |")
            continue
        u, s, j = (c[mode]["_all"] for mode in ("unconstrained", "stepwise", "constrained"))
        lines.append(f"| {name} | {100 * u['warning_rate']:.1f}% -> {100 * j['warning_rate']:.1f}% "
                     f"| {100 * u['average_headline']:.1f} / {100 * s['average_headline']:.1f} / "
                     f"{100 * j['average_headline']:.1f} | {u['steps']:.1f} / {j['steps']:.1f} "
                     f"| {s['decoder_steps']:.2f} -> {j['decoder_steps']:.2f} |")
    return "\n".join(lines + [""])


def _stage_table(r: dict) -> str:
    stages = r.get("stages", {})
    if not stages:
        return ""
    own = _train_seconds(r.get("models", {}))
    lines = ["## Wall time per stage", "",
             "Seconds each stage took when it ran (a rerun that reused a stage keeps that time): with --jobs, its own "
             "wall time in its child process (before 0daa99e, how long the main process waited for it), so stages "
             "overlap and the total is more than the run's wall time. A training run resumed over several sessions "
             "counts only its last part there; *training* is the run's own time, summed over its resumes.", "",
             "| stage | seconds | training | status |", "|---|---|---|---|"]
    lines += [f"| {name} | {s.get('seconds', 0):.1f} | {f'{own[name]:.0f}' if name in own else '-'} | {s.get('status')} |"
              for name, s in stages.items()]
    total = sum(s.get("seconds", 0) for s in stages.values())
    return "\n".join(lines + [f"| **total** | **{total:.1f}** | **{sum(own.values()):.0f}** | |", ""])


def _train_seconds(models: dict) -> dict[str, float]:
    """{training stage: the run's own seconds over all its resumes}, from the models' train records."""
    out = {}
    for name, m in models.items():
        train = m.get("train") or {}
        if name == "teacher":
            for i, run in enumerate(train.get("stages", [])):
                if run.get("train_seconds") is not None:
                    out[teacher_stage(i)] = run["train_seconds"]
        elif m.get("kind") == "torch" and train.get("train_seconds") is not None:
            out[f"train/{name}"] = train["train_seconds"]
        if (m.get("finish") or {}).get("train_seconds") is not None:
            out[f"finish/{name}"] = m["finish"]["train_seconds"]
    return out
