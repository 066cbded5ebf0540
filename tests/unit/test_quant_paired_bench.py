"""benchmarks/quant_paired.py: the paired change of a bundle against fp32, on hand-made grounding results."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tiercel.tasks import Boxes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import quant_paired as qp  # noqa: E402

HIT, MISS = Boxes(boxes=[[0, 0, 10, 10]]), Boxes(boxes=[[50, 50, 60, 60]])


def _rows(preds: list) -> dict:
    return {(i, "REG_VG"): {"index": i, "tag": "REG_VG", "pred": p.to_dict(), "truth": HIT.to_dict(),
                            "size": [128, 128], "crop": []} for i, p in enumerate(preds)}


def test_the_change_is_relative_to_fp32_and_counts_the_answers_that_moved():
    fp32 = _rows([HIT, HIT, HIT, MISS])  # Acc@0.5 3/4
    quant = _rows([HIT, HIT, MISS, MISS])  # 2/4: one answer moved, -1/3 relative
    got = qp.paired(fp32, quant, resamples=200, seed=0)["REG_VG"]
    assert (got["reference"], got["bundle"], got["records"], got["answers_changed"]) == (0.75, 0.5, 4, 1)
    assert got["change"] == pytest.approx(-1 / 3)
    low, high = got["ci95"]  # only record 2 moved, always to a miss: no resample gains
    assert low < got["change"] < high == 0.0


def test_a_bundle_that_answers_as_fp32_has_a_zero_interval():
    fp32 = _rows([HIT, MISS, HIT])
    got = qp.paired(fp32, dict(fp32), resamples=20, seed=0)["REG_VG"]
    assert got["change"] == 0 and got["ci95"] == [0.0, 0.0] and got["answers_changed"] == 0
