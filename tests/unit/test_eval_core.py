"""evaluate() with fake predictors on the synthetic benchmark: metrics equal what they must be by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tiercel import tasks as T
from tiercel.data import iter_records, load_image
from tiercel.errors import ConfigError, TaskError
from tiercel.evaluate import evaluate, open_predictor, write_examples

EMPTY = {"label": T.Label(), "caption": T.Caption(), "count": T.Count(), "box": T.Boxes(), "quad": T.Quads(),
         "poly": T.Polygons()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tiercel.data.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, n=60, size=64, seed=0, workers=1)
    return root


class Oracle:
    """Answers each prompt with its reference: a perfect predictor built from the records themselves."""

    def __init__(self, file, root):
        self.answers, self.calls = {}, []
        for r in iter_records(file):
            image = load_image(r.image_paths(root)[0], r.crop)
            self.answers[(r.tag, r.prompt, image.tobytes())] = r.answer

    def run(self, image, task, text=None, region=None, image2=None, **generation):
        self.calls.append(("run", task, image2 is not None))
        spec, size = T.get(task), (image.shape[1], image.shape[0])
        prompt = spec.prompt(text=text, region=region, image_size=size)
        return spec.parse(self.answers[(spec.tag, prompt, np.asarray(image).tobytes())], image_size=size)

    def run_all(self, image, tasks_, texts=None, regions=None, **generation):
        self.calls.append(("run_all", tuple(tasks_)))
        return {t: self.run(image, t, (texts or {}).get(t), (regions or {}).get(t)) for t in tasks_}


class Silent:
    """Answers nothing: empty label/caption, no number, no geometry."""

    def run(self, image, task, **kwargs):
        return EMPTY[T.get(task).answer]


def test_perfect_predictions_score_one(synth):
    report = evaluate(Oracle(synth / "train.json", synth), synth / "train.json")
    assert set(report.per_task) == set(T.TAGS) and sum(report.counts.values()) == 32
    for tag, value in report.headlines.items():
        if T.get(tag).answer != "caption":  # CIDEr's idf is 0 for words every reference shares
            assert value == pytest.approx(1.0), tag
    for tag in ("IMG_CAP", "IMG_CAP_DETAILED", "REG_CAP"):
        assert report.per_task[tag]["bleu1"] == pytest.approx(1.0) and report.per_task[tag]["rouge_l"] == pytest.approx(1.0)


def test_silent_predictor_scores_zero_and_counts_missing_numbers(synth):
    report = evaluate(Silent(), synth / "train.json")
    assert all(v == 0.0 for v in report.headlines.values())
    assert report.average == 0.0
    assert report.per_task["IMG_CT"]["missing"] == report.counts["IMG_CT"]  # every count answer lacks a number


class Half:
    """Right on the 1st, 3rd, ... record of each task, wrong (a label no scene has) on the others."""

    def __init__(self, oracle: Oracle):
        self.oracle, self.seen = oracle, []

    def run(self, image, task, **kw):
        self.seen.append(task)
        right = self.oracle.run(image, task, **kw)
        return T.Label(text="not a scene") if self.seen.count(task) % 2 == 0 else right


def test_half_right_classifier_by_hand(synth):
    report = evaluate(Half(Oracle(synth / "train.json", synth)), synth / "train.json", tasks=["IMG_CLS"])
    n = report.counts["IMG_CLS"]
    assert n >= 2 and report.per_task["IMG_CLS"]["accuracy"] == pytest.approx((n - n // 2) / n)
    assert report.average == report.per_task["IMG_CLS"]["accuracy"]
    assert report.skipped == {"other task": 32 - n}


def test_intervals_are_percentiles_of_the_headline_over_resampled_records(synth):
    report = evaluate(Half(Oracle(synth / "train.json", synth)), synth / "train.json", tasks=["IMG_CLS", "PIX_CLS"],
                      bootstrap=300)
    # by hand: each task draws from Generator([0, its task number]); right on the 1st, 3rd, ... record
    right = {t: np.arange(report.counts[t]) % 2 == 0 for t in ("IMG_CLS", "PIX_CLS")}
    rngs = {t: np.random.default_rng([0, T.get(t).number]) for t in right}
    acc = {t: [] for t in right}
    for _ in range(300):
        for t, r in right.items():
            acc[t].append(r[rngs[t].integers(0, len(r), len(r))].mean())
    for t in right:
        assert report.intervals[t] == pytest.approx(np.quantile(acc[t], [0.025, 0.975]).tolist())
        assert report.intervals[t][0] < report.headlines[t] < report.intervals[t][1]
    mean = (np.array(acc["IMG_CLS"]) + np.array(acc["PIX_CLS"])) / 2
    assert report.average_interval == pytest.approx(np.quantile(mean, [0.025, 0.975]).tolist())
    shown = report.to_dict()
    assert shown["headline"]["IMG_CLS"]["ci95"] == report.intervals["IMG_CLS"]
    assert shown["average_headline_ci95"] == report.average_interval


def test_a_perfect_predictor_has_intervals_at_one_and_bootstrap_0_has_none(synth):
    report = evaluate(Oracle(synth / "train.json", synth), synth / "train.json", bootstrap=50,
                      tasks=["REG_DET_HBB", "REG_VG", "PIX_SEG", "IMG_CT"])
    assert all(v == pytest.approx([1.0, 1.0]) for v in report.intervals.values())
    report = evaluate(Oracle(synth / "train.json", synth), synth / "train.json", bootstrap=0, tasks=["IMG_CT"])
    assert report.intervals == {} and report.average_interval is None
    assert "ci95" not in report.to_dict()["headline"]["IMG_CT"]
    with pytest.raises(ConfigError, match="--bootstrap: must be >= 0"):
        evaluate(Silent(), synth / "train.json", bootstrap=-1)


def test_kept_predictions_can_be_scored_again_without_the_images(synth):
    """A kept row carries the parsed reference, the image size and the crop: rescoring the rows with the task's
    metric gives the report's numbers (what benchmarks/quant_paired.py and an offline rescorer rely on)."""
    report = evaluate(Oracle(synth / "test.json", synth), synth / "test.json", keep_predictions=True,
                      tasks=["REG_DET_HBB", "REG_VG"])
    rows = report.predictions
    assert {r["tag"] for r in rows} == {"REG_DET_HBB", "REG_VG"} and len(rows) == sum(report.counts.values())
    assert all(r["pred"] == r["truth"] for r in rows)  # the oracle answers the reference
    for tag in ("REG_DET_HBB", "REG_VG"):
        mine = [r for r in rows if r["tag"] == tag]
        spec = T.get(tag)
        again = spec.metric([T.from_dict(r["pred"]) for r in mine], [T.from_dict(r["truth"]) for r in mine],
                            [tuple(r["size"]) for r in mine], crops=[r["crop"] for r in mine])
        assert again == report.per_task[tag] and again[spec.headline] == 1.0


