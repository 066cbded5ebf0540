"""A task's headline on resamples of its samples, from per-sample statistics computed once.

The accuracy guard (tiercel.quantize.guard) bootstraps: it scores the same samples a few hundred times, each
time drawn again with replacement. Scoring each draw whole repeats the expensive part every time: rasterising
polygons (PIX_SEG, PIX_CHG), oriented-box IoUs (REG_DET_OBB), n-gram counting (captions). None of that depends
on which other samples were drawn, so `resampler()` does it once per sample and returns a function of a draw
(indices into the samples, repeats allowed) that gives what `score(drawn)[headline]` gives, up to the order
floating-point sums are taken in:

- Means over samples (`MEAN_HEADLINES`: accuracy, acc50, miou): each sample's own score, scored alone by the
  task's score function, averaged over the draw.
- AP in generation order (`ap50`): matching is per sample, so each sample's true-positive flags are fixed; a draw
  pools the flags of its samples, ranks them by position in the answer with ties in draw order, as
  tiercel.tasks.metrics.detection does, and takes VOC AP against the draw's ground-truth count.
- CIDEr-D (`cider`): document frequencies come from the draw's references (a sample drawn twice counts twice),
  so each caption's score changes with the draw; its n-gram counts do not. A draw costs a few vectorised sums
  over the n-gram table (weights tf x idf, idf >= 0, so min(w_h, w_r) w_r = min(tf_h, tf_r) tf_r idf^2).

Hand-written because no metrics library scores bootstrap draws from sufficient statistics for these metrics.
Any other headline gets None; `scorer` then scores each draw whole with the task's metric. Used by the guard's
paired bootstrap, `tiercel compare` and `intervals`, the 95% intervals `tiercel eval` prints.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from tiercel.tasks.metrics import captions, detection, geometry

MEAN_HEADLINES = frozenset({"accuracy", "acc50", "miou"})  # the mean over samples of each sample's own score

Draw = Callable[[np.ndarray], float]


def resampler(score: Callable, headline: str, preds: list, refs: list, image_sizes: list | None = None) -> Draw | None:
    """f(pick) == score([preds[i] for i in pick], [refs[i] ...], [image_sizes[i] ...])[headline], or None.

    `score` is a task's score function (TaskSpec.score); preds and refs are parsed results, already checked.
    """
    from tiercel.tasks import metrics

    n = len(refs)
    if n == 0:
        return None
    sizes = list(image_sizes) if image_sizes is not None else [None] * n
    if headline in MEAN_HEADLINES:
        values = np.array([score([p], [r], [s] if image_sizes is not None else None)[headline]
                           for p, r, s in zip(preds, refs, sizes)], dtype=float)
        return lambda pick: float(np.mean(values[pick]))
    if headline == "ap50" and score in (metrics.score_boxes, metrics.score_quads):
        iou = geometry.box_iou_matrix if score is metrics.score_boxes else geometry.convex_iou_matrix
        attr = "boxes" if score is metrics.score_boxes else "quads"
        return _ap_draw([getattr(p, attr) for p in preds], [getattr(r, attr) for r in refs], iou)
    if headline == "cider" and score is metrics.score_captions:
        several = [r if isinstance(r, (list, tuple)) else [r] for r in refs]
        if any(not rs for rs in several):
            return None
        return _cider_draw([p.text for p in preds], [[r.text for r in rs] for rs in several])
    return None


def scorer(tag: str, preds: list, refs: list, sizes: list, whole: bool = False) -> Draw:
    """pick -> task `tag`'s headline (tiercel's protocol) on those samples: `resampler` where the headline has a
    per-sample form, else (or with `whole`) the task's metric on the drawn samples."""
    from tiercel import tasks as T

    spec = T.get(tag)
    fast = None if whole else resampler(spec.score, spec.headline, preds, refs, sizes)
    if fast is not None:
        return fast
    return lambda pick: float(spec.metric([preds[i] for i in pick], [refs[i] for i in pick],
                                          [sizes[i] for i in pick])[spec.headline])


