"""Typed task results: plain dataclasses in pixel coordinates that serialise to JSON.

A result knows nothing about prompts or token grammar (see tiercel.tasks.grammar) and nothing about
models. Every result carries `warnings`: parsers never raise on model output, they return what they could
read and say what they skipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

Point = tuple[float, float]


@dataclass
class Result:
    """Base of every task result. `raw` is the model text it was parsed from (empty when built by hand)."""

    raw: str = field(default="", kw_only=True)
    warnings: list[str] = field(default_factory=list, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()

    def to_dict(self) -> dict:
        out = {"type": self.kind}
        out.update(asdict(self))
        return out


@dataclass
class Label(Result):
    """A class name (IMG_CLS, REG_CLS_HBB, REG_CLS_OBB, PIX_CLS) or a short answer (IMG_VQA)."""

    text: str = ""


@dataclass
class Count(Result):
    """IMG_CT. `value` is None when the answer held no number."""

    value: int | None = None


@dataclass
class Caption(Result):
    """IMG_CAP, IMG_CAP_DETAILED, REG_CAP."""

    text: str = ""


@dataclass
class Boxes(Result):
    """REG_DET_HBB, REG_VG: horizontal boxes [x1, y1, x2, y2] in pixels, in generation order."""

    boxes: list[list[float]] = field(default_factory=list)


@dataclass
class Quads(Result):
    """REG_DET_OBB: oriented boxes as 4 corners [[x, y] x 4] in pixels, in generation order."""

    quads: list[list[list[float]]] = field(default_factory=list)


@dataclass
class Polygons(Result):
    """PIX_SEG, PIX_CHG: instances -> parts -> points [x, y] in pixels.

    One `<poly>..</poly>` is one instance; `<sep>` inside it splits the instance into parts.
    For PIX_CHG the coordinates are already mapped back to the single-frame image.
    """

    polygons: list[list[list[list[float]]]] = field(default_factory=list)


RESULT_TYPES = {cls.__name__.lower(): cls for cls in (Label, Count, Caption, Boxes, Quads, Polygons)}


def from_dict(data: dict) -> Result:
    """Rebuild a result from `to_dict()` output (e.g. JSON written by `tiercel run`)."""
    data = dict(data)
    cls = RESULT_TYPES[data.pop("type")]
    return cls(**data)
