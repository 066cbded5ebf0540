"""Image preprocessing identical to the Florence-2 processor, with values from the manifest.

Resize to a square without keeping the aspect ratio (PIL bicubic on uint8, as CLIPImageProcessor with
resample=3 does), rescale by 1/255, normalise with the manifest's mean/std, channels first. Any input is first
made RGB uint8: grayscale, RGBA (composited on black), palette and 16-bit images are converted, not refused.
Knows nothing about models or tasks.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tiercel.errors import DataError


def to_rgb_array(image) -> np.ndarray:
    """A path, PIL image or array (HxW, HxWx1/3/4; any integer or float dtype) -> HxWx3 uint8."""
    from tiercel.data.images import check_pixels, load_image, to_rgb

    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        # Image.open is lazy: a caller's opened file is checked from its header before to_rgb decodes it
        check_pixels(getattr(image, "filename", "") or "image", image.size)
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
    """HxWx3 uint8 -> size x size x 3 uint8, bicubic, aspect ratio not kept (as the Florence-2 processor).

    When the height is a whole multiple k >= 2 of `size` (PIX_CHG's tiled pair of two size x size images is
    one), bands of output rows are resized on threads, each from the same image with a `box` (Pillow reads the
    rows it needs from outside the box and releases the GIL while it resamples). With a whole factor the numbers
    in Pillow's coefficient setup are exact (band start b*k, scale k, centres b*k + (i + 0.5)*k), so a band's
    coefficients are those of the same rows of one resize. But Pillow (13, here) also chooses from the shapes
    which pass, horizontal or vertical, runs first, and a band may choose differently: 384x256 -> 128 does. So
    each shape is checked once per process on noise (`_bands_agree`), and unless the bands give one call's bytes
    the image is resized in one call.
    Measured on this 2-core CPU for 1536 -> 768: 28 ms in one call, 13 ms in two bands (throwaway timing)."""
    image, (height, width) = Image.fromarray(rgb), rgb.shape[:2]
    bands = min(_BAND_THREADS, size // 64)
    if height % size or height < 2 * size or bands < 2 or not _bands_agree(height, width, size, bands):
        return np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.uint8)
    return _resize_bands(image, size, bands)


def _resize_bands(image: Image.Image, size: int, bands: int) -> np.ndarray:
    """One resize of `image` (height = k * size) to size x size, as `bands` bands of rows on threads."""
    width, height = image.size
    k, edges = height // size, [size * i // bands for i in range(bands + 1)]

    def band(i: int) -> np.ndarray:
        top, bottom = edges[i], edges[i + 1]
        return np.asarray(image.resize((size, bottom - top), Image.BICUBIC, box=(0, top * k, width, bottom * k)))

    return np.concatenate(list(_pool().map(band, range(bands))), axis=0)


@functools.lru_cache(maxsize=64)
def _bands_agree(height: int, width: int, size: int, bands: int) -> bool:
    """Whether banded resizing gives one resize's bytes for this shape (on seeded noise, where any difference in
    the pass order or the coefficients shows)."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    return np.array_equal(_resize_bands(noise, size, bands), np.asarray(noise.resize((size, size), Image.BICUBIC)))


_BAND_THREADS = min(os.cpu_count() or 1, 8)


_POOL: dict = {}


def _pool():
    """This process's resize threads (a forked data-loader worker gets its own: threads do not survive a fork)."""
    from concurrent.futures import ThreadPoolExecutor

    pid = os.getpid()
    if pid not in _POOL:
        _POOL.clear()
        _POOL[pid] = ThreadPoolExecutor(_BAND_THREADS, thread_name_prefix="tiercel-resize")
    return _POOL[pid]


def normalize(resized: np.ndarray, mean, std) -> np.ndarray:
    """[..., S, S, 3] uint8 -> [..., 3, S, S] float32: rescale by 1/255, then (x - mean) / std.

    A uint8 pixel has 256 values, so each channel's 256 results are computed once (the same float32
    operations, so the same bits) and looked up: about 3x faster than the arithmetic over every pixel (for
    768x768 on this 2-core EPYC, 7.6 -> 2.8 and 12.6 -> 3.4 ms in two throwaway timings), which matters on a
    field device's CPU."""
    if resized.dtype != np.uint8:  # not a decoded image: the arithmetic itself
        x = (resized.astype(np.float32) * np.float32(1 / 255) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))
    lut = _lookup(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    chw = np.moveaxis(resized, -1, -3)
    out = np.empty(chw.shape, np.float32)
    for c in range(chw.shape[-3]):
        out[..., c, :, :] = lut[c][chw[..., c, :, :]]
    return out


@functools.lru_cache(maxsize=8)
def _lookup(mean: tuple, std: tuple) -> np.ndarray:
    """[channels, 256] float32: (v * (1/255) - mean) / std for every uint8 value v, in float32."""
    v = np.arange(256, dtype=np.float32)[:, None]
    return np.ascontiguousarray(((v * np.float32(1 / 255) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).T)


PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images (Resample.c: 32 - 8 - 2)


@functools.lru_cache(maxsize=32)
def pillow_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bicubic resampling of `in_size` samples to `out_size`, as taps in its 8-bit fixed point.

    Returns (index [out, K] int64, weight [out, K] int32): one pass gives
    out[j] = clamp((2**21 + sum_k in[index[j, k]] * weight[j, k]) >> 22, 0, 255) in int32, which is Pillow's
    (Resample.c, precompute_coeffs + normalize_coeffs_8bpc + clip8) operation for operation: the same float64
    expressions in the same order (numpy's float64 is C's double), the taps summed one by one as its loop does.
    Taps past a sample's support have weight 0 (their index repeats the first one). Used by the GPU
    preprocessing of the torch predictors (tiercel.models.device_preprocess), which is checked against Pillow
    itself once per image shape: a Pillow built with fused multiply-adds could round a coefficient differently.
    """
    scale = float(in_size) / out_size  # (double)(in1 - in0) / outSize with the whole image as the box
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale  # bicubic support 2
    ksize = int(math.ceil(support)) * 2 + 1
    center = 0.0 + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    x = ((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale)
    live = taps[None, :] < count[:, None]
    w = np.where(live, _bicubic(x), 0.0)
    total = np.zeros(out_size)
    for k in range(ksize):  # in tap order, as the C loop adds them (numpy's sum would pair them)
        total = total + w[:, k]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    fixed = w * float(1 << PRECISION_BITS)
    weight = np.where(w < 0, np.trunc(-0.5 + fixed), np.trunc(0.5 + fixed)).astype(np.int32)
    index = np.where(live, taps[None, :] + xmin[:, None], xmin[:, None])
    return index, weight


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic_filter (a = -0.5), the same expressions."""
    a, x = -0.5, np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def pillow_pass_order(height: int, width: int, size: int) -> list[str]:
    """The passes Pillow 13 runs to resize height x width to size x size, in its order: "horizontal" first
    unless the height shrinks more than twice as much as the width; a pass whose size does not change is not run."""
    passes = [p for p, (n, m) in (("horizontal", (width, size)), ("vertical", (height, size))) if n != m]
    vertical_first = (height - size) > 0 and (height - size) > (width - size) * 2
    return passes[::-1] if vertical_first else passes


def preprocess(rgb: np.ndarray, size: int, mean, std) -> np.ndarray:
    """HxWx3 uint8 -> [1, 3, size, size] float32 pixel_values."""
    return normalize(resize_square(rgb, size), mean, std)[None]
