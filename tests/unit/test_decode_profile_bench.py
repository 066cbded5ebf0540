"""benchmarks/decode_profile_cpu.py counts the bytes a decode step reads at the precision it computes in."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import decode_profile_cpu  # noqa: E402

SHAPE = {"d_model": 8, "decoder_layers": 2, "image_tokens": 10, "max_position_embeddings": 98}


def test_an_ir_computed_in_bf16_reads_half_its_fp32_weights(tmp_path):
    xml = tmp_path / "decoder_with_past_model.xml"
    xml.with_suffix(".bin").write_bytes(b"\0" * 4000)
    assert decode_profile_cpu.ov_weight_bytes(xml) == {"parts": {"layers": 4000}, "by_dtype": {"ir_bin": 4000}}
    assert decode_profile_cpu.ov_weight_bytes(xml, "bf16") == {"parts": {"layers": 2000}, "by_dtype": {"ir_bin_as_bf16": 2000}}


def test_step_bytes_count_the_kv_cache_per_row_at_its_width():
    weights = {"parts": {"layers": 1000, "lm_head": 500, "positions": 400}}
    got = decode_profile_cpu.step_bytes(weights, SHAPE, past=3, prompt=2, batch=2)
    # cross: 2 rows x 2 layers x (K, V) x (10 + 2) tokens x 8 wide x 4 bytes; self: past 3 read + 4 written
    assert got["kv_cross"] == 2 * 2 * 2 * 12 * 8 * 4 == 3072
    assert got["kv_self"] == 2 * 2 * 2 * 7 * 8 * 4 == 1792
    assert got["positions_row"] == 4  # one row of the 100-row table
    assert got["total"] == 1000 + 500 + 4 + 3072 + 1792
    half = decode_profile_cpu.step_bytes(weights, SHAPE, past=3, prompt=2, batch=2, kv_bytes=2)
    assert (half["kv_cross"], half["kv_self"]) == (1536, 896)


class _Session:
    def __init__(self, kv):
        self.kv, self.options = kv, None

    def run(self, feeds):
        return feeds


def _backend(monkeypatch, kv):
    """get_backend('openvino') opening a stand-in session whose KV precision is `kv` (what OpenVinoSession sets)."""
    from types import SimpleNamespace

    from tiercel.runtime import backends

    opened = {}

    def open_(file, device, threads, options):
        opened["options"] = options
        return _Session(kv)

    monkeypatch.setattr(backends, "get_backend", lambda name: SimpleNamespace(devices=["CPU"], open=open_))
    return opened


def test_the_bf16_bundle_opens_at_the_hint_and_feeds_its_cache_in_bf16_once(monkeypatch):
    import numpy as np

    from tiercel.runtime.backends import bf16_bits

    opened = _backend(monkeypatch, "bf16")
    run, prepare = decode_profile_cpu.product_session(Path("d.xml"), "openvino", "bf16", "ov-bf16")
    assert opened["options"] == {"INFERENCE_PRECISION_HINT": "bf16"}
    cache, ids = np.linspace(-3, 3, 12, dtype=np.float32).reshape(1, 2, 6), np.array([[5]])
    got = prepare({"past_key_values.0.encoder.key": cache, "input_ids": ids})
    assert got["past_key_values.0.encoder.key"].dtype == np.uint16
    assert np.array_equal(got["past_key_values.0.encoder.key"], bf16_bits(cache))
    assert got["input_ids"] is ids  # only the cache changes type


def test_a_cpu_without_the_precision_stops_naming_the_bundle(monkeypatch):
    import pytest

    _backend(monkeypatch, None)  # OpenVinoSession leaves kv None where the CPU plugin cannot compute in bf16
    with pytest.raises(SystemExit) as stop:
        decode_profile_cpu.product_session(Path("d.xml"), "openvino", "bf16", "ov-bf16")
    assert str(stop.value.code).startswith("ov-bf16: this CPU does not compute in bf16 on OpenVINO")


def test_an_fp32_session_takes_its_feeds_as_they_are(monkeypatch):
    import numpy as np

    opened = _backend(monkeypatch, None)
    _, prepare = decode_profile_cpu.product_session(Path("d.onnx"), "onnxruntime")
    cache = np.ones((1, 2, 3), np.float32)
    assert opened["options"] is None and prepare({"past_key_values.0.decoder.key": cache})["past_key_values.0.decoder.key"] is cache
