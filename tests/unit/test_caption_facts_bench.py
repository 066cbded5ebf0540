"""benchmarks/caption_facts.py reads back every fact the synthetic generator puts in a caption, from the generator's
own text, and counts an answer's facts against the reference's."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import caption_facts as cf  # noqa: E402

from tiercel.data.synth import language as L  # noqa: E402
from tiercel.data.synth.knobs import Knobs  # noqa: E402
from tiercel.data.synth.layout import sample_scene  # noqa: E402


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(3)
    return [(sample_scene(rng, 128, Knobs(scale=2.0)), np.random.default_rng(i)) for i in range(40)]


def test_captions_read_back_the_scene_and_its_three_most_frequent_classes(scenes):
    for scene, rng in scenes:
        listed = dict(Counter(o.cls for o in scene.objects).most_common(3))
        for text in (L.caption(scene, rng), L.detailed_caption(scene, rng)):
            assert cf.scene(text) == scene.scene_class, text
            assert cf.objects(text) == listed, text


def test_the_detailed_caption_reads_back_its_ground_and_largest_object(scenes):
    for scene, rng in scenes:
        text = L.detailed_caption(scene, rng)
        assert cf.ground(text) == L.GROUND_WORDS[L.ground_cover(scene)[0][0]], text
        if len(scene.objects) > 1:
            big = max(scene.objects, key=lambda o: o.area)
            assert cf.largest(text) == (big.color, big.cls), text


def test_region_captions_read_back_class_colour_size_and_cell(scenes):
    for scene, rng in scenes:
        for obj in scene.objects[:3]:
            text = L.region_caption(obj, scene, rng)
            got = cf.region(text)
            assert (got["object"], got["colour"]) == (obj.cls, obj.color), text
            assert got["size"] in (None, L.size_word(obj, scene.size)), text
            assert got["place"] in (None, L.cell(obj, scene.size)), text


def test_an_answer_is_counted_against_the_reference_fact_by_fact():
    truth = "A harbor with five ships, a building and a storage tank."
    pred = "An aerial view of a harbor with four ships, two storage tanks and two vehicles."
    assert cf.facts("IMG_CAP", truth, pred) == {"scene": (1, 1), "class recall": (2, 3), "class precision": (2, 3),
                                                "count": (0, 2)}
    got = cf.facts("REG_CAP", "A large gray storage tank in the bottom right of the image.",
                   "A small gray ship on the water in the bottom right.")
    assert got == {"object": (0, 1), "colour": (1, 1), "size": (0, 1), "place": (1, 1)}
    assert cf.facts("REG_CAP", "A blue vehicle parked on the concrete.", "") == {"object": (0, 1), "colour": (0, 1)}


def test_tally_sums_facts_per_task_into_rates():
    rows = [{"tag": "IMG_CAP", "truth": {"text": "A harbor with five ships."}, "pred": {"text": "A harbor with five ships."}},
            {"tag": "IMG_CAP", "truth": {"text": "A harbor with two ships."}, "pred": None},
            {"tag": "IMG_CLS", "truth": {"text": "harbor"}, "pred": {"text": "harbor"}}]
    got = cf.tally(rows)
    assert list(got) == ["IMG_CAP"]
    assert got["IMG_CAP"]["scene"] == {"right": 1, "of": 2, "rate": 0.5}
    assert got["IMG_CAP"]["class precision"] == {"right": 1, "of": 1, "rate": 1.0}
