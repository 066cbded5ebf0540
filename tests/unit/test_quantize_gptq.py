"""GPTQ int4 (tiercel.quantize.gptq): the MatMulNBits it writes computes exactly the weight it rounded, it beats
round-to-nearest on correlated activations it did not see, and it falls back to round-to-nearest where the
held-out half says GPTQ overfits."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tiercel.quantize import gptq as G  # noqa: E402
from tiercel.quantize.schemes import get_scheme  # noqa: E402
from tiercel.quantize.sensitivity import fake_quantize  # noqa: E402


def _activations(rows: int, k: int, seed: int) -> np.ndarray:
    """Correlated inputs, as real layers see them: 8 latent factors mixed into k channels, plus a little noise."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((8, k))
    return (rng.standard_normal((rows, 8)) @ mix + 0.05 * rng.standard_normal((rows, k))).astype(np.float32)


def _matmul(k: int, n: int, seed: int = 0):
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", n])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


@pytest.mark.parametrize("symmetric", [True, False])
def test_matmulnbits_computes_the_rounded_weight_exactly(symmetric):
    proto, w = _matmul(80, 24)  # 80 rows: 3 blocks of 32, the last padded, an odd count of zero-point nibbles
    feeds = [{"x": _activations(16, 80, s)} for s in range(4)]
    rounded = G.round_layers(proto, ["fc"], G.hessians(proto, feeds, ["fc"]), 32, symmetric)
    report = G.quantize_matmuls(proto, ["fc"], rounded, 32, symmetric, accuracy_level=0)
    assert [n.op_type for n in proto.graph.node] == ["MatMulNBits"] and "w" not in {i.name for i in proto.graph.initializer}
    h = sum(f["x"].T.astype(np.float64) @ f["x"] for f in feeds) / 64
    rounded = G.dequantize(*G.gptq(w, h if report[0]["method"] == "gptq" else np.eye(80), 32, symmetric), 80)
    x = _activations(5, 80, 7)
    y = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ rounded, atol=1e-4, rtol=1e-4)
    shapes = {i.name.split("_")[1]: list(i.dims) for i in proto.graph.initializer}
    zero_points = {} if symmetric else {"zp": [24, 2]}  # symmetric: the op's default zero point
    assert shapes == {"Q4G32": [24, 3, 16], "scales": [24, 3], **zero_points}  # 4 bits a weight


def test_gptq_halves_the_output_error_of_round_to_nearest_on_unseen_activations():
    _, w = _matmul(128, 64)
    fit, check = _activations(512, 128, 1), _activations(512, 128, 2)
    h = fit.T.astype(np.float64) @ fit / 512
    h_check = check.T.astype(np.float64) @ check / 512
    rtn = G.output_error(w, fake_quantize(w, "MatMul", get_scheme("int4-weight-only")), h_check)
    gptq = G.output_error(w, G.dequantize(*G.gptq(w, h, 32, True), 128), h_check)
    assert gptq < 0.5 * rtn


def test_gptq_with_an_identity_hessian_is_round_to_nearest():
    _, w = _matmul(64, 16)
    rounded = G.dequantize(*G.gptq(w, np.eye(64), 32, True), 64)
    np.testing.assert_allclose(rounded, fake_quantize(w, "MatMul", get_scheme("int4-weight-only")), atol=1e-6)


def test_symmetric_rounding_is_onnxruntimes_own(tmp_path):
    """GPTQ's symmetric grid (and the sensitivity report's) is the one onnxruntime's round-to-nearest writes:
    the block's largest-magnitude value on level -8, so all 16 levels are used (not absmax / 7)."""
    from tiercel.quantize.onnx_backend import quantize_graph

    proto, w = _matmul(64, 16, seed=5)
    w[3, 0], w[40, 1] = 6.0, -6.0  # a positive and a negative peak: the scale's sign follows the peak
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    onnx.save(proto, str(tmp_path / "g.onnx"))
    quantize_graph(tmp_path / "g.onnx", tmp_path / "q.onnx", get_scheme("int4-weight-only"))  # no feeds: onnxruntime's RTN
    q = onnx.load(str(tmp_path / "q.onnx"))
    ort_scales = numpy_helper.to_array(next(i for i in q.graph.initializer if "scales" in i.name))  # [N, k_blocks]
    _, scales, zeros = G.gptq(w, np.eye(64), 32, True)
    np.testing.assert_array_equal(scales.T, ort_scales)
    assert scales[0, 0] == -0.75 and scales[1, 1] == 0.75 and (zeros == 8).all()
    for a in q.graph.node[0].attribute:  # float activations (the bundle's level 4 rounds x to int8 too)
        if a.name == "accuracy_level":
            a.i = 0
    x = _activations(6, 64, 8)
    y = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = G.dequantize(*G.gptq(w, np.eye(64), 32, True), 64)
    np.testing.assert_allclose(y, x @ ours, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(fake_quantize(w, "MatMul", get_scheme("int4-weight-only")), ours, atol=1e-6)


def test_choose_keeps_round_to_nearest_when_the_held_out_half_says_gptq_overfits():
    _, w = _matmul(64, 16)
    few = np.random.default_rng(3).standard_normal((3, 64))  # 3 rows for 64 inputs: a rank-3 Hessian
    other = np.random.default_rng(4).standard_normal((256, 64))
    _, row = G.choose(w, few.T @ few / 3, other.T @ other / 256, 32, True)
    assert row["method"] == "rtn" and row["error_gptq"] > row["error_rtn"]
    good_fit, good_check = _activations(512, 64, 5), _activations(512, 64, 6)
    _, row = G.choose(w, good_fit.T.astype(np.float64) @ good_fit / 512, good_check.T.astype(np.float64) @ good_check / 512,
                      32, True)
    assert row["method"] == "gptq" and row["error_gptq"] < row["error_rtn"]


def test_an_embedding_table_kept_back_from_int4_becomes_int8_blocks(tmp_path):
    from tiercel.quantize.onnx_backend import quantize_graph

    table = np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"], name="/embed/Gather")], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
                              [numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "emb.onnx"))
    spec = get_scheme("int4-weight-only")
    report = quantize_graph(tmp_path / "emb.onnx", tmp_path / "q.onnx", spec, "embeddings", exclude=["/embed/Gather"])
    q = onnx.load(str(tmp_path / "q.onnx"))
    (node,) = q.graph.node
    assert report["kept_in"] == "int8" and node.op_type == "GatherBlockQuantized"
    assert {a.name: a.i for a in node.attribute}["bits"] == 8
    ids = np.array([3, 17, 49])
    y = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    half_step = np.repeat(np.abs(table[ids].reshape(3, 2, 32)).max(axis=2) / 254, 32, axis=1)  # int8 blocks of 32
    assert np.all(np.abs(y - table[ids]) <= half_step + 1e-6) and not np.array_equal(y, table[ids])


