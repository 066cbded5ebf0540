"""The accuracy guard's comparison, taken again on bundles that exist: what would it decide now?

Generates the guard's val draw (tiercel.quantize.bundle's: the first records of each task, balanced) with the fp32
bundle on onnxruntime, as the guard does, and with each quantized bundle on its own backend, then calls
tiercel.quantize.guard.compare with each bundle's max drop (by scheme: --max-drop, --int4-max-drop) and the
per-task floor at the same value. Prints and writes, per bundle, the average's drop and bound, every task's drop
and the low end of its bootstrapped drop, and which tasks the floor refuses. Nothing is quantized.

    python benchmarks/guard_replay.py --reference FP32_DIR --bundle NAME=DIR@BACKEND [...] \
        --val val.json --root DATA_DIR [--n-val 896] [--out benchmarks/results/guard_replay.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from image_use import commit, machine, parse_or_table, write_result  # noqa: E402


def table(result: dict) -> str:
    """Markdown: one row per bundle (average and verdicts), then per task the drop and its low end per bundle."""
    names = list(result["bundles"])
    rows = ["| bundle | max drop | average drop / bound | passes the average | tasks the floor refuses |",
            "|---|---|---|---|---|"]
    for n in names:
        v = result["bundles"][n]["verdict"]
        rows.append(f"| {n} | {v['max_task_drop']:.0%} | {v['drop']:+.2%} / {v['drop_bound']:+.2%} | "
                    f"{'yes' if result['bundles'][n]['average_holds'] else 'no'} | "
                    f"{', '.join(v['task_misses']) or 'none'} |")
    tags = list(result["bundles"][names[0]]["verdict"]["per_task"])
    rows += ["", "Per task: drop (low end of the bootstrapped drop); positive is a loss.", "",
             "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for t in tags:
        cells = []
        for n in names:
            p = result["bundles"][n]["verdict"]["per_task"].get(t, {})
            cells.append(f"{p['drop']:+.1%} ({p['drop_low']:+.1%})" if "drop_low" in p else "-")
        rows.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, help="the fp32 bundle (generated on onnxruntime, as the guard does)")
    ap.add_argument("--bundle", action="append", help="NAME=DIR@BACKEND")
    ap.add_argument("--val", type=Path)
    ap.add_argument("--root", type=Path)
    ap.add_argument("--n-val", type=int, default=896)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--max-drop", type=float, default=0.01, help="for int8 schemes")
    ap.add_argument("--int4-max-drop", type=float, default=0.03, help="for schemes with int4 graphs")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "guard_replay.json")
    args = parse_or_table(ap, table, ("reference", "bundle", "val", "root"))
    if args is None:
        return
    import tiercel.runtime
    from tiercel.quantize import guard
    from tiercel.quantize.bundle import _reference, _val_samples
    from tiercel.quantize.schemes import has_int4
    from tiercel.runtime.bundle import read_bundle

    result = {"command": "python benchmarks/guard_replay.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "n_val": args.n_val,
              "confidence": args.confidence, "bundles": {}}
    samples = _val_samples(None, args.val, args.root, args.n_val)
    t0 = time.perf_counter()
    ref = _reference(read_bundle(args.reference), samples, args.max_new_tokens, threads=1)
    result["reference_seconds"] = time.perf_counter() - t0
    print(f"fp32 on {len(samples)} val samples: {result['reference_seconds']:.0f} s", flush=True)
    for item in args.bundle:
        name, _, rest = item.partition("=")
        path, _, backend = rest.rpartition("@")
        if not (name and path and backend):
            sys.exit(f"--bundle {item}: give NAME=DIR@BACKEND")
        quantization = json.loads((Path(path) / "manifest.json").read_text())["quantization"]
        scheme = quantization["scheme"]  # a mixed bundle's graphs name their leaf schemes
        max_drop = args.int4_max_drop if any(map(has_int4, quantization["graphs"].values())) else args.max_drop
        t0 = time.perf_counter()
        model = tiercel.runtime.load(path, backend=backend, threads=1)
        ids = guard.run_samples(model, samples, args.max_new_tokens)
        v = guard.compare(model.tokenizer, samples, ref["ids"], ids, max_drop, 0.0, model.dialect, ref["scores"],
                          confidence=args.confidence, max_task_drop=max_drop)
        holds = v.drop <= max_drop and v.drop_bound <= max_drop
        result["bundles"][name] = {"path": path, "backend": backend, "scheme": scheme, "average_holds": holds,
                                   "seconds": time.perf_counter() - t0, "verdict": v.to_dict()}
        print(f"{name}: {v.line()}; average {'holds' if holds else 'refused'}; "
              f"floor refuses {', '.join(v.task_misses) or 'no task'}", flush=True)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_result(args.out, result)
    print(table(result))


if __name__ == "__main__":
    main()
