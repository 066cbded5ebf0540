"""Roofline: analytic FLOPs equal `tiercel info`'s FlopCounterMode counts; bytes come from files; fractions add up."""

from __future__ import annotations

import json

import pytest

from tiercel.models.presets import get_preset
from tiercel.runtime.profile import roofline
from tiercel.runtime.profile.roofline import MachinePeaks, StageWork, decoder_step_flops, fractions


@pytest.mark.parametrize("preset", ["tiny", "tiercel-nano", "florence2-base"])
def test_analytic_flops_match_the_flop_counter(preset):
    pytest.importorskip("torch")
    from tiercel.models import build, model_report

    report = model_report(build(preset, device="meta"), preset, prompt_tokens=32)
    shape = get_preset(preset).to_dict()
    assert roofline.vision_flops(shape) == pytest.approx(report.vision_gflops * 1e9, rel=1e-9)
    assert roofline.text_encoder_flops(shape, report.encoder_tokens) == pytest.approx(report.encoder_gflops * 1e9, rel=1e-9)


def test_published_florence2_base_vision_cost():
    # docs/distill.md (presets) / tiercel info: florence2-base vision 380.7 GFLOPs at 768 px (torch-free here)
    assert roofline.vision_flops(get_preset("florence2-base").to_dict()) / 1e9 == pytest.approx(380.68, abs=0.01)


def test_decoder_step_flops_by_hand():
    shape = {"d_model": 4, "ffn_dim": 8, "vocab_size": 10, "decoder_layers": 1}
    # per row: 12 d^2 + 4 d f + 4 d (past + 1 + enc) per layer, + 2 d V for the lm_head
    per_row = 12 * 16 + 4 * 4 * 8 + 4 * 4 * (2 + 1 + 5) + 2 * 4 * 10
    assert decoder_step_flops(shape, enc_tokens=5, past=2) == per_row
    assert decoder_step_flops(shape, enc_tokens=5, past=2, rows=3) == 3 * per_row
    assert decoder_step_flops(shape, 5, 0, first=True) == decoder_step_flops(shape, 5, 0) + 2 * 2 * 5 * 16


def test_roofline_fraction_arithmetic():
    peaks = MachinePeaks(bandwidth=10e9, flops=100e9, method="hand")
    work = {"decode_token": StageWork(flops=1e6, bytes=20e6), "vision_encoder": StageWork(flops=50e9, bytes=1e6)}
    out = fractions({"decode_token": 0.004, "vision_encoder": 1.0, "text_encoder": 0.1}, work, peaks)
    assert out["decode_token"]["bound"] == "memory"
    assert out["decode_token"]["bound_ms"] == pytest.approx(2.0)  # 20 MB / 10 GB/s
    assert out["decode_token"]["fraction"] == pytest.approx(0.5)  # 2 ms bound / 4 ms measured
    assert out["vision_encoder"]["bound"] == "compute"
    assert out["vision_encoder"]["fraction"] == pytest.approx(0.5)  # 50 GFLOP / 100 GFLOP/s = 0.5 s of 1 s
    assert "text_encoder" not in out  # no work known for it


def test_compute_bounds_use_the_peak_at_each_stage_precision():
    """int8 and int4 graphs against the int8 peak, OpenVINO with the bf16 hint against the bf16 peak; a precision
    with no measured peak falls back to fp32 and says so."""
    peaks = MachinePeaks(bandwidth=10e9, flops=100e9, method="hand", int8_flops=400e9, bf16_flops=200e9)
    vision = {"vision_encoder": StageWork(flops=80e9, bytes=1e6, precision="int8-static")}
    [r] = fractions({"vision_encoder": 0.5}, vision, peaks).values()
    assert (r["bound"], r["peak"], r["peak_gflops"]) == ("compute", "int8", 400.0)
    assert r["bound_ms"] == pytest.approx(200.0) and r["ratio"] == pytest.approx(2.5)  # 80 GFLOP at 400 GFLOP/s
    fp32 = {"vision_encoder": StageWork(flops=80e9, bytes=1e6, precision="fp32")}
    hint = {"INFERENCE_PRECISION_HINT": "bf16"}
    assert fractions({"vision_encoder": 0.5}, fp32, peaks, "openvino", hint)["vision_encoder"]["bound_ms"] == pytest.approx(400.0)
    assert fractions({"vision_encoder": 0.5}, fp32, peaks, "onnxruntime", hint)["vision_encoder"]["bound_ms"] == pytest.approx(800.0)
    no_int8 = MachinePeaks(bandwidth=10e9, flops=100e9, method="hand")
    [r] = fractions({"vision_encoder": 0.5}, vision, no_int8).values()
    assert (r["peak"], r["bound_ms"]) == ("fp32", pytest.approx(800.0))


