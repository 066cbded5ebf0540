"""prompt_check, which the pipeline runs on the teacher it trains: a model that answers every task prompt alike is flagged."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tiercel import tasks
from tiercel.evaluate.core import prompt_check
from tiercel.report import markdown

SINGLE = [t for t in tasks.TAGS if tasks.get(t).n_images == 1]


class Stub:
    """A predictor whose answer to each task comes from `answer(tag)`; keeps what run_all was given."""

    def __init__(self, answer):
        self.answer, self.seen = answer, None

    def run_all(self, image, tags, texts, regions, **generation):
        self.seen = {"shape": image.shape, "tags": tags, "texts": texts, "regions": regions, "generation": generation}
        return {t: SimpleNamespace(raw=self.answer(t)) for t in tags}


@pytest.fixture()
def records(tmp_path):
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "val.json").write_text(json.dumps([
        {"conversations": [{"role": "user", "content": "<image>\n[IMG_CAP]\nDescribe the image."},
                           {"role": "assistant", "content": "A harbor."}], "images": ["a.png"], "crop": []}]))
    return tmp_path / "val.json"


def test_one_answer_to_every_task_prompt_is_flagged(records):
    stub = Stub(lambda tag: "A top-down view of an industrial area.")
    check = prompt_check(stub, records, root=records.parent)
    assert (check["image"], check["tasks"], check["distinct_answers"]) == ("a.png", 13, 1)
    assert check["warning"] == ("gave one answer to all 13 task prompts on a.png ('A top-down view of an industrial "
                                "area.'): it ignores its prompt")
    empty = prompt_check(Stub(lambda tag: ""), records, root=records.parent)["warning"]
    assert empty == "gave one answer to all 13 task prompts on a.png (an empty answer): it ignores its prompt"
    # every single-image task, each with the text or region it needs, on the record's 40x60 image, greedy
    assert stub.seen["tags"] == SINGLE and stub.seen["shape"] == (40, 60, 3)
    assert set(stub.seen["texts"]) == {t for t in SINGLE if tasks.get(t).needs_text}
    assert set(stub.seen["regions"]) == {t for t in SINGLE if tasks.get(t).needs_region}
    assert stub.seen["generation"]["num_beams"] == 1


def test_answers_that_follow_the_prompt_pass(records):
    check = prompt_check(Stub(lambda tag: f"answer for {tag}"), records, root=records.parent)
    assert (check["distinct_answers"], check["warning"]) == (13, None)
    two = prompt_check(Stub(lambda tag: "a caption" if tag.startswith("IMG") else "<box>"), records, root=records.parent)
    assert (two["distinct_answers"], two["warning"]) == (2, None)


def test_the_report_puts_the_warning_above_the_headline():
    text = markdown({"rows": {}, "guard": {}, "warnings": ["the teacher ignores its prompt"]}, "demo")
    assert text.index("**Warning:** the teacher ignores its prompt") < text.index("## Headline")
    assert "**Warning:**" not in markdown({"rows": {}, "guard": {}, "warnings": []}, "demo")
