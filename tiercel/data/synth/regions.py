"""Land-region builders, one per scene layout: where water, runways, roads, pads and fields lie.

Each builder takes (rng, size) and returns (regions in drawing order, marking lines, alignment angle).
The alignment angle is the direction most objects line up with (runway, shore, stalls, streets).
Regions are clipped to the image. This module knows nothing about objects, colours or text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tiercel.data.synth import geometry as G


@dataclass
class Region:
    """A land region. `name` is what PIX_CLS answers (None: not asked about); `eligible` is set when the
    region is large and not covered by later regions, so its polygon is its true visible extent."""

    name: str | None
    ground: str
    polygon: np.ndarray = field(repr=False)
    angle: float = 0.0  # direction of crop rows
    eligible: bool = False

Line = tuple[tuple[float, float], tuple[float, float], float]


def _rect(size, center, length, width, angle, name, ground) -> Region:
    poly = G.clip_to_box(G.rotated_rect(center[0], center[1], length, width, angle), size)
    return Region(name, ground, poly)


def _unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def _road(rng, size, angle=None) -> Region:
    angle = rng.uniform(0, np.pi) if angle is None else angle
    center = rng.uniform(0.2 * size, 0.8 * size, size=2)
    return _rect(size, center, 3 * size, rng.uniform(0.06, 0.09) * size, angle, "road", "asphalt")


def _dashes(p: np.ndarray, q: np.ndarray, dash: float, width: float) -> list[Line]:
    """A dashed line from p to q: dashes of `dash` pixels with equal gaps."""
    n = int(np.linalg.norm(q - p) // (2 * dash))
    d = (q - p) / max(np.linalg.norm(q - p), 1e-9)
    return [(tuple(p + d * 2 * dash * i), tuple(p + d * (2 * dash * i + dash)), width) for i in range(n)]


def airport(rng, size):
    angle = rng.uniform(0, np.pi)
    t, n = _unit(angle), _unit(angle + np.pi / 2)
    axis = size / 2 + n * rng.uniform(-0.15, 0.15) * size
    run_w, apron_w = rng.uniform(0.1, 0.15) * size, rng.uniform(0.25, 0.38) * size
    side = 1 if rng.random() < 0.5 else -1
    apron_c = axis + side * n * (run_w / 2 + apron_w / 2 + 0.02 * size) + t * rng.uniform(-0.2, 0.2) * size
    if not (0.15 * size < apron_c).all() or not (apron_c < 0.85 * size).all():
        apron_c = axis - side * n * (run_w / 2 + apron_w / 2 + 0.02 * size)
    apron = _rect(size, apron_c, rng.uniform(0.4, 0.6) * size, apron_w, angle, "concrete", "concrete")
    runway = _rect(size, axis, 3 * size, run_w, angle, "runway", "asphalt")
    lines = _dashes(axis - t * 1.5 * size, axis + t * 1.5 * size, 6 * size / 256, size / 256)
    return [apron, runway], lines, angle


def harbor(rng, size):
    normal = rng.integers(4) * np.pi / 2 + rng.normal(0, 0.3)
    offset = rng.uniform(-0.15, 0.1) * size
    water = Region("water", "water", G.half_plane(size, normal, offset))
    n, t = _unit(normal), _unit(normal + np.pi / 2)
    shore = size / 2 + n * offset
    piers = []
    for _ in range(int(rng.integers(0, 3))):
        length = rng.uniform(0.12, 0.25) * size
        center = shore + t * rng.uniform(-0.35, 0.35) * size + n * (length / 2 - 0.02 * size)
        piers.append(_rect(size, center, length, rng.uniform(0.035, 0.06) * size, normal, None, "concrete"))
    return [water] + piers, [], normal + np.pi / 2


def river(rng, size):
    angle = rng.uniform(0, np.pi)
    t, n = _unit(angle), _unit(angle + np.pi / 2)
    center = size / 2 + n * rng.uniform(-0.2, 0.2) * size
    steps = np.linspace(-0.9, 0.9, 7) * size
    wiggle = np.cumsum(rng.normal(0, 0.05 * size, 7))
    points = center + np.outer(steps, t) + np.outer(wiggle - wiggle.mean(), n)
    water = Region("water", "water", G.clip_to_box(G.band(points, rng.uniform(0.16, 0.28) * size), size))
    regions = [water] + ([_road(rng, size)] if rng.random() < 0.6 else [])
    return regions, [], angle


def industrial(rng, size):
    align = rng.uniform(0, np.pi / 2)
    pads = [_rect(size, rng.uniform(0.2, 0.8, 2) * size, rng.uniform(0.3, 0.5) * size,
                  rng.uniform(0.25, 0.45) * size, align, "concrete", "concrete") for _ in range(rng.integers(1, 4))]
    roads = [_road(rng, size, align + np.pi / 2 * rng.integers(2))] if rng.random() < 0.7 else []
    return pads + roads, [], align


def parking(rng, size):
    align = rng.integers(2) * np.pi / 2 + rng.uniform(-0.25, 0.25)
    regions = []
    for k in rng.choice(4, int(rng.integers(1, 3)), replace=False):
        side = align + k * np.pi / 2
        regions.append(Region("grassland", "grass", G.half_plane(size, side, rng.uniform(0.3, 0.4) * size)))
    t, n = _unit(align), _unit(align + np.pi / 2)
    lines, s = [], size / 256
    for row in np.arange(-0.75, 0.75, 0.09) * size:  # rows of stalls: dividers across each row
        base = size / 2 + n * row
        for col in np.arange(-0.75, 0.75, 0.035) * size:
            p = base + t * col
            lines.append((tuple(p - n * 7 * s), tuple(p + n * 7 * s), s))
    return regions, lines, align + np.pi / 2


def residential(rng, size):
    align = rng.uniform(0, np.pi / 2)
    roads = [_road(rng, size, align)]
    if rng.random() < 0.5:
        roads.append(_road(rng, size, align + np.pi / 2))
    return roads, [], align


def farmland(rng, size):
    nx, ny = int(rng.integers(2, 4)), int(rng.integers(2, 4))
    xs, ys = np.linspace(0, size, nx + 1), np.linspace(0, size, ny + 1)
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1)
    inner = (slice(1, nx), slice(1, ny))
    grid[inner] += rng.uniform(-0.07, 0.07, grid[inner].shape) * size
    kinds = [("cropland", "cropland"), ("bare soil", "soil"), ("grassland", "grass")]
    picks = rng.choice(3, nx * ny, p=[0.55, 0.25, 0.2])
    if (picks == 0).all():  # keep a farmyard: buildings and vehicles do not stand in crops
        picks[int(rng.integers(nx * ny))] = 1
    regions = []
    for k, (i, j) in enumerate((i, j) for i in range(nx) for j in range(ny)):
        name, ground = kinds[int(picks[k])]
        poly = np.array([grid[i, j], grid[i + 1, j], grid[i + 1, j + 1], grid[i, j + 1]])
        regions.append(Region(name, ground, poly, angle=rng.uniform(0, np.pi)))
    if rng.random() < 0.4:
        regions.append(_road(rng, size))
    return regions, [], rng.uniform(0, np.pi)


def sports(rng, size):
    align = rng.uniform(0, np.pi / 2)
    pad = _rect(size, rng.uniform(0.35, 0.65, 2) * size, rng.uniform(0.45, 0.65) * size,
                rng.uniform(0.35, 0.55) * size, align, "concrete", "concrete")
    roads = [_road(rng, size, align + np.pi / 2 * rng.integers(2))] if rng.random() < 0.5 else []
    return [pad] + roads, [], align


BUILDERS = {f.__name__: f for f in (airport, harbor, river, industrial, parking, residential, farmland, sports)}
