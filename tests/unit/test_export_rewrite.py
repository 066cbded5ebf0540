"""Graph rewrites: key-major attention scores give the same numbers and read K as stored; reshape targets become
constants, with bit-identical outputs and the shape arithmetic gone; the channel-attention split Transpose becomes a
rank-3 move with bit-identical outputs; the convolutional position encoding goes channels-last, bit-identical."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tiercel.export.rewrite import (  # noqa: E402
    channel_split_transposes,
    constant_reshapes,
    depthwise_channels_last,
    key_major_scores,
)


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
        assert len(rewritten) == layers, name  # self-attention of every layer (graphs.py writes cross key-major)
        transposed_k = [n.name for n in proto.graph.node if n.op_type == "MatMul" and not n.name.endswith("/KeyQueryT")
                        and len(_perm_of(proto, n.input[1])) == 4 and _perm_of(proto, n.input[1])[2] == 3]
        assert transposed_k == [], (name, transposed_k)  # no attention reads a transposed K
        inits = {i.name for i in proto.graph.initializer}
        computed = [n for n in proto.graph.node if n.op_type == "Reshape" and n.input[1] not in inits]
        # every head split / merge reshapes to a constant target; only the cross-attention's regrouping of the
        # rows by item and back (2 a layer) read theirs from the inputs' shapes: the items and rows are dynamic
        regroup = [n.name for n in computed
                   if _shape_sources(proto, n.input[1]) in ({"encoder_attention_mask", "inputs_embeds"}, {"inputs_embeds"})]
        assert len(regroup) == len(computed) == 2 * layers, (name, [n.name for n in computed])
    for backend in ("onnxruntime", "openvino"):  # export's parity check ran on the rewritten graphs
        report = manifest["parity"][backend]
        assert report["greedy_identical"] == "3/3" and report["worst"] <= 1e-4, report


def _perm_of(proto, name: str) -> list[int]:
    """The perm of the Transpose that writes `name`, or [] when something else does."""
    node = next((n for n in proto.graph.node if name in n.output), None)
    return list(node.attribute[0].ints) if node is not None and node.op_type == "Transpose" else []


def _shape_sources(proto, name: str) -> set[str]:
    """The tensors whose Shape the value `name` is computed from."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    todo, found = [name], set()
    while todo:
        node = producer.get(todo.pop())
        if node is not None and node.op_type == "Shape":
            found.add(node.input[0])
        elif node is not None:
            todo += list(node.input)
    return found


