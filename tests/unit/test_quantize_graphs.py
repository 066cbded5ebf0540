"""Graph-level quantisation on hand-made ONNX graphs: sensitivity ranking and TensorRT's explicit Q/DQ form.

No GPU here: the TensorRT test checks the graph structure TensorRT needs for INT8 engines (symmetric int8
Q/DQ, zero points 0, per-channel weight scales), and that onnxruntime runs it; no engine is built.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tiercel.quantize.onnx_backend import quantize_graph, weight_layers  # noqa: E402
from tiercel.quantize.schemes import get_scheme  # noqa: E402
from tiercel.quantize.sensitivity import fake_quantize, layer_sensitivity, table  # noqa: E402


def _as_the_runtime_opens_them(ort):
    """SessionOptions with tiercel's CPU session config: no u8 x s8 saturation on CPUs without VNNI."""
    from tiercel.runtime.backends import ORT_CPU_CONFIG

    options = ort.SessionOptions()
    for key, value in ORT_CPU_CONFIG.items():
        options.add_session_config_entry(key, value)
    return options


def _mlp(path, outlier_layer: str | None = None, d: int = 64):
    """x -> fc_a -> Relu -> * mask -> fc_b -> fc_c -> y. `outlier_layer` gets one huge weight per 32-row block on
    rows whose inputs the mask zeroes: fp32 ignores them, but their int4 block scale wipes out the rest."""
    rng = np.random.default_rng(0)
    weights = {n: rng.standard_normal((d, d)).astype(np.float32) * 0.1 for n in ("fc_a", "fc_b", "fc_c")}
    if outlier_layer:
        weights[outlier_layer][::32, :] = 50.0
    mask = np.ones(d, np.float32)
    mask[::32] = 0.0
    nodes = [helper.make_node("MatMul", ["x", "fc_a.w"], ["a"], name="fc_a"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "mask"], ["m"], name="mask"),
             helper.make_node("MatMul", ["m", "fc_b.w"], ["b"], name="fc_b"),
             helper.make_node("MatMul", ["b", "fc_c.w"], ["y"], name="fc_c")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", d])],
                              [numpy_helper.from_array(w, f"{n}.w") for n, w in weights.items()]
                              + [numpy_helper.from_array(mask, "mask")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return [{"x": rng.standard_normal((4, d)).astype(np.float32)} for _ in range(3)]


def test_sensitivity_ranks_the_deliberately_sensitive_layer_first(tmp_path):
    feeds = _mlp(tmp_path / "mlp.onnx", outlier_layer="fc_b")
    rows = layer_sensitivity(tmp_path / "mlp.onnx", feeds, get_scheme("int4-weight-only"))
    assert [r["node"] for r in rows][0] == "fc_b"
    assert rows[0]["error"] > 5 * rows[1]["error"] > 0
    assert table(rows).row_count == 3


def test_sensitivity_is_the_output_error_with_only_that_layer_quantized_also_from_external_data(tmp_path):
    """Each row's error is ||y_q - y|| / ||y|| with only that weight rounded (checked in numpy), and a graph
    saved with external data (as bundles past 2 GB are) gives the same rows."""
    feeds = _mlp(tmp_path / "mlp.onnx")
    spec = get_scheme("int8-static")
    rows = layer_sensitivity(tmp_path / "mlp.onnx", feeds, spec)
    model = onnx.load(str(tmp_path / "mlp.onnx"))
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def forward(x, **quantized):
        get = lambda n: quantized.get(n, w[f"{n}.w"])  # noqa: E731
        return ((np.maximum(x @ get("fc_a"), 0) * w["mask"]) @ get("fc_b")) @ get("fc_c")

    for row in rows:
        q = {row["node"]: fake_quantize(w[row["weight"]], "MatMul", spec)}
        expected = np.mean([np.linalg.norm(forward(f["x"], **q) - forward(f["x"])) / np.linalg.norm(forward(f["x"]))
                            for f in feeds])
        assert row["error"] == pytest.approx(expected, rel=1e-3) and row["error"] > 0
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 3 * 64 * 64 * 4
    external = layer_sensitivity(tmp_path / "ext.onnx", feeds, spec, graph="mlp")
    assert [(r["node"], r["error"]) for r in external] == [(r["node"], r["error"]) for r in rows]


def test_fake_quantize_int8_per_channel_and_int4_blocks_are_close_but_not_exact():
    w = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    for spec, tol in ((get_scheme("int8-static"), 0.01), (get_scheme("int4-weight-only"), 0.2)):
        q = fake_quantize(w, "MatMul", spec)
        err = np.abs(q - w).max() / np.abs(w).max()
        assert 0 < err < tol


def test_fake_quantize_int8_weight_only_uses_its_blocks_not_one_scale_per_channel():
    """A K-block of small weights keeps its own scale: per-channel int8 rounds it to a coarse grid set by the
    large block, int8-weight-only (blocks of 32 along K) to a grid 100x finer."""
    w = np.random.default_rng(2).standard_normal((64, 8)).astype(np.float32)
    w[32:] *= 0.01
    blocks = fake_quantize(w, "MatMul", get_scheme("int8-weight-only", block_size=32))
    channel = fake_quantize(w, "MatMul", get_scheme("int8-dynamic"))
    scale = np.abs(w[32:]).max(axis=0) / 127.0  # the small block's own step, per column
    assert np.allclose(np.round(blocks[32:] / scale) * scale, blocks[32:], atol=1e-7)
    assert np.abs(blocks[32:] - w[32:]).max() <= scale.max() / 2 + 1e-7
    assert np.abs(channel[32:] - w[32:]).max() > 10 * np.abs(blocks[32:] - w[32:]).max()


def test_tensorrt_target_writes_symmetric_int8_qdq_on_every_weight_layer(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    feeds = _mlp(tmp_path / "mlp.onnx")
    report = quantize_graph(tmp_path / "mlp.onnx", tmp_path / "trt.onnx", get_scheme("int8-static"), feeds=feeds,
                            target="tensorrt")
    assert sorted(report["quantized"]) == ["fc_a", "fc_b", "fc_c"]
    model = onnx.load(str(tmp_path / "trt.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in (n for n in model.graph.node if n.op_type == "MatMul"):
        act, weight = (producer.get(i) for i in node.input)
        assert act.op_type == "DequantizeLinear" and weight.op_type == "DequantizeLinear", node.name
        w = inits[weight.input[0]]
        assert w.dtype == np.int8 and inits[weight.input[1]].shape == (64,)  # per output channel
        assert producer[act.input[0]].op_type == "QuantizeLinear"
    for q in (n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        zero = inits[q.input[2]]
        assert zero.dtype == np.int8 and not zero.any()  # symmetric: TensorRT takes zero points of 0 only
    exact = _as_the_runtime_opens_them(ort)
    y = ort.InferenceSession(str(tmp_path / "trt.onnx"), exact).run(None, feeds[0])[0]
    ref = ort.InferenceSession(str(tmp_path / "mlp.onnx")).run(None, feeds[0])[0]
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.05


def test_weight_layers_skip_activation_matmuls_and_position_tables(tmp_path):
    _mlp(tmp_path / "mlp.onnx")
    proto = onnx.load(str(tmp_path / "mlp.onnx"))
    assert [x["node"] for x in weight_layers(proto)] == ["fc_a", "fc_b", "fc_c"]


def test_onnxruntime_int8_static_runs_convs_as_qlinearconv_and_matmuls_as_integer_to_float(tmp_path):
    """The pointwise conv becomes QLinearConv (int8 in and out), the MatMul MatMulIntegerToFloat (fp32 out), the
    depthwise conv stays fp32 (onnxruntime's int8 depthwise kernel is the slower one); the output stays close to fp32's."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    c = 8
    inits = {"pw.w": rng.standard_normal((c, c, 1, 1)), "dw.w": rng.standard_normal((c, 1, 3, 3)),
             "fc.w": rng.standard_normal((c, c))}
    nodes = [helper.make_node("Conv", ["x", "pw.w"], ["p"], name="pw"),
             helper.make_node("Add", ["p", "x"], ["r"], name="res"),  # as in DaViT: the depthwise conv reads fp32
             helper.make_node("Conv", ["r", "dw.w"], ["d"], name="dw", group=c, pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["d"], ["t"], name="nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["t", "fc.w"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 6, c])],
                              [numpy_helper.from_array(w.astype(np.float32), n) for n, w in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    feeds = [{"x": rng.standard_normal((1, c, 6, 6)).astype(np.float32)} for _ in range(4)]
    report = quantize_graph(tmp_path / "g.onnx", tmp_path / "q.onnx", get_scheme("int8-static"), "vision", feeds)
    assert report["quantized"] == ["pw", "fc"]  # the depthwise conv stays fp32
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert "y" not in {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}  # fc's output is fp32
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "q.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = {n.name: n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert sorted(ops.values()).count("QLinearConv") == 1 and "MatMulIntegerToFloat" in ops.values()
    assert list(ops.values()).count("Conv") == 1  # the depthwise one, fp32 (in whatever layout onnxruntime picks)
    exact = _as_the_runtime_opens_them(ort)
    y = ort.InferenceSession(str(tmp_path / "q.onnx"), exact, providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    ref = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.05


def test_int8_static_leaves_a_shared_bias_constant_for_the_convs_it_keeps_in_fp32(tmp_path):
    """The exporter stores equal biases once, read through Identity; quantizing the owner's conv must not put a
    DequantizeLinear in front of the depthwise conv's bias, or onnxruntime loses its NCHWc kernel for it."""
    import onnxruntime as ort

    from tiercel.quantize.onnx_backend import own_vectors

    rng = np.random.default_rng(0)
    c = 16  # NCHWc needs channels in multiples of its block
    inits = {"pw.w": rng.standard_normal((c, c, 1, 1)), "pw.b": np.zeros(c), "dw.w": rng.standard_normal((c, 1, 3, 3))}
    nodes = [helper.make_node("Identity", ["pw.b"], ["dw.b"], name="shared"),
             helper.make_node("Conv", ["x", "pw.w", "pw.b"], ["p"], name="pw"),
             helper.make_node("Add", ["p", "x"], ["r"], name="res"),
             helper.make_node("Conv", ["r", "dw.w", "dw.b"], ["y"], name="dw", group=c, pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", c, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", c, 8, 8])],
                              [numpy_helper.from_array(w.astype(np.float32), n) for n, w in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    feeds = [{"x": rng.standard_normal((1, c, 8, 8)).astype(np.float32)} for _ in range(4)]
    quantize_graph(tmp_path / "g.onnx", tmp_path / "q.onnx", get_scheme("int8-static"), "vision", feeds)
    q = onnx.load(str(tmp_path / "q.onnx"))
    dw = next(n for n in q.graph.node if n.name == "dw")
    assert dw.input[2] in {i.name for i in q.graph.initializer} and "Identity" not in {n.op_type for n in q.graph.node}
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "q.onnx"), opts, providers=["CPUExecutionProvider"])
    assert ("com.microsoft.nchwc", "Conv") in {(n.domain, n.op_type) for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    shared = onnx.load(str(tmp_path / "g.onnx"))
    assert own_vectors(shared) == 1 and own_vectors(shared) == 0  # idempotent


def _ov_matmul(w: np.ndarray):
    ov = pytest.importorskip("openvino")
    import openvino.opset13 as ops

    x = ops.parameter([-1, w.shape[0]], np.float32, name="x")
    return ov.Model([ops.matmul(x, ops.constant(w), False, False)], [x], "mm")


@pytest.mark.parametrize("best", ["data-free", "awq", "awq+scale_estimation"])
def test_openvino_int4_keeps_the_candidate_with_the_smallest_held_out_error(best):
    """Data-aware NNCF steps are candidates, not defaults: each is fitted on the first half of the feeds and the
    one whose output is closest to fp32 on the second half is kept (scale estimation measured far worse here)."""
    from tiercel.quantize.openvino_backend import DATA_AWARE, choose_compression

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    feeds = [{"x": rng.standard_normal((3, 16)).astype(np.float32)} for _ in range(10)]
    noise = {name: (0.0 if name == best else 0.05 * (i + 1)) for i, name in enumerate(["data-free", *DATA_AWARE])}
    fitted = []

    def compress(fit, awq=False, scale_estimation=False):  # stands in for nncf.compress_weights
        name = "data-free" if not fit else ("awq+scale_estimation" if scale_estimation else "awq")
        fitted.append((name, None if fit is None else len(fit)))
        return _ov_matmul(w + noise[name] * np.abs(w))

    model, report = choose_compression(_ov_matmul(w), compress, feeds)
    assert report["chosen"] == best and report["data_aware"][best] == 0.0
    assert report["awq"] is (best != "data-free") and report["scale_estimation"] is (best == "awq+scale_estimation")
    assert sorted(report["data_aware"], key=report["data_aware"].get)[0] == best
    assert fitted == [("data-free", None), ("awq", 5), ("awq+scale_estimation", 5)]  # data-aware fitted on half
    ov = pytest.importorskip("openvino")
    x = feeds[-1]["x"]
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled({"x": x})[0], x @ w, rtol=1e-5, atol=1e-5)


def _ov_masked_attention(fq: bool):
    """softmax(q k^T / 2 + mask) as the export writes a causal mask: Convert(Greater(range(len), len - 2)) * min,
    over a dynamic key length; `fq` puts a FakeQuantize on the keys, as nncf.quantize does."""
    ov = pytest.importorskip("openvino")
    import openvino.opset13 as ops

    q, k = ops.parameter([1, 4], np.float32, name="q"), ops.parameter([-1, 4], np.float32, name="k")
    lo, hi = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
    keys = ops.fake_quantize(k, lo, hi, lo, hi, 256) if fq else k
    n = ops.gather(ops.shape_of(k), ops.constant(np.int64(0)), ops.constant(np.int64(0)))
    positions = ops.unsqueeze(ops.range(ops.constant(np.int64(0)), n, ops.constant(np.int64(1)), "i64"), ops.constant(np.int64(0)))
    later = ops.greater(positions, ops.subtract(n, ops.constant(np.int64(2))))
    mask = ops.multiply(ops.convert(later, "f32"), ops.constant(np.float32(np.finfo(np.float32).min)))
    scores = ops.multiply(ops.matmul(q, keys, False, True), ops.constant(np.float32(0.5)))
    return ov.Model([ops.softmax(ops.add(scores, mask), 1)], [q, k], "attention")


def test_openvino_int8_static_keeps_attention_masks_in_float():
    """Once a graph holds a FakeQuantize, OpenVINO's CPU plugin took the mask's Convert(bool) * min for an int8
    dequantisation and added mask and scores in u8 (the demo student's int8-static decoder with past: held-out error
    0.27; here every score came out 0 and the attention uniform, 0.25 each). quantize_ir turns those Converts into
    Select first: the same values, and no pattern the plugin takes for a dequantisation."""
    ov = pytest.importorskip("openvino")
    from tiercel.quantize.openvino_backend import booleans_as_select

    rng = np.random.default_rng(0)
    x = {"q": rng.standard_normal((1, 4)).astype(np.float32), "k": rng.standard_normal((5, 4)).astype(np.float32)}
    s = (x["q"] @ x["k"].T / 2)[0, :4]  # the last key is masked out
    want = np.append(np.exp(s - s.max()) / np.exp(s - s.max()).sum(), 0.0)
    model = _ov_masked_attention(fq=True)
    assert booleans_as_select(model) == 1 and booleans_as_select(model) == 0
    got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0][0]
    np.testing.assert_allclose(got, want, atol=5e-3)  # the keys' int8 grid (step 8 / 255) is the only error left
    plain = _ov_masked_attention(fq=False)
    booleans_as_select(plain)
    exact = ov.Core().compile_model(plain, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0][0]
    np.testing.assert_allclose(exact, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("best", ["nncf-default", "minmax"])
def test_openvino_int8_static_checks_nncf_defaults_and_recalibrates_the_winner_on_every_feed(best):
    """SmoothQuant and NNCF's activation ranges are a candidate, not the default: the calibration whose output is
    closer to fp32 on the held-out half wins, and is then calibrated again on all feeds."""
    from tiercel.quantize.openvino_backend import choose_calibration

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    feeds = [{"x": rng.standard_normal((3, 16)).astype(np.float32)} for _ in range(10)]
    calls = []

    def calibrate(fit, minmax=False):  # stands in for nncf.quantize
        name = "minmax" if minmax else "nncf-default"
        calls.append((name, len(fit)))
        return _ov_matmul(w + (0.0 if name == best else 0.05) * np.abs(w))

    model, report = choose_calibration(_ov_matmul(w), calibrate, feeds)
    assert report["calibration"] == best and report["calibration_check"][best] == 0.0
    assert report["calibration_check"][{"minmax": "nncf-default", "nncf-default": "minmax"}[best]] > 0.01
    assert calls == [("nncf-default", 5), ("minmax", 5), (best, 10)]  # candidates on half, the winner on all 10


def test_openvino_int4_scale_estimation_works_on_the_exported_weight_layout(tmp_path):
    """The export stores MatMul weights [K, N]; NNCF 3.4's scale estimation returned garbage on that layout (here:
    relative error 60662 where data-free had 0.084). quantize_ir turns them to [N, K] first: same product, names kept."""
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import openvino.opset13 as ops

    from tiercel.quantize.openvino_backend import quantize_ir, weights_n_major

    rng = np.random.default_rng(0)
    # 256 outputs: on this layout the bug shows from about 128 (at 64 scale estimation still worked)
    w, head = rng.standard_normal((64, 256)).astype(np.float32), rng.standard_normal((256, 64)).astype(np.float32)
    x = ops.parameter([1, -1, 64], np.float32, name="x")
    # two layers: NNCF keeps the last one (a model's lm_head) in int8, so the first is the int4 one
    y = ops.matmul(ops.matmul(x, ops.constant(w), False, False), ops.constant(head), False, False)
    y.output(0).get_tensor().set_names({"y"})
    w = w @ head  # the product the graph computes
    ov.save_model(ov.Model([y], [x], "mm"), str(tmp_path / "mm.xml"), compress_to_fp16=False)
    feeds = [{"x": rng.standard_normal((1, 30, 64)).astype(np.float32)} for _ in range(8)]
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}

    turned = ov.Core().read_model(str(tmp_path / "mm.xml"))
    assert weights_n_major(turned) == 2 and weights_n_major(turned) == 0  # once; already [N, K] the second time
    out = ov.Core().compile_model(turned, "CPU", f32)({"x": feeds[0]["x"]})
    np.testing.assert_allclose(out["y"], feeds[0]["x"] @ w, rtol=1e-5, atol=1e-4)

    report = quantize_ir(tmp_path / "mm.xml", tmp_path / "q.xml", get_scheme("int4-weight-only"), feeds=feeds)
    errors = report["data_aware"]
    assert errors["awq+scale_estimation"] < 1.5 * errors["data-free"] < 0.2, errors
    q = ov.Core().compile_model(str(tmp_path / "q.xml"), "CPU", f32)
    got = q({"x": feeds[-1]["x"]})["y"]  # the output keeps its name
    want = feeds[-1]["x"] @ w
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.2


def test_int8_weight_only_writes_8_bit_matmulnbits_and_leaves_convs_and_excluded_layers_in_fp32(tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    c = 64
    inits = {"pw.w": rng.standard_normal((c, c, 1, 1)), "fc.w": rng.standard_normal((c, c)),
             "fc2.w": rng.standard_normal((c, c))}
    nodes = [helper.make_node("Conv", ["x", "pw.w"], ["p"], name="pw"),
             helper.make_node("Transpose", ["p"], ["t"], name="nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["t", "fc.w"], ["h"], name="fc"),
             helper.make_node("MatMul", ["h", "fc2.w"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, c])],
                              [numpy_helper.from_array(w.astype(np.float32), n) for n, w in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    spec = get_scheme("int8-weight-only", block_size=32)
    report = quantize_graph(tmp_path / "g.onnx", tmp_path / "q.onnx", spec, "decoder", exclude=["fc2"])
    assert report["quantized"] == ["fc"] and report["excluded"] == ["fc2"] and report["kept_in"] == "fp32"
    q = onnx.load(str(tmp_path / "q.onnx"))
    ops = {n.name: n for n in q.graph.node}
    nbits = [n for n in q.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 1 and {a.name: a.i for a in nbits[0].attribute}["bits"] == 8
    assert {a.name: a.i for a in nbits[0].attribute}["block_size"] == 32
    assert ops["fc2"].op_type == "MatMul" and ops["pw"].op_type == "Conv"  # excluded and conv: fp32
    x = {"x": rng.standard_normal((1, c, 4, 4)).astype(np.float32)}
    y = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, x)[0]
    ref = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert 0 < np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.02  # int8 blocks: close, not exact


def test_openvino_int8_weight_only_is_nncf_int8_weight_compression(tmp_path):
    """On OpenVINO the scheme is int8-dynamic's NNCF INT8_SYM compression: the same weights bit for bit."""
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import openvino.opset13 as ops

    from tiercel.quantize.openvino_backend import quantize_ir

    rng = np.random.default_rng(0)
    x = ops.parameter([1, -1, 64], np.float32, name="x")
    y = ops.matmul(x, ops.constant(rng.standard_normal((64, 64)).astype(np.float32)), False, False)
    y.output(0).get_tensor().set_names({"y"})
    ov.save_model(ov.Model([y], [x], "mm"), str(tmp_path / "mm.xml"), compress_to_fp16=False)
    reports = {s: quantize_ir(tmp_path / "mm.xml", tmp_path / f"{s}.xml", get_scheme(s)) for s in ("int8-weight-only", "int8-dynamic")}
    assert reports["int8-weight-only"]["mode"] == reports["int8-dynamic"]["mode"] == "int8_sym"
    assert (tmp_path / "int8-weight-only.bin").read_bytes() == (tmp_path / "int8-dynamic.bin").read_bytes()
    assert (tmp_path / "int8-weight-only.bin").stat().st_size < (tmp_path / "mm.bin").stat().st_size / 3


def test_openvino_keeps_back_a_layer_the_ir_renamed_after_its_output(tmp_path):
    """The ONNX frontend names a node that writes a graph output after the output (the lm_head MatMul becomes
    `logits`), so the guard's ONNX name missed it and the layer stayed int8. quantize_ir finds it through the
    ONNX graph, keeps it in fp32, and reports a name found in neither way instead of counting it as kept."""
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from tiercel.quantize.openvino_backend import quantize_ir

    _mlp(tmp_path / "mlp.onnx")
    ov.save_model(ov.convert_model(str(tmp_path / "mlp.onnx")), str(tmp_path / "mlp.xml"), compress_to_fp16=False)
    names = {op.get_friendly_name() for op in ov.Core().read_model(str(tmp_path / "mlp.xml")).get_ops()}
    assert "fc_c" not in names and {"fc_a", "fc_b", "y"} <= names  # the renaming this test is about
    cache = {}
    report = quantize_ir(tmp_path / "mlp.xml", tmp_path / "q.xml", get_scheme("int8-dynamic"),
                         exclude=["fc_c", "fc_a", "fused_away"], onnx_file=tmp_path / "mlp.onnx", cache=cache)
    assert report["excluded"] == ["fc_a", "fc_c"] and report["unmatched"] == ["fused_away"]
    (tmp_path / "mlp.onnx").rename(tmp_path / "moved.onnx")  # a retry reads the names from the cache, not the file
    again = quantize_ir(tmp_path / "mlp.xml", tmp_path / "q.xml", get_scheme("int8-dynamic"),
                        exclude=["fc_c", "fc_a", "fused_away"], onnx_file=tmp_path / "mlp.onnx", cache=cache)
    assert again["excluded"] == report["excluded"] and again["unmatched"] == report["unmatched"]
    ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(tmp_path / "q.xml")).get_ops()}
    weight = {n: ops[n].input_value(1).get_node() for n in ("fc_a", "fc_b", "y")}
    assert {n: (w.get_type_name(), w.get_element_type().get_type_name()) for n, w in weight.items() if w.get_type_name() == "Constant"} \
        == {"fc_a": ("Constant", "f32"), "y": ("Constant", "f32")}  # fc_b alone is compressed (int8 -> Convert)


def test_layer_units_join_the_same_weight_across_graphs_only():
    from tiercel.quantize.sensitivity import digest, units

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert digest(w, "MatMul") == digest(w.copy(), "MatMul") != digest(w.T.copy(), "MatMul") != digest(w, "Gather")
    rows = [{"graph": "decoder_model", "node": "lm", "digest": "a", "error": 0.9},
            {"graph": "vision", "node": "fc", "digest": "b", "error": 0.5},
            {"graph": "decoder_with_past_model", "node": "lm", "digest": "a", "error": 0.4},
            {"graph": "vision", "node": "fc2", "digest": "b", "error": 0.3},  # equal weights in one graph: two layers
            {"graph": "encoder", "node": "old", "error": 0.2}]  # a row without a digest (an older sensitivity.json)
    assert [[(r["graph"], r["node"]) for r in u] for u in units(rows)] == [
        [("decoder_model", "lm"), ("decoder_with_past_model", "lm")], [("vision", "fc")], [("vision", "fc2")],
        [("encoder", "old")]]


def _decoder_head(path, d: int = 64, vocab: int = 96):
    """x -> fc -> lm_head -> + bias -> logits, and an embedding table graph beside it (the tied matrix)."""
    rng = np.random.default_rng(1)
    fc, head = rng.standard_normal((d, d)).astype(np.float32), rng.standard_normal((d, vocab)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "fc.w"], ["h"], name="fc"),
             helper.make_node("MatMul", ["h", "head.w"], ["z"], name="lm_head"),
             helper.make_node("Add", ["z", "bias"], ["logits"], name="final_bias")]
    graph = helper.make_graph(nodes, "dec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", vocab])],
                              [numpy_helper.from_array(fc, "fc.w"), numpy_helper.from_array(head, "head.w"),
                               numpy_helper.from_array(np.zeros(vocab, np.float32), "bias")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path / "dec.onnx"))
    table = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"], name="embed")], "emb",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["n", d])],
                              [numpy_helper.from_array(head.T.copy(), "table")])
    onnx.save(helper.make_model(table, opset_imports=[helper.make_opsetid("", 17)]), str(path / "emb.onnx"))
    return [{"x": rng.standard_normal((4, d)).astype(np.float32)} for _ in range(3)]


