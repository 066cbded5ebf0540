"""Export: the graphs match PyTorch, the manifest describes them, the merged decoder works too."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

import onnx  # noqa: E402

from tests.bundles import tiny_bundle  # noqa: E402


@pytest.fixture(scope="module")
def merged(tiny_model, tiny_tokenizer):
    return tiny_bundle(tiny_model, tiny_tokenizer, "merged", ("onnxruntime",))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_every_graph_output_matches_pytorch(tiny_model, bundle, backend):
    import tiercel.runtime as rt
    from tiercel.export.parity import _annotate, graph_diffs

    m = rt.load(bundle, backend=backend)
    _annotate(m.sessions, m.bundle.entries(backend))
    diffs = graph_diffs(tiny_model, m.sessions, seed=7)
    assert set(diffs) == {"vision_encoder", "embed_tokens", "encoder_model", "decoder_model", "decoder_with_past_model"}
    worst = {f"{g}:{o}": d for g, outs in diffs.items() for o, d in outs.items()}
    assert max(worst.values()) < 1e-4, worst


def test_manifest_records_graphs_settings_parity_and_provenance(bundle, tiny_tokenizer):
    from tiercel.fileio import sha256_file

    man = json.loads((bundle / "manifest.json").read_text())
    assert man["format"] == "tiercel-bundle" and man["format_version"] == 1
    assert man["dialect"] == "falcon" and len(man["tasks"]) == 14
    assert man["preprocessing"]["size"] == 64 and man["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert man["generation"]["forced_bos_token_id"] == tiny_tokenizer.bos_id
    assert man["opset"] >= 17 and man["decoder"] == "split"
    assert {g["backend"] for g in man["graphs"]} == {"onnxruntime", "openvino"}
    for g in man["graphs"]:
        assert sha256_file(bundle / g["file"]) == g["sha256"]
        assert g["precision"] == "fp32"
    past = next(g for g in man["graphs"] if g["name"] == "decoder_with_past_model")
    assert "past_key_values.1.encoder.value" in past["inputs"] and "present.1.decoder.key" in past["outputs"]
    for backend in ("onnxruntime", "openvino"):
        assert man["parity"][backend]["worst"] < 1e-4
        assert man["parity"][backend]["greedy_identical"] == "3/3"
    assert len(man["provenance"]["source_sha256"]["state_dict"]) == 64


def test_vision_graph_goes_channels_last_for_onnxruntime_only(bundle):
    """depthwise_channels_last is in the ONNX graph (onnxruntime gains); the OpenVINO IR is converted from the graph
    before it (OpenVINO was slower with it), and the folder that held that graph is gone."""
    vision = onnx.load(str(bundle / "vision_encoder.onnx"))
    assert sum(n.name.endswith("/cl_residual") for n in vision.graph.node) == 12  # tiny DaViT: 4 stages x 4 - 4
    assert "cl_residual" not in (bundle / "openvino" / "vision_encoder.xml").read_text()
    assert sorted(p.name for p in bundle.iterdir() if p.name.startswith(".")) == []


def test_merged_decoder_has_public_io_and_generates_like_split(merged, bundle):
    import tiercel.runtime as rt
    from tests.bundles import image

    man = json.loads((merged / "manifest.json").read_text())
    dec = next(g for g in man["graphs"] if g["name"] == "decoder_model_merged")
    assert dec["inputs"][-1] == "use_cache_branch" and "encoder_hidden_states" in dec["inputs"]
    assert man["parity"]["onnxruntime"]["worst"] < 1e-4  # both branches are compared
    a, b = rt.load(merged), rt.load(bundle)
    feats = a.image_features(a.pixel_values(image(3)))
    prompts = ["Describe the image.", "Count the number of ship."]
    assert a.generate_ids(feats, prompts, num_beams=1, max_new_tokens=6) == b.generate_ids(feats, prompts, num_beams=1, max_new_tokens=6)
    assert a.generate_ids(feats, prompts[:1], num_beams=3, max_new_tokens=6) == b.generate_ids(feats, prompts[:1], num_beams=3, max_new_tokens=6)


def test_vision_graph_takes_any_batch(bundle, tiny_model):
    import tiercel.runtime as rt
    from tests.bundles import torch_features

    m = rt.load(bundle)
    px = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    assert np.abs(m.image_features(px) - torch_features(tiny_model, px)).max() < 1e-4


def test_export_refuses_existing_output_and_bad_options(tiny_model, tiny_tokenizer, tmp_path):
    from tiercel.errors import ConfigError, TiercelError
    from tiercel.export.bundle import export_model

    (tmp_path / "b").mkdir()
    with pytest.raises(TiercelError, match="already exists"):
        export_model(tiny_model, tiny_tokenizer, tmp_path / "b")
    with pytest.raises(ConfigError, match="choose from: onnxruntime, openvino, tensorrt"):
        export_model(tiny_model, tiny_tokenizer, tmp_path / "c", backends=("coreml",))
    with pytest.raises(ConfigError, match="split, merged"):
        export_model(tiny_model, tiny_tokenizer, tmp_path / "c", decoder="fused")
    assert not (tmp_path / "c").exists()


def test_overwrite_never_replaces_a_folder_that_is_not_a_bundle(tiny_model, tiny_tokenizer, tmp_path):
    from tiercel.errors import TiercelError
    from tiercel.export.bundle import export_model

    (tmp_path / "models").mkdir()  # `--out models --overwrite` meant `--out models/tiny`
    (tmp_path / "models" / "teacher.safetensors").write_bytes(b"weights")
    with pytest.raises(TiercelError) as err:
        export_model(tiny_model, tiny_tokenizer, tmp_path / "models", overwrite=True)
    assert str(err.value) == (f"{tmp_path / 'models'}: holds files tiercel did not write (no manifest.json), so it is "
                              "not replaced even with --overwrite; choose another output path, or empty it yourself")
    assert (tmp_path / "models" / "teacher.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_openvino_property_typo_is_one_config_line(bundle):
    import tiercel.runtime as rt
    from tiercel.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--option: OpenVINO rejected \{'PERFORMANCE_HNT': 'LATENCY'\}") as err:
        rt.load(bundle, backend="openvino", options={"PERFORMANCE_HNT": "LATENCY"})
    assert "\n" not in str(err.value)
    m = rt.load(bundle, backend="openvino", options={"PERFORMANCE_HINT": "LATENCY"})
    assert m.run(np.zeros((32, 32, 3), np.uint8), task="IMG_CAP", max_new_tokens=3) is not None



def test_openvino_computes_in_f32_unless_an_option_asks_for_bf16(bundle):
    """OpenVINO's CPU plugin picks bf16 by itself on CPUs that have it; the runtime pins f32 (the parity checks
    hold), and `--option INFERENCE_PRECISION_HINT=bf16` (benchmarks/results/runtime_cpu.md: 2.13x vision on AVX512-BF16) must still win."""
    import openvino as ov

    import tiercel.runtime as rt

    def hints(**options) -> set:
        m = rt.load(bundle, backend="openvino", options=options or None)
        return {s.compiled.get_property("INFERENCE_PRECISION_HINT") for s in m.sessions.values()}

    assert hints() == {ov.Type.f32}
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16 (AVX512_BF16 or AMX): OpenVINO computes in f32 whatever is asked")
    assert hints(INFERENCE_PRECISION_HINT="bf16") == {ov.Type.bf16}

def test_graphs_over_the_protobuf_limit_go_to_external_data_that_is_checksummed(tiny_model, tiny_tokenizer, bundle,
                                                                                tmp_path, monkeypatch):
    """The >2 GB path on a tiny model: the limit is lowered so every graph spills its weights to `<graph>.data`."""
    import tiercel.export.onnx_export as OE
    import tiercel.quantize.onnx_backend as QB
    import tiercel.runtime as rt
    from tiercel.errors import BundleError
    from tiercel.export.bundle import export_model
    from tiercel.quantize import quantize_bundle

    monkeypatch.setattr(OE, "_TWO_GB", 1000)
    monkeypatch.setattr(QB, "_TWO_GB", 1000)
    out = export_model(tiny_model, tiny_tokenizer, tmp_path / "big", backends=("onnxruntime", "openvino"))
    manifest = json.loads((out / "manifest.json").read_text())
    onnx_rows = [g for g in manifest["graphs"] if g["backend"] == "onnxruntime"]
    assert all(list(g["extra_files"]) == [g["file"] + ".data"] for g in onnx_rows)
    size = lambda f: (out / f).stat().st_size  # noqa: E731
    assert all(size(g["file"]) < size(g["file"] + ".data") for g in onnx_rows if g["name"] != "vision_encoder")
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    for backend in ("onnxruntime", "openvino"):
        want = rt.load(bundle, backend=backend).run(img, task="IMG_CAP", num_beams=1, max_new_tokens=6).to_dict()
        assert rt.load(out, backend=backend).run(img, task="IMG_CAP", num_beams=1, max_new_tokens=6).to_dict() == want
    q = quantize_bundle(out, tmp_path / "big-int4", "int4-weight-only")
    assert q.sizes["total"]["ratio"] < 0.6
    rt.load(tmp_path / "big-int4").run(img, task="IMG_CAP", max_new_tokens=4)
    data = out / "decoder_model.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(BundleError, match="sha256 of decoder_model.onnx.data does not match"):
        rt.load(out)
