"""The profiler on a tiny bundle: forced generation length, untouched results, every stage timed, JSON, tables, PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from tests.bundles import image  # noqa: E402
from tiercel.errors import BundleError, ConfigError  # noqa: E402
from tiercel.models.open import CHECKPOINTS  # noqa: E402
from tiercel.runtime.profile import ProfileSettings, StageTimer, forced_generation, profile  # noqa: E402


@pytest.fixture(scope="module")
def report(bundle):
    settings = ProfileSettings(runs=1, warmup=0, new_tokens=4, num_beams=1, tasks=("IMG_CAP", "REG_DET_HBB", "PIX_CHG"),
                               image_size=64)
    return profile([bundle], ["onnxruntime", "openvino"], settings)


@pytest.mark.parametrize("beams", [1, 3])
def test_forced_generation_makes_exactly_n_tokens(bundle, beams):
    import tiercel.runtime as rt

    m = rt.load(bundle)
    features = m.image_features(m.pixel_values(image(0)))
    for n in (2, 9):
        ids = m.generate_ids(features, ["Describe the image.", "Count the number of ship."], **forced_generation(n, beams))
        assert [len(i) for i in ids] == [n, n]


def test_timer_sees_every_stage_and_changes_no_result(bundle):
    import tiercel.runtime as rt

    m = rt.load(bundle)
    gen = forced_generation(6, 2)
    plain = m.run(image(2), "REG_DET_HBB", text="airplane", **gen)
    m.timer = StageTimer()
    timed = m.run(image(2), "REG_DET_HBB", text="airplane", **gen)
    names = [name for name, _ in m.timer.take()]
    assert timed == plain
    assert {"preprocess", "vision_encoder", "embed_tokens", "text_encoder", "first_token", "generate",
            "postprocess"} <= set(names)
    assert names.count("first_token") == 1 and names.count("decode_token") == 5


def test_profile_times_every_stage_of_every_pair(report):
    assert [p.label for p in report.profiles] == [f"{report.profiles[0].label.split('/')[0]}/{b}" for b in ("onnxruntime", "openvino")]
    for p in report.profiles:
        for stage in ("preprocess", "vision_encoder", "embed_tokens", "text_encoder", "first_token", "postprocess"):
            assert p.stages[stage]["n"] == 3 and p.stages[stage]["p50"] > 0  # runs x tasks
        assert p.stages["decode_token"]["n"] == 3 * (4 - 1)  # runs x tasks x (new tokens - first)
        assert set(p.tasks) == {"IMG_CAP", "REG_DET_HBB", "PIX_CHG"} and p.tasks["PIX_CHG"]["n"] == 1
        assert p.run_all["tasks"] == ["IMG_CAP", "REG_DET_HBB"] and p.run_all["end_to_end"]["n"] == 1
        assert p.tokens_per_s["p50"] > 0 and p.rss["peak"] >= p.rss["baseline"] > 0
        assert set(p.roofline) == {"vision_encoder", "text_encoder", "first_token", "decode_token"}
        assert all(r["fraction"] > 0 for r in p.roofline.values())
        assert p.size_bytes == sum(g["bytes"] for g in p.graphs.values()) > 0
        assert set(p.estimates) == {"orin-nano-8gb", "orin-nano-8gb-super", "orin-nx-16gb", "agx-orin-64gb"}


def test_report_is_json_and_renders(report, tmp_path):
    from rich.console import Console

    from tiercel.runtime.profile import report as render

    data = json.loads(json.dumps(report.to_dict()))
    assert data["settings"]["new_tokens"] == 4 and data["peaks"]["bandwidth_gbs"] > 0
    assert data["profiles"][1]["backend"] == "openvino"
    console = Console(record=True, width=250)
    console.print(render.comparison_table(report))
    console.print(render.roofline_table(report))
    console.print(render.estimate_table(report))
    text = console.export_text()
    for needle in ("decode, per token", "PIX_CHG end-to-end", "run_all (2 tasks)", "peak RSS", "x bound", "ESTIMATE",
                   "Jetson AGX Orin 64GB"):
        assert needle in text
    assert any("max(bytes / (bandwidth" in line for line in render.estimate_notes(report))



def test_openvino_in_f32_on_a_bf16_cpu_gets_a_hint(report):
    """The line names the CPU's bf16 flags and the option; not shown without bf16, without an OpenVINO profile, or
    when the run already set the precision."""
    from dataclasses import replace

    from tiercel.runtime.profile import report as render

    assert isinstance(report.machine["cpu_bf16"], list)  # read from /proc/cpuinfo's flags
    from tiercel.runtime.backends import ORT_CPU_CONFIG

    assert report.machine["onnxruntime_cpu_config"] == ORT_CPU_CONFIG  # whether int8 ran the exact (slower) products
    bf16 = replace(report, machine={**report.machine, "cpu_bf16": ["avx512_bf16"]})
    [line] = render.precision_notes(bf16)
    assert line.startswith("this CPU computes bf16 (avx512_bf16): OpenVINO ran in f32, tiercel's default; "
                           "--option INFERENCE_PRECISION_HINT=bf16 trades")
    assert render.precision_notes(replace(bf16, machine={**report.machine, "cpu_bf16": []})) == []
    assert render.precision_notes(replace(bf16, profiles=report.profiles[:1])) == []  # onnxruntime only
    asked = replace(bf16, settings=replace(report.settings, options={"INFERENCE_PRECISION_HINT": "f32"}))
    assert render.precision_notes(asked) == []

def test_plot_writes_a_png(report, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from tiercel.runtime.profile import report as render

    render.plot(report, tmp_path / "stages.png")
    with Image.open(tmp_path / "stages.png") as im:
        assert im.format == "PNG" and im.size[0] > 800


def test_bad_inputs_fail_before_timing(bundle, tmp_path):
    with pytest.raises(BundleError, match="no such bundle or checkpoint directory"):
        profile([tmp_path / "nope"], ["onnxruntime"], ProfileSettings(runs=1))
    with pytest.raises(ConfigError, match="unknown backend 'onnx'"):
        profile([bundle], ["onnx"], ProfileSettings(runs=1))
    with pytest.raises(ConfigError, match=r"--runs: must be 1..100000 \(got 0\)"):
        profile([bundle], ["onnxruntime"], ProfileSettings(runs=0))
    with pytest.raises(ConfigError, match="a bundle; --backend torch runs a checkpoint directory"):
        profile([bundle], ["torch"], ProfileSettings(runs=1))
    with pytest.raises(ConfigError, match="--option x: .* is a checkpoint, which takes only dtype="):
        profile([tmp_path], ["torch"], ProfileSettings(runs=1, options={"x": "1"}), checkpoints=CHECKPOINTS)
    with pytest.raises(ConfigError, match="a checkpoint, which this call cannot open; pass checkpoints=tiercel.models.open.CHECKPOINTS"):
        profile([tmp_path], ["torch"], ProfileSettings(runs=1))  # the runtime alone never imports torch to open one


def test_more_new_tokens_than_the_position_table_names_profiles_option(bundle, monkeypatch):
    from tiercel.runtime.profile import runner

    monkeypatch.setattr(runner.roofline, "measure_machine", lambda threads=None: None)  # seconds this test does not need
    monkeypatch.setattr(runner, "_timed_call", lambda *a: pytest.fail("timed before the check"))
    with pytest.raises(ConfigError) as err:  # the tiny bundle has 256 positions
        profile([bundle], ["onnxruntime"], ProfileSettings(runs=1, new_tokens=257, image_size=64))
    assert str(err.value) == ("max_new_tokens: 257 is more than this model's 256 decoder positions; use 256 or less "
                              "(--new-tokens)")


def test_profile_image_is_deterministic():
    from tiercel.runtime.profile.runner import profile_image

    assert np.array_equal(profile_image(32), profile_image(32)) and profile_image(32).shape == (32, 32, 3)


def test_transformers_decoder_steps_are_timed_and_results_unchanged(tiny_model, tiny_tokenizer):
    from tiercel.models.predict import TorchPredictor

    p = TorchPredictor(tiny_model, tiny_tokenizer)
    gen = forced_generation(5, 2)
    plain = p.run(image(3), "REG_DET_HBB", text="airplane", **gen)
    p.timer = StageTimer()
    timed = p.run(image(3), "REG_DET_HBB", text="airplane", **gen)
    names = [name for name, _ in p.timer.take()]
    assert timed == plain and names.count("first_token") == 1 and names.count("decode_token") == 4
    p.timer = None
    assert not tiny_model._forward_hooks and not tiny_model._forward_pre_hooks  # removed after the call


def test_profile_of_a_checkpoint_times_transformers_and_the_static_decoder(tiny_checkpoint, tiny_model):
    settings = ProfileSettings(runs=1, warmup=0, new_tokens=4, num_beams=1, tasks=("IMG_CAP", "PIX_CHG"), image_size=64)
    report = profile([tiny_checkpoint], ["onnxruntime", "torch"], settings, checkpoints=CHECKPOINTS)
    assert [p.label for p in report.profiles] == ["tiny/torch", "tiny/torch-graphs"]
    params = sum(t.numel() * t.element_size() for t in tiny_model.parameters())
    head = tiny_model.lm_head.weight.numel() * 4
    for p in report.profiles:
        assert p.stages["first_token"]["n"] == 2 and p.stages["decode_token"]["n"] == 2 * 3  # tasks x (tokens - 1)
        assert p.size_bytes == params and sum(g["bytes"] for g in p.graphs.values()) == params + head  # tied lm_head
        assert p.work["decode_token"].bytes > p.graphs["decoder_model"]["bytes"] >= head  # + the KV cache it reads
        assert set(p.roofline) == {"vision_encoder", "text_encoder", "first_token", "decode_token"}
        assert p.preset == "tiny" and p.roofline_skipped is None


def test_no_roofline_for_a_run_on_a_gpu(bundle, monkeypatch):
    from tiercel.runtime.profile import report as render
    from tiercel.runtime.profile import runner

    opened = runner.open_model

    def on_gpu(*args):  # the CPU session, labelled as a GPU's: what the report does with a device that is not the CPU
        m = opened(*args)
        m.device = "cuda"
        return m

    monkeypatch.setattr(runner, "open_model", on_gpu)
    report = profile([bundle], ["onnxruntime"], ProfileSettings(runs=1, warmup=0, new_tokens=3, tasks=("IMG_CAP",), image_size=64))
    p = report.profiles[0]
    assert p.roofline == {} and "ran on cuda; the measured peaks are this machine's CPU" in p.roofline_skipped
    assert p.estimates and any("no roofline for" in line for line in render.roofline_notes(report))