def test_a_weight_with_a_leading_unit_axis_is_rounded_to_nearest_beside_gptq(tmp_path):
    from tiercel.quantize.onnx_backend import quantize_graph

    rng = np.random.default_rng(0)
    w2, w3 = rng.standard_normal((64, 64)).astype(np.float32), rng.standard_normal((1, 64, 32)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w2"], ["h"], name="flat"),
                               helper.make_node("MatMul", ["h", "w3"], ["y"], name="batched")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(w3, "w3")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    feeds = [{"x": _activations(32, 64, s)[None]} for s in range(4)]
    report = quantize_graph(tmp_path / "g.onnx", tmp_path / "q.onnx", get_scheme("int4-weight-only"), feeds=feeds)
    assert [r["node"] for r in report["rounding"]] == ["flat"]
    q = onnx.load(str(tmp_path / "q.onnx"))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("MatMulNBits") == 2 and "MatMul" not in ops  # both int4; the batched one behind a reshape
    x = _activations(8, 64, 9)[None]
    y = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = x @ w2 @ w3
    assert y.shape == ref.shape and np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.2


def test_a_guard_retry_reuses_the_rounded_layers_and_keeps_no_hessians(tmp_path, monkeypatch):
    """The cache carried across the guard's attempts holds each layer's packed int4 blocks, not its Hessians: a
    retry that keeps one layer back writes the other layer's exact bytes again without probing activations."""
    from tiercel.quantize.onnx_backend import quantize_graph

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((64, 64)).astype(np.float32), rng.standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
                               helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    feeds, spec, cache = [{"x": _activations(32, 64, s)} for s in range(4)], get_scheme("int4-weight-only"), {}
    quantize_graph(tmp_path / "g.onnx", tmp_path / "a.onnx", spec, feeds=feeds, cache=cache)
    assert set(cache) == {"rounded"} and sorted(cache["rounded"]) == ["fc1", "fc2"]
    assert all(a.dtype != np.float64 and a.size <= 64 * 64 for packed, _, _ in cache["rounded"].values() for a in packed)
    monkeypatch.setattr(G, "hessians", lambda *a: pytest.fail("a retry probed the activations again"))
    quantize_graph(tmp_path / "g.onnx", tmp_path / "b.onnx", spec, feeds=feeds, exclude=["fc1"], cache=cache)
    first, retry = ({i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / f)).graph.initializer} for f in ("a.onnx", "b.onnx"))
    fc2 = [n for n in first if n.endswith("_fc2")]
    assert fc2 and all(np.array_equal(first[n], retry[n]) for n in fc2)
    assert any(n.endswith("fc1") for n in first) and "w1" not in retry  # fc1 now int8 blocks


def test_hessians_past_the_2gb_protobuf_limit_go_through_external_data(monkeypatch, tmp_path):
    """A graph too big to serialise (forced here by a zero limit) is probed from a temporary external-data copy:
    the same Hessians (X^T X / rows, per half) as in memory, the graph left as it was, the copy removed."""
    import tempfile

    proto, _ = _matmul(40, 8)
    feeds = [{"x": _activations(6, 40, s)} for s in range(4)]
    outputs, weight = list(proto.graph.output), numpy_helper.to_array(proto.graph.initializer[0])
    in_memory = G.hessians(proto, feeds, ["fc"])["fc"]
    monkeypatch.setattr(G, "TWO_GB", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    opened, session = [], ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda source, *a, **k: opened.append(source) or session(source, *a, **k))
    external = G.hessians(proto, feeds, ["fc"])["fc"]
    assert len(opened) == 1 and str(opened[0]).endswith("graph.onnx")  # a file, not bytes
    for h, half in zip(external, (feeds[:2], feeds[2:])):
        x = np.concatenate([f["x"] for f in half]).astype(np.float64)
        np.testing.assert_allclose(h, x.T @ x / len(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(external[0], in_memory[0])
    assert list(proto.graph.output) == outputs and list(tmp_path.iterdir()) == []
    assert not onnx.external_data_helper.uses_external_data(proto.graph.initializer[0])
    np.testing.assert_array_equal(numpy_helper.to_array(proto.graph.initializer[0]), weight)
