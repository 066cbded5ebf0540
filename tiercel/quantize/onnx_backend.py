"""Quantise one ONNX graph with onnxruntime.quantization, as a leaf scheme (schemes.py) says.

Only weight layers are touched: MatMul/Gemm/Conv whose weight is an initializer (attention's activation x
activation MatMuls stay fp32), and in the token-embedding graph the Gather table. `exclude` lists node names
the accuracy guard keeps in higher precision: fp32, or int8 blocks under int4-weight-only.

    int8-static       quantize_static, QDQ, per-channel symmetric int8 weights, uint8 activations (U8S8, the
                      x86 fast path) calibrated by MinMax on recorded feeds. Two choices made by measurement
                      (florence2-base vision encoder, 768 px, 2-core EPYC, medians of 5 alternating runs):
                      depthwise convolutions stay fp32 (onnxruntime's int8 depthwise kernel is slower than
                      its fp32 one: 1.38x -> 1.51x over fp32 for the whole encoder without them), and MatMul
                      outputs are left unquantised, so onnxruntime fuses DQ + MatMul into MatMulIntegerToFloat
                      instead of QLinearMatMul + DequantizeLinear (-> 1.56x). The other convolutions (DaViT's
                      patch embeddings) do get their output quantised: onnxruntime has no Conv counterpart of
                      MatMulIntegerToFloat, so an fp32 output left DQ -> Conv running in fp32, and Q -> Conv -> Q
                      becomes QLinearConv (benchmarks/results/int8_conv_cpu.md)
    int8-dynamic      quantize_dynamic, per-channel int8 MatMul weights (Conv stays fp32: ConvInteger is slower)
    int4-weight-only  MatMulNBits blocks of 32/64/128, accuracy_level 4 (int8 compute of activations); with
                      calibration feeds the MatMul weights are rounded by GPTQ on the recorded activations
                      where that beats round-to-nearest on held-out feeds (gptq.py), else round-to-nearest.
                      The lm_head and the embedding table are 8-bit blocks unless spec.all_layers (`int8_backup`:
                      NNCF's convention; the int4 lm_head cost the fidelity student most of its drop). Layers in
                      `exclude` become 8-bit blocks too, not fp32, until the guard's last retry asks for fp32
    int8-weight-only  MatMulNBits 8-bit blocks of 32/64/128 (default 128), accuracy_level 4, round-to-nearest: the
                      same kernel family as int4, which streams int8 weights at one row faster than onnxruntime's
                      MatMulIntegerToFloat / DynamicQuantizeMatMul (Florence-2-base decoder step at one row on a
                      2-core EPYC: 1.29x faster than int8-dynamic, 1.21x slower at 14 rows:
                      benchmarks/results/decode_profile_int8wo_cpu.md). Activations are quantised per row and block, so a
                      call with several tokens gives each the logits it gets alone (jump-forward stays on).
                      Excluded layers stay fp32; convolutions are not touched
    embeddings        int8: Gather on an int8 table + DequantizeLinear; int4: GatherBlockQuantized with the
                      same blocks along d_model that the lm_head MatMulNBits uses, so the tied matrix gets one grid

target "tensorrt" writes the explicit Q/DQ form TensorRT builds INT8 engines from: int8 symmetric activations
AND weights (zero points 0), per-channel weights, one Q/DQ pair per consumer; embeddings stay fp32 there.
Knows nothing about bundles or manifests (bundle.py).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from tiercel.errors import require
from tiercel.quantize.gptq import TWO_GB as _TWO_GB
from tiercel.quantize.schemes import SchemeSpec

WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
FLOAT_OUTPUT_OPS = ("MatMul", "Gemm")  # int8-static for onnxruntime: these keep fp32 outputs (docstring)
ACCURACY_LEVEL = 4  # MatMulNBits: int8 compute of activations (fastest on AVX2/AVX512-VNNI CPUs)


def weight_layers(proto, role: str = "") -> list[dict]:
    """Quantisable layers of `proto`: {node, op, weight, shape} for weight MatMul/Gemm/Conv (and, for the
    embeddings role, the Gather whose table is an initializer)."""
    inits = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    out = []
    for node in proto.graph.node:
        slot = 0 if node.op_type == "Gather" else 1
        if node.op_type == "Gather" and role != "embeddings":
            continue
        if node.op_type not in (*WEIGHT_OPS, "Gather") or len(node.input) <= slot:
            continue
        shape = inits.get(node.input[slot])
        if shape is not None and len(shape) >= 2:
            out.append({"node": node.name, "op": node.op_type, "weight": node.input[slot], "shape": list(shape)})
    return out


def selected_layers(proto, spec: SchemeSpec, role: str = "", target: str = "onnxruntime") -> list[dict]:
    """The weight layers `spec` quantises in `proto` (before the guard's exclusions)."""
    layers = weight_layers(proto, role)
    if spec.kind == "keep" or (target == "tensorrt" and role == "embeddings"):
        return []
    if spec.kind == "weight-only" and role != "embeddings":
        return [x for x in layers if x["op"] == "MatMul"]
    if spec.kind == "dynamic":
        return [x for x in layers if x["op"] != "Conv"]
    if target == "onnxruntime":  # depthwise convs: onnxruntime's int8 kernel is slower than fp32 (docstring)
        return [x for x in layers if not is_depthwise(x)]
    return layers


def int8_backup(proto, spec: SchemeSpec, role: str = "") -> list[str]:
    """The layers an int4-weight-only graph stores in int8 blocks unless `spec.all_layers`: the token-embedding
    table (the embeddings graph's Gathers) and the lm_head (the weight MatMul that writes the `logits` output,
    through Add / Identity / Reshape / Cast at most). Other schemes: none."""
    if not spec.int4 or spec.all_layers:
        return []
    if role == "embeddings":
        return [x["node"] for x in weight_layers(proto, role) if x["op"] == "Gather"]
    writer = {o: n for n in proto.graph.node for o in n.output}
    weights = {x["node"] for x in weight_layers(proto, role) if x["op"] == "MatMul"}
    out = []
    for output in proto.graph.output:
        if output.name != "logits":
            continue
        node = writer.get(output.name)
        while node is not None and node.name not in weights and node.op_type in ("Add", "Identity", "Reshape", "Cast"):
            node = writer.get(node.input[0])
        if node is not None and node.name in weights:
            out.append(node.name)
    return out


def is_depthwise(layer: dict) -> bool:
    """A Conv whose every output channel reads one input channel (weight [C_out, 1, kh, kw], C_out > 1)."""
    return layer["op"] == "Conv" and len(layer["shape"]) == 4 and layer["shape"][1] == 1 and layer["shape"][0] > 1


def own_vectors(proto) -> int:
    """Give every consumer of a shared 1-D initializer its own copy; returns how many Identity nodes went.

    The ONNX exporter stores equal tensors once and reads the others through Identity nodes; in a model with
    untrained biases (all zeros) dozens of convolutions share one bias that way. Quantizing the conv that owns it
    puts a DequantizeLinear in front of every other one's bias, and onnxruntime then no longer sees their biases
    as constants: the fp32 depthwise convolutions lost their NCHWc kernels (benchmarks/results/int8_conv_cpu.md).
    Vectors are small (biases, norms); shared matrices (tied embeddings) stay shared."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    keep, copies = [], []
    for node in proto.graph.node:
        src = inits.get(node.input[0]) if node.op_type == "Identity" and node.input else None
        if src is not None and len(src.dims) == 1 and node.output[0] not in outputs:
            copies.append(numpy_helper.from_array(numpy_helper.to_array(src), node.output[0]))
        else:
            keep.append(node)
    if copies:
        del proto.graph.node[:]
        proto.graph.node.extend(keep)
        proto.graph.initializer.extend(copies)
    return len(copies)


class _Reader:
    """onnxruntime CalibrationDataReader over recorded feeds (only the graph's own inputs)."""

    def __init__(self, feeds: list[dict], names: list[str]):
        self._it = iter([{k: f[k] for k in names} for f in feeds])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # some calibrators call it
        pass


def _quiet():
    for name in ("root", "onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization"):
        logging.getLogger(name).setLevel(logging.ERROR)


def quantize_graph(src: Path, dst: Path, spec: SchemeSpec, role: str = "", feeds: list[dict] | None = None,
                   exclude=(), target: str = "onnxruntime", keep_in: str = "int8", cache: dict | None = None,
                   threads: int | None = None) -> dict:
    """Write `src` quantised by `spec` to `dst`.

    keep_in: what the excluded layers of an int4-weight-only graph become, "int8" blocks or "fp32" (other
    schemes: always fp32); the int8_backup layers not excluded are int8 blocks either way. cache: a dict kept
    across calls for the same graph and feeds (the guard's retries): each layer GPTQ rounds is rounded once into
    it. threads: GPTQ's activation session's intra-op threads (None: onnxruntime's default). Returns
    {"quantized": [node names], "excluded": [...], "kept_in": ..., "int8_layers": [int4's int8_backup, when any],
    ...}.
    """
    onnx = require("onnx", "onnx", "quantizing ONNX graphs")
    require("onnxruntime", "onnx", "quantizing ONNX graphs")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    _quiet()
    proto = onnx.load(str(src), load_external_data=True)
    own_vectors(proto)
    layers = selected_layers(proto, spec, role, target)
    backup = [n for n in int8_backup(proto, spec, role) if n not in set(exclude)]  # int4: int8 blocks (docstring)
    chosen = [x["node"] for x in layers if x["node"] not in set(exclude) | set(backup)]
    report = {"quantized": chosen, "excluded": sorted(set(exclude) & {x["node"] for x in layers}),
              "kept_in": keep_in if spec.int4 else "fp32"}
    if backup:
        report["int8_layers"] = backup
    higher = backup + (report["excluded"] if report["kept_in"] == "int8" else [])
    big = sum(t.ByteSize() for t in proto.graph.initializer) > _TWO_GB
    if spec.kind == "keep" or not (chosen or higher):
        shutil.copyfile(src, dst)
        return report
    if role == "embeddings" and spec.bits == 8:
        quantize_dynamic(proto, str(dst), op_types_to_quantize=["Gather"], nodes_to_quantize=chosen,
                         weight_type=QuantType.QInt8, use_external_data_format=big)
    elif spec.kind == "weight-only" and spec.bits == 8:
        onnx.save_model(_nbits(proto, 8, spec, chosen, role), str(dst), save_as_external_data=big,
                        location=f"{dst.name}.data")
    elif spec.kind == "weight-only":
        rounding = _int4(proto, dst, spec, chosen, role, big, feeds, higher, {} if cache is None else cache, threads)
        if rounding:
            report["rounding"] = rounding
    elif spec.kind == "dynamic":
        quantize_dynamic(proto, str(dst), op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=chosen,
                         per_channel=True, weight_type=QuantType.QInt8, use_external_data_format=big)
    elif spec.kind == "static":
        if not feeds:
            raise ValueError(f"{src.name}: int8-static needs calibration feeds")
        trt = target == "tensorrt"
        extra = {"ActivationSymmetric": trt, "WeightSymmetric": True, "DedicatedQDQPair": trt,
                 "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}  # MinMax keeps reduced scalars only
        if not trt:  # fp32 outputs: DQ + MatMul fuse into MatMulIntegerToFloat (docstring)
            extra["OpTypesToExcludeOutputQuantization"] = list(FLOAT_OUTPUT_OPS)
        quantize_static(proto, str(dst), _Reader(feeds, [i.name for i in proto.graph.input]),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(WEIGHT_OPS), nodes_to_quantize=chosen,
                        per_channel=True, activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, use_external_data_format=big, extra_options=extra)
    else:
        raise ValueError(f"scheme kind {spec.kind!r} is not a leaf")
    return report


def _int4(proto, dst: Path, spec: SchemeSpec, chosen: list[str], role: str, big: bool, feeds=None,
          higher=(), cache=None, threads: int | None = None) -> list[dict]:
    """int4 blocks for `chosen`, int8 blocks of the same size for `higher` (the layers the guard keeps back).

    MatMuls: GPTQ when there are feeds (gptq.py), else onnxruntime's round-to-nearest quantizer. The embedding
    table is always round-to-nearest (a Gather has no activations to weigh by). Returns gptq's report rows.
    """
    rows, rest = [], list(chosen)
    if feeds and role != "embeddings":
        from tiercel.quantize.gptq import hessians, quantize_matmuls, round_layers

        dims = {i.name: len(i.dims) for i in proto.graph.initializer}
        layers = set(chosen)
        weight = {n.name: n.input[1] for n in proto.graph.node if n.name in layers}
        flat = [n for n in chosen if dims.get(weight[n]) == 2]  # [1, K, N]: onnxruntime's quantizer squeezes
        rest = [n for n in chosen if dims.get(weight[n]) != 2]
        rounded = cache.setdefault("rounded", {})  # the guard's retries keep a subset of the first attempt's layers
        missing = [n for n in flat if n not in rounded]  # in int4: each is rounded once, and the Hessians dropped
        if missing:
            rounded.update(round_layers(proto, missing, hessians(proto, feeds, missing, threads), spec.block_size,
                                        spec.symmetric))
        rows = quantize_matmuls(proto, flat, rounded, spec.block_size, spec.symmetric, ACCURACY_LEVEL) if flat else []
    if rest:
        proto = _nbits(proto, 4, spec, rest, role)
    if higher and role == "embeddings":
        _int8_table(proto, higher, spec.block_size)
    elif higher:
        proto = _nbits(proto, 8, spec, higher, role)
    onnx = require("onnx", "onnx", "quantizing ONNX graphs")
    onnx.save_model(proto, str(dst), save_as_external_data=big, location=f"{dst.name}.data")
    return rows


def _int8_table(proto, nodes, block: int) -> None:
    """Gathers in `nodes` -> GatherBlockQuantized over int8 blocks of `block` along d_model, in place.

    Written here because onnxruntime's quantizer writes GatherBlockQuantized in 4 bits only; the op itself takes
    bits=8 (uint8 data, per-block scales, zero point 128: symmetric absmax / 127 per block of each row).
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    for i, node in enumerate(proto.graph.node):
        if node.name not in nodes:
            continue
        table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        rows, d = table.shape
        pad = (-d) % block
        blocks = np.pad(table, ((0, 0), (0, pad))).reshape(rows, -1, block)
        scales = np.abs(blocks).max(axis=2) / 127.0
        scales[scales == 0] = 1.0
        q = (np.clip(np.round(blocks / scales[..., None]), -127, 127) + 128).astype(np.uint8).reshape(rows, -1)[:, :d]
        names = [f"{node.input[0]}_Q8", f"{node.input[0]}_scales", f"{node.input[0]}_zp"]
        proto.graph.initializer.remove(inits[node.input[0]])
        proto.graph.initializer.extend(numpy_helper.from_array(a, n) for a, n in
                                       zip((q, scales.astype(np.float32), np.full(scales.shape, 128, np.uint8)), names))
        proto.graph.node[i].CopyFrom(helper.make_node(
            "GatherBlockQuantized", [names[0], node.input[1], *names[1:]], list(node.output), name=f"{node.name}_Q8",
            domain="com.microsoft", bits=8, block_size=block, gather_axis=0, quantize_axis=1))
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _nbits(proto, bits: int, spec: SchemeSpec, nodes, role: str):
    """`proto` with `nodes` rounded to nearest in `bits`-bit blocks (MatMulNBits / GatherBlockQuantized)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    all_nodes = {n.name for n in proto.graph.node}
    kwargs = {"op_types_to_quantize": ("Gather",), "quant_axes": (("Gather", 1),)} if role == "embeddings" else {}
    symmetric = spec.symmetric or bits == 8  # int8 blocks: always symmetric (255 levels; no zero points to store)
    q = MatMulNBitsQuantizer(proto, bits=bits, block_size=spec.block_size, is_symmetric=symmetric,
                             accuracy_level=ACCURACY_LEVEL, nodes_to_exclude=sorted(all_nodes - set(nodes)), **kwargs)
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero blocks give 0/0 scales, which ORT maps to 0
        q.process()
    return q.model.model


def graph_files(file: Path) -> list[Path]:
    """`file` plus its external data file when it has one."""
    data = file.parent / f"{file.name}.data"
    return [file, data] if data.is_file() else [file]
