"""Plane geometry for the metrics: box IoU, convex polygon IoU and polygon rasterisation, in numpy.

- Horizontal boxes: exact IoU; corners may come in any order (a model can write x2 < x1).
- Oriented boxes: exact IoU of the convex hulls of the two corner sets, by Sutherland-Hodgman clipping. The hull
  makes corner order irrelevant (a rectangle's hull is itself); a non-convex quad is scored as its hull.
- General polygons (segmentation): rasterised to a pixel mask by scanline fill at pixel centres, even-odd or
  nonzero rule, and compared as masks. No PIL: this package stays numpy-only.

This module knows nothing about tasks, bins or answers: coordinates are pixels, masks are H x W booleans.
"""

from __future__ import annotations

import numpy as np


def box_iou(a, b) -> float:
    """IoU of two horizontal boxes [x1, y1, x2, y2] (corners in any order)."""
    ax1, ax2 = sorted((a[0], a[2]))
    ay1, ay2 = sorted((a[1], a[3]))
    bx1, bx2 = sorted((b[0], b[2]))
    by1, by2 = sorted((b[1], b[3]))
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return float(inter / union) if union > 0 else 0.0


def polygon_area(points) -> float:
    """Signed area by the shoelace formula: positive when the points run counter-clockwise (y up)."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def convex_hull(points) -> np.ndarray:
    """Counter-clockwise convex hull (Andrew's monotone chain), without repeated or collinear points."""
    p = sorted(set(map(tuple, np.asarray(points, dtype=float).reshape(-1, 2).tolist())))
    if len(p) < 3:
        return np.asarray(p, dtype=float).reshape(-1, 2)

    def half(seq):
        out = []
        for q in seq:
            while len(out) >= 2 and _cross(out[-2], out[-1], q) <= 0:
                out.pop()
            out.append(q)
        return out[:-1]

    return np.asarray(half(p) + half(p[::-1]), dtype=float)


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: the part of polygon `subject` inside the convex, counter-clockwise `clip`."""
    out = [tuple(p) for p in subject]
    for i in range(len(clip)):
        a, b = clip[i], clip[(i + 1) % len(clip)]
        points, out = out, []
        for j, cur in enumerate(points):
            prev = points[j - 1]
            cur_in, prev_in = _cross(a, b, cur) >= 0, _cross(a, b, prev) >= 0
            if cur_in != prev_in:
                out.append(_intersect(prev, cur, a, b))
            if cur_in:
                out.append(cur)
        if not out:
            break
    return np.asarray(out, dtype=float).reshape(-1, 2)


def _intersect(p, q, a, b) -> tuple[float, float]:
    # Point where segment p-q crosses the line through a-b (only called when it does).
    dp, dq = _cross(a, b, p), _cross(a, b, q)
    t = dp / (dp - dq)
    return (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]))


def convex_iou(a, b) -> float:
    """IoU of the convex hulls of two point sets (e.g. the 4 corners of two oriented boxes)."""
    ha, hb = convex_hull(a), convex_hull(b)
    area_a, area_b = polygon_area(ha), polygon_area(hb)
    if area_a <= 0 or area_b <= 0:
        return 0.0
    if not _boxes_overlap(ha, hb):
        return 0.0
    inter = max(0.0, polygon_area(clip_convex(ha, hb)))
    union = area_a + area_b - inter
    return float(min(1.0, inter / union)) if union > 0 else 0.0


def _boxes_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a.min(0) <= b.max(0)) and np.all(b.min(0) <= a.max(0)))


def rasterize(polygons, size, rule: str = "evenodd") -> np.ndarray:
    """Fill polygons (a list of parts, each [[x, y], ...] in pixels) into an H x W bool mask.

    A pixel is inside when its centre (i + 0.5, j + 0.5) is, by the even-odd rule over all parts together
    (so a part inside another is a hole) or by the nonzero winding rule. Parts with < 3 points add nothing.
    """
    w, h = int(round(size[0])), int(round(size[1]))
    x0, y0, x1, y1 = _edges(polygons)
    if rule not in ("evenodd", "nonzero"):
        raise ValueError(f"rule must be 'evenodd' or 'nonzero' (got {rule!r})")
    if len(x0) == 0 or w <= 0 or h <= 0:
        return np.zeros((max(h, 0), max(w, 0)), dtype=bool)
    yc = np.arange(h)[:, None] + 0.5
    crosses = (np.minimum(y0, y1) <= yc) & (yc < np.maximum(y0, y1))  # half-open: a vertex counts once
    rows, edges = np.nonzero(crosses)
    t = (yc[rows, 0] - y0[edges]) / (y1[edges] - y0[edges])
    xc = x0[edges] + t * (x1[edges] - x0[edges])
    # A crossing flips every pixel whose centre is at or right of it: spans are [left, right), as is the
    # top-inclusive row test above, so a centre on a left or top edge is in, on a right or bottom edge out.
    start = np.clip(np.ceil(xc - 0.5).astype(np.int64), 0, w)
    step = np.where(y1[edges] > y0[edges], 1, -1) if rule == "nonzero" else np.ones(len(edges), dtype=np.int32)
    diff = np.zeros((h, w + 1), dtype=np.int32)
    np.add.at(diff, (rows, start), step)
    winding = np.cumsum(diff, axis=1)[:, :w]
    return (winding % 2 == 1) if rule == "evenodd" else (winding != 0)


def _edges(polygons):
    starts, ends = [], []
    for part in polygons:
        p = np.asarray(part, dtype=float).reshape(-1, 2)
        if len(p) >= 3:
            starts.append(p)
            ends.append(np.roll(p, -1, axis=0))
    if not starts:
        return (np.zeros(0),) * 4
    a, b = np.concatenate(starts), np.concatenate(ends)
    return a[:, 0], a[:, 1], b[:, 0], b[:, 1]