def _bits(path) -> dict[str, int]:
    graph = onnx.load(str(path)).graph
    return {n.name: next((a.i for a in n.attribute if a.name == "bits"), 4) for n in graph.node  # 4: the op default
            if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}


def test_int4_keeps_the_lm_head_and_the_embedding_table_in_int8_blocks_unless_all_layers(tmp_path):
    """NNCF's convention on onnxruntime: under int4 the lm_head (found through the bias Add to `logits`) and the
    token-embedding table are int8 blocks; all_layers puts them in int4 like the rest."""
    from tiercel.quantize.onnx_backend import int8_backup

    _decoder_head(tmp_path)
    spec, every = get_scheme("int4-weight-only"), get_scheme("int4-weight-only", all_layers=True)
    assert int8_backup(onnx.load(str(tmp_path / "dec.onnx")), spec, "decoder") == ["lm_head"]
    assert int8_backup(onnx.load(str(tmp_path / "dec.onnx")), every, "decoder") == []
    assert int8_backup(onnx.load(str(tmp_path / "dec.onnx")), get_scheme("int8-weight-only"), "decoder") == []

    report = quantize_graph(tmp_path / "dec.onnx", tmp_path / "q.onnx", spec, "decoder")
    assert report["quantized"] == ["fc"] and report["int8_layers"] == ["lm_head"] and report["excluded"] == []
    assert _bits(tmp_path / "q.onnx") == {"fc_Q4": 4, "lm_head_Q8": 8}
    report = quantize_graph(tmp_path / "emb.onnx", tmp_path / "qe.onnx", spec, "embeddings")
    assert report["quantized"] == [] and report["int8_layers"] == ["embed"]
    assert _bits(tmp_path / "qe.onnx") == {"embed_Q8": 8}

    report = quantize_graph(tmp_path / "dec.onnx", tmp_path / "a.onnx", every, "decoder")
    assert report["quantized"] == ["fc", "lm_head"] and "int8_layers" not in report
    assert set(_bits(tmp_path / "a.onnx").values()) == {4}
    quantize_graph(tmp_path / "emb.onnx", tmp_path / "ae.onnx", every, "embeddings")
    assert set(_bits(tmp_path / "ae.onnx").values()) == {4}
    # the guard's last retry asks for fp32: a kept-back lm_head leaves the int8 blocks for fp32
    report = quantize_graph(tmp_path / "dec.onnx", tmp_path / "f.onnx", spec, "decoder", exclude=["lm_head"], keep_in="fp32")
    assert "int8_layers" not in report and _bits(tmp_path / "f.onnx") == {"fc_Q4": 4}


