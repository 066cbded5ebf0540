"""The answer grammar: bins, dialects, and how the reader repairs broken answers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tiercel.tasks as T
from tiercel.errors import TaskError
from tiercel.tasks import grammar


def test_bins_follow_falcons_formula():
    # W = 500: a bin is 0.5 px wide. 0 -> 0, 0.49 -> 0, 0.5 -> 1, 499.9 -> 999; past the edge clamps.
    assert [T.to_bin(x, 500) for x in (0, 0.49, 0.5, 499.9, 500, 720, -3)] == [0, 0, 1, 999, 999, 999, 0]
    # back to pixels at the bin centre: (bin + 0.5) * W / 1000
    assert T.from_bin(0, 500) == 0.25
    assert T.from_bin(999, 500) == 499.75
    assert T.from_bin(1000, 500) == 499.75  # Falcon writes <1000> once; readers clamp it
    np.testing.assert_array_equal(T.to_bin(np.array([0.0, 250.0]), 500), [0, 500])


def test_bins_reject_nonsense_from_callers():
    with pytest.raises(TaskError, match="finite"):
        T.to_bin(float("nan"), 100)
    with pytest.raises(TaskError, match="> 0"):
        T.to_bin(5, 0)
    with pytest.raises(TaskError, match="valid dialects: falcon, florence"):
        grammar.get_dialect("geochat")


def test_dialects_differ_only_in_the_coordinate_token():
    assert grammar.write_structure("box", [[1, 2, 3, 4]], "falcon") == "<box><1><2><3><4></box>"
    assert grammar.write_structure("box", [[1, 2, 3, 4]], "florence") == "<box><loc_1><loc_2><loc_3><loc_4></box>"
    assert grammar.write_structure("poly", [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]) == (
        "<poly><1><2><3><4><5><6><sep><7><8><9><10><11><12></poly>"
    )


def test_clean_answer_reads_without_warnings():
    groups, warnings = grammar.read("<box><1><2><3><4></box><box><5><6><7><8></box>", "box")
    assert groups == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert warnings == []


@pytest.mark.parametrize(
    "text, kind, groups, warning",
    [
        ("<box><12><3", "box", [], "incomplete <box>"),  # truncated mid-structure
        ("<box><1><2><3><4>", "box", [[1, 2, 3, 4]], "ends inside <box>"),  # missing close
        ("airplane<box><1><2><3><4></box> plane <box><5><6><7><8></box>", "box", [[1, 2, 3, 4], [5, 6, 7, 8]],
         "skipped text: 'airplane', 'plane'"),  # class names between boxes
        ("<box><1> x <2><3><4></box>", "box", [[1, 2, 3, 4]], "skipped text: 'x'"),  # junk inside
        ("<box><1><2><3><4><5><6><7><8></box>", "box", [[1, 2, 3, 4], [5, 6, 7, 8]], "read as 2 <box>"),
        ("<box><1><2><3><4><5></box>", "box", [[1, 2, 3, 4]], "dropped 1 trailing"),
        ("<box><1><2><box><3><4><5><6></box>", "box", [[3, 4, 5, 6]], "not closed before <box>"),
        ("<1><2><3><4><5><6><7><8>", "box", [[1, 2, 3, 4], [5, 6, 7, 8]], "outside any structure"),  # no wrappers
        ("<box><1><2><3><1000></box>", "box", [[1, 2, 3, 999]], None),  # 1000 is normal: silent clamp
        ("<box><1><2><3><4321></box>", "box", [[1, 2, 3, 999]], "past 1000 clamped"),
        ("<box><loc_1><loc_2><loc_3><loc_4></box>", "box", [[1, 2, 3, 4]], "another dialect"),
        ("<quad><1><2><3><4><5><6><7><8></quad><box><1><2><3><4></box>", "quad", [[1, 2, 3, 4, 5, 6, 7, 8]],
         "ignored 1 <box>"),
        ("</box><box><1><2><3><4></quad>", "box", [[1, 2, 3, 4]], "stray </box>"),
        ("<poly><1><2><3><4><5><6><7></poly>", "poly", [[[1, 2, 3, 4, 5, 6]]], "odd last value"),
        ("<poly><1><2><3><4></poly>", "poly", [], "needs 3"),
        ("<poly><1><2><3><4><5><6><sep><sep></poly>", "poly", [[[1, 2, 3, 4, 5, 6]]], "needs 3"),
        ("<box><1><2><sep><3><4></box>", "box", [[1, 2, 3, 4]], "<sep> inside <box> ignored"),
        ("</s><s><box><1><2><3><4></box></s><pad>", "box", [[1, 2, 3, 4]], None),  # decoder tokens: silent
        ("", "box", [], None),
    ],
)  # fmt: skip
def test_reader_repairs_and_says_so(text, kind, groups, warning):
    got, warnings = grammar.read(text, kind)
    assert got == groups
    if warning is None:
        assert warnings == []
    else:
        assert any(warning in w for w in warnings), warnings


def test_florence_dialect_reads_florence_tokens_silently():
    groups, warnings = grammar.read("<box><loc_10><loc_20><loc_30><loc_40></box>", "box", "florence")
    assert groups == [[10, 20, 30, 40]] and warnings == []


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 10_000), st.floats(1, 10_000))
def test_bin_round_trip_is_within_one_bin(x, size):
    x = min(x, size)
    assert abs(T.from_bin(T.to_bin(x, size), size) - x) <= size / 1000 + 1e-9


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 999), st.integers(1, 8000))
def test_bin_centres_map_back_to_their_bin(b, size):
    assert T.to_bin(T.from_bin(b, size), size) == b


# The same rectangle (tl (10,20), tr (50,20), br (50,40), bl (10,40) in bins) written from each corner, both ways.
RECT_CW = [(10, 20), (50, 20), (50, 40), (10, 40)]


@pytest.mark.parametrize("start", range(4))
@pytest.mark.parametrize("reverse", [False, True])
def test_canonical_quad_reads_a_rectangle_the_same_from_any_corner(start, reverse):
    pts = RECT_CW[start:] + RECT_CW[:start]
    if reverse:
        pts = pts[::-1]
    assert grammar.canonical_quad([v for p in pts for v in p]) == [10, 20, 50, 20, 50, 40, 10, 40]


def test_canonical_quad_of_a_rotated_box_starts_nearest_the_top_left():
    # A box rotated by about 30 degrees, written clockwise on screen (y down) from its right-most corner.
    quad = [60, 30, 50, 47, 16, 27, 26, 10]  # right, bottom, left, top
    out = grammar.canonical_quad(quad)
    pts = np.array(out, dtype=float).reshape(4, 2)
    x, y = pts.T
    assert float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) > 0  # clockwise on screen
    assert out[:2] == [26, 10]  # top corner: the sum of distances to the box's corners is smallest from it
    assert sorted(map(tuple, pts.tolist())) == sorted(map(tuple, np.array(quad, float).reshape(4, 2).tolist()))


def test_canonical_quads_rewrites_whole_quads_in_either_dialect_and_leaves_the_rest():
    text = ("<quad><10><40><10><20><50><20><50><40></quad><quad><1><2></quad>"
            "<quad><loc_50><loc_40><loc_10><loc_40><loc_10><loc_20><loc_50><loc_20></quad><box><5><6><7><8></box>")
    assert grammar.canonical_quads(text) == (
        "<quad><10><20><50><20><50><40><10><40></quad><quad><1><2></quad>"
        "<quad><loc_10><loc_20><loc_50><loc_20><loc_50><loc_40><loc_10><loc_40></quad><box><5><6><7><8></box>")
    assert grammar.canonical_quads("a ship") == "a ship"
