"""Whole scenes: tiled inference on an image of any size, answers merged back into scene pixels.

    s = model.run_scene("scene.tif", "REG_DET_HBB", text="ship", tile=768, overlap=128, batch=4)
    s.result          # Boxes in scene pixels, merged across tile borders
    s.sources         # per merged object: the ids of the tiles that saw it
    s.tiles           # per tile: its window and its own parsed answer in TILE pixels (per-tile metrics)

Tiling: windows of `tile` px every `tile - overlap` px, row by row; the last column and row are shifted back
so that they end on the scene's edge (no padding: a black border would be part of what the model sees). Tile
ids are `r{row}c{col}`. A scene smaller than a tile is one window of its own size. Each batch of tiles goes
through one vision call and one generation call (`predict`), answers are parsed in tile pixels, moved to scene
pixels and merged (tiercel.runtime.merge). Per task:
  - REG_DET_HBB, REG_DET_OBB: per-tile detections merged across borders (boxes / quads).
  - REG_VG: every tile grounds the description; candidates are merged as boxes and the one most tiles support
    is the answer (ties: the first seen); all candidates stay in `tiles`.
  - PIX_SEG: polygons of every tile, unioned. PIX_CHG: both scenes tiled with the same windows, same as PIX_SEG.
  - IMG_CT: REG_DET_HBB for the class over the tiles, merged, and counted: per-tile counts cannot be summed
    (objects in the overlaps would count twice) and a count has no position to deduplicate.
  - IMG_CLS, IMG_CAP, IMG_CAP_DETAILED, IMG_VQA: one pass on the scene decimated to the model's input size.
  - REG_CLS_HBB, REG_CLS_OBB, REG_CAP, PIX_CLS: one pass on a window around the region (at least a tile,
    read decimated to `tile` px when the region is larger).
Only the tiles of one batch are in memory. Knows nothing about files beyond tiercel.runtime.raster.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tiercel import progress, tasks
from tiercel.errors import ConfigError, DataError
from tiercel.runtime import merge
from tiercel.runtime.raster import Raster, open_raster
from tiercel.tasks.results import Boxes, Count, Polygons, Quads, Result

MIN_TILE = 32  # pixels: a smaller tile holds nothing a model can read once resized to its input
WHOLE_IMAGE = ("IMG_CLS", "IMG_CAP", "IMG_CAP_DETAILED", "IMG_VQA")


@dataclass(frozen=True)
class Tile:
    """A window of the scene: `id` (r{row}c{col}, "overview" or "region") and x, y, w, h in scene pixels."""

    id: str
    x: int
    y: int
    w: int
    h: int

    @property
    def window(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.w, self.h


@dataclass
class TileResult:
    """One tile's parsed answer, in the tile's own pixels (add tile.x, tile.y for scene pixels)."""

    tile: Tile
    result: Result


@dataclass
class SceneResult:
    """The merged answer in scene pixels and how it came about; `to_dict` is what `tiercel run --tile` prints."""

    task: str
    text: str | None
    result: Result
    sources: list[list[str]]  # per merged object (boxes, quads, polygons; IMG_CT's boxes): supporting tile ids
    tiles: list[TileResult]
    width: int
    height: int
    crs: str | None
    transform: tuple | None
    path: str
    tile: int
    overlap: int
    detections: Boxes | None = None  # IMG_CT: the merged boxes that were counted
    region: list | None = None  # region tasks: the region in scene pixels
    settings: dict = field(default_factory=dict)  # bands and scale as read

    def to_dict(self) -> dict:
        scene = {"path": self.path, "width": self.width, "height": self.height, "crs": self.crs,
                 "tiles": len(self.tiles), "tile": self.tile, "overlap": self.overlap, **self.settings,
                 "sources": self.sources}
        if self.detections is not None:
            scene["detections"] = self.detections.boxes
        return {**self.result.to_dict(), "scene": scene}


def tile_windows(width: int, height: int, tile: int = 768, overlap: int = 128) -> list[Tile]:
    """Windows covering a width x height scene, row by row; the last row and column end on the scene's edge."""
    check_tiling(tile, overlap)
    xs, ys = _starts(width, tile, tile - overlap), _starts(height, tile, tile - overlap)
    return [Tile(f"r{r}c{c}", x, y, min(tile, width), min(tile, height)) for r, y in enumerate(ys) for c, x in enumerate(xs)]


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def check_tiling(tile: int, overlap: int, batch: int = 1) -> None:
    """ConfigError unless tile >= MIN_TILE, tile > overlap >= 0 and batch >= 1."""
    if 0 < tile < MIN_TILE:  # each tile is resized to the model's input: a few pixels carry nothing to read
        raise ConfigError(f"--tile: at least {MIN_TILE} pixels (got {tile}); each tile is resized to the model's "
                          "input, e.g. --tile 768 --overlap 128")
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ConfigError(f"--tile/--overlap: needs tile > overlap >= 0 (got tile {tile}, overlap {overlap}); "
                          "e.g. --tile 768 --overlap 128")
    if batch < 1:
        raise ConfigError(f"--batch: needs 1 or more tiles per batch (got {batch})")