def test_batching_groups_one_image_and_changes_nothing(synth):
    batched, single = Oracle(synth / "test.json", synth), Oracle(synth / "test.json", synth)
    a = evaluate(batched, synth / "test.json", keep_predictions=True)
    b = evaluate(single, synth / "test.json", batch=False, keep_predictions=True)
    assert a.predictions == b.predictions and a.per_task == b.per_task
    groups = [c for c in batched.calls if c[0] == "run_all"]
    assert groups and max(len(c[1]) for c in groups) > 2  # several tasks of one scene in one call
    assert ("run", "PIX_CHG", True) in batched.calls  # the change pair goes alone, with image2


def test_limit_and_task_filter(synth):
    report = evaluate(Oracle(synth / "train.json", synth), synth / "train.json", tasks=["img_cls", "[PIX_SEG]"], limit=1)
    assert report.counts == {"IMG_CLS": 1, "PIX_SEG": 1}
    with pytest.raises(TaskError, match="unknown task 'NOPE'"):
        evaluate(Silent(), synth / "train.json", tasks=["NOPE"])
    with pytest.raises(ConfigError, match="--limit: must be >= 1"):
        evaluate(Silent(), synth / "train.json", limit=0)


def test_crop_gives_the_predictor_the_cropped_image(synth):
    from tiercel.data.sft import Record

    rec = next(r for r in iter_records(synth / "test.json") if r.tag == "REG_DET_HBB")
    cropped = Record(0, rec.tag, rec.prompt, "<box><0><0><999><999></box>", rec.images, [8, 4, 40, 36])
    sizes = []

    class Sizes:
        def run(self, image, task, **kw):
            sizes.append(image.shape[:2])
            return T.Boxes(boxes=[[0, 0, 32, 32]])

    report = evaluate(Sizes(), [cropped], root=synth)
    assert sizes == [(32, 32)]
    assert report.per_task["REG_DET_HBB"]["ap50"] == 1.0  # the whole-crop reference box, in crop pixels


