"""The 14 Falcon tasks as data: one TaskSpec per tag and the registry that holds them.

A spec ties a tag to Falcon's prompt template (verbatim from FALCON.md), what that prompt needs (free text, a
region), the kind of answer it gets and the Result it parses to, and the metric with its headline key. Its
methods only route: prompts (tiercel.tasks.prompts), answer text (tiercel.tasks.answers, tiercel.tasks.grammar),
scores (tiercel.tasks.metrics), PIX_CHG's 2x2 canvas (tiercel.tasks.change).

This module knows nothing about models, tokenizers or pixels beyond an image's (W, H).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from tiercel.errors import TaskError
from tiercel.tasks import answers, change, falcon, grammar, metrics, prompts
from tiercel.tasks.results import Caption, Count, Polygons, Result


@dataclass(frozen=True)
class TaskSpec:
    """One Falcon task. `answer` is the answer kind (a key of tiercel.tasks.answers.ANSWERS)."""

    tag: str
    number: int
    level: str  # "image" | "region" | "pixel"
    template: str
    answer: str
    headline: str
    score: Callable = field(repr=False, compare=False)
    needs_text: str | None = None  # "class" | "question" | "description"
    needs_region: str | None = None  # "box" | "quad" | "polygon", in the prompt
    n_images: int = 1  # 2 for PIX_CHG: the pair is tiled into one canvas (tiercel.tasks.change)

    @property
    def result_type(self) -> type:
        return answers.ANSWERS[self.answer][0]

    def prompt(self, text=None, region=None, image_size=None, dialect: str = "falcon") -> str:
        """Falcon's prompt for this task; `region` in pixels of the image, `image_size` its (W, H)."""
        return prompts.build(self, text, region, image_size, dialect)

    def read_prompt(self, prompt: str, image_size=None, dialect: str = "falcon") -> dict:
        """Inverse of prompt(): {"text": ..., "region": ...} (None where absent); tolerant of formatting."""
        return prompts.read(self, prompt, image_size, dialect)

    def parse(self, text: str, image_size=None, dialect: str = "falcon") -> Result:
        """Answer text -> Result in pixels of the image. Never raises on `text`; repairs go to `warnings`.

        For PIX_CHG, `image_size` is the (W, H) of ONE frame: bins refer to the (2W, 2H) canvas and points
        come back in the frame: each instance is moved out of the canvas quadrant its mean point lies in and
        clipped to [0, W] x [0, H] (tiercel.tasks.change.to_frame).
        """
        _, reader, _, geometric = answers.ANSWERS[self.answer]
        grammar.get_dialect(dialect)
        if not geometric:
            return reader(text)
        result = reader(text, self._frame(image_size), dialect)
        if self.n_images == 2:
            result.polygons = change.to_frame(result.polygons, image_size)
        return result

    def format(self, result: Result, image_size=None, dialect: str = "falcon") -> str:
        """Result -> the answer text the model should generate. For PIX_CHG, `image_size` is ONE frame's
        (W, H); points are written as they are (top-left quadrant) in bins of the (2W, 2H) canvas."""
        result_type, _, writer, geometric = answers.ANSWERS[self.answer]
        if not isinstance(result, result_type):
            raise TaskError(f"{self.tag}: format needs a {result_type.__name__} (got {type(result).__name__})")
        grammar.get_dialect(dialect)
        if not geometric:
            return writer(result, None, dialect)
        frame = self._frame(image_size)
        if self.n_images == 2:
            result = Polygons(polygons=change.to_canvas(result.polygons, image_size))
        return writer(result, frame, dialect)

    def metric(self, preds: list, refs: list, image_sizes: list | None = None, protocol: str = "tiercel",
               crops: list | None = None) -> dict[str, float]:
        """Score parsed predictions against references; `image_sizes` ((W, H) each) for pixel tasks.

        `protocol`: "tiercel" (default, see docs/eval.md) or "falcon", Falcon's published evaluation
        (tiercel.tasks.falcon), which scores the results' answer text and reads `crops` (each record's crop) for
        PIX_SEG/PIX_CHG. The headline key of each is `spec.headline_of(protocol)`.
        """
        check_protocol(protocol)
        if not isinstance(preds, (list, tuple)) or not isinstance(refs, (list, tuple)):
            raise TaskError(f"{self.tag}: preds and refs must be lists, one result per sample "
                            f"(got {type(preds).__name__}, {type(refs).__name__})")
        if len(preds) != len(refs):
            raise TaskError(f"{self.tag}: {len(preds)} predictions but {len(refs)} references")
        self._check_results("preds", preds)
        self._check_results("refs", refs)
        if self.answer == "poly" and (image_sizes is None or len(image_sizes) != len(refs)):
            raise TaskError(f"{self.tag}: metric needs image_sizes, one (W, H) per sample")
        if image_sizes is not None and len(image_sizes) != len(refs):
            raise TaskError(f"{self.tag}: {len(image_sizes)} image sizes but {len(refs)} references")
        if protocol == "falcon":
            return falcon.score(self, preds, refs, image_sizes, crops)
        return self.score(preds, refs, image_sizes)

    def headline_of(self, protocol: str = "tiercel") -> str:
        """The key of this task's headline metric under `protocol`."""
        check_protocol(protocol)
        return falcon.headline(self) if protocol == "falcon" else self.headline

    def _frame(self, image_size) -> tuple[float, float]:
        if image_size is None:
            raise TaskError(f"{self.tag}: needs image_size (W, H) to convert coordinates")
        try:
            w, h = (float(v) for v in image_size)
        except (TypeError, ValueError):
            raise TaskError(f"{self.tag}: image_size must be (W, H) (got {image_size!r})") from None
        if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
            raise TaskError(f"{self.tag}: image_size must be positive (got {image_size!r})")
        return change.canvas_size((w, h)) if self.n_images == 2 else (w, h)

    def _check_results(self, name: str, items: list) -> None:
        for i, item in enumerate(items):
            many = isinstance(item, (list, tuple)) and name == "refs" and self.result_type is Caption
            for x in item if many else [item]:
                if not isinstance(x, self.result_type):
                    expected = self.result_type.__name__
                    raise TaskError(f"{self.tag}: {name}[{i}] is {type(x).__name__}; expected {expected}")
            if name == "refs" and self.result_type is Count and item.value is None:
                raise TaskError(f"{self.tag}: refs[{i}] is a Count without a value")


