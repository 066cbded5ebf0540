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

from tiercel.errors import TaskError
from tiercel.tasks.metrics.checks import rows

_BOXES = ("boxes", "[x1, y1, x2, y2], 4 numbers each")
_POINTS = ("point sets", "[x, y] pairs")


def box_iou(a, b) -> float:
    """IoU of two horizontal boxes [x1, y1, x2, y2] (corners in any order)."""
    return float(box_iou_matrix([a], [b])[0, 0])


def box_iou_matrix(a, b) -> np.ndarray:
    """Pairwise IoU of N and M horizontal boxes -> N x M (corners in any order; no area -> IoU 0)."""
    a, b = _ordered(a), _ordered(b)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], axis=1), np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _ordered(boxes) -> np.ndarray:
    boxes = rows(boxes, 4, *_BOXES)
    return np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)


def polygon_area(points) -> float:
    """Signed area by the shoelace formula: positive when the points run counter-clockwise (y up)."""
    p = rows(points, 2, *_POINTS)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def convex_hull(points) -> np.ndarray:
    """Counter-clockwise convex hull (Andrew's monotone chain), without repeated or collinear points."""
    p = sorted(set(map(tuple, rows(points, 2, *_POINTS).tolist())))
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


def convex_iou_matrix(a: list, b: list) -> np.ndarray:
    """Pairwise convex_iou of N and M point sets -> N x M. Pairs whose bounding boxes are apart are skipped,
    and a point set given many times (a model repeating one quad) is measured once per distinct pair."""
    ua, ia = _distinct(a)
    ub, ib = _distinct(b)
    if not ua or not ub:
        return np.zeros((len(a), len(b)))
    extent = np.array([np.concatenate([p.min(0), p.max(0)]) for p in ua + ub])
    near = box_iou_matrix(extent[: len(ua)], extent[len(ua) :]) > 0
    iou = np.zeros((len(ua), len(ub)))
    for i, j in zip(*np.nonzero(near)):
        iou[i, j] = convex_iou(ua[i], ub[j])
    return iou[np.ix_(ia, ib)]


def _distinct(sets: list) -> tuple[list[np.ndarray], np.ndarray]:
    """(distinct point sets as K x 2 arrays, index of each input among them)."""
    index: dict[bytes, int] = {}
    arrays, where = [], []
    for p in sets:
        arr = rows(p, 2, *_POINTS)
        key = index.setdefault(arr.tobytes(), len(arrays))
        if key == len(arrays):
            arrays.append(arr)
        where.append(key)
    return arrays, np.asarray(where, dtype=int)


def rasterize(polygons, size, rule: str = "evenodd", out: np.ndarray | None = None) -> np.ndarray:
    """Fill polygons (a list of parts, each [[x, y], ...] in pixels) into an H x W bool mask.

    A pixel is inside when its centre (i + 0.5, j + 0.5) is, by the even-odd rule over all parts together
    (so a part inside another is a hole) or by the nonzero winding rule. Parts with < 3 points add nothing.
    With `out` (an H x W bool mask) the fill is OR-ed into it, which is how instances are united.
    """
    if rule not in ("evenodd", "nonzero"):
        raise TaskError(f"rasterize: rule must be 'evenodd' or 'nonzero' (got {rule!r})")
    w, h = max(int(round(size[0])), 0), max(int(round(size[1])), 0)
    mask = np.zeros((h, w), dtype=bool) if out is None else out
    edges = _edges(polygons)
    if len(edges) == 0 or w == 0 or h == 0:
        return mask
    # Only the bounding window can hold a centre inside: left of it no crossing counts, right of it all do.
    (r0, r1), (c0, c1) = _span(edges[:, 1::2], h), _span(edges[:, 0::2], w)
    if r1 > r0 and c1 > c0:
        mask[r0:r1, c0:c1] |= _fill(edges - [c0, r0, c0, r0], r1 - r0, c1 - c0, rule)
    return mask


def _span(values: np.ndarray, n: int) -> tuple[int, int]:
    return int(np.clip(np.floor(values.min()), 0, n)), int(np.clip(np.ceil(values.max()), 0, n))


def _fill(edges: np.ndarray, h: int, w: int, rule: str) -> np.ndarray:
    # Scanline fill of an h x w window; edges are rows [x0, y0, x1, y1] in window pixels.
    x0, y0, x1, y1 = edges.T
    yc = np.arange(h)[:, None] + 0.5
    crosses = (np.minimum(y0, y1) <= yc) & (yc < np.maximum(y0, y1))  # half-open: a vertex counts once
    rows, e = np.nonzero(crosses)
    t = (yc[rows, 0] - y0[e]) / (y1[e] - y0[e])
    xc = x0[e] + t * (x1[e] - x0[e])
    # A crossing flips every pixel whose centre is at or right of it: spans are [left, right), as is the
    # top-inclusive row test above, so a centre on a left or top edge is in, on a right or bottom edge out.
    start = np.clip(np.ceil(xc - 0.5).astype(np.int64), 0, w)
    step = np.where(y1[e] > y0[e], 1, -1) if rule == "nonzero" else np.ones(len(e), dtype=np.int32)
    diff = np.zeros((h, w + 1), dtype=np.int32)
    np.add.at(diff, (rows, start), step)
    winding = np.cumsum(diff, axis=1)[:, :w]
    return (winding % 2 == 1) if rule == "evenodd" else (winding != 0)


def _edges(polygons) -> np.ndarray:
    # All closing edges of all parts with >= 3 points, as rows [x0, y0, x1, y1].
    parts = [rows(part, 2, "polygon parts", "[x, y] pairs") for part in polygons]
    parts = [p for p in parts if len(p) >= 3]
    if not parts:
        return np.zeros((0, 4))
    return np.concatenate([np.hstack([p, np.roll(p, -1, axis=0)]) for p in parts])
