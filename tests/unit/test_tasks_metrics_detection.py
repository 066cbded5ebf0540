"""Detection and grounding metrics, and the IoU geometry under them, against values worked out by hand."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tiercel.tasks as T
from tiercel.tasks.metrics import detection as D
from tiercel.tasks.metrics import geometry as G
from tiercel.tasks.results import Boxes, Quads


def test_box_iou_by_hand():
    assert G.box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert G.box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)  # overlap 5 x 10
    assert G.box_iou([10, 10, 0, 0], [5, 0, 15, 10]) == pytest.approx(50 / 150)  # corners in any order
    assert G.box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert G.box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # degenerate: no area, no IoU


def test_convex_iou_by_hand():
    square = [[0, 0], [1, 0], [1, 1], [0, 1]]
    shifted = [[0.5, 0], [1.5, 0], [1.5, 1], [0.5, 1]]
    assert G.convex_iou(square, shifted) == pytest.approx(0.5 / 1.5)
    bowtie = [[0.5, 0], [1.5, 1], [1.5, 0], [0.5, 1]]  # same corners, scrambled order
    assert G.convex_iou(square, bowtie) == pytest.approx(1 / 3)
    # A 2 x 2 square centred at 0 and the same square turned 45 degrees: the overlap is the square minus four
    # corner triangles with legs 2 - sqrt(2): 4 - 2 (2 - sqrt 2)^2 = 8 sqrt 2 - 8; union 8 - that; IoU 1/sqrt 2.
    s = math.sqrt(2)
    axis = [[-1, -1], [1, -1], [1, 1], [-1, 1]]
    turned = [[s, 0], [0, s], [-s, 0], [0, -s]]
    assert G.convex_iou(axis, turned) == pytest.approx(1 / math.sqrt(2))
    assert G.convex_iou(square, [[5, 5], [6, 5], [6, 6], [5, 6]]) == 0.0
    assert G.convex_iou(square, [[0, 0], [1, 1], [2, 2], [3, 3]]) == 0.0  # collinear: no area


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(0, 100), min_size=8, max_size=8))
def test_convex_iou_equals_box_iou_on_axis_aligned_boxes(v):
    a, b = v[:4], v[4:]

    def corners(x1, y1, x2, y2):
        return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]

    assert G.convex_iou(corners(*a), corners(*b)) == pytest.approx(G.box_iou(a, b), abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(0, 50), min_size=4, max_size=4), max_size=6),
       st.lists(st.lists(st.floats(0, 50), min_size=4, max_size=4), max_size=6))  # fmt: skip
def test_iou_matrices_equal_pairwise_ious(a, b):
    shape = (len(a), len(b))
    pairwise = np.array([[G.box_iou(x, y) for y in b] for x in a]).reshape(shape)
    np.testing.assert_allclose(G.box_iou_matrix(a, b), pairwise, atol=1e-12)
    quads = [[[x1, y1], [x2, y1], [x2, y2], [x1, y2]] for x1, y1, x2, y2 in a + b]
    qa, qb = quads[: len(a)], quads[len(a) :]
    pairwise = np.array([[G.convex_iou(x, y) for y in qb] for x in qa]).reshape(shape)
    np.testing.assert_allclose(G.convex_iou_matrix(qa, qb), pairwise, atol=1e-12)


def test_average_precision_by_hand():
    # tp = 1 0 0 1 1 against 3 ground truths: precision 1, 1/2, 1/3, 1/2, 3/5; recall 1/3, 1/3, 1/3, 2/3, 1.
    # The envelope is 1 up to recall 1/3, then 3/5 -> AP = 1/3 * 1 + 1/3 * 3/5 + 1/3 * 3/5 = 11/15.
    assert D.average_precision(np.array([1, 0, 0, 1, 1]), 3) == pytest.approx(11 / 15)
    assert D.average_precision(np.array([1, 0]), 1) == 1.0  # a duplicate after the hit costs nothing
    assert D.average_precision(np.array([0, 1]), 1) == 0.5
    assert D.average_precision(np.zeros(0), 2) == 0.0
    assert math.isnan(D.average_precision(np.zeros(0), 0))


# Two samples. Sample 1: ground truth A = [0,0,10,10], B = [20,20,30,30]; the model writes A exactly, then a
# miss, then B slightly too tall (IoU 100/110). Sample 2: ground truth [0,0,10,10]; the model writes a miss first.
PREDS = [Boxes(boxes=[[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31]]),
         Boxes(boxes=[[100, 100, 110, 110], [0, 0, 10, 10]])]  # fmt: skip
REFS = [Boxes(boxes=[[0, 0, 10, 10], [20, 20, 30, 30]]), Boxes(boxes=[[0, 0, 10, 10]])]


def test_hbb_ap_by_generation_order_by_hand():
    # Scores = minus the position in the answer; ties keep sample order. Ranked: s1#0 hit, s2#0 miss, s1#1 miss,
    # s2#1 hit, s1#2 hit -> tp 1 0 0 1 1 of 3 -> AP 11/15 (test above). 3 hits of 5 boxes, all 3 objects found.
    got = T.get("REG_DET_HBB").metric(PREDS, REFS)
    assert got["ap50"] == pytest.approx(11 / 15)
    assert got["precision"] == pytest.approx(3 / 5) and got["recall"] == 1.0
    # Ranked by IoU with the answer key (Falcon's eval): the three hits (IoU 1, 1, 0.91) go first -> AP 1.
    assert got["ap50_iou_ranked"] == 1.0


def test_each_ground_truth_is_matched_once():
    got = T.get("REG_DET_HBB").metric([Boxes(boxes=[[0, 0, 10, 10], [0, 0, 10, 10]])], [Boxes(boxes=[[0, 0, 10, 10]])])
    assert got["precision"] == 0.5 and got["recall"] == 1.0 and got["ap50"] == 1.0


def test_detection_with_nothing_predicted_or_nothing_to_find():
    got = T.get("REG_DET_HBB").metric([Boxes()], [Boxes(boxes=[[0, 0, 1, 1]])])
    assert got["ap50"] == 0.0 and got["precision"] == 0.0 and got["recall"] == 0.0
    got = T.get("REG_DET_HBB").metric([Boxes(boxes=[[0, 0, 1, 1]])], [Boxes()])
    assert math.isnan(got["ap50"]) and got["precision"] == 0.0


def test_obb_ap_by_hand_with_the_iou_sweep():
    # One sample, one ground truth (unit square); the model writes a half-shifted square (IoU 1/3) first, then
    # the exact one (IoU 1). At IoU 0.3 the first is a hit, the second a duplicate: AP 1. At 0.5 only the
    # second hits: tp 0 1 -> AP 1/2 by generation order, 1 by IoU rank.
    square = [[0, 0], [1, 0], [1, 1], [0, 1]]
    shifted = [[0.5, 0], [1.5, 0], [1.5, 1], [0.5, 1]]
    got = T.get("REG_DET_OBB").metric([Quads(quads=[shifted, square])], [Quads(quads=[square])])
    assert got["ap30"] == 1.0 and got["precision30"] == 0.5
    assert got["ap50"] == 0.5 and got["ap50_iou_ranked"] == 1.0
    assert got["ap90"] == 0.5 and got["recall90"] == 1.0
    assert {f"ap{t}" for t in range(10, 100, 10)} <= set(got)


def test_grounding_by_hand():
    # Sample 1: first box exact (IoU 1). Sample 2: first box [0,0,10,3] covers 30 of 100 (IoU 0.3), the exact box
    # comes second and does not count for Acc@0.5. Sample 3: no box (IoU 0). Acc@0.5 = 1/3, mean IoU 1.3/3.
    ref = [0, 0, 10, 10]
    preds = [Boxes(boxes=[ref]), Boxes(boxes=[[0, 0, 10, 3], ref]), Boxes()]
    got = T.get("REG_VG").metric(preds, [Boxes(boxes=[ref])] * 3)
    assert got["acc50"] == pytest.approx(1 / 3)
    assert got["mean_iou"] == pytest.approx(1.3 / 3)
    # The sweep pools all boxes: at IoU 0.5, 2 hits of 3 boxes, 2 of 3 objects.
    assert got["precision50"] == pytest.approx(2 / 3) and got["recall50"] == pytest.approx(2 / 3)
