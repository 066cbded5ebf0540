"""Model output of any shape never makes a parser raise; API misuse of a metric is one TaskError line."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tiercel.tasks as T
from tiercel.errors import TaskError
from tiercel.tasks import metrics as M

LONG = "7" * 5000  # past int()'s 4,300-digit limit


@pytest.mark.parametrize("tag", T.TAGS)
def test_a_digit_run_past_ints_limit_parses_without_raising(tag):
    for text in (LONG, f"<box><{LONG}><1><2><3></box>", f"<poly><{LONG}><1><2><3><4><5></poly>", f"<loc_{LONG}>"):
        T.get(tag).parse(text, image_size=(256, 256))


def test_a_huge_coordinate_is_clamped_with_a_short_warning():
    r = T.get("REG_DET_HBB").parse(f"<box><{LONG}><1><2><3></box>", image_size=(1000, 1000))
    assert r.boxes[0][0] == 999.5
    assert r.warnings == ["coordinate(s) [1000000000] past 1000 clamped to 999"]


def test_a_count_too_long_to_mean_anything_reads_as_none_and_scores_as_missing():
    r = T.get("IMG_CT").parse("1" * 5000)
    assert r.value is None and r.warnings == ["a 5000-digit number is no count; read as none"]
    assert T.get("IMG_CT").parse("000000000012").value == 12  # leading zeros are not length
    ref = T.get("IMG_CT").parse("3")
    scores = T.get("IMG_CT").metric([r, ref], [ref, ref])
    assert scores["missing"] == 1.0 and scores["mae"] == 0.0 and scores["accuracy"] == 0.5


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["<box>", "</box>", "<quad>", "</quad>", "<poly>", "</poly>", "<sep>",
                                           "<loc_", "<", ">", " ", ",", "-", "one", "</s>"]),
                          st.text(max_size=8), st.from_regex(r"\d{1,6000}", fullmatch=True)), max_size=12))
def test_no_parser_raises_on_any_text(parts):
    text = "".join(parts)
    for tag in T.TAGS:
        T.get(tag).parse(text, image_size=(64, 48))


@pytest.mark.parametrize("call", [
    lambda: M.accuracy(["a"], ["a", "b"]),
    lambda: M.count_metrics([1], [1, 2]),
    lambda: M.caption_metrics(["a b"], [["a b"], ["c"]]),
    lambda: M.detection_metrics([[]], [[], []], M.box_iou_matrix),
    lambda: M.grounding_metrics([[]], [[], []], M.box_iou_matrix),
    lambda: M.segmentation_metrics([[]], [[]], [(10, 10), (10, 10)]),
])
def test_metrics_refuse_lists_of_different_lengths(call):
    with pytest.raises(TaskError, match="needs one of each per sample"):
        call()


def test_a_count_past_floats_range_scores_as_infinitely_wrong_not_an_overflow():
    scores = M.count_metrics([10**400, 3], [1, 3])
    assert scores["mae"] == float("inf") and scores["accuracy"] == 0.5


def test_count_metrics_refuse_values_that_are_not_whole_numbers():
    with pytest.raises(TaskError, match=r"count_metrics: predictions must be whole numbers or None \(item 0 is '1'\)"):
        M.count_metrics(["1"], [1])
    with pytest.raises(TaskError, match="count_metrics: references must be whole numbers"):
        M.count_metrics([1], [None])
    with pytest.raises(TaskError, match="must be a list"):
        M.accuracy("abc", "abc")


def _random_quads(rng, n):
    centres = rng.uniform(0, 200, (n, 1, 2))
    return list(centres + rng.uniform(-30, 30, (n, 4, 2)))


def test_quad_iou_matrix_equals_pairwise_iou_with_repeats_and_far_apart_quads():
    rng = np.random.default_rng(0)
    a = _random_quads(rng, 25)
    a += a[:5]  # repeats are measured once but land in every cell
    b = _random_quads(rng, 20) + [a[0], np.asarray(a[3]) + 1000.0]
    want = np.array([[M.convex_iou(p, q) for q in b] for p in a])
    assert np.array_equal(M.convex_iou_matrix(a, b), want)
    assert M.convex_iou_matrix([], b).shape == (0, len(b))


def test_thousands_of_identical_quads_cost_one_iou(monkeypatch):
    import tiercel.tasks.metrics.geometry as G

    calls = []
    real = G.convex_iou
    monkeypatch.setattr(G, "convex_iou", lambda p, q: calls.append(1) or real(p, q))
    quads = [[[10, 10], [50, 12], [48, 40], [8, 38]]] * 3000
    assert np.all(G.convex_iou_matrix(quads, quads) == 1.0)
    assert len(calls) == 1


@pytest.mark.parametrize("region", [[10, 10, 5000, 20], [-1, 0, 5, 5], [1e300, 0, 1e301, 5], [0, 0, float("nan"), 5]])
def test_a_prompt_region_outside_the_image_is_refused_not_clamped(region):
    with pytest.raises(TaskError, match=r"REG_CLS_HBB: region \[.*\] lies outside the 100x80 image"):
        T.get("REG_CLS_HBB").prompt(region=region, image_size=(100, 80))
    assert "<box><0><0><999><999></box>" in T.get("REG_CLS_HBB").prompt(region=[0, 0, 100, 80], image_size=(100, 80))
    # half a pixel of rounding is not "outside": 64.00000000000001 comes out of the generator's own geometry
    assert "<box><0><0><999><999></box>" in T.get("REG_CLS_HBB").prompt(region=[-0.4, 0, 100.4, 80.5], image_size=(100, 80))


def _seg(tag="PIX_SEG"):
    return T.get(tag).parse("<poly><1><1><50><1><50><50></poly>", image_size=(10, 10))


@pytest.mark.parametrize("call, message", [
    (lambda: T.get("IMG_CLS").metric(None, None), "IMG_CLS: preds and refs must be lists, one result per sample "
                                                  "(got NoneType, NoneType)"),
    (lambda: M.score_labels(["a"], ["a"]), "score_labels: preds[0] is str; expected a result with .text (parse the "
                                           "answers with the task's spec first)"),
    (lambda: M.score_captions([T.get("IMG_CAP").parse("a")], [["a"]]), "score_captions: refs[0][0] is str; "
                                                                       "expected a result with .text"),
    (lambda: M.detection_metrics([[[1, 2, 3]]], [[[1, 2, 3, 4]]], M.box_iou_matrix),
     "boxes must be [x1, y1, x2, y2], 4 numbers each (got [[1, 2, 3]])"),
    (lambda: M.detection_metrics([[1, 2, 3, 4]], [[[1, 2, 3, 4]]], M.box_iou_matrix),
     "detection_metrics: predictions[0] must be a list of geometries, one per object (got 4 entries for 1)"),
    (lambda: M.grounding_metrics([[["a", "b", "c", "d"]]], [[[1, 2, 3, 4]]], M.box_iou_matrix),
     "boxes must be [x1, y1, x2, y2], 4 numbers each (got [['a', 'b', 'c', 'd']])"),
    (lambda: M.convex_iou_matrix([[1, 2, 3]], [[1, 2, 3, 4, 5, 6, 7, 8]]),
     "point sets must be [x, y] pairs (got [1, 2, 3])"),
    (lambda: M.segmentation_metrics([[[[1, 2, 3]]]], [[]], [(10, 10)]),
     "polygon parts must be [x, y] pairs (got [1, 2, 3])"),
    (lambda: M.segmentation_metrics([[]], [[]], None),
     "segmentation_metrics: needs image_sizes, one (W, H) per sample"),
    (lambda: M.segmentation_metrics([[]], [[]], [(0, 0)]), "segmentation_metrics: image_sizes[0] must be (W, H) in "
                                                           "pixels, both > 0 (got (0, 0))"),
    (lambda: T.get("PIX_SEG").metric([_seg()], [_seg()], ["ab"]), "segmentation_metrics: image_sizes[0] must be (W, H) "
                                                                  "in pixels, both > 0 (got 'ab')"),
    (lambda: M.rasterize([], (8, 8), rule="odd"), "rasterize: rule must be 'evenodd' or 'nonzero' (got 'odd')"),
])  # fmt: skip
def test_metric_api_misuse_is_one_task_error_line(call, message):
    with pytest.raises(TaskError) as err:
        call()
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
