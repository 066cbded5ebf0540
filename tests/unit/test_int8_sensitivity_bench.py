"""benchmarks/int8_sensitivity.py: the simulated int8 rounding and the flip counts, by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import int8_sensitivity as s8  # noqa: E402


def test_fake_int8_rounds_to_absmax_over_127_and_clips():
    import torch

    x = torch.tensor([0.0, 0.5, 1.0, -1.0, 2.0, 0.004])
    got = s8.fake_int8(x, torch.tensor(1.27))  # scale 0.01
    assert got.tolist() == pytest.approx([0.0, 0.5, 1.0, -1.0, 1.27, 0.0])  # 2.0 clipped to 127 steps, 0.004 to 0
    rows = torch.tensor([[1.0, -0.3], [10.0, 2.5]])  # per row: scales 1/127 and 10/127
    per_row = s8.fake_int8(rows, rows.abs().amax(1, keepdim=True))
    assert per_row[1, 1].item() == pytest.approx(round(2.5 / (10 / 127)) * 10 / 127)


def test_flip_shares_and_the_paired_difference():
    a = [("REG_VG", 1, 10), ("REG_VG", 0, 10), ("IMG_CLS", 0, 2)]  # 1 of 22 answer tokens moved
    b = [("REG_VG", 2, 10), ("REG_VG", 1, 10), ("IMG_CLS", 0, 2)]  # 3 of 22
    assert s8.flips(a) == (pytest.approx(1 / 22), {"REG_VG": 0.05, "IMG_CLS": 0.0})
    d = s8.paired_difference(a, b, rounds=200)
    assert d["difference"] == pytest.approx(2 / 22)
    assert 0 <= d["ci95"][0] <= d["difference"] <= d["ci95"][1]  # b never moves fewer tokens than a on a record


def test_blocked_rounding_scales_each_block_by_its_own_absmax():
    import torch

    x = torch.tensor([[1.0, -2.0, 0.5, 4.0, 0.3]])  # blocks of 2: [1, -2], [0.5, 4], [0.3] (padded)
    got = s8.fake_blocked(x, block=2)
    step = [2 / 127, 2 / 127, 4 / 127, 4 / 127, 0.3 / 127]
    assert got.shape == x.shape
    assert got[0].tolist() == pytest.approx([round(v / s) * s for v, s in zip(x[0].tolist(), step)])
    assert got[0, 4].item() == pytest.approx(0.3)  # alone in its block: exact at its own absmax
