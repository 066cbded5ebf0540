"""Answers: parse and format for every task, round trips within one bin, and parsers that never crash."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiercel.tasks as T
from tiercel.errors import TaskError
from tiercel.tasks.results import Boxes, Caption, Count, Label, Polygons, Quads

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GEOMETRY = {"box": ["REG_DET_HBB", "REG_VG"], "quad": ["REG_DET_OBB"], "poly": ["PIX_SEG", "PIX_CHG"]}
TEXT_TASKS = [t for t in T.TAGS if T.get(t).result_type in (Label, Caption)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("airport</s>", "airport"),
        ("<s>  Storage   tank \n</s><pad><pad>", "Storage tank"),
        ("A plane parked next to a hangar.", "A plane parked next to a hangar."),
    ],
)
def test_text_answers_are_cleaned_not_normalised(text, expected):
    assert T.get("IMG_CLS").parse(text).text == expected
    assert T.get("REG_CAP").parse(text).text == expected


def test_empty_text_answer_warns():
    got = T.get("IMG_VQA").parse("</s>")
    assert got.text == "" and got.warnings == ["empty answer"] and got.raw == "</s>"


@pytest.mark.parametrize(
    "text, value, warns",
    [
        ("3", 3, False),
        ("12</s>", 12, False),
        ("There are 12 planes.", 12, True),
        ("five", 5, False),
        ("Twenty", 20, False),
        ("two or 3", 2, True),  # the first number wins, digits or word
        ("twenty-one", None, True),  # not 20, not 1: only zero..twenty as words
        ("someone", None, True),
        ("none", None, True),
        ("", None, False),
        ("There are 3 ships.", 3, True),
        ("3.", 3, True),  # a sentence's full stop is not a decimal point
        ("3.0", 3, False),  # a whole number written with a decimal part
        ("1,200", 1200, False),  # thousands commas, in groups of three
        ("+4", 4, False),
        ("2.5", None, True),  # no count: not whole
        ("-3", None, True),  # no count: negative
        ("1,000,000,000", None, True),  # 10 digits without the commas: past MAX_COUNT_DIGITS
    ],
)
def test_count_reads_the_first_number(text, value, warns):
    got = T.get("IMG_CT").parse(text)
    assert got.value == value
    assert bool(got.warnings) == warns or text == ""


@pytest.mark.parametrize(
    "text, warning",
    [
        ("2.5", "2.5 is not a whole number; read as none"),
        ("about 1,200.5 m", "1,200.5 is not a whole number; read as none"),
        ("-3", "-3 is negative; read as none"),
    ],
)
def test_a_number_that_is_no_count_reads_as_none_and_says_why(text, warning):
    got = T.get("IMG_CT").parse(text)
    assert got.value is None and got.warnings == [warning]


def test_boxes_parse_to_pixels_in_generation_order():
    # 1000 x 500 image: x = bin + 0.5, y = (bin + 0.5) / 2.
    got = T.get("REG_DET_HBB").parse("<box><10><20><30><40></box><box><0><0><999><999></box>", (1000, 500))
    assert got.boxes == [[10.5, 10.25, 30.5, 20.25], [0.5, 0.25, 999.5, 499.75]]
    assert got.warnings == []


def test_quads_and_polygons_parse_to_points():
    quad = T.get("REG_DET_OBB").parse("<quad><0><0><10><0><10><10><0><10></quad>", (1000, 1000))
    assert quad.quads == [[[0.5, 0.5], [10.5, 0.5], [10.5, 10.5], [0.5, 10.5]]]
    poly = T.get("PIX_SEG").parse("<poly><0><0><10><0><10><10><sep><1><1><2><1><2><2></poly>", (100, 100))
    assert poly.polygons == [[[[0.05, 0.05], [1.05, 0.05], [1.05, 1.05]], [[0.15, 0.15], [0.25, 0.15], [0.25, 0.25]]]]


def test_change_detection_maps_canvas_points_back_to_the_frame():
    # Frame 100 x 50 -> canvas 200 x 100: a bin is 0.2 px in x, 0.1 px in y.
    # A polygon in the top-left quadrant stays: bins 100, 200 -> 20.1, 40.1 px in x and 10.05, 20.05 px in y.
    # Its copy in the bottom-right quadrant (bins 600, 700) is at 120.1, 140.1 x and 60.05, 70.05 y; its mean
    # (130.1, 65.05) is past (100, 50), so (100, 50) is subtracted and it lands on the same pixels.
    spec = T.get("PIX_CHG")
    square = [[20.1, 10.05], [40.1, 10.05], [40.1, 20.05], [20.1, 20.05]]
    before = spec.parse("<poly><100><100><200><100><200><200><100><200></poly>", (100, 50))
    after = spec.parse("<poly><600><600><700><600><700><700><600><700></poly>", (100, 50))
    assert before.polygons == after.polygons == [[square]]
    # Writing puts frame points in the top-left quadrant, in canvas bins; the frame's far edge stays in it.
    text = spec.format(Polygons(polygons=[[[[0, 0], [100, 0], [100, 50]]]]), (100, 50))
    assert text == "<poly><0><0><499><0><499><499></poly>"


def test_change_detection_clips_a_polygon_at_the_frame_edge_instead_of_wrapping():
    # Frame 256 x 256 -> canvas 512 x 512, a bin is 0.512 px. Bins 450 and 500 -> 230.656 and 256.256 px,
    # bins 100 and 150 -> 51.456 and 77.056 px. Mean x = (2 * 230.656 + 2 * 256.256) / 4 = 243.456 < 256:
    # the top-left quadrant, no offset; x = 256.256 clips to the frame's edge 256.0 (modulo gave 0.256, a
    # 230 px band across the frame).
    got = T.get("PIX_CHG").parse("<poly><450><100><500><100><500><150><450><150></poly>", image_size=(256, 256))
    assert got.polygons == [[[[230.656, 51.456], [256.0, 51.456], [256.0, 77.056], [230.656, 77.056]]]]
    # Each instance picks its own quadrant: a point of one `<poly>` in the after quadrant moves only its polygon.
    # Bins 0 and 1 -> 0.256 and 0.768 px; mean x = (0.256 + 0.768 + 0.768) / 3 = 0.597 stays at the top-left.
    two = T.get("PIX_CHG").parse(
        "<poly><0><0><1><0><1><1></poly><poly><999><999><999><998><998><999></poly>", image_size=(256, 256)
    )
    # Bins 998, 999 -> 511.232, 511.744 px; the mean is past 256 in x and y, so (256, 256) is subtracted.
    assert two.polygons == [
        [[[0.256, 0.256], [0.768, 0.256], [0.768, 0.768]]],
        [[[255.744, 255.744], [255.744, 255.232], [255.232, 255.744]]],
    ]


def test_tile_change_pair():
    before = np.full((2, 3, 3), 1, dtype=np.uint8)
    after = np.full((2, 3, 3), 2, dtype=np.uint8)
    canvas = T.tile_change_pair(before, after)
    assert canvas.shape == (4, 6, 3) and canvas.dtype == np.uint8
    assert (canvas[:2, :3] == 1).all() and (canvas[2:, 3:] == 2).all()
    assert (canvas[:2, 3:] == 0).all() and (canvas[2:, :3] == 0).all()
    with pytest.raises(TaskError, match="differ in shape"):
        T.tile_change_pair(before, after[:1])


def test_format_writes_what_the_model_should_generate():
    assert T.get("IMG_CT").format(Count(value=7)) == "7"
    assert T.get("IMG_CLS").format(Label(text=" tennis  court ")) == "tennis court"
    assert T.get("REG_DET_HBB").format(Boxes(boxes=[[10, 10, 20, 20]]), (1000, 1000)) == "<box><10><10><20><20></box>"
    assert T.get("REG_VG").format(Boxes(boxes=[[10, 10, 20, 20]]), (1000, 1000), dialect="florence") == (
        "<box><loc_10><loc_10><loc_20><loc_20></box>"
    )
    assert T.get("REG_DET_HBB").format(Boxes(), (10, 10)) == ""
    with pytest.raises(TaskError, match="needs a Quads"):
        T.get("REG_DET_OBB").format(Boxes(), (10, 10))
    with pytest.raises(TaskError, match="needs image_size"):
        T.get("PIX_SEG").format(Polygons())


def test_parse_needs_the_image_size_only_for_geometry():
    assert T.get("IMG_CAP").parse("a port").text == "a port"
    with pytest.raises(TaskError, match="needs image_size"):
        T.get("REG_DET_HBB").parse("<box><1><2><3><4></box>")


# ---- property tests ---------------------------------------------------------------------------------------

sizes = st.tuples(st.integers(1, 5000), st.integers(1, 5000))
unit = st.floats(0, 1)


def _box(size):
    w, h = size
    return st.tuples(unit, unit, unit, unit).map(lambda v: [v[0] * w, v[1] * h, v[2] * w, v[3] * h])


def _points(size, n_min, n_max):
    w, h = size
    return st.lists(st.tuples(unit, unit).map(lambda p: [p[0] * w, p[1] * h]), min_size=n_min, max_size=n_max)


def _result(kind, size):
    if kind == "box":
        return st.lists(_box(size), max_size=5).map(lambda b: Boxes(boxes=b))
    if kind == "quad":
        return st.lists(_points(size, 4, 4), max_size=5).map(lambda q: Quads(quads=q))
    instances = st.lists(st.lists(_points(size, 3, 8), min_size=1, max_size=3), max_size=3)
    return instances.map(lambda p: Polygons(polygons=p))


def _flat(result):
    if isinstance(result, Boxes):
        return [v for b in result.boxes for v in b]
    items = result.quads if isinstance(result, Quads) else [p for inst in result.polygons for p in inst]
    return [v for shape in items for point in shape for v in point]


@pytest.mark.parametrize("tag", [t for ts in GEOMETRY.values() for t in ts])
@pytest.mark.parametrize("dialect", ["falcon", "florence"])
@FAST
@given(data=st.data(), size=sizes)
def test_geometry_round_trips_within_one_bin(tag, dialect, data, size):
    spec = T.get(tag)
    original = data.draw(_result(spec.answer, size))
    back = spec.parse(spec.format(original, size, dialect), size, dialect)
    assert back.warnings == []
    scale = 2 if spec.n_images == 2 else 1  # PIX_CHG: bins of the 2W x 2H canvas
    a, b = np.array(_flat(original)).reshape(-1, 2), np.array(_flat(back)).reshape(-1, 2)
    assert a.shape == b.shape
    if len(a):
        assert (np.abs(a - b) <= scale * np.array(size) / 1000 + 1e-6).all()


@pytest.mark.parametrize("tag", TEXT_TASKS)
@FAST
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="<>"), min_size=1))
def test_text_round_trips_up_to_whitespace(tag, text):
    spec = T.get(tag)
    cls = spec.result_type
    assert spec.parse(spec.format(cls(text=text))).text == " ".join(text.split())


@FAST
@given(value=st.integers(0, 10**6))
def test_count_round_trips(value):
    spec = T.get("IMG_CT")
    assert spec.parse(spec.format(Count(value=value))).value == value


FRAGMENTS = ["<box>", "</box>", "<quad>", "</quad>", "<poly>", "</poly>", "<sep>", "<0>", "<12>", "<999>", "<1000>",
             "<123456>", "<loc_7>", "<loc_", "</s>", "<s>", "<pad>", "<", ">", "<1", "1>", " ", "\n", "plane", "3",
             "five", "-", "<box", "poly>"]  # fmt: skip
answers = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=40).map("".join)


@pytest.mark.parametrize("dialect", ["falcon", "florence"])
@settings(max_examples=300, deadline=None)
@given(text=answers, size=sizes)
def test_no_answer_crashes_any_parser(dialect, text, size):
    for tag in T.TAGS:
        spec = T.get(tag)
        got = spec.parse(text, size, dialect)
        assert isinstance(got, spec.result_type) and got.raw == text
        assert all(isinstance(w, str) for w in got.warnings)
        flat = _flat(got) if spec.answer in GEOMETRY else []
        if flat:  # every point lies inside the (single-frame) image
            pts = np.array(flat).reshape(-1, 2)
            assert (pts >= 0).all() and (pts <= np.array(size)).all()
        spec.format(got, size, dialect)  # and whatever was read can be written back


def test_non_text_answers_do_not_crash():
    for tag in T.TAGS:
        got = T.get(tag).parse(None, (10, 10))
        assert got.warnings
