"""Metrics of the 14 tasks, as Falcon's eval defines them (FALCON.md), with tiercel's honest AP ranking.

The submodules take plain values (strings, numbers, pixel geometry): classification, captions, detection,
segmentation, geometry. The functions here take typed results (tiercel.tasks.results), one per sample, and are
what each task's spec calls; each returns a flat dict of floats including `n`, the number of samples.
Nothing here reads answer text or knows about bins: parse first (spec.parse), then score.
"""

from __future__ import annotations

from tiercel.tasks.metrics.captions import bleu, caption_metrics, cider_d, rouge_l, tokenize
from tiercel.tasks.metrics.classification import (
    accuracy,
    classification_metrics,
    count_metrics,
    macro_prf,
    normalize_label,
    vqa_metrics,
)
from tiercel.tasks.metrics.detection import SWEEP, average_precision, detection_metrics, grounding_metrics
from tiercel.tasks.metrics.geometry import box_iou, box_iou_matrix, convex_iou, convex_iou_matrix, rasterize
from tiercel.tasks.metrics.segmentation import iou_dice, polygons_mask, segmentation_metrics


def score_labels(preds, refs, image_sizes=None) -> dict[str, float]:
    """Label results (IMG_CLS, REG_CLS_HBB, REG_CLS_OBB, PIX_CLS): accuracy, macro P/R/F1."""
    return classification_metrics([p.text for p in preds], [r.text for r in refs])


def score_vqa(preds, refs, image_sizes=None) -> dict[str, float]:
    """IMG_VQA: exact-match accuracy (and on yes/no questions)."""
    return vqa_metrics([p.text for p in preds], [r.text for r in refs])


def score_counts(preds, refs, image_sizes=None) -> dict[str, float]:
    """IMG_CT: accuracy, MAE, missing."""
    return count_metrics([p.value for p in preds], [r.value for r in refs])


def score_captions(preds, refs, image_sizes=None) -> dict[str, float]:
    """Captions. A reference may be one Caption or a list of several (coco style)."""
    several = [r if isinstance(r, (list, tuple)) else [r] for r in refs]
    return caption_metrics([p.text for p in preds], [[x.text for x in rs] for rs in several])


def score_boxes(preds, refs, image_sizes=None) -> dict[str, float]:
    """REG_DET_HBB: ap50 (generation order), ap50_iou_ranked, precision, recall."""
    return detection_metrics([p.boxes for p in preds], [r.boxes for r in refs], box_iou_matrix, (0.5,))


def score_quads(preds, refs, image_sizes=None) -> dict[str, float]:
    """REG_DET_OBB: the same at IoU 0.1..0.9 with oriented-box IoU; headline ap50."""
    return detection_metrics([p.quads for p in preds], [r.quads for r in refs], convex_iou_matrix, SWEEP)


def score_grounding(preds, refs, image_sizes=None) -> dict[str, float]:
    """REG_VG: acc50 of the first box, mean_iou, and AP/precision/recall at IoU 0.1..0.9."""
    return grounding_metrics([p.boxes for p in preds], [r.boxes for r in refs], box_iou_matrix)


def score_polygons(preds, refs, image_sizes) -> dict[str, float]:
    """PIX_SEG, PIX_CHG: miou, dice, iou_pooled of rasterised polygons at each image's (W, H)."""
    return segmentation_metrics([p.polygons for p in preds], [r.polygons for r in refs], image_sizes)


__all__ = [
    "SWEEP",
    "accuracy",
    "average_precision",
    "bleu",
    "box_iou",
    "box_iou_matrix",
    "caption_metrics",
    "cider_d",
    "classification_metrics",
    "convex_iou",
    "convex_iou_matrix",
    "count_metrics",
    "detection_metrics",
    "grounding_metrics",
    "iou_dice",
    "macro_prf",
    "normalize_label",
    "polygons_mask",
    "rasterize",
    "rouge_l",
    "score_boxes",
    "score_captions",
    "score_counts",
    "score_grounding",
    "score_labels",
    "score_polygons",
    "score_quads",
    "score_vqa",
    "segmentation_metrics",
    "tokenize",
    "vqa_metrics",
]
