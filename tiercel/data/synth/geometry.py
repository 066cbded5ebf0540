"""Plane geometry for the synthetic scenes: object outlines, rotated boxes, clipping, areas.

Outlines are defined in a unit frame (x along the object's length, y across it, both in -0.5..0.5) and
placed by scale, rotation and translation. Everything is numpy float arrays of shape (N, 2) in pixels.
This module knows nothing about classes, colours or images.
"""

from __future__ import annotations

import numpy as np

# Right half of an airplane seen from above, nose to tail; the left half is its mirror image.
_AIRPLANE_RIGHT = [(0.5, 0.0), (0.4, 0.06), (0.12, 0.06), (-0.06, 0.5), (-0.16, 0.5), (-0.1, 0.06),
                   (-0.36, 0.05), (-0.45, 0.2), (-0.5, 0.2), (-0.48, 0.0)]


def _mirror(right: list[tuple[float, float]]) -> np.ndarray:
    left = [(x, -y) for x, y in reversed(right[1:-1])]
    return np.array(right + left, dtype=float)


def _circle(n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return 0.5 * np.stack([np.cos(t), np.sin(t)], axis=1)


RECT = np.array([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)], dtype=float)

UNIT_SHAPES = {
    "airplane": _mirror(_AIRPLANE_RIGHT),
    "ship": np.array([(0.5, 0.0), (0.26, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.26, -0.5)], dtype=float),
    "tank": _circle(12),
    "vehicle": RECT,
    "building": RECT,
    "building_l": np.array([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.05), (0.0, 0.05), (0.0, 0.5), (-0.5, 0.5)], dtype=float),
    "court": RECT,
    "pool": np.array([(-0.5, -0.3), (-0.3, -0.5), (0.3, -0.5), (0.5, -0.3), (0.5, 0.3), (0.3, 0.5), (-0.3, 0.5),
                      (-0.5, 0.3)], dtype=float),
}


def place(unit: np.ndarray, cx: float, cy: float, length: float, width: float, angle: float) -> np.ndarray:
    """Scale a unit outline to length x width, rotate it by `angle` (radians) and move it to (cx, cy)."""
    pts = np.asarray(unit, dtype=float) * (length, width)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return pts @ rot.T + (cx, cy)


def rotated_rect(cx: float, cy: float, length: float, width: float, angle: float) -> np.ndarray:
    """The 4 corners of a rotated rectangle (the true oriented box of anything placed the same way)."""
    return place(RECT, cx, cy, length, width, angle)


def hbb(points: np.ndarray) -> list[float]:
    """Tight horizontal box [x1, y1, x2, y2] of some points."""
    pts = np.asarray(points, dtype=float)
    return [float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())]


def area(points: np.ndarray) -> float:
    """Area of a simple polygon (shoelace formula)."""
    x, y = np.asarray(points, dtype=float).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def clip_to_box(points: np.ndarray, size: float) -> np.ndarray:
    """Clip a convex-or-not simple polygon to the square [0, size]^2 (Sutherland-Hodgman)."""
    pts = [tuple(p) for p in np.asarray(points, dtype=float)]
    for axis, bound, keep_less in ((0, 0.0, False), (0, size, True), (1, 0.0, False), (1, size, True)):
        pts = _clip_edge(pts, axis, bound, keep_less)
        if not pts:
            break
    return _dedupe(np.array(pts, dtype=float).reshape(-1, 2))


def _clip_edge(pts: list, axis: int, bound: float, keep_less: bool) -> list:
    def inside(p):
        return p[axis] <= bound if keep_less else p[axis] >= bound

    out = []
    for i, cur in enumerate(pts):
        prev = pts[i - 1]
        if inside(cur):
            if not inside(prev):
                out.append(_cross(prev, cur, axis, bound))
            out.append(cur)
        elif inside(prev):
            out.append(_cross(prev, cur, axis, bound))
    return out


def _cross(a, b, axis: int, bound: float) -> tuple[float, float]:
    t = (bound - a[axis]) / (b[axis] - a[axis])
    return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))


def _dedupe(pts: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    keep = [p for i, p in enumerate(pts) if np.abs(p - pts[i - 1]).max() > eps] if len(pts) > 1 else list(pts)
    return np.array(keep, dtype=float).reshape(-1, 2)


def band(points: np.ndarray, width: float) -> np.ndarray:
    """A polygon of constant `width` around a polyline (a river or a road), with mitre-free joins."""
    pts = np.asarray(points, dtype=float)
    d = np.gradient(pts, axis=0)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    left, right = pts + normal * width / 2, pts - normal * width / 2
    return np.concatenate([left, right[::-1]])


def half_plane(size: float, angle: float, offset: float) -> np.ndarray:
    """The part of the image on one side of a line: normal at `angle`, `offset` pixels from the centre."""
    c = size / 2
    n = np.array([np.cos(angle), np.sin(angle)])
    t = np.array([-n[1], n[0]])
    base = np.array([c, c]) + n * offset
    far = 2 * size
    quad = np.array([base - t * far, base + t * far, base + t * far + n * far, base - t * far + n * far])
    return clip_to_box(quad, size)
