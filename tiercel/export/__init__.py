"""tiercel.export: native Florence-2 -> bundle (ONNX graphs, OpenVINO IR, TensorRT engines), checked for parity.

    from tiercel.export import export_checkpoint, export_model
    export_checkpoint("ckpt/", "bundle/", backends=("onnxruntime", "openvino"))

Modules: graphs (what is traced), onnx_export (tracing), rewrite (decoder graph rewrites), merge
(decoder_model_merged), openvino, tensorrt, parity, bundle (the manifest and the whole flow). torch and onnx load
only when a function needs them.
"""

from __future__ import annotations

from tiercel._lazy import lazy_getattr

_LAZY = {
    "export_model": "tiercel.export.bundle",
    "export_checkpoint": "tiercel.export.bundle",
    "export_onnx": "tiercel.export.onnx_export",
    "check_bundle": "tiercel.export.parity",
    "graph_diffs": "tiercel.export.parity",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
