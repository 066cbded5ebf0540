"""ONNX graph -> OpenVINO IR (.xml + .bin) with the same input and output names.

Weights stay fp32 (`compress_to_fp16=False`): precision changes are the quantize stage's job, and parity
compares against fp32 PyTorch. Knows nothing about manifests; bundle.py records what this writes.
"""

from __future__ import annotations

from pathlib import Path

from tiercel.errors import require


def convert_to_ir(onnx_file: Path, out_dir: Path) -> list[Path]:
    """Convert one ONNX graph; returns [xml, bin]."""
    ov = require("openvino", "openvino", "exporting OpenVINO IR")
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / f"{Path(onnx_file).stem}.xml"
    # Core.read_model uses the ONNX frontend directly: the same graph as convert_model, without its
    # preprocessing passes and telemetry (seconds per graph), and the names are kept.
    model = ov.Core().read_model(str(onnx_file))
    for port in [*model.inputs, *model.outputs]:  # keep only the public name (not e.g. /embed/Gather_output_0)
        public = sorted(n for n in port.get_names() if not n.startswith("/"))
        if public:
            port.get_tensor().set_names({public[0]})
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return [xml, xml.with_suffix(".bin")]
