"""What the synthetic world holds: ground types, object classes and scene classes, as data.

Sizes are in pixels of a 256-px image and scale with the image. Object classes are told apart by shape
and colour, but the catalogue makes that less than trivial on purpose: sizes overlap between classes
(a large vehicle is as long as a small building or pool), colours are shared (white ships, white
airplanes, white tanks, white vehicles) and every instance's colour is jittered around its named colour.
Scene classes differ by ground mix and by object priors (Poisson means), which overlap too: a river and
a harbour both hold water and ships, an airport and a parking lot both hold vehicles on asphalt.

This module is pure data; it knows nothing about drawing (render.py), geometry (layout.py) or text.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Ground:
    """A ground texture: base colour, low-frequency patchiness, fine grain, optional row stripes."""

    name: str
    rgb: tuple[int, int, int]
    patchy: float  # amplitude of large blotches (0..1 of brightness)
    grain: float  # amplitude of per-pixel grain
    stripes: float = 0.0  # amplitude of parallel rows (crops)


GROUNDS = {
    g.name: g
    for g in (
        Ground("grass", (92, 128, 64), 0.22, 0.07),
        Ground("water", (38, 72, 96), 0.10, 0.03),
        Ground("sand", (196, 178, 138), 0.12, 0.06),
        Ground("asphalt", (84, 86, 90), 0.08, 0.08),
        Ground("concrete", (168, 166, 160), 0.08, 0.05),
        Ground("soil", (134, 104, 76), 0.18, 0.08),
        Ground("cropland", (118, 146, 60), 0.14, 0.05, stripes=0.12),
    )
}


@dataclass(frozen=True)
class ObjectClass:
    """An object class: outline shape, size range (length along its axis), aspect, colours, where it sits.

    `aspect` is width / length; `terrain` lists the grounds its centre may stand on; `strict` asks all
    four corners of its box to stand on that terrain too (ships stay inside the water).
    """

    name: str
    shape: str
    length: tuple[float, float]
    aspect: tuple[float, float]
    colors: dict[str, tuple[int, int, int]]
    terrain: tuple[str, ...]
    strict: bool = False
    rotates: bool = True


OBJECTS = {
    c.name: c
    for c in (
        ObjectClass("airplane", "airplane", (22, 48), (0.85, 1.1),
                    {"white": (232, 232, 236), "gray": (160, 162, 168), "blue": (70, 100, 170)},
                    ("asphalt", "concrete")),
        ObjectClass("ship", "ship", (16, 46), (0.2, 0.32),
                    {"white": (228, 228, 228), "gray": (128, 130, 134), "red": (170, 56, 48), "black": (40, 40, 44)},
                    ("water",), strict=True),
        ObjectClass("storage tank", "tank", (12, 30), (1.0, 1.0),
                    {"white": (236, 236, 232), "gray": (176, 176, 172)},
                    ("concrete", "sand", "asphalt", "soil"), rotates=False),
        ObjectClass("vehicle", "vehicle", (7, 13), (0.42, 0.5),
                    {"white": (230, 230, 230), "black": (30, 30, 34), "red": (180, 40, 36), "blue": (44, 70, 160),
                     "yellow": (214, 182, 40), "gray": (130, 132, 136)},
                    ("asphalt", "concrete")),
        ObjectClass("building", "building", (12, 36), (0.5, 0.9),
                    {"gray": (150, 150, 150), "red": (164, 76, 60), "brown": (120, 90, 70), "white": (218, 214, 206)},
                    ("grass", "concrete", "sand", "soil")),
        ObjectClass("tennis court", "court", (20, 28), (0.48, 0.55),
                    {"green": (60, 130, 80), "blue": (50, 90, 150), "red": (170, 80, 60)},
                    ("grass", "concrete")),
        ObjectClass("swimming pool", "pool", (9, 20), (0.45, 0.75),
                    {"blue": (60, 140, 210), "cyan": (80, 190, 200)},
                    ("grass", "concrete")),
    )
}


@dataclass(frozen=True)
class SceneClass:
    """A scene class: base ground, the land regions its layout draws, and object priors (Poisson means)."""

    name: str
    base: str
    layout: str  # name of a region builder in layout.py
    priors: dict[str, float] = field(default_factory=dict)
    trees: float = 0.0  # Poisson mean of tree clusters (distractors)


SCENES = {
    s.name: s
    for s in (
        SceneClass("airport", "grass", "airport",
                   {"airplane": 4, "vehicle": 3, "building": 0.8, "storage tank": 0.4}, 2),
        SceneClass("harbor", "concrete", "harbor", {"ship": 5, "storage tank": 1.5, "vehicle": 2, "building": 1}),
        SceneClass("river", "grass", "river", {"ship": 2, "building": 1.2, "vehicle": 1}, 4),
        SceneClass("industrial area", "sand", "industrial", {"storage tank": 5, "building": 3, "vehicle": 3}),
        SceneClass("parking lot", "asphalt", "parking", {"vehicle": 12, "building": 0.8}, 1),
        SceneClass("residential area", "grass", "residential",
                   {"building": 7, "swimming pool": 2, "vehicle": 3, "tennis court": 0.5}, 5),
        SceneClass("farmland", "soil", "farmland", {"building": 1, "vehicle": 0.8, "storage tank": 0.4}, 2),
        SceneClass("sports complex", "grass", "sports",
                   {"tennis court": 3, "swimming pool": 1, "vehicle": 3, "building": 1}, 3),
    )
}

# Land regions a PIX_CLS question may ask about (named regions drawn by the layouts).
REGION_CLASSES = ("water", "runway", "road", "cropland", "bare soil", "grassland", "concrete")

OBJECT_CLASSES = tuple(OBJECTS)
SCENE_CLASSES = tuple(SCENES)
