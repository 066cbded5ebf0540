"""Answer text <-> typed results, one reader and one writer per answer kind.

Kinds: "label" (class names, VQA answers), "caption", "count", "box", "quad", "poly". Readers never raise on
model output: they return the best result they can and say in `result.warnings` what they repaired. Text
answers are cleaned of decoder tokens (`<s>`, `</s>`, `<pad>`, `<unk>`) and have their whitespace collapsed;
their case and punctuation are kept (metrics normalise, see tiercel.tasks.metrics.classification).

Geometry readers and writers take `size`, the (W, H) of the frame the bins refer to, and work in pixels. They
know nothing about tasks or PIX_CHG's canvas: tiercel.tasks.specs passes the canvas size and maps back.
"""

from __future__ import annotations

import re

import numpy as np

from tiercel.errors import TaskError
from tiercel.tasks import grammar
from tiercel.tasks.results import Boxes, Caption, Count, Label, Polygons, Quads, Result

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
# A number in digits: an optional sign (not one ending a word: "x-3" is 3), the whole part with or without
# thousands commas ("1,200"; "1,20" is 1), and a decimal part only where digits follow the point ("3." is 3 and
# a full stop). A number word counts only as a whole word: "twenty-one" is not 20 (nor 1), "someone" holds
# no "one".
_NUMBER = re.compile(
    r"(?:(?<!\w)(?P<sign>[-+\u2212]))?(?P<whole>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.(?P<fraction>\d+))?"
    r"|(?<![\w-])(?P<word>" + "|".join(NUMBER_WORDS) + r")(?![\w-])",
    re.IGNORECASE,
)
# Longer digit runs are no count a model could mean; they would also overflow the metric's arithmetic.
MAX_COUNT_DIGITS = 9
_SPECIALS = re.compile("|".join(re.escape(t) for t in grammar.SPECIAL_TOKENS))


def clean_text(text) -> tuple[str, list[str]]:
    """Drop decoder tokens, collapse whitespace. Returns (text, warnings); non-strings read as empty."""
    if not isinstance(text, str):
        return "", [f"answer is not text (got {type(text).__name__}); read as empty"]
    cleaned = " ".join(_SPECIALS.sub(" ", text).split())
    return cleaned, ([] if cleaned else ["empty answer"])


def read_label(text, size=None, dialect="falcon") -> Label:
    cleaned, warnings = clean_text(text)
    return Label(text=cleaned, raw=_raw(text), warnings=warnings)


def read_caption(text, size=None, dialect="falcon") -> Caption:
    cleaned, warnings = clean_text(text)
    return Caption(text=cleaned, raw=_raw(text), warnings=warnings)


def read_count(text, size=None, dialect="falcon") -> Count:
    """The first number in the answer, in digits or as a word zero..twenty; None when there is none, or when
    it is no count: negative, not whole (2.5), or longer than MAX_COUNT_DIGITS digits."""
    cleaned, warnings = clean_text(text)
    m = _NUMBER.search(cleaned)
    if m is None:
        if cleaned:
            warnings.append(f"no number in answer {cleaned[:40]!r}")
        return Count(value=None, raw=_raw(text), warnings=warnings)
    value, why_not = _count_value(m)
    if why_not:
        warnings.append(f"{why_not}; read as none")
        return Count(value=None, raw=_raw(text), warnings=warnings)
    if m.group() != cleaned:
        warnings.append(f"read {value} from a longer answer {cleaned[:40]!r}")
    return Count(value=value, raw=_raw(text), warnings=warnings)


def _count_value(m: re.Match) -> tuple[int | None, str | None]:
    """A _NUMBER match -> (count, None), or (None, why it is no count)."""
    if m.group("word"):
        return NUMBER_WORDS.index(m.group("word").lower()), None
    digits = m.group("whole").replace(",", "")
    if len(digits.lstrip("0")) > MAX_COUNT_DIGITS:
        return None, f"a {len(digits)}-digit number is no count"
    if (m.group("fraction") or "0").strip("0"):
        return None, f"{m.group()} is not a whole number"
    value = int(digits)
    if m.group("sign") in ("-", "\u2212") and value:
        return None, f"{m.group()} is negative"
    return value, None


def read_boxes(text, size, dialect="falcon") -> Boxes:
    """Horizontal boxes [x1, y1, x2, y2] in pixels, in generation order."""
    groups, warnings = grammar.read(text, "box", dialect)
    boxes = [to_pixels(g, size, flat=True) for g in groups]
    return Boxes(boxes=boxes, raw=_raw(text), warnings=warnings)


