"""Argument checks shared by the metric functions: misuse of the API is a one-line TaskError, not a silently
truncated zip or a TypeError from deep inside a formula. Model output never reaches here unparsed."""

from __future__ import annotations

import math

import numpy as np

from tiercel.errors import TaskError


def paired(name: str, preds, refs, image_sizes=None) -> None:
    """TaskError unless `preds`, `refs` (and `image_sizes`, when given) are lists of one entry per sample."""
    lists = {"predictions": preds, "references": refs}
    if image_sizes is not None:
        lists["image sizes"] = image_sizes
    for what, items in lists.items():
        if not isinstance(items, (list, tuple)):
            raise TaskError(f"{name}: {what} must be a list, one per sample (got {type(items).__name__})")
    if len({len(items) for items in lists.values()}) > 1:
        counts = ", ".join(f"{len(items)} {what}" for what, items in lists.items())
        raise TaskError(f"{name}: needs one of each per sample (got {counts})")


def whole_numbers(name: str, what: str, values, none_ok: bool) -> None:
    """TaskError unless every value is an int (or None where `none_ok`)."""
    for i, v in enumerate(values):
        if not ((isinstance(v, int) and not isinstance(v, bool)) or (none_ok and v is None)):
            allowed = "whole numbers or None" if none_ok else "whole numbers"
            raise TaskError(f"{name}: {what} must be {allowed} (item {i} is {v!r})")


def frame_sizes(name: str, image_sizes) -> None:
    """TaskError unless `image_sizes` holds one (W, H) per sample, both finite and > 0."""
    if image_sizes is None:
        raise TaskError(f"{name}: needs image_sizes, one (W, H) per sample")
    for i, size in enumerate(image_sizes):
        try:
            w, h = (float(v) for v in size)
            ok = w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise TaskError(f"{name}: image_sizes[{i}] must be (W, H) in pixels, both > 0 (got {shown(size)})")


def rows(values, width: int, what: str, layout: str) -> np.ndarray:
    """`values` as an N x `width` float array; TaskError "`what` must be `layout`" when they are not numbers in
    groups of `width` (a box of 3 numbers would otherwise be a reshape error, or silently half a box)."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):  # text, None, ragged nesting
        array = None
    if array is None or array.size % width:
        raise TaskError(f"{what} must be {layout} (got {shown(values)})")
    return array.reshape(-1, width)


def shown(value, limit: int = 60) -> str:
    """repr of `value` cut to `limit` characters, for error lines."""
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