def test_memory_bounds_of_an_fp32_graph_at_the_bf16_hint_count_bf16_bytes():
    """OpenVINO at the bf16 hint reads bf16 weights (converted when compiled) and a bf16 KV cache (the runtime's
    OpenVinoSession): a memory-bound decode step's bound halves; where no bf16 peak was measured (no bf16 on
    this CPU: OpenVINO computes in f32) it stays."""
    step = {"decode_token": StageWork(flops=1e6, bytes=200e6, precision="fp32")}
    hint = {"INFERENCE_PRECISION_HINT": "bf16"}
    bf16 = MachinePeaks(bandwidth=10e9, flops=100e9, method="hand", bf16_flops=200e9)
    r = fractions({"decode_token": 0.015}, step, bf16, "openvino", hint)["decode_token"]
    assert (r["bound"], r["bound_ms"], r["bytes"], r["ratio"]) == ("memory", pytest.approx(10.0), 100e6, pytest.approx(1.5))
    assert r["precision"] == "bf16"  # what the table shows: what runs, not the graph file's fp32
    assert fractions({"decode_token": 0.015}, step, bf16, "openvino")["decode_token"]["bound_ms"] == pytest.approx(20.0)
    no_bf16 = MachinePeaks(bandwidth=10e9, flops=100e9, method="hand")
    assert fractions({"decode_token": 0.015}, step, no_bf16, "openvino", hint)["decode_token"]["bound_ms"] == pytest.approx(20.0)
    int8 = {"decode_token": StageWork(flops=1e6, bytes=60e6, precision="int8-static")}
    assert fractions({"decode_token": 0.015}, int8, bf16, "openvino", hint)["decode_token"]["bound_ms"] == pytest.approx(6.0)


@pytest.mark.parametrize(("precision", "backend", "options", "kind"), [
    ("int8-static", "onnxruntime", None, "int8"), ("int8-dynamic", "openvino", None, "int8"),
    ("int4-weight-only", "onnxruntime", None, "int8"), ("fp16", "onnxruntime", None, "fp32"),
    ("fp32", "openvino", {"INFERENCE_PRECISION_HINT": "BF16"}, "bf16"), ("fp32", "openvino", {"INFERENCE_PRECISION_HINT": "f32"}, "fp32"),
    ("bf16", "onnxruntime", None, "bf16"), ("fp32", "onnxruntime", None, "fp32"),
])
def test_compute_kind(precision, backend, options, kind):
    assert roofline.compute_kind(precision, backend, options) == kind


def test_roofline_notes_name_a_missing_peak():
    from types import SimpleNamespace

    from tiercel.runtime.profile import report as render

    row = {"precision": "int8-static", "peak": "fp32"}
    report = SimpleNamespace(peaks=MachinePeaks(10e9, 100e9, "hand"), settings=SimpleNamespace(options=None),
                             profiles=[SimpleNamespace(backend="onnxruntime", roofline={"vision_encoder": row},
                                                       weights_bytes=None, roofline_skipped=None)])
    notes = render.roofline_notes(report)
    assert notes[1].startswith("no int8 matmul peak was measured here: those stages' compute bounds use the fp32 peak")
    row["peak"] = "int8"
    assert len(render.roofline_notes(report)) == 1
    assert render.peaks_line(MachinePeaks(22.5e9, 101e9, "", int8_flops=405e9)) == "22.5 GB/s copy; matmul GFLOP/s: fp32 101, int8 405"


class _FakeBundle:
    """The two parts of a bundle that bundle_work reads: the model shape and the graph entries."""

    def __init__(self, root, shape, graphs, cross_kv="per_row"):
        from types import SimpleNamespace

        from tiercel.runtime.manifest import GraphEntry

        self.root = root
        self.graphs = [GraphEntry(sha256="x", **g) for g in graphs]
        self.manifest = SimpleNamespace(model=SimpleNamespace(shape=SimpleNamespace(model_dump=lambda: shape)),
                                        cross_kv=cross_kv)

    def entries(self, backend):
        return {g.name: g for g in self.graphs if g.backend == backend}


def test_bundle_work_reads_weights_from_file_sizes_and_adds_kv(tmp_path):
    shape = {**get_preset("tiny").to_dict(), "d_model": 8, "decoder_layers": 2}
    sizes = {"vision_encoder": 1000, "embed_tokens": 10, "encoder_model": 300, "decoder_model": 500,
             "decoder_with_past_model": 400}
    graphs = []
    for name, size in sizes.items():
        (tmp_path / f"{name}.onnx").write_bytes(b"\0" * size)
        graphs.append({"name": name, "backend": "onnxruntime", "file": f"{name}.onnx", "precision": "fp32"})
    (tmp_path / "decoder_with_past_model.onnx.data").write_bytes(b"\0" * 600)
    graphs[-1]["extra_files"] = {"decoder_with_past_model.onnx.data": "sha"}
    bundle = _FakeBundle(tmp_path, json.loads(json.dumps(shape)), graphs)
    work = roofline.bundle_work(bundle, "onnxruntime", enc_tokens=10, new_tokens=5, rows=2)
    kv = 4  # fp32 activations
    cross = 2 * 2 * 10 * 8 * kv  # layers x (K, V) x encoder tokens x d x bytes
    self_kv = 2 * 2 * (2 + 1) * 8 * kv  # average past (5 - 1) / 2 = 2, plus the new token
    assert work["decode_token"].bytes == 400 + 600 + 2 * (cross + self_kv)
    assert work["first_token"].bytes == 500 + 2 * cross
    assert work["vision_encoder"].bytes == 1000 and work["text_encoder"].bytes == 300
    shared = roofline.bundle_work(_FakeBundle(tmp_path, json.loads(json.dumps(shape)), graphs, "per_item"),
                                  "onnxruntime", enc_tokens=10, new_tokens=5, rows=2)
    assert shared["decode_token"].bytes == 400 + 600 + cross + 2 * self_kv  # the 2 beams read one cross K/V
    assert shared["first_token"].bytes == 500 + cross
    assert shared["first_token"].flops == work["first_token"].flops - 2 * 2 * 2 * 10 * 8 * 8  # projected once


def test_machine_peaks_are_measured_and_positive():
    bw = roofline.measure_bandwidth(megabytes=16, repeats=2)
    flops = roofline.measure_matmul(n=256, repeats=2)
    assert 1e8 < bw < 1e13 and 1e8 < flops < 1e15
