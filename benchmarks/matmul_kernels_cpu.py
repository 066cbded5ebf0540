"""The decoder's weight MatMuls alone, per onnxruntime kernel, at 1 and 14 rows: which kernel streams its weights
at memory speed, and which stays fast when 14 rows share them.

    OMP_NUM_THREADS=1 python benchmarks/matmul_kernels_cpu.py [--rounds 8] [--rows 1,14]
    -> benchmarks/results/matmul_kernels_cpu.json

Issue 28 item 1: a decode step reads each weight once per step, so at one row a weight MatMul is a matrix-vector
product bound by bytes; at the 14 rows of `run_all` the same bytes feed 14 products. decode_profile_cpu.md found
int8's MatMulIntegerToFloat / DynamicQuantizeMatMul streaming at two thirds of copy speed at one row, and
MatMulNBits 8-bit (int8-weight-only) at copy speed there but slower at 14 rows. This script times the kernels
alone, at the Florence-2-base decoder's shapes with random weights:

- lm_head: [rows, 768] x [768, 51290];
- ffn: 6 layers of [rows, 768] x [768, 3072] then [rows, 3072] x [3072, 768], each layer its own weights
  (113 MB in fp32, 28 MB in int8: more than this CPU's L3 in fp32; the int8 set is cycled over 4 copies so that
  each call reads memory, not cache);
- cross_k: one layer's cross-attention scores, q [rows, 12, 1, 64] x the cached K [rows, 12, 64, 597], with K in
  fp32 (as exported), fp16 (q too) or fp16 cast to fp32 in the graph: whether a half-size KV cache pays on this
  backend (decode_profile_cpu.md's next step 2). Distinct caches are cycled so that each call reads memory.

Kernels (onnxruntime's own quantizers on the fp32 graph, as tiercel.quantize uses them):
fp32 MatMul; int8 per-channel quantize_dynamic (DynamicQuantizeMatMul once the session fuses it); MatMulNBits
8-bit blocks of 128 and 4-bit blocks of 32 at accuracy_level 1 (fp32 compute: blocks dequantized) and 4 (int8
compute: rows quantized per block), symmetric, as tiercel's schemes write them.

One thread by default (`--threads`: onnxruntime intra-op threads), all sessions open, rounds interleaved with the first kernel rotating each round; per
round the median of `--calls` calls; medians over rounds. GB/s = bytes of the weights (and scales) one call reads
/ its time, against the read bandwidth measured in every round (`vs_read`: 1.0 streams at the best read rate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from image_use import commit  # noqa: E402
from runtime_cpu import machine  # noqa: E402

D, FFN, VOCAB, LAYERS = 768, 3072, 51290, 6
HEADS, HEAD_DIM, ENC = 12, 64, 597  # cross-attention: 577 image + 20 prompt tokens


def graph(kind: str, seed: int):
    """fp32 ONNX model of the shape `kind`, weights drawn from `seed`."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    shapes = [(D, VOCAB)] if kind == "lm_head" else [(D, FFN), (FFN, D)] * LAYERS
    for i, (k, n) in enumerate(shapes):
        inits.append(numpy_helper.from_array((rng.standard_normal((k, n), np.float32) / np.sqrt(k)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"], name=f"mm{i}"))
        x = f"y{i}"
    g = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", D])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["rows", shapes[-1][1]])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def quantized(proto, kernel: str):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if kernel == "fp32":
        return proto
    if kernel == "int8-dynamic":
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "a.onnx", Path(tmp) / "b.onnx"
            onnx.save(proto, src)
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=QuantType.QInt8)
            return onnx.load(dst)
    bits, block, level = {"nbits8-acc1": (8, 128, 1), "nbits8-acc4": (8, 128, 4),
                          "nbits4-acc1": (4, 32, 1), "nbits4-acc4": (4, 32, 4)}[kernel]
    q = MatMulNBitsQuantizer(onnx.ModelProto.FromString(proto.SerializeToString()), bits=bits, block_size=block,
                             is_symmetric=True, accuracy_level=level)
    q.process()
    return q.model.model


def weight_bytes(proto) -> int:
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)


_BUFFERS = []


def bandwidth() -> tuple[float, float]:
    """One-thread GB/s over 256 MiB: a numpy copy (read + write counted; its buffers made and written once) and a
    read, as tiercel.runtime.profile.roofline.measure_bandwidth measures it (one pass of each kind, the faster)."""
    from tiercel.runtime.profile.roofline import measure_bandwidth

    if not _BUFFERS:
        _BUFFERS.extend((np.ones(256 << 20 >> 2, np.float32), np.ones(256 << 20 >> 2, np.float32)))
    a, b = _BUFFERS
    t0 = time.perf_counter()
    np.copyto(b, a)
    copy = 2 * a.nbytes / (time.perf_counter() - t0) / 1e9
    return copy, measure_bandwidth(megabytes=256, repeats=1, threads=1) / 1e9


def cross_session(ort, opts, kernel: str):
    """The cross-attention score product of one decoder layer, q [rows, 12, 1, 64] x K [rows, 12, 64, 597], with
    the cached K in fp32 (as exported), in fp16 (q too), or in fp16 cast to fp32 inside the graph."""
    from onnx import TensorProto, helper

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    q_type, k_type = {"fp32": (f32, f32), "fp16": (f16, f16), "fp16-cast": (f32, f16)}[kernel]
    nodes = [helper.make_node("Cast", ["k"], ["k32"], to=f32)] if kernel == "fp16-cast" else []
    nodes.append(helper.make_node("MatMul", ["q", "k32" if kernel == "fp16-cast" else "k"], ["scores"]))
    g = helper.make_graph(nodes, "cross_k", [helper.make_tensor_value_info("q", q_type, ["rows", HEADS, 1, HEAD_DIM]),
                                             helper.make_tensor_value_info("k", k_type, ["rows", HEADS, HEAD_DIM, ENC])],
                          [helper.make_tensor_value_info("scores", q_type, ["rows", HEADS, 1, ENC])])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main() -> int:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=9)
    ap.add_argument("--rows", default="1,14")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--shapes", default="lm_head,ffn,cross_k")
    ap.add_argument("--kernels", default="fp32,int8-dynamic,nbits8-acc1,nbits8-acc4,nbits4-acc1,nbits4-acc4",
                    help="for lm_head and ffn; cross_k times fp32, fp16 and fp16-cast")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "matmul_kernels_cpu.json")
    args = ap.parse_args()
    rows, kernels, shapes = [int(r) for r in args.rows.split(",")], args.kernels.split(","), args.shapes.split(",")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.log_severity_level = 3
    rng = np.random.default_rng(1)
    x = {r: rng.standard_normal((r, D), np.float32) for r in rows}

    cases = {}  # (shape, kernel) -> (run(rows, call), bytes(rows), ops)
    for shape in [s for s in shapes if s != "cross_k"]:
        for kernel in kernels:
            copies = 1 if kernel == "fp32" else 4  # int8/int4 sets: 4 models so that a call reads memory, not cache
            protos = [quantized(graph(shape, seed), kernel) for seed in range(copies)]
            ss = [ort.InferenceSession(p.SerializeToString(), opts, providers=["CPUExecutionProvider"]) for p in protos]
            size = weight_bytes(protos[0])
            cases[(shape, kernel)] = (lambda r, i, ss=ss: ss[i % len(ss)].run(None, {"x": x[r]}),
                                      lambda r, size=size: size, sorted({n.op_type for n in protos[0].graph.node}))
            print(f"{shape} {kernel}: {size / 1e6:.1f} MB a call, {cases[(shape, kernel)][2]}", flush=True)
    if "cross_k" in shapes:  # enough distinct caches per row count that a call reads memory (> 100 MB in fp32)
        ks = {r: [rng.standard_normal((r, HEADS, HEAD_DIM, ENC), np.float32) for _ in range(max(4, 64 // r))]
              for r in rows}
        qs = {r: rng.standard_normal((r, HEADS, 1, HEAD_DIM), np.float32) for r in rows}
        for kernel in ("fp32", "fp16", "fp16-cast"):
            half = kernel != "fp32"
            kk = {r: [k.astype(np.float16) for k in v] if half else v for r, v in ks.items()}
            qq = {r: v.astype(np.float16) if kernel == "fp16" else v for r, v in qs.items()}
            sess = cross_session(ort, opts, kernel)
            cases[("cross_k", kernel)] = (lambda r, i, s=sess, kk=kk, qq=qq: s.run(None, {"q": qq[r], "k": kk[r][i % len(kk[r])]}),
                                          lambda r, kk=kk: kk[r][0].nbytes, ["Cast", "MatMul"] if kernel == "fp16-cast" else ["MatMul"])

    times = {(sh, k, r): [] for (sh, k) in cases for r in rows}
    copies_gbps, reads_gbps = [], []
    keys = list(cases)
    for rnd in range(args.rounds):
        copy, read = bandwidth()
        copies_gbps.append(copy)
        reads_gbps.append(read)
        for key in keys[rnd % len(keys):] + keys[:rnd % len(keys)]:
            run = cases[key][0]
            for r in rows:
                per = []
                for call in range(args.calls + 1):
                    t0 = time.perf_counter()
                    run(r, call)
                    per.append(time.perf_counter() - t0)
                times[(*key, r)].append(statistics.median(per[1:]))
        print(f"round {rnd + 1}/{args.rounds}: copy {copy:.1f} GB/s, read {read:.1f} GB/s", flush=True)

    bw, read_bw = statistics.median(copies_gbps), statistics.median(reads_gbps)
    results = {}
    for (shape, kernel, r), ts in times.items():
        ms = 1e3 * statistics.median(ts)
        b = cases[(shape, kernel)][1](r)
        results.setdefault(shape, {}).setdefault(kernel, {"ops": cases[(shape, kernel)][2]})
        results[shape][kernel][f"rows_{r}"] = {"ms": ms, "mb_per_call": b / 1e6, "gbps": b / (ms / 1e3) / 1e9,
                                               "vs_read": (b / read_bw / 1e6) / ms, "ms_rounds": [1e3 * t for t in ts]}
    for shape in results:
        print(f"\n{shape}: ms (GB/s)   read {read_bw:.1f} GB/s, copy {bw:.1f} GB/s counted both ways")
        for kernel, v in results[shape].items():
            print(f"  {kernel:14s} " + "  ".join(f"{r} rows {v[f'rows_{r}']['mb_per_call']:6.1f} MB {v[f'rows_{r}']['ms']:7.2f} ms "
                                                 f"({v[f'rows_{r}']['gbps']:5.1f})" for r in rows))
    out = {"command": " ".join(["python", *sys.argv]), "commit": commit(), "machine": machine(), "copy_gbps": bw,
           "read_gbps": read_bw, "copy_gbps_rounds": copies_gbps, "read_gbps_rounds": reads_gbps,
           "onnxruntime": ort.__version__, "rounds": args.rounds, "calls": args.calls, "rows": rows,
           "threads": args.threads, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
