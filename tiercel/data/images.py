"""Image loading for Falcon_SFT records: any file PIL reads becomes an RGB uint8 array.

Grayscale, RGBA (alpha dropped), palette, CMYK and 16-bit images are converted, never refused. A missing
or unreadable file raises DataError naming the path. This module knows nothing about tasks, records
or models; it does not resize or normalise (that is the runtime's preprocessing).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tiercel.errors import DataError

# Remote-sensing tiles can be large; PIL's decompression-bomb guard (179 Mpx) would refuse real data, so tiercel
# applies its own bound, read from the header before any pixel is decoded (max_pixels).
Image.MAX_IMAGE_PIXELS = None
# 16384 x 16384: 805 MB as RGB uint8, within an 8 GB Jetson Orin's memory with room for the model; a 389 KB PNG
# can declare 4 GB of pixels. Larger scenes are for tiled reading, not one decode.
DEFAULT_MAX_PIXELS = 16384 * 16384
MAX_PIXELS_ENV = "TIERCEL_MAX_IMAGE_PIXELS"


def max_pixels() -> int:
    """The largest image (width x height) tiercel decodes: $TIERCEL_MAX_IMAGE_PIXELS, 0 for no bound."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise DataError(f"{MAX_PIXELS_ENV}: must be a whole number of pixels, 0 for no bound (got {raw!r})")
    return value


def check_pixels(path, size: tuple[int, int]) -> None:
    """DataError when an image of `size` (W, H) is larger than max_pixels()."""
    limit = max_pixels()
    if limit and size[0] * size[1] > limit:
        raise DataError(f"{path}: {size[0]}x{size[1]} image has {size[0] * size[1]:,} pixels, over the "
                        f"{limit:,} tiercel decodes; set {MAX_PIXELS_ENV} to a larger number (0: no bound) "
                        f"if this machine has the memory, or tile the scene")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image, read from its header without decoding pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: cannot read image ({_reason(err)})") from None


def load_image(path: str | os.PathLike, crop: list[float] | tuple | None = None) -> np.ndarray:
    """Read an image as an HxWx3 uint8 RGB array, optionally cropped to [x1, y1, x2, y2] in pixels.

    An empty crop (`[]` in Falcon_SFT) or None means the whole image. A crop must lie inside the image
    with x2 > x1 and y2 > y1; otherwise DataError.
    """
    if os.path.exists(path) and not os.path.isfile(path):  # a folder, a FIFO (reading one would wait forever), ...
        raise DataError(f"{path}: cannot read image (not a regular file)")
    try:
        with Image.open(path) as im:
            check_pixels(path, im.size)
            im.load()
            rgb = to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read image ({_reason(err)})") from None
    if crop:
        problem = crop_problem(crop, rgb.size)
        if problem:
            raise DataError(f"{path}: {problem}")
        rgb = rgb.crop(tuple(int(round(float(v))) for v in crop))
    return np.asarray(rgb, dtype=np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB. 16/32-bit and float images beyond 0..255 are stretched to their range."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_stretch(np.asarray(im, dtype=np.float64))).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Composite on black so transparent pixels do not show whatever colour they happened to store.
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im.convert("RGB")


def crop_problem(crop, size: tuple[int, int]) -> str | None:
    """Why `crop` is not a valid [x1, y1, x2, y2] box inside an image of `size` (W, H); None when it is."""
    if len(crop) != 4:
        return f"crop must have 4 numbers [x1, y1, x2, y2] (got {list(crop)})"
    try:
        x1, y1, x2, y2 = (float(v) for v in crop)
    except (TypeError, ValueError, OverflowError):
        return f"crop must be numbers (got {list(crop)})"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return f"crop must be finite numbers (got {list(crop)})"
    w, h = size
    if x2 <= x1 or y2 <= y1:
        return f"crop {list(crop)} is empty (needs x2 > x1 and y2 > y1)"
    if x1 < 0 or y1 < 0:
        return f"crop {list(crop)} starts outside the image (negative x1 or y1)"
    if x2 > w or y2 > h:
        return f"crop {list(crop)} lies outside the {w}x{h} image"
    return None


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map a high-bit-depth array to uint8: kept when it fits in 0..255, else stretched min-max.

    Min-max rather than /257 because 16-bit remote-sensing tiles often hold 10-12-bit data, which /257
    would render almost black.
    """
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0 and hi <= 255:
        scaled = values
    elif hi > lo:
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _reason(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text.replace(str(Path.cwd()) + os.sep, "")
