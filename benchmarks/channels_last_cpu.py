"""The vision encoder with and without tiercel's channels-last position encoding (rewrite.depthwise_channels_last).

DaViT's convolutional position encoding moves its tokens [B, N, C] to [B, C, H, W] for a depthwise conv and back,
two rank-3 Transposes per block (44 of them in Florence-2-base). Written channels-last, onnxruntime folds the moves
into the reorders its NCHWc conv does anyway. This times the Florence-2-base vision graph of runtime_cpu.py's
bundle both ways, on onnxruntime fp32 and int8-static (each graph quantized by tiercel's quantize_graph from the
same calibration feeds) and on OpenVINO (why its IR keeps the graph before the rewrite):

    OMP_NUM_THREADS=1 python benchmarks/channels_last_cpu.py --runs 8 --threads 1

`before`: the bundle's vision_encoder.onnx as runtime_cpu.py exported it (before this rewrite existed; the JSON
counts the instances rewritten, 0 would mean the bundle already has it). `after`: the same graph through
depthwise_channels_last. One warm-up call each, then `--runs` rounds, the order alternating; medians; outputs
compared (they should be bit-identical). OpenVINO: both graphs through transposes_as_reorders, as export does.

Writes benchmarks/results/channels_last_cpu.json (commit, command, machine); the write-up is channels_last_cpu.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from image_use import commit, machine, write_result  # noqa: E402
from int8_conv_cpu import feeds, images_of, vision_args  # noqa: E402
from vision_ops_cpu import _interleaved  # noqa: E402


def compare(calls: dict, feed: dict, runs: int) -> dict:
    """Warm-up, outputs compared, `runs` alternating rounds: {wall_ms, median_ms, speedup, max_abs_diff}."""
    import numpy as np

    outs = {k: np.asarray(call(feed)) for k, call in calls.items()}
    wall = _interleaved({k: (lambda c=c: c(feed)) for k, c in calls.items()}, runs)
    med = {k: statistics.median(v) for k, v in wall.items()}
    return {"wall_ms": wall, "median_ms": med, "speedup": med["before"] / med["after"],
            "max_abs_diff": float(np.abs(outs["before"] - outs["after"]).max())}


def onnxruntime_calls(paths: dict, threads: int) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    return {k: (lambda feed, s=s: s.run(None, feed)[0]) for k, s in sessions.items()}


def openvino_calls(paths: dict, threads: int, precision: str) -> dict:
    import openvino as ov

    from tiercel.export.openvino import transposes_as_reorders

    core, out = ov.Core(), {}
    for k, p in paths.items():
        model = core.read_model(str(p))
        transposes_as_reorders(model)
        request = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
                                                    "NUM_STREAMS": 1}).create_infer_request()
        out[k] = lambda feed, r=request: r.infer(feed)[0].copy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    vision_args(ap, "channels_last_cpu")
    ap.add_argument("--openvino", default="f32,bf16", help="precision hints to time on OpenVINO, or none")
    args = ap.parse_args()
    import onnx

    from tiercel.export.rewrite import depthwise_channels_last
    from tiercel.quantize.onnx_backend import quantize_graph
    from tiercel.quantize.schemes import get_scheme

    src = args.bundle / "vision_encoder.onnx"
    if not src.is_file():
        sys.exit(f"{src}: not found; run benchmarks/runtime_cpu.py first (it exports this bundle) or give --bundle")
    result = {"commit": commit(), "command": " ".join(sys.argv), "machine": machine(), "graph": str(src),
              "threads": args.threads, "runs": args.runs, "n_calib": args.n_calib, "paths": {}}
    calib = feeds(args.bundle, images_of(args.calib, args.n_calib))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        proto = onnx.load(str(src))
        result["rewritten"] = depthwise_channels_last(proto)
        onnx.save(proto, str(tmp / "after.onnx"))
        fp32 = {"before": src, "after": tmp / "after.onnx"}
        int8 = {k: tmp / f"{k}-int8.onnx" for k in fp32}
        for k in fp32:
            quantize_graph(fp32[k], int8[k], get_scheme("int8-static"), "vision", calib)
        feed = calib[0]
        result["paths"]["onnxruntime-fp32"] = compare(onnxruntime_calls(fp32, args.threads), feed, args.runs)
        result["paths"]["onnxruntime-int8"] = compare(onnxruntime_calls(int8, args.threads), feed, args.runs)
        for precision in [] if args.openvino == "none" else args.openvino.split(","):
            result["paths"][f"openvino-{precision}"] = compare(openvino_calls(fp32, args.threads, precision),
                                                               feed, args.runs)
    for name, r in result["paths"].items():
        print(f"{name}: {r['median_ms']['before']:.0f} -> {r['median_ms']['after']:.0f} ms ({r['speedup']:.2f}x), "
              f"max |diff| {r['max_abs_diff']:.3g}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
