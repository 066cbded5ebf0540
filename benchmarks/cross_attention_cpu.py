"""Decoder cross-attention at one decode step: the exported graph's attention against onnxruntime's fused
com.microsoft MultiHeadAttention, on the same K/V cache (issue #28 item 1: what a fused attention would gain).

The exported decoder (tiercel.export) attends from `batch = items x beams` rows to a per-item encoder cache
([items, heads, keys, head_dim]) through 5-D MatMuls that broadcast the beams over the cache
(benchmarks/results/shared_cross_kv_cpu.md). onnxruntime's transformer optimizer does not fuse that form
(decode_profile_quiet_cpu.md). MultiHeadAttention takes the cache as it is (BNSH key/value) when the beams of an
item are folded into its query sequence: cross-attention has no causal mask, so each query row attends alone and
the fold is exact.

Both graphs hold `layers` cross-attention blocks of the Florence-2-base shape (12 heads of 64, 597 keys: 577 image
tokens and a 20-token prompt), each with its own cache, chained through a residual add as a decoder chains them.
Each call reads one of `sets` distinct cache sets in turn, so the caches come from memory, not the last-level
cache, as in a decode step whose weights have flushed it. The query projections and everything else of the layer
are left out: both sides would run them alike. Shape arithmetic is constant-folded on both sides (the exported
graph computes its reshape targets at run time, so its real cost is a little higher than here).

Rounds are interleaved (the first path rotating), medians reported with the KV bytes each call reads and the
resulting GB/s, beside a memory-copy bandwidth measured in the same process.

    OMP_NUM_THREADS=1 python benchmarks/cross_attention_cpu.py --out benchmarks/results/cross_attention_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from image_use import commit  # noqa: E402
from runtime_cpu import machine  # noqa: E402

HEADS, HEAD_DIM = 12, 64
D = HEADS * HEAD_DIM


def exported(items: int, beams: int, keys: int, layers: int):
    """The exported form: q -> [items, beams, 1, H, Dh] -> [items, H, beams, Dh, 1]; K[:, :, None] @ q -> scores^T
    -> * scale + mask -> softmax -> @ V[:, :, None] -> back to [batch, 1, D]."""
    from onnx import TensorProto, helper, numpy_helper

    c = lambda name, value, dtype=np.int64: numpy_helper.from_array(np.asarray(value, dtype), name)  # noqa: E731
    inits = [c("qshape", [items, -1, 1, HEADS, HEAD_DIM]), c("ax2", [2]), c("ax1", [1]), c("back", [items * beams, 1, D]),
             c("scale", 1.0 / np.sqrt(HEAD_DIM), np.float32)]
    nodes = [helper.make_node("Unsqueeze", ["mask_bias", "ax1"], ["bias5"])]  # [items, 1, 1, 1, keys]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [items * beams, 1, D]),
              helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, [items, 1, 1, keys])]
    h = "x"
    for i in range(layers):
        k, v = f"k{i}", f"v{i}"
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [items, HEADS, keys, HEAD_DIM]) for n in (k, v)]
        nodes += [
            helper.make_node("Reshape", [h, "qshape"], [f"q{i}"]),
            helper.make_node("Transpose", [f"q{i}"], [f"qt{i}"], perm=[0, 3, 1, 4, 2]),
            helper.make_node("Unsqueeze", [k, "ax2"], [f"k5{i}"]),
            helper.make_node("MatMul", [f"k5{i}", f"qt{i}"], [f"st{i}"]),
            helper.make_node("Transpose", [f"st{i}"], [f"s{i}"], perm=[0, 1, 2, 4, 3]),
            helper.make_node("Mul", [f"s{i}", "scale"], [f"ss{i}"]),
            helper.make_node("Add", [f"ss{i}", "bias5"], [f"sb{i}"]),
            helper.make_node("Softmax", [f"sb{i}"], [f"p{i}"], axis=-1),
            helper.make_node("Unsqueeze", [v, "ax2"], [f"v5{i}"]),
            helper.make_node("MatMul", [f"p{i}", f"v5{i}"], [f"o{i}"]),
            helper.make_node("Transpose", [f"o{i}"], [f"ot{i}"], perm=[0, 2, 3, 1, 4]),
            helper.make_node("Reshape", [f"ot{i}", "back"], [f"a{i}"]),
            helper.make_node("Add", [h, f"a{i}"], [f"h{i}"]),
        ]
        h = f"h{i}"
    graph = helper.make_graph(nodes, "exported", inputs, [helper.make_tensor_value_info(h, TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def fused(items: int, beams: int, keys: int, layers: int):
    """com.microsoft MultiHeadAttention: q -> [items, beams, D] (beams folded into the query sequence), BNSH K/V,
    key_padding_mask [items, keys] int32 -> [batch, 1, D]."""
    from onnx import TensorProto, helper, numpy_helper

    c = lambda name, value: numpy_helper.from_array(np.asarray(value, np.int64), name)  # noqa: E731
    inits = [c("fold", [items, -1, D]), c("back", [items * beams, 1, D])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [items * beams, 1, D]),
              helper.make_tensor_value_info("mask", TensorProto.INT32, [items, keys])]
    nodes, h = [], "x"
    for i in range(layers):
        k, v = f"k{i}", f"v{i}"
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [items, HEADS, keys, HEAD_DIM]) for n in (k, v)]
        nodes += [
            helper.make_node("Reshape", [h, "fold"], [f"q{i}"]),
            helper.make_node("MultiHeadAttention", [f"q{i}", k, v, "", "mask"], [f"o{i}"], domain="com.microsoft",
                             num_heads=HEADS),
            helper.make_node("Reshape", [f"o{i}", "back"], [f"a{i}"]),
            helper.make_node("Add", [h, f"a{i}"], [f"h{i}"]),
        ]
        h = f"h{i}"
    graph = helper.make_graph(nodes, "fused", inputs, [helper.make_tensor_value_info(h, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def copy_bandwidth(mb: int = 256, repeats: int = 5) -> float:
    a = np.ones(mb << 18, np.float32)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(repeats))
    return 2 * a.nbytes / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1x1,1x3,14x1", help="items x beams per case, comma-separated")
    ap.add_argument("--keys", type=int, default=597)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--sets", type=int, default=4, help="distinct cache sets read in turn")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=40, help="calls per path per round")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 0)) or 1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    rng = np.random.default_rng(0)
    sha = commit()
    result = {"command": "python benchmarks/cross_attention_cpu.py " + " ".join(sys.argv[1:]), "commit": sha.removesuffix("-dirty"),
              "dirty": sha.endswith("-dirty"), "machine": machine(), "onnxruntime": ort.__version__,
              "threads": args.threads, "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "copy_gb_s_before": round(copy_bandwidth(), 1), "cases": {}}
    for case in args.rows.split(","):
        items, beams = map(int, case.split("x"))
        sessions = {name: ort.InferenceSession(build(items, beams, args.keys, args.layers).SerializeToString(), opts,
                                               providers=["CPUExecutionProvider"])
                    for name, build in (("exported", exported), ("fused", fused))}
        valid = np.ones((items, args.keys), np.int32)
        valid[:, args.keys - 5:] = 0  # a padded prompt: the last keys are masked
        feeds = []
        for _ in range(args.sets):
            cache = {f"{kv}{i}": rng.standard_normal((items, HEADS, args.keys, HEAD_DIM)).astype(np.float32)
                     for i in range(args.layers) for kv in "kv"}
            x = rng.standard_normal((items * beams, 1, D)).astype(np.float32)
            feeds.append({"exported": {"x": x, "mask_bias": ((1 - valid) * -3.4e38).astype(np.float32)[:, None, None, :],
                                       **cache},
                          "fused": {"x": x, "mask": valid, **cache}})
        outs = {name: sess.run(None, feeds[0][name])[0] for name, sess in sessions.items()}
        diff = float(np.abs(outs["exported"] - outs["fused"]).max())
        times = {name: [] for name in sessions}
        order = list(sessions)
        for r in range(args.rounds):
            for name in order[r % 2:] + order[: r % 2]:
                sess, t0 = sessions[name], time.perf_counter()
                for call in range(args.calls):
                    sess.run(None, feeds[call % args.sets][name])
                times[name].append((time.perf_counter() - t0) / args.calls * 1e3)
        kv_bytes = 2 * args.layers * items * HEADS * args.keys * HEAD_DIM * 4
        row = {"items": items, "beams": beams, "kv_bytes": kv_bytes, "max_abs_diff": diff}
        for name, ms in times.items():
            med = statistics.median(ms)
            row[name] = {"ms": round(med, 4), "ms_rounds": [round(t, 4) for t in ms], "gb_s": round(kv_bytes / med / 1e6, 1)}
        row["fused_vs_exported"] = round(row["exported"]["ms"] / row["fused"]["ms"], 3)
        result["cases"][case] = row
        print(json.dumps({case: {k: row[k] for k in ("exported", "fused", "fused_vs_exported", "max_abs_diff")}},
                         default=str), flush=True)
    result["copy_gb_s_after"] = round(copy_bandwidth(), 1)
    result["load_average"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
