"""Classification, VQA and counting metrics against values worked out by hand."""

import math

import pytest

import tiercel.tasks as T
from tiercel.errors import TaskError
from tiercel.tasks.metrics import classification as M
from tiercel.tasks.results import Count, Label


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("Baseball_Field", "baseball field", True),
        ("tennis-court", "Tennis  court", True),
        ("airport.", "airport", True),
        ("a car", "car", False),  # articles are kept
        ("cars", "car", False),  # so are plurals
    ],
)
def test_normalisation(a, b, same):
    assert (M.normalize_label(a) == M.normalize_label(b)) is same


def test_classification_by_hand():
    refs = ["airport", "beach", "beach", "forest"]
    preds = ["Airport.", "beach", "forest", "desert"]
    # Right: 1 and 2 -> accuracy 2/4.
    # Per reference class (precision = tp / times predicted, recall = tp / times in refs):
    #   airport: tp 1, predicted 1, actual 1 -> P 1, R 1,   F1 1
    #   beach:   tp 1, predicted 1, actual 2 -> P 1, R 1/2, F1 2/3
    #   forest:  tp 0, predicted 1, actual 1 -> P 0, R 0,   F1 0
    # ("desert" is no reference class: it only costs forest its recall.)
    got = T.get("IMG_CLS").metric([Label(text=p) for p in preds], [Label(text=r) for r in refs])
    assert got["accuracy"] == 0.5
    assert got["macro_precision"] == pytest.approx(2 / 3)
    assert got["macro_recall"] == pytest.approx(1.5 / 3)
    assert got["macro_f1"] == pytest.approx((1 + 2 / 3) / 3)
    assert got["n"] == 4


@pytest.mark.parametrize(
    "text, labels",
    [
        ("farmland, farmland", {"farmland"}),  # repeats collapse
        ("River., Farm_Land", {"river", "farm land"}),  # split on commas first, then normalise each part
        ("harbor, , ", {"harbor"}),  # empty parts are dropped
        ("Airport.", {"airport"}),  # no comma: one label, as before
        ("", set()),
    ],
)
def test_label_set(text, labels):
    assert M.label_set(text) == labels


def test_multi_label_answers_compare_as_sets():
    refs = ["farmland, river", "airport, road", "harbor"]
    preds = ["river, farmland", "airport", "harbor"]
    # Sets equal in 1 (order ignored) and 3; 2 misses road -> accuracy 2/3.
    # Jaccard: 1: 2/2, 2: |{airport}| / |{airport, road}| = 1/2, 3: 1/1 -> (1 + 1/2 + 1) / 3 = 5/6 = 0.8333.
    # Classes (labels of the reference sets), tp / times predicted / times in refs:
    #   airport, farmland, harbor, river: 1 / 1 / 1 -> P 1, R 1, F1 1
    #   road:                             0 / 0 / 1 -> P 0, R 0, F1 0
    # -> macro P = R = F1 = 4/5.
    got = T.get("IMG_CLS").metric([Label(text=p) for p in preds], [Label(text=r) for r in refs])
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["label_jaccard"] == pytest.approx(5 / 6)
    assert got["macro_precision"] == got["macro_recall"] == got["macro_f1"] == pytest.approx(4 / 5)
    assert got["n"] == 3


def test_an_extra_predicted_label_is_a_false_positive_of_its_class():
    refs = ["farmland", "river", "farmland"]
    preds = ["farmland, river", "river", "farmland, farmland"]
    # Sets: 1 {farmland, river} != {farmland}; 2 and 3 equal ("farmland, farmland" is {farmland}) -> 2/3.
    # Jaccard: (1/2 + 1 + 1) / 3 = 5/6.
    #   farmland: tp 2 (1, 3), predicted 2, actual 2 -> P 1,   R 1, F1 1
    #   river:    tp 1 (2),    predicted 2, actual 1 -> P 1/2, R 1, F1 2/3 (sample 1's river is its fp)
    # -> macro P (1 + 1/2) / 2 = 3/4, R 1, F1 (1 + 2/3) / 2 = 5/6.
    got = M.classification_metrics(preds, refs)
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["label_jaccard"] == pytest.approx(5 / 6)
    assert got["macro_precision"] == pytest.approx(3 / 4)
    assert got["macro_recall"] == 1.0
    assert got["macro_f1"] == pytest.approx(5 / 6)


