"""Profiler arithmetic on hand-made numbers: percentiles, one run's stage breakdown, the timer, memory probe."""

from __future__ import annotations

import math

import pytest

from tiercel.runtime.profile.timing import MemoryProbe, StageTimer, breakdown, percentiles


def test_percentiles_of_hand_made_timings():
    stats = percentiles([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    # numpy's linear interpolation: position q/100 * (n - 1)
    assert stats["p50"] == pytest.approx(5.5)
    assert stats["p90"] == pytest.approx(9.1)
    assert stats["p99"] == pytest.approx(9.91)
    assert (stats["mean"], stats["min"], stats["max"], stats["n"]) == (5.5, 1.0, 10.0, 10)


def test_percentiles_of_one_and_of_none():
    one = percentiles([0.25])
    assert one["p50"] == one["p99"] == 0.25 and one["n"] == 1
    empty = percentiles([])
    assert empty["n"] == 0 and math.isnan(empty["p50"])


def test_breakdown_splits_decode_steps_and_search_overhead():
    events = [("preprocess", 0.01), ("vision_encoder", 0.2), ("embed_tokens", 0.001), ("text_encoder", 0.05),
              ("first_token", 0.03), ("decode_token", 0.010), ("decode_token", 0.012), ("decode_token", 0.011),
              ("generate", 0.07), ("postprocess", 0.002)]
    b = breakdown(events)
    assert b["decode_token"] == [0.010, 0.012, 0.011]
    assert b["generate_overhead"] == pytest.approx(0.07 - 0.03 - 0.033)
    assert b["vision_encoder"] == 0.2 and b["postprocess"] == 0.002 and b["generate"] == 0.07


def test_timer_records_stages_with_the_given_clock_and_calls_back():
    ticks = iter([1.0, 1.5, 2.0, 4.0])
    calls = []
    timer = StageTimer(clock=lambda: next(ticks), on_stage=lambda: calls.append(1))
    with timer.stage("vision_encoder"):
        pass
    with timer.stage("decode_token"):
        pass
    assert timer.take() == [("vision_encoder", 0.5), ("decode_token", 2.0)]
    assert timer.events == [] and len(calls) == 2


def test_memory_probe_peak_only_grows_until_reset():
    probe = MemoryProbe()
    start = probe.reset()
    assert start > 0
    block = bytearray(64 * 2**20)  # touch 64 MiB so RSS rises
    block[:: 4096] = b"x" * len(block[:: 4096])
    probe.sample()
    assert probe.peak >= start
    del block


def test_profiler_imports_without_torch_or_matplotlib():
    import subprocess
    import sys

    code = ("import sys, tiercel.runtime.profile, tiercel.runtime.profile.report;"
            "print(' '.join(m for m in ('torch', 'transformers', 'matplotlib', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
