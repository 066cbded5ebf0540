"""Quantise one OpenVINO IR graph with NNCF, as a leaf scheme (schemes.py) says.

    int8-static       nncf.quantize: int8 weights and activations, ranges from the recorded feeds,
                      ModelType.TRANSFORMER (keeps LayerNorm/Softmax paths in float); NNCF's own calibration
                      (SmoothQuant, its activation ranges) and `minmax` are candidates, the one with the smaller
                      output error on held-out feeds is calibrated again on every feed (`choose_calibration`)
    int8-dynamic      nncf.compress_weights INT8 (weights only; the OpenVINO CPU plugin quantises
                      activations dynamically at run time)
    int8-weight-only  the same as int8-dynamic here (NNCF's INT8 weight compression is per channel; the block
                      size is onnxruntime's)
    int4-weight-only  nncf.compress_weights INT4_SYM/ASYM with group size = block size and `ratio` of layers
                      in int4 (the rest int8); with calibration feeds, AWQ and scale estimation are candidates
                      beside data-free compression, and the one with the smallest output error on held-out feeds
                      is kept (`DATA_AWARE`, `choose_compression`)
    embeddings        int8 weight compression (the Gather table), int4 with spec.all_layers; NNCF keeps
                      embeddings and the last layer (the tied lm_head) in int8 under INT4 modes unless
                      all_layers is set (passed through from spec.all_layers)

`exclude` holds ONNX node names. The ONNX frontend keeps them as OpenVINO friendly names, except for a node
whose output is a graph output: that op takes the output's name (the lm_head MatMul becomes `logits`), which
`ir_names` finds through the ONNX graph beside the IR. The names found make an IgnoredScope; a name found in
neither way (fused away) is reported as `unmatched`, not counted as kept. Knows nothing about bundles (bundle.py).

Why int4's data-aware steps are checked rather than trusted: with NNCF 3.4 and OpenVINO 2026.4, scale estimation
made the graphs far worse than data-free compression (relative output error on held-out feeds: the demo
student's vision encoder 0.25 against 0.0015, text encoder 0.62 against 0.0094, decoder with past 0.72 against
0.0076; the Florence-2-base-shape text encoder, random weights and inputs, 1.37 against 0.10), and
`tiercel quantize --backend openvino --scheme int4-weight-only --calib ...` on the demo student fell to token
agreement 0.13 while the data-free bundle kept 0.79. AWQ alone matched data-free exactly there. So each
data-aware variant is fitted on the first half of the feeds and compared with data-free compression on the second
half (halves, as in gptq.py: a sample's decode steps are alike), the same check GPTQ's layers get on onnxruntime.

The cause, found afterwards: scale estimation mis-handles MatMul weights stored [K, N] (transpose_b false, as the
ONNX export writes nn.Linear). On one 256 x 128 MatMul with random weights and inputs (throwaway script), its
relative error was 60577 with the [K, N] constant and 0.092 with the same weight stored [N, K] (data-free: 0.087
either way; the bug shows once a layer has about 128 outputs or more). So every int4 graph's MatMul weights are
turned to [N, K] first (`weights_n_major`: the same product; data-free int4 gives identical logits either way, and
a throwaway timing of the Florence-2-base-shape int4 decoder found no consistent speed difference). With that, on
the demo student's held-out feeds (the manifest of `tiercel quantize ... --backend openvino --calib`), AWQ + scale
estimation beat data-free on three graphs (vision encoder 0.00136 against 0.00148, text encoder 0.0070 against
0.0094, first decoder step 0.0084 against 0.0241) and lost on the decoder with past (0.0095 against 0.0076), which
kept data-free. The candidate check stays for exactly that reason.

int8-static broke every decoder with past, for a reason outside NNCF: the export writes the self-attention mask
as Convert(Greater(positions, past length)) * min, added to the scores. Once a graph holds a FakeQuantize, the CPU
plugin's low-precision passes take that Convert(bool) + Multiply for an int8 dequantisation and run the Add of
mask and scores in u8 (its runtime graph says so), only with dynamic shapes (reshaped to one static shape, the same
graph was exact). The scores are cut to u8 and the attention over past positions goes wrong: one FakeQuantize
anywhere in the demo student's decoder with past, even on an input the output barely depends on, took its logits'
relative error from 1e-7 to 0.14, and `tiercel quantize ... --backend openvino --scheme int8-static` fell to token
agreement 0.14 (the first decoder step, one position, was immune). `booleans_as_select` writes those Converts as
Select(b, 1, 0) first, which no pass takes for a dequantisation: with it, that one FakeQuantize costs 5e-5.

With the mask fixed, NNCF's transformer calibration still cost the decoder with past a held-out error of 0.27
(SmoothQuant, alpha 0.95 on MatMuls, did most of it: 0.037 without), where min/max activation ranges without
SmoothQuant gave 0.027, about onnxruntime's int8-static on the same feeds (0.028). On the demo student's other
graphs the two were within 1.3x of each other (vision encoder 0.0021 / 0.0017, text encoder 0.0010 / 0.0008). So
both are tried on half the feeds, like int4's candidates, and the winner is calibrated again on every feed (min/max
ranges from 4 decode steps: held-out error 0.011, from 8: 0.008, on the demo student's decoder with past).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tiercel.errors import require
from tiercel.quantize.schemes import SchemeSpec


def quantize_ir(src: Path, dst: Path, spec: SchemeSpec, role: str = "", feeds: list[dict] | None = None,
                exclude=(), ratio: float = 1.0, onnx_file: Path | None = None, cache: dict | None = None) -> dict:
    """Write the IR `src` (.xml) quantised by `spec` to `dst` (.xml + .bin). `exclude`: ONNX node names to keep in
    fp32, resolved through `onnx_file` (the graph the IR was converted from) where the IR renamed them; `cache` (a
    dict kept across calls for the same graph: the guard's retries) keeps what was read of that file. Returns a
    small report."""
    ov = require("openvino", "openvino", "quantizing OpenVINO IR")
    nncf = require("nncf", "openvino", "quantizing OpenVINO IR")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = ov.Core().read_model(str(src))
    found = ir_names(model, exclude, onnx_file, cache)
    ignored = nncf.IgnoredScope(names=sorted(set(found.values())), validate=False)
    report = {"tool": f"nncf {nncf.__version__}", "excluded": sorted(found), "kept_in": "fp32"}  # IgnoredScope
    if set(exclude) - set(found):
        report["unmatched"] = sorted(set(exclude) - set(found))
    names = [p.get_any_name() for p in model.inputs]
    if spec.kind == "keep":
        pass
    elif (role == "embeddings" and not (spec.int4 and spec.all_layers)) or spec.kind == "dynamic" or (
            spec.kind == "weight-only" and spec.bits == 8):
        mode = nncf.CompressWeightsMode.INT8_SYM if spec.symmetric else nncf.CompressWeightsMode.INT8_ASYM
        model = nncf.compress_weights(model, mode=mode, ignored_scope=ignored)
        report["mode"] = mode.value
    elif spec.kind == "static":
        if not feeds:
            raise ValueError(f"{src.name}: int8-static needs calibration feeds")

        def calibrate(fit: list[dict], minmax: bool = False):
            fresh = ov.Core().read_model(str(src))
            booleans_as_select(fresh)  # else the CPU plugin adds attention masks in u8 (module docstring)
            return nncf.quantize(fresh, nncf.Dataset([{k: f[k] for k in names if k in f} for f in fit]),
                                 model_type=nncf.ModelType.TRANSFORMER, subset_size=len(fit), ignored_scope=ignored,
                                 advanced_parameters=_minmax(nncf) if minmax else None)

        report["mode"] = "int8 (nncf.quantize, transformer)"
        if len(feeds) >= 2:
            model, choice = choose_calibration(model, calibrate, feeds)
            report.update(choice)
        else:
            model = calibrate(feeds)
            report["calibration"] = "nncf-default"
    elif spec.kind == "weight-only":
        mode = nncf.CompressWeightsMode.INT4_SYM if spec.symmetric else nncf.CompressWeightsMode.INT4_ASYM

        def compress(fit: list[dict] | None, awq: bool = False, scale_estimation: bool = False):
            data = nncf.Dataset([{k: f[k] for k in names if k in f} for f in fit]) if fit else None
            fresh = ov.Core().read_model(str(src))
            weights_n_major(fresh)  # scale estimation mis-handles [K, N] weights (module docstring)
            return nncf.compress_weights(
                fresh, mode=mode, group_size=spec.block_size, ratio=ratio,
                ignored_scope=ignored, dataset=data, subset_size=len(fit) if fit else 128, awq=awq or None,
                scale_estimation=scale_estimation or None, all_layers=spec.all_layers,
                advanced_parameters=nncf.AdvancedCompressionParameters(  # K % group: int8 backup
                    group_size_fallback_mode=nncf.GroupSizeFallbackMode.IGNORE))

        report.update(mode=mode.value, group_size=spec.block_size, ratio=ratio, awq=False, scale_estimation=False,
                      all_layers=spec.all_layers)
        if feeds and len(feeds) >= 2:
            model, choice = choose_compression(model, compress, feeds)
            report.update(choice)
        else:
            model = compress(None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return report


def ir_names(model, names, onnx_file: Path | None = None, cache: dict | None = None) -> dict[str, str]:
    """{ONNX node name: the friendly name of its op in `model`} for the `names` the IR holds. A name is kept as
    is, or (a node that wrote a graph output) found as the op that writes the node's output tensor. `cache` keeps
    the ONNX graph's node outputs, so the guard's retries read the file once."""
    friendly = {op.get_friendly_name() for op in model.get_ops()}
    found = {n: n for n in names if n in friendly}
    rest = [n for n in names if n not in found]
    if rest and onnx_file is not None:
        cache = {} if cache is None else cache
        if "onnx_outputs" not in cache:
            onnx = require("onnx", "onnx", "reading the ONNX graph an IR was converted from")
            proto = onnx.load(str(onnx_file), load_external_data=False)
            cache["onnx_outputs"] = {node.name: list(node.output) for node in proto.graph.node}
        outputs = cache["onnx_outputs"]
        writer = {}
        for op in model.get_ordered_ops():
            if op.get_type_name() not in ("Result", "Parameter"):
                for out in op.outputs():
                    writer.update({t: op.get_friendly_name() for t in out.get_names() if t not in writer})
        for n in rest:
            hit = next((writer[t] for t in outputs.get(n, ()) if t in writer), None)
            if hit is not None:
                found[n] = hit
    return found


def weights_n_major(model) -> int:
    """Turn every MatMul(x, W [K, N] constant) of `model` into MatMul(x, W^T [N, K], transpose_b=True), in place;
    the same product, names kept. Returns how many. NNCF 3.4's scale estimation mis-handles the [K, N] layout that
    the ONNX export writes (module docstring); [N, K] is the layout LLM exports have and the one it expects."""
    import openvino.opset13 as ops

    turned = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        weight = op.input_value(1).get_node()
        attrs = op.get_attributes()
        if weight.get_type_name() != "Constant" or attrs["transpose_b"] or len(weight.get_output_shape(0)) != 2:
            continue
        new = ops.matmul(op.input_value(0), ops.constant(np.ascontiguousarray(weight.get_data().T)),
                         attrs["transpose_a"], True)
        _replace(op, new)
        turned += 1
    return turned


def booleans_as_select(model) -> int:
    """Turn every Convert(boolean -> T) of `model` into Select(b, 1, 0), in place; the same values, names kept.
    Returns how many. The exported attention masks are Convert(Greater(...)) * min: once a graph holds a
    FakeQuantize, the CPU plugin takes that Convert + Multiply for an int8 dequantisation and runs the Add of
    mask and scores in u8 (module docstring). Select is not a dequantisation pattern."""
    import openvino as ov
    import openvino.opset13 as ops

    turned = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Convert" or op.input_value(0).get_element_type() != ov.Type.boolean:
            continue
        dtype = op.get_output_element_type(0).to_dtype()
        new = ops.select(op.input_value(0), ops.constant(np.array(1, dtype)), ops.constant(np.array(0, dtype)))
        _replace(op, new)
        turned += 1
    return turned


def _replace(op, new) -> None:
    """Put `new` where `op` was: its readers, its friendly name and its output's tensor names."""
    new.set_friendly_name(op.get_friendly_name())
    names = op.output(0).get_names()
    op.output(0).replace(new.output(0))
    new.output(0).get_tensor().set_names(names)


DATA_AWARE = {"awq": {"awq": True}, "awq+scale_estimation": {"awq": True, "scale_estimation": True}}
MAX_CHECK_FEEDS = 32  # held-out feeds the candidates are scored on (evenly spaced over the second half)


def choose_compression(fp32_model, compress, feeds: list[dict]) -> tuple[object, dict]:
    """Data-free int4 and each `DATA_AWARE` variant (fitted on the first half of `feeds`), scored by the relative
    L2 error of the model's first output on the second half against fp32; returns the best model and a report
    {awq, scale_estimation, data_aware: {candidate: error}, chosen}."""
    candidates = {"data-free": lambda _fit: compress(None),
                  **{name: (lambda fit, flags=flags: compress(fit, **flags)) for name, flags in DATA_AWARE.items()}}
    best, chosen, errors = _choose(fp32_model, candidates, feeds)
    flags = DATA_AWARE.get(chosen, {})
    return best, {"awq": bool(flags.get("awq")), "scale_estimation": bool(flags.get("scale_estimation")),
                  "data_aware": errors, "chosen": chosen}


def choose_calibration(fp32_model, calibrate, feeds: list[dict]) -> tuple[object, dict]:
    """int8-static calibrated NNCF's way and `minmax` (the first half of `feeds` each), scored like
    `choose_compression`; returns the best model and a report {calibration: chosen, calibration_check: {candidate:
    error}}. NNCF's transformer defaults are checked, not trusted: on the demo student's decoder with past they gave
    a held-out error of 0.27 against 0.027 for minmax (module docstring)."""
    candidates = {"nncf-default": lambda fit: calibrate(fit), "minmax": lambda fit: calibrate(fit, minmax=True)}
    _, chosen, errors = _choose(fp32_model, candidates, feeds)
    # the check picks the method; its ranges then come from every feed
    return calibrate(feeds, minmax=chosen == "minmax"), {"calibration": chosen, "calibration_check": errors}


def _minmax(nncf):
    """nncf.quantize settings of the `minmax` candidate: activation ranges from the min and max over all feeds, as
    onnxruntime's MinMax calibration takes them, and no SmoothQuant (its transformer default is alpha 0.95 on
    MatMuls)."""
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return nncf.AdvancedQuantizationParameters(smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1),
                                               activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)


