"""GeoChat as a teacher: Falcon tasks as GeoChat prompts, GeoChat answers rewritten in Falcon's grammar.

GeoChat (LLaVA-1.5: Vicuna-7B + CLIP ViT-L/14 at 504 px) shares no vocabulary with Florence-2, so it teaches
through its generated answers (sequence-level KD). It writes a box as `{<x1><y1><x2><y2>|<theta>}`: corners on
a 0..100 scale of the image's width and height (pixel = value / 100 * side), theta in degrees; several boxes are
joined `}{` and objects are named `<p>name</p>` before their boxes. Its task prefixes are `[refer]` (locate
`<p>what</p>`), `[identify]` (describe the object in a box) and `[grounding]` (a description with boxes).

Angle convention (unverified; GeoChat's own code disagrees with itself): by default a positive theta turns the
box COUNTER-CLOCKWISE as seen on the image (y pointing down), as GeoChat's demo draws it with OpenCV's
getRotationMatrix2D. Pass `clockwise=True` for the other reading (used by some third-party GeoChat evaluations).
Rotation happens in pixels about the box centre, so non-square images keep right angles. A horizontal box from
a rotated GeoChat box is the box enclosing the rotated rectangle, which does not depend on the sign.

This module knows nothing about models or torch; it reads and writes text through tiercel.tasks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from tiercel import tasks
from tiercel.errors import TaskError
from tiercel.tasks import answers

SCALE = 100.0  # GeoChat's coordinate range
_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."  # GeoChat's VQA evaluation suffix
_CLASS_SUFFIX = "\nAnswer in one word or a short phrase."  # GeoChat's scene-classification evaluation suffix
_IDENTIFY = "[identify] What is the object present at {box}"  # GeoChat's region-captioning evaluation prompt
# Falcon tag -> GeoChat prompt; {text} is the Falcon prompt's free text, {box} a GeoChat box of its region.
# GeoChat's evaluation prompts where one exists; [grounding] (a description with boxes) has no Falcon task.
PROMPTS = {
    "IMG_CLS": "Classify the image." + _CLASS_SUFFIX,
    "IMG_CAP": "Describe the image.",
    "IMG_CAP_DETAILED": "Describe the image in detail.",
    "IMG_VQA": "{text}" + _ANSWER_SUFFIX,
    "IMG_CT": "How many {text} are there in the image?" + _ANSWER_SUFFIX,
    "REG_CLS_HBB": _IDENTIFY + _CLASS_SUFFIX,
    "REG_CLS_OBB": _IDENTIFY + _CLASS_SUFFIX,
    "REG_DET_HBB": "[refer] Give me the location of all <p> {text} </p>",
    "REG_DET_OBB": "[refer] Give me the location of all <p> {text} </p>",
    "REG_VG": "[refer] Give me the location of <p> {text} </p>",
    "REG_CAP": _IDENTIFY,
    "PIX_CLS": _IDENTIFY + _CLASS_SUFFIX,
}
UNSUPPORTED = ("PIX_SEG", "PIX_CHG")  # GeoChat outputs no polygons and takes one image

_TOKENS = re.compile(r"<p>(?P<label>.*?)</p>|\{(?P<box>[^{}]*)(?P<end>\}|(?=\{)|$)", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_MARKUP = re.compile(r"\{[^{}]*(?:\}|(?=\{)|$)|</?p>|</?s>|<unk>|<pad>")


@dataclass(frozen=True)
class GeoBox:
    """One GeoChat box: corners on the 0..100 scale, theta in degrees, the `<p>` label before it (or None)."""

    x1: float
    y1: float
    x2: float
    y2: float
    theta: float = 0.0
    label: str | None = None

    def corners(self, image_size, clockwise: bool = False) -> list[list[float]]:
        """The 4 corners [[x, y] x 4] in pixels, starting at (x1, y1), rotated by theta about the centre."""
        w, h = image_size
        xs, ys = (self.x1 * w / SCALE, self.x2 * w / SCALE), (self.y1 * h / SCALE, self.y2 * h / SCALE)
        cx, cy = sum(xs) / 2, sum(ys) / 2
        a = math.radians(self.theta)
        cos, sin = math.cos(a), (math.sin(a) if clockwise else -math.sin(a))
        # y points down: with sin > 0 the matrix [[cos, -sin], [sin, cos]] turns clockwise on screen
        return [[cx + cos * (x - cx) - sin * (y - cy), cy + sin * (x - cx) + cos * (y - cy)]
                for x, y in ((xs[0], ys[0]), (xs[1], ys[0]), (xs[1], ys[1]), (xs[0], ys[1]))]

    def hbb(self, image_size) -> list[float]:
        """[x1, y1, x2, y2] in pixels of the box enclosing the rotated rectangle."""
        pts = self.corners(image_size)
        return [min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts)]


def parse_geochat(text, warnings: list[str] | None = None) -> list[GeoBox]:
    """Every box in a GeoChat answer, in order, labelled by the last `<p>name</p>` before it.

    Never raises on `text`. Repairs and skips go to `warnings` (when given): boxes without exactly 4
    coordinates are skipped, coordinates outside 0..100 clamped, a box left open at the end still read.
    Swapped corners are put in order silently.
    """
    notes = warnings if warnings is not None else []
    if not isinstance(text, str):
        notes.append(f"answer is not text (got {type(text).__name__}); read as empty")
        return []
    boxes, label = [], None
    for m in _TOKENS.finditer(text):
        if m.group("label") is not None:
            label = " ".join(m.group("label").split()) or None
            continue
        if m.group("end") != "}":
            notes.append("a GeoChat box is not closed (truncated answer?)")
        box = _read_box(m.group("box"), label, notes)
        if box is not None:
            boxes.append(box)
    return boxes


def _read_box(body: str, label: str | None, notes: list[str]) -> GeoBox | None:
    coords, bar, angle = body.partition("|")
    values = [float(v) for v in _NUMBER.findall(coords)]
    if len(values) != 4:
        notes.append(f"skipped a GeoChat box with {len(values)} coordinate(s): {{{body[:40]}}}")
        return None
    thetas = _NUMBER.findall(angle)
    if bar and not thetas:
        notes.append(f"GeoChat box without an angle after '|' read as 0 degrees: {{{body[:40]}}}")
    clamped = [min(max(v, 0.0), SCALE) for v in values]
    if clamped != values:
        notes.append(f"GeoChat coordinates {values} outside 0..100 clamped")
    x1, y1, x2, y2 = clamped
    return GeoBox(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2), float(thetas[0]) if thetas else 0.0, label)


def strip_markup(text) -> str:
    """GeoChat text without boxes, `<p>` tags (their words stay) and decoder tokens; whitespace collapsed."""
    if not isinstance(text, str):
        return ""
    cleaned = " ".join(_MARKUP.sub(" ", text).split())
    return re.sub(r"\s+([.,;:!?])", r"\1", cleaned)  # "an airport ." -> "an airport."


def to_falcon(text, tag: str, image_size, warnings: list[str] | None = None, clockwise: bool = False) -> str:
    """A GeoChat answer as the Falcon answer of task `tag` for an image of `image_size` (W, H) pixels.

    Detection (REG_DET_HBB) keeps every box as a horizontal box, REG_DET_OBB every box as a quad (rotated by
    theta, see the module doc), REG_VG the first box; an answer with no box warns for all three. Label, caption and VQA answers become their text without
    GeoChat markup (label answers also lose a final full stop), IMG_CT the first number. Never raises on
    `text`; what could not be converted goes to `warnings`. TaskError for PIX_SEG / PIX_CHG, which GeoChat
    cannot answer.
    """
    spec = tasks.get(tag)
    notes = warnings if warnings is not None else []
    if spec.tag in UNSUPPORTED:
        raise TaskError(f"{spec.tag}: GeoChat gives no polygons; keep the dataset's answers for {spec.tag} "
                        "or distil it from a Falcon teacher")
    if spec.answer in ("box", "quad"):
        boxes = parse_geochat(text, notes)
        if not boxes and isinstance(text, str):  # REG_DET too: "there are none" and a missed box read the same
            notes.append(f"{spec.tag}: the GeoChat answer holds no box: {text[:60]!r}")
        if spec.tag == "REG_VG":
            boxes = boxes[:1]
        if spec.answer == "box":
            return spec.format(tasks.Boxes(boxes=[b.hbb(image_size) for b in boxes]), image_size)
        return spec.format(tasks.Quads(quads=[b.corners(image_size, clockwise) for b in boxes]), image_size)
    cleaned = strip_markup(text)
    if spec.answer == "count":
        count = answers.read_count(cleaned)
        if count.value is None:  # the reader says why: no number, a fraction, a negative number, too many digits
            why = count.warnings[-1] if count.warnings else "no number"
            notes.append(f"{spec.tag}: no count in the GeoChat answer {cleaned[:60]!r} ({why})")
        return spec.format(count)
    if spec.answer == "label":
        cleaned = cleaned.rstrip(".").strip()
    if not cleaned:
        notes.append(f"{spec.tag}: empty GeoChat answer")
    return cleaned


def geochat_prompt(tag: str, falcon_prompt_fields: dict, image_size=None, clockwise: bool = False) -> str:
    """GeoChat's prompt for a Falcon task, from the fields of its Falcon prompt.

    Args:
        tag: the Falcon task.
        falcon_prompt_fields: {"text": ..., "region": ...} as `tasks.get(tag).read_prompt(prompt, image_size)`
            returns them (region in pixels: a box, a quad's 4 corners or a polygon's points).
        image_size: (W, H), needed for tasks whose prompt holds a region.
        clockwise: the angle convention used for a quad region (see the module doc).
    """
    spec = tasks.get(tag)
    if spec.tag not in PROMPTS:
        raise TaskError(f"{spec.tag}: GeoChat has no prompt for this task (it gives no polygons); "
                        f"GeoChat can answer: {', '.join(PROMPTS)}")
    fields = {}
    if spec.needs_text:
        text = falcon_prompt_fields.get("text")
        if not text:
            raise TaskError(f"{spec.tag}: the GeoChat prompt needs the {spec.needs_text} from the Falcon prompt")
        fields["text"] = str(text).strip()
    if spec.needs_region:
        region = falcon_prompt_fields.get("region")
        if region is None or image_size is None:
            raise TaskError(f"{spec.tag}: the GeoChat prompt needs the region and the image size (W, H)")
        fields["box"] = format_box(region_to_geobox(region, spec.needs_region, image_size, clockwise))
    return PROMPTS[spec.tag].format(**fields)


def region_to_geobox(region, kind: str, image_size, clockwise: bool = False) -> GeoBox:
    """A Falcon prompt region in pixels ("box" [x1, y1, x2, y2], "quad" 4 corners, "polygon" points) as a GeoBox.

    A quad becomes the rectangle of its first two edges, turned by the angle of its first edge (folded into
    (-90, 90]); a polygon becomes its enclosing horizontal box.
    """
    w, h = image_size
    if kind == "quad":
        (ax, ay), (bx, by), (qx, qy) = region[0], region[1], region[2]
        cx, cy = sum(p[0] for p in region) / 4, sum(p[1] for p in region) / 4
        half_w, half_h = math.hypot(bx - ax, by - ay) / 2, math.hypot(qx - bx, qy - by) / 2
        angle = math.degrees(math.atan2(by - ay, bx - ax))  # clockwise on screen (y down)
        angle = (angle if clockwise else -angle) % 180  # a rectangle turned by 180 degrees is itself
        angle = angle - 180 if angle > 90 else angle  # folded into [0, 90] or (-90, 0)
        box = [cx - half_w, cy - half_h, cx + half_w, cy + half_h]
    elif kind == "polygon":
        xs, ys = [p[0] for p in region], [p[1] for p in region]
        box, angle = [min(xs), min(ys), max(xs), max(ys)], 0.0
    else:
        box, angle = [float(v) for v in region], 0.0
    scale = [SCALE / w, SCALE / h, SCALE / w, SCALE / h]
    return GeoBox(*(v * s for v, s in zip(box, scale)), theta=angle)


def format_box(box: GeoBox) -> str:
    """`{<x1><y1><x2><y2>|<theta>}` with integers, as GeoChat writes boxes."""
    values = [min(max(round(v), 0), int(SCALE)) for v in (box.x1, box.y1, box.x2, box.y2)]
    return "{" + "".join(f"<{v}>" for v in values) + f"|<{round(box.theta)}>" + "}"
