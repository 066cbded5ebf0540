"""quantize_bundle on tiny bundles: calibration from real decode steps, int8/int4 bundles that the runtime loads
and runs, sizes, manifest records, and the accuracy guard's retries and failure report."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tests.bundles import tiny_bundle  # noqa: E402
from tests.quantize_data import synth_folder, wide_bundle  # noqa: E402

FAST = {"n": 4, "n_val": 4, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def fp32(tiny_model, tiny_tokenizer):
    return tiny_bundle(tiny_model, tiny_tokenizer)


@pytest.fixture(scope="module")
def wide(tiny_tokenizer):
    return wide_bundle(tiny_tokenizer)


def test_calibration_records_decoder_feeds_at_many_positions(fp32):
    from tiercel.quantize.calibrate import capture, load_samples

    samples = load_samples(synth_folder(), n=3)
    calib = capture(fp32, samples, n=64, max_new_tokens=6)
    assert len(calib.feeds["vision_encoder"]) == len(calib.feeds["decoder_model"]) == 3  # first step: once per sample
    past = calib.feeds["decoder_with_past_model"]
    assert len(past) > 3 and len(set(calib.positions)) >= 4 and min(calib.positions) == 1  # later steps, all positions
    assert past[0]["past_key_values.0.decoder.key"].shape[2] == calib.positions[0]
    assert calib.summary()["decoder_positions"]["distinct"] == len(set(calib.positions))


def test_recorded_decoder_caches_are_views_of_the_last_step_with_the_values_fed(fp32, monkeypatch):
    """The recorder keeps each step's self-attention cache as a view of the next step's (O(steps), not
    O(steps^2)); every recorded feed still holds exactly what the session was given at that step."""
    import tiercel.runtime
    from tiercel.quantize.calibrate import capture, load_samples

    fed, load = [], tiercel.runtime.load

    def spying_load(*args, **kwargs):  # a copy of every decoder_with_past feed, taken when it is fed
        model = load(*args, **kwargs)
        session = model.sessions["decoder_with_past_model"]
        run = session.run
        session.run = lambda feeds: fed.append({k: np.array(v) for k, v in feeds.items()}) or run(feeds)
        return model

    monkeypatch.setattr(tiercel.runtime, "load", spying_load)
    calib = capture(fp32, load_samples(synth_folder(), n=2), n=1000, max_new_tokens=6)
    past = calib.feeds["decoder_with_past_model"]
    assert len(past) == len(fed) > 4
    for got, want in zip(past, fed):
        assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    key = "past_key_values.0.decoder.key"
    last = [i for i, a in enumerate(past) if not any(np.shares_memory(a[key], b[key]) for b in past[i + 1:])]
    assert len(last) == 2  # one buffer per sample: every earlier step's cache is a view of the sample's last


def test_a_reordered_cache_stays_a_copy():
    from tiercel.quantize.calibrate import Recorder

    class Session:
        input_names = ["past_key_values.0.decoder.key"]

        def run(self, feeds):
            return {}

    rec, rng = Recorder(Session()), np.random.default_rng(0)
    first = rng.standard_normal((2, 1, 3, 4)).astype(np.float32)
    grown = np.concatenate([first[::-1], rng.standard_normal((2, 1, 1, 4)).astype(np.float32)], axis=2)  # beams swapped
    rec.run({"past_key_values.0.decoder.key": first})
    rec.run({"past_key_values.0.decoder.key": grown})
    assert rec.seen[0]["past_key_values.0.decoder.key"] is first


def test_samples_balance_tasks_when_capped(tmp_path):
    import shutil
    from collections import Counter

    from tiercel.data import iter_records
    from tiercel.quantize.calibrate import load_samples

    src = synth_folder()
    records = sorted(iter_records(src / "train.json"), key=lambda r: r.tag)  # a file grouped by task
    (tmp_path / "sorted.json").write_text(json.dumps([r.raw for r in records]))
    shutil.copytree(src / "images", tmp_path / "images")
    plain = Counter(s.tag for s in load_samples(tmp_path / "sorted.json", n=8))
    capped = Counter(s.tag for s in load_samples(tmp_path / "sorted.json", n=8, per_task=1))
    assert len(plain) <= 4 and len(capped) == 8 and set(capped.values()) == {1}


@pytest.mark.parametrize("scheme, decoder_ratio", [("int8-static", 0.36), ("int4-weight-only", 0.25)])
def test_quantized_bundles_shrink_load_and_generate(wide, tmp_path, scheme, decoder_ratio):
    import tiercel.runtime
    from tiercel.quantize import quantize_bundle

    out = tmp_path / scheme
    section = quantize_bundle(wide, out, scheme, calib=synth_folder(), **FAST)
    manifest = json.loads((out / "manifest.json").read_text())
    precisions = {g["name"]: g["precision"] for g in manifest["graphs"]}
    assert set(precisions.values()) == {scheme} and manifest["quantization"]["scheme"] == scheme
    for name in ("decoder_model", "decoder_with_past_model"):
        assert section.sizes[name]["ratio"] < decoder_ratio  # weights dominate these files
    assert section.sizes["total"]["bytes"] < 0.6 * section.sizes["total"]["fp32_bytes"]
    assert section.guard.run and 0 <= section.guard.token_agreement <= 1
    assert section.calibration["decoder_positions"]["distinct"] > 1  # activation ranges, or GPTQ's Hessians
    if scheme == "int4-weight-only":  # each MatMul says how it was rounded, and what held-out feeds showed
        q = next(g for g in manifest["graphs"] if g["name"] == "decoder_with_past_model")["quantization"]
        assert len(q["rounding"]) == q["layers"] > 0 and {r["method"] for r in q["rounding"]} <= {"gptq", "rtn"}
        # NNCF's convention: the lm_head of each decoder graph and the embedding table stay int8 blocks
        int8 = {g["name"]: g["quantization"].get("int8_layers") for g in manifest["graphs"]}
        assert int8 == {"vision_encoder": None, "embed_tokens": ["/embed/Gather"], "encoder_model": None,
                        "decoder_model": ["/lm_head/MatMul"], "decoder_with_past_model": ["/lm_head/MatMul"]}
        assert q["all_layers"] is False
    model = tiercel.runtime.load(out)  # verifies every sha256 in the manifest
    result = model.run(np.zeros((64, 64, 3), np.uint8), task="REG_DET_HBB", text="airplane", max_new_tokens=6)
    assert type(result).__name__ == "Boxes"
    (out / "decoder_model.onnx").write_bytes((out / "decoder_model.onnx").read_bytes() + b"\0")
    with pytest.raises(Exception, match="sha256 of decoder_model.onnx does not match"):
        tiercel.runtime.load(out)


def test_quantize_never_writes_over_its_input_and_refuses_a_quantized_bundle(fp32, tmp_path):
    import shutil

    from tiercel.errors import ConfigError, TiercelError
    from tiercel.quantize import quantize_bundle

    src = tmp_path / "b"
    shutil.copytree(fp32, src)
    before = (src / "manifest.json").read_bytes()
    for out, where in ((src, ""), (tmp_path, " or holds it")):  # a new folder inside it replaces nothing
        with pytest.raises(TiercelError) as err:
            quantize_bundle(src, out, "int8-dynamic", overwrite=True, n_val=0)
        assert str(err.value) == (f"{out}: is the bundle being quantized {src}{where}, which the output would "
                                  "replace; choose another path")
    assert (src / "manifest.json").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    quantize_bundle(src, tmp_path / "q8", "int8-dynamic", n_val=0)
    with pytest.raises(ConfigError, match=r"q8: is already quantized \(int8-dynamic\); quantize the fp32 bundle"):
        quantize_bundle(tmp_path / "q8", tmp_path / "q4", "int4-weight-only", n_val=0)


def test_mixed_records_a_scheme_per_graph_and_keeps_tied_lm_head_inside_the_decoders(fp32, tmp_path):
    import onnx

    from tiercel.quantize import quantize_bundle

    section = quantize_bundle(fp32, tmp_path / "mixed", "mixed", calib=synth_folder(), **FAST)
    assert section.graphs == {"vision_encoder": "int8-static", "embed_tokens": "int8-dynamic",
                                 "encoder_model": "int8-static", "decoder_model": "int4-weight-only",
                                 "decoder_with_past_model": "int4-weight-only"}
    dec = onnx.load(str(tmp_path / "mixed" / "decoder_with_past_model.onnx"))
    assert any(n.op_type == "MatMulNBits" and n.name.startswith("/lm_head") for n in dec.graph.node)
    emb = onnx.load(str(tmp_path / "mixed" / "embed_tokens.onnx"))
    assert [n.op_type for n in emb.graph.node if n.op_type in ("Gather", "DequantizeLinear")] == ["Gather", "DequantizeLinear"]


def test_guard_excludes_sensitive_layers_and_retries_until_it_holds(fp32, tmp_path, monkeypatch):
    from tiercel.quantize import guard, quantize_bundle

    real, calls = guard.compare, []

    def strict_first(*args, **kwargs):  # the first attempt misses the floor, later ones are judged normally
        verdict = real(*args, **kwargs)
        calls.append(verdict)
        verdict.passed = verdict.passed and len(calls) > 1
        return verdict

    from tiercel.quantize import gptq

    real_hessians, probed = gptq.hessians, []
    monkeypatch.setattr(gptq, "hessians", lambda proto, feeds, nodes, threads=None: probed.append(len(feeds))
                        or real_hessians(proto, feeds, nodes, threads))
    monkeypatch.setattr(guard, "compare", strict_first)
    # all_layers: the lm_head in int4 too, the most sensitive layer of this bundle (by default it is int8 already)
    section = quantize_bundle(fp32, tmp_path / "q", "int4-weight-only", calib=synth_folder(), all_layers=True, **FAST)
    attempts = section.guard.attempts
    assert len(probed) == 4  # GPTQ's activations: once for each of the 4 int4 MatMul graphs, not once per attempt
    assert max(probed) > FAST["n"]  # decoder_with_past: every decode step, not the n thinned feeds
    # the most sensitive layer is a decoder's: kept back in both decoder graphs, which hold the same weight
    assert section.excluded == {"decoder_model": [top := section.excluded["decoder_model"][0]],
                                "decoder_with_past_model": [top]}
    assert len(attempts) == 2 and attempts[0]["excluded"] == 0 and attempts[1]["excluded"] == 2
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    kept = [g for g in manifest["graphs"] if g["quantization"]["excluded"]]
    assert [g["quantization"]["excluded"] for g in kept] == [[top], [top]]
    import onnx

    for g in kept:  # the layer kept back: 8-bit blocks, not fp32
        assert g["quantization"]["kept_in"] == "int8"
        graph = onnx.load(str(tmp_path / "q" / g["file"])).graph
        bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node
                if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}
        assert bits[f"{top}_Q8"] == 8 and sorted(set(bits.values())) == [4, 8]


def test_guard_failure_reports_the_numbers_and_writes_nothing(fp32, tmp_path, monkeypatch):
    import dataclasses

    import tiercel.quantize.guard as guard
    from tiercel.quantize import GuardError, quantize_bundle

    compare = guard.compare  # every comparison fails, whatever the quantized bundle scores
    monkeypatch.setattr(guard, "compare", lambda *a, **k: dataclasses.replace(compare(*a, **k), passed=False))
    with pytest.raises(GuardError) as err:
        quantize_bundle(fp32, tmp_path / "q", "int4-weight-only", calib=synth_folder(), max_retries=1, all_layers=True,
                        **FAST)
    msg = str(err.value)
    assert "after 3 attempts (2 layers kept in fp32)" in msg  # one layer, in both decoder graphs
    assert "token agreement" in msg and "drop" in msg
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("calib", [False, True])
def test_openvino_int4_through_nncf_runs_in_the_runtime(fp32, tmp_path, calib):
    pytest.importorskip("nncf")
    import tiercel.runtime
    from tiercel.quantize import quantize_bundle

    data = {"calib": synth_folder(), **FAST, "n_val": 0} if calib else {}
    section = quantize_bundle(fp32, tmp_path / "ov", "int4-weight-only", backend="openvino", block_size=32, **data)
    assert section.runs_on == "openvino" and section.guard.run is False
    graphs = json.loads((tmp_path / "ov" / "manifest.json").read_text())["graphs"]
    decoder = next(g for g in graphs if g["name"] == "decoder_with_past_model")["quantization"]
    if calib:  # data-aware variants are candidates, kept only where they beat data-free on held-out feeds
        errors = decoder["data_aware"]
        assert set(errors) == {"data-free", "awq", "awq+scale_estimation"}
        assert decoder["chosen"] == min(errors, key=errors.get)
        assert decoder["awq"] is (decoder["chosen"] != "data-free")
    else:
        assert decoder["awq"] is False and decoder["scale_estimation"] is False and "data_aware" not in decoder
    model = tiercel.runtime.load(tmp_path / "ov", backend="openvino")
    assert model.run(np.zeros((64, 64, 3), np.uint8), task="IMG_CAP", max_new_tokens=4).to_dict()["type"] == "caption"


def _mask_adds(ir) -> set[str]:
    """Names of the Adds that put an exported attention mask (Convert(bool) * min) on the scores."""
    ov = pytest.importorskip("openvino")
    out = set()
    for op in ov.Core().read_model(str(ir)).get_ordered_ops():
        if op.get_type_name() != "Convert" or op.input_value(0).get_element_type() != ov.Type.boolean:
            continue
        for mul in op.output(0).get_target_inputs():
            out |= {t.get_node().get_friendly_name() for t in mul.get_node().output(0).get_target_inputs()
                    if t.get_node().get_type_name() == "Add"}
    return out


def test_openvino_int8_static_bundle_adds_no_attention_scores_in_u8(fp32, tmp_path):
    """The fix for OpenVINO int8-static decoders with past, end to end: in the compiled quantised graphs the
    attention-mask Adds run in float (before it, those of the decoder with past ran in u8 and cut the scores to
    u8); the manifest records the calibration check and its choice is the smaller held-out error."""
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import tiercel.runtime
    from tiercel.quantize import quantize_bundle

    decoders_only = {"vision": "fp32", "encoder": "fp32", "embeddings": "fp32", "decoder": "int8-static"}  # the masks' graphs
    quantize_bundle(fp32, tmp_path / "ov", "mixed", backend="openvino", calib=synth_folder(), policy=decoders_only,
                    **{**FAST, "n_val": 0})
    graphs = json.loads((tmp_path / "ov" / "manifest.json").read_text())["graphs"]
    checked = 0
    for g in graphs:
        if g["precision"] != "int8-static":
            continue
        q = g["quantization"]
        assert q["calibration"] == min(q["calibration_check"], key=q["calibration_check"].get), g["name"]
        masks = _mask_adds(fp32 / "openvino" / f"{g['name']}.xml")
        compiled = ov.Core().compile_model(str(tmp_path / "ov" / g["file"]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        in_u8 = [op.get_rt_info()["originalLayersNames"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
                 if op.get_rt_info()["runtimePrecision"].astype(str) == "u8"]
        assert not [names for names in in_u8 if masks & set(names.split(","))], g["name"]
        checked += len(masks)
    assert checked >= 2  # the self-attention masks of the decoders (with past: one per layer)
    model = tiercel.runtime.load(tmp_path / "ov", backend="openvino")
    assert model.run(np.zeros((64, 64, 3), np.uint8), task="IMG_CAP", max_new_tokens=4).to_dict()["type"] == "caption"


def test_threads_reach_every_session_tiercel_opens_and_change_no_byte(fp32, tmp_path, monkeypatch):
    import sys

    import onnxruntime as ort

    from tiercel.quantize import quantize_bundle

    real, opened = ort.InferenceSession, []

    def spy(path, sess_options=None, *args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        opened.append((caller, sess_options.intra_op_num_threads if sess_options is not None else 0))
        return real(path, sess_options, *args, **kwargs)

    default = quantize_bundle(fp32, tmp_path / "default", "mixed", calib=synth_folder(), **FAST)
    monkeypatch.setattr(ort, "InferenceSession", spy)
    one = quantize_bundle(fp32, tmp_path / "one", "mixed", calib=synth_folder(), threads=1, **FAST)
    ours = [(caller, n) for caller, n in opened if caller.startswith("tiercel.")]
    assert {c for c, _ in ours} >= {"tiercel.runtime.backends", "tiercel.quantize.gptq"}
    assert {n for _, n in ours} == {1}
    files = lambda out: {g["file"]: g["sha256"] for g in json.loads((out / "manifest.json").read_text())["graphs"]}
    assert files(tmp_path / "one") == files(tmp_path / "default")
    assert one.guard.token_agreement == default.guard.token_agreement


def test_guard_grows_its_val_sample_when_only_the_bound_missed(fp32, tmp_path, monkeypatch):
    """n_val_max: a comparison that misses on its upper bound alone is taken again on twice the val records (up to
    n_val_max) before any layer is kept back, each look at a Bonferroni share of 1 - confidence."""
    import dataclasses

    from tiercel.quantize import guard, quantize_bundle

    real, looks = guard.compare, []

    def bound_only_below_six(*args, **kwargs):
        verdict, samples = real(*args, **kwargs), args[1]
        looks.append(([s.index for s in samples], kwargs["confidence"]))
        if len(samples) < 6:  # the point drop within max drop, its bound over it
            return dataclasses.replace(verdict, passed=False, drop=0.0, drop_bound=0.5, token_agreement=1.0)
        return dataclasses.replace(verdict, passed=True)

    monkeypatch.setattr(guard, "compare", bound_only_below_six)
    section = quantize_bundle(fp32, tmp_path / "q", "int8-dynamic", calib=synth_folder(), n=4, n_val=2, n_val_max=8,
                              max_new_tokens=8)
    assert [len(idx) for idx, _ in looks] == [2, 4, 8]  # 2 -> 4 -> 8 records
    assert looks[-1][0] == sorted(set(looks[-1][0])) and looks[1][0] == looks[-1][0][:4]  # each draw adds new records
    assert [c for _, c in looks] == pytest.approx([1 - 0.1 / 3] * 3)  # three looks possible: 2, 4, 8
    assert section.guard.passed and section.guard.samples == 8 and len(section.guard.attempts) == 1
    assert section.excluded == {}  # no layer was kept back


def test_a_task_the_guard_refuses_keeps_layers_back_without_growing_the_val_sample(fp32, tmp_path, monkeypatch):
    import dataclasses

    from tiercel.quantize import GuardError, guard, quantize_bundle

    real, looks = guard.compare, []

    def one_task_lost(*args, **kwargs):  # the average's bound alone would have grown the sample; the task's loss not
        verdict, samples = real(*args, **kwargs), args[1]
        looks.append((len(samples), kwargs["max_task_drop"]))
        per_task = {**verdict.per_task, "IMG_CLS": {"fp32": 0.5, "quantized": 0.3, "delta": -0.2, "drop": 0.4,
                                                     "drop_low": 0.2}}
        return dataclasses.replace(verdict, passed=False, drop=0.0, drop_bound=0.5, token_agreement=1.0,
                                   per_task=per_task, max_task_drop=kwargs["max_task_drop"], task_misses=["IMG_CLS"])

    monkeypatch.setattr(guard, "compare", one_task_lost)
    with pytest.raises(GuardError) as err:
        quantize_bundle(fp32, tmp_path / "q", "int8-dynamic", calib=synth_folder(), n=4, n_val=2, n_val_max=8,
                        max_new_tokens=8, max_drop=0.02, max_retries=1)
    assert looks == [(2, 0.02), (2, 0.02)]  # the floor defaults to max drop; two attempts, no larger draw
    assert "; a task's drop over max task drop 2.00% (IMG_CLS at least 20.0%)" in str(err.value)
    assert err.value.attempts[0]["task_misses"] == ["IMG_CLS"] and not (tmp_path / "q").exists()


def test_guard_looks_and_draws():
    from tiercel.quantize.bundle import _looks
    from tiercel.quantize.calibrate import load_samples

    assert (_looks(224, 0), _looks(224, 224), _looks(224, 300), _looks(224, 896), _looks(0, 896)) == (1, 1, 2, 3, 1)
    val = synth_folder() / "val.json"
    first = load_samples(val, None, 4, per_task=1)
    more = load_samples(val, None, 8, per_task=1, skip=frozenset(s.index for s in first))
    assert [s.index for s in first + more] == [s.index for s in load_samples(val, None, 8, per_task=1)]
    assert load_samples(val, None, 4, per_task=1, skip=frozenset(s.index for s in first)) == []
