"""Where the accuracy guard's time goes on one comparison: generation against the paired bootstrap, per task.

Generates the guard's val draw with the fp32 bundle and one quantized bundle (tiercel.quantize.bundle's draw,
greedy), then runs tiercel.quantize.guard.compare in interleaved rounds, each path of `--paths` in turn:
`per_sample` as tiercel does (headlines of each bootstrap draw from per-sample statistics,
tiercel.tasks.metrics.resample) and `whole` with every draw scored by the task's metric
(`bootstrap_drops(whole=True)`, the guard before per-sample statistics; each task's draws timed);
`:N` sets the resamples. A whole path and the per_sample path at the same N must reach the same verdict, bound
and task lows.

    python benchmarks/guard_cost.py --reference FP32_DIR --bundle DIR@BACKEND --val val.json --root DATA_DIR \
        [--n-val 896] [--rounds 2] [--paths per_sample[:N],whole[:N]] \
        [--out benchmarks/results/guard_cost.json]
"""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import statistics
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
    ap.add_argument("--rounds", type=int, default=2, help="compare rounds per path, interleaved")
    ap.add_argument("--paths", default="per_sample,whole",
                    help="ways to time, comma-separated: per_sample or whole, each with :N for N bootstrap resamples "
                         "(default: compare's)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "guard_cost.json")
    args = ap.parse_args()
    import tiercel.runtime as rt
    from tiercel.quantize import guard
    from tiercel.quantize.bundle import _reference, _val_samples
    from tiercel.runtime.bundle import read_bundle
    from tiercel.tasks.metrics import resample

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
    paths = args.paths.split(",")
    spent = {p: collections.Counter() for p in paths}  # per whole-draw path: seconds in each task's draws
    real_scorer, real_bootstrap = resample.scorer, guard.bootstrap_drops

    def timed(path: str):
        def scorer(tag, *a, **k):
            draw = real_scorer(tag, *a, **k)

            def timed_draw(pick):
                start = time.perf_counter()
                value = draw(pick)
                spent[path][tag] += time.perf_counter() - start
                return value
            return timed_draw
        return scorer

    def run(path: str) -> tuple[float, object]:
        way, _, resamples = path.partition(":")
        extra = {"rounds": int(resamples)} if resamples else {}
        if way == "whole":
            resample.scorer, guard.bootstrap_drops = timed(path), functools.partial(real_bootstrap, whole=True)
        start = time.perf_counter()
        try:
            verdict = guard.compare(model.tokenizer, samples, ref["ids"], ids, 0.01, 0.0, model.dialect,
                                    ref["scores"], confidence=0.9, max_task_drop=0.01, **extra)
        finally:
            resample.scorer, guard.bootstrap_drops = real_scorer, real_bootstrap
        return time.perf_counter() - start, verdict

    seconds, verdicts = {p: [] for p in paths}, {}
    for r in range(args.rounds):
        for path in (paths if r % 2 == 0 else paths[::-1]):
            took, verdicts[path] = run(path)
            seconds[path].append(took)
            print(f"round {r} {path}: compare {took:.1f} s", flush=True)
    lows = {p: {t: v.get("drop_low") for t, v in verdicts[p].per_task.items()} for p in verdicts}
    median = {p: statistics.median(v) for p, v in seconds.items()}
    verdict = verdicts[paths[0]]
    result.update({"samples": len(samples), "bundle": args.bundle, "default_bootstrap_rounds":
                   inspect.signature(guard.compare).parameters["rounds"].default,
                   "reference_seconds": t1 - t0, "generate_seconds": t2 - t1,
                   "compare_seconds": seconds, "compare_median_seconds": median, "verdict_drop": verdict.drop,
                   "drop_bound": {p: v.drop_bound for p, v in verdicts.items()}, "task_drop_low": lows})
    line = (f"{len(samples)} samples: fp32 generate + score {t1 - t0:.1f} s, quantized generate {t2 - t1:.1f} s, "
            + ", ".join(f"compare ({p}) {m:.1f} s" for p, m in median.items()))
    result["pairs"] = {}
    for whole in (p for p in paths if p.partition(":")[0] == "whole"):  # each with per_sample at the same count
        fast = "per_sample" + whole[len("whole"):]
        if fast not in verdicts:
            continue
        a, b = verdicts[whole], verdicts[fast]
        same = (a.passed == b.passed and abs(a.drop_bound - b.drop_bound) <= 1e-9
                and all((x is None and y is None) or abs(x - y) <= 1e-9
                        for x, y in ((lows[whole][t], lows[fast][t]) for t in lows[whole])))
        result["pairs"][whole] = {"per_sample": fast, "whole_over_per_sample": median[whole] / median[fast],
                                  "headline_seconds_whole": {t: s / args.rounds for t, s in spent[whole].most_common()},
                                  "same_verdict_bound_and_task_lows": same}
        line += f"; {whole} / {fast} {median[whole] / median[fast]:.1f}x, same verdict, bound and task lows: {same}"
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_result(args.out, result)
    print(line)
    for whole, pair in result["pairs"].items():
        for tag, s in pair["headline_seconds_whole"].items():
            print(f"  {whole}: {tag} {s:.1f} s")


if __name__ == "__main__":
    main()