def test_prompts_read_back_to_the_same_prompt(synth):
    for r in iter_records(synth / "train.json"):
        spec = T.get(r.tag)
        size = load_image(r.image_paths(synth)[0], r.crop).shape[1::-1]
        read = spec.read_prompt(r.prompt, image_size=size)
        again = spec.prompt(text=read.get("text"), region=read.get("region"), image_size=size)
        assert again == r.prompt, r.index


def test_example_pngs_show_each_task(synth, tmp_path):
    from PIL import Image

    report = evaluate(Oracle(synth / "test.json", synth), synth / "test.json", examples=1)
    paths = write_examples(report, synth, tmp_path)
    assert len(paths) == 14 and all(p.suffix == ".png" for p in paths)
    with Image.open(next(p for p in paths if "PIX_CHG" in p.name)) as im:
        assert im.width >= 2 * 384  # before and after side by side, scaled up from 64 px


def test_example_pngs_replace_only_tiercels_own(synth, tmp_path):
    from PIL import Image

    from tiercel.errors import TiercelError
    from tiercel.evaluate.examples import check_examples_output
    from tiercel.fileio import is_our_png

    report = evaluate(Oracle(synth / "test.json", synth), synth / "test.json", tasks=["IMG_CLS", "REG_DET_HBB"], examples=1)
    paths = write_examples(report, synth, tmp_path)
    assert all(is_our_png(p) for p in paths) and write_examples(report, synth, tmp_path) == paths  # its own: replaced
    assert sorted(tmp_path.iterdir()) == sorted(paths)  # no temporary file left
    hbb = next(p for p in paths if "REG_DET_HBB" in p.name)
    Image.new("RGB", (4, 4), "blue").save(hbb)  # the same name, someone else's picture
    before = {p: (p.stat().st_ino, p.read_bytes()) for p in paths}  # a write replaces the file: a new inode
    with pytest.raises(TiercelError) as err:
        write_examples(report, synth, tmp_path)
    assert str(err.value) == (f"{hbb}: was not written by tiercel, so it is not replaced; choose another folder for "
                              "the examples or move the file yourself")
    assert {p: (p.stat().st_ino, p.read_bytes()) for p in paths} == before  # nothing written, the other PNG included
    with pytest.raises(TiercelError, match=f"^--examples {tmp_path}: {hbb.name} was not written by tiercel"):
        check_examples_output(tmp_path, ["REG_DET_HBB"])  # before the evaluation: any index of a task counts
    check_examples_output(tmp_path, ["IMG_CLS"])  # another task's name is not in the way
    hbb.rename(tmp_path / "notes.png")
    check_examples_output(tmp_path)  # nor is a name no example has


def test_open_predictor_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such bundle or checkpoint directory"):
        open_predictor(tmp_path / "missing")


def test_evaluate_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, tiercel.evaluate; print(' '.join(m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