def _choose(fp32_model, candidates: dict, feeds: list[dict]) -> tuple[object, str, dict[str, float]]:
    """Build each candidate from the first half of `feeds` and keep the one whose first output has the smallest
    mean relative L2 error against fp32 on the second half (at most MAX_CHECK_FEEDS of it, f32 inference); the first
    candidate wins ties. Returns (model, its name, {name: error})."""
    import openvino as ov

    half = len(feeds) // 2
    fit, check = feeds[:half], feeds[half:]
    check = [check[int(i)] for i in np.linspace(0, len(check) - 1, min(len(check), MAX_CHECK_FEEDS))]
    names = [p.get_any_name() for p in fp32_model.inputs]
    core = ov.Core()

    def outputs(model) -> list[np.ndarray]:
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})  # not bf16 where CPUs have it
        return [np.asarray(compiled({k: f[k] for k in names})[0], np.float64) for f in check]

    want = outputs(fp32_model)
    best_name, best, errors = None, None, {}
    for name, build in candidates.items():
        candidate = build(fit)
        got = outputs(candidate)
        errors[name] = float(np.mean([np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30) for g, w in zip(got, want)]))
        if best_name is None or errors[name] < errors[best_name]:
            best_name, best = name, candidate
    return best, best_name, {k: round(v, 6) for k, v in errors.items()}


def ir_files(xml: Path) -> list[Path]:
    return [xml, xml.with_suffix(".bin")]
