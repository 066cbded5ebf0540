"""PIX_CHG's two-image input: the 2x2 canvas the model sees, and the way its coordinates map back.

Falcon tiles the before/after pair (same size H x W) into one 2H x 2W image: before at the top-left, after at
the bottom-right, zeros elsewhere. Answer bins are therefore bins of the canvas (2W, 2H), and answer polygons
were observed landing in the top-left quadrant. tiercel maps each instance (one `<poly>`) back as a whole:
the mean of its points picks the quadrant (x >= W is the right half, y >= H the bottom half), that quadrant's
offset is subtracted from every point, and the points are clipped to the frame [0, W] x [0, H]. A polygon
that reaches past the quadrant's edge thus ends at the frame's edge rather than wrapping to the far side, and
a copy in the after quadrant lands on the same pixels as one in the before quadrant. Writing goes the other
way: frame points are written as they are (top-left quadrant), in canvas bins, so their resolution is 2W/1000
pixels; a point on the frame's right or bottom edge is pulled into the quadrant's last bin (bin 500 would
already be the after-image).

This module knows nothing about how images are loaded or resized (tiercel.data, tiercel.runtime); it only
tiles numpy arrays and moves points.
"""

from __future__ import annotations

import numpy as np

from tiercel.errors import TaskError


def tile_change_pair(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Tile a before/after pair (H x W or H x W x C, same shape) into the 2H x 2W canvas Falcon reads."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise TaskError(f"PIX_CHG: before and after images differ in shape ({before.shape} vs {after.shape})")
    if before.ndim not in (2, 3):
        raise TaskError(f"PIX_CHG: images must be H x W or H x W x C arrays (got shape {before.shape})")
    h, w = before.shape[:2]
    canvas = np.zeros((2 * h, 2 * w) + before.shape[2:], dtype=np.result_type(before, after))
    canvas[:h, :w] = before
    canvas[h:, w:] = after
    return canvas


def canvas_size(image_size) -> tuple[float, float]:
    """(W, H) of one frame -> (2W, 2H) of the canvas the bins refer to."""
    w, h = image_size
    return 2 * w, 2 * h


def to_frame(polygons: list, image_size) -> list:
    """Canvas polygons (instances -> parts -> [x, y]) -> the same polygons in the frame.

    Each instance moves as a whole, by the offset of the quadrant its mean point lies in, then is clipped to
    [0, W] x [0, H], so a polygon that reaches canvas bin 500 ends at the frame's edge instead of wrapping across it.
    """
    w, h = image_size
    return [_instance_to_frame(instance, w, h) for instance in polygons]


def _instance_to_frame(instance: list, w: float, h: float) -> list:
    points = [point for part in instance for point in part]
    if not points:
        return [[] for _ in instance]
    mean_x, mean_y = np.mean(np.asarray(points, dtype=float), axis=0)
    dx, dy = (w if mean_x >= w else 0), (h if mean_y >= h else 0)
    # Rounding to 1e-6 only removes the float noise of the subtraction (120.1 - 100 = 20.099999999999994).
    return [[[round(_clip(x - dx, w), 6), round(_clip(y - dy, h), 6)] for x, y in part] for part in instance]


def _clip(v: float, side: float) -> float:
    return min(max(v, 0.0), side)


def to_canvas(polygons: list, image_size) -> list:
    """Frame polygons -> canvas polygons: the same points, kept inside the top-left quadrant.

    x = W would land in canvas bin 500, which reads back as the after-image's first column (x = 0); clipping
    to 0.999 W keeps it in bin 499, half a canvas bin from the edge.
    """
    w, h = image_size
    return [
        [[[min(max(x, 0.0), 0.999 * w), min(max(y, 0.0), 0.999 * h)] for x, y in part] for part in instance]
        for instance in polygons
    ]