def heads_graph():
    """x [b, t, 32] -> 4 heads -> Transpose -> merged back, with targets computed the way the exporter writes
    `x.view(b, t, heads, d // heads)` and `out.transpose(1, 2).reshape(b, t, h * hd)`."""
    i64, f = TensorProto.INT64, TensorProto.FLOAT
    c = lambda name, v: helper.make_node("Constant", [], [name], value=helper.make_tensor(name, i64, [], [v]))  # noqa: E731
    dim = lambda src, i, out: [helper.make_node("Shape", [src], [f"{out}_s"]), c(f"{out}_i", i),  # noqa: E731
                               helper.make_node("Gather", [f"{out}_s", f"{out}_i"], [f"{out}_g"], axis=0),
                               helper.make_node("Unsqueeze", [f"{out}_g", "zero"], [out])]
    nodes = [helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero", i64, [1], [0])),
             *dim("x", 0, "b"), *dim("x", 1, "t"),
             helper.make_node("Constant", [], ["h"], value=helper.make_tensor("h", i64, [1], [4])),
             helper.make_node("Constant", [], ["hd"], value=helper.make_tensor("hd", i64, [1], [8])),
             helper.make_node("Concat", ["b", "t", "h", "hd"], ["split"], axis=0),
             helper.make_node("Reshape", ["x", "split"], ["xh"], name="/Reshape"),
             helper.make_node("Transpose", ["xh"], ["heads"], perm=[0, 2, 1, 3]),
             helper.make_node("Relu", ["heads"], ["o"]),  # stands for attention: [b, h, t, hd]
             *dim("o", 0, "ob"), *dim("o", 2, "ot"),
             helper.make_node("Shape", ["o"], ["o_s"]), c("i1", 1), c("i3", 3),
             helper.make_node("Gather", ["o_s", "i1"], ["oh"], axis=0),
             helper.make_node("Gather", ["o_s", "i3"], ["ohd"], axis=0),
             helper.make_node("Mul", ["oh", "ohd"], ["ohh"]),
             helper.make_node("Unsqueeze", ["ohh", "zero"], ["od"]),
             helper.make_node("Transpose", ["o"], ["ot_"], perm=[0, 2, 1, 3]),
             helper.make_node("Concat", ["ob", "ot", "od"], ["merge"], axis=0),
             helper.make_node("Reshape", ["ot_", "merge"], ["y"], name="/Reshape_1")]
    graph = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("x", f, ["b", "t", 32])],
                              [helper.make_tensor_value_info("y", f, ["b", "t", 32])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_constant_reshapes_are_bit_identical_and_drop_the_shape_arithmetic():
    model = heads_graph()
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 5, 32), dtype=np.float32)}
    want = run(model, feeds)[0]
    assert constant_reshapes(model) == 2
    onnx.checker.check_model(model)
    assert np.array_equal(run(model, feeds)[0], want)
    targets = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in model.graph.initializer}
    assert targets == {"/Reshape/shape": [0, 0, 4, 8], "/Reshape_1/shape": [0, 0, -1]}
    assert not {"Shape", "Gather", "Concat", "Mul"} & {n.op_type for n in model.graph.node}
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 1, 32), dtype=np.float32)}  # other b, t: still dynamic
    assert run(model, feeds)[0].shape == (2, 1, 32)
    assert constant_reshapes(model) == 0  # nothing left: applying it twice is harmless


def test_a_dimension_read_from_another_tensor_is_left_alone():
    """b taken from a tensor the reshape does not read is not provably the data's dimension 0: with the merge's
    product also unknown, two dimensions would be -1, so that target stays computed."""
    model = heads_graph()
    for node in model.graph.node:
        if node.output[0] == "ob_s":
            node.input[0] = "x"  # Shape(x)[0] equals o's dimension 0 here, but nothing in the graph says so
    assert constant_reshapes(model) == 1
    assert [n.name for n in model.graph.node if n.op_type == "Reshape" and n.input[1] == "merge"] == ["/Reshape_1"]


