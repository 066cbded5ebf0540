"""The validator reports exactly the bad records, each with its reason, and counts records per task."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tiercel.data.validate import (
    BAD_CROP,
    BAD_IMAGE,
    IMAGE_COUNT,
    MALFORMED,
    MISSING_IMAGE,
    NO_ANSWER,
    OUTSIDE_ROOT,
    UNKNOWN_TAG,
    UNPARSABLE,
    validate,
)
from tiercel.errors import DataError


def rec(tag_line: str, prompt: str, answer: str, images: list[str], crop=()) -> dict:
    return {
        "conversations": [{"role": "user", "content": f"<image>\n{tag_line}\n{prompt}"}, {"role": "assistant", "content": answer}],
        "images": images,
        "crop": list(crop),
    }


CLS = "Classify the image.\nUse one or a few words."
DET = "Detect all ship in the image.\nUse horizontal bounding boxes."
CHG = "Find changes in the two images."
# (record, the problem it must produce or None)
CASES = [
    (rec("[IMG_CLS]", CLS, "airport", ["img/a.png"]), None),
    ({"images": ["img/a.png"]}, MALFORMED),
    (rec("[FOO_BAR]", CLS, "airport", ["img/a.png"]), UNKNOWN_TAG),
    (rec("[PIX_CHG]", CHG, "<poly><1><1><9><1><9><9></poly>", ["img/a.png"]), IMAGE_COUNT),
    (rec("[IMG_CLS]", CLS, "airport", ["img/missing.png"]), MISSING_IMAGE),
    (rec("[IMG_CLS]", CLS, "airport", ["img/a.png"], [30, 0, 10, 20]), BAD_CROP),
    (rec("[IMG_CLS]", CLS, "airport", ["img/a.png"], [0, 0, 500, 20]), BAD_CROP),
    (rec("[REG_DET_HBB]", DET, "<box><1><2>", ["img/a.png"]), UNPARSABLE),
    (rec("[IMG_CLS]", CLS, "  ", ["img/a.png"]), NO_ANSWER),
    (rec("[PIX_CHG]", CHG, "<poly><1><1><9><1><9><9></poly>", ["img/a.png", "img/b.png"], [0, 0, 40, 30]), None),
    (rec("[REG_DET_HBB]", DET, "<box><1><2><30><40></box><box><5><6><70><80></box>", ["img/b.png"]), None),
]


def test_flags_answers_images_and_paths_that_cannot_be_trained_on(tmp_path, monkeypatch):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "img" / "a.png")
    (tmp_path / "img" / "notes.png").write_text("not an image")
    (tmp_path.parent / "outside.png").write_bytes((tmp_path / "img" / "a.png").read_bytes())
    user = {"role": "user", "content": f"<image>\n[IMG_CLS]\n{CLS}"}
    cases = [
        ({"conversations": [user], "images": ["img/a.png"]}, NO_ANSWER, "no assistant turn after the user turn"),
        ({"conversations": [user, {"role": "assistant", "content": 7}], "images": ["img/a.png"]}, NO_ANSWER,
         "the assistant answer is not text (got int)"),
        (rec("[IMG_CLS]", CLS, "airport", ["img/notes.png"]), BAD_IMAGE, "cannot read image"),
        (rec("[IMG_CLS]", CLS, "airport", ["../outside.png"]), OUTSIDE_ROOT, "is not a path inside"),
        (rec("[IMG_CLS]", CLS, "airport", [str(tmp_path / "img" / "a.png")]), OUTSIDE_ROOT, "relative to --root"),
        (rec("[IMG_CLS]", CLS, "airport", ["img/../img/a.png"]), None, None),
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps([c[0] for c in cases]))
    report = validate(path, tmp_path)
    assert [(p.index, p.reason) for p in report.problems] == [(i, c[1]) for i, c in enumerate(cases) if c[1]]
    for problem in report.problems:
        assert cases[problem.index][2] in problem.detail
    monkeypatch.setenv("TIERCEL_MAX_IMAGE_PIXELS", str(64 * 48 - 1))
    report = validate(path, tmp_path)
    assert (5, BAD_IMAGE) in [(p.index, p.reason) for p in report.problems]
    assert "3,072 pixels, over the 3,071 tiercel decodes" in report.problems[-1].detail


@pytest.mark.parametrize("text", ["", "  \n", "[]"])
def test_a_file_without_records_is_an_error(tmp_path, text):
    path = tmp_path / "train.json"
    path.write_text(text)
    with pytest.raises(DataError, match=r"train.json: holds no records"):
        validate(path, tmp_path)


@pytest.fixture()
def dataset(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 48)).save(tmp_path / "img" / name)
    (tmp_path / "img" / "notes.png").write_text("not an image")
    path = tmp_path / "train.json"
    path.write_text(json.dumps([record for record, _ in CASES], indent=1))
    return path


def test_reports_exactly_the_bad_records_and_why(dataset):
    report = validate(dataset, dataset.parent)
    expected = [(i, reason) for i, (_, reason) in enumerate(CASES) if reason]
    assert [(p.index, p.reason) for p in report.problems] == expected
    assert report.n_records == len(CASES) and report.n_bad == len(expected) and not report.ok
    assert "img/missing.png" in report.problems[3].detail
    assert "[FOO_BAR]" in report.problems[1].detail


def test_counts_per_task(dataset):
    report = validate(dataset, dataset.parent)
    assert report.counts == {"IMG_CLS": 5, "?": 2, "PIX_CHG": 2, "REG_DET_HBB": 2}
    assert report.bad == {"IMG_CLS": 4, "?": 2, "PIX_CHG": 1, "REG_DET_HBB": 1}


def test_summary_is_one_line(dataset):
    summary = validate(dataset, dataset.parent).summary()
    assert "\n" not in summary
    assert summary.endswith(
        "train.json: 8 of 11 records are bad (bad crop: 2, malformed record: 1, missing image: 1, no answer: 1, "
        "unknown tag: 1, unparsable answer: 1, wrong image count: 1)"
    )


def test_limit_and_default_root(dataset):
    report = validate(dataset, limit=3)  # root defaults to the file's folder
    assert report.n_records == 3
    assert [p.index for p in report.problems] == [1, 2]
    assert json.loads(json.dumps(report.to_dict()))["n_bad"] == 2


def test_missing_image_is_reported_once_per_path_even_when_cached(dataset, tmp_path):
    many = [rec("[IMG_CLS]", CLS, "airport", ["img/missing.png"])] * 3
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in many))
    report = validate(path, tmp_path)
    assert [(p.index, p.reason) for p in report.problems] == [(0, MISSING_IMAGE), (1, MISSING_IMAGE), (2, MISSING_IMAGE)]


def test_a_second_user_turn_is_no_answer_and_is_never_trained_on(tmp_path):
    from tiercel.data.sft import iter_records

    (tmp_path / "a.png").write_bytes(b"")
    user = {"role": "user", "content": f"<image>\n[IMG_CLS]\n{CLS}"}
    for second in ({"role": "user", "content": "airport"}, {"from": "human", "value": "airport"}):
        path = tmp_path / "train.json"
        path.write_text(json.dumps([{"conversations": [user, second], "images": ["a.png"]}]))
        assert next(iter_records(path)).answer == ""  # the user's next question is no answer to learn
        problems = validate(path, tmp_path).problems
        assert (problems[0].reason, problems[0].detail) == (NO_ANSWER, "no assistant turn after the user turn")


def test_an_image_path_too_long_for_the_file_system_is_reported_not_raised(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([rec("[IMG_CLS]", CLS, "airport", ["x" * 5000 + ".png"])]))
    (problem,) = validate(path, tmp_path).problems
    assert problem.reason == MISSING_IMAGE
    full = str(tmp_path / ("x" * 5000 + ".png"))
    assert problem.detail == f"{full[:100]}...({len(full)} characters) (File name too long)"
