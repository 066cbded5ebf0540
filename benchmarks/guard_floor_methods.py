"""Which interval should the guard's per-task floor use? False refusals and power of four ways, simulated.

The floor refuses a task when its loss is resolved over `floor` at level (1 - confidence) / tasks. The guard
used the percentile bootstrap's low end with 200 rounds (2,000 since this comparison); guard_floor_sim.py measured it refusing up to 2.5x as
often as that level at 8-256 val samples. Compared here, on one task scored by accuracy (n val samples, fp32
right with probability 0.5, the quantized answer flipped either way with probability `flip`, and right answers
additionally lost with probability `loss`: the true relative drop is (1 - flip) x loss):

- `percentile-200`, `percentile-2000`: the low end at the level, from 200 / 2,000 paired resamples;
- `bca-2000`: the bias-corrected and accelerated low end (Efron 1987; z0 from the share of resampled drops
  under the observed one, ties half; acceleration from the leave-one-out jackknife), 2,000 resamples;
- `signflip-2000`: a paired randomisation test: each sample's two answers swapped with probability 1/2,
  2,000 times; refused when the observed drop is over the floor and its p-value, (1 + #{drop_swapped >=
  drop}) / 2001, is under the level.

A row gives the share of trials refused: with `loss` 0 that is the false-refusal rate (to compare with the
level), with `loss` > 0 the power.

    python benchmarks/guard_floor_methods.py [--trials 2000] [--out benchmarks/results/guard_floor_methods.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from image_use import commit, machine, write_result  # noqa: E402

NORMAL = statistics.NormalDist()
METHODS = ("percentile-200", "percentile-2000", "bca-2000", "signflip-2000")


def _drops(fr: np.ndarray, qr: np.ndarray) -> np.ndarray:
    return np.where(fr > 0, (fr - qr) / np.where(fr > 0, fr, 1), np.nan)


def refuses(f: np.ndarray, q: np.ndarray, method: str, level: float, floor: float, rng) -> bool:
    """One task's floor decision on paired 0/1 answers f (fp32) and q (quantized)."""
    if not f.any():
        return False  # fp32 at 0: no relative drop, not checked
    n, rounds = len(f), int(method.rsplit("-", 1)[1])
    observed = (f.mean() - q.mean()) / f.mean()
    if method.startswith("signflip"):
        swap = rng.random((rounds, n)) < 0.5
        fs, qs = np.where(swap, q, f).mean(1), np.where(swap, f, q).mean(1)
        p = (1 + np.sum(_drops(fs, qs) >= observed - 1e-12)) / (1 + rounds)
        return bool(observed > floor and p < level)
    picks = rng.integers(0, n, (rounds, n))
    drops = _drops(f[picks].mean(1), q[picks].mean(1))
    drops = drops[~np.isnan(drops)]
    if method.startswith("percentile"):
        return bool(np.quantile(drops, level) > floor)
    share = (np.sum(drops < observed) + 0.5 * np.sum(drops == observed)) / len(drops)
    z0 = NORMAL.inv_cdf(float(np.clip(share, 0.5 / len(drops), 1 - 0.5 / len(drops))))
    keep = np.ones(n, dtype=bool)
    jack = []
    for i in range(n):  # leave-one-out drops
        keep[i] = False
        fi = f[keep].mean()
        jack.append((fi - q[keep].mean()) / fi if fi > 0 else np.nan)
        keep[i] = True
    jack = np.array(jack)
    jack = jack[~np.isnan(jack)]
    d = jack.mean() - jack
    denominator = 6 * np.sum(d**2) ** 1.5
    a = np.sum(d**3) / denominator if denominator > 0 else 0.0
    z = z0 + NORMAL.inv_cdf(level)
    adjusted = NORMAL.cdf(z0 + z / (1 - a * z))
    return bool(np.quantile(drops, adjusted) > floor)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--floor", type=float, default=0.01)
    ap.add_argument("--tasks", type=int, default=14, help="tasks the level is shared over")
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 256])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "guard_floor_methods.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    level = (1 - args.confidence) / args.tasks
    result = {"command": "python benchmarks/guard_floor_methods.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "trials": args.trials,
              "floor": args.floor, "level": level, "methods": list(METHODS), "rows": []}
    for loss in (0.0, 0.2, 0.4):
        for flip in (0.1, 0.3):
            for n in args.sizes:
                counts = dict.fromkeys(METHODS, 0)
                for _ in range(args.trials):
                    f = rng.random(n) < 0.5
                    q = np.where(rng.random(n) < flip, ~f, f) & ~(f & (rng.random(n) < loss))
                    for m in METHODS:
                        counts[m] += refuses(f, q, m, level, args.floor, rng)
                row = {"loss": loss, "flip": flip, "n": n} | {m: c / args.trials for m, c in counts.items()}
                result["rows"].append(row)
                print(f"loss {loss} flip {flip} n {n:3d}: " + "  ".join(f"{m} {row[m]:.4f}" for m in METHODS),
                      flush=True)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