def _ap_draw(preds: list, refs: list, iou_matrix: Callable) -> Draw:
    """AP@0.5 in generation order: per-sample tp flags once, pooled per draw."""
    flags = [detection.match(detection._matrix(iou_matrix, p, r, i), np.arange(len(p)), 0.5)
             for i, (p, r) in enumerate(zip(preds, refs))]
    n_det = np.array([len(f) for f in flags])
    n_gt = np.array([len(r) for r in refs])
    start = np.concatenate([[0], np.cumsum(n_det)[:-1]])
    tp = np.concatenate(flags) if flags else np.zeros(0, dtype=bool)

    def draw(pick: np.ndarray) -> float:
        lengths = n_det[pick]
        slot = np.repeat(np.arange(len(pick)), lengths)  # which drawn sample each detection comes from
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        position = np.arange(lengths.sum()) - first  # its place in that answer
        taken = tp[start[pick][slot] + position]
        return detection.average_precision(taken[np.lexsort((slot, position))], int(n_gt[pick].sum()))

    return draw


def _cider_draw(hyps: list[str], refs: list[list[str]], n: int = 4, sigma: float = 6.0) -> Draw:
    """CIDEr-D (tiercel.tasks.metrics.captions.cider_d) of a draw: n-gram tables once, idf per draw."""
    index: dict[tuple, int] = {}

    def grams(tokens: list[str]) -> list[tuple[int, int, int]]:  # (order, n-gram id, tf)
        return [(k, index.setdefault(g, len(index)), tf)
                for k in range(n) for g, tf in captions.ngrams(tokens, k + 1).items()]

    doc_sample, doc_gram = [], []  # each sample's reference n-grams, once per sample (document frequency)
    hyp_row, hyp_gram, hyp_w = [], [], []  # rows: sample * n + order; weight tf^2
    ref_row, ref_gram, ref_w = [], [], []  # rows: reference * n + order; weight tf^2
    dot_row, dot_gram, dot_w = [], [], []  # rows: reference * n + order; weight min(tf_h, tf_r) * tf_r
    ref_owner, penalty = [], []
    for i, (hyp, rs) in enumerate(zip(hyps, refs)):
        h_tokens = captions.tokenize(hyp)
        h = {(k, g): tf for k, g, tf in grams(h_tokens)}
        for (k, g), tf in h.items():
            hyp_row.append(i * n + k)
            hyp_gram.append(g)
            hyp_w.append(tf * tf)
        seen = set()
        for r in rs:
            j = len(ref_owner)
            r_tokens = captions.tokenize(r)
            ref_owner.append(i)
            lh, lr = max(0, len(h_tokens) - 1), max(0, len(r_tokens) - 1)  # coco's "length": bigram count
            penalty.append(math.exp(-((lh - lr) ** 2) / (2 * sigma**2)))
            for k, g, tf in grams(r_tokens):
                seen.add(g)
                ref_row.append(j * n + k)
                ref_gram.append(g)
                ref_w.append(tf * tf)
                if (k, g) in h:
                    dot_row.append(j * n + k)
                    dot_gram.append(g)
                    dot_w.append(min(h[(k, g)], tf) * tf)
        doc_sample += [i] * len(seen)
        doc_gram += sorted(seen)
    size, n_refs = len(hyps), len(ref_owner)
    doc_sample, doc_gram = np.array(doc_sample, dtype=int), np.array(doc_gram, dtype=int)
    hyp_row, hyp_gram, hyp_w = np.array(hyp_row, dtype=int), np.array(hyp_gram, dtype=int), np.array(hyp_w, float)
    ref_row, ref_gram, ref_w = np.array(ref_row, dtype=int), np.array(ref_gram, dtype=int), np.array(ref_w, float)
    dot_row, dot_gram, dot_w = np.array(dot_row, dtype=int), np.array(dot_gram, dtype=int), np.array(dot_w, float)
    ref_owner, penalty = np.array(ref_owner), np.array(penalty)
    per_sample = np.bincount(ref_owner, minlength=size)
    vocab = len(index)
    # idf from math.log, as cider_d takes it: numpy's vectorised log can differ from it in the last bit, and a
    # gram in every drawn reference must get an idf of exactly 0 (else a zero norm turns into a tiny one).
    logs = [np.zeros(0)]

    def draw(pick: np.ndarray) -> float:
        if len(logs[0]) <= len(pick):  # math.log of 0..len(pick) (df is at most the draw's size)
            logs[0] = np.array([math.log(max(1.0, float(k))) for k in range(len(pick) + 1)])
        counts = np.bincount(pick, minlength=size).astype(float)
        df = np.bincount(doc_gram, weights=counts[doc_sample], minlength=vocab)
        idf2 = (logs[0][len(pick)] - logs[0][np.rint(df).astype(int)]) ** 2
        nh = np.sqrt(np.bincount(hyp_row, weights=hyp_w * idf2[hyp_gram], minlength=size * n)).reshape(size, n)
        nr = np.sqrt(np.bincount(ref_row, weights=ref_w * idf2[ref_gram], minlength=n_refs * n)).reshape(n_refs, n)
        dot = np.bincount(dot_row, weights=dot_w * idf2[dot_gram], minlength=n_refs * n).reshape(n_refs, n)
        norms = nh[ref_owner] * nr
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), dot)
        per_ref = cos.sum(axis=1) * penalty / n
        scores = 10.0 * np.bincount(ref_owner, weights=per_ref, minlength=size) / per_sample
        return float(np.sum(counts * scores) / len(pick))

    return draw


