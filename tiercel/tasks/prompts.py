"""Prompts: fill a task's template with its text and region, and read them back out of a prompt.

Templates are Falcon's, verbatim (FALCON.md; a `\\n` there is a real newline), and live in the task registry
(tiercel.tasks.specs). `{text}` stands for the free text (a class, a question, a description), `{region}` for
a `<box>`, `<quad>` or `<poly>` structure written in bins of the image. The florence dialect uses the same
templates with `<loc_N>` coordinates; Florence-2's own task tokens (`<OD>`, `<CAPTION>`...) are not modelled.

Reading is tolerant: case, extra or missing whitespace around newlines, literal `\\n` sequences, optional
full stops, and a leading `<image>` / `[TAG]` are all accepted. This module knows nothing about answers or
metrics, and does not check that a `[TAG]` prefix names a real task (tiercel.tasks.specs does).
"""

from __future__ import annotations

import functools
import re

from tiercel.errors import TaskError
from tiercel.tasks import answers, grammar

# needs_region value -> (grammar structure, values it holds or None for a polygon, shape for messages)
REGIONS = {
    "box": ("box", 4, "[x1, y1, x2, y2]"),
    "quad": ("quad", 8, "[[x, y] x 4]"),
    "polygon": ("poly", None, "[[x, y], ...] with >= 3 points"),
}
_TURN = re.compile(r"^\s*(?:<image>\s*)*(?:\[(?P<tag>[A-Za-z0-9_]+)\][ \t]*\n?)?", re.IGNORECASE)


def build(spec, text=None, region=None, image_size=None, dialect: str = "falcon") -> str:
    """The prompt of `spec` for this text/region (pixels). Fields the task does not use are ignored."""
    grammar.get_dialect(dialect)
    fields = {}
    if spec.needs_text:
        if text is None or not str(text).strip():
            raise TaskError(f"{spec.tag}: the prompt needs text (the {spec.needs_text})")
        fields["text"] = str(text).strip()
    if spec.needs_region:
        kind, n_values, shape = REGIONS[spec.needs_region]
        if region is None:
            raise TaskError(f"{spec.tag}: the prompt needs region (a {spec.needs_region} {shape} in pixels)")
        if image_size is None:
            raise TaskError(f"{spec.tag}: the prompt needs image_size (W, H) to write the region in bins")
        problem = region_problem(spec.needs_region, region, image_size)
        if problem:
            raise TaskError(f"{spec.tag}: region {problem}")
        values = answers.bins(region, image_size, n_values)
        fields["region"] = grammar.write_structure(kind, [values], dialect)
    return spec.template.format(**fields)


def region_problem(needs_region: str, region, image_size) -> str | None:
    """Why `region` (pixels) cannot be the `needs_region` ("box", "quad" or "polygon") of a prompt on a (W, H)
    image: not numbers of that shape, or not inside the image; None when it can. A region the user gives is
    never silently moved (answers are clamped to the frame, prompts are not)."""
    _, n_values, shape = REGIONS[needs_region]
    shown = repr(region) if len(repr(region)) <= 80 else repr(region)[:77] + "..."
    if _has_bool(region):
        return f"must be a {needs_region} {shape} in pixels, numbers not true/false (got {shown})"
    try:
        flat = answers.coordinates(region, n_values)
    except TaskError:
        return f"must be a {needs_region} {shape} in pixels (got {shown})"
    outside = answers.region_outside(flat, image_size)
    if outside is None and needs_region == "box" and not (flat[2] > flat[0] and flat[3] > flat[1]):
        return f"{shown} is an empty or inverted box; give [x1, y1, x2, y2] with x2 > x1 and y2 > y1"
    return outside


def _has_bool(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(_has_bool(v) for v in value))


def split_turn(content: str, known=None) -> tuple[str | None, str]:
    """`<image>\\n[NAME]\\nprompt` -> ("NAME", prompt); literal `\\n` sequences become newlines.

    With `known` (a collection of upper-case tags), a bracketed name not in it stays part of the prompt
    (e.g. GeoChat's `[grounding]`) and the tag is None; without, any bracketed name is split off.
    """
    content = str(content).replace("\\n", "\n")
    m = _TURN.match(content)
    name = m.group("tag")
    if name is not None and known is not None and name.upper() not in known:
        return None, content[m.start("tag") - 1 :].strip()
    return name, content[m.end() :].strip()


def read(spec, prompt: str, image_size=None, dialect: str = "falcon") -> dict:
    """Inverse of build(): {"text": str or None, "region": pixels or None}. Never raises on the prompt text.

    If the prompt does not follow the template, text is None and the region is the first structure of the
    right kind found anywhere in it. A polygon region with several `<sep>` parts gives its first part.
    """
    grammar.get_dialect(dialect)
    _, body = split_turn(prompt if isinstance(prompt, str) else "")
    m = _template_regex(spec.template).fullmatch(body)
    text = m.group("text").strip() if m and "text" in m.re.groupindex else None
    region = None
    if spec.needs_region:
        source = m.group("region") if m else body
        region = _read_region(spec, source, image_size, dialect)
    return {"text": text, "region": region}


def _read_region(spec, source: str, image_size, dialect: str):
    kind, _, _ = REGIONS[spec.needs_region]
    groups, _ = grammar.read(source, kind, dialect)
    if not groups:
        return None
    if image_size is None:
        raise TaskError(f"{spec.tag}: reading the region needs image_size (W, H)")
    if kind == "box":
        return answers.to_pixels(groups[0], image_size, flat=True)
    return answers.to_pixels(groups[0] if kind == "quad" else groups[0][0], image_size)


@functools.cache
def _template_regex(template: str) -> re.Pattern:
    out = []
    for piece in re.split(r"(\{text\}|\{region\})", template):
        if piece == "{text}":
            out.append(r"(?P<text>.+?)")
        elif piece == "{region}":
            out.append(r"(?P<region>.*?)")
        else:
            out.append(_literal(piece))
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _literal(piece: str) -> str:
    out = []
    for chunk in re.split(r"(\s+)", piece):
        if chunk.isspace():
            out.append(r"\s*" if "\n" in chunk else r"\s+")
        elif chunk:
            out.append(re.escape(chunk).replace(r"\.", r"\.?"))
    return "".join(out)
