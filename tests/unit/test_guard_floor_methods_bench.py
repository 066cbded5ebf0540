"""benchmarks/guard_floor_methods.py: each way's decision on cases whose answer is known by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import guard_floor_methods as gfm  # noqa: E402

LEVEL = 0.1 / 14


@pytest.mark.parametrize("method", gfm.METHODS)
def test_identical_answers_are_never_refused_and_a_total_loss_on_16_always_is(method):
    rng = np.random.default_rng(0)
    f = np.arange(16) % 2 == 0
    assert not gfm.refuses(f, f.copy(), method, LEVEL, 0.01, rng)
    assert gfm.refuses(np.ones(16, bool), np.zeros(16, bool), method, LEVEL, 0.01, rng)
    assert not gfm.refuses(np.zeros(16, bool), np.zeros(16, bool), method, LEVEL, 0.01, rng)  # fp32 at 0: unchecked


def test_the_sign_flip_p_value_by_hand():
    # fp32 right on all n, the quantized answer wrong on all: only the swap of nothing (or everything, drop -inf:
    # fp32 0 gives nan) reaches the observed drop of 1, so p is about 2^-n: refused at n 8 (0.0039 < 0.0071),
    # not at n 6 (0.016).
    rng = np.random.default_rng(1)
    assert gfm.refuses(np.ones(8, bool), np.zeros(8, bool), "signflip-2000", LEVEL, 0.01, rng)
    assert not gfm.refuses(np.ones(6, bool), np.zeros(6, bool), "signflip-2000", LEVEL, 0.01, rng)
