"""Qualitative examples: the image with reference and predicted geometry drawn on it, the texts underneath.

Green is the reference, red the prediction, yellow the region the prompt asked about. Boxes, quads and polygons
are drawn in the image's pixels (PIX_CHG shows the before and after frames side by side, the change polygons on
both). Images are scaled up to at least `min_side` pixels so small benchmark tiles stay readable. PIL only.

Each PNG is named `NN_TAG_INDEX.png`, written whole (a temporary file, then a rename) and marked as tiercel's in
its `Software` text (tiercel.fileio.plot_metadata): a file of that name there that tiercel did not write is
refused, before the evaluation (check_examples_output) and again before the first PNG is written.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tiercel import tasks as T
from tiercel.data.images import load_image
from tiercel.errors import TiercelError
from tiercel.fileio import atomic_path, check_output_dir, is_our_png, plot_metadata

TRUTH, PRED, REGION = (40, 200, 60), (230, 40, 40), (250, 210, 0)
TEXT_WIDTH = 70  # characters per caption line


def describe(result: T.Result) -> str:
    """A short human-readable form of a result for the caption."""
    if isinstance(result, (T.Label, T.Caption)):
        return repr(result.text)
    if isinstance(result, T.Count):
        return "no number" if result.value is None else str(result.value)
    if isinstance(result, T.Boxes):
        return f"{len(result.boxes)} box(es) " + " ".join(f"[{', '.join(f'{v:.0f}' for v in b)}]" for b in result.boxes[:3])
    if isinstance(result, T.Quads):
        return f"{len(result.quads)} oriented box(es)"
    if isinstance(result, T.Polygons):
        return f"{len(result.polygons)} polygon(s)"
    return result.raw


def _shapes(result: T.Result) -> list[list[tuple[float, float]]]:
    """Closed outlines (lists of points) of a geometric result; empty for text results."""
    if isinstance(result, T.Boxes):
        return [[(x1, y1), (x2, y1), (x2, y2), (x1, y2)] for x1, y1, x2, y2 in (b[:4] for b in result.boxes if len(b) >= 4)]
    if isinstance(result, T.Quads):
        return [[tuple(p) for p in q] for q in result.quads]
    if isinstance(result, T.Polygons):
        return [[tuple(p) for p in part] for inst in result.polygons for part in inst]
    return []


def _region(sample) -> list[list[tuple[float, float]]]:
    spec = T.get(sample.tag)
    if not spec.needs_region:
        return []
    region = spec.read_prompt(sample.prompt, image_size=sample.size).get("region")
    if region is None:
        return []
    if spec.needs_region == "box":
        x1, y1, x2, y2 = region
        return [[(x1, y1), (x2, y1), (x2, y2), (x1, y2)]]
    return [[tuple(p) for p in region]]


def render(sample, root: str | Path, min_side: int = 384) -> Image.Image:
    """One sample as a PIL image: picture(s) with outlines on top, prompt / reference / prediction below."""
    frames = [load_image(Path(root) / p, sample.crop) for p in sample.images]
    picture = np.concatenate(frames, axis=1) if len(frames) > 1 else frames[0]
    h, w = frames[0].shape[:2]
    scale = max(1.0, min_side / min(h, w))
    canvas = Image.fromarray(picture).resize((round(picture.shape[1] * scale), round(h * scale)), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(scale))
    for shapes, color in ((_region(sample), REGION), (_shapes(sample.truth), TRUTH), (_shapes(sample.pred), PRED)):
        for shape in shapes:
            for offset in range(len(frames)):  # change polygons are drawn on both frames
                pts = [((x + offset * w) * scale, y * scale) for x, y in shape]
                if len(pts) >= 2:
                    draw.line(pts + [pts[0]], fill=color, width=width)
    return _with_caption(canvas, sample)


def _with_caption(canvas: Image.Image, sample) -> Image.Image:
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    pair = ", before | after" if len(sample.images) > 1 else ""
    lines = [f"{sample.tag}  (record {sample.index}, {sample.size[0]}x{sample.size[1]} px{pair})"]
    for label, text in (("prompt", sample.prompt.replace("\n", " / ")), ("truth (green)", describe(sample.truth)),
                        ("pred (red)", describe(sample.pred))):
        lines += textwrap.wrap(f"{label}: {text}", max(TEXT_WIDTH, canvas.width // 8), subsequent_indent="    ") or [label]
    lines.append("yellow: the region in the prompt" if T.get(sample.tag).needs_region else "")
    line_h = 18
    out = Image.new("RGB", (max(canvas.width, 560), canvas.height + line_h * len(lines) + 12), "white")
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((6, canvas.height + 6 + i * line_h), line, fill="black", font=font)
    return out


def _stem(tag: str) -> str:
    """What every example name of task `tag` starts with: its number and tag."""
    return f"{T.get(tag).number:02d}_{tag}"


def example_name(tag: str, index: int) -> str:
    return f"{_stem(tag)}_{index}.png"


def check_examples_output(out_dir: str | Path | None, tags=None, option: str = "--examples") -> None:
    """Before the evaluation: TiercelError unless examples of `tags` (default: all 14) can be written into `out_dir`:
    it is a folder (or can be made), and no file there named as one of their examples was written by someone
    else (which example a task keeps is known only after the run, so every index counts)."""
    check_output_dir(out_dir, option)
    if out_dir is None or not Path(out_dir).is_dir():
        return
    names = re.compile(rf"({'|'.join(re.escape(_stem(t)) for t in (tags or T.TAGS))})_\d+\.png")
    try:
        theirs = sorted(p for p in Path(out_dir).iterdir() if names.fullmatch(p.name) and not is_our_png(p))
    except OSError as err:
        raise TiercelError(f"{option} {out_dir}: cannot be listed ({err.strerror}); choose another folder") from None
    if theirs:
        raise TiercelError(f"{option} {out_dir}: {theirs[0].name} was not written by tiercel and an example of that "
                           "name would replace it; choose another folder or move the file yourself")


def write_examples(report, root: str | Path, out_dir: str | Path, min_side: int = 384) -> list[Path]:
    """Write one PNG per kept sample of `report` (EvalReport.examples) into `out_dir`; returns the paths. Each is
    written whole; TiercelError before the first one if a file of one of their names is not tiercel's."""
    from PIL import PngImagePlugin

    out_dir = Path(out_dir)
    paths = [out_dir / example_name(s.tag, s.index) for s in report.examples]
    theirs = next((p for p in paths if p.exists() and not is_our_png(p)), None)
    if theirs is not None:
        raise TiercelError(f"{theirs}: was not written by tiercel, so it is not replaced; choose another folder for "
                           "the examples or move the file yourself")
    info = PngImagePlugin.PngInfo()
    for key, value in plot_metadata("png").items():
        info.add_text(key, value)
    out_dir.mkdir(parents=True, exist_ok=True)
    for sample, path in zip(report.examples, paths, strict=True):
        with atomic_path(path) as tmp:
            render(sample, root, min_side).save(tmp, format="PNG", pnginfo=info)
    return paths
