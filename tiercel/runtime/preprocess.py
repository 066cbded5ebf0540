"""Image preprocessing identical to the Florence-2 processor, with values from the manifest.

Resize to a square without keeping the aspect ratio (PIL bicubic on uint8, as CLIPImageProcessor with
resample=3 does), rescale by 1/255, normalise with the manifest's mean/std, channels first. Any input is first
made RGB uint8: grayscale, RGBA (composited on black), palette and 16-bit images are converted, not refused.
Knows nothing about models or tasks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tiercel.errors import DataError


def to_rgb_array(image) -> np.ndarray:
    """A path, PIL image or array (HxW, HxWx1/3/4; any integer or float dtype) -> HxWx3 uint8."""
    from tiercel.data.images import load_image, to_rgb

    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or min(array.shape[:2]) == 0:
        raise DataError(f"image must be HxW, HxWx3 or HxWx4 (got shape {array.shape})")
    if array.dtype != np.uint8:
        array = _stretch(array)
    if array.ndim == 3 and array.shape[2] == 4:
        alpha = array[:, :, 3:].astype(np.float32) / 255.0
        return np.round(array[:, :, :3].astype(np.float32) * alpha).astype(np.uint8)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


def _stretch(array: np.ndarray) -> np.ndarray:
    """Non-uint8 pixels -> uint8: values already in 0..255 kept, wider ranges (16-bit, float) stretched."""
    a = np.nan_to_num(array.astype(np.float64))
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(array.dtype, np.floating) and lo >= 0 and hi <= 1:
        return np.round(a * 255).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return np.round(a).astype(np.uint8)
    return np.round((a - lo) * (255.0 / max(hi - lo, 1e-12))).astype(np.uint8)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 uint8, bicubic, aspect ratio not kept (as the Florence-2 processor)."""
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC), dtype=np.uint8)


def normalize(resized: np.ndarray, mean, std) -> np.ndarray:
    """[..., S, S, 3] uint8 -> [..., 3, S, S] float32: rescale by 1/255, then (x - mean) / std."""
    x = (resized.astype(np.float32) * np.float32(1 / 255) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def preprocess(rgb: np.ndarray, size: int, mean, std) -> np.ndarray:
    """HxWx3 uint8 -> [1, 3, size, size] float32 pixel_values."""
    return normalize(resize_square(rgb, size), mean, std)[None]
