"""TensorRT: the CPU-testable parts (profiles, fp32 layer plan, clear failure). Engines need a GPU; not built here."""

from __future__ import annotations

import importlib.util

import pytest

from tiercel.models.presets import get_preset


@pytest.mark.parametrize("name", ["vision_encoder", "embed_tokens", "encoder_model", "decoder_model",
                                  "decoder_with_past_model", "decoder_model_merged"])
def test_profiles_cover_every_input_with_ordered_shapes(name):
    from tiercel.export.onnx_export import graph_io
    from tiercel.export.tensorrt import profiles

    shape = get_preset("florence2-base")
    prof = profiles(name, shape, max_batch=4)
    inputs = [i for i in graph_io(name, shape.decoder_layers)[0] if i != "use_cache_branch"]
    assert sorted(prof) == sorted(inputs)
    for lo, opt, hi in prof.values():
        assert len(lo) == len(opt) == len(hi)
        assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
        assert lo[0] == 1 and hi[0] == 4
    if name == "vision_encoder":
        assert prof["pixel_values"][2] == (4, 3, 768, 768)  # DaViT is traced at the model's size
    if name == "decoder_model_merged":
        assert prof["past_key_values.0.decoder.key"][0][2] == 0  # the first step passes an empty past


def test_norms_and_softmax_stay_fp32():
    from tiercel.export.tensorrt import fp32_layer_kinds

    assert {"NORMALIZATION", "SOFTMAX"} <= set(fp32_layer_kinds())


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_without_tensorrt_export_says_what_to_install(tiny_model, tiny_tokenizer, tmp_path):
    from tiercel.errors import MissingDependency
    from tiercel.export.bundle import export_model

    with pytest.raises(MissingDependency, match=r"pip install 'tiercel\[tensorrt\]'"):
        export_model(tiny_model, tiny_tokenizer, tmp_path / "b", backends=("onnxruntime", "tensorrt"))
    assert not (tmp_path / "b").exists()


def _graph(op_types, subgraph_op=None):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    nodes = [helper.make_node(op, ["x"], [f"y{i}"]) for i, op in enumerate(op_types)]
    if subgraph_op:
        branch = helper.make_graph([helper.make_node(subgraph_op, ["x"], ["z"])], "b", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
        nodes.append(helper.make_node("If", ["c"], ["w"], then_branch=branch, else_branch=branch))
    return onnx.helper.make_model(helper.make_graph(nodes, "g", [x], []))


def test_int8_flag_only_for_graphs_with_quantize_nodes(tmp_path):
    pytest.importorskip("onnx")
    import onnx

    from tiercel.export.tensorrt import builder_flags, engine_precision, has_qdq

    assert not has_qdq(_graph(["Relu", "MatMul"]))
    assert has_qdq(_graph(["QuantizeLinear", "DequantizeLinear"]))
    assert has_qdq(_graph(["Relu"], subgraph_op="QuantizeLinear"))  # inside the merged decoder's If
    onnx.save(_graph(["QuantizeLinear"]), str(tmp_path / "q.onnx"))
    assert has_qdq(tmp_path / "q.onnx")
    assert builder_flags(fp16=True, int8=False) == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert builder_flags(fp16=True, int8=True) == ["FP16", "OBEY_PRECISION_CONSTRAINTS", "INT8"]
    assert builder_flags(fp16=False, int8=True) == ["INT8"]
    assert [engine_precision(True, True), engine_precision(True, False), engine_precision(False, False)] == ["int8", "fp16", "fp32"]
