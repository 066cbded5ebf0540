"""Scene layout: land regions, objects and distractors of one synthetic image, and its changed twin.

A scene is drawn in this order: base ground, land regions (each scene class has a builder below),
markings, objects (larger classes first, each on the ground its class allows, never overlapping) and
tree clusters as distractors. Ground truth comes from this layout, never from pixels: an object's
outline, oriented box and horizontal box are exact.

This module knows nothing about drawing (render.py) or text (language.py, truth.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

from tiercel.data.synth import geometry as G
from tiercel.data.synth.catalog import GROUNDS, OBJECTS, SCENES
from tiercel.data.synth.knobs import Knobs
from tiercel.data.synth.regions import BUILDERS, Region

GROUND_IDS = {name: i for i, name in enumerate(GROUNDS)}
# Placement order: big things first so they still find room.
CLASS_ORDER = ("airplane", "tennis court", "building", "storage tank", "ship", "swimming pool", "vehicle")


@dataclass(eq=False)  # identity: change pairs compare objects by who they are
class Obj:
    """One annotated object. `outline` is its polygon; `quad` its oriented box (4 corners), in pixels."""

    cls: str
    color: str
    rgb: tuple[int, int, int]
    cx: float
    cy: float
    length: float
    width: float
    angle: float
    shape: str
    outline: np.ndarray = field(repr=False)
    quad: np.ndarray = field(repr=False)

    @property
    def hbb(self) -> list[float]:
        return G.hbb(self.outline)

    @property
    def area(self) -> float:
        return G.area(self.outline)

    @property
    def radius(self) -> float:
        return 0.5 * math.hypot(self.length, self.width)


@dataclass
class Scene:
    """Everything needed to render one frame and write its ground truth."""

    size: int
    scene_class: str
    base: str
    regions: list[Region]
    objects: list[Obj]
    trees: list[tuple[float, float, float]]
    lines: list[tuple[tuple[float, float], tuple[float, float], float]]  # markings: (p, q, width)
    sun: tuple[float, float]
    align: float  # the direction most objects line up with (runway, shore, stalls, streets)
    texture_seed: int
    region_map: np.ndarray = field(repr=False)  # per pixel: 0 = base ground, i = regions[i - 1]

    @property
    def ground_lut(self) -> np.ndarray:
        """Ground id (index into GROUNDS) of the base (0) and of each region (1..)."""
        return np.array([GROUND_IDS[self.base]] + [GROUND_IDS[r.ground] for r in self.regions], dtype=np.uint8)

    def ground_at(self, x: float, y: float) -> str:
        ix = min(max(int(x), 0), self.size - 1)
        iy = min(max(int(y), 0), self.size - 1)
        i = int(self.region_map[iy, ix])
        return self.base if i == 0 else self.regions[i - 1].ground

    def of_class(self, cls: str) -> list[Obj]:
        return [o for o in self.objects if o.cls == cls]



def sample_scene(rng: np.random.Generator, size: int, knobs: Knobs, scene_class: str | None = None) -> Scene:
    """Draw a random scene of `scene_class` (random when None) for a size x size image."""
    name = scene_class or str(rng.choice(list(SCENES)))
    spec = SCENES[name]
    regions, lines, align = BUILDERS[spec.layout](rng, float(size))
    region_map = _rasterise(size, regions)
    sun_angle = rng.uniform(0, 2 * np.pi)
    scene = Scene(size, name, spec.base, regions, [], [], lines if knobs.decor else [],
                  (math.cos(sun_angle), math.sin(sun_angle)), float(align), int(rng.integers(2**31)), region_map)
    counts = {c: min(int(rng.poisson(m * knobs.density)), knobs.max_per_class) for c, m in spec.priors.items()}
    if not any(counts.values()):
        counts[max(spec.priors, key=spec.priors.get)] = 1
    for cls in CLASS_ORDER:
        for _ in range(counts.get(cls, 0)):
            obj = place_object(rng, scene, cls, knobs)
            if obj is not None:
                scene.objects.append(obj)
    if not scene.objects:  # the ground had no room for any prior: fall back to anything that fits
        for cls in CLASS_ORDER:
            obj = place_object(rng, scene, cls, knobs, tries=200)
            if obj is not None:
                scene.objects.append(obj)
                break
    scene.trees = _trees(rng, scene, int(rng.poisson(spec.trees * knobs.trees)))
    return scene


def place_object(rng: np.random.Generator, scene: Scene, cls: str, knobs: Knobs, tries: int = 40) -> Obj | None:
    """A new object of `cls` on allowed ground, inside the image, clear of every object and tree."""
    spec, s = OBJECTS[cls], scene.size / 256.0
    lo, hi = spec.length
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * knobs.scale_spread
    for _ in range(tries):
        length = max(5.0, rng.uniform(mid - half, mid + half)) * s * knobs.scale
        width = length * rng.uniform(*spec.aspect)
        angle = _angle(rng, spec.rotates, scene.align)
        r = 0.5 * math.hypot(length, width)
        cx, cy = rng.uniform(r + 1, scene.size - r - 1, size=2) if scene.size > 2 * r + 2 else (-1, -1)
        if knobs.grid > 0 and cx >= 0:
            cx, cy = _snap(cx, scene.size, knobs.grid), _snap(cy, scene.size, knobs.grid)
            if min(cx, cy) < r + 1 or max(cx, cy) > scene.size - r - 1:
                continue
        if cx < 0 or not _ground_ok(scene, spec, cx, cy, length, width, angle) or not _clear(scene, cx, cy, r):
            continue
        shape = spec.shape if not (spec.shape == "building" and rng.random() < 0.35) else "building_l"
        color = str(rng.choice(list(spec.colors)))
        jitter = rng.uniform(-knobs.color_jitter, knobs.color_jitter, size=3)
        rgb = tuple(int(v) for v in np.clip(np.array(spec.colors[color]) + jitter, 0, 255))
        outline = G.place(G.UNIT_SHAPES[shape], cx, cy, length, width, angle)
        quad = G.rotated_rect(cx, cy, length, width, angle)
        return Obj(cls, color, rgb, float(cx), float(cy), float(length), float(width), float(angle), shape,
                   outline, quad)
    return None


def changed_twin(rng: np.random.Generator, scene: Scene, knobs: Knobs) -> tuple[Scene, list[Obj]]:
    """The same place later: some objects removed, some added. Returns (after, changed objects).

    At least one object changes. Added objects avoid everything in the first frame, so a changed
    object's outline covers pixels that really differ between the frames. The scene must hold an object.
    """
    if not scene.objects:
        raise ValueError("changed_twin needs a scene with at least one object")
    n_remove = int(rng.integers(0, min(knobs.max_removed, len(scene.objects)) + 1))
    removed = [scene.objects[i] for i in rng.choice(len(scene.objects), n_remove, replace=False)]
    after = replace(scene, objects=[o for o in scene.objects if o not in removed])
    priors = SCENES[scene.scene_class].priors
    classes, weights = list(priors), np.array(list(priors.values()))
    added = []
    for _ in range(int(rng.integers(0 if removed else 1, knobs.max_added + 1))):
        cls = str(rng.choice(classes, p=weights / weights.sum()))
        crowd = replace(after, objects=after.objects + removed + added)
        obj = place_object(rng, crowd, cls, knobs)
        if obj is not None:
            added.append(obj)
    if not removed and not added:
        removed = [scene.objects[int(rng.integers(len(scene.objects)))]]
    after.objects = [o for o in scene.objects if o not in removed] + added
    return after, removed + added


def _snap(v: float, size: int, grid: int) -> float:
    """The centre of the grid cell (of `grid` per side) that `v` falls in."""
    cell = size / grid
    return (min(int(v // cell), grid - 1) + 0.5) * cell


def _angle(rng: np.random.Generator, rotates: bool, align: float) -> float:
    if not rotates:
        return 0.0
    if rng.random() < 0.6:  # most things line up with roads and stalls
        return float(align + rng.integers(4) * np.pi / 2 + rng.normal(0, 0.06))
    return float(rng.uniform(0, 2 * np.pi))


def _ground_ok(scene: Scene, spec, cx, cy, length, width, angle) -> bool:
    if scene.ground_at(cx, cy) not in spec.terrain:
        return False
    if spec.strict:
        # Its box, and a wider one around it: ships keep clear of the shore and of piers.
        pts = np.concatenate([G.rotated_rect(cx, cy, length, width, angle),
                              G.rotated_rect(cx, cy, length * 1.3, width * 2, angle)])
        return all(scene.ground_at(x, y) in spec.terrain for x, y in pts)
    return True


def _clear(scene: Scene, cx: float, cy: float, r: float, gap: float = 1.5, trees: bool = True) -> bool:
    for o in scene.objects:
        if math.hypot(o.cx - cx, o.cy - cy) < o.radius + r + gap:
            return False
    return not trees or all(math.hypot(x - cx, y - cy) >= tr + r + gap for x, y, tr in scene.trees)


def _trees(rng: np.random.Generator, scene: Scene, clusters: int) -> list[tuple[float, float, float]]:
    s, trees = scene.size / 256.0, []
    for _ in range(clusters):
        cx, cy = rng.uniform(0, scene.size, size=2)
        for _ in range(int(rng.integers(3, 9))):
            x, y = cx + rng.normal(0, 7 * s), cy + rng.normal(0, 7 * s)
            r = rng.uniform(2.0, 4.5) * s
            # Blobs of one cluster may overlap each other, never an object.
            if 0 <= x < scene.size and 0 <= y < scene.size and scene.ground_at(x, y) == "grass" \
                    and _clear(scene, x, y, r, trees=False):
                trees.append((float(x), float(y), float(r)))
    return trees


def _rasterise(size: int, regions: list[Region]) -> np.ndarray:
    """Region index per pixel (0: base ground); marks regions `eligible` when visible almost whole."""
    index = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(index)
    for i, region in enumerate(regions, start=1):
        draw.polygon([tuple(p) for p in region.polygon], fill=i)
    idx = np.asarray(index)
    visible = np.bincount(idx.ravel(), minlength=len(regions) + 1)
    for i, region in enumerate(regions, start=1):
        full = G.area(region.polygon)
        region.eligible = bool(region.name and full >= 0.02 * size * size and visible[i] >= 0.97 * full)
    return idx
