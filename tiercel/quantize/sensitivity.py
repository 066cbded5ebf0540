"""Per-layer sensitivity: the error at a graph's output when ONLY that layer's weights are quantised.

For each weight layer (onnx_backend.weight_layers) the weight is replaced by its fake-quantised copy (int8
per output channel, or int4 / int8 blocks along the input dimension, as the leaf scheme stores it), the graph runs on
the recorded calibration feeds in onnxruntime, and the error is the relative L2 distance of the graph's first
output (image_features, last_hidden_state, logits) to fp32: ||y_q - y|| / ||y||, averaged over feeds.

This is the definition, not a proxy, for round-to-nearest weight-only schemes; where int4 is rounded by
GPTQ (gptq.py) every layer's error shrinks and the round-to-nearest error ranks them. For int8-static it leaves activation
quantisation out (weights only): a proxy we accept because per-tensor activation error is shared by all
layers alike while weight error is what differs between them, and because it needs no calibration pass per
layer. Relative errors are scale-free, so layers of different graphs are ranked on one list (the guard
excludes from the top). Each row carries a digest of its weight, so the guard can find the same layer in two
graphs (the first decoder step and the decoder with past hold the same weights) and keep it back in both.
Cost: one session per layer, each opened from the graph's file (external data too, so no 2 GB protobuf limit)
with only that weight swapped in (SessionOptions.add_initializer); `max_feeds` bounds it. Under int4 the layers
stored in int8 blocks (onnx_backend.int8_backup: the lm_head, the embedding table) are ranked at int8.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from tiercel.errors import require
from tiercel.quantize.onnx_backend import int8_backup, selected_layers
from tiercel.quantize.schemes import SchemeSpec


def fake_quantize(w: np.ndarray, op: str, spec: SchemeSpec) -> np.ndarray:
    """`w` rounded to the grid `spec` stores it on (dequantised back to float32)."""
    w = w.astype(np.float32)
    if spec.kind == "keep":
        return w
    if spec.kind == "weight-only" and spec.block_size and w.ndim == 2:  # blocks along the reduction axis
        k_axis = 1 if op == "Gather" else 0  # (K of a [K, N] MatMul, D of a [V, D] table)
        return _blockwise(w, k_axis, spec.block_size, spec.symmetric, spec.bits)
    axis = 0 if op in ("Conv", "Gather") else w.ndim - 1  # output channels (rows of a table)
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.abs(w).max(axis=reduce, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -128, 127) * scale


def _blockwise(w: np.ndarray, axis: int, block: int, symmetric: bool, bits: int = 4) -> np.ndarray:
    x = np.moveaxis(w, axis, 0)
    k = x.shape[0]
    pad = (-k) % block
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)]) if pad else x
    blocks = xp.reshape(-1, block, *x.shape[1:])
    if bits == 8:  # int8 blocks are symmetric: absmax / 127, as MatMulNBits / GatherBlockQuantized store them
        scale = np.abs(blocks).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round(blocks / scale), -127, 127) * scale
    elif symmetric:
        from tiercel.quantize.gptq import symmetric_scale

        scale = symmetric_scale(blocks, axis=1)  # gptq's grid: the peak on -8, all 16 levels used
        scale[scale == 0] = 1.0
        q = np.clip(np.round(blocks / scale), -8, 7) * scale
    else:
        lo, hi = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
        scale = (hi - lo) / 15.0
        scale[scale == 0] = 1.0
        zero = np.round(-lo / scale)
        q = (np.clip(np.round(blocks / scale) + zero, 0, 15) - zero) * scale
    return np.moveaxis(q.reshape(xp.shape)[:k], 0, axis)


def layer_sensitivity(onnx_file: str | Path, feeds: list[dict], spec: SchemeSpec, role: str = "",
                      max_feeds: int = 8, graph: str = "", target: str = "onnxruntime",
                      threads: int | None = None) -> list[dict]:
    """[{graph, node, op, weight, params, digest, error}] for every layer `spec` quantises, most sensitive first
    (`threads`: the sessions' intra-op threads on graphs of 64 MB or more; None: onnxruntime's default)."""
    onnx = require("onnx", "onnx", "measuring layer sensitivity")
    ort = require("onnxruntime", "onnx", "measuring layer sensitivity")
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_file), load_external_data=True)
    inputs = [i.name for i in proto.graph.input]
    feeds = [{k: f[k] for k in inputs} for f in feeds[:max_feeds]]
    out_name = proto.graph.output[0].name
    inits = {i.name: i for i in proto.graph.initializer}
    small = sum(i.ByteSize() for i in proto.graph.initializer) < 64 << 20

    def run(weight: str | None = None, value: np.ndarray | None = None) -> list[np.ndarray]:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # One session per layer: skip graph optimisation, and thread pools on small graphs (both cost more than the run).
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1 if small else (threads or 0)
        replaced = None
        if weight is not None:  # the session reads this one weight from `value` instead of the file
            replaced = ort.OrtValue.ortvalue_from_numpy(value)
            opts.add_initializer(weight, replaced)
        # from the file, not the proto: no 2 GB protobuf limit, and nothing re-serialised per layer
        sess = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        outs = [sess.run([out_name], f)[0] for f in feeds]
        del sess, replaced  # the OrtValue must outlive the session
        return outs

    reference = run()
    rows = []
    backup = set(int8_backup(proto, spec, role))  # int4 stores these in int8 blocks: ranked at what they are
    for layer in selected_layers(proto, spec, role, target):
        original = numpy_helper.to_array(inits[layer["weight"]])
        grid = replace(spec, bits=8, symmetric=True) if layer["node"] in backup else spec
        quantized = np.ascontiguousarray(fake_quantize(original, layer["op"], grid).astype(original.dtype))
        errors = [np.linalg.norm(q - r) / max(np.linalg.norm(r), 1e-12) for q, r in zip(run(layer["weight"], quantized), reference)]
        rows.append({"graph": graph or Path(onnx_file).stem, "node": layer["node"], "op": layer["op"],
                     "weight": layer["weight"], "params": int(np.prod(layer["shape"])), "digest": digest(original, layer["op"]),
                     "error": float(np.mean(errors))})
    return sorted(rows, key=lambda r: -r["error"])


def digest(w: np.ndarray, op: str) -> str:
    """A short hash of a weight's values, shape, dtype and op: equal for the same layer in two graphs."""
    h = hashlib.sha256(f"{op}:{w.dtype}:{w.shape}:".encode())
    h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def units(rows: list[dict]) -> list[list[dict]]:
    """`rows` (most sensitive first) grouped into layers: the rows of different graphs that hold the same weight
    (equal digest) are one layer, placed where its most sensitive row is. A graph's own rows never merge, even
    with equal weights (untrained layers can be equal; they are still separate layers)."""
    groups: dict[tuple, list[dict]] = {}
    seen: dict[tuple, int] = {}
    for r in rows:
        key = r.get("digest") or (r["graph"], r["node"])
        n = seen.get((r["graph"], key), 0)  # the n-th row of this graph with this weight joins the n-th group
        seen[(r["graph"], key)] = n + 1
        groups.setdefault((key, n), []).append(r)
    return list(groups.values())


def table(rows: list[dict], top: int = 20, title: str = "layer sensitivity"):
    """A rich Table of the `top` most sensitive layers."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("#", "graph", "node", "op", "params", "rel. error"):
        t.add_column(col, justify="right" if col in ("#", "params", "rel. error") else "left")
    for i, r in enumerate(rows[:top], 1):
        t.add_row(str(i), r["graph"], r["node"], r["op"], f"{r['params']:,}", f"{r['error']:.3g}")
    return t
