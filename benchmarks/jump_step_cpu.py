"""What a jump-forward step costs: one decoder call feeding two new tokens against one feeding one, per bundle path.

Usage:
    python benchmarks/jump_step_cpu.py [--bundle FP32_BUNDLE] [--int8 INT8_STATIC_BUNDLE] [--runs 15] [--threads 1] \
        [--out benchmarks/results/jump_step_cpu.json]

Jump-forward (tiercel.runtime.constrain) appends a token the grammar forces without a decoder step of its own: the
next step feeds it with the token before it. It saves time only if a two-token step costs about what a one-token
step does, which holds where a step is bound by reading the weights (a Florence-2-base-sized decoder on a CPU),
not where it is bound by per-call overhead (the 2M-parameter fidelity teacher). Both sides use the product's
KVDecoder.step after a first step on one prompt; before each timed call the self-attention cache is put back to
the same 32 past tokens, so every call sees the same past. Paths: onnxruntime fp32, OpenVINO f32 and (where the
CPU has it) OpenVINO at the bf16 hint, and onnxruntime int8-static with --int8. Interleaved, medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from runtime_cpu import machine

from tiercel.fileio import write_json

HERE = Path(__file__).resolve().parent
PAST = 32


def decoder_at(m, past: int = PAST):
    """A KVDecoder for one IMG_CAP prompt with `past` tokens in its self-attention cache, and that cache."""
    from tiercel.runtime.model import KVDecoder
    from tiercel.runtime.profile.runner import profile_image

    feats = m.image_features(m.pixel_values(profile_image(m.shape.shape.image_size)))
    hidden, mask = m.encode(feats, ["<CAPTION>"])
    dec = KVDecoder(m.sessions, m.merged, m.shape.decoder_layers, m.embed, hidden, mask)
    dec._heads = m.shape.attention_heads
    dec.step(np.array([2]))
    while next(v for k, v in dec.cache.items() if ".decoder." in k).shape[2] < past:
        dec.step(np.array([5]))
    return dec, dict(dec.cache)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=HERE / "work" / "runtime_cpu" / "florence2-base" / "fp32")
    ap.add_argument("--int8", type=Path, default=HERE / "work" / "runtime_cpu" / "florence2-base" / "onnxruntime-int8")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "jump_step_cpu.json")
    args = ap.parse_args()
    import openvino as ov
    from image_use import commit

    import tiercel.runtime as rt

    paths = [("onnxruntime-fp32", args.bundle, "onnxruntime", None), ("openvino-f32", args.bundle, "openvino", None)]
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        paths.append(("openvino-bf16", args.bundle, "openvino", {"INFERENCE_PRECISION_HINT": "bf16"}))
    if args.int8 and args.int8.is_dir():
        paths.append(("onnxruntime-int8-static", args.int8, "onnxruntime", None))
    decoders = {}
    for name, bundle, backend, options in paths:
        decoders[name] = decoder_at(rt.load(bundle, backend=backend, threads=args.threads, options=options))
    one, two = np.array([7]), np.array([[7, 8]])
    times = {name: {"1": [], "2": []} for name in decoders}
    for r in range(args.runs):
        order = list(decoders.items())
        order = order[r % len(order):] + order[: r % len(order)]
        for name, (dec, cache) in order:
            for t, tokens in (("1", one), ("2", two))[:: 1 if r % 2 else -1]:
                dec.cache = dict(cache)
                start = time.perf_counter()
                dec.step(tokens)
                times[name][t].append(1000 * (time.perf_counter() - start))
    result = {"command": "python benchmarks/jump_step_cpu.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": machine(), "threads": args.threads, "runs": args.runs, "past": PAST, "paths": {}}
    for name, t in times.items():
        a, b = statistics.median(t["1"]), statistics.median(t["2"])
        result["paths"][name] = {"one_token_ms": a, "two_tokens_ms": b, "ratio": b / a, "saved_per_jump_ms": 2 * a - b,
                                 "one_token_ms_per_run": t["1"], "two_tokens_ms_per_run": t["2"]}
        print(f"{name}: one token {a:.2f} ms, two tokens {b:.2f} ms ({b / a:.2f}x): a kept draft saves {2 * a - b:.2f} ms")
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
