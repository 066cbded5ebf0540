"""Metrics for answers that are words or numbers: label-set accuracy, Jaccard and macro P/R/F1, VQA exact
match, counting accuracy and MAE.

Before comparing, both sides are normalised the same simple way: lowercase; `_` and `-` become spaces; other
punctuation is dropped; whitespace is collapsed. Articles and plurals are kept ("a car" != "car",
"cars" != "car"). Falcon's own normalisation is unverified; this one only forgives spelling of separators.

A class answer may name several labels, comma-separated ("farmland, river"), as Falcon's eval reads them. It
is split on commas before normalising, each part normalised, empty parts dropped: a set of labels, so order
and repeats do not matter ("river, farmland" = "farmland, river", "farmland, farmland" = "farmland"). Accuracy
is an exact set match; `label_jaccard` averages |pred & ref| / |pred | ref| over samples (1 when both are
empty). An answer without commas is a set of one label, scored as before. VQA answers are not split ("1,200"
is one answer): VQA accuracy is an exact match of the whole normalised text.

Macro precision/recall/F1 average over the classes, the labels that occur in the reference sets. Per sample
and class: in both sets is a true positive; predicted but not in the reference set a false positive; in the
reference set but not predicted a false negative. A predicted label outside every reference set opens no class
of its own. F1 is the mean of per-class F1 (as scikit-learn's average="macro"); a class with no predictions has
precision 0.

This module knows nothing about answer text beyond `Label.text` / `Count.value`, nor about prompts.
"""

from __future__ import annotations

import math
import re
import string

import numpy as np

from tiercel.tasks.metrics.checks import paired, whole_numbers

_PUNCT = re.compile("[" + re.escape(string.punctuation.replace("_", "").replace("-", "")) + "]")


def normalize_label(text: str) -> str:
    """Lowercase, `_`/`-` to spaces, other punctuation dropped, whitespace collapsed."""
    text = re.sub(r"[_\-]", " ", str(text).lower())
    return " ".join(_PUNCT.sub("", text).split())


def label_set(text: str) -> frozenset[str]:
    """A class answer -> its labels: split on commas, each part normalised, empty parts dropped."""
    # Split first: normalize_label drops commas with the rest of the punctuation.
    return frozenset(label for part in str(text).split(",") if (label := normalize_label(part)))


def accuracy(preds: list[str], refs: list[str]) -> float:
    """Exact-match accuracy of the whole text after normalize_label; nan for no samples."""
    paired("accuracy", preds, refs)
    if not refs:
        return float("nan")
    return float(np.mean([normalize_label(p) == normalize_label(r) for p, r in zip(preds, refs)]))


def set_accuracy(preds: list[str], refs: list[str]) -> float:
    """Share of samples whose label sets (label_set) are equal; nan for no samples."""
    paired("set_accuracy", preds, refs)
    if not refs:
        return float("nan")
    return float(np.mean([label_set(p) == label_set(r) for p, r in zip(preds, refs)]))


def label_jaccard(preds: list[str], refs: list[str]) -> float:
    """Mean over samples of |pred & ref| / |pred | ref| of the label sets (1 if both are empty); nan for none."""
    paired("label_jaccard", preds, refs)
    if not refs:
        return float("nan")
    scores = []
    for p, r in zip(preds, refs):
        p, r = label_set(p), label_set(r)
        scores.append(len(p & r) / len(p | r) if p | r else 1.0)
    return float(np.mean(scores))


def macro_prf(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Macro precision, recall and F1 over the reference classes, counted on label sets (see module doc)."""
    paired("macro_prf", preds, refs)
    p = [label_set(x) for x in preds]
    r = [label_set(x) for x in refs]
    classes = sorted(set().union(*r))
    if not classes:
        return {"macro_precision": float("nan"), "macro_recall": float("nan"), "macro_f1": float("nan")}
    precision, recall, f1 = [], [], []
    for c in classes:
        tp = sum(c in a and c in b for a, b in zip(p, r))
        predicted, actual = sum(c in a for a in p), sum(c in b for b in r)
        pc = tp / predicted if predicted else 0.0
        rc = tp / actual
        precision.append(pc)
        recall.append(rc)
        f1.append(2 * pc * rc / (pc + rc) if pc + rc else 0.0)
    return {
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
    }


def classification_metrics(preds: list[str], refs: list[str]) -> dict[str, float]:
    """IMG_CLS, REG_CLS_*, PIX_CLS: label-set accuracy (headline), label Jaccard and macro P/R/F1."""
    return {
        "accuracy": set_accuracy(preds, refs),
        "label_jaccard": label_jaccard(preds, refs),
        **macro_prf(preds, refs),
        "n": float(len(refs)),
    }


def vqa_metrics(preds: list[str], refs: list[str]) -> dict[str, float]:
    """IMG_VQA: exact-match accuracy, overall and on the yes/no questions (by the reference answer)."""
    yes_no = [i for i, r in enumerate(refs) if normalize_label(r) in ("yes", "no")]
    return {
        "accuracy": accuracy(preds, refs),
        "accuracy_yes_no": accuracy([preds[i] for i in yes_no], [refs[i] for i in yes_no]),
        "n": float(len(refs)),
    }


def count_metrics(preds: list[int | None], refs: list[int]) -> dict[str, float]:
    """IMG_CT: accuracy (a missing number is wrong), MAE over the answers that held a number, and how
    many held none (`missing`)."""
    paired("count_metrics", preds, refs)
    whole_numbers("count_metrics", "predictions", preds, none_ok=True)
    whole_numbers("count_metrics", "references", refs, none_ok=False)
    read = [(p, r) for p, r in zip(preds, refs) if p is not None]
    return {
        "accuracy": float(np.mean([p == r for p, r in zip(preds, refs)])) if refs else float("nan"),
        "mae": float(np.mean([_float(abs(p - r)) for p, r in read])) if read else float("nan"),
        "missing": float(len(refs) - len(read)),
        "n": float(len(refs)),
    }


def _float(n: int) -> float:
    """float(n), or inf past float's range: a 400-digit count is infinitely wrong, not an OverflowError."""
    try:
        return float(n)
    except OverflowError:
        return math.inf
