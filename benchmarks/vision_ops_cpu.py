"""Where the vision encoder's time goes, per op type, on OpenVINO at f32 and bf16 (one CPU thread), and what
tiercel's Transpose rewrites change there and on onnxruntime (fp32 and int8).

Issue 28 item 2 asks for the vision encoder within 1.5x of its compute bound. On a CPU with AMX the bf16 matmul
peak is 5.4x fp32's, and OpenVINO's bf16 vision encoder ran at 3.46x its bound (benchmarks/results/runtime_cpu.md,
AMX section). This asks why: OpenVINO's own per-node counters (`PERF_COUNT`) on the vision encoder IR of the
bundle runtime_cpu.py exports (Florence-2-base shape, random weights, 768 px), summed per node type and per
kernel (`exec_type`, e.g. `brgconv_avx512_amx` for an AMX convolution), for each precision hint.

    OMP_NUM_THREADS=1 python benchmarks/vision_ops_cpu.py   # needs benchmarks/runtime_cpu.py's bundle first

Two graphs per precision: `before`, the IR as OpenVINO reads the bundle's vision_encoder.onnx, and `after`, what
`tiercel export` now writes: the ONNX graph through tiercel.export.rewrite.channel_split_transposes, read by
OpenVINO and rewritten by tiercel.export.openvino.transposes_as_reorders. `before` is the graph as the bundle
holds it: a bundle exported at commit 30e6df1 or later already has channel_split_transposes (the JSON's count
for it is then 0), so measure that rewrite on a bundle exported before it. Their outputs are compared
(max |difference|). Each: one warm-up call, then `--runs` calls interleaved between the two graphs (the order
alternating by round); the per-node times of the last call are the profile
(the counters add their own overhead, so the profiled total is reported beside the unprofiled median wall time of
the same calls). Matmul-class nodes (MatMul, FullyConnected, Convolution, GroupConvolution) are what the compute
bound counts; everything else (transposes and reshapes of the window partition, normalisation, GELU, softmax,
adds, reorders between layouts and precisions) is outside it.

onnxruntime: the bundle's fp32 and int8 (onnxruntime-int8, runtime_cpu.py's int8-static) vision graphs, before
and after channel_split_transposes (the only rewrite that touches onnxruntime's graphs), wall times interleaved
the same way, outputs compared.

Writes benchmarks/results/vision_ops_cpu.json (commit, command, machine, per precision and graph: wall ms,
profiled ms, ms and share per node type and per kernel, the matmul-class share; the speed-up and difference). The write-up is vision_ops_cpu.md.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from image_use import commit, machine, write_result  # noqa: E402

MATMUL_CLASS = {"MatMul", "FullyConnected", "Convolution", "GroupConvolution"}


def _interleaved(calls: dict, runs: int) -> dict:
    """{"before": [ms, ...], "after": [...]}: `runs` rounds of both calls, the order alternating by round."""
    wall = {k: [] for k in calls}
    for i in range(runs):
        for k in (("before", "after") if i % 2 == 0 else ("after", "before")):
            t0 = time.perf_counter()
            calls[k]()
            wall[k].append((time.perf_counter() - t0) * 1e3)
    return wall


def profile(onnx_file: Path, precision: str, runs: int, threads: int) -> dict:
    """{"before", "after"}: wall times and the last call's per-node counters at one precision hint, and the
    largest output difference between the two graphs."""
    import numpy as np
    import onnx
    import openvino as ov

    from tiercel.export.openvino import transposes_as_reorders
    from tiercel.export.rewrite import channel_split_transposes

    core = ov.Core()
    config = {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
              "NUM_STREAMS": 1}
    proto = onnx.load(str(onnx_file))
    split = channel_split_transposes(proto)
    before, after = core.read_model(onnx_file), core.read_model(proto.SerializeToString(), b"")
    rewritten = {"channel_split_transposes": split, "transposes_as_reorders": transposes_as_reorders(after)}
    requests = {k: core.compile_model(m, "CPU", config).create_infer_request() for k, m in (("before", before), ("after", after))}
    pixels = np.random.default_rng(0).standard_normal((1, 3, 768, 768)).astype(np.float32)
    outputs = {k: r.infer({"pixel_values": pixels})[0].copy() for k, r in requests.items()}  # warm-up
    wall = _interleaved({k: lambda r=r: r.infer({"pixel_values": pixels}) for k, r in requests.items()}, runs)
    out = {k: _counters(requests[k], wall[k], precision) for k in requests}
    out["transposes_rewritten"] = rewritten
    out["max_abs_difference"] = float(np.abs(outputs["before"] - outputs["after"]).max())
    out["speedup"] = out["before"]["wall_ms_median"] / out["after"]["wall_ms_median"]
    return out


def onnxruntime_ab(onnx_file: Path, runs: int, threads: int) -> dict:
    """onnxruntime on the graph as exported before and after channel_split_transposes: wall times, difference."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from tiercel.export.rewrite import channel_split_transposes

    proto = onnx.load(str(onnx_file))
    rewritten = channel_split_transposes(proto)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sessions = {"before": ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"]),
                "after": ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])}
    pixels = np.random.default_rng(0).standard_normal((1, 3, 768, 768)).astype(np.float32)
    outputs = {k: s.run(None, {"pixel_values": pixels})[0] for k, s in sessions.items()}  # warm-up
    wall = _interleaved({k: lambda s=s: s.run(None, {"pixel_values": pixels}) for k, s in sessions.items()}, runs)
    med = {k: statistics.median(v) for k, v in wall.items()}
    return {"transposes_rewritten": rewritten, "wall_ms": wall, "wall_ms_median": med, "speedup": med["before"] / med["after"],
            "max_abs_difference": float(np.abs(outputs["before"] - outputs["after"]).max())}


