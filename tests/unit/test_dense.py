"""distill.dense: cover targets on the image-token grid, the objects file, and the synthetic benchmark's
objects.json."""

import json

import numpy as np
import pytest

from tiercel.data.objects import ObjectsFile
from tiercel.distill.dense import answer_shapes, cover, per_token
from tiercel.errors import DataError


def square(x1, y1, x2, y2):
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]


def test_cover_is_the_share_of_each_cell_a_shape_covers():
    # a 4 x 4 grid of cells 0.25 wide: the box covers cell (0, 0) whole and half of cell (0, 1)
    grid = cover([([0], square(0.0, 0.0, 0.375, 0.25))], 4)[..., 0]
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 1] = 1.0, 0.5
    np.testing.assert_allclose(grid, expected)


def test_cover_puts_each_shape_in_its_channels_and_counts_overlaps_once():
    shapes = [([0, 2], square(0.0, 0.0, 0.5, 0.5)), ([0], square(0.0, 0.0, 0.5, 0.5))]
    grid = cover(shapes, 2, channels=3)
    np.testing.assert_allclose(grid[..., 0], [[1, 0], [0, 0]])
    np.testing.assert_allclose(grid[..., 1], 0)
    np.testing.assert_allclose(grid[..., 2], [[1, 0], [0, 0]])


def test_a_shape_smaller_than_a_sample_still_marks_its_cell():
    grid = cover([([0], square(0.80, 0.30, 0.801, 0.301))], 2)[..., 0]  # far below the 1/16 sample spacing
    assert grid[0, 1] == pytest.approx(1 / 64) and grid.sum() == pytest.approx(1 / 64)


def test_per_token_gives_each_image_token_its_own_block_row_major():
    # 2 x 2 tokens, 2 x 2 cells each: a box in the bottom-right cell of the image is token 3's last cell
    grid = cover([([0], square(0.75, 0.75, 1.0, 1.0))], 4)
    tokens = per_token(grid, side=2, cells=2)
    assert tokens.shape == (4, 4)
    assert tokens[3, 3] == 1.0 and tokens.sum() == 1.0


def test_answer_shapes_read_every_geometry_answer_in_the_unit_frame():
    (box,) = answer_shapes("REG_VG", "<box><100><200><299><399></box>")
    np.testing.assert_allclose(box, square(0.1005, 0.2005, 0.2995, 0.3995))
    (quad,) = answer_shapes("REG_DET_OBB", "<quad><0><0><999><0><999><999><0><999></quad>")
    assert len(quad) == 4
    parts = answer_shapes("PIX_SEG", "<poly><0><0><499><0><499><499><sep><500><500><999><500><999><999></poly>")
    assert len(parts) == 2  # each part of a <sep>-split polygon is its own shape
    assert answer_shapes("IMG_CAP", "a harbour with ships") is None


def test_the_objects_file_checks_every_field_in_one_line(tmp_path):
    path = tmp_path / "objects.json"
    good = {"format": "tiercel-objects/1", "channels": ["ship"], "images": {"a.png": [[[0], square(0, 0, 0.5, 0.5)]]}}
    path.write_text(json.dumps(good))
    assert ObjectsFile(path).shapes("a.png") == [[[0], square(0, 0, 0.5, 0.5)]]
    assert ObjectsFile(path).shapes("b.png") is None
    cases = [
        ({**good, "format": "other"}, "field 'format' must be 'tiercel-objects/1'"),
        ({**good, "channels": []}, "field 'channels' must be a non-empty list of names"),
        ({**good, "images": {"a.png": [[[1], square(0, 0, 1, 1)]]}}, "images['a.png'][0]: expected [[channel ids < 1]"),
        ({**good, "images": {"a.png": [[[0], [[0, "x"]]]]}}, "images['a.png'][0]: the polygon must be a list of [x, y]"),
    ]
    for doc, message in cases:
        path.write_text(json.dumps(doc))
        with pytest.raises(DataError) as err:
            ObjectsFile(path)
        assert message in str(err.value) and "\n" not in str(err.value)
    path.write_text("{not json")
    with pytest.raises(DataError, match="objects.json: not valid JSON"):
        ObjectsFile(path)


def test_synth_objects_hold_every_image_and_the_answers_objects(synth_dir):
    from tiercel.data.sft import iter_records
    from tiercel.data.synth.writer import OBJECTS_CHANNELS

    objects = ObjectsFile(synth_dir / "objects.json")
    assert objects.channels == OBJECTS_CHANNELS
    records = [r for split in ("train", "val", "test") for r in iter_records(synth_dir / f"{split}.json")]
    assert {p for r in records for p in r.images} <= set(objects.images)
    vehicle = OBJECTS_CHANNELS.index("vehicle")
    checked = 0
    for r in records:
        if r.tag != "REG_VG":
            continue
        (box,) = answer_shapes(r.tag, r.answer)
        (x1, y1), (x2, y2) = box[0], box[2]
        outlines = [np.array(shape) for _, shape in objects.shapes(r.images[0])]
        # the answer's box is the bounding box of one of the image's shapes, to within a bin and a rounding
        assert any(np.allclose([*s.min(0), *s.max(0)], [x1, y1, x2, y2], atol=0.0015) for s in outlines), r.answer
        checked += 1
    assert checked >= 5
    assert any(vehicle in chans for shapes in objects.images.values() for chans, _ in shapes)
