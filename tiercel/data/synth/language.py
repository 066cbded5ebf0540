"""Text about a synthetic scene: captions, detailed captions, questions, region captions, referring phrases.

Everything is derived from the layout (classes, counts, colours, sizes, 3x3 grid cells, ground cover);
templates vary wording, not facts. Referring phrases are checked to pick out exactly one object, and
position words are only used for objects clear of the grid lines, so a phrase is never a coin toss.

This module knows nothing about prompts or answer grammar (truth.py turns these strings into records).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from tiercel.data.synth.catalog import GROUNDS, OBJECTS
from tiercel.data.synth.layout import Obj, Scene

CELLS = [["top left", "top", "top right"], ["left", "center", "right"], ["bottom left", "bottom", "bottom right"]]
GROUND_WORDS = {"grass": "grass", "water": "water", "sand": "sand", "asphalt": "asphalt", "concrete": "concrete",
                "soil": "bare soil", "cropland": "cropland"}
NUMBERS = "zero one two three four five six seven eight nine ten".split()


def plural(cls: str, n: int = 2) -> str:
    return cls if n == 1 else cls + "s"


def count_words(n: int, cls: str) -> str:
    """'a ship', 'three ships', '14 vehicles'."""
    if n == 1:
        return f"{article(cls)} {cls}"
    return f"{NUMBERS[n] if n < len(NUMBERS) else n} {plural(cls)}"


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def cell(obj: Obj, size: int, margin: float = 0.0) -> str | None:
    """The 3x3 grid cell of an object's centre; None when it lies within `margin` (fraction) of a grid line."""
    col, row = (int(min(2, max(0, v * 3 // size))) for v in (obj.cx, obj.cy))
    for v in (obj.cx, obj.cy):
        frac = v / size * 3
        if margin and min(abs(frac - 1), abs(frac - 2)) < margin * 3:
            return None
    return CELLS[row][col]


def where(name: str, rng: np.random.Generator) -> str:
    """A phrase for a grid cell: 'in the top left corner', 'at the top', 'near the center'..."""
    if name == "center":
        return str(rng.choice(["in the center", "near the center of the image", "in the middle"]))
    if " " in name:
        return str(rng.choice([f"in the {name}", f"in the {name} corner", f"in the {name} of the image"]))
    if name in ("top", "bottom"):
        return str(rng.choice([f"at the {name}", f"near the {name} edge", f"at the {name} of the image"]))
    return str(rng.choice([f"on the {name}", f"on the {name} side", f"on the {name} side of the image"]))


def size_word(obj: Obj, size: int) -> str:
    """small / medium-sized / large, relative to the class's size range (scaled to the image)."""
    lo, hi = OBJECTS[obj.cls].length
    t = (obj.length / (size / 256) - lo) / (hi - lo)
    return "small" if t < 0.33 else "large" if t > 0.67 else "medium-sized"


def ground_cover(scene: Scene) -> list[tuple[str, float]]:
    """Ground types by share of the image, largest first."""
    gmap = scene.ground_lut[scene.region_map]
    shares = np.bincount(gmap.ravel(), minlength=len(GROUNDS)) / gmap.size
    names = list(GROUNDS)
    return sorted(((names[i], float(s)) for i, s in enumerate(shares) if s > 0), key=lambda t: -t[1])


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """IMG_CAP: one sentence naming the scene class and its most frequent objects."""
    name = f"{article(scene.scene_class)} {scene.scene_class}"
    counts = Counter(o.cls for o in scene.objects).most_common(3)
    things = _join([count_words(n, c) for c, n in counts]) if counts else "no notable objects"
    template = rng.choice(["{A} with {things}.", "An aerial view of {a} with {things}.",
                           "This image shows {a} containing {things}.", "{A} seen from above, with {things}."])
    return template.format(A=name[0].upper() + name[1:], a=name, things=things)


def detailed_caption(scene: Scene, rng: np.random.Generator) -> str:
    """IMG_CAP_DETAILED: scene, ground cover, each frequent class with where and what colour, largest object."""
    name = f"{article(scene.scene_class)} {scene.scene_class}"
    out = [str(rng.choice([f"This is an aerial image of {name}.", f"The image shows {name} seen from above.",
                           f"A top-down view of {name}."]))]
    cover = ground_cover(scene)
    ground = f"The ground is mostly {GROUND_WORDS[cover[0][0]]}"
    if len(cover) > 1 and cover[1][1] > 0.1:
        ground += f", with some {GROUND_WORDS[cover[1][0]]}"
    out.append(ground + ".")
    for cls, n in Counter(o.cls for o in scene.objects).most_common(3):
        out.append(_class_sentence(scene, cls, n, rng))
    if len(scene.objects) > 1:
        big = max(scene.objects, key=lambda o: o.area)
        place = where(cell(big, scene.size), rng)
        out.append(f"The largest object is {article(big.color)} {big.color} {big.cls} {place}.")
    if scene.trees:
        out.append(str(rng.choice(["A few trees are scattered around.", "Some trees grow on the grass."])))
    return " ".join(out)


def _class_sentence(scene: Scene, cls: str, n: int, rng: np.random.Generator) -> str:
    objs = scene.of_class(cls)
    if n == 1:
        o = objs[0]
        return f"There is {article(o.color)} {o.color} {cls} {where(cell(o, scene.size), rng)}."
    cells = Counter(cell(o, scene.size) for o in objs).most_common(1)[0]
    colors = Counter(o.color for o in objs)
    text = f"There are {count_words(n, cls)}"
    if cells[1] >= 0.6 * n:
        text += f", mostly {where(cells[0], rng)}"
    if len(colors) == 1:
        text += f"; all of them are {objs[0].color}"
    else:
        text += f"; most are {colors.most_common(1)[0][0]}" if colors.most_common(1)[0][1] > n / 2 else ""
    return text + "."


def region_caption(obj: Obj, scene: Scene, rng: np.random.Generator) -> str:
    """REG_CAP: what the object is, its colour, often its size, the ground under it and where it is."""
    words = [obj.color, obj.cls]
    if rng.random() < 0.6:
        words.insert(0, size_word(obj, scene.size))
    text = f"{article(words[0])} {' '.join(words)}"
    ground = GROUND_WORDS[scene.ground_at(obj.cx, obj.cy)]
    if obj.cls in ("airplane", "vehicle"):
        text += f" parked on the {ground}"
    elif obj.cls == "ship":
        text += " on the water"
    if rng.random() < 0.7:
        text += f" {where(cell(obj, scene.size), rng)}"
    return text[0].upper() + text[1:] + "."


def refer(scene: Scene, rng: np.random.Generator) -> tuple[str, Obj] | None:
    """REG_VG: a phrase that picks out exactly one object, and that object; None if no object has one."""
    options = [(o, phrases) for o in scene.objects if (phrases := _unique_phrases(scene, o, rng))]
    if not options:
        return None
    obj, phrases = options[int(rng.integers(len(options)))]
    return phrases[int(rng.integers(len(phrases)))], obj


def _unique_phrases(scene: Scene, obj: Obj, rng: np.random.Generator) -> list[str]:
    same = scene.of_class(obj.cls)
    here = cell(obj, scene.size, margin=0.04)
    out = []
    if len(same) == 1:
        out.append(f"the {obj.cls}")
    if sum(o.color == obj.color for o in same) == 1:
        out.append(f"the {obj.color} {obj.cls}")
    if here and sum(cell(o, scene.size) == here for o in same) == 1:
        out.append(f"the {obj.cls} {where(here, rng)}")
    if here and sum(cell(o, scene.size) == here and o.color == obj.color for o in same) == 1 and len(out) < 2:
        out.append(f"the {obj.color} {obj.cls} {where(here, rng)}")
    if len(same) >= 2:
        areas = sorted(o.area for o in same)
        if obj.area == areas[-1] and areas[-1] >= 1.3 * areas[-2]:
            out.append(f"the largest {obj.cls}")
        if obj.area == areas[0] and areas[1] >= 1.3 * areas[0]:
            out.append(f"the smallest {obj.cls}")
    return out


def vqa(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """IMG_VQA: a (question, short answer) pair; yes/no questions are balanced between yes and no."""
    counts = Counter(o.cls for o in scene.objects)
    kind = rng.choice(["presence", "presence", "count", "compare", "scene", "color", "water", "side"])
    present, absent = list(counts), [c for c in OBJECTS if c not in counts]
    if kind == "presence" or (kind == "compare" and len(present) < 2):
        cls = str(rng.choice(present if (rng.random() < 0.5 or not absent) else absent))
        q = rng.choice([f"Is there {article(cls)} {cls} in the image?", f"Are there any {plural(cls)} in this image?"])
        return str(q), "yes" if counts[cls] else "no"
    if kind == "count":
        cls = str(rng.choice(present))
        return f"How many {plural(cls)} are there in the image?", str(counts[cls])
    if kind == "compare":
        a, b = (str(c) for c in rng.choice(present, 2, replace=False))
        return f"Are there more {plural(a)} than {plural(b)}?", "yes" if counts[a] > counts[b] else "no"
    if kind == "water":
        has = any(g == "water" for g, _ in ground_cover(scene))
        return "Is there any water in the image?", "yes" if has else "no"
    singles = [o for o in scene.objects if counts[o.cls] == 1]
    if kind == "color" and singles:
        o = singles[int(rng.integers(len(singles)))]
        return f"What color is the {o.cls}?", o.color
    clear = [o for o in singles if abs(o.cx - scene.size / 2) > 0.06 * scene.size]  # not on the midline
    if kind == "side" and clear:
        o = clear[int(rng.integers(len(clear)))]
        side = str(rng.choice(["left", "right"]))
        is_left = o.cx < scene.size / 2
        return f"Is the {o.cls} on the {side} side of the image?", "yes" if is_left == (side == "left") else "no"
    question = rng.choice(["What type of area is shown in the image?", "What kind of scene is this?"])
    return str(question), scene.scene_class


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
