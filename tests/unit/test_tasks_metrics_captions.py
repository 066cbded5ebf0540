"""Caption metrics (BLEU, ROUGE-L, CIDEr-D) against values worked out by hand, and nltk's BLEU if installed."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tiercel.tasks as T
from tiercel.tasks.metrics import captions as C
from tiercel.tasks.results import Caption

# A three-caption corpus with one reference each.
HYPS = ["the cat sat on the mat", "a dog runs", "Two planes on the runway."]
REFS = ["the cat is on the mat", "a dog runs fast", "two planes on the runway"]
# Clipped matches / candidate n-grams, by hand:
#   1: "the cat sat on the mat" vs "the cat is on the mat": the x2, cat, on, mat = 5/6; bigrams the cat, on the,
#      the mat = 3/5; trigrams on the mat = 1/4; 4-grams 0/3.
#   2: "a dog runs" vs "a dog runs fast": 3/3, 2/2, 1/1, 0/0 (no 4-gram in a 3-word caption).
#   3: identical after lowercasing and dropping the full stop: 5/5, 4/4, 3/3, 2/2.
# Totals: correct 13, 9, 5, 2 of 14, 11, 8, 5. Lengths: candidates 14 words, references 6 + 4 + 5 = 15.
P = [13 / 14, 9 / 11, 5 / 8, 2 / 5]
BREVITY = math.exp(1 - 15 / 14)


def _toks(texts):
    return [C.tokenize(t) for t in texts]


def test_bleu_by_hand():
    got = C.bleu(_toks(HYPS), [[r] for r in _toks(REFS)])
    for n in range(1, 5):
        assert got[n - 1] == pytest.approx(math.prod(P[:n]) ** (1 / n) * BREVITY, rel=1e-9)


def test_bleu_takes_the_closest_reference_length_ties_to_the_shorter():
    # Candidate of 3 words; references of 2 and 4 words are equally close: coco takes 2 -> no brevity penalty.
    # (Taking 4 would multiply by exp(1 - 4/3) = 0.72.) All 3 unigrams are found, so BLEU-1 = 1.
    assert C.bleu([["a", "b", "c"]], [[["a", "b"], ["a", "b", "c", "d"]]])[0] == pytest.approx(1.0)


def test_bleu_clips_repeated_words():
    # "the the the" vs "the cat": "the" counts at most once -> 1/3 unigram precision; candidate 3 > ref 2.
    assert C.bleu([["the"] * 3], [[["the", "cat"]]], max_n=1)[0] == pytest.approx(1 / 3)


def test_bleu_agrees_with_nltk():
    # nltk counts at least one candidate n-gram per sentence (coco counts 0), so every candidate here has
    # >= 4 words; with two references per image the "closest length" rule is exercised too.
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    hyps = _toks([HYPS[0], HYPS[2], "a dog runs across the road"])
    refs = [_toks([REFS[0], "a cat on a mat"]), _toks([REFS[2], "planes"]), _toks(["a dog runs fast across a road"])]
    ours = C.bleu(hyps, refs)
    for n in range(1, 5):
        theirs = bleu_score.corpus_bleu(refs, hyps, weights=(1 / n,) * n)
        assert ours[n - 1] == pytest.approx(theirs, rel=1e-6)


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat" = 5: P = R = 5/6, F = 5/6.
    assert C.rouge_l(C.tokenize(HYPS[0]), [C.tokenize(REFS[0])]) == pytest.approx(5 / 6)
    # LCS 3 of a 3-word candidate and a 4-word reference: P = 1, R = 3/4, F = 2.44 * 0.75 / (0.75 + 1.44).
    assert C.rouge_l(C.tokenize(HYPS[1]), [C.tokenize(REFS[1])]) == pytest.approx(2.44 * 0.75 / 2.19)
    # With several references, best precision and best recall are taken independently:
    # "a b" vs ["a b c d" (P 1, R 1/2), "a" (P 1/2, R 1)] -> P 1, R 1 -> F 1.
    assert C.rouge_l(["a", "b"], [["a", "b", "c", "d"], ["a"]]) == pytest.approx(1.0)
    assert C.rouge_l([], [["a"]]) == 0.0


def _lcs_table(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcd"), max_size=30), st.lists(st.sampled_from("abcd"), max_size=30))
def test_bit_parallel_lcs_matches_dynamic_programming(a, b):
    assert C.lcs_length(a, b) == _lcs_table(a, b)


def test_cider_d_by_hand():
    # Three images, one reference each: "red car", "blue boat", "red boat"; N = 3 -> log N = ln 3.
    # Document frequencies: red 2, boat 2, car 1, blue 1, every bigram 1. Weight of an n-gram: tf * (ln 3 - ln df);
    # n-grams found in no reference count df = 1.
    # Image 1 and 3: candidate = reference -> cosine 1 for unigrams and bigrams, 0 for 3-/4-grams (none):
    #   10 * (1 + 1 + 0 + 0) / 4 = 5.
    # Image 2: "blue car" vs "blue boat". Unigrams: candidate (blue ln3, car ln3), reference (blue ln3, boat ln1.5);
    #   clipped dot = ln3 * ln3 (blue); norms sqrt(2) ln3 and sqrt(ln3^2 + ln1.5^2). Bigrams share nothing.
    #   Both captions have 1 bigram, so the length penalty is exp(0) = 1.
    cos = math.log(3) ** 2 / (math.sqrt(2) * math.log(3) * math.sqrt(math.log(3) ** 2 + math.log(1.5) ** 2))
    assert cos == pytest.approx(0.66337, abs=1e-5)
    hyps = _toks(["red car", "blue car", "red boat"])
    refs = [[r] for r in _toks(["red car", "blue boat", "red boat"])]
    assert C.cider_d(hyps, refs) == pytest.approx([5.0, 10 * cos / 4, 5.0])


def test_cider_d_length_penalty_and_clipping_by_hand():
    # Two images, refs "x y" and "p q" (N = 2; every reference n-gram has df 1 -> weight ln 2 =: w).
    # Candidate 1 "x y x y": unigrams (x 2w, y 2w) vs (x w, y w): clipped dot = 2 * min(2w, w) * w = 2w^2,
    #   norms sqrt(8) w and sqrt(2) w -> 2/4 = 0.5.
    #   Bigrams ("x y" 2w, "y x" w) vs ("x y" w): dot = min(2w, w) * w = w^2, norms sqrt(5) w and w -> 1/sqrt(5).
    #   Trigrams: the reference has none -> 0. Length (bigram counts) 3 vs 1 -> penalty exp(-2^2 / (2 * 6^2)).
    penalty = math.exp(-4 / 72)
    expected = 10 * (0.5 + 1 / math.sqrt(5)) / 4 * penalty
    got = C.cider_d(_toks(["x y x y", "p q"]), [[["x", "y"]], [["p", "q"]]])
    assert got == pytest.approx([expected, 5.0])


def test_cider_d_of_a_single_image_is_zero():
    # With one image every reference n-gram has df = N = 1: all weights ln 1 - ln 1 = 0 (coco does the same).
    assert C.cider_d([["a", "b"]], [[["a", "b"]]]) == [0.0]


def test_caption_task_metric_and_several_references():
    spec = T.get("IMG_CAP")
    preds = [Caption(text=h) for h in HYPS]
    got = spec.metric(preds, [Caption(text=r) for r in REFS])
    assert got["bleu1"] == pytest.approx(P[0] * BREVITY)
    assert got["rouge_l"] == pytest.approx((5 / 6 + 2.44 * 0.75 / 2.19 + 1.0) / 3)
    assert set(got) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider", "n"}
    # A reference may be a list of several captions; the candidate equal to one of them gets ROUGE-L 1.
    multi = spec.metric(preds[:2], [[Caption(text="x"), Caption(text=HYPS[0])], [Caption(text=HYPS[1])]])
    assert multi["rouge_l"] == pytest.approx(1.0)


def test_agrees_with_pycocoevalcap_on_random_corpora():
    # pycocoevalcap's BLEU, ROUGE-L and CIDEr-D scorers are pure Python (only its tokenizer needs Java), so when
    # it is installed it is an independent reference on pre-tokenised text.
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    rng = random.Random(0)
    words = "a the red car boat on in near road river two planes parked large small".split()

    def caption():
        return " ".join(rng.choices(words, k=rng.randint(1, 12)))

    for _ in range(10):
        n = rng.randint(2, 8)
        res = {i: [caption()] for i in range(n)}
        gts = {i: [caption() for _ in range(rng.randint(1, 3))] for i in range(n)}
        hyps, refs = [res[i][0].split() for i in range(n)], [[g.split() for g in gts[i]] for i in range(n)]
        assert C.bleu(hyps, refs) == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0], abs=1e-9)
        ours = sum(C.rouge_l(h, rs) for h, rs in zip(hyps, refs)) / n
        assert ours == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-9)
        assert sum(C.cider_d(hyps, refs)) / n == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-9)