def model_predict(model, task: str | None = None, **generation):
    """The default prediction step: images (H x W x 3 uint8) + prompts -> answer texts, one vision call and one
    generation call for the whole batch; `task` gives every prompt its answer grammar (constrained decoding)."""
    def predict(images: list[np.ndarray], prompts: list[str], tiles: list[Tile]) -> list[str]:
        features = model.image_features(model.preprocess_images(images))
        ids = model.generate_ids(features, prompts, tasks_=None if task is None else [task] * len(prompts), **generation)
        return [model.tokenizer.decode(i) for i in ids]

    return predict


def run_scene(model, source, task: str, text: str | None = None, region=None, tile: int = 768, overlap: int = 128,
              batch: int = 4, bands=None, scale=None, source2=None, predict=None, **generation) -> SceneResult:
    """Run `task` on a scene of any size, tile by tile (see the module docstring for what each task does).

    Args:
        model: a tiercel.runtime.Model (or TorchPredictor); gives the dialect, the input size and, unless
            `predict` is given, the predictions.
        source, source2: scene paths (GeoTIFF through rasterio, plain images through PIL) or open Rasters (left
            open); source2 is PIX_CHG's "after" scene, co-registered with `source` (same size and georeference).
        region: for region tasks, in scene pixels. bands, scale: see tiercel.runtime.raster.open_raster.
        predict: replaces the model call: (images, prompts, tiles) -> answer texts (tests inject answers here).
        generation: overrides of the bundle's generation settings (num_beams, max_new_tokens, ...).
    """
    spec = tasks.get(task)
    check_tiling(tile, overlap, batch)
    if (spec.n_images == 2) != (source2 is not None):
        raise ConfigError(f"{spec.tag}: " + ("needs two scenes; pass --image2" if source2 is None
                                              else "takes one scene; only PIX_CHG takes --image2"))
    predict = predict or model_predict(model, task, **{k: v for k, v in generation.items() if v is not None})
    run = _Run(spec, text, getattr(model, "dialect", "falcon"), predict, batch)
    with _opened(source, bands, scale) as raster:
        if source2 is not None:
            _check_same_kind(raster, Path(source2))
        second = open_raster(source2, raster.bands, raster.scale) if source2 is not None else None
        try:
            if second is not None:
                _check_pair(raster, second)
            out = SceneResult(spec.tag, text, Result(), [], [], raster.width, raster.height, raster.crs,
                              raster.transform, str(raster.path), tile, overlap,
                              settings={"bands": list(raster.bands), "scale": str(raster.scale) if raster.scale else None})
            _dispatch(run, out, raster, second, region, tile, overlap, model)
        finally:
            if second is not None:
                second.close()
    return out


@contextlib.contextmanager
def _opened(source, bands, scale):
    """`source` as an open Raster: opened (and closed after) from a path, or used as it is."""
    if isinstance(source, Raster):
        if bands is not None or scale is not None:
            raise ConfigError("bands/scale: give them to open_raster when passing an open Raster")
        yield source
        return
    with open_raster(source, bands, scale) as raster:
        yield raster


def _dispatch(run, out: SceneResult, raster, second, region, tile: int, overlap: int, model) -> None:
    spec, size = run.spec, (raster.width, raster.height)
    if spec.tag in WHOLE_IMAGE:
        side = int(model.pre.size)
        t = Tile("overview", 0, 0, raster.width, raster.height)
        out.tiles = run.tiles([t], lambda _: raster.read(0, 0, *size, out=(side, side)), size=(side, side))
        out.result = out.tiles[0].result
    elif spec.needs_region:
        out.region = region
        out.tiles = run.region(raster, region, tile)
        out.result = out.tiles[0].result
    else:
        windows = tile_windows(*size, tile, overlap)
        if spec.n_images == 2:
            read = lambda t: tasks.tile_change_pair(raster.read(*t.window), second.read(*t.window))
        else:
            read = lambda t: raster.read(*t.window)
        if spec.tag == "IMG_CT":
            run.spec = tasks.get("REG_DET_HBB")
        out.tiles = run.tiles(windows, read)
        out.result, out.sources = _merge(run.spec.tag, out.tiles, windows, size)
        if spec.tag == "IMG_CT":
            out.detections, out.result = out.result, Count(value=len(out.result.boxes))
            out.result.raw = str(out.result.value)


