"""How far apart are a quantized bundle and its fp32 bundle on each task, given the test split's size?

A paired bootstrap on the same test records: each bundle decodes the records once (tiercel.evaluate, greedy, the
predictions kept); then B resamples of the records, the same resample for every bundle, are scored with each
task's own metric (tiercel.tasks: AP@0.5, Acc@0.5, mIoU, ... are corpus metrics, so the record-level difference
cannot be averaged directly) by tiercel.evaluate.compare, what `tiercel compare` runs on two eval JSONs; this
script decodes the reference once for several bundles. Per bundle and task it reports the point change relative
to fp32, its 95% percentile interval, and how many records' answers differ from fp32's. An interval that straddles -1% means the
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

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from image_use import commit, machine, parse_or_table, write_result  # noqa: E402

GEOMETRY = ("REG_DET_HBB", "REG_DET_OBB", "REG_VG", "PIX_SEG", "PIX_CHG")


def predictions(bundle: str, backend: str, data: Path, root: Path, tasks: list[str], max_new_tokens: int,
                batch_size: int) -> tuple[dict[tuple[int, str], dict], float]:
    """{(record index, tag): row} of one bundle's kept predictions (tiercel.evaluate, greedy; each row holds the
    parsed prediction, the parsed reference, the image size and the crop) and the seconds it took."""
    from tiercel.evaluate import evaluate, open_predictor

    report = evaluate(open_predictor(bundle, backend=backend, threads=1), data, root, tasks=tasks, keep_predictions=True,
                      generation={"num_beams": 1, "max_new_tokens": max_new_tokens}, batch_size=batch_size,
                      bootstrap=0)
    return {(p["index"], p["tag"]): p for p in report.predictions}, report.seconds


def paired(reference: dict, rows: dict, resamples: int, seed: int) -> dict[str, dict]:
    """Per task: both headlines, the relative change (bundle / reference - 1), its 95% paired percentile interval,
    records and answers changed (tiercel.evaluate.compare.compare_rows; the same seed draws the same resamples
    for every bundle)."""
    from tiercel.evaluate.compare import compare_rows

    got = compare_rows(reference, rows, rounds=resamples, seed=seed)["per_task"]
    return {t: {"reference": s["base"], "bundle": s["other"], "change": s["relative"], "ci95": s["relative_ci"],
                "records": s["records"], "answers_changed": s["answers_changed"]} for t, s in got.items()}


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
    ref_rows = {}
    for backend, path in refs_by_backend.items():
        ref_rows[backend], seconds = predictions(path, backend, args.data, args.root, args.tasks, args.max_new_tokens,
                                                 args.batch_size)
        print(f"reference {path} on {backend}: {seconds:.0f} s", flush=True)
    for name, (path, backend) in bundles.items():
        rows, seconds = predictions(path, backend, args.data, args.root, args.tasks, args.max_new_tokens,
                                    args.batch_size)
        per_task = paired(ref_rows[backend], rows, args.resamples, args.seed)
        result["bundles"][name] = {"path": path, "backend": backend, "eval_seconds": seconds, "per_task": per_task}
        print(name, " ".join(f"{t} {p['change']:+.1%} [{p['ci95'][0]:+.1%}, {p['ci95'][1]:+.1%}]"
                             for t, p in per_task.items()), flush=True)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_result(args.out, result)
    print(table(result))


if __name__ == "__main__":
    main()
