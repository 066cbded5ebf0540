"""OpenVINO at the bf16 (or f16) hint: KV cache ports in fp32 (as before) vs in the precision the graph computes in.

Usage:
    python benchmarks/openvino_kv_cpu.py [--bundle FP32_BUNDLE] [--hint bf16] [--runs 6] [--all-runs 3] \
        [--threads 1] [--out benchmarks/results/openvino_kv_cpu.json]

Why this exists: a PERF_COUNT profile of the Florence-2-base decoder_with_past at the bf16 hint (one thread, AMX
Xeon) put 2.4 of 20 ms per step in `Reorder` nodes converting the fp32 encoder KV inputs to bf16, every step: the
runtime fed the cache in fp32 and the plugin converted it again each time. tiercel.runtime.backends now declares
the KV ports (past_key_values.* in, present.* out) in the hint's type on a CPU that computes in it. Both sides
are the product's own OpenVinoSession, the "fp32 KV" side with the KV typing switched off (as it was before):

    one task    `run(image, --task)` with exactly 32 new tokens: per decode step (batch 1) and first token
    14 tasks    one `run_all` of the 14 tasks on the same image (14 rows; PIX_CHG's pair as image2), total and
                where the time went (vision, text encoder, first token, decode steps, other)

Both models are open together and timed in alternating order (round i opens with side i % 2), medians. Tokens
are compared on every call: the bf16 KV is the same rounding the plugin applied inside before, so they must be
equal. Without --bundle the Florence-2-base shape (random weights) is exported to a temporary folder (~2 min).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from openvino_decode_cpu import export_base
from runtime_cpu import NEW_TOKENS, all_tasks_rounds, keep_ids, machine, one_round, timed

from tiercel.fileio import write_json
from tiercel.runtime.profile import StageTimer, forced_generation
from tiercel.runtime.profile.runner import profile_image

SIDES = ("fp32-kv", "typed-kv")


@contextlib.contextmanager
def kv_typing_off():
    """OpenVinoSession as it was before the KV ports were typed (cache fed in fp32, converted by the plugin)."""
    import tiercel.runtime.backends as backends

    saved = backends._kv_type
    backends._kv_type = lambda *args: None
    try:
        yield
    finally:
        backends._kv_type = saved


def open_sides(bundle: Path, hint: str, threads: int | None) -> dict:
    import tiercel.runtime

    options = {"INFERENCE_PRECISION_HINT": hint}
    with kv_typing_off():
        before = tiercel.runtime.load(bundle, backend="openvino", threads=threads, options=options)
    after = tiercel.runtime.load(bundle, backend="openvino", threads=threads, options=options)
    kv = {s.kv for s in after.sessions.values()}
    if kv != {hint}:
        raise SystemExit(f"--hint {hint}: OpenVINO's CPU plugin does not compute in {hint} here (KV typed as {kv}); "
                         "run on a CPU that has it (bf16: AVX512_BF16 or AMX; f16: AVX512_FP16)")
    return dict(zip(SIDES, (before, after)))


def one_task_rounds(sides: dict, image: np.ndarray, task: str, runs: int, log) -> dict:
    """Per side: median ms of a decode step and of the first token over `runs` rounds of one run call."""
    gen = forced_generation(NEW_TOKENS, 1)
    rows = {name: [] for name in sides}
    for m in sides.values():
        m.timer = StageTimer()
        timed(m, lambda m=m: m.run(image, task, **gen))  # warm-up
    try:
        for i in range(runs):
            got = one_round(sides, lambda m: timed(m, lambda: m.run(image, task, **gen)), f"round {i + 1}", log, start=i)
            for name, (_, b) in got.items():
                rows[name].append(b)
            log(f"one-task round {i + 1}/{runs}: " + ", ".join(
                f"{k} {1000 * statistics.median(b['decode_token']):.2f} ms/step" for k, (_, b) in got.items()))
    finally:
        for m in sides.values():
            m.timer = None
    return {name: {"decode_step_ms": 1000 * statistics.median(statistics.median(b["decode_token"]) for b in r),
                   "decode_step_ms_per_round": [1000 * statistics.median(b["decode_token"]) for b in r],
                   "first_token_ms": 1000 * statistics.median(b["first_token"] for b in r)} for name, r in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="an fp32 bundle with openvino graphs (default: export florence2-base)")
    ap.add_argument("--hint", default="bf16", choices=["bf16", "f16"])
    ap.add_argument("--task", default="IMG_CAP")
    ap.add_argument("--runs", type=int, default=6, help="rounds of the one-task call")
    ap.add_argument("--all-runs", type=int, default=3, help="rounds of the 14-task run_all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "openvino_kv_cpu.json")
    args = ap.parse_args()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    from image_use import commit

    result = {"command": "python benchmarks/openvino_kv_cpu.py " + " ".join(sys.argv[1:]), "commit": commit(), "machine": machine(),
              "hint": args.hint, "threads": args.threads, "new_tokens": NEW_TOKENS, "task": args.task}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tiercel-ovkv-") as tmp:
        bundle = args.bundle or export_base(Path(tmp))
        sides = open_sides(bundle, args.hint, args.threads)
        image = profile_image(768)
        seen = {name: keep_ids(m) for name, m in sides.items()}
        result["one_task"] = one_task_rounds(sides, image, args.task, args.runs, log)
        same_one = seen["fp32-kv"]["ids"] == seen["typed-kv"]["ids"]
        result["all_tasks"] = all_tasks_rounds(sides, image, args.all_runs, log)
        same_all = seen["fp32-kv"]["ids"] == seen["typed-kv"]["ids"]
    one, every = result["one_task"], result["all_tasks"]
    result["tokens_identical"] = {"one_task": same_one, "all_tasks": same_all}
    result["speedup"] = {"decode_step": one["fp32-kv"]["decode_step_ms"] / one["typed-kv"]["decode_step_ms"],
                         "first_token": one["fp32-kv"]["first_token_ms"] / one["typed-kv"]["first_token_ms"],
                         "all_tasks": every["fp32-kv"]["total_ms"] / every["typed-kv"]["total_ms"],
                         "all_tasks_decode_steps": every["fp32-kv"]["time_goes"]["ms"]["decode_steps"]
                         / every["typed-kv"]["time_goes"]["ms"]["decode_steps"]}
    result["wall_s"] = time.perf_counter() - start
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, result)
    log(f"tokens identical: {result['tokens_identical']}; speed-ups (fp32 KV / typed KV): "
        + ", ".join(f"{k} {v:.2f}x" for k, v in result["speedup"].items()))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
