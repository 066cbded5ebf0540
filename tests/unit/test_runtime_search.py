"""Beam search's linear-time top-k ranks candidates exactly as a stable sort does, ties and -inf included."""

from __future__ import annotations

import numpy as np
import pytest

from tiercel.runtime import generate
from tiercel.runtime.generate import GenerationConfig, _topk, beam_search


def _sorted_topk(x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-x, axis=-1, kind="stable")[:, :k]


@pytest.mark.parametrize("values", ["normal", "ties", "ties_and_inf", "masked", "nan"])
@pytest.mark.parametrize("width", ["narrow", "wide"])  # wide: the block-maxima floor (1,024 values and up)
def test_topk_equals_the_stable_sort(values, width):
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows = int(rng.integers(1, 5))
        n = int(rng.integers(1, 40) if width == "narrow" else rng.integers(1024, 5000))
        k = int(rng.integers(1, min(n, 12) + 1))
        x = rng.standard_normal((rows, n)) if values == "normal" else rng.integers(-2, 3, (rows, n)).astype(float)
        if values == "ties_and_inf":
            x[x < 0] = -np.inf
        if values == "masked":  # what a grammar leaves: a few finite values, maybe fewer than k
            x = np.full((rows, n), -np.inf)
            for row in x:
                row[rng.integers(0, n, int(rng.integers(0, 12)))] = rng.standard_normal()
        if values == "nan":
            x[x == 0] = np.nan
        x = x.astype(np.float32)
        assert np.array_equal(_topk(x, k), _sorted_topk(x, k)), (x, k)


class RandomLogits:
    """A decoder whose logits are seeded noise over Florence-2's 51,290 tokens, with a few tied maxima."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def step(self, tokens):
        logits = (3 * self.rng.standard_normal((len(tokens), 51290))).astype(np.float32)
        logits[:, 100:104] = logits.max() + 1  # ties at the top: the lowest index must win, as in the sort
        return logits

    def reorder(self, rows):
        pass


def test_beam_search_picks_the_same_sequences_as_with_a_full_sort(monkeypatch):
    cfg = GenerationConfig(num_beams=3, max_new_tokens=12, no_repeat_ngram_size=3)
    fast = beam_search(RandomLogits(1), 2, cfg)
    monkeypatch.setattr(generate, "_topk", _sorted_topk)
    assert beam_search(RandomLogits(1), 2, cfg) == fast
    assert fast[0][:2] == [0, 100]  # forced bos, then the lowest of the tied tokens
