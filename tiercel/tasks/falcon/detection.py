"""Falcon's scores for boxes and quads, in answer bins, as `eval/evaluation.py` computes them.

- REG_DET_HBB (`prepare_detection_format` + `eval/src/detection.py`, the VOC mAP script): every predicted box
  gets as its confidence its best IoU with the record's references (IoU with 0.1 added to the union); boxes
  are ranked by it, matched greedily to the best unused reference at IoU >= 0.5 computed with the VOC `+1`
  pixel convention, and AP is the area under the monotone precision/recall curve (all points).
- REG_DET_OBB and REG_VG (`eval/src/detection_obb.py`): per record, each prediction takes its best-IoU
  reference; a reference claimed by several keeps the one with the highest IoU, the others are false positives;
  over all records, predictions are ranked by IoU and precision/recall/AP follow at each threshold 0.1..0.9.
  "Accuracy" is TP / (FN + predictions) = TP / (references + FP); FAR is FP / (FP + TP + FN). REG_VG boxes use
  the HBB IoU with 0.1 added to the union, REG_DET_OBB quads shapely polygon IoU (an invalid quad scores 0).

Boxes are the answer's bins as integers: Falcon never converts them to pixels. Ties in the IoU ranking are
ordered as numpy's default argsort orders them (as Falcon's code does); REG_DET_HBB keeps record order where
Falcon's file-name sort would order by image name. Written here because Falcon's scorers write temporary files,
print, and cannot be imported without matplotlib and scikit-learn; shapely is imported only for quads.
This module knows nothing about tasks or answer text (tiercel.tasks.falcon extracts the bins).
"""

from __future__ import annotations

import numpy as np

from tiercel.errors import TaskError
from tiercel.tasks.metrics.detection import average_precision

SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def box_iou(a, b) -> float:
    """calculate_iou_hbb: intersection / (area_a + area_b - intersection + 0.1); 1.0 where that divides by 0."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 0.1
    return inter / union if union else 1.0  # its try/except answers 1 to a ZeroDivisionError


def quad_iou(a, b) -> float:
    """calculate_iou_obb: shapely polygon IoU of two quads (8 values); 0 when either is not a valid polygon."""
    try:
        from shapely.geometry import Polygon
    except ImportError:
        raise TaskError("the falcon protocol scores REG_DET_OBB with shapely: pip install 'tiercel[eval]'") from None
    pa, pb = (Polygon(list(zip(q[0::2], q[1::2]))) for q in (a, b))
    if not (pa.is_valid and pb.is_valid) or not pa.intersects(pb):
        return 0.0
    inter = pa.intersection(pb).area
    return inter / (pa.area + pb.area - inter)


def hbb_ap50(preds: list[list], refs: list[list]) -> dict[str, float]:
    """REG_DET_HBB's mAP@0.5 over records of boxes in bins (one class); nan with no reference box."""
    detections = []  # (confidence, record, box)
    for i, (boxes, truths) in enumerate(zip(preds, refs)):
        for box in boxes:
            detections.append((max([0.0] + [box_iou(box, t) for t in truths]), i, box))  # its max starts at 0
    n_truth = sum(len(t) for t in refs)
    if not n_truth:  # Falcon divides by its number of classes, 0 here
        return {"ap50": float("nan")}
    detections.sort(key=lambda d: d[0], reverse=True)  # stable: record order among ties
    used = [[False] * len(t) for t in refs]
    tp = np.zeros(len(detections))
    for k, (_, i, box) in enumerate(detections):
        best, match = -1.0, -1
        for j, truth in enumerate(refs[i]):
            overlap = _voc_iou(box, truth)
            if overlap is not None and overlap > best:
                best, match = overlap, j
        if best >= 0.5 and not used[i][match]:
            tp[k], used[i][match] = 1, True
    return {"ap50": average_precision(tp, n_truth)}


def _voc_iou(a, b) -> float | None:
    """The VOC script's IoU with `+1` widths; None where the boxes do not overlap by a full unit."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return None
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - iw * ih
    return iw * ih / union


def sweep_scores(preds: list[list], refs: list[list], quads: bool) -> dict[str, float]:
    """evaluate_detection2 at IoU 0.1..0.9: ap, acc, precision, recall and far per threshold (keys ap50 ...)."""
    iou = quad_iou if quads else box_iou
    best = [[_best(iou, p, truths) for p in boxes] for boxes, truths in zip(preds, refs)]
    out = {}
    for t in SWEEP:
        key = f"{round(t * 100)}"
        scores = _at_threshold(best, refs, t)
        out.update({f"{name}{key}": value for name, value in scores.items()})
    return out


def _best(iou, box, truths) -> tuple[float, int]:
    best, match = 0.0, -1
    for j, truth in enumerate(truths):
        value = iou(box, truth)
        if value > best:
            best, match = value, j
    return best, match


def _at_threshold(best: list[list[tuple]], refs: list[list], t: float) -> dict[str, float]:
    ious, hits, missed = [], [], 0
    for record, truths in zip(best, refs):
        claims = [j if value >= t else -1 for value, j in record]
        winners = set()
        for j in range(len(truths)):
            claimants = [k for k, c in enumerate(claims) if c == j]
            if claimants:
                winners.add(max(claimants, key=lambda k: record[k][0]))  # the first of equal IoUs
        # a winner with IoU 0 cannot exist: a claim needs IoU >= t > 0
        hits.extend(k in winners for k in range(len(record)))
        ious.extend(value for value, _ in record)
        missed += len(truths) - len(winners)
    n_pred, n_truth = len(ious), sum(len(t) for t in refs)
    order = np.argsort(-np.asarray(ious, dtype=float))
    tp = np.asarray(hits, dtype=float)[order]
    ap = average_precision(tp, n_truth) if n_truth else 0.0  # Falcon's np.zero(...) raises without references
    if not n_pred:
        return {"ap": ap, "acc": 0.0, "precision": 0.0, "recall": 0.0, "far": 0.0}
    tp_all = float(np.sum(tp))
    fp_all = n_pred - tp_all
    accuracy = tp_all / (missed + n_pred) if missed + n_pred else 0.0
    far = fp_all / (fp_all + tp_all + missed) if fp_all + tp_all + missed else 0.0
    return {"ap": ap, "acc": accuracy, "precision": tp_all / n_pred, "recall": tp_all / n_truth if n_truth else 0.0,
            "far": far}
