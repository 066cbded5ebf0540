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


class _FakeBundle:
    """The two parts of a bundle that bundle_work reads: the model shape and the graph entries."""

    def __init__(self, root, shape, graphs):
        from types import SimpleNamespace

        from tiercel.runtime.manifest import GraphEntry

        self.root = root
        self.graphs = [GraphEntry(sha256="x", **g) for g in graphs]
        self.manifest = SimpleNamespace(model=SimpleNamespace(shape=SimpleNamespace(model_dump=lambda: shape)))

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


def test_machine_peaks_are_measured_and_positive():
    bw = roofline.measure_bandwidth(megabytes=16, repeats=2)
    flops = roofline.measure_matmul(n=256, repeats=2)
    assert 1e8 < bw < 1e13 and 1e8 < flops < 1e15
