"""int8-static on onnxruntime: the vision encoder's convolutions as QLinearConv vs DequantizeLinear + fp32 Conv.

tiercel's int8-static scheme for onnxruntime leaves weight layers' outputs in fp32 so that onnxruntime fuses
DequantizeLinear + MatMul into MatMulIntegerToFloat (tiercel/quantize/onnx_backend.py). Onnxruntime has no such
fusion for Conv: a Conv with an fp32 output runs in fp32 on dequantized weights. This measures the two choices
for the convolutions (DaViT's four patch embeddings; depthwise convolutions stay fp32 either way) on one graph:

    before  every weight op's output fp32 (Conv included): DQ -> Conv in fp32
    after   what tiercel writes now: Conv outputs quantised too, so Q -> Conv -> Q runs as QLinearConv

    OMP_NUM_THREADS=1 python benchmarks/int8_conv_cpu.py --bundle benchmarks/work/runtime_cpu/florence2-base/fp32 \\
        --n-calib 4 --n-test 4 --runs 8 --threads 1

Both graphs are quantised by tiercel.quantize.onnx_backend.quantize_graph from the same calibration feeds
(tiercel.quantize.calibrate.capture on the fp32 bundle, as the product records them, from `--n-calib` training
samples of `--calib` with distinct images); `before` with the module's FLOAT_OUTPUT_OPS set back to every weight
op. Timing: one warm-up call each, then `--runs` rounds, the order alternating by round; medians. Per op type:
onnxruntime's profiler on one more call each. Accuracy: each graph's output against the fp32 graph's on
`--n-test` further images (relative L2 error and cosine), so the price of the extra rounding is shown beside the
time. Random weights: the error says how much more rounding there is, not what it costs a trained model (the
accuracy guard measures that per bundle).

Writes benchmarks/results/int8_conv_cpu.json (commit, command, machine); the write-up is int8_conv_cpu.md.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from image_use import commit, machine, write_result  # noqa: E402
from vision_ops_cpu import _interleaved  # noqa: E402

GRAPH = "vision_encoder"


def distinct_images(calib: Path, n: int) -> list:
    """The first `n` samples of `calib`'s training split with pairwise different images (the synthetic benchmark
    asks several tasks about each image)."""
    from tiercel.quantize.calibrate import load_samples

    out, seen = [], set()
    for s in load_samples(calib, n=10**6):
        key = hashlib.sha256(s.image.tobytes()).hexdigest()
        if key not in seen:
            seen.add(key)
            out.append(s)
    if len(out) < n:
        sys.exit(f"{calib}: {len(out)} distinct training images, {n} needed (--n-calib + --n-test)")
    return out[:n]


def vision_args(ap: argparse.ArgumentParser, name: str) -> None:
    """The options this benchmark and channels_last_cpu.py share: the bundle, calibration images, rounds, threads."""
    ap.add_argument("--bundle", type=Path, default=HERE / "work/runtime_cpu/florence2-base/fp32")
    ap.add_argument("--calib", type=Path, default=HERE / "work/int8_conv/synth",
                    help="a synthetic-benchmark folder; generated there (256 px) when it has no train.json")
    ap.add_argument("--n-calib", type=int, default=4)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / f"results/{name}.json")


def images_of(calib: Path, n: int) -> list:
    """`n` training samples of `calib` with distinct images, the folder generated first when it has no train.json
    (40 records per image asked for: the benchmark asks several tasks about each image)."""
    if not (calib / "train.json").is_file():
        from tiercel.data.synth.writer import generate

        generate(calib, n=n * 40, size=256, workers=1, overwrite=True)
    return distinct_images(calib, n)


def feeds(bundle: Path, samples: list) -> list[dict]:
    """The vision encoder's feeds for `samples`, recorded by the product's calibration capture on the fp32 bundle."""
    from tiercel.quantize.calibrate import capture

    return capture(bundle, samples, n=len(samples), max_new_tokens=1).feeds[GRAPH]


def quantize(src: Path, dst: Path, calib: list[dict], float_outputs: tuple[str, ...]) -> dict:
    import tiercel.quantize.onnx_backend as ob
    from tiercel.quantize.schemes import get_scheme

    kept, ob.FLOAT_OUTPUT_OPS = ob.FLOAT_OUTPUT_OPS, float_outputs
    try:
        t0 = time.perf_counter()
        report = ob.quantize_graph(src, dst, get_scheme("int8-static"), "vision", calib)
        return {"seconds": time.perf_counter() - t0, "quantized": len(report["quantized"]),
                "float_output_ops": list(float_outputs)}
    finally:
        ob.FLOAT_OUTPUT_OPS = kept


def session(path: Path, threads: int, profile: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if profile:
        options.enable_profiling, options.profile_file_prefix = True, profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def op_profile(path: Path, feed: dict, threads: int, folder: Path) -> dict:
    """{op type: ms} of one call after a warm-up, from onnxruntime's profiler, and the kernels' total."""
    s = session(path, threads, str(folder / path.stem))
    s.run(None, feed)
    s.run(None, feed)
    events = [e for e in json.loads(Path(s.end_profiling()).read_text())
              if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    last = events[len(events) // 2:]  # the second call
    by = collections.Counter()
    for e in last:
        by[e["args"]["op_name"]] += e["dur"] / 1e3
    return {"total_ms": round(sum(by.values()), 1), "ms": {k: round(v, 1) for k, v in by.most_common()}}


def accuracy(graphs: dict, test: list[dict], threads: int) -> dict:
    import numpy as np

    ref = session(graphs["fp32"], threads)
    out = {}
    for name in ("before", "after"):
        s, rel, cos = session(graphs[name], threads), [], []
        for feed in test:
            y, r = s.run(None, feed)[0].ravel(), ref.run(None, feed)[0].ravel()
            rel.append(float(np.linalg.norm(y - r) / np.linalg.norm(r)))
            cos.append(float(y @ r / (np.linalg.norm(y) * np.linalg.norm(r))))
        out[name] = {"rel_l2": rel, "rel_l2_mean": statistics.fmean(rel), "cosine_min": min(cos)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    vision_args(ap, "int8_conv_cpu")
    ap.add_argument("--n-test", type=int, default=4)
    args = ap.parse_args()
    src = args.bundle / f"{GRAPH}.onnx"
    if not src.is_file():
        sys.exit(f"{src}: not found; run benchmarks/runtime_cpu.py first (it exports this bundle) or give --bundle")
    result = {"commit": commit(), "command": " ".join(sys.argv), "machine": machine(), "graph": str(src),
              "threads": args.threads, "runs": args.runs}
    samples = images_of(args.calib, args.n_calib + args.n_test)
    calib, test = feeds(args.bundle, samples[:args.n_calib]), feeds(args.bundle, samples[args.n_calib:])
    result["samples"] = {"calib": str(args.calib), "n_calib": args.n_calib, "n_test": args.n_test,
                         "distinct_images": True}
    import tiercel.quantize.onnx_backend as ob

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        graphs = {"fp32": src, "before": tmp / "before.onnx", "after": tmp / "after.onnx"}
        result["quantize"] = {"before": quantize(src, graphs["before"], calib, ob.WEIGHT_OPS),
                              "after": quantize(src, graphs["after"], calib, ob.FLOAT_OUTPUT_OPS)}
        sessions = {k: session(graphs[k], args.threads) for k in ("before", "after")}
        pixels = test[0]
        for s in sessions.values():
            s.run(None, pixels)  # warm-up
        wall = _interleaved({k: lambda s=s: s.run(None, pixels) for k, s in sessions.items()}, args.runs)
        med = {k: statistics.median(v) for k, v in wall.items()}
        result["wall_ms"] = wall
        result["median_ms"] = med
        result["speedup"] = med["before"] / med["after"]
        result["profile"] = {k: op_profile(graphs[k], pixels, args.threads, tmp) for k in ("before", "after")}
        result["accuracy"] = accuracy(graphs, test, args.threads)
    print(f"before {med['before']:.0f} ms, after {med['after']:.0f} ms: {result['speedup']:.2f}x; rel L2 vs fp32 "
          f"{result['accuracy']['before']['rel_l2_mean']:.4f} -> {result['accuracy']['after']['rel_l2_mean']:.4f}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
