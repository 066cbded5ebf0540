"""Argument checks shared by the metric functions: misuse of the API is a one-line TaskError, not a silently
truncated zip or a TypeError from deep inside a formula. Model output never reaches here unparsed."""

from __future__ import annotations

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
