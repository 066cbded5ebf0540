"""Falcon's scores for text answers: class labels, VQA and counting, captions.

Each function takes the answer strings as Falcon's inference writes them (decoder tokens removed, nothing else
touched) and normalises them the way `eval/evaluation.py` `read_json_result` does before scoring:
- references: lower-case, `.` removed; predictions: lower-case, `.` and `<` removed (captions: lower-case only);
- labels (`eval/src/classification.py`): both sides split on ", " into label sets; when any reference holds a
  comma the task is multi-label and every score is a per-sample set overlap, else single-label accuracy (exact
  set match) with macro P/R/F1 over the reference classes plus a `dummy` class for every answer outside them;
- VQA and counting (`eval/src/vqa.py`): exact string match, and scikit-learn's support-weighted F1;
- captions (`eval/src/captioning.py`): pycocoevalcap's BLEU, ROUGE-L and CIDEr(-D) on untokenised text, called
  as `compute_score(predictions, references)`: the references sit in the candidate slot.

Written by hand on tiercel's caption formulas (tiercel.tasks.metrics.captions, equal to pycocoevalcap) and in
numpy for the scikit-learn parts (accuracy_score, precision_score with zero_division 0), so the falcon
protocol needs neither scikit-learn nor Java. Returns fractions; Falcon prints captions x100.
This module knows nothing about tasks, results or geometry.
"""

from __future__ import annotations

import numpy as np

from tiercel.tasks.metrics.captions import bleu, cider_d, rouge_l

_DECODER_TOKENS = ("</s>", "<s>", "<pad>", "</pad>")  # what single_gpu_inference_eval.py strips from answers


def strip_decoder_tokens(text: str) -> str:
    """The answer text Falcon's inference keeps for a text task."""
    for token in _DECODER_TOKENS:
        text = text.replace(token, "")
    return text


def reference(text: str) -> str:
    """A reference label / VQA answer / count as read_json_result normalises it."""
    return text.lower().replace(".", "")


def prediction(text: str) -> str:
    """A predicted label / VQA answer / count as read_json_result normalises it."""
    return strip_decoder_tokens(text).lower().replace(".", "").replace("<", "")


def label_scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    """evaluate_classification on normalised strings: accuracy, precision, recall, f1, and multi_label (0/1)."""
    if any("," in r for r in refs):
        return _multi_label([set(p.split(", ")) for p in preds], [set(r.split(", ")) for r in refs])
    return _single_label(preds, refs)


def _multi_label(preds: list[set], refs: list[set]) -> dict[str, float]:
    # sample_acc and scikit-learn's average="samples"; split() always leaves one label, so no set is empty
    inter = np.array([len(p & r) for p, r in zip(preds, refs)], dtype=float)
    union = np.array([len(p | r) for p, r in zip(preds, refs)], dtype=float)
    n_pred = np.array([len(p) for p in preds], dtype=float)
    n_ref = np.array([len(r) for r in refs], dtype=float)
    return {"accuracy": float(np.mean(inter / union)), "precision": float(np.mean(inter / n_pred)),
            "recall": float(np.mean(inter / n_ref)), "f1": float(np.mean(2 * inter / (n_pred + n_ref))),
            "multi_label": 1.0}


def _single_label(preds: list[str], refs: list[str]) -> dict[str, float]:
    classes = list(dict.fromkeys(refs))  # first-seen order, as read_json_result collects class_names
    ref_sets = [set(r.strip().split(", ")) for r in refs]
    pred_sets = [set(p.strip().split(", ")) for p in preds]
    extra = set().union(*pred_sets) - set(classes)
    if extra:
        pred_sets = [{"dummy" if c in extra else c for c in p} for p in pred_sets]
        classes = classes + ["dummy"]
    # MultiLabelBinarizer(classes=...): labels outside `classes` (a reference whose strip() changed it) are dropped
    truth = np.array([[c in s for c in classes] for s in ref_sets], dtype=bool)
    guess = np.array([[c in s for c in classes] for s in pred_sets], dtype=bool)
    tp = (truth & guess).sum(axis=0).astype(float)
    n_pred, n_true = guess.sum(axis=0).astype(float), truth.sum(axis=0).astype(float)
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    recall = np.divide(tp, n_true, out=np.zeros_like(tp), where=n_true > 0)
    f1 = np.divide(2 * tp, n_pred + n_true, out=np.zeros_like(tp), where=(n_pred + n_true) > 0)
    return {"accuracy": float(np.mean(np.all(truth == guess, axis=1))), "precision": float(precision.mean()),
            "recall": float(recall.mean()), "f1": float(f1.mean()), "multi_label": 0.0}


def exact_scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    """evaluate_vqa: exact-match accuracy and the support-weighted F1 over the answers as classes."""
    preds, refs = np.asarray(preds, dtype=object), np.asarray(refs, dtype=object)
    f1s, support = [], []
    for label in sorted(set(refs) | set(preds)):
        tp = float(np.sum((refs == label) & (preds == label)))
        n_pred, n_true = float(np.sum(preds == label)), float(np.sum(refs == label))
        f1s.append(2 * tp / (n_pred + n_true) if n_pred + n_true else 0.0)
        support.append(n_true)
    weights = np.asarray(support)
    return {"accuracy": float(np.mean(preds == refs)), "f1": float(np.dot(f1s, weights) / weights.sum())}


def caption_scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Caption_Scorer.compute_scores: BLEU-1..4, ROUGE-L, CIDEr with predictions and references swapped."""
    candidates = [r.lower() for r in refs]  # the references, in the candidate slot
    references = [strip_decoder_tokens(p).lower() for p in preds]
    out = {f"bleu{k + 1}": s for k, s in enumerate(bleu([c.split() for c in candidates],
                                                          [[r.split()] for r in references]))}
    # pycocoevalcap's Rouge splits on single spaces (so two spaces make an empty word); Bleu and Cider on runs
    out["rouge_l"] = float(np.mean([rouge_l(c.split(" "), [r.split(" ")]) for c, r in zip(candidates, references)]))
    out["cider"] = float(np.mean(cider_d([c.split() for c in candidates], [[r.split()] for r in references])))
    return out