def intervals(by_tag: dict[str, tuple[list, list, list]], rounds: int = 1000, confidence: float = 0.95,
              seed: int = 0) -> tuple[dict[str, list[float]], list[float] | None]:
    """Percentile bootstrap intervals of each task's headline and of their average (tiercel's protocol).

    by_tag: {tag: (parsed predictions, parsed references, image sizes)}. Each round draws each task's records
    with replacement, as many as it has (`rng.integers(0, n, n)`, one numpy Generator per task seeded with
    [seed, task number], so a task's interval does not depend on which other tasks ran), and scores the headline
    on them; a round's average is the mean of all its tasks' headlines, nan when one is nan, as
    tiercel.tasks.average_headline takes it; rounds with a nan are left out of the quantiles. Returns
    ({tag: [low, high]}, [low, high] of the average, or None when every round's average is nan); a task whose
    every resample is nan gets [nan, nan].
    """
    draws = {tag: (scorer(tag, preds, refs, sizes), len(refs), task_rng(seed, tag))
             for tag, (preds, refs, sizes) in by_tag.items()}
    values = {tag: np.full(rounds, np.nan) for tag in draws}
    for r in range(rounds):
        for tag, (draw, n, rng) in draws.items():
            values[tag][r] = draw(rng.integers(0, n, n))
    tail = (1 - confidence) / 2
    per_task = {tag: ([float(np.nanquantile(v, tail)), float(np.nanquantile(v, 1 - tail))]
                      if not np.isnan(v).all() else [math.nan, math.nan]) for tag, v in values.items()}
    average = np.stack(list(values.values())).mean(0) if values else np.full(rounds, np.nan)
    if np.isnan(average).all():
        return per_task, None
    return per_task, [float(np.nanquantile(average, tail)), float(np.nanquantile(average, 1 - tail))]


def task_rng(seed: int, tag: str) -> np.random.Generator:
    """The Generator a task's resamples come from: seeded with [seed, task number], independent of other tasks."""
    from tiercel import tasks as T

    return np.random.default_rng([seed, T.get(tag).number])
