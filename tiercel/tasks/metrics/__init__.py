"""Metrics of the 14 tasks, as Falcon's eval defines them (FALCON.md), with tiercel's honest AP ranking.

The submodules take plain values (strings, numbers, pixel geometry): classification, captions, detection,
segmentation, geometry. The functions here take typed results (tiercel.tasks.results), one per sample, and are
what each task's spec calls; each returns a flat dict of floats including `n`, the number of samples.
Nothing here reads answer text or knows about bins: parse first (spec.parse), then score.
"""

from __future__ import annotations

from tiercel.errors import TaskError
from tiercel.tasks.metrics.captions import bleu, caption_metrics, cider_d, rouge_l, tokenize
from tiercel.tasks.metrics.classification import (
    accuracy,
    classification_metrics,
    count_metrics,
    label_jaccard,
    label_set,
    macro_prf,
    normalize_label,
    set_accuracy,
    vqa_metrics,
)
from tiercel.tasks.metrics.detection import SWEEP, average_precision, detection_metrics, grounding_metrics
from tiercel.tasks.metrics.geometry import box_iou, box_iou_matrix, convex_iou, convex_iou_matrix, rasterize
from tiercel.tasks.metrics.segmentation import iou_dice, polygons_mask, segmentation_metrics


def score_labels(preds, refs, image_sizes=None) -> dict[str, float]:
    """Label results (IMG_CLS, REG_CLS_HBB, REG_CLS_OBB, PIX_CLS): label-set accuracy, Jaccard, macro P/R/F1."""
    return classification_metrics(*_fields("score_labels", preds, refs, "text"))


def score_vqa(preds, refs, image_sizes=None) -> dict[str, float]:
    """IMG_VQA: exact-match accuracy (and on yes/no questions)."""
    return vqa_metrics(*_fields("score_vqa", preds, refs, "text"))


def score_counts(preds, refs, image_sizes=None) -> dict[str, float]:
    """IMG_CT: accuracy, MAE, missing."""
    return count_metrics(*_fields("score_counts", preds, refs, "value"))


def score_captions(preds, refs, image_sizes=None) -> dict[str, float]:
    """Captions. A reference may be one Caption or a list of several (coco style)."""
    texts = _field("score_captions", "preds", preds, "text")
    several = [r if isinstance(r, (list, tuple)) else [r] for r in _listed("score_captions", "refs", refs)]
    return caption_metrics(texts, [_field("score_captions", f"refs[{i}]", r, "text") for i, r in enumerate(several)])


def score_boxes(preds, refs, image_sizes=None) -> dict[str, float]:
    """REG_DET_HBB: ap50 (generation order), ap50_iou_ranked, precision, recall."""
    return detection_metrics(*_fields("score_boxes", preds, refs, "boxes"), box_iou_matrix, (0.5,))


def score_quads(preds, refs, image_sizes=None) -> dict[str, float]:
    """REG_DET_OBB: the same at IoU 0.1..0.9 with oriented-box IoU; headline ap50."""
    return detection_metrics(*_fields("score_quads", preds, refs, "quads"), convex_iou_matrix, SWEEP)


def score_grounding(preds, refs, image_sizes=None) -> dict[str, float]:
    """REG_VG: acc50 of the first box, mean_iou, and AP/precision/recall at IoU 0.1..0.9."""
    return grounding_metrics(*_fields("score_grounding", preds, refs, "boxes"), box_iou_matrix)


def score_polygons(preds, refs, image_sizes) -> dict[str, float]:
    """PIX_SEG, PIX_CHG: miou, dice, iou_pooled of rasterised polygons at each image's (W, H)."""
    return segmentation_metrics(*_fields("score_polygons", preds, refs, "polygons"), image_sizes)


def _fields(name: str, preds, refs, attr: str) -> tuple[list, list]:
    """`attr` of every prediction and reference (Label.text, Boxes.boxes, ...): what the metric scores."""
    return _field(name, "preds", preds, attr), _field(name, "refs", refs, attr)


def _field(name: str, what: str, items, attr: str) -> list:
    for i, item in enumerate(_listed(name, what, items)):
        if not hasattr(item, attr):
            raise TaskError(f"{name}: {what}[{i}] is {type(item).__name__}; expected a result with .{attr} "
                            "(parse the answers with the task's spec first)")
    return [getattr(item, attr) for item in items]


def _listed(name: str, what: str, items):
    if not isinstance(items, (list, tuple)):
        raise TaskError(f"{name}: {what} must be a list of results, one per sample (got {type(items).__name__})")
    return items


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
    "label_jaccard",
    "label_set",
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
    "set_accuracy",
    "tokenize",
    "vqa_metrics",
]