def test_sensitivity_ranks_an_int4_bundles_int8_layers_at_int8(tmp_path):
    """The lm_head that int4 stores in int8 blocks is ranked by its int8 error, which is far below its int4 one."""
    feeds = _decoder_head(tmp_path)
    rows = {r["node"]: r["error"] for r in layer_sensitivity(tmp_path / "dec.onnx", feeds, get_scheme("int4-weight-only"))}
    every = {r["node"]: r["error"] for r in
             layer_sensitivity(tmp_path / "dec.onnx", feeds, get_scheme("int4-weight-only", all_layers=True))}
    assert rows["fc"] == every["fc"]
    assert 0 < rows["lm_head"] < every["lm_head"] / 5


def test_openvino_int4_all_layers_puts_the_last_layer_in_int4_too(tmp_path):
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from tiercel.quantize.openvino_backend import quantize_ir

    _mlp(tmp_path / "mlp.onnx")
    ov.save_model(ov.convert_model(str(tmp_path / "mlp.onnx")), str(tmp_path / "mlp.xml"), compress_to_fp16=False)

    def weight_types(xml):
        ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(xml)).get_ops()}
        found = {}
        for name in ("fc_a", "fc_b", "y"):
            node = ops[name].input_value(1).get_node()
            while node.get_type_name() != "Constant":  # Convert / Subtract / Multiply / Reshape back to the weight
                node = node.input_value(0).get_node()
            found[name] = node.get_element_type().get_type_name()
        return found

    report = quantize_ir(tmp_path / "mlp.xml", tmp_path / "q.xml", get_scheme("int4-weight-only"))
    assert report["all_layers"] is False
    assert weight_types(tmp_path / "q.xml") == {"fc_a": "i4", "fc_b": "i4", "y": "u8"}  # NNCF: int8 asym backup
    report = quantize_ir(tmp_path / "mlp.xml", tmp_path / "a.xml", get_scheme("int4-weight-only", all_layers=True))
    assert report["all_layers"] is True and set(weight_types(tmp_path / "a.xml").values()) == {"i4"}