def test_channel_split_transpose_is_rewritten_with_bit_identical_outputs():
    """DaViT's q/k/v split, reshape(B, N, 3, h, d).permute(2, 0, 3, 4, 1), with the reshape target computed at run
    time as the exporter traces it; batch 3 so the block transpose after the move really moves data."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [
        helper.make_node("Shape", ["x"], ["bn"], start=0, end=2),
        helper.make_node("Concat", ["bn", "hd"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["qkv"]),
        helper.make_node("Transpose", ["qkv"], ["split"], name="/channel_attn/Transpose", perm=[2, 0, 3, 4, 1]),
        helper.make_node("Transpose", ["x"], ["other"], perm=[1, 0, 2]),  # not the pattern: stays
    ]
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", f, ["b", "n", 24])],
                              [helper.make_tensor_value_info("split", f, [3, "b", 2, 4, "n"]),
                               helper.make_tensor_value_info("other", f, ["n", "b", 24])],
                              [helper.make_tensor("hd", i64, [3], [3, 2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((3, 10, 24)).astype(np.float32)
    before = run(model, {"x": x})
    assert channel_split_transposes(model) == 1
    onnx.checker.check_model(model)
    perms = sorted(tuple(a.ints) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute)
    assert perms == [(0, 2, 1), (1, 0, 2), (1, 0, 2, 3, 4)]
    after = run(model, {"x": x})
    assert after[0].shape == (3, 3, 2, 4, 10)
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a, b)


def _position_encoding(nodes, inits, x: str, y: str, tag: str, c: int, extra_reader: bool = False) -> None:
    """DaViT's convolutional position encoding as the exporter traces it, tokens `x` -> tokens `y`: Transpose,
    Reshape to [B, C, H, W] (target from x's shape), depthwise conv, residual add in NCHW, Reshape, Transpose."""
    rng = np.random.default_rng(len(nodes))
    inits += [numpy_helper.from_array(rng.standard_normal((c, 1, 3, 3)).astype(np.float32), f"{tag}.w"),
              numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{tag}.b")]
    nodes += [helper.make_node("Transpose", [x], [f"{tag}/t1"], perm=[0, 2, 1]),
              helper.make_node("Shape", [x], [f"{tag}/xs"]),
              helper.make_node("Gather", [f"{tag}/xs", "i0"], [f"{tag}/b"], axis=0),
              helper.make_node("Concat", [f"{tag}/b", "chw"], [f"{tag}/s4"], axis=0),
              helper.make_node("Reshape", [f"{tag}/t1", f"{tag}/s4"], [f"{tag}/r"]),
              helper.make_node("Shape", [f"{tag}/r"], [f"{tag}/r_shape"]),  # read by the next block, as in DaViT
              helper.make_node("Conv", [f"{tag}/r", f"{tag}.w", f"{tag}.b"], [f"{tag}/c"], name=f"{tag}/conv", group=c,
                               pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
              helper.make_node("Add", [f"{tag}/c", f"{tag}/r"], [f"{tag}/a"]),
              helper.make_node("Shape", [f"{tag}/a"], [f"{tag}/as"]),
              helper.make_node("Slice", [f"{tag}/as", "i0", "two"], [f"{tag}/bc"]),
              helper.make_node("Concat", [f"{tag}/bc", "minus_one"], [f"{tag}/s3"], axis=0),
              helper.make_node("Reshape", [f"{tag}/a", f"{tag}/s3"], [f"{tag}/f"]),
              helper.make_node("Transpose", [f"{tag}/f"], [y], perm=[0, 2, 1])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", [f"{tag}/r"], [f"{tag}/other"]))


def test_depthwise_channels_last_is_bit_identical_and_leaves_shared_tensors_alone():
    c, h, w = 16, 4, 6
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes, inits = [], [numpy_helper.from_array(np.array([0], np.int64), "i0"),
                        numpy_helper.from_array(np.array([c, h, w], np.int64), "chw"),
                        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
                        numpy_helper.from_array(np.array([2], np.int64), "two")]
    _position_encoding(nodes, inits, "x", "y1", "pe1", c)
    _position_encoding(nodes, inits, "y1", "y2", "pe2", c, extra_reader=True)  # its NCHW tensor has another reader
    graph = helper.make_graph(nodes, "pe", [helper.make_tensor_value_info("x", f, ["b", h * w, c])],
                              [helper.make_tensor_value_info("y2", f, ["b", h * w, c]),
                               helper.make_tensor_value_info("pe1/r_shape", i64, [4]),
                               helper.make_tensor_value_info("pe2/other", f, ["b", c, h, w])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((3, h * w, c)).astype(np.float32)
    before = run(model, {"x": x})
    assert depthwise_channels_last(model) == 1
    onnx.checker.check_model(model)
    transposes = {n.output[0]: tuple(a.ints) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute}
    assert sorted(transposes.values()) == [(0, 2, 1), (0, 2, 1), (0, 2, 3, 1), (0, 3, 1, 2)]  # pe2 kept its pair
    assert "pe1/t1" not in transposes and "y1" not in transposes  # pe1's rank-3 moves are gone
    assert next(n for n in model.graph.node if "y1" in n.output).op_type == "Add"  # the residual, in token order
    after = run(model, {"x": x})
    assert list(after[1]) == [3, c, h, w]  # the shape reader gets the NCHW shape
    for a, b in zip(before, after, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert depthwise_channels_last(model) == 0
