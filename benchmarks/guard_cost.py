"""Where the accuracy guard's time goes on one comparison: generation against the paired bootstrap, per task.

Generates the guard's val draw with the fp32 bundle and one quantized bundle (tiercel.quantize.bundle's draw,
greedy), then runs tiercel.quantize.guard.compare once with every task headline call timed.

    python benchmarks/guard_cost.py --reference FP32_DIR --bundle DIR@BACKEND --val val.json --root DATA_DIR \
        [--n-val 896] [--out benchmarks/results/guard_cost.json]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from image_use import commit, machine, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--bundle", required=True, help="DIR@BACKEND")
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--n-val", type=int, default=896)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "guard_cost.json")
    args = ap.parse_args()
    import tiercel.runtime as rt
    from tiercel.quantize import guard
    from tiercel.quantize.bundle import _reference, _val_samples
    from tiercel.runtime.bundle import read_bundle

    path, _, backend = args.bundle.rpartition("@")
    result = {"command": "python benchmarks/guard_cost.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    samples = _val_samples(None, args.val, args.root, args.n_val)
    t0 = time.perf_counter()
    ref = _reference(read_bundle(args.reference), samples, args.max_new_tokens, threads=1)  # generation + headlines
    t1 = time.perf_counter()
    model = rt.load(path, backend=backend, threads=1)
    ids = guard.run_samples(model, samples, args.max_new_tokens)
    t2 = time.perf_counter()
    spent, real = collections.Counter(), guard._headline

    def timed(tag, *a):
        start = time.perf_counter()
        value = real(tag, *a)
        spent[tag] += time.perf_counter() - start
        return value

    guard._headline = timed
    try:
        verdict = guard.compare(model.tokenizer, samples, ref["ids"], ids, 0.01, 0.0, model.dialect, ref["scores"],
                                confidence=0.9, max_task_drop=0.01)
    finally:
        guard._headline = real
    t3 = time.perf_counter()
    result.update({"samples": len(samples), "bundle": args.bundle, "reference_seconds": t1 - t0,
                   "generate_seconds": t2 - t1, "compare_seconds": t3 - t2,
                   "headline_seconds": dict(spent.most_common()), "verdict_drop": verdict.drop,
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    write_result(args.out, result)
    print(f"{len(samples)} samples: fp32 generate + score {t1 - t0:.1f} s, quantized generate {t2 - t1:.1f} s, "
          f"compare {t3 - t2:.1f} s")
    for tag, s in spent.most_common():
        print(f"  {tag} {s:.1f} s")


if __name__ == "__main__":
    main()
