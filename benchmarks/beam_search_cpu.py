"""Beam search's own cost per decode step on this CPU: the full sort it used to rank candidates vs the
linear-time top-k (tiercel.runtime.generate._topk), in the same run.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/beam_search_cpu.py [--rounds 5] [--bundle BUNDLE] \
        [--out benchmarks/results/beam_search_cpu.json]

Two sides, both with Florence-2's generation settings (3 beams, no-repeat 3-grams), 32 forced new tokens:

    before  ranking by np.argsort(-x, kind="stable") over num_beams x vocabulary candidates per item, and the
            log-softmax with one more [N, V] copy (tiercel up to this change)
    after   tiercel.runtime.generate as it is: _topk by partition + a stable sort of the k candidates, in-place
            log-softmax; the same tokens (tests/unit/test_runtime_search.py)

Part 1, search alone: a decoder that returns precomputed logits (seeded normal x 3 over 51,290 tokens, 4 arrays
cycled), batch 1 (one task) and 14 (`run_all`), so the decoder costs a copy; search ms per step = (beam_search
wall time - the same calls of the decoder alone) / steps. Part 2 with --bundle: the real runtime on a bundle
(onnxruntime, one thread), IMG_CAP alone and run_all over the 13 single-image tasks, `generate_overhead` from
the runtime's StageTimer (generate minus the decoder steps) and end to end; tokens compared between sides.
Sides alternate within each round, the first side rotating by round; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from image_use import commit  # noqa: E402

from tiercel.runtime import generate  # noqa: E402

VOCAB, BEAMS, TOKENS = 51290, 3, 32


def sorted_topk(x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-x, axis=-1, kind="stable")[:, :k]


def copying_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


CURRENT = (generate._topk, generate._log_softmax)
SIDES = {"before": (sorted_topk, copying_log_softmax), "after": CURRENT}


@contextmanager
def side(name: str):
    generate._topk, generate._log_softmax = SIDES[name]
    try:
        yield
    finally:
        generate._topk, generate._log_softmax = CURRENT


class Replay:
    """A decoder that hands out precomputed logits: its cost is one copy per step."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays, self.i = arrays, 0

    def step(self, tokens):
        out = self.arrays[self.i % len(self.arrays)].copy()
        self.i += 1
        return out

    def reorder(self, rows):
        pass


def cfg() -> generate.GenerationConfig:
    return generate.GenerationConfig(num_beams=BEAMS, max_new_tokens=TOKENS, no_repeat_ngram_size=3, eos_token_id=-1,
                                     forced_eos_token_id=None)


def search_alone(batch: int, rounds: int) -> dict:
    rng = np.random.default_rng(batch)
    arrays = [(3 * rng.standard_normal((batch * BEAMS, VOCAB))).astype(np.float32) for _ in range(4)]
    dec = Replay(arrays)
    t0 = time.perf_counter()
    for _ in range(TOKENS):
        dec.step(None)
    decoder_s = time.perf_counter() - t0
    per_step, tokens = {n: [] for n in SIDES}, {}
    for r in range(rounds):
        names = list(SIDES)[r % 2:] + list(SIDES)[: r % 2]
        for name in names:
            dec.i = 0
            with side(name):
                t0 = time.perf_counter()
                tokens[name] = generate.beam_search(dec, batch, cfg())
                per_step[name].append(1e3 * (time.perf_counter() - t0 - decoder_s) / TOKENS)
    med = {n: statistics.median(v) for n, v in per_step.items()}
    return {"batch": batch, "rows": batch * BEAMS, "search_ms_per_step": med, "per_round": per_step,
            "speedup": med["before"] / med["after"], "same_tokens": tokens["before"] == tokens["after"]}


def with_bundle(bundle: Path, rounds: int) -> dict:
    import tiercel.runtime as rt
    from tiercel import tasks
    from tiercel.runtime.profile.runner import forced_generation, profile_image
    from tiercel.runtime.profile.timing import StageTimer, breakdown
    from tiercel.tasks.examples import run_all_inputs

    m = rt.load(bundle, backend="onnxruntime", threads=1)
    image = profile_image(m.shape.shape.image_size)
    single = [t for t in tasks.TAGS if tasks.get(t).n_images == 1]
    texts, regions = run_all_inputs(single, (image.shape[1], image.shape[0]))
    gen = {**forced_generation(TOKENS, BEAMS), "no_repeat_ngram_size": 3}
    calls = {"IMG_CAP": lambda: [m.run(image, "IMG_CAP", **gen)],
             "run_all_13": lambda: m.run_all(image, single, texts, regions, **gen)}
    m.timer = StageTimer()
    out = {}
    for label, call in calls.items():
        call()  # warm-up: new shapes
        rows = {n: [] for n in SIDES}
        answers = {}
        for r in range(rounds):
            for name in list(SIDES)[r % 2:] + list(SIDES)[: r % 2]:
                with side(name):
                    m.timer.take()
                    t0 = time.perf_counter()
                    result = call()
                    total = time.perf_counter() - t0
                    b = breakdown(m.timer.take())
                answers[name] = [getattr(x, "raw", str(x)) for x in result]
                rows[name].append({"end_to_end_ms": 1e3 * total, "search_ms": 1e3 * b["generate_overhead"],
                                   "decode_step_ms": 1e3 * statistics.median(b["decode_token"])})
            print(f"{label} round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {rows[n][-1]['end_to_end_ms'] / 1e3:.2f} s (search {rows[n][-1]['search_ms']:.0f} ms)" for n in SIDES),
                flush=True)
        med = {n: {k: statistics.median(x[k] for x in v) for k in v[0]} for n, v in rows.items()}
        out[label] = {"median": med, "per_round": rows, "same_answers": answers["before"] == answers["after"],
                      "end_to_end_speedup": med["before"]["end_to_end_ms"] / med["after"]["end_to_end_ms"]}
    out["bundle"] = str(bundle)
    out["precision"] = sorted({e.precision for e in m.bundle.entries("onnxruntime").values()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bundle", type=Path, help="also time the runtime on this bundle (onnxruntime, one thread)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "beam_search_cpu.json")
    args = ap.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    result = {"command": " ".join(["python", *sys.argv]), "commit": commit(),
              "machine": {"cpu": cpu, "cores": os.cpu_count(), "loadavg_start": os.getloadavg(),
                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "numpy": np.__version__},
              "settings": {"vocab": VOCAB, "num_beams": BEAMS, "new_tokens": TOKENS, "no_repeat_ngram_size": 3,
                           "rounds": args.rounds}}
    start = time.perf_counter()
    result["search_alone"] = [search_alone(b, args.rounds) for b in (1, 14)]
    for r in result["search_alone"]:
        print(f"batch {r['batch']}: search {r['search_ms_per_step']['before']:.2f} -> {r['search_ms_per_step']['after']:.2f} "
              f"ms/step ({r['speedup']:.1f}x), same tokens {r['same_tokens']}", flush=True)
    if args.bundle:
        result["runtime"] = with_bundle(args.bundle, args.rounds)
    result["wall_s"] = time.perf_counter() - start
    result["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
