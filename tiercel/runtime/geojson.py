"""A SceneResult as a GeoJSON FeatureCollection that a GIS opens: map coordinates, WGS84, or pixels.

Coordinates, in the order tried:
  - `to_wgs84=True`: lon/lat (EPSG:4326), transformed with rasterio.warp.transform_geom (GDAL's PROJ; no
    pyproj needed). RFC 7946 GeoJSON.
  - the scene has a CRS: the raster's own map coordinates through its geotransform, with the CRS named in the
    legacy `crs` member (`urn:ogc:def:crs:EPSG::32633`), which GDAL/OGR and QGIS read; RFC 7946 dropped that
    member and assumes WGS84, so other readers may place such a file wrongly: use --to-wgs84 for them.
  - no CRS (a PNG, or a GeoTIFF without georeference): pixel coordinates (x right, y down), said so in the
    `tiercel` member.
Features: one per merged object (boxes, quads, polygons; IMG_CT's counted boxes), or one for the region (region
tasks) or the scene's footprint (whole-image tasks). Properties: task, class (the --text), tile ids; the answer
for label/caption tasks. There is no score: Falcon gives none (the `support` property counts supporting tiles).

The file's first member after `type` is `tiercel`, which marks it as tiercel's: a later run replaces such a file
and never any other (tiercel never deletes what it did not write). Written atomically (tiercel.fileio). Knows
nothing about models.
"""

from __future__ import annotations

import json
from pathlib import Path

from tiercel.errors import ConfigError, TiercelError, require
from tiercel.tasks.results import Boxes, Polygons, Quads


def _rings(scene) -> list[tuple[list, list[str] | None]]:
    """(polygon rings in scene pixels, supporting tile ids) per feature."""
    r = scene.detections if scene.detections is not None else scene.result
    if isinstance(r, Boxes):
        return [([_box(b)], s) for b, s in zip(r.boxes, scene.sources)]
    if isinstance(r, Quads):
        return [([[*map(list, q), list(q[0])]], s) for q, s in zip(r.quads, scene.sources)]
    if isinstance(r, Polygons):
        return [([[*p, p[0]] for p in inst if len(p) >= 3], s) for inst, s in zip(r.polygons, scene.sources)]
    if scene.region is not None:
        flat = all(isinstance(v, (int, float)) for v in scene.region)
        ring = _box(scene.region) if flat else [*map(list, scene.region), list(scene.region[0])]
        return [([ring], [t.tile.id for t in scene.tiles])]
    return [([_box([0, 0, scene.width, scene.height])], [t.tile.id for t in scene.tiles])]


def _box(b) -> list:
    x1, y1, x2, y2 = (float(v) for v in b)
    return [[x1, y1], [x1, y2], [x2, y2], [x2, y1], [x1, y1]]


def _to_map(ring: list, t: tuple) -> list:
    a, b, c, d, e, f = t
    return [[a * x + b * y + c, d * x + e * y + f] for x, y in ring]


def _ccw(ring: list) -> list:
    """The ring counter-clockwise (RFC 7946's exterior winding) in the coordinates it is in."""
    area = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(ring, ring[1:]))
    return ring if area >= 0 else ring[::-1]


def feature_collection(scene, to_wgs84: bool = False) -> dict:
    """The scene's features as a GeoJSON dict (see the module docstring for the coordinates)."""
    if to_wgs84 and scene.crs is None:
        raise ConfigError(f"--to-wgs84: {scene.path} has no CRS, so there is no map position to transform; "
                          "drop --to-wgs84 (features are written in pixels)")
    mode = "wgs84" if to_wgs84 else ("crs" if scene.crs else "pixel")
    meta = {"task": scene.task, "source": scene.path, "width": scene.width, "height": scene.height,
            "coordinates": mode, "crs": "EPSG:4326" if to_wgs84 else scene.crs}
    if mode == "pixel":
        meta["note"] = "the scene has no CRS: coordinates are pixels of the scene (x right, y down)"
    answer = getattr(scene.result, "text", None)
    if answer is None and scene.task == "IMG_CT":
        answer = scene.result.value
    features = []
    for rings, tiles in _rings(scene):
        if not rings:
            continue
        if mode != "pixel":
            rings = [_to_map(r, scene.transform) for r in rings]
        geom = {"type": "Polygon", "coordinates": [_ccw(r) for r in rings[:1]]} if len(rings) == 1 else \
            {"type": "MultiPolygon", "coordinates": [[_ccw(r)] for r in rings]}
        if to_wgs84:
            geom = _wgs84(geom, scene.crs)
        props = {"task": scene.task, "class": scene.text, "tiles": tiles, "support": len(tiles or [])}
        if answer is not None:
            props["answer"] = answer
        features.append({"type": "Feature", "geometry": geom, "properties": props})
    out = {"type": "FeatureCollection", "tiercel": meta}
    if mode == "crs":
        out["crs"] = {"type": "name", "properties": {"name": _crs_name(scene.crs)}}
    out["features"] = features
    return out


def _crs_name(crs: str) -> str:
    return f"urn:ogc:def:crs:EPSG::{crs.split(':', 1)[1]}" if crs.startswith("EPSG:") else crs


def _wgs84(geom: dict, crs: str) -> dict:
    """geom in `crs` -> lon/lat (rasterio.warp.transform_geom)."""
    warp = require("rasterio.warp", "geo", "--to-wgs84")
    out = warp.transform_geom(crs, "EPSG:4326", geom)
    return {"type": out["type"], "coordinates": _lists(out["coordinates"])}


def _lists(value):
    return [_lists(v) for v in value] if isinstance(value, (list, tuple)) else float(value)


def check_geojson_output(path: str | Path) -> Path:
    """Before the work: TiercelError unless `path` can be written: absent, or a file tiercel wrote."""
    from tiercel.fileio import check_output_file

    path = Path(path)
    check_output_file(path, "--geojson", example="out.geojson")
    if path.exists() and not _ours(path):
        raise TiercelError(f"--geojson {path}: exists and was not written by tiercel, so it is not replaced; choose "
                           "another path")
    return path


def _ours(path: Path) -> bool:
    """Whether `path` holds a FeatureCollection tiercel wrote (its `tiercel` member comes right after `type`)."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return head.lstrip().startswith('{"type": "FeatureCollection", "tiercel": {')


def write_geojson(path: str | Path, scene, to_wgs84: bool = False) -> Path:
    """Write the scene's FeatureCollection to `path` atomically (see check_geojson_output for what it replaces)."""
    from tiercel.fileio import atomic_write_text

    path = check_geojson_output(path)
    return atomic_write_text(path, json.dumps(feature_collection(scene, to_wgs84)) + "\n")
