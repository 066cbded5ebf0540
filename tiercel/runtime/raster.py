"""Scene readers for tiled inference: a window of a large image in, an RGB uint8 tile out.

    with open_raster("scene.tif", bands=(4, 3, 2), scale="percentile:2,98") as r:
        r.width, r.height, r.crs, r.transform
        tile = r.read(0, 0, 768, 768)                        # H x W x 3 uint8
        small = r.read(0, 0, r.width, r.height, out=(768, 768))  # decimated: the whole scene at 768 px

GeoTIFFs (and anything else GDAL reads: .tif, .tiff, .vrt, .jp2, .img) are read with rasterio, window by window,
so a scene of any size never sits in memory whole; rasterio is an optional dependency (`tiercel[geo]`) imported
only here. Plain images (PNG, JPEG, ...) go through PIL behind the same interface: they are decoded once, whole
(PNG and JPEG have no random access), within tiercel's pixel bound (tiercel.data.images.max_pixels).

Bands are 1-based as in GDAL; by default the first three, or the single band repeated for grayscale. Pixels
that are not 8-bit are scaled to 0..255 per band by statistics read ONCE from a decimated overview (at most
1024 px on the long side), so every tile gets the same mapping and no seam shows between tiles. That is a few
lines of numpy rather than a library call because rasterio has no contrast stretch and the statistics must be
fixed before the first tile is read. Knows nothing about models, tasks or tiling.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiercel.errors import ConfigError, DataError, require

GDAL_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
STATS_SIDE = 1024  # long side of the overview the scaling statistics come from
# GDAL's block cache defaults to 5% of the machine's memory: reading every tile of an 8192 x 8192 4-band uint16
# scene then peaked at 666 MB RSS on a 24 GB machine, against 278 MB with 128 MB (3.5 s against 3.0 s for the
# reads). 128 MB holds the blocks of a row of 768 px tiles of a 16k-wide 4-band uint16 scene. $GDAL_CACHEMAX wins.
GDAL_CACHE = 128 << 20  # bytes: rasterio passes an int to GDALSetCacheMax64


@dataclass(frozen=True)
class Scale:
    """How pixels become 0..255: "minmax", "percentile" (low/high are percentiles), "fixed" (values) or "none"
    (values kept, clipped to 0..255)."""

    kind: str
    low: float = 0.0
    high: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind in ("minmax", "none") else f"{self.kind}:{self.low:g},{self.high:g}"


def parse_scale(value: str | Scale | None) -> Scale | None:
    """`--scale` text -> Scale: `minmax`, `percentile:2,98`, `fixed:0,3000` or `none`; ConfigError otherwise."""
    if value is None or isinstance(value, Scale):
        return value
    kind, _, args = str(value).strip().lower().partition(":")
    example = "use minmax, percentile:2,98, fixed:LOW,HIGH or none"
    if kind in ("minmax", "none") and not args:
        return Scale(kind)
    if kind not in ("percentile", "fixed"):
        raise ConfigError(f"--scale: unknown scaling {value!r}; {example}")
    try:
        low, high = (float(v) for v in args.split(","))
    except ValueError:
        raise ConfigError(f"--scale: {kind} needs two numbers LOW,HIGH (got {value!r}); {example}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"--scale: needs LOW < HIGH (got {value!r})")
    if kind == "percentile" and not (0 <= low and high <= 100):
        raise ConfigError(f"--scale: percentiles lie in 0..100 (got {value!r})")
    return Scale(kind, low, high)


def parse_bands(value: str | tuple | list | None) -> tuple[int, ...] | None:
    """`--bands 3,2,1` -> (3, 2, 1); one band is repeated as grey (4 -> (4, 4, 4)); ConfigError otherwise."""
    if value is None:
        return None
    try:
        bands = tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))
    except ValueError:
        raise ConfigError(f"--bands: band numbers separated by commas, e.g. 3,2,1 (got {value!r})") from None
    if len(bands) == 1:
        bands = bands * 3
    if len(bands) != 3 or min(bands) < 1:
        raise ConfigError(f"--bands: one or three band numbers from 1, e.g. 3,2,1 (got {value!r})")
    return bands


class Raster:
    """A scene opened for windowed reads. Use open_raster; close it (or use it as a context manager)."""

    path: Path
    width: int
    height: int
    count: int  # bands in the file
    bands: tuple[int, int, int]
    scale: Scale | None
    crs: str | None = None  # "EPSG:32633", or WKT for a CRS without an EPSG code; None: pixel coordinates
    epsg: int | None = None
    transform: tuple[float, ...] | None = None  # affine a, b, c, d, e, f: x = a*col + b*row + c, y = d*col + e*row + f

    def read(self, x: int, y: int, w: int, h: int, out: tuple[int, int] | None = None) -> np.ndarray:
        """The window [x, x+w) x [y, y+h) as H x W x 3 uint8; `out` (W, H) reads it decimated to that size."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _check_bands(self, bands) -> tuple[int, int, int]:
        if bands is None:
            return (1, 2, 3) if self.count >= 3 else (1, 1, 1)
        if max(bands) > self.count:
            raise ConfigError(f"--bands: {self.path} has {self.count} band(s), numbered 1..{self.count} "
                              f"(got {','.join(map(str, bands))})")
        return tuple(bands)


