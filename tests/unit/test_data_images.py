"""Image loading: every common PIL mode becomes RGB uint8; missing or broken files give one-line DataErrors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tiercel.data.images import crop_problem, image_size, load_image
from tiercel.errors import DataError


def _save(tmp_path, name, im):
    path = tmp_path / name
    im.save(path)
    return path


@pytest.mark.parametrize(
    "mode, name",
    [("L", "gray.png"), ("RGBA", "rgba.png"), ("P", "palette.png"), ("LA", "la.png"), ("CMYK", "cmyk.tif"),
     ("RGB", "rgb.jpg"), ("1", "bits.png")],
)  # fmt: skip
def test_modes_become_rgb(tmp_path, mode, name):
    im = Image.new("RGB", (20, 10), (200, 100, 50)).convert(mode)
    out = load_image(_save(tmp_path, name, im))
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8


def test_sixteen_bit_is_stretched_not_clipped(tmp_path):
    data = np.linspace(0, 4095, 32 * 8, dtype=np.uint16).reshape(8, 32)  # 12-bit data in a 16-bit file
    out = load_image(_save(tmp_path, "dem.png", Image.fromarray(data)))
    assert out.shape == (8, 32, 3)
    assert out.min() == 0 and out.max() == 255
    assert (np.diff(out[0, :, 0].astype(int)) >= 0).all()


def test_transparent_pixels_become_black(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white, fully transparent
    out = load_image(_save(tmp_path, "t.png", Image.fromarray(rgba, "RGBA")))
    assert out.max() == 0


def test_crop(tmp_path):
    arr = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    path = _save(tmp_path, "a.png", Image.fromarray(arr))
    assert np.array_equal(load_image(path, [2, 3, 12, 8]), arr[3:8, 2:12])
    assert load_image(path, []).shape == (10, 20, 3)
    with pytest.raises(DataError, match=r"a.png: crop \[0, 0, 30, 5\] lies outside the 20x10 image"):
        load_image(path, [0, 0, 30, 5])
    assert image_size(path) == (20, 10)


def test_crop_problems():
    assert crop_problem([0, 0, 10, 10], (10, 10)) is None
    assert "empty" in crop_problem([5, 0, 5, 10], (10, 10))
    assert "4 numbers" in crop_problem([1, 2, 3], (10, 10))
    assert "numbers" in crop_problem(["a", 0, 1, 1], (10, 10))


def test_missing_and_unreadable_files_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"nope.png: image not found$"):
        load_image(tmp_path / "nope.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"junk.png: cannot read image") as err:
        load_image(junk)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"junk.png: cannot read image"):
        image_size(junk)
