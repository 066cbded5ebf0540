"""How often does the guard's per-task floor refuse a task that lost nothing? A simulation of its bootstrap.

A task scored by accuracy (a mean over samples: the simplest headline; AP, mIoU and CIDEr are corpus metrics and
are not simulated): n val samples, fp32 right on each with probability 0.5, the quantized answer flipped with
probability `flip` either way, so the true drop is 0. The guard's resampling (tiercel.quantize.guard.
bootstrap_drops: n draws with replacement, both sides scored on the same draw, relative drop (f - q) / f, rounds
where f is 0 left out) is replicated in numpy; a trial refuses when the `level` quantile of the resampled drops is
over the floor. The share of refusing trials is the floor's false-refusal rate for one task, to compare with its
nominal level.

    python benchmarks/guard_floor_sim.py [--trials 4000] [--out benchmarks/results/guard_floor_sim.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from image_use import commit, machine, write_result  # noqa: E402


def false_refusals(n: int, flip: float, level: float, floor: float, rounds: int, trials: int, rng) -> float:
    refused = 0
    for _ in range(trials):
        f = rng.random(n) < 0.5
        q = np.where(rng.random(n) < flip, ~f, f)
        picks = rng.integers(0, n, (rounds, n))
        fr, qr = f[picks].mean(1), q[picks].mean(1)
        drops = np.where(fr > 0, (fr - qr) / np.where(fr > 0, fr, 1), np.nan)
        if f.any() and np.nanquantile(drops, level) > floor:
            refused += 1
    return refused / trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4000)
    ap.add_argument("--floor", type=float, default=0.01)
    ap.add_argument("--tasks", type=int, default=14, help="tasks the level is shared over")
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "guard_floor_sim.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    nominal = (1 - args.confidence) / args.tasks
    result = {"command": "python benchmarks/guard_floor_sim.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "trials": args.trials,
              "floor": args.floor, "nominal_per_task": nominal, "rows": []}
    for divisor in (1, 2):
        for rounds in (200,):
            for flip in (0.1, 0.3):
                for n in (4, 8, 16, 32, 64, 256):
                    rate = false_refusals(n, flip, nominal / divisor, args.floor, rounds, args.trials, rng)
                    row = {"level": nominal / divisor, "level_divisor": divisor, "rounds": rounds, "flip": flip,
                           "n": n, "false_refusals": rate, "over_nominal": rate / nominal}
                    result["rows"].append(row)
                    print(f"level {nominal / divisor:.4f} rounds {rounds} flip {flip} n {n:3d}: "
                          f"{rate:.4f} ({rate / nominal:.2f}x the nominal {nominal:.4f})", flush=True)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
