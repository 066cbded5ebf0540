"""tiercel.export: native Florence-2 -> bundle (ONNX graphs, OpenVINO IR, TensorRT engines), checked for parity.

    from tiercel.export import export_checkpoint, export_model
    export_checkpoint("ckpt/", "bundle/", backends=("onnxruntime", "openvino"))

Modules: graphs (what is traced), onnx_export (tracing), merge (decoder_model_merged), openvino, tensorrt,
parity, bundle (the manifest and the whole flow). torch and onnx load only when a function needs them.
"""

from __future__ import annotations

_LAZY = {
    "export_model": "tiercel.export.bundle",
    "export_checkpoint": "tiercel.export.bundle",
    "export_onnx": "tiercel.export.onnx_export",
    "check_bundle": "tiercel.export.parity",
    "graph_diffs": "tiercel.export.parity",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tiercel.export' has no attribute {name!r}")
