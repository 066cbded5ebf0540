"""A headline scored on bootstrap draws from per-sample statistics equals the metric scored on each draw whole."""

from __future__ import annotations

import numpy as np
import pytest

from tiercel import tasks
from tiercel.quantize.calibrate import load_samples
from tiercel.quantize.guard import bootstrap_drops
from tiercel.tasks.metrics.resample import MEAN_HEADLINES, resampler


def _parsed(synth_dir):
    """{tag: (preds, refs, sizes)}: predictions are the reference answers of the same task, rotated by one
    record on every other sample and cut short on every third, so some are right, some wrong, some repaired."""
    by_tag: dict[str, list] = {}
    for s in load_samples(synth_dir, n=10_000, split="train"):
        by_tag.setdefault(s.tag, []).append(s)
    out = {}
    for tag, samples in by_tag.items():
        spec = tasks.get(tag)
        answers = [s.answer for s in samples]
        preds, refs, sizes = [], [], []
        for i, s in enumerate(samples):
            text = answers[(i + 1) % len(answers)] if i % 2 else s.answer
            text = text[: len(text) // 2] if i % 3 == 0 else text
            preds.append(spec.parse(text, image_size=s.size))
            refs.append(spec.parse(s.answer, image_size=s.size))
            sizes.append(s.size)
        out[tag] = (preds, refs, sizes)
    return out


def test_every_task_but_none_falls_back_to_scoring_each_draw_whole(synth_dir):
    parsed = _parsed(synth_dir)
    assert set(parsed) == set(tasks.TAGS)
    covered = {t for t, v in parsed.items() if resampler(tasks.get(t).score, tasks.get(t).headline, *v)}
    assert covered == set(tasks.TAGS)


@pytest.mark.parametrize("tag", tasks.TAGS)
def test_a_draw_scores_what_the_metric_gives_on_the_drawn_samples(synth_dir, tag):
    preds, refs, sizes = _parsed(synth_dir)[tag]
    spec = tasks.get(tag)
    draw = resampler(spec.score, spec.headline, preds, refs, sizes)
    rng = np.random.default_rng(1)
    values = set()
    for _ in range(12):
        pick = rng.integers(0, len(refs), len(refs))
        whole = spec.metric([preds[i] for i in pick], [refs[i] for i in pick], [sizes[i] for i in pick])
        assert draw(pick) == pytest.approx(whole[spec.headline], rel=1e-9, abs=1e-12)
        values.add(round(whole[spec.headline], 9))
    assert len(values) > 1  # the draws differ, so equality says something


def test_mean_headlines_are_means_of_each_sample_scored_alone(synth_dir):
    # The claim MEAN_HEADLINES rests on, checked on the full set of each task that uses one.
    for tag, (preds, refs, sizes) in _parsed(synth_dir).items():
        spec = tasks.get(tag)
        if spec.headline not in MEAN_HEADLINES:
            continue
        alone = [spec.metric([p], [r], [s])[spec.headline] for p, r, s in zip(preds, refs, sizes)]
        assert spec.metric(preds, refs, sizes)[spec.headline] == pytest.approx(np.mean(alone))


def test_ap_ties_between_answers_keep_draw_order():
    # Two answers, one box each at position 0: the pooled ranking keeps the draw's order, so AP depends on it.
    from tiercel.tasks.results import Boxes

    hit, miss = Boxes(boxes=[[0, 0, 10, 10]]), Boxes(boxes=[[50, 50, 60, 60]])
    refs = [Boxes(boxes=[[0, 0, 10, 10]]), Boxes(boxes=[[0, 0, 10, 10]])]
    spec = tasks.get("REG_DET_HBB")
    draw = resampler(spec.score, "ap50", [hit, miss], refs, [(64, 64)] * 2)
    hit_first, miss_first = np.array([0, 1]), np.array([1, 0])
    assert draw(hit_first) == pytest.approx(0.5)  # precision 1 at recall 0.5, then nothing
    assert draw(miss_first) == pytest.approx(0.25)  # the hit comes second: precision 0.5 at recall 0.5
    assert draw(miss_first) == spec.metric([miss, hit], refs[::-1], [(64, 64)] * 2)["ap50"]


def test_the_guard_bootstrap_is_the_same_with_and_without_per_sample_statistics(synth_dir):
    parsed = _parsed(synth_dir)
    ref = {t: (v[1], v[1], v[2]) for t, v in parsed.items()}  # fp32 answered the references
    got = {t: (v[0], v[1], v[2]) for t, v in parsed.items()}
    same = {t: np.zeros(len(v[1]), dtype=bool) for t, v in parsed.items()}
    fast, fast_tasks = bootstrap_drops(ref, got, same, rounds=6)
    whole, whole_tasks = bootstrap_drops(ref, got, same, rounds=6, whole=True)
    np.testing.assert_allclose(fast, whole, rtol=1e-9)
    for t in ref:
        np.testing.assert_allclose(fast_tasks[t], whole_tasks[t], rtol=1e-9, atol=1e-12)
    assert fast.min() > 0  # the rotated answers lose something on every draw


def test_ap_matching_inside_an_answer_follows_generation_order():
    # A duplicate box on an already-matched object is a false positive; which of the two comes first matters.
    from tiercel.tasks.results import Boxes

    gt = Boxes(boxes=[[0, 0, 10, 10]])
    loose, tight = [0, 0, 10, 14], [0, 0, 10, 10]  # IoU 0.71 and 1 with the object
    spec = tasks.get("REG_DET_HBB")
    for boxes in ([loose, tight], [tight, loose], [[50, 50, 60, 60], tight], [tight, tight]):
        preds, refs = [Boxes(boxes=boxes), Boxes(boxes=[loose])], [gt, gt]
        draw = resampler(spec.score, "ap50", preds, refs, [(64, 64)] * 2)
        for pick in ([0, 1], [1, 0], [0, 0], [1, 1]):
            whole = spec.metric([preds[i] for i in pick], [refs[i] for i in pick], [(64, 64)] * 2)["ap50"]
            assert draw(np.array(pick)) == pytest.approx(whole), (boxes, pick)


CAPTION_CASES = {
    "several references": (
        ["a small harbor with two boats", "an airport", "three tennis courts near a road", "a river"],
        [["a harbor with boats", "two boats in a small harbor"], ["a large airport with planes"],
         ["tennis courts beside a road", "three courts", "a road and courts"], ["a river through farmland"]]),
    "empty captions and references": (
        ["", "a harbor", "two boats", ""],
        [["a harbor with boats"], [""], ["two boats in a harbor", ""], [""]]),
}


@pytest.mark.parametrize("case", CAPTION_CASES)
def test_cider_draws_with_several_or_empty_references(case):
    from tiercel.tasks.results import Caption

    hyps, refs = CAPTION_CASES[case]
    preds = [Caption(text=h) for h in hyps]
    several = [[Caption(text=r) for r in rs] for rs in refs]
    spec = tasks.get("IMG_CAP")
    draw = resampler(spec.score, "cider", preds, several)
    scores = []
    for pick in ([0, 1, 2, 3], [2, 2, 0, 3], [1, 1, 1, 0], [3, 0, 0, 2], [2, 2, 2, 2], [1, 3, 1, 3]):
        whole = spec.score([preds[i] for i in pick], [several[i] for i in pick])["cider"]
        assert draw(np.array(pick)) == pytest.approx(whole, rel=1e-9, abs=1e-12)
        scores.append(whole)
    assert max(scores) > 0


def test_the_average_interval_leaves_out_rounds_where_a_task_has_no_score():
    # REG_DET_HBB with one object in 10 records: draws without it have no AP (nan), as average_headline gives nan.
    from tiercel.tasks.metrics.resample import intervals, task_rng
    from tiercel.tasks.results import Boxes, Label

    hit = Boxes(boxes=[[0, 0, 10, 10]])
    det = ([hit] * 10, [hit] + [Boxes(boxes=[])] * 9, [(64, 64)] * 10)
    cls = ([Label(text="harbor")] * 6 + [Label(text="forest")] * 4, [Label(text="harbor")] * 10, [(64, 64)] * 10)
    per_task, average = intervals({"IMG_CLS": cls, "REG_DET_HBB": det}, rounds=300)
    values = {}
    for tag, (p, r, s) in (("IMG_CLS", cls), ("REG_DET_HBB", det)):
        rng, spec, got = task_rng(0, tag), tasks.get(tag), []
        for _ in range(300):
            pick = rng.integers(0, 10, 10)
            got.append(spec.metric([p[i] for i in pick], [r[i] for i in pick], [s[i] for i in pick])[spec.headline])
        values[tag] = np.array(got, dtype=float)
    mean = (values["IMG_CLS"] + values["REG_DET_HBB"]) / 2
    assert np.isnan(mean).any() and not np.isnan(mean).all()
    assert average == pytest.approx(np.nanquantile(mean, [0.025, 0.975]).tolist())
    assert per_task["REG_DET_HBB"] == pytest.approx(np.nanquantile(values["REG_DET_HBB"], [0.025, 0.975]).tolist())
