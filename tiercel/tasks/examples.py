"""Example inputs per task: the text and/or region a user would pass, for an image of a given size. Used by the
profiler (timing every task), eval's prompt check and tests, so every task can run without a dataset."""

from __future__ import annotations

from tiercel.tasks import specs


def run_all_inputs(tags: list[str], size: tuple[int, int]) -> tuple[dict, dict]:
    """`task_inputs` of each of `tags` as `Model.run_all` takes them: ({tag: text}, {tag: region})."""
    inputs = {t: task_inputs(t, size) for t in tags}
    return (
        {t: x["text"] for t, x in inputs.items() if "text" in x},
        {t: x["region"] for t, x in inputs.items() if "region" in x},
    )


def task_inputs(tag: str, size: tuple[int, int]) -> dict:
    """A text and/or region for `tag` on an image of `size` (W, H): what a user would pass."""
    w, h = size
    spec = specs.get(tag)
    texts = {
        "class": "airplane",
        "question": "Is there a ship in the image?",
        "description": "the white airplane near the runway",
    }
    regions = {
        "box": [0.1 * w, 0.15 * h, 0.55 * w, 0.6 * h],
        "quad": [[0.1 * w, 0.2 * h], [0.5 * w, 0.1 * h], [0.6 * w, 0.5 * h], [0.2 * w, 0.6 * h]],
        "polygon": [[0.1 * w, 0.1 * h], [0.6 * w, 0.2 * h], [0.4 * w, 0.7 * h]],
    }
    out = {}
    if spec.needs_text:
        out["text"] = texts[spec.needs_text]
    if spec.needs_region:
        out["region"] = regions[spec.needs_region]
    return out
