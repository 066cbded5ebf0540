"""Ground truth for the 14 Falcon tasks from a synthetic scene, as (prompt, answer) in the falcon dialect.

Prompts and answers are written by tiercel.tasks (`spec.prompt`, `spec.format`), so they follow the same
grammar the models are trained and scored with. Which object or class a record asks about is drawn
class-first (then an instance), so frequent classes such as vehicles do not swamp region tasks.

This module knows nothing about pixels, files or splits; it reads the layout and language helpers.
"""

from __future__ import annotations

import numpy as np

import tiercel.tasks as T
from tiercel.data.synth import language as L
from tiercel.data.synth.catalog import OBJECTS
from tiercel.data.synth.layout import Obj, Scene

DIALECT = "falcon"


class NoTruth(Exception):
    """This scene cannot give this task a well-posed record (e.g. no object has a unique description)."""


def make(tag: str, scene: Scene, rng: np.random.Generator, changed: list[Obj] | None = None) -> tuple[str, str]:
    """(prompt, answer) for task `tag` on `scene`; `changed` lists PIX_CHG's changed objects."""
    spec, size = T.get(tag), (scene.size, scene.size)
    text, region, result = _BUILDERS[tag](scene, rng, changed)
    prompt = spec.prompt(text=text, region=region, image_size=size, dialect=DIALECT)
    return prompt, spec.format(result, image_size=size, dialect=DIALECT)


def _pick_object(scene: Scene, rng: np.random.Generator) -> Obj:
    classes = sorted({o.cls for o in scene.objects})
    same = scene.of_class(classes[int(rng.integers(len(classes)))])
    return same[int(rng.integers(len(same)))]


def _pick_class(scene: Scene, rng: np.random.Generator) -> str:
    classes = sorted({o.cls for o in scene.objects})
    return classes[int(rng.integers(len(classes)))]


def _reading_order(objs: list[Obj]) -> list[Obj]:
    """Top to bottom, then left to right: the order answers list instances in."""
    return sorted(objs, key=lambda o: (o.hbb[1], o.hbb[0]))


def _outline(points: np.ndarray) -> list[list[list[float]]]:
    return [[[float(x), float(y)] for x, y in points]]


def _img_cls(scene, rng, _):
    return None, None, T.Label(text=scene.scene_class)


def _img_cap(scene, rng, _):
    return None, None, T.Caption(text=L.caption(scene, rng))


def _img_cap_detailed(scene, rng, _):
    return None, None, T.Caption(text=L.detailed_caption(scene, rng))


def _img_vqa(scene, rng, _):
    question, answer = L.vqa(scene, rng)
    return question, None, T.Label(text=answer)


def _img_ct(scene, rng, _):
    present = sorted({o.cls for o in scene.objects})
    absent = [c for c in OBJECTS if c not in present]
    cls = _pick_class(scene, rng) if rng.random() < 0.8 or not absent else absent[int(rng.integers(len(absent)))]
    return cls, None, T.Count(value=len(scene.of_class(cls)))


def _reg_cls_hbb(scene, rng, _):
    obj = _pick_object(scene, rng)
    return None, obj.hbb, T.Label(text=obj.cls)


def _reg_cls_obb(scene, rng, _):
    obj = _pick_object(scene, rng)
    return None, obj.quad.tolist(), T.Label(text=obj.cls)


def _reg_det_hbb(scene, rng, _):
    cls = _pick_class(scene, rng)
    return cls, None, T.Boxes(boxes=[o.hbb for o in _reading_order(scene.of_class(cls))])


def _reg_det_obb(scene, rng, _):
    cls = _pick_class(scene, rng)
    return cls, None, T.Quads(quads=[o.quad.tolist() for o in _reading_order(scene.of_class(cls))])


def _reg_vg(scene, rng, _):
    found = L.refer(scene, rng)
    if found is None:
        raise NoTruth("no object has a unique description")
    phrase, obj = found
    return phrase, None, T.Boxes(boxes=[obj.hbb])


def _reg_cap(scene, rng, _):
    obj = _pick_object(scene, rng)
    return None, obj.hbb, T.Caption(text=L.region_caption(obj, scene, rng))


def _pix_cls(scene, rng, _):
    regions = [r for r in scene.regions if r.eligible]
    if regions and rng.random() < 0.35:
        region = regions[int(rng.integers(len(regions)))]
        return None, region.polygon.tolist(), T.Label(text=region.name)
    obj = _pick_object(scene, rng)
    return None, obj.outline.tolist(), T.Label(text=obj.cls)


def _pix_seg(scene, rng, _):
    cls = _pick_class(scene, rng)
    return cls, None, T.Polygons(polygons=[_outline(o.outline) for o in _reading_order(scene.of_class(cls))])


def _pix_chg(scene, rng, changed):
    if not changed:
        raise NoTruth("PIX_CHG needs the changed objects of a pair")
    return None, None, T.Polygons(polygons=[_outline(o.outline) for o in _reading_order(changed)])


_BUILDERS = {
    "IMG_CLS": _img_cls, "IMG_CAP": _img_cap, "IMG_CAP_DETAILED": _img_cap_detailed, "IMG_VQA": _img_vqa,
    "IMG_CT": _img_ct, "REG_CLS_HBB": _reg_cls_hbb, "REG_CLS_OBB": _reg_cls_obb, "REG_DET_HBB": _reg_det_hbb,
    "REG_DET_OBB": _reg_det_obb, "REG_VG": _reg_vg, "REG_CAP": _reg_cap, "PIX_CLS": _pix_cls,
    "PIX_SEG": _pix_seg, "PIX_CHG": _pix_chg,
}  # fmt: skip
assert set(_BUILDERS) == set(T.TAGS), "every Falcon task needs a ground-truth builder"
