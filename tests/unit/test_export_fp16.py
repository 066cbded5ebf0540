"""fp16 bundles (`tiercel export --precision fp16`) for GPUs, checked on the CPU execution provider."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from tests.bundles import image, tiny_bundle  # noqa: E402


@pytest.fixture(scope="module", params=["split", "merged"])
def fp16(request, tiny_model, tiny_tokenizer, tmp_path_factory):
    from tiercel.export.bundle import export_model

    return export_model(tiny_model, tiny_tokenizer, tmp_path_factory.mktemp("fp16") / request.param,
                        decoder=request.param, precision="fp16")


def test_fp16_bundle_passes_parity_and_records_its_precision(fp16):
    import onnxruntime as ort

    man = json.loads((fp16 / "manifest.json").read_text())
    assert {g["precision"] for g in man["graphs"]} == {"fp16"}
    report = man["parity"]["onnxruntime"]
    assert report["measure"] == "max_rel_diff" and report["worst"] <= report["tolerance"] == 1e-2
    assert report["greedy_identical"] == "3/3"  # token-identical to fp32 transformers on the tiny model
    dec = next(g for g in man["graphs"] if g["name"] in ("decoder_with_past_model", "decoder_model_merged"))
    types = {i.name: i.type for i in ort.InferenceSession(str(fp16 / dec["file"])).get_inputs()}
    assert types["inputs_embeds"] == types["past_key_values.0.decoder.key"] == "tensor(float16)"  # KV in fp16
    assert types["encoder_attention_mask"] == "tensor(int64)"


def test_fp16_generates_the_fp32_tokens_on_the_tiny_model(fp16, tiny_model, tiny_tokenizer):
    import tiercel.runtime as rt
    from tiercel.runtime.profile import forced_generation

    ref = rt.load(tiny_bundle(tiny_model, tiny_tokenizer, "split", ("onnxruntime",)))
    half, bound = rt.load(fp16), rt.load(fp16, io_binding=True)
    features = half.image_features(half.pixel_values(image(3)))  # float32 pixels are cast to the fp16 input
    assert features.dtype == np.float16
    np.testing.assert_allclose(features, ref.image_features(ref.pixel_values(image(3))), atol=2e-2)
    prompts = ["Describe the image.", "Count the number of ship."]
    for beams in (1, 3):
        gen = forced_generation(16, beams)
        want = ref.generate_ids(features.astype(np.float32), prompts, **gen)
        assert half.generate_ids(features, prompts, **gen) == want
        assert bound.generate_ids(features, prompts, **gen) == want


def test_fp16_refuses_openvino_and_unknown_precisions(tiny_model, tiny_tokenizer, tmp_path):
    from tiercel.errors import ConfigError
    from tiercel.export.bundle import export_model

    with pytest.raises(ConfigError, match="--precision fp16 is for GPU backends"):
        export_model(tiny_model, tiny_tokenizer, tmp_path / "a", backends=("onnxruntime", "openvino"), precision="fp16")
    with pytest.raises(ConfigError, match="--precision: must be one of fp32, fp16 \\(got int3\\)"):
        export_model(tiny_model, tiny_tokenizer, tmp_path / "b", precision="int3")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_duplicate_casts_from_older_converters_are_merged_so_onnxruntime_loads_the_graph():
    """onnxruntime <= 1.31's fp16 converter writes one identical Cast per consumer; 1.31 refuses such a graph."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tiercel.export.fp16 import unique_nodes

    cast = lambda: helper.make_node("Cast", ["x"], ["x_cast_to_fp32"], to=TensorProto.FLOAT, name="x_cast_to_fp32_node")  # noqa: E731
    graph = helper.make_graph(
        [cast(), helper.make_node("Relu", ["x_cast_to_fp32"], ["a"], name="n"), cast(),
         helper.make_node("Neg", ["x_cast_to_fp32"], ["b"], name="n")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2]) for o in ("a", "b")],
        value_info=[helper.make_tensor_value_info("x_cast_to_fp32", TensorProto.FLOAT, [2])] * 2)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    unique_nodes(model.graph)
    assert [n.name for n in model.graph.node] == ["x_cast_to_fp32_node", "n", "n_1"] and len(model.graph.value_info) == 1
    onnx.checker.check_model(model)
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.array([-1.5, 2.0], np.float16)})
    np.testing.assert_array_equal(out[0], [0.0, 2.0])
    np.testing.assert_array_equal(out[1], [1.5, -2.0])
