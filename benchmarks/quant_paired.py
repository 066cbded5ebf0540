"""How far apart are a quantized bundle and its fp32 bundle on each task, given the test split's size?

A paired bootstrap on the same test records: each bundle decodes the records once (tiercel.evaluate, greedy, the
predictions kept); then B resamples of the records, the same resample for every bundle, are scored with each
task's own metric (tiercel.tasks: AP@0.5, Acc@0.5, mIoU, ... are corpus metrics, so the record-level difference
cannot be averaged directly). Per bundle and task it reports the point change relative to fp32, its 95%
percentile interval, and how many records' answers differ from fp32's. An interval that straddles -1% means the
test split cannot tell whether the bundle is within a 1% tolerance on that task.

    python benchmarks/quant_paired.py --reference FP32_BUNDLE[@BACKEND] \
        --bundle NAME=BUNDLE@BACKEND [--bundle ...] --data test.json --root DATA_DIR \
        [--tasks REG_DET_HBB ...] [--resamples 100] [--out benchmarks/results/quant_paired.json]

A bundle given as PATH@openvino is compared with the reference on the same backend (give --reference once per
backend as REF@BACKEND; the first is the default). Writes JSON with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from image_use import commit, machine, parse_or_table, write_result  # noqa: E402

GEOMETRY = ("REG_DET_HBB", "REG_DET_OBB", "REG_VG", "PIX_SEG", "PIX_CHG")


def predictions(bundle: str, backend: str, data: Path, root: Path, tasks: list[str], max_new_tokens: int,
                batch_size: int) -> tuple[dict[int, object], dict[int, tuple], float]:
    """{record index: parsed prediction} of one bundle, {record index: (tag, parsed reference, (W, H), crop)} as
    tiercel.evaluate read the records, and the seconds it took."""
    from tiercel import tasks as T
    from tiercel.evaluate import evaluate, open_predictor

    report = evaluate(open_predictor(bundle, backend=backend, threads=1), data, root, tasks=tasks, keep_predictions=True,
                      generation={"num_beams": 1, "max_new_tokens": max_new_tokens}, batch_size=batch_size)
    rows = report.predictions
    refs = {p["index"]: (p["tag"], T.from_dict(p["truth"]), tuple(p["size"]), p["crop"]) for p in rows}
    return {p["index"]: T.from_dict(p["pred"]) for p in rows}, refs, report.seconds


def headline(tag: str, preds: list, refs: list, sizes: list, crops: list) -> float:
    from tiercel import tasks as T

    spec = T.get(tag)
    return spec.metric(preds, refs, sizes, crops=crops)[spec.headline_of("tiercel")]


def resampled(tag: str, idx: list[int], refs: dict, pred: dict, resamples: list[np.ndarray]) -> list[float]:
    """The task's headline on all of `idx`, then on each resample of it."""
    from tiercel import tasks as T
    from tiercel.tasks.metrics.resample import resampler

    cols = [[refs[i][k] for i in idx] for k in (1, 2, 3)] + [[pred[i] for i in idx]]
    full = headline(tag, cols[3], *cols[:3])
    spec = T.get(tag)
    draw = resampler(spec.score, spec.headline_of("tiercel"), cols[3], cols[0], cols[1])
    if draw is not None:  # the same numbers from per-sample statistics, without rescoring every resample
        return [full] + [draw(r) for r in resamples]
    pick = lambda xs, r: [xs[j] for j in r]  # noqa: E731
    return [full] + [headline(tag, pick(cols[3], r), *(pick(c, r) for c in cols[:3])) for r in resamples]


def paired(tag: str, idx: list[int], ref_pred: dict, pred: dict, ref_scores: list[float], scores: list[float]) -> dict:
    """Point change and percentile interval of (bundle / reference - 1) on one task, over the shared resamples."""
    base, got = ref_scores[0], scores[0]
    rel = [y / x - 1 for x, y in zip(ref_scores[1:], scores[1:]) if x > 0]
    lo, hi = (float(np.percentile(rel, q)) for q in (2.5, 97.5))
    changed = sum(1 for i in idx if ref_pred[i].to_dict() != pred[i].to_dict())
    return {"reference": base, "bundle": got, "change": got / base - 1 if base else None, "ci95": [lo, hi],
            "records": len(idx), "answers_changed": changed}


def table(result: dict) -> str:
    """The JSON as a markdown table: per bundle and task, the change against fp32 [95% interval] and answers changed."""
    tasks = result["tasks"]
    lines = ["| bundle | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name, b in result["bundles"].items():
        cells = [f"{p['change']:+.1%} [{p['ci95'][0]:+.1%}, {p['ci95'][1]:+.1%}], {p['answers_changed']} moved"
                 for p in (b["per_task"][t] for t in tasks)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", action="append", help="the fp32 bundle, PATH[@BACKEND] (once per backend)")
    ap.add_argument("--bundle", action="append", help="NAME=PATH@BACKEND, compared with the reference of its backend")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--root", type=Path)
    ap.add_argument("--tasks", nargs="+", default=list(GEOMETRY))
    ap.add_argument("--resamples", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "quant_paired.json")
    args = parse_or_table(ap, table, ("reference", "bundle", "data", "root"))
    if args is None:
        return

    split = lambda s: (s.rsplit("@", 1) + ["onnxruntime"])[:2]  # noqa: E731
    refs_by_backend = {b: p for p, b in map(split, args.reference)}
    bundles = {}
    for item in args.bundle:
        if "=" not in item:
            sys.exit(f"--bundle {item}: give NAME=PATH@BACKEND")
        name, rest = item.split("=", 1)
        path, backend = split(rest)
        if backend not in refs_by_backend:
            sys.exit(f"--bundle {item}: no --reference for backend {backend}; add --reference FP32@{backend}")
        bundles[name] = (path, backend)

    result = {"command": "python benchmarks/quant_paired.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "resamples": args.resamples,
              "tasks": args.tasks, "references": refs_by_backend, "bundles": {}}
    refs, by_task, resamples, ref_preds, ref_scores = None, {}, {}, {}, {}
    rng = np.random.default_rng(args.seed)
    for backend, path in refs_by_backend.items():
        ref_preds[backend], read, seconds = predictions(path, backend, args.data, args.root, args.tasks,
                                                        args.max_new_tokens, args.batch_size)
        if refs is None:  # every bundle reads the same records: the first one's references serve all
            refs = read
            by_task = {t: sorted(i for i, r in refs.items() if r[0] == t) for t in args.tasks}
            resamples = {t: [rng.integers(0, len(idx), len(idx)) for _ in range(args.resamples)]
                         for t, idx in by_task.items()}
        ref_scores[backend] = {t: resampled(t, idx, refs, ref_preds[backend], resamples[t]) for t, idx in by_task.items()}
        print(f"reference {path} on {backend}: {seconds:.0f} s", flush=True)
    for name, (path, backend) in bundles.items():
        pred, _, seconds = predictions(path, backend, args.data, args.root, args.tasks, args.max_new_tokens,
                                       args.batch_size)
        per_task = {t: paired(t, idx, ref_preds[backend], pred, ref_scores[backend][t],
                              resampled(t, idx, refs, pred, resamples[t])) for t, idx in by_task.items()}
        result["bundles"][name] = {"path": path, "backend": backend, "eval_seconds": seconds, "per_task": per_task}
        print(name, " ".join(f"{t} {p['change']:+.1%} [{p['ci95'][0]:+.1%}, {p['ci95'][1]:+.1%}]"
                             for t, p in per_task.items()), flush=True)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_result(args.out, result)
    print(table(result))


if __name__ == "__main__":
    main()
