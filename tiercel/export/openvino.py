"""ONNX graph -> OpenVINO IR (.xml + .bin) with the same input and output names.

Weights stay fp32 (`compress_to_fp16=False`): precision changes are the quantize stage's job, and parity
compares against fp32 PyTorch. Knows nothing about manifests; bundle.py records what this writes.

transposes_as_reorders: OpenVINO's CPU plugin runs a rank-3 `Transpose(perm=[0, 2, 1])` ([B, N, C] -> [B, C, N],
which DaViT writes around every depthwise convolution and attention block, and which the exporter's
channel_split_transposes (rewrite.py) makes of the channel attention's rank-5 split) with a generic kernel
(`exec_type` "unknown"), at well under 1 GB/s; the same move written as a rank-4 NHWC -> NCHW transpose
(`Unsqueeze(1)`, perm [0, 3, 1, 2], `Squeeze(2)`) runs as a layout reorder, 8x faster on [1, 36864, 128]. Pure
data movement: outputs are bit-identical. Florence-2-base vision encoder, one thread, Intel Xeon with AMX
(benchmarks/results/vision_ops_cpu.md): Transposes were half of the bf16 call and a quarter of the f32 one.
Written here because OpenVINO has no transformation for it and the rewrite is a few opset nodes.
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
    transposes_as_reorders(model)
    for port in [*model.inputs, *model.outputs]:  # keep only the public name (not e.g. /embed/Gather_output_0)
        public = sorted(n for n in port.get_names() if not n.startswith("/"))
        if public:
            port.get_tensor().set_names({public[0]})
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return [xml, xml.with_suffix(".bin")]


def transposes_as_reorders(model) -> int:
    """Rewrite every rank-3 `Transpose(perm=[0, 2, 1])` of `model` (an openvino.Model, in place) as Unsqueeze(1) ->
    Transpose [0, 3, 1, 2] -> Squeeze(2), which OpenVINO runs as a layout reorder; returns how many. Other
    Transposes are left alone."""
    import numpy as np
    import openvino.opset13 as ops

    def const(values) -> object:
        return ops.constant(np.array(values, dtype=np.int64))

    done = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Transpose" or node.input_value(1).get_node().get_type_name() != "Constant":
            continue
        perm = [int(v) for v in node.input_value(1).get_node().get_vector()]
        src = node.input_value(0)
        if perm != [0, 2, 1] or src.get_partial_shape().rank.is_dynamic or src.get_partial_shape().rank.get_length() != 3:
            continue
        new = ops.squeeze(ops.transpose(ops.unsqueeze(src, const([1])), const([0, 3, 1, 2])), const([2]))
        for name in node.output(0).get_names():  # a public output name stays on the graph's output
            new.output(0).get_tensor().add_names({name})
        node.output(0).replace(new.output(0))
        done += 1
    return done