def test_region_and_pixel_classification_use_the_same_metric():
    preds, refs = [Label(text="ship")], [Label(text="Ship")]
    for tag in ("REG_CLS_HBB", "REG_CLS_OBB", "PIX_CLS"):
        assert T.get(tag).metric(preds, refs)["accuracy"] == 1.0


def test_vqa_by_hand():
    # Right: 1 ("Yes" = "yes") and 3 -> 2/3. Yes/no questions (by reference): 1 and 2 -> 1/2.
    preds = [Label(text=t) for t in ("Yes", "yes", "3")]
    refs = [Label(text=t) for t in ("yes", "no", "3")]
    got = T.get("IMG_VQA").metric(preds, refs)
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["accuracy_yes_no"] == 0.5


def test_vqa_answers_are_not_split_on_commas():
    # "1,200" is one answer: the comma is dropped as punctuation, so it equals "1200"; "yes, it is" != "yes".
    preds = [Label(text=t) for t in ("1,200", "yes, it is")]
    refs = [Label(text=t) for t in ("1200", "yes")]
    assert T.get("IMG_VQA").metric(preds, refs)["accuracy"] == 0.5


def test_counting_by_hand():
    # Exact: only the first -> 1/4. MAE over answers with a number: |3-3| + |5-7| + |0-1| = 3 over 3 -> 1.
    # One answer held no number: wrong for accuracy, left out of MAE, reported as missing.
    preds = [Count(value=v) for v in (3, None, 5, 0)]
    refs = [Count(value=v) for v in (3, 2, 7, 1)]
    got = T.get("IMG_CT").metric(preds, refs)
    assert got == {"accuracy": 0.25, "mae": 1.0, "missing": 1.0, "n": 4.0}


def test_counting_answers_that_are_no_whole_count_score_wrong_by_hand():
    spec = T.get("IMG_CT")
    answers = ["2.5", "1,200", "1,200", "-3"]
    refs = [Count(value=v) for v in (2, 1200, 1, 3)]
    # Read as None, 1200, 1200, None: "2.5" is not whole, "-3" is negative (the digits alone read 2 and 3).
    # Right: only 2 (1200 = 1200) -> 1/4. MAE over the two read: |1200 - 1200| + |1200 - 1| = 1199 over 2
    # -> 599.5. Missing: 2.
    got = spec.metric([spec.parse(a) for a in answers], refs)
    assert got == {"accuracy": 0.25, "mae": 599.5, "missing": 2.0, "n": 4.0}


def test_counting_with_no_number_at_all():
    got = M.count_metrics([None, None], [1, 2])
    assert got["accuracy"] == 0.0 and math.isnan(got["mae"]) and got["missing"] == 2


def test_metric_checks_its_inputs():
    spec = T.get("IMG_CT")
    with pytest.raises(TaskError, match="2 predictions but 1 references"):
        spec.metric([Count(value=1), Count(value=2)], [Count(value=1)])
    with pytest.raises(TaskError, match=r"preds\[0\] is Label; expected Count"):
        spec.metric([Label(text="1")], [Count(value=1)])
    with pytest.raises(TaskError, match=r"refs\[0\] is a Count without a value"):
        spec.metric([Count(value=1)], [Count(value=None)])


def test_empty_sets_give_nan_not_errors():
    assert math.isnan(T.get("IMG_CLS").metric([], [])["accuracy"])
    assert math.isnan(T.get("IMG_CT").metric([], [])["accuracy"])
