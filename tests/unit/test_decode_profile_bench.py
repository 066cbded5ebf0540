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
