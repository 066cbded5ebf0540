"""TensorRT engine building: profiles, strong typing, the version range, clear failures (through tests/fake_tensorrt.py)."""

from __future__ import annotations

import importlib.util

import pytest

from tiercel.models.presets import get_preset


@pytest.mark.parametrize("name", ["vision_encoder", "embed_tokens", "encoder_model", "decoder_model",
                                  "decoder_with_past_model", "decoder_model_merged"])
def test_profiles_cover_every_input_for_fourteen_tasks_times_beams(name):
    from tiercel.export.onnx_export import graph_io
    from tiercel.export.tensorrt import default_max_batch, profiles

    shape = get_preset("florence2-base")
    rows = default_max_batch(3)
    assert rows == 42  # run_all's 14 prompts x Florence-2's 3 beams
    single, batched = profiles(name, shape, max_batch=rows)
    inputs = [i for i in graph_io(name, shape.decoder_layers)[0] if i != "use_cache_branch"]
    for prof, opt_rows in ((single, 1), (batched, 14)):
        assert sorted(prof) == sorted(inputs)
        for lo, opt, hi in prof.values():
            assert len(lo) == len(opt) == len(hi)
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
            if name == "vision_encoder":
                assert (lo[0], opt[0], hi[0]) == (1, 1 if opt_rows == 1 else 2, 4)
            else:
                assert (lo[0], opt[0], hi[0]) == (1, opt_rows, rows)
    if name == "vision_encoder":
        assert single["pixel_values"][2] == (4, 3, 768, 768)  # DaViT is traced at the model's size
    if name == "encoder_model":  # image tokens + prompt, up to the model's text positions
        assert single["inputs_embeds"][2][1] == shape.max_text_positions == 1024
    if name == "decoder_with_past_model":
        assert batched["past_key_values.0.decoder.key"][2] == (42, 12, 1024, 64)
    if name == "decoder_model_merged":
        assert single["past_key_values.0.decoder.key"][0][2] == 0  # the first step passes an empty past


def test_engines_are_strongly_typed_with_no_precision_flag(tmp_path, monkeypatch):
    """The flags TensorRT 11 removed are never set: precision comes from the graph (fp16 / Q/DQ)."""
    pytest.importorskip("onnx")
    import onnx

    from tests import fake_tensorrt
    from tiercel.errors import BundleError
    from tiercel.export.tensorrt import build_engine, network_flags

    onnx.save(_dynamic_relu(), str(tmp_path / "g.onnx"))
    prof = [{"x": ((1, 4), (1, 4), (8, 4))}, {"x": ((1, 4), (4, 4), (8, 4))}]
    for version in ("10.3.0.26", "11.4.0"):
        _, trt = fake_tensorrt.install(monkeypatch, version=version)
        assert network_flags(trt) == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        engine = build_engine(tmp_path / "g.onnx", tmp_path / version / "g.engine", prof)
        assert engine.read_bytes().startswith(fake_tensorrt.MAGIC)
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS")
    _, trt = fake_tensorrt.install(monkeypatch, version="10.3.0.26")  # 10.x has the flags, and refuses them here
    builder = trt.Builder(trt.Logger())
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.add_optimization_profile(builder.create_optimization_profile())
    network = builder.create_network(network_flags(trt))
    trt.OnnxParser(network, None).parse_from_file(str(tmp_path / "g.onnx"))
    assert builder.build_serialized_network(network, config) is None
    with pytest.raises(BundleError, match=r"g.onnx: input x has dynamic axes but no profile shape"):
        build_engine(tmp_path / "g.onnx", tmp_path / "h.engine", [{"y": ((1, 4), (1, 4), (8, 4))}])


def test_tensorrt_outside_10_3_to_11_is_refused_before_any_work(monkeypatch, tiny_model, tiny_tokenizer, tmp_path):
    from tests import fake_tensorrt
    from tiercel.errors import BundleError
    from tiercel.export.bundle import export_model

    fake_tensorrt.install(monkeypatch, version="10.0.1.6")
    with pytest.raises(BundleError, match=r"^TensorRT 10.0.1.6 is not supported: .* 10.3 up to 11.x"):
        export_model(tiny_model, tiny_tokenizer, tmp_path / "b", backends=("onnxruntime", "tensorrt"), precision="fp16")
    assert not (tmp_path / "b").exists()


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


def test_int8_only_for_graphs_with_quantize_nodes(tmp_path):
    pytest.importorskip("onnx")
    import onnx

    from tiercel.export.tensorrt import engine_precision, has_qdq

    assert not has_qdq(_graph(["Relu", "MatMul"]))
    assert has_qdq(_graph(["QuantizeLinear", "DequantizeLinear"]))
    assert has_qdq(_graph(["Relu"], subgraph_op="QuantizeLinear"))  # inside the merged decoder's If
    onnx.save(_graph(["QuantizeLinear"]), str(tmp_path / "q.onnx"))
    assert has_qdq(tmp_path / "q.onnx")
    assert [engine_precision("fp16", True), engine_precision("fp16", False), engine_precision("fp32", False),
            engine_precision("int8-static", True)] == ["int8", "fp16", "fp32", "int8"]


def _dynamic_relu():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 4])
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17)])
