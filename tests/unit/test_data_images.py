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
    nan, inf = float("nan"), float("inf")
    assert crop_problem([0, 0, nan, 5], (10, 10)) == "crop must be finite numbers (got [0, 0, nan, 5])"  # not a traceback
    assert crop_problem([0, 0, inf, 5], (inf, inf)) == "crop must be finite numbers (got [0, 0, inf, 5])"
    assert crop_problem([0, 0, 10**400, 5], (10, 10)).startswith("crop must be numbers")  # too large for a float
    assert crop_problem([-5, -5, 10, 10], (inf, inf)) == ("crop [-5, -5, 10, 10] starts outside the image (negative x1 "
                                                          "or y1)")  # not "the infxinf image"


def test_a_fifo_or_folder_is_refused_instead_of_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.png")  # opening a FIFO for reading waits for a writer: forever
    (tmp_path / "dir.png").mkdir()
    for name in ("pipe.png", "dir.png"):
        with pytest.raises(DataError, match=rf"{name}: cannot read image \(not a regular file\)$"):
            load_image(tmp_path / name)


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


def _png_declaring(path, width, height):
    """A 1x1 PNG whose header claims `width` x `height`: a few bytes on disk, gigabytes if decoded."""
    import struct
    import zlib

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + width, height, depth, colour, compression, filter, interlace
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def test_an_image_past_the_pixel_bound_is_refused_before_decoding(tmp_path, monkeypatch):
    from tiercel.runtime.preprocess import to_rgb_array

    bomb = _png_declaring(tmp_path / "bomb.png", 100_000, 100_000)
    assert bomb.stat().st_size < 100 and image_size(bomb) == (100_000, 100_000)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    for load in (load_image, to_rgb_array):  # the training side and the runtime
        with pytest.raises(DataError) as err:
            load(bomb)
        assert str(err.value) == (
            f"{bomb}: 100000x100000 image has 10,000,000,000 pixels, over the 268,435,456 tiercel decodes; set "
            "TIERCEL_MAX_IMAGE_PIXELS to a larger number (0: no bound) if this machine has the memory, or tile the scene")
    assert decoded == []


def test_the_pixel_bound_is_configurable(tmp_path, monkeypatch):
    path = _save(tmp_path, "a.png", Image.new("RGB", (40, 30)))
    monkeypatch.setenv("TIERCEL_MAX_IMAGE_PIXELS", "1199")
    with pytest.raises(DataError, match="1,200 pixels, over the 1,199"):
        load_image(path)
    monkeypatch.setenv("TIERCEL_MAX_IMAGE_PIXELS", "0")
    assert load_image(path).shape == (30, 40, 3)
    monkeypatch.setenv("TIERCEL_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DataError, match=r"TIERCEL_MAX_IMAGE_PIXELS: must be a whole number of pixels, 0 for no bound \(got 'lots'\)"):
        load_image(path)


def test_an_opened_pil_image_past_the_bound_is_refused_by_the_runtime_before_decoding(tmp_path, monkeypatch):
    from tiercel.runtime.preprocess import to_rgb_array

    bomb = _png_declaring(tmp_path / "bomb.png", 100_000, 100_000)

    def decode(self):
        raise AssertionError("pixels decoded")  # 10 GB: what Model.run(Image.open(bomb)) used to allocate

    monkeypatch.setattr(Image.Image, "load", decode)
    with Image.open(bomb) as lazy, pytest.raises(DataError) as err:
        to_rgb_array(lazy)  # what Model.run / run_all do with a PIL image
    assert str(err.value).startswith(f"{bomb}: 100000x100000 image has 10,000,000,000 pixels, over the 268,435,456")
    monkeypatch.undo()
    small = Image.new("L", (4, 3))
    monkeypatch.setenv("TIERCEL_MAX_IMAGE_PIXELS", "11")
    with pytest.raises(DataError, match=r"^image: 4x3 image has 12 pixels, over the 11 tiercel decodes"):
        to_rgb_array(small)  # an image made in memory has no file name
