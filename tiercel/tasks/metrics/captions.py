"""Caption metrics as coco-caption (pycocoevalcap) computes them: BLEU-1..4, ROUGE-L and CIDEr-D.

Hand-written in pure Python because coco-caption's tokenizer (and METEOR, and SPICE) run on Java, which a
field device or a CI box does not have. The formulas follow pycocoevalcap line by line:
- BLEU: corpus-level; clipped n-gram counts summed over all captions, geometric mean of the 1..n precisions
  (with coco's 1e-15 / 1e-9 guards), brevity penalty from the reference length closest to each caption
  (ties to the shorter one) summed over the corpus.
- ROUGE-L: per caption, LCS-based F-measure with beta 1.2 using the best precision and best recall over its
  references; the corpus score is the mean.
- CIDEr-D: TF-IDF n-gram vectors (n = 1..4) with document frequencies from the references of the evaluated set
  (so one caption alone scores 0), clipped cosine similarity, Gaussian length penalty with sigma 6, mean over
  n and references, times 10. As in pycocoevalcap, the length in that penalty counts bigrams, not words.
METEOR needs Java (and WordNet) and is not provided. The tokenizer approximates coco's PTB tokenizer plus
punctuation removal: lowercase runs of letters and digits (so "don't" -> "don", "t"; coco keeps "n't").

Scores are fractions as pycocoevalcap returns them (papers print them x100: CIDEr 0.305 is "30.5").
This module knows nothing about tasks or results: it takes strings.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from tiercel.tasks.metrics.checks import paired

_TINY, _SMALL = 1e-15, 1e-9  # pycocoevalcap's guards against log(0) and division by zero


def tokenize(text: str) -> list[str]:
    """Lowercase words: runs of letters and digits (punctuation dropped)."""
    return re.findall(r"[a-z0-9]+", str(text).lower())


def ngrams(tokens: list[str], n: int) -> Counter:
    """Counts of the n-grams of one order."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(hyps: list[list[str]], refs: list[list[list[str]]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..max_n (coco-caption's "closest" reference length). Returns one score per order."""
    correct, guess = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, rs in zip(hyps, refs):
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in rs)[1]
        for k in range(max_n):
            counts = ngrams(hyp, k + 1)
            best = Counter()
            for r in rs:
                best |= ngrams(r, k + 1)  # element-wise max over the references
            correct[k] += sum(min(c, best[g]) for g, c in counts.items())
            guess[k] += max(0, len(hyp) - k)
    scores, product = [], 1.0
    for k in range(max_n):
        product *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (hyp_len + _TINY) / (ref_len + _SMALL)
    penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    return [s * penalty for s in scores]


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix / Hyyro): O(len(a)) big-int ops."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(b):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for token in a:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - bin(v).count("1")


def rouge_l(hyp: list[str], refs: list[list[str]], beta: float = 1.2) -> float:
    """ROUGE-L F-measure of one caption against its references (coco-caption's Rouge)."""
    if not hyp:
        return 0.0
    lcs = [lcs_length(hyp, r) for r in refs]
    precision = max(x / len(hyp) for x in lcs)
    recall = max((x / len(r) if r else 0.0) for x, r in zip(lcs, refs))
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def cider_d(hyps: list[list[str]], refs: list[list[list[str]]], n: int = 4, sigma: float = 6.0) -> list[float]:
    """CIDEr-D of each caption (coco-caption's Cider); the corpus score is their mean."""
    doc_freq = Counter()
    for rs in refs:
        doc_freq.update({g for r in rs for k in range(1, n + 1) for g in ngrams(r, k)})
    log_n_images = math.log(float(len(refs))) if refs else 0.0

    def vector(tokens):
        vec, norm = [{} for _ in range(n)], [0.0] * n
        for k in range(n):
            for g, tf in ngrams(tokens, k + 1).items():
                vec[k][g] = tf * (log_n_images - math.log(max(1.0, doc_freq[g])))
                norm[k] += vec[k][g] ** 2
        return vec, [math.sqrt(x) for x in norm], max(0, len(tokens) - 1)  # coco's "length": bigram count

    scores = []
    for hyp, rs in zip(hyps, refs):
        vh, nh, lh = vector(hyp)
        total = 0.0
        for r in rs:
            vr, nr, lr = vector(r)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
            for k in range(n):
                dot = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                total += (dot / (nh[k] * nr[k]) if nh[k] and nr[k] else dot) * penalty / n
        scores.append(10.0 * total / len(rs))
    return scores


def caption_metrics(preds: list[str], refs: list[list[str]]) -> dict[str, float]:
    """IMG_CAP, IMG_CAP_DETAILED, REG_CAP: bleu1..bleu4, rouge_l, cider (headline). One or more refs each."""
    paired("caption_metrics", preds, refs)
    if not preds:
        return {k: float("nan") for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider")} | {"n": 0.0}
    hyps = [tokenize(p) for p in preds]
    toks = [[tokenize(r) for r in rs] for rs in refs]
    out = {f"bleu{k + 1}": s for k, s in enumerate(bleu(hyps, toks))}
    out["rouge_l"] = sum(rouge_l(h, rs) for h, rs in zip(hyps, toks)) / len(hyps)
    out["cider"] = sum(cider_d(hyps, toks)) / len(hyps)
    out["n"] = float(len(hyps))
    return out
