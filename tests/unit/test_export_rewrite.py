"""Decoder graph rewrite: key-major attention scores give the same numbers and read K as stored."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from tiercel.export.rewrite import key_major_scores  # noqa: E402


def attention_graph(shared_transpose: bool = False):
    """scores = softmax(Q @ K^T * s) @ V, written the way the exporter writes it; optionally K^T read twice."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Transpose", ["k"], ["k_t"], name="/Transpose_3", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "k_t"], ["qk"], name="/MatMul_2"),
        helper.make_node("Mul", ["qk", "scale"], ["scaled"], name="/Mul"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="/Softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["out"], name="/MatMul_3"),
    ]
    outputs = [helper.make_tensor_value_info("out", f, ["b", 4, "lq", 8])]
    if shared_transpose:
        nodes.append(helper.make_node("Identity", ["k_t"], ["k_t_copy"], name="/Keep"))
        outputs.append(helper.make_tensor_value_info("k_t_copy", f, ["b", 4, 8, "t"]))
    graph = helper.make_graph(
        nodes, "attn",
        [helper.make_tensor_value_info(n, f, ["b", 4, s, 8]) for n, s in (("q", "lq"), ("k", "t"), ("v", "t"))],
        outputs, [helper.make_tensor("scale", f, [], [0.35])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("lq", [1, 3])
def test_key_major_scores_equal_the_original_and_drop_the_key_transpose(lq):
    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((2, 4, lq, 8), dtype=np.float32),
             "k": rng.standard_normal((2, 4, 50, 8), dtype=np.float32),
             "v": rng.standard_normal((2, 4, 50, 8), dtype=np.float32)}
    model = attention_graph()
    want = run(model, feeds)[0]
    assert key_major_scores(model) == 1
    onnx.checker.check_model(model)
    got = run(model, feeds)[0]
    assert np.abs(got - want).max() < 1e-5
    ops = [(n.op_type, list(n.input)) for n in model.graph.node]
    assert ("Transpose", ["k"]) not in ops  # K is read as stored
    assert ("MatMul", ["k", "/MatMul_2/query_T"]) in ops
    assert key_major_scores(model) == 0  # nothing left to rewrite: applying it twice is harmless


def test_first_step_layout_heads_split_in_the_same_transpose():
    """decoder_model's K^T is Transpose(K_heads [b, t, h, d], [0, 2, 3, 1]); V's [0, 2, 1, 3] is left alone."""
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Transpose", ["kh"], ["k_t"], name="/Transpose_9", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["q", "k_t"], ["qk"], name="/MatMul"),
             helper.make_node("Softmax", ["qk"], ["probs"], name="/Softmax", axis=-1),
             helper.make_node("Transpose", ["vh"], ["v"], name="/Transpose_10", perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["probs", "v"], ["out"], name="/MatMul_1")]
    graph = helper.make_graph(nodes, "first", [helper.make_tensor_value_info("q", f, ["b", 4, 1, 8]),
                                               helper.make_tensor_value_info("kh", f, ["b", "t", 4, 8]),
                                               helper.make_tensor_value_info("vh", f, ["b", "t", 4, 8])],
                              [helper.make_tensor_value_info("out", f, ["b", 4, 1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(1)
    feeds = {"q": rng.standard_normal((3, 4, 1, 8), dtype=np.float32), "kh": rng.standard_normal((3, 40, 4, 8), dtype=np.float32),
             "vh": rng.standard_normal((3, 40, 4, 8), dtype=np.float32)}
    want = run(model, feeds)[0]
    assert key_major_scores(model) == 1
    onnx.checker.check_model(model)
    assert np.abs(run(model, feeds)[0] - want).max() < 1e-5
    perms = {n.name: list(n.attribute[0].ints) for n in model.graph.node if n.op_type == "Transpose"}
    assert perms["/MatMul/Key"] == [0, 2, 1, 3] and perms["/Transpose_10"] == [0, 2, 1, 3] and "/Transpose_9" not in perms


def test_a_transpose_read_elsewhere_is_kept():
    model = attention_graph(shared_transpose=True)
    assert key_major_scores(model) == 1
    onnx.checker.check_model(model)
    assert [n.name for n in model.graph.node if n.op_type == "Transpose"].count("/Transpose_3") == 1


def test_exported_decoders_are_rewritten_and_keep_parity(bundle):
    """The tiny bundle (exported with parity checks) has key-major scores in both decoder graphs."""
    import json

    manifest = json.loads((bundle / "manifest.json").read_text())
    layers = manifest["model"]["decoder_layers"]
    for name in ("decoder_model", "decoder_with_past_model"):
        proto = onnx.load(str(bundle / f"{name}.onnx"))
        rewritten = [n for n in proto.graph.node if n.op_type == "MatMul" and n.name.endswith("/KeyQueryT")]
        assert len(rewritten) == 2 * layers, name  # self- and cross-attention of every layer
    for backend in ("onnxruntime", "openvino"):  # export's parity check ran on the rewritten graphs
        report = manifest["parity"][backend]
        assert report["greedy_identical"] == "3/3" and report["worst"] <= 1e-4, report
