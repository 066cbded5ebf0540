"""GeoChat answers -> Falcon answers, and Falcon tasks -> GeoChat prompts, on hand-computed cases."""

from __future__ import annotations

import pytest

from tiercel import tasks
from tiercel.distill.geochat import GeoBox, format_box, geochat_prompt, parse_geochat, region_to_geobox, to_falcon
from tiercel.errors import TaskError


def test_parse_reads_boxes_angles_and_labels_in_order():
    text = "There are <p>airplanes</p> {<10><20><30><40>|<45>}{<50><50><60><70>|<0>} and a <p>ship</p> {<1><2><3><4>|-30}."
    warnings = []
    assert parse_geochat(text, warnings) == [
        GeoBox(10, 20, 30, 40, 45, "airplanes"),
        GeoBox(50, 50, 60, 70, 0, "airplanes"),
        GeoBox(1, 2, 3, 4, -30, "ship"),
    ]
    assert warnings == []


def test_parse_is_tolerant_and_says_what_it_repaired():
    warnings = []
    boxes = parse_geochat("{<10><20><30>|<5>}{<40><30><20><10>|<0>}{<120><0><50><50>}{<1><2><3><4>|<7>", warnings)
    assert boxes == [GeoBox(20, 10, 40, 30, 0), GeoBox(50, 0, 100, 50, 0), GeoBox(1, 2, 3, 4, 7)]
    assert len(warnings) == 3
    assert "3 coordinate(s)" in warnings[0] and "clamped" in warnings[1] and "not closed" in warnings[2]
    notes = []
    assert parse_geochat(None, notes) == [] and "not text" in notes[0]
    assert parse_geochat("I cannot see any airplane.") == []


def test_rotation_sign_convention_on_hand_computed_corners():
    """200 x 100 px box centred at (500, 500); theta = 30 degrees. cos 30 = 0.8660, sin 30 = 0.5.

    Counter-clockwise on screen (default): top-left (-100, -50) -> (-100 cos - 50 sin, 100 sin - 50 cos)
    = (-111.60, 6.70): the corner swings DOWN. Clockwise: (-100 cos + 50 sin, -100 sin - 50 cos) = (-61.60, -93.30).
    """
    box = GeoBox(40, 45, 60, 55, 30)
    ccw = box.corners((1000, 1000))
    cw = box.corners((1000, 1000), clockwise=True)
    assert ccw[0] == pytest.approx([388.397, 506.699], abs=1e-3)
    assert cw[0] == pytest.approx([438.397, 406.699], abs=1e-3)
    assert ccw[1] == pytest.approx([561.603, 406.699], abs=1e-3)  # top-right (100, -50) swings up
    assert box.hbb((1000, 1000)) == pytest.approx([388.397, 406.699, 611.603, 593.301], abs=1e-3)


def test_rotation_happens_in_pixels_so_a_wide_box_turned_90_degrees_stands_upright():
    # 2000 x 1000 image: x 800..1200, y 450..550 (400 x 100 px); turned 90 degrees it is 100 x 400 px
    assert GeoBox(40, 45, 60, 55, 90).hbb((2000, 1000)) == pytest.approx([950, 300, 1050, 700], abs=1e-9)


def test_horizontal_detection_becomes_falcon_boxes():
    # 1000 x 500 image: bins are 1 px wide in x and 0.5 px in y
    text = "<p>plane</p> {<10><20><30><60>|<0>}{<0><0><100><100>|<0>}"
    warnings = []
    assert to_falcon(text, "REG_DET_HBB", (1000, 500), warnings) == "<box><100><200><300><600></box><box><0><0><999><999></box>"
    assert warnings == []


@pytest.mark.parametrize("tag", ["REG_DET_HBB", "REG_DET_OBB", "REG_VG"])
def test_an_answer_without_a_box_warns_for_detection_as_for_grounding(tag):
    """A REG_DET answer with no box used to become an empty detection silently, so it was trained on."""
    warnings = []
    assert to_falcon("No planes are visible.", tag, (1000, 500), warnings) == ""
    assert warnings == [f"{tag}: the GeoChat answer holds no box: 'No planes are visible.'"]