class ImageRaster(Raster):
    """A plain image (PNG, JPEG, ...) decoded once through PIL as tiercel run decodes it (RGB uint8)."""

    def __init__(self, path: Path, bands=None, scale: Scale | None = None):
        from tiercel.data.images import load_image

        if scale is not None:
            raise ConfigError(f"--scale: {path} is a plain image, made 8-bit RGB as `tiercel run` makes it; "
                              "--scale is for rasters read with rasterio (GeoTIFF)")
        self.path, self.rgb = path, load_image(path)
        self.height, self.width = self.rgb.shape[:2]
        self.count, self.scale = 3, None
        self.bands = self._check_bands(bands)

    def read(self, x, y, w, h, out=None):
        from PIL import Image

        tile = self.rgb[y:y + h, x:x + w][:, :, [b - 1 for b in self.bands]]
        if out is not None and out != (w, h):
            tile = np.asarray(Image.fromarray(np.ascontiguousarray(tile)).resize(out, Image.BILINEAR))
        return np.ascontiguousarray(tile)


class GeoRaster(Raster):
    """A raster read with rasterio, one window at a time; scaling statistics from one decimated read."""

    def __init__(self, path: Path, bands=None, scale: Scale | None = None):
        rasterio = require("rasterio", "geo", f"{path}: reading a GeoTIFF")
        self._env = rasterio.Env(**({} if os.environ.get("GDAL_CACHEMAX") else {"GDAL_CACHEMAX": GDAL_CACHE}))
        self._env.__enter__()  # left in close(): the cache bound holds for every read of this raster
        try:
            with warnings.catch_warnings():  # no georeference is fine: pixel coordinates, said by the caller
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self.ds = rasterio.open(path)
        except rasterio.errors.RasterioError as err:
            self._env.__exit__(None, None, None)
            raise DataError(f"{path}: cannot read raster ({_reason(err)})") from None
        self.path, self.width, self.height, self.count = path, self.ds.width, self.ds.height, self.ds.count
        self.bands = self._check_bands(bands)
        self._unique = sorted(set(self.bands))
        self._pick = [self._unique.index(b) for b in self.bands]
        self.nodata = self.ds.nodata
        if self.ds.crs is not None:
            self.epsg = self.ds.crs.to_epsg()
            self.crs = f"EPSG:{self.epsg}" if self.epsg else self.ds.crs.to_wkt()
            self.transform = tuple(self.ds.transform)[:6]
        eight_bit = all(self.ds.dtypes[b - 1] == "uint8" for b in self._unique)
        self.scale = scale if scale is not None or eight_bit else Scale("minmax")
        self.limits = self._limits() if self.scale is not None else None

    def _raw(self, window=None, out: tuple[int, int] | None = None) -> np.ndarray:
        """Selected bands as float64 [bands, H, W] with nodata as NaN."""
        from rasterio.windows import Window

        shape = None if out is None else (len(self._unique), out[1], out[0])
        try:
            data = self.ds.read(self._unique, window=window and Window(*window), out_shape=shape, masked=True)
        except self._errors() as err:
            raise DataError(f"{self.path}: cannot read raster ({_reason(err)})") from None
        return np.ma.filled(data.astype(np.float64), np.nan)

    def _errors(self):
        import rasterio

        return rasterio.errors.RasterioError

    def _limits(self) -> np.ndarray:
        """[bands, 2] low/high per selected band, from an overview of at most STATS_SIDE px on the long side."""
        if self.scale.kind == "fixed":
            return np.array([[self.scale.low, self.scale.high]] * len(self._unique))
        if self.scale.kind == "none":
            return np.array([[0.0, 255.0]] * len(self._unique))
        f = max(self.width, self.height) / STATS_SIDE
        size = (self.width, self.height) if f <= 1 else (max(1, round(self.width / f)), max(1, round(self.height / f)))
        raw = self._raw(out=size).reshape(len(self._unique), -1)
        q = (0.0, 100.0) if self.scale.kind == "minmax" else (self.scale.low, self.scale.high)
        limits = []
        for band, values in zip(self._unique, raw):
            values = values[np.isfinite(values)]
            if values.size == 0:
                raise DataError(f"{self.path}: band {band} holds only nodata in its overview; pick other --bands")
            limits.append(np.percentile(values, q))
        return np.asarray(limits)

    def read(self, x, y, w, h, out=None):
        raw = self._raw((x, y, w, h), out)
        if self.limits is not None:
            low, high = self.limits[:, :1, None], self.limits[:, 1:, None]
            if self.scale.kind != "none":
                raw = (raw - low) * (255.0 / np.maximum(high - low, 1e-12))
        pixels = np.clip(np.round(np.nan_to_num(raw, nan=0.0)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(pixels[self._pick].transpose(1, 2, 0))

    def close(self) -> None:
        self.ds.close()
        self._env.__exit__(None, None, None)


def reads_with_rasterio(path: str | Path) -> bool:
    """Whether open_raster reads `path` with rasterio (a GDAL format, by its suffix) rather than PIL."""
    return Path(path).suffix.lower() in GDAL_SUFFIXES


def open_raster(path: str | Path, bands=None, scale=None) -> Raster:
    """Open a scene for windowed reads: rasterio for GDAL formats (GDAL_SUFFIXES), PIL for everything else.

    Args:
        bands: three 1-based band numbers (or "3,2,1"); default the first three, or band 1 as grey.
        scale: a Scale or its text (parse_scale); default none for 8-bit data, minmax for anything else.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: image not found")
    bands, scale = parse_bands(bands), parse_scale(scale)
    cls = GeoRaster if reads_with_rasterio(path) else ImageRaster
    return cls(path, bands, scale)


def _reason(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]
