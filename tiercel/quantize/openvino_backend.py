"""Quantise one OpenVINO IR graph with NNCF, as a leaf scheme (schemes.py) says.

    int8-static       nncf.quantize: int8 weights and activations, ranges from the recorded feeds,
                      ModelType.TRANSFORMER (keeps LayerNorm/Softmax paths in float, SmoothQuant-aware)
    int8-dynamic      nncf.compress_weights INT8 (weights only; the OpenVINO CPU plugin quantises
                      activations dynamically at run time)
    int4-weight-only  nncf.compress_weights INT4_SYM/ASYM with group size = block size and `ratio` of layers
                      in int4 (the rest int8); with calibration feeds, AWQ and scale estimation are candidates
                      beside data-free compression, and the one with the smallest output error on held-out feeds
                      is kept (`DATA_AWARE`, `choose_compression`)
    embeddings        always int8 weight compression (the Gather table); NNCF keeps embeddings and the last
                      layer (the tied lm_head) in int8 under INT4 modes unless all_layers is set

`exclude` holds ONNX node names; the ONNX frontend keeps them as OpenVINO friendly names, so they map to an
IgnoredScope (not validated: a name may have been fused away). Knows nothing about bundles (bundle.py).

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
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tiercel.errors import require
from tiercel.quantize.schemes import SchemeSpec


def quantize_ir(src: Path, dst: Path, spec: SchemeSpec, role: str = "", feeds: list[dict] | None = None,
                exclude=(), ratio: float = 1.0) -> dict:
    """Write the IR `src` (.xml) quantised by `spec` to `dst` (.xml + .bin). Returns a small report."""
    ov = require("openvino", "openvino", "quantizing OpenVINO IR")
    nncf = require("nncf", "openvino", "quantizing OpenVINO IR")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = ov.Core().read_model(str(src))
    ignored = nncf.IgnoredScope(names=sorted(exclude), validate=False)
    report = {"tool": f"nncf {nncf.__version__}", "excluded": sorted(exclude), "kept_in": "fp32"}  # IgnoredScope
    names = [p.get_any_name() for p in model.inputs]
    if spec.kind == "keep":
        pass
    elif role == "embeddings" or spec.kind == "dynamic":
        mode = nncf.CompressWeightsMode.INT8_SYM if spec.symmetric else nncf.CompressWeightsMode.INT8_ASYM
        model = nncf.compress_weights(model, mode=mode, ignored_scope=ignored)
        report["mode"] = mode.value
    elif spec.kind == "static":
        if not feeds:
            raise ValueError(f"{src.name}: int8-static needs calibration feeds")
        dataset = nncf.Dataset([{k: f[k] for k in names if k in f} for f in feeds])
        model = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
                              ignored_scope=ignored)
        report["mode"] = "int8 (nncf.quantize, transformer)"
    elif spec.kind == "weight-only":
        mode = nncf.CompressWeightsMode.INT4_SYM if spec.symmetric else nncf.CompressWeightsMode.INT4_ASYM

        def compress(fit: list[dict] | None, awq: bool = False, scale_estimation: bool = False):
            data = nncf.Dataset([{k: f[k] for k in names if k in f} for f in fit]) if fit else None
            fresh = ov.Core().read_model(str(src))
            weights_n_major(fresh)  # scale estimation mis-handles [K, N] weights (module docstring)
            return nncf.compress_weights(
                fresh, mode=mode, group_size=spec.block_size, ratio=ratio,
                ignored_scope=ignored, dataset=data, subset_size=len(fit) if fit else 128, awq=awq or None,
                scale_estimation=scale_estimation or None,
                advanced_parameters=nncf.AdvancedCompressionParameters(  # K % group: int8 backup
                    group_size_fallback_mode=nncf.GroupSizeFallbackMode.IGNORE))

        report.update(mode=mode.value, group_size=spec.block_size, ratio=ratio, awq=False, scale_estimation=False)
        if feeds and len(feeds) >= 2:
            model, choice = choose_compression(model, compress, feeds)
            report.update(choice)
        else:
            model = compress(None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return report


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
        new.set_friendly_name(op.get_friendly_name())
        names = op.output(0).get_names()
        op.output(0).replace(new.output(0))
        new.output(0).get_tensor().set_names(names)
        turned += 1
    return turned


DATA_AWARE = {"awq": {"awq": True}, "awq+scale_estimation": {"awq": True, "scale_estimation": True}}
MAX_CHECK_FEEDS = 32  # held-out feeds the candidates are scored on (evenly spaced over the second half)


def choose_compression(fp32_model, compress, feeds: list[dict]) -> tuple[object, dict]:
    """Data-free int4 and each `DATA_AWARE` variant (fitted on the first half of `feeds`), scored by the relative
    L2 error of the model's first output on the second half against fp32; returns the best model and a report
    {awq, scale_estimation, data_aware: {candidate: error}, chosen}."""
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

    def error(model) -> float:
        got = outputs(model)
        return float(np.mean([np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30) for g, w in zip(got, want)]))

    best_name, best = "data-free", compress(None)
    errors = {best_name: error(best)}
    for name, flags in DATA_AWARE.items():
        candidate = compress(fit, **flags)
        errors[name] = error(candidate)
        if errors[name] < errors[best_name]:
            best_name, best = name, candidate
    flags = DATA_AWARE.get(best_name, {})
    return best, {"awq": bool(flags.get("awq")), "scale_estimation": bool(flags.get("scale_estimation")),
                  "data_aware": {k: round(v, 6) for k, v in errors.items()}, "chosen": best_name}


def ir_files(xml: Path) -> list[Path]:
    return [xml, xml.with_suffix(".bin")]
