"""onnxruntime's exact int8 products (`session.x64quantprecision=1`) against its default, on this CPU.

    OMP_NUM_THREADS=1 python benchmarks/int8_products_cpu.py [--rounds 5] [--steps 16]
    -> benchmarks/results/int8_products_cpu.json

On x86 CPUs without VNNI onnxruntime's u8 x s8 int8 kernels add pairs of products in 16 bits and saturate;
`session.x64quantprecision=1` makes them exact (u8 x u8). tiercel sets that key on such CPUs only
(tiercel.runtime.backends.saturating_int8). This measures what the key costs and whether it changes anything, on
the Florence-2-base shape's int8-static and int8-dynamic bundles (random weights, made by decode_profile_cpu.py's
build() into benchmarks/work/decode_profile/, reused when there): the vision encoder on one 768x768 image, and
`decoder_with_past` at 1 and 14 rows (`--steps` steps from a self-attention past of 32, as decode_profile_cpu.py).
Both settings are open at once, one intra-op thread each, through tiercel's own OrtSession; rounds interleave
them, the first one alternating; medians over rounds. The outputs of the two settings are compared element by
element (largest absolute difference): 0 means the default's products are exact on this CPU too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from decode_profile_cpu import WORK, batched, build, commit, decode, decoder_feeds, decoder_file  # noqa: E402
from runtime_cpu import machine  # noqa: E402

SETTINGS = {"exact": "1", "default": "0"}  # session.x64quantprecision


def sessions(file: Path) -> dict:
    from tiercel.runtime.backends import OrtSession

    return {k: OrtSession(file, "cpu", 1, {"session.x64quantprecision": v}) for k, v in SETTINGS.items()}


def largest_difference(a: dict, b: dict) -> float:
    return max(float(np.abs(a[n].astype(np.float64) - b[n].astype(np.float64)).max()) for n in a)


def timed(call: dict, rounds: int) -> dict:
    """{setting: [seconds per round]}, the settings alternating which goes first."""
    out = {k: [] for k in call}
    order = list(call)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            call[k]()
            out[k].append(time.perf_counter() - t)
    return out


def summary(times: dict, unit: float, diff: float) -> dict:
    ms = {k: statistics.median(v) * unit for k, v in times.items()}
    return {"exact_ms": ms["exact"], "default_ms": ms["default"], "exact_over_default": ms["exact"] / ms["default"],
            "rounds_ms": {k: [x * unit for x in v] for k, v in times.items()}, "largest_difference": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "int8_products_cpu.json")
    args = ap.parse_args()
    from tiercel.fileio import write_json
    from tiercel.runtime import read_bundle
    from tiercel.runtime.backends import CPU_FLAGS, ORT_CPU_CONFIG

    log = lambda m: print(m, flush=True)  # noqa: E731
    bundles = build(args.work, ["ort-int8-static", "ort-int8-dynamic"], False, log)
    flags = CPU_FLAGS or frozenset()
    result = {"command": "python benchmarks/int8_products_cpu.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": {**machine(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                          "int8_flags": sorted(flags & {"avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"})},
              "tiercel_sets": ORT_CPU_CONFIG, "rounds": args.rounds, "steps": args.steps, "rows": {}}
    for name, bundle in bundles.items():
        b = read_bundle(bundle)
        vision = sessions(b.root / b.entries("onnxruntime")["vision_encoder"].file)
        pixels = {"pixel_values": np.random.default_rng(0).standard_normal((1, 3, 768, 768)).astype(np.float32)}
        outs = {k: s.run(pixels) for k, s in vision.items()}
        got = timed({k: (lambda s=s: s.run(pixels)) for k, s in vision.items()}, args.rounds)
        result["rows"][f"{name} vision"] = summary(got, 1e3, largest_difference(outs["exact"], outs["default"]))
        file, shape = decoder_file(bundle, "onnxruntime")
        step = sessions(file)
        base = decoder_feeds(shape, np.random.default_rng(0), 32, 20)
        for rows in (1, 14):
            feeds = batched(base, rows)
            outs = {k: s.run(feeds) for k, s in step.items()}
            for s in step.values():
                decode(s.run, feeds, 2)
            got = timed({k: (lambda s=s: decode(s.run, feeds, args.steps)) for k, s in step.items()}, args.rounds)
            result["rows"][f"{name} decode@{rows}"] = summary(got, 1e3 / args.steps,
                                                             largest_difference(outs["exact"], outs["default"]))
        for key in [k for k in result["rows"] if k.startswith(name)]:
            r = result["rows"][key]
            log(f"{key}: exact {r['exact_ms']:.2f} ms, default {r['default_ms']:.2f} ms, "
                f"{r['exact_over_default']:.2f}x, largest difference {r['largest_difference']:.3g}")
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, result)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
