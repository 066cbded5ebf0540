"""ONNX graphs -> TensorRT engines with the tensorrt Python API (NVIDIA GPUs: Jetson Orin, desktop cards).

fp16 everywhere except normalisation and softmax layers, which are pinned to fp32: TensorRT fp16 drifts in
LayerNorm (FALCON.md), and the pins only hold with OBEY_PRECISION_CONSTRAINTS. INT8 comes from the explicit
Q/DQ nodes of a quantized graph: a graph with QuantizeLinear nodes gets the INT8 flag (explicit quantization:
TensorRT takes the scales from the Q/DQ nodes; no calibrator here). One optimisation profile per engine covers
batch 1..max_batch and the sequence axes up to the model's limits. tiercel.runtime.tensorrt runs the engines.

The planning (`profiles`, `fp32_layer_kinds`, `has_qdq`, `builder_flags`) is plain Python and tested on CPU;
engine building needs tensorrt and a GPU and was not run in tiercel's CPU test suite.
"""

from __future__ import annotations

from pathlib import Path

from tiercel.errors import BundleError, require
from tiercel.export.graphs import DECODER_FIRST, DECODER_MERGED, DECODER_PAST, EMBED, ENCODER, VISION, kv_names
from tiercel.progress import track

FP32_LAYER_KINDS = ("NORMALIZATION", "SOFTMAX", "REDUCE")  # LayerNorm (fused or decomposed) and softmax


def check_available():
    """Raise MissingDependency without tensorrt, BundleError without a CUDA GPU."""
    trt = require("tensorrt", "tensorrt", "building TensorRT engines")
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as err:  # TypeError/RuntimeError when CUDA cannot initialise
        raise BundleError(f"TensorRT cannot start ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                          "building engines needs an NVIDIA GPU with a working CUDA driver") from err
    if builder is None:
        raise BundleError("TensorRT cannot start; building engines needs an NVIDIA GPU with a working CUDA driver")
    return trt


def profiles(name: str, shape, max_batch: int = 4, max_prompt: int = 128, max_new_tokens: int | None = None) -> dict:
    """{input: (min, opt, max)} shapes of graph `name` for one TensorRT optimisation profile.

    `shape` is the model's ModelShape. The encoder sequence is image tokens + prompt; the decoder's past
    covers up to max_new_tokens (default: the model's text positions).
    """
    heads, d = shape.attention_heads, shape.d_model
    hd, layers = d // heads, shape.decoder_layers
    enc_min, enc_max = shape.image_tokens + 2, min(shape.image_tokens + max_prompt, shape.max_text_positions)
    enc_opt = min(shape.image_tokens + 32, enc_max)
    new = max_new_tokens or shape.max_text_positions
    opt_b = 1

    def triple(*dims_by_level):
        return tuple(tuple(level) for level in dims_by_level)

    bsd = lambda s: triple((1, s[0], d), (opt_b, s[1], d), (max_batch, s[2], d))  # noqa: E731
    mask = triple((1, enc_min), (opt_b, enc_opt), (max_batch, enc_max))
    enc_states = bsd((enc_min, enc_opt, enc_max))
    one_step = bsd((1, 1, 1))
    if name == VISION:
        s = shape.image_size
        return {"pixel_values": triple((1, 3, s, s), (opt_b, 3, s, s), (max_batch, 3, s, s))}
    if name == EMBED:
        return {"input_ids": triple((1, 1), (opt_b, enc_opt), (max_batch, enc_max))}
    if name == ENCODER:
        return {"inputs_embeds": enc_states, "attention_mask": mask}
    if name == DECODER_FIRST:
        return {"inputs_embeds": one_step, "encoder_attention_mask": mask, "encoder_hidden_states": enc_states}
    if name in (DECODER_PAST, DECODER_MERGED):
        out = {"inputs_embeds": one_step, "encoder_attention_mask": mask}
        past_min = 0 if name == DECODER_MERGED else 1
        for n in kv_names("past_key_values", layers):
            if ".encoder." in n:
                out[n] = triple((1, heads, enc_min if past_min else 0, hd), (opt_b, heads, enc_opt, hd), (max_batch, heads, enc_max, hd))
            else:
                out[n] = triple((1, heads, past_min, hd), (opt_b, heads, 32, hd), (max_batch, heads, new, hd))
        if name == DECODER_MERGED:
            out["encoder_hidden_states"] = enc_states
        return out
    raise BundleError(f"no TensorRT profile is defined for graph '{name}'")


def fp32_layer_kinds() -> tuple[str, ...]:
    """TensorRT LayerType names kept in fp32 inside an fp16 engine."""
    return FP32_LAYER_KINDS


def has_qdq(graph) -> bool:
    """Whether an ONNX graph (ModelProto or file) holds QuantizeLinear nodes, If branches included."""
    if not hasattr(graph, "graph"):
        graph = require("onnx", "onnx", "reading ONNX graphs").load(str(graph), load_external_data=False)
    todo = [graph.graph]
    while todo:
        g = todo.pop()
        for node in g.node:
            if node.op_type == "QuantizeLinear":
                return True
            todo += [a.g for a in node.attribute if a.HasField("g")] + [sub for a in node.attribute for sub in a.graphs]
    return False


def builder_flags(fp16: bool, int8: bool) -> list[str]:
    """TensorRT BuilderFlag names for an engine: FP16 (+ the fp32 pins' constraint flag), INT8 for Q/DQ graphs."""
    flags = ["FP16", "OBEY_PRECISION_CONSTRAINTS"] if fp16 else []
    return flags + (["INT8"] if int8 else [])


def engine_precision(fp16: bool, int8: bool) -> str:
    """The precision a manifest records for an engine built with these flags."""
    return "int8" if int8 else "fp16" if fp16 else "fp32"


def build_engine(onnx_file: Path, engine_file: Path, profile: dict, fp16: bool = True, workspace_gb: float = 2.0,
                 int8: bool | None = None) -> Path:
    """Parse `onnx_file`, pin norms/softmax to fp32, add `profile`, and serialise the engine.

    int8: build with INT8 enabled for explicit Q/DQ; None decides from the graph (`has_qdq`).
    """
    trt = check_available()
    int8 = has_qdq(onnx_file) if int8 is None else int8
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT >= 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"{onnx_file}: TensorRT cannot parse it ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for flag in builder_flags(fp16, int8):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if fp16:
        keep = {getattr(trt.LayerType, k) for k in FP32_LAYER_KINDS if hasattr(trt.LayerType, k)}
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type in keep:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise BundleError(f"{onnx_file}: TensorRT failed to build an engine (see the TensorRT log above)")
    engine_file.parent.mkdir(parents=True, exist_ok=True)
    engine_file.write_bytes(bytes(engine))
    return engine_file


def build_engines(root: Path, onnx_files: dict, shape, entry, fp16: bool = True) -> list[dict]:
    """Build one engine per ONNX graph under root/tensorrt; `entry(name, files, precision)` makes manifest rows."""
    check_available()
    rows = []
    with track("engines", len(onnx_files), "engines") as bar:
        for name, file in onnx_files.items():
            int8 = has_qdq(file)
            engine = build_engine(file, root / "tensorrt" / f"{name}.engine", profiles(name, shape), fp16=fp16, int8=int8)
            rows.append(entry(name, [engine], engine_precision(fp16, int8)))
            bar.advance(1, note=name)
    return rows
