"""benchmarks/quant_paired.py: the paired change of a bundle against fp32, on hand-made grounding results."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tiercel.tasks import Boxes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import quant_paired as qp  # noqa: E402

HIT, MISS = Boxes(boxes=[[0, 0, 10, 10]]), Boxes(boxes=[[50, 50, 60, 60]])


def _refs(n: int) -> dict:
    return {i: ("REG_VG", HIT, (128, 128), []) for i in range(n)}


def test_the_change_is_relative_to_fp32_and_counts_the_answers_that_moved():
    refs, idx = _refs(4), [0, 1, 2, 3]
    fp32 = {0: HIT, 1: HIT, 2: HIT, 3: MISS}  # Acc@0.5 3/4
    quant = {0: HIT, 1: HIT, 2: MISS, 3: MISS}  # 2/4: one answer moved, -1/3 relative
    resamples = [np.array([0, 1, 2, 3]), np.array([2, 2, 3, 3])]  # the whole set; then 2 and 3 twice each
    a, b = qp.resampled("REG_VG", idx, refs, fp32, resamples), qp.resampled("REG_VG", idx, refs, quant, resamples)
    assert a == [0.75, 0.75, 0.5] and b == [0.5, 0.5, 0.0]
    got = qp.paired("REG_VG", idx, fp32, quant, a, b)
    assert got["change"] == pytest.approx(-1 / 3) and got["answers_changed"] == 1 and got["records"] == 4
    # resampled changes -1/3 and -1; numpy's linear percentiles of the two: -1 + q x 2/3
    assert got["ci95"] == pytest.approx([-1 + 0.025 * 2 / 3, -1 + 0.975 * 2 / 3])


def test_a_bundle_that_answers_as_fp32_has_a_zero_interval():
    refs, idx = _refs(3), [0, 1, 2]
    fp32 = {0: HIT, 1: MISS, 2: HIT}
    resamples = [np.random.default_rng(0).integers(0, 3, 3) for _ in range(20)]
    a = qp.resampled("REG_VG", idx, refs, fp32, resamples)
    got = qp.paired("REG_VG", idx, fp32, dict(fp32), a, list(a))
    assert got["change"] == 0 and got["ci95"] == [0.0, 0.0] and got["answers_changed"] == 0