def read_quads(text, size, dialect="falcon") -> Quads:
    """Oriented boxes as 4 corners [[x, y] x 4] in pixels, in generation order."""
    groups, warnings = grammar.read(text, "quad", dialect)
    return Quads(quads=[to_pixels(g, size) for g in groups], raw=_raw(text), warnings=warnings)


def read_polygons(text, size, dialect="falcon") -> Polygons:
    """Polygons: instances (one per `<poly>`) -> parts (split by `<sep>`) -> points [x, y] in pixels."""
    groups, warnings = grammar.read(text, "poly", dialect)
    polygons = [[to_pixels(part, size) for part in instance] for instance in groups]
    return Polygons(polygons=polygons, raw=_raw(text), warnings=warnings)


def _raw(text) -> str:
    return text if isinstance(text, str) else ""


def to_pixels(bins: list[int], size, flat: bool = False) -> list:
    """Flat bins [bx, by, ...] of a (W, H) frame -> pixel points [[x, y], ...], or flat [x, y, ...] if `flat`."""
    w, h = size
    xs = grammar.from_bin(bins[0::2], w)
    ys = grammar.from_bin(bins[1::2], h)
    if flat:
        return [float(v) for pair in zip(xs, ys) for v in pair]
    return [[float(x), float(y)] for x, y in zip(xs, ys)]


def write_text(result: Result, size=None, dialect="falcon") -> str:
    return " ".join(result.text.split())


def write_count(result: Count, size=None, dialect="falcon") -> str:
    return "" if result.value is None else str(int(result.value))


def write_boxes(result: Boxes, size, dialect="falcon") -> str:
    return "".join(grammar.write_structure("box", [bins(box, size, 4)], dialect) for box in result.boxes)


def write_quads(result: Quads, size, dialect="falcon") -> str:
    return "".join(grammar.write_structure("quad", [bins(quad, size, 8)], dialect) for quad in result.quads)


def write_polygons(result: Polygons, size, dialect="falcon") -> str:
    return "".join(
        grammar.write_structure("poly", [bins(part, size) for part in instance], dialect)
        for instance in result.polygons
    )


def region_outside(points, size) -> str | None:
    """Why a region (pixel points, flat or [[x, y], ...]) does not lie inside a (W, H) image; None if it does.
    Answers are clamped to the frame, but a region the user gives is never silently moved."""
    try:
        flat = np.asarray(points, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        return None  # not numbers: coordinates() says so
    w, h = size
    xs, ys = flat[0::2], flat[1::2]
    slack = 0.5  # half a pixel: rounding of coordinates a region was computed from, not a region elsewhere
    if len(flat) and (not np.all(np.isfinite(flat)) or min(xs.min(), ys.min()) < -slack or xs.max() > w + slack
                      or ys.max() > h + slack):
        shown = "[" + ", ".join(f"{v:g}" for v in flat[:8]) + (", ...]" if len(flat) > 8 else "]")
        return f"{shown} lies outside the {w:g}x{h:g} image (x must be 0..{w:g}, y 0..{h:g})"
    return None


def coordinates(points, n_values: int | None = None) -> np.ndarray:
    """Pixel points (flat [x, y, ...] or [[x, y], ...]) as a flat float array; TaskError unless they are numbers
    of the right count: `n_values` (4 for a box, 8 for a quad), or at least 3 points for a polygon."""
    try:
        flat = np.asarray(points, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise TaskError(f"coordinates must be numbers, flat or as [x, y] points (got {points!r})") from None
    if n_values is not None and len(flat) != n_values:
        raise TaskError(f"expected {n_values} coordinates, got {len(flat)}: {points!r}")
    if n_values is None and (len(flat) % 2 or len(flat) < 6):
        raise TaskError(f"a polygon needs >= 3 [x, y] points, got {len(flat)} values: {points!r}")
    return flat


def bins(points, size, n_values: int | None = None) -> list[int]:
    """Pixel points (flat [x, y, ...] or [[x, y], ...]) -> flat bins [bx, by, ...] for a (W, H) frame; the count is
    checked as coordinates() does."""
    flat = coordinates(points, n_values)
    w, h = size
    return [int(b) for pair in zip(grammar.to_bin(flat[0::2], w), grammar.to_bin(flat[1::2], h)) for b in pair]


# kind -> (result type, reader, writer, needs a frame size)
ANSWERS = {
    "label": (Label, read_label, write_text, False),
    "caption": (Caption, read_caption, write_text, False),
    "count": (Count, read_count, write_count, False),
    "box": (Boxes, read_boxes, write_boxes, True),
    "quad": (Quads, read_quads, write_quads, True),
    "poly": (Polygons, read_polygons, write_polygons, True),
}
