"""The falcon protocol: each task scored as Falcon's published evaluation scores it (TianHuiLab/Falcon d905f78).

Falcon scores answer TEXT: `single_gpu_inference_eval.py` keeps text answers with the decoder tokens removed
and pulls bins out of geometry answers with its regexes; `eval/evaluation.py` and `eval/src/*.py` score them.
So this protocol reads each result's `raw` text (a result built by hand, with no raw text, is written back in
Falcon's grammar first, which needs the image size), puts Florence's `<loc_N>` into Falcon's `<N>`, and
repeats Falcon's extraction and scoring: tiercel.tasks.falcon.text (labels, VQA, counts, captions),
.detection (boxes and quads, in bins) and .segmentation (polygons). Every place where it copies something
Falcon does that tiercel's own protocol does not is listed in docs/eval.md with the line it comes from.

Scores are fractions like tiercel's (Falcon prints captions and detection x100). Headlines follow Falcon's
radar chart: REG_VG's is its AP@0.5 (`ap50`), where tiercel's is the first box's accuracy.
shapely (REG_DET_OBB) and pycocotools (PIX_SEG, PIX_CHG) come with `tiercel[eval]` and are imported only when
those tasks are scored; tiercel's default protocol needs neither.
"""

from __future__ import annotations

import re

from tiercel.errors import TaskError
from tiercel.tasks.falcon import detection, segmentation, text
from tiercel.tasks.results import Count, Result

# Headline per task where it differs from the spec's (tiercel's): Falcon's radar chart reports REG_VG as AP50.
HEADLINES = {"REG_VG": "ap50"}
_BOX = re.compile(r"<(\d+)><(\d+)><(\d+)><(\d+)>")
_QUAD = re.compile(r"<(\d+)><(\d+)><(\d+)><(\d+)><(\d+)><(\d+)><(\d+)><(\d+)>")
_FLORENCE_BIN = re.compile(r"<loc_(\d+)>")


_NEEDS = {"REG_DET_OBB": "shapely", "PIX_SEG": "pycocotools", "PIX_CHG": "pycocotools"}  # tag -> library


def check_dependencies(tags) -> None:
    """TaskError naming the install command when scoring `tags` this way needs a library that is missing."""
    import importlib.util

    missing = sorted({_NEEDS[tag] for tag in tags if tag in _NEEDS and importlib.util.find_spec(_NEEDS[tag]) is None})
    if missing:
        needing = ", ".join(t for t in tags if _NEEDS.get(t) in missing)
        raise TaskError(f"the falcon protocol scores {needing} with {', '.join(missing)}: pip install 'tiercel[eval]'")


def headline(spec) -> str:
    """The headline metric of `spec` under the falcon protocol."""
    return HEADLINES.get(spec.tag, spec.headline)


def score(spec, preds: list[Result], refs: list[Result], image_sizes=None, crops=None) -> dict[str, float]:
    """Falcon's metrics of one task. `image_sizes`: (W, H) per sample (one frame for PIX_CHG), needed for
    polygons and for results without raw text; `crops`: each record's crop ([] or [x1, y1, x2, y2]), which sets
    the PIX_SEG/PIX_CHG mask canvas (default: none, Falcon's largest-coordinate square)."""
    pred_texts = [answer_text(spec, r, _size(image_sizes, i), "preds", i) for i, r in enumerate(preds)]
    refs = [r[0] if isinstance(r, (list, tuple)) and r else r for r in refs]  # Falcon's data: one caption each
    ref_texts = [answer_text(spec, r, _size(image_sizes, i), "refs", i) for i, r in enumerate(refs)]
    if not ref_texts:
        return {headline(spec): float("nan"), "n": 0.0}
    return {**_score(spec, pred_texts, ref_texts, image_sizes, crops), "n": float(len(ref_texts))}


def _score(spec, preds: list[str], refs: list[str], image_sizes, crops) -> dict[str, float]:
    kind = spec.answer
    if kind == "label" and spec.tag != "IMG_VQA":
        return text.label_scores([text.prediction(p) for p in preds], [text.reference(r) for r in refs])
    if kind in ("label", "count"):
        return text.exact_scores([text.prediction(p) for p in preds], [text.reference(r) for r in refs])
    if kind == "caption":
        return text.caption_scores(preds, refs)
    if kind == "poly":
        sizes = [_polygon_frame(spec, s) for s in image_sizes]
        crops = crops if crops is not None else [[]] * len(refs)
        if len(crops) != len(refs):
            raise TaskError(f"{spec.tag}: {len(crops)} crops but {len(refs)} references")
        return segmentation.mask_scores([segmentation.extract_polygons(p, s) for p, s in zip(preds, sizes)],
                                        [segmentation.extract_polygons(r, s) for r, s in zip(refs, sizes)], crops)
    regex = _QUAD if kind == "quad" else _BOX
    pred_bins = [[[int(v) for v in m] for m in regex.findall(p)] for p in preds]
    ref_bins = [[[int(v) for v in m] for m in regex.findall(r)] for r in refs]
    if spec.tag == "REG_DET_HBB":
        return detection.hbb_ap50(pred_bins, ref_bins)
    return detection.sweep_scores(pred_bins, ref_bins, quads=kind == "quad")


def answer_text(spec, result: Result, size, what: str = "preds", index: int = 0) -> str:
    """The answer text Falcon would score: `result.raw` in Falcon's bins, or the result written back."""
    if result.raw:
        return _FLORENCE_BIN.sub(r"<\1>", result.raw)
    if isinstance(result, Count):
        return "" if result.value is None else str(result.value)
    if hasattr(result, "text"):
        return result.text
    if not any(getattr(result, name, None) for name in ("boxes", "quads", "polygons")):
        return ""  # an empty answer
    if size is None:
        raise TaskError(f"{spec.tag}: {what}[{index}] has no answer text (raw) to score with the falcon protocol; "
                        "pass image_sizes so it can be written in bins")
    return spec.format(result, image_size=size)


def _size(image_sizes, i: int):
    return None if image_sizes is None else image_sizes[i]


def _polygon_frame(spec, size) -> tuple[float, float]:
    w, h = (float(v) for v in size)
    return (2 * w, 2 * h) if spec.n_images == 2 else (w, h)  # PIX_CHG bins are bins of the 2x2 canvas
