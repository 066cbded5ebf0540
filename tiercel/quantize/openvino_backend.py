"""Quantise one OpenVINO IR graph with NNCF, as a leaf scheme (schemes.py) says.

    int8-static       nncf.quantize: int8 weights and activations, ranges from the recorded feeds,
                      ModelType.TRANSFORMER (keeps LayerNorm/Softmax paths in float, SmoothQuant-aware)
    int8-dynamic      nncf.compress_weights INT8 (weights only; the OpenVINO CPU plugin quantises
                      activations dynamically at run time)
    int4-weight-only  nncf.compress_weights INT4_SYM/ASYM with group size = block size and `ratio` of layers
                      in int4 (the rest int8); with calibration feeds also AWQ and scale estimation
    embeddings        always int8 weight compression (the Gather table); NNCF keeps embeddings and the last
                      layer (the tied lm_head) in int8 under INT4 modes unless all_layers is set

`exclude` holds ONNX node names; the ONNX frontend keeps them as OpenVINO friendly names, so they map to an
IgnoredScope (not validated: a name may have been fused away). Knows nothing about bundles (bundle.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

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
    dataset = nncf.Dataset([{k: f[k] for k in names if k in f} for f in feeds]) if feeds else None
    if spec.kind == "keep":
        pass
    elif role == "embeddings" or spec.kind == "dynamic":
        mode = nncf.CompressWeightsMode.INT8_SYM if spec.symmetric else nncf.CompressWeightsMode.INT8_ASYM
        model = nncf.compress_weights(model, mode=mode, ignored_scope=ignored)
        report["mode"] = mode.value
    elif spec.kind == "static":
        if dataset is None:
            raise ValueError(f"{src.name}: int8-static needs calibration feeds")
        model = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
                              ignored_scope=ignored)
        report["mode"] = "int8 (nncf.quantize, transformer)"
    elif spec.kind == "weight-only":
        mode = nncf.CompressWeightsMode.INT4_SYM if spec.symmetric else nncf.CompressWeightsMode.INT4_ASYM
        data_aware = dataset is not None
        model = nncf.compress_weights(model, mode=mode, group_size=spec.block_size, ratio=ratio, ignored_scope=ignored,
                                      dataset=dataset, subset_size=len(feeds) if feeds else 128,
                                      awq=data_aware or None, scale_estimation=data_aware or None,
                                      advanced_parameters=nncf.AdvancedCompressionParameters(  # K % group: int8 backup
                                          group_size_fallback_mode=nncf.GroupSizeFallbackMode.IGNORE))
        report.update(mode=mode.value, group_size=spec.block_size, ratio=ratio, awq=data_aware, scale_estimation=data_aware)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return report


def ir_files(xml: Path) -> list[Path]:
    return [xml, xml.with_suffix(".bin")]
