"""tiercel.quantize: fp32 bundle -> int8 / int4 bundle, calibrated on real decode steps, with an accuracy guard.

    from tiercel.quantize import quantize_bundle
    report = quantize_bundle("bundle/", "bundle-int8/", scheme="int8-static", calib="synth/")   # synth folder

Modules: schemes (the schemes as data), calibrate (samples + recorded feeds), onnx_backend
(onnxruntime.quantization), openvino_backend (NNCF), sensitivity (per-layer report), guard (quantised vs
fp32), bundle (the whole flow and the manifest). onnx, onnxruntime and nncf load only when a function needs
them; nothing here imports torch.
"""

from __future__ import annotations

from tiercel._lazy import lazy_getattr

_LAZY = {
    "quantize_bundle": "tiercel.quantize.bundle",
    "TARGETS": "tiercel.quantize.settings",
    "QuantizeSettings": "tiercel.quantize.settings",
    "SCHEMES": "tiercel.quantize.schemes",
    "SchemeSpec": "tiercel.quantize.schemes",
    "get_scheme": "tiercel.quantize.schemes",
    "capture": "tiercel.quantize.calibrate",
    "load_samples": "tiercel.quantize.calibrate",
    "layer_sensitivity": "tiercel.quantize.sensitivity",
    "quantize_graph": "tiercel.quantize.onnx_backend",
    "GuardError": "tiercel.quantize.guard",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
