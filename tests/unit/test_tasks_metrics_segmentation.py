"""Polygon rasterisation and segmentation / change-detection metrics against pixel counts done by hand."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tiercel.tasks as T
from tiercel.errors import TaskError
from tiercel.tasks.metrics import geometry as G
from tiercel.tasks.metrics import segmentation as S
from tiercel.tasks.results import Polygons

SQUARE = [[0, 0], [4, 0], [4, 4], [0, 4]]  # pixel centres 0.5..3.5 in x and y: 16 pixels
TRIANGLE = [[0, 0], [4, 0], [0, 4]]  # centres with x + y < 4, i.e. i + j <= 2: 1 + 2 + 3 = 6 pixels


def test_rasterize_counts_pixel_centres():
    assert G.rasterize([SQUARE], (8, 8)).sum() == 16
    assert G.rasterize([SQUARE], (8, 8))[:4, :4].all()
    tri = G.rasterize([TRIANGLE], (8, 8))
    assert tri.sum() == 6 and tri[0, 2] and not tri[1, 2]  # centre (2.5, 1.5) lies on the edge: out
    assert G.rasterize([TRIANGLE[::-1]], (8, 8)).sum() == 6  # orientation does not matter


def test_parts_inside_parts_are_holes_under_even_odd():
    outer = [[0, 0], [6, 0], [6, 6], [0, 6]]  # 36 pixels
    inner = [[2, 2], [4, 2], [4, 4], [2, 4]]  # 4 pixels
    assert G.rasterize([outer, inner], (8, 8)).sum() == 32
    # Nonzero winding fills the hole when both parts run the same way, keeps it when they run opposite ways.
    assert G.rasterize([outer, inner], (8, 8), rule="nonzero").sum() == 36
    assert G.rasterize([outer, inner[::-1]], (8, 8), rule="nonzero").sum() == 32


def test_rasterize_clips_to_the_image_and_ignores_degenerate_parts():
    assert G.rasterize([[[-5, -5], [20, -5], [20, 20], [-5, 20]]], (3, 2)).sum() == 6
    assert G.rasterize([[[0, 0], [4, 4]]], (8, 8)).sum() == 0
    assert G.rasterize([], (8, 8)).shape == (8, 8)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20), st.integers(0, 20))
def test_integer_rectangles_fill_exactly_their_area(x1, y1, x2, y2):
    rect = [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
    assert G.rasterize([rect], (20, 20)).sum() == abs(x2 - x1) * abs(y2 - y1)


def test_instances_are_united():
    left, right = [[0, 0], [4, 0], [4, 4], [0, 4]], [[2, 0], [6, 0], [6, 4], [2, 4]]
    assert S.polygons_mask([[left], [right]], (8, 8)).sum() == 24  # 16 + 16 - 8 overlap


def test_segmentation_metrics_by_hand():
    # Image 1: triangle (6 px) vs square (16 px), the triangle inside: IoU 6/16, Dice 12/22.
    # Image 2: both empty -> 1 and 1.  Image 3: square predicted, nothing there -> 0 and 0.
    # miou = (0.375 + 1 + 0) / 3, dice = (12/22 + 1 + 0) / 3, pooled IoU = 6 / (16 + 16).
    preds = [Polygons(polygons=[[TRIANGLE]]), Polygons(), Polygons(polygons=[[SQUARE]])]
    refs = [Polygons(polygons=[[SQUARE]]), Polygons(), Polygons()]
    got = T.get("PIX_SEG").metric(preds, refs, [(8, 8)] * 3)
    assert got["miou"] == pytest.approx((0.375 + 1) / 3)
    assert got["dice"] == pytest.approx((12 / 22 + 1) / 3)
    assert got["iou_pooled"] == pytest.approx(6 / 32)
    assert T.get("PIX_CHG").metric(preds, refs, [(8, 8)] * 3) == got


def test_change_detection_end_to_end_from_answer_text():
    # Frame 10 x 10 -> canvas 20 x 20, a bin is 0.02 px. The answer outlines x, y in [0, 4] of the before frame
    # (bins 0 and 200 -> 0.01 and 4.01 px); a second copy in the after quadrant maps onto the same pixels.
    spec = T.get("PIX_CHG")
    answer = "<poly><0><0><200><0><200><200><0><200></poly><poly><500><500><700><500><700><700><500><700></poly>"
    pred = spec.parse(answer, (10, 10))
    assert pred.warnings == []
    got = spec.metric([pred], [Polygons(polygons=[[SQUARE]])], [(10, 10)])
    assert got["miou"] == 1.0


def test_segmentation_needs_image_sizes():
    with pytest.raises(TaskError, match="image_sizes"):
        T.get("PIX_SEG").metric([Polygons()], [Polygons()])


def test_iou_dice_of_masks():
    a = np.zeros((2, 2), bool)
    b = a.copy()
    b[0, 0] = True
    assert S.iou_dice(a, a) == (1.0, 1.0)
    assert S.iou_dice(a, b) == (0.0, 0.0)
    assert S.iou_dice(b, b) == (1.0, 1.0)


def _inside_by_ray_casting(polygon, size):
    # Independent check, one pixel at a time: a centre is inside when a ray to its left crosses an odd number
    # of edges.
    w, h = size
    pts = np.asarray(polygon, dtype=float)
    mask = np.zeros((h, w), dtype=bool)
    for j in range(h):
        for i in range(w):
            x, y, inside = i + 0.5, j + 0.5, False
            for (xa, ya), (xb, yb) in zip(pts, np.roll(pts, -1, axis=0)):
                if (ya <= y < yb) or (yb <= y < ya):
                    if xa + (y - ya) / (yb - ya) * (xb - xa) <= x:
                        inside = not inside
            mask[j, i] = inside
    return mask


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(-3, 15), st.floats(-3, 15)), min_size=3, max_size=7))
def test_rasterize_matches_ray_casting_on_random_polygons(points):
    polygon = [list(p) for p in points]
    np.testing.assert_array_equal(G.rasterize([polygon], (12, 10)), _inside_by_ray_casting(polygon, (12, 10)))