PROTOCOLS = ("tiercel", "falcon")  # how metric() scores: tiercel's own, or Falcon's published evaluation


def check_protocol(protocol: str) -> str:
    """`protocol` if it is one of PROTOCOLS; TaskError listing them otherwise."""
    if protocol not in PROTOCOLS:
        raise TaskError(f"unknown evaluation protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    return protocol


_WORDS = "\nUse one or a few words."
_SPECS = (
    TaskSpec("IMG_CLS", 1, "image", "Classify the image." + _WORDS, "label", "accuracy", metrics.score_labels),
    TaskSpec("IMG_CAP", 2, "image", "Describe the image.", "caption", "cider", metrics.score_captions),
    TaskSpec("IMG_CAP_DETAILED", 3, "image", "Describe the image in detail.", "caption", "cider",
             metrics.score_captions),
    TaskSpec("IMG_VQA", 4, "image", "{text}", "label", "accuracy", metrics.score_vqa, needs_text="question"),
    TaskSpec("IMG_CT", 5, "image", "Count the number of {text}.", "count", "accuracy", metrics.score_counts,
             needs_text="class"),
    TaskSpec("REG_CLS_HBB", 6, "region", "Classify the region of {region}." + _WORDS, "label", "accuracy",
             metrics.score_labels, needs_region="box"),
    TaskSpec("REG_CLS_OBB", 7, "region", "Classify the region of {region}." + _WORDS, "label", "accuracy",
             metrics.score_labels, needs_region="quad"),
    TaskSpec("REG_DET_HBB", 8, "region", "Detect all {text} in the image.\nUse horizontal bounding boxes.", "box",
             "ap50", metrics.score_boxes, needs_text="class"),
    TaskSpec("REG_DET_OBB", 9, "region", "Detect all {text} in the image.\nUse oriented bounding boxes.", "quad",
             "ap50", metrics.score_quads, needs_text="class"),
    TaskSpec("REG_VG", 10, "region",
             "Detect an area that matches the description.\n{text}\nUse horizontal bounding boxes.", "box",
             "acc50", metrics.score_grounding, needs_text="description"),
    TaskSpec("REG_CAP", 11, "region", "Describe the {region} in this image.", "caption", "cider",
             metrics.score_captions, needs_region="box"),
    TaskSpec("PIX_CLS", 12, "pixel", "Classify the region of {region}." + _WORDS, "label", "accuracy",
             metrics.score_labels, needs_region="polygon"),
    TaskSpec("PIX_SEG", 13, "pixel", "Segment out {text} in the image.", "poly", "miou", metrics.score_polygons,
             needs_text="class"),
    TaskSpec("PIX_CHG", 14, "pixel", "Find changes in the two images.", "poly", "miou", metrics.score_polygons,
             n_images=2),
)  # fmt: skip
TASKS: dict[str, TaskSpec] = {s.tag: s for s in _SPECS}
TAGS: tuple[str, ...] = tuple(TASKS)


def get(tag: str) -> TaskSpec:
    """The spec of `tag`; "[REG_DET_HBB]" and "reg_det_hbb" work too. TaskError lists the valid tags."""
    key = str(tag).strip().strip("[]").strip().upper()
    if key not in TASKS:
        raise TaskError(f"unknown task {tag!r}; valid tags: {', '.join(TAGS)}")
    return TASKS[key]


def split_user_turn(content: str) -> tuple[str | None, str]:
    """A Falcon_SFT user turn -> (tag or None, prompt).

    Handles `<image>\\n[TAG]\\nprompt`, `[TAG]\\nprompt`, no tag, and literal `\\n` sequences. A bracketed name
    that is not a Falcon tag (e.g. GeoChat's `[grounding]`) stays in the prompt and the tag is None.
    """
    tag, prompt = prompts.split_turn(content, known=TASKS)
    return (tag.upper() if tag else None), prompt


def average_headline(per_task: dict[str, dict], protocol: str = "tiercel") -> float:
    """Mean of each task's headline metric ({tag: spec.metric(...) output}) under `protocol`. A nan headline
    gives nan.

    Headlines are on the scale the metrics return: fractions, and CIDEr as coco-caption gives it (up to 10).
    That is Falcon's radar chart divided by 100 (accuracy 78.4 -> 0.784, CIDEr 30.5 -> 0.305).
    """
    if not per_task:
        raise TaskError("average_headline: no task metrics given")
    values = []
    for tag, scores in per_task.items():
        spec = get(tag)
        key = spec.headline_of(protocol)
        if key not in scores:
            got = ", ".join(sorted(scores))
            raise TaskError(f"{spec.tag}: metrics lack the headline '{key}' (got {got})")
        values.append(float(scores[key]))
    return sum(values) / len(values)
