"""transposes_as_reorders: the rewritten IR computes exactly what the traced one did, without the slow Transposes."""

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
ops = pytest.importorskip("openvino.opset13")

from tiercel.export.openvino import transposes_as_reorders  # noqa: E402


def _const(values):
    return ops.constant(np.array(values, dtype=np.int64))


def _model():
    """On a dynamic batch: a [B, N, C] -> [B, C, N] move whose result is also a graph output, and two Transposes the
    rewrite must leave alone (the rank-5 channel split is the ONNX exporter's, tiercel/export/rewrite.py)."""
    x = ops.parameter(ov.PartialShape([-1, 12, 24]), np.float32, name="x")
    qkv = ops.reshape(x, _const([0, 0, 3, 2, 4]), True)
    split = ops.transpose(qkv, _const([2, 0, 3, 4, 1]))  # [3, B, 2, 4, 12]
    moved = ops.transpose(x, _const([0, 2, 1]))  # [B, 24, 12]
    moved.output(0).get_tensor().set_names({"moved"})
    other = ops.transpose(x, _const([1, 0, 2]))  # not a pattern: stays
    return ov.Model([ops.result(moved), ops.result(split), ops.result(other)], [x])


def _types(model) -> dict:
    out = {}
    for node in model.get_ordered_ops():
        if node.get_type_name() == "Transpose":
            perm = tuple(int(v) for v in node.input_value(1).get_node().get_vector())
            out[perm] = out.get(perm, 0) + 1
    return out


def _run(model, x):
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled({"x": x})
    return [result[o] for o in compiled.outputs]


def test_rewritten_graph_is_bit_identical_and_keeps_output_names():
    x = np.random.default_rng(0).standard_normal((3, 12, 24)).astype(np.float32)  # batch 3: the block moves matter
    before = _run(_model(), x)
    model = _model()
    assert transposes_as_reorders(model) == 1
    assert _types(model) == {(0, 3, 1, 2): 1, (2, 0, 3, 4, 1): 1, (1, 0, 2): 1}  # the others kept (rank 5: rewrite.py)
    assert "moved" in model.outputs[0].get_names()
    after = _run(model, x)
    for a, b in zip(before, after, strict=True):
        assert a.shape == b.shape
        assert np.array_equal(a, b)


def test_a_transpose_of_unknown_rank_is_left_alone():
    x = ops.parameter(ov.PartialShape.dynamic(), np.float32, name="x")
    model = ov.Model([ops.result(ops.transpose(x, _const([0, 2, 1])))], [x])
    assert transposes_as_reorders(model) == 0
