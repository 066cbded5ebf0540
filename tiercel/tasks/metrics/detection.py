"""Detection and grounding metrics: AP at IoU thresholds, precision/recall, Acc@0.5.

Each sample is one (image, class) query, so AP pools all samples as a single class. Matching follows VOC:
detections are taken in score order; each one looks at the ground truth it overlaps most in its sample and is a
true positive when that IoU is >= the threshold and that ground truth is still free, else a false positive. AP
is VOC's all-point interpolation (VOC2010 onwards): the area under the monotone precision envelope.

Falcon gives no confidence scores, so the ranking is a choice, and tiercel says which one each number uses:
- `ap50` ranks by generation order: within one answer the first box generated ranks highest; across answers,
  equal positions keep sample order (a stable sort). A model that puts its best boxes first is rewarded.
- `ap50_iou_ranked` ranks by each detection's best IoU with the ground truth, as Falcon's eval does. That
  uses the answer key to order predictions and inflates AP; it is reported only to compare with published
  numbers. Precision and recall come from generation-order matching (they barely depend on the order).

This module knows nothing about answer text or bins: geometry comes in pixels, one list per sample, with a
pairwise IoU function (N x M matrix, tiercel.tasks.metrics.geometry) for the geometry kind.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tiercel.errors import TaskError
from tiercel.tasks.metrics.checks import paired

SWEEP = tuple(round(t / 10, 1) for t in range(1, 10))  # IoU 0.1 .. 0.9


def average_precision(tp: np.ndarray, n_gt: int) -> float:
    """VOC all-point AP of detections already sorted by score (`tp` flags), against `n_gt` ground truths."""
    if n_gt == 0:
        return float("nan")
    tp = np.asarray(tp, dtype=float)
    hits = np.cumsum(tp)
    recall = np.concatenate([[0.0], hits / n_gt, [1.0]])
    precision = np.concatenate([[0.0], hits / np.arange(1, len(tp) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def match(ious: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """VOC matching in one sample: `ious` is detections x ground truths; returns tp flags per detection."""
    tp = np.zeros(ious.shape[0], dtype=bool)
    if ious.shape[1] == 0:
        return tp
    taken = np.zeros(ious.shape[1], dtype=bool)
    for d in order:
        g = int(np.argmax(ious[d]))
        if ious[d, g] >= threshold and not taken[g]:
            tp[d] = taken[g] = True
    return tp


def detection_metrics(preds: list, refs: list, iou_matrix: Callable, thresholds=(0.5,)) -> dict[str, float]:
    """AP (both rankings), precision and recall at each IoU threshold; keys named by the threshold in %.

    `preds` and `refs` hold one list of geometries per sample. At 0.5 the keys are `ap50`, `ap50_iou_ranked`,
    `precision50`, `recall50`, and also plain `precision` and `recall`.
    """
    paired("detection_metrics", preds, refs)
    matrices = [_matrix(iou_matrix, p, r, i) for i, (p, r) in enumerate(zip(preds, refs))]
    n_gt = sum(len(r) for r in refs)
    n_det = sum(len(p) for p in preds)
    rankings = {
        "": [-np.arange(m.shape[0], dtype=float) for m in matrices],  # generation order
        "_iou_ranked": [_best(m) for m in matrices],
    }
    out = {}
    for t in thresholds:
        key = f"{round(t * 100)}"
        for suffix, scores in rankings.items():
            tp, ranked = _pooled(matrices, scores, t)
            out[f"ap{key}{suffix}"] = average_precision(tp[ranked], n_gt)
            if not suffix:
                out[f"precision{key}"] = float(tp.sum() / n_det) if n_det else 0.0
                out[f"recall{key}"] = float(tp.sum() / n_gt) if n_gt else float("nan")
    if 0.5 in thresholds:
        out["precision"], out["recall"] = out["precision50"], out["recall50"]
    out["n"] = float(len(preds))
    return out


def _matrix(iou_matrix: Callable, p, r, i: int) -> np.ndarray:
    """The len(p) x len(r) IoU matrix of sample `i`; TaskError when p or r is not a list of geometries (a flat
    [x1, y1, x2, y2] would give a matrix of another shape)."""
    m = np.asarray(iou_matrix(p, r), dtype=float)
    shape = m.shape if m.ndim == 2 else (-1, -1)
    for what, items, n in (("predictions", p, shape[0]), ("references", r, shape[1])):
        if not isinstance(items, (list, tuple, np.ndarray)) or len(items) != n:
            count = f"{len(items)} entries" if hasattr(items, "__len__") else type(items).__name__
            raise TaskError(f"detection_metrics: {what}[{i}] must be a list of geometries, one per object "
                            f"(got {count} for {n})")
    return m


def _best(ious: np.ndarray) -> np.ndarray:
    return ious.max(axis=1) if ious.shape[1] else np.zeros(ious.shape[0])


def _pooled(matrices: list, scores: list, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    # tp flags of all detections (sample by sample) and the global order by score, ties in sample order.
    tps = [match(m, np.argsort(-s, kind="stable"), threshold) for m, s in zip(matrices, scores)]
    if not tps:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=int)
    tp, score = np.concatenate(tps), np.concatenate(scores)
    return tp, np.argsort(-score, kind="stable")


def grounding_metrics(preds: list, refs: list, iou_matrix: Callable) -> dict[str, float]:
    """REG_VG: Acc@0.5 of the first predicted box (best IoU over the reference boxes), mean IoU of that box,
    and the detection sweep (AP, precision, recall at IoU 0.1..0.9) over all predicted boxes."""
    paired("grounding_metrics", preds, refs)
    first = [float(np.max(iou_matrix(p[:1], ref))) if p and ref else 0.0 for p, ref in zip(preds, refs)]
    out = {
        "acc50": float(np.mean(np.asarray(first) >= 0.5)) if first else float("nan"),
        "mean_iou": float(np.mean(first)) if first else float("nan"),
    }
    out.update(detection_metrics(preds, refs, iou_matrix, SWEEP))
    return out