class _Run:
    """One task's prompt building, batching and parsing over tiles."""

    def __init__(self, spec, text, dialect, predict, batch):
        self.spec, self.text, self.dialect, self.predict, self.batch = spec, text, dialect, predict, batch

    def tiles(self, windows: list[Tile], read, size=None, region=None) -> list[TileResult]:
        """Predict every window in batches; answers parsed in each window's (W, H), or `size` (a decimated read)."""
        out = []
        with progress.track("scene", total=len(windows), unit="tiles") as bar:
            for start in range(0, len(windows), self.batch):
                chunk = windows[start:start + self.batch]
                sizes = [size or (t.w, t.h) for t in chunk]
                prompts = [self.spec.prompt(text=self.text, region=region, image_size=s, dialect=self.dialect)
                           for s in sizes]
                answers = self.predict([read(t) for t in chunk], prompts, chunk)
                out += [TileResult(t, self.spec.parse(a, image_size=s, dialect=self.dialect))
                        for t, a, s in zip(chunk, answers, sizes)]
                bar.advance(len(chunk))
        return out

    def region(self, raster, region, tile: int) -> list[TileResult]:
        """One window around `region` (scene pixels): at least `tile` px a side, read decimated to `tile` px
        on the long side when the region is larger; the region is moved (and scaled) into that window."""
        from tiercel.tasks.prompts import region_problem

        problem = region_problem(self.spec.needs_region, region, (raster.width, raster.height)) if region else None
        if region is None or problem:
            raise ConfigError(f"--region: {self.spec.tag} needs a region inside the {raster.width}x{raster.height} "
                              f"scene, in scene pixels" + (f"; {problem}" if problem else ""))
        pts = np.asarray(region, dtype=float).reshape(-1, 2)
        (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
        w, h = (min(max(tile, math.ceil(v)), side) for v, side in ((x2 - x1, raster.width), (y2 - y1, raster.height)))
        x = int(min(max(0, (x1 + x2) / 2 - w / 2), raster.width - w))
        y = int(min(max(0, (y1 + y2) / 2 - h / 2), raster.height - h))
        f = min(1.0, tile / max(w, h))
        size = (max(1, round(w * f)), max(1, round(h * f)))
        local = ((pts - (x, y)) * (size[0] / w, size[1] / h)).tolist()
        local = local[0] + local[1] if self.spec.needs_region == "box" else local
        t = Tile("region", x, y, w, h)
        return self.tiles([t], lambda _: raster.read(x, y, w, h, out=size), size=size, region=local)


def _check_same_kind(raster: Raster, second: Path) -> None:
    """PIX_CHG's two scenes are read the same way: both GeoTIFFs (rasterio) or both plain images (PIL)."""
    from tiercel.runtime.raster import GeoRaster, reads_with_rasterio

    first_geo, second_geo = isinstance(raster, GeoRaster), reads_with_rasterio(second)
    if first_geo != second_geo:
        kinds = {True: "a raster read with rasterio (GeoTIFF)", False: "a plain image"}
        raise ConfigError(f"--image2 {second}: is {kinds[second_geo]} while --image {raster.path} is {kinds[first_geo]}; "
                          "give PIX_CHG two scenes of the same kind (two GeoTIFFs on one grid, or two plain images)")


def _check_pair(a, b) -> None:
    if (a.width, a.height) != (b.width, b.height):
        raise DataError(f"{b.path}: {b.width}x{b.height} does not match {a.path} ({a.width}x{a.height}); PIX_CHG "
                        "needs two co-registered scenes of one size")
    if a.transform and b.transform and not np.allclose(a.transform, b.transform) or a.crs != b.crs:
        raise DataError(f"{b.path}: its georeference differs from {a.path}'s; PIX_CHG needs co-registered scenes "
                        "(warp one onto the other, e.g. gdalwarp, first)")


def shifted(result: Result, dx: float, dy: float) -> Result:
    """A copy of `result` moved by (dx, dy): tile pixels -> scene pixels."""
    if isinstance(result, Boxes):
        return Boxes(boxes=[[b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy] for b in result.boxes], raw=result.raw)
    if isinstance(result, Quads):
        return Quads(quads=[[[x + dx, y + dy] for x, y in q] for q in result.quads], raw=result.raw)
    if isinstance(result, Polygons):
        return Polygons(polygons=[[[[x + dx, y + dy] for x, y in part] for part in inst] for inst in result.polygons],
                        raw=result.raw)
    return result


def _merge(tag: str, tiles: list[TileResult], windows: list[Tile], scene: tuple[int, int]):
    """Per-tile results -> (merged result in scene pixels, supporting tile ids per merged object)."""
    items, tile_of = [], []
    for i, tr in enumerate(tiles):
        moved = shifted(tr.result, tr.tile.x, tr.tile.y)
        objects = getattr(moved, {Boxes: "boxes", Quads: "quads", Polygons: "polygons"}[type(moved)])
        items += objects
        tile_of += [i] * len(objects)
    boxes = [w.window for w in windows]
    warnings = [f"{tr.tile.id}: {w}" for tr in tiles for w in tr.result.warnings]
    if tag in ("REG_DET_HBB", "REG_VG"):
        merged, groups = merge.merge_boxes(items, tile_of, boxes, scene)
        if tag == "REG_VG":
            merged, groups = merged[:1], groups[:1]
        result = Boxes(boxes=merged, warnings=warnings)
    elif tag == "REG_DET_OBB":
        merged, groups = merge.merge_quads(items, tile_of, boxes, scene)
        result = Quads(quads=merged, warnings=warnings)
    else:
        merged, groups = merge.merge_polygons(items, tile_of)
        result = Polygons(polygons=merged, warnings=warnings)
    sources = [sorted({tiles[tile_of[i]].tile.id for i in g}, key=[t.id for t in windows].index) for g in groups]
    return result, sources
