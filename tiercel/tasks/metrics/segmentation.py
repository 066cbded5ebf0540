"""Segmentation and change-detection metrics: per-image IoU and Dice of rasterised polygons.

Each answer's polygons (all instances, all parts) are filled into one boolean mask of the image size; the
instances are united, and inside one instance the parts combine by the even-odd rule, so a part that lies
inside another cuts a hole (whether Falcon's `<sep>` parts mean holes or separate pieces is unverified; even-odd
gives the natural answer for both). IoU and Dice are per image, then averaged: `miou` (headline) and `dice`.
An image where both masks are empty scores 1 (nothing to find, nothing found). `iou_pooled` divides the total
intersection by the total union over the set, for comparison.

This module knows nothing about bins or PIX_CHG's canvas: polygons come in pixels of the single frame.
"""

from __future__ import annotations

import numpy as np

from tiercel.tasks.metrics.checks import frame_sizes, paired
from tiercel.tasks.metrics.geometry import rasterize


def polygons_mask(polygons: list, size) -> np.ndarray:
    """Instances -> parts -> [x, y] points (pixels) -> H x W bool mask (union of instances)."""
    w, h = int(round(size[0])), int(round(size[1]))
    mask = np.zeros((h, w), dtype=bool)
    for instance in polygons:
        rasterize(instance, (w, h), rule="evenodd", out=mask)
    return mask


def iou_dice(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """IoU and Dice of two masks; both empty -> (1, 1)."""
    inter = np.count_nonzero(pred & ref)
    total = np.count_nonzero(pred) + np.count_nonzero(ref)
    if total == 0:
        return 1.0, 1.0
    return inter / (total - inter), 2 * inter / total


def segmentation_metrics(preds: list, refs: list, image_sizes: list) -> dict[str, float]:
    """PIX_SEG, PIX_CHG: mean per-image IoU (`miou`), mean Dice (`dice`) and pooled IoU (`iou_pooled`)."""
    paired("segmentation_metrics", preds, refs, image_sizes)
    frame_sizes("segmentation_metrics", image_sizes)
    ious, dices, inter, union = [], [], 0, 0
    for pred, ref, size in zip(preds, refs, image_sizes):
        a, b = polygons_mask(pred, size), polygons_mask(ref, size)
        iou, dice = iou_dice(a, b)
        ious.append(iou)
        dices.append(dice)
        inter += np.count_nonzero(a & b)
        union += np.count_nonzero(a | b)
    nan = float("nan")
    return {
        "miou": float(np.mean(ious)) if ious else nan,
        "dice": float(np.mean(dices)) if dices else nan,
        "iou_pooled": float(inter / union) if union else (1.0 if ious else nan),
        "n": float(len(ious)),
    }
