"""Falcon's PIX_SEG / PIX_CHG score: per-sample IoU and Dice of masks rasterised with pycocotools.

`eval/src/segmentation.py` cannot read the polygons Falcon's own inference writes (instances -> parts -> flat
points go to pycocotools' frPyObjects as one polygon, which raises), so this is its evident intent, kept
wherever its code is clear:
- polygons are dequantised as its inference does, in float32 (torch's default dtype there):
  (bin + 0.5) * (side / 1000) of the image (of the 2W x 2H canvas for PIX_CHG);
- the mask canvas is the record's crop (width x height) when it has one, else a square of side int(m + 5), where
  m is what its nested `max(max(max(part) ...))` reads: the largest coordinate of the part that sorts last as a
  list, not always the largest coordinate (so masks past it are clipped);
- every part of every instance with at least 3 points is rasterised with pycocotools and the parts are merged
  (its calculate_merged); a sample whose prediction or reference has no polygon is skipped, not scored 0;
- IoU and Dice of two empty masks are 1; the task's scores are the means over the samples scored (0 if none).
Departure, made because its code cannot run as written: a part of fewer than 3 points has no area (pycocotools
would read a 2-point part as a box).
This module knows nothing about tasks or answer text beyond Falcon's polygon regexes.
"""

from __future__ import annotations

import re
import warnings

import numpy as np

from tiercel.errors import TaskError
from tiercel.tasks.metrics.segmentation import iou_dice

_INSTANCE = re.compile(r"<poly>(.*?)</poly>")
_PART = re.compile(r"((?:<\d+>)+)(?:<sep>|$)")
_BIN = re.compile(r"<(\d+)>")


def extract_polygons(text: str, size) -> list[list[list[float]]]:
    """extract_polygons: instances -> parts -> flat [x, y, ...] in pixels of a (W, H) image (floor bins)."""
    w, h = size
    instances = []
    for instance in _INSTANCE.finditer(text):
        parts = []
        for part in _PART.finditer(instance.group(1)):
            bins = [int(b) for b in _BIN.findall(part.group(1))]
            bins = bins[: len(bins) // 2 * 2]  # an unpaired last value is dropped
            scale = np.array([w / 1000, h / 1000] * (len(bins) // 2), dtype=np.float32)
            parts.append(((np.asarray(bins, dtype=np.float32) + np.float32(0.5)) * scale).tolist())
        if parts:
            instances.append(parts)
    return instances


def mask_scores(preds: list, refs: list, crops: list) -> dict[str, float]:
    """evaluate_segmentation's mdice and miou over samples (polygons from extract_polygons)."""
    ious, dices = [], []
    for pred, truth, crop in zip(preds, refs, crops):
        if not pred or not truth:
            continue
        w, h = _canvas(pred, truth, crop)
        iou, dice = iou_dice(_mask(pred, h, w), _mask(truth, h, w))  # both empty: 1, as its calculate_merged
        ious.append(iou)
        dices.append(dice)
    return {"miou": float(np.mean(ious)) if ious else 0.0, "dice": float(np.mean(dices)) if dices else 0.0,
            "scored": float(len(ious))}


def _canvas(pred, truth, crop) -> tuple[int, int]:
    if crop is not None and len(crop) == 4:
        return int(crop[2] - crop[0]), int(crop[3] - crop[1])
    side = int(max(_largest(truth), _largest(pred)) + 5)
    return side, side


def _largest(polygons) -> float:
    """What `max(max(max(sublist) for sublist in poly))` reads from instances -> parts: the largest value of the
    part that is largest as a list (lists compare element by element)."""
    part = max(max(parts) for parts in polygons)
    return max(part, default=0.0)


def _mask(polygons, h: int, w: int) -> np.ndarray:
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise TaskError("the falcon protocol rasterises PIX_SEG/PIX_CHG with pycocotools: "
                        "pip install 'tiercel[eval]'") from None
    merged = np.zeros((h, w), dtype=bool)
    for parts in polygons:
        for part in parts:
            if len(part) >= 6:
                rle = coco_mask.frPyObjects([list(map(float, part))], h, w)
                with warnings.catch_warnings():  # pycocotools 2.0 under numpy 2 warns about __array__(copy=)
                    warnings.simplefilter("ignore", DeprecationWarning)
                    decoded = coco_mask.decode(rle)
                merged |= decoded.reshape(h, w, -1).any(axis=2).astype(bool)
    return merged