def _counters(request, wall: list[float], precision: str) -> dict:
    """Per node type and per kernel, from the request's last call."""
    by_type, by_kernel, nodes = collections.Counter(), collections.Counter(), 0
    for info in request.profiling_info:
        ms = info.real_time.total_seconds() * 1e3
        if str(info.status).endswith("NOT_RUN") or ms == 0:
            continue
        nodes += 1
        by_type[info.node_type] += ms
        by_kernel[f"{info.node_type} / {info.exec_type}"] += ms
    total = sum(by_type.values())
    matmul = sum(v for k, v in by_type.items() if k in MATMUL_CLASS)
    return {"hint": precision, "wall_ms_median": statistics.median(wall), "wall_ms": wall, "profiled_ms": total,
            "nodes_run": nodes, "matmul_class_ms": matmul, "matmul_class_share": matmul / total,
            "by_node_type": {k: {"ms": v, "share": v / total} for k, v in by_type.most_common()},
            "by_kernel": {k: {"ms": v, "share": v / total} for k, v in by_kernel.most_common(25)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=HERE / "work" / "runtime_cpu" / "florence2-base" / "fp32")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "vision_ops_cpu.json")
    args = ap.parse_args()
    onnx_file = args.bundle / "vision_encoder.onnx"
    if not onnx_file.is_file():
        sys.exit(f"{onnx_file}: no vision encoder graph; run benchmarks/runtime_cpu.py first (it exports this bundle)")
    import openvino as ov

    result = {"commit": commit(), "command": " ".join(["python", *sys.argv]), "machine": machine(),
              "openvino": ov.get_version(), "bundle": str(args.bundle.relative_to(HERE.parent)), "threads": args.threads,
              "runs": args.runs, "precisions": {}}
    for precision in ("f32", "bf16"):
        both = result["precisions"][precision] = profile(onnx_file, precision, args.runs, args.threads)
        print(f"{precision}: Transposes rewritten {both['transposes_rewritten']}, max |difference| "
              f"{both['max_abs_difference']:.3g}, {both['speedup']:.2f}x", flush=True)
        for side in ("before", "after"):
            r = both[side]
            print(f" {side}: wall {r['wall_ms_median']:.0f} ms, profiled {r['profiled_ms']:.0f} ms, "
                  f"matmul-class {r['matmul_class_share']:.0%}", flush=True)
            for k, v in list(r["by_kernel"].items())[:8]:
                print(f"  {v['ms']:8.1f} ms {v['share']:6.1%}  {k}")
    result["onnxruntime"] = {}
    for name in ("fp32", "onnxruntime-int8"):
        graph = args.bundle.parent / name / "vision_encoder.onnx"
        if not graph.is_file():
            print(f"{graph}: missing, onnxruntime {name} skipped")
            continue
        r = result["onnxruntime"][name] = onnxruntime_ab(graph, args.runs, args.threads)
        print(f"onnxruntime {name}: {r['transposes_rewritten']} rewritten, before {r['wall_ms_median']['before']:.0f} ms, "
              f"after {r['wall_ms_median']['after']:.0f} ms ({r['speedup']:.2f}x), max |difference| {r['max_abs_difference']:.3g}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
