"""PIX_CHG's two-image input: the 2x2 canvas the model sees, and the way its coordinates map back.

Falcon tiles the before/after pair (same size H x W) into one 2H x 2W image: before at the top-left, after at
the bottom-right, zeros elsewhere. Answer bins are therefore bins of the canvas (2W, 2H), and answer polygons
were observed landing in the top-left quadrant; tiercel maps every point back into the single frame modulo
(W, H), so a point in any quadrant lands on the same pixel of the frame. Writing goes the other way: frame
points are written as they are (top-left quadrant), in canvas bins, so their resolution is 2W/1000 pixels;
a point on the frame's right or bottom edge is pulled into the quadrant's last bin (bin 500 would already
be the after-image).

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
    """Canvas polygons (instances -> parts -> [x, y]) -> the same polygons in the frame, modulo (W, H)."""
    w, h = image_size
    return [[[[round(x % w, 6), round(y % h, 6)] for x, y in part] for part in instance] for instance in polygons]


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