def test_oriented_detection_becomes_quads_rotated_by_theta():
    warnings = []
    answer = to_falcon("{<40><45><60><55>|<90>}", "REG_DET_OBB", (1000, 1000), warnings)
    quads = tasks.get("REG_DET_OBB").parse(answer, (1000, 1000))
    assert warnings == [] and quads.warnings == []
    # 200 x 100 px at (500, 500) turned 90 degrees counter-clockwise: the top-left corner lands bottom-left
    expected = [[450, 600], [450, 400], [550, 400], [550, 600]]
    assert flat(quads.quads[0]) == pytest.approx(flat(expected), abs=1.0)  # within one bin
    cw = tasks.get("REG_DET_OBB").parse(to_falcon("{<40><45><60><55>|<90>}", "REG_DET_OBB", (1000, 1000),
                                                  clockwise=True), (1000, 1000))
    assert flat(cw.quads[0]) == pytest.approx(flat([[550, 400], [550, 600], [450, 600], [450, 400]]), abs=1.0)


def flat(points):
    return [v for p in points for v in p]


def test_grounding_keeps_the_first_box_and_warns_when_there_is_none():
    text = "{<10><10><20><20>|<0>}{<50><50><60><60>|<0>}"
    assert to_falcon(text, "REG_VG", (1000, 1000)) == "<box><100><100><200><200></box>"
    warnings = []
    assert to_falcon("It is not in the image.", "REG_VG", (1000, 1000), warnings) == ""
    assert "no box" in warnings[0]


def test_text_answers_lose_geochat_markup():
    caption = "The image shows an <p>airport</p> {<1><2><3><4>|<0>} with a runway ."
    assert to_falcon(caption, "IMG_CAP", (64, 64)) == "The image shows an airport with a runway."
    assert to_falcon("Airport.", "IMG_CLS", (64, 64)) == "Airport"
    assert to_falcon("Yes</s>", "IMG_VQA", (64, 64)) == "Yes"
    assert to_falcon("There are 3 ships.", "IMG_CT", (64, 64)) == "3"
    warnings = []
    assert to_falcon("No ships.", "IMG_CT", (64, 64), warnings) == "" and "no number" in warnings[0]
    warnings = []  # a fraction is no count either, and the note says so rather than "no number"
    assert to_falcon("2.5", "IMG_CT", (64, 64), warnings) == ""
    assert warnings == ["IMG_CT: no count in the GeoChat answer '2.5' (2.5 is not a whole number; read as none)"]
    warnings = []
    assert to_falcon("  ", "REG_CAP", (64, 64), warnings) == "" and "empty" in warnings[0]


def test_segmentation_tasks_are_refused():
    with pytest.raises(TaskError, match="PIX_SEG: GeoChat gives no polygons"):
        to_falcon("{<1><2><3><4>|<0>}", "PIX_SEG", (64, 64))
    with pytest.raises(TaskError, match="GeoChat can answer"):
        geochat_prompt("PIX_CHG", {})


def test_prompts_from_falcon_prompt_fields():
    size = (1000, 500)
    spec = tasks.get("REG_CLS_HBB")
    fields = spec.read_prompt(spec.prompt(region=[100, 50, 300, 150], image_size=size), size)
    assert geochat_prompt("REG_CLS_HBB", fields, size) == (
        "[identify] What is the object present at {<10><10><30><30>|<0>}\nAnswer in one word or a short phrase.")
    assert geochat_prompt("REG_VG", {"text": "the red car"}) == "[refer] Give me the location of <p> the red car </p>"
    assert geochat_prompt("REG_DET_OBB", {"text": "ship"}) == "[refer] Give me the location of all <p> ship </p>"
    assert geochat_prompt("IMG_VQA", {"text": "Is there a bridge?"}) == (
        "Is there a bridge?\nAnswer the question using a single word or phrase.")
    assert geochat_prompt("PIX_CLS", {"region": [[100, 50], [300, 100], [200, 150]]}, size).startswith(
        "[identify] What is the object present at {<10><10><30><30>|<0>}")
    with pytest.raises(TaskError, match="needs the class"):
        geochat_prompt("IMG_CT", {"text": None})
    with pytest.raises(TaskError, match="needs the region"):
        geochat_prompt("REG_CAP", {"region": [1, 2, 3, 4]})


@pytest.mark.parametrize("theta", [30.0, -60.0, 90.0, 0.0])
@pytest.mark.parametrize("clockwise", [False, True])
def test_a_quad_region_turns_back_into_the_geochat_box_it_came_from(theta, clockwise):
    size = (2000, 1000)
    box = GeoBox(40, 45, 60, 55, theta)
    back = region_to_geobox(box.corners(size, clockwise), "quad", size, clockwise)
    assert [back.x1, back.y1, back.x2, back.y2, back.theta] == pytest.approx([40, 45, 60, 55, theta], abs=1e-9)
    assert format_box(back) == f"{{<40><45><60><55>|<{round(theta)}>}}"
