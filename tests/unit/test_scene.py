"""Tiled inference on scenes (tiercel.runtime.scene, raster, merge, geojson) on small generated GeoTIFFs.

Merging is tested with injected answers: `truth` answers every tile with the known objects clipped to its
window, written in the answer grammar, so the real parse -> shift -> merge path runs without a trained model.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tiercel import tasks
from tiercel.errors import ConfigError, DataError, MissingDependency, TiercelError
from tiercel.runtime.scene import run_scene, tile_windows

rasterio = pytest.importorskip("rasterio")
pytest.importorskip("shapely")
from rasterio.transform import from_origin  # noqa: E402

FAKE = SimpleNamespace(dialect="falcon", pre=SimpleNamespace(size=64))  # what run_scene reads of a model
ORIGIN = (500000.0, 4650000.0)  # UTM 33N: easting 500 km is the zone's central meridian, 15 deg E


def geotiff(path, w=600, h=400, count=3, dtype="uint8", crs="EPSG:32633", data=None):
    """A small GeoTIFF: 10 m pixels from ORIGIN in `crs` (no georeference when crs is None)."""
    if data is None:
        data = np.random.default_rng(0).integers(0, 255, (count, h, w)).astype(dtype)
    geo = {"crs": crs, "transform": from_origin(*ORIGIN, 10, 10)} if crs else {}
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count, dtype=dtype, **geo) as ds:
        ds.write(data)
    return path


def truth(tag: str, objects: list, seen: list | None = None):
    """A predict step answering each tile with `objects` (scene pixels) clipped to its window."""
    spec = tasks.get(tag)

    def predict(images, prompts, tiles):
        out = []
        for img, t in zip(images, tiles):
            pair = 2 if spec.n_images == 2 else 1  # PIX_CHG: the 2 x 2 canvas of before and after
            assert img.dtype == np.uint8 and img.shape == (pair * t.h, pair * t.w, 3)
            if seen is not None:
                seen.append(img)
            clipped = [_clip(o, t) for o in objects]
            clipped = [c for c in clipped if c is not None]
            if spec.answer == "box":
                result = tasks.Boxes(boxes=clipped)
            elif spec.answer == "quad":
                result = tasks.Quads(quads=[[[x1, y1], [x2, y1], [x2, y2], [x1, y2]] for x1, y1, x2, y2 in clipped])
            else:
                result = tasks.Polygons(polygons=[[[[x1, y1], [x2, y1], [x2, y2], [x1, y2]]] for x1, y1, x2, y2 in clipped])
            out.append(spec.format(result, image_size=(t.w, t.h)))
        return out

    return predict


def _clip(box, t):
    x1, y1, x2, y2 = max(box[0], t.x), max(box[1], t.y), min(box[2], t.x + t.w), min(box[3], t.y + t.h)
    return None if x2 - x1 < 3 or y2 - y1 < 3 else [x1 - t.x, y1 - t.y, x2 - t.x, y2 - t.y]


# Tiles of 256 px with 64 px overlap on 600 x 400: columns start at 0, 192, 344; rows at 0, 144.
OBJECTS = [
    [150, 40, 300, 90],   # across the c0/c1 border, wider than the overlap: two partial boxes
    [200, 100, 240, 130],  # wholly inside the c0/c1 overlap: seen whole twice
    [170, 120, 280, 300],  # across the 4-tile corner: four parts
    [20, 300, 60, 340],   # inside one tile
    [64, 300, 100, 340],  # its neighbour in the same tile: stays separate
]


def near(a, b, tol=2.0) -> bool:
    return np.allclose(np.asarray(a, float), np.asarray(b, float), atol=tol)


def test_tiles_cover_the_scene_and_end_on_its_edges():
    windows = tile_windows(600, 400, tile=256, overlap=64)
    assert sorted({t.x for t in windows}) == [0, 192, 344] and sorted({t.y for t in windows}) == [0, 144]
    assert [t.id for t in windows][:4] == ["r0c0", "r0c1", "r0c2", "r1c0"]
    assert all((t.w, t.h) == (256, 256) for t in windows)
    covered = np.zeros((400, 600), bool)
    for t in windows:
        covered[t.y:t.y + t.h, t.x:t.x + t.w] = True
    assert covered.all()
    assert [t.window for t in tile_windows(100, 50, tile=256)] == [(0, 0, 100, 50)]  # smaller than a tile
    with pytest.raises(ConfigError, match="tile > overlap"):
        tile_windows(600, 400, tile=128, overlap=128)


@pytest.mark.parametrize("tag", ["REG_DET_HBB", "REG_DET_OBB"])
def test_object_across_a_tile_border_is_reported_once(tmp_path, tag):
    tif = geotiff(tmp_path / "scene.tif")
    s = run_scene(FAKE, tif, tag, text="ship", tile=256, overlap=64, predict=truth(tag, OBJECTS))
    found = s.result.boxes if tag == "REG_DET_HBB" else [[*np.min(q, 0), *np.max(q, 0)] for q in s.result.quads]
    assert len(found) == len(OBJECTS), found
    for obj in OBJECTS:
        assert sum(near(f, obj) for f in found) == 1, (obj, found)
    by_box = {tuple(np.round(f)): src for f, src in zip(found, s.sources)}
    assert len(by_box[(170, 120, 280, 300)]) == 4  # the corner object: one merged from four tiles
    assert len(s.tiles) == 6 and all(t.result.warnings == [] for t in s.tiles)


def test_polygons_are_unioned_and_counts_come_from_merged_boxes(tmp_path):
    tif = geotiff(tmp_path / "scene.tif")
    seg = run_scene(FAKE, tif, "PIX_SEG", text="tank", tile=256, overlap=64, predict=truth("PIX_SEG", OBJECTS[:1]))
    assert len(seg.result.polygons) == 1
    xs, ys = np.asarray(seg.result.polygons[0][0]).T
    assert near([xs.min(), ys.min(), xs.max(), ys.max()], OBJECTS[0])
    ct = run_scene(FAKE, tif, "IMG_CT", text="ship", tile=256, overlap=64, predict=truth("REG_DET_HBB", OBJECTS))
    per_tile = sum(len(t.result.boxes) for t in ct.tiles)
    assert ct.result.value == len(OBJECTS) < per_tile  # summing tiles would count the overlaps twice
    assert len(ct.detections.boxes) == len(OBJECTS)


def test_coordinates_round_trip_to_the_map_position(tmp_path):
    from tiercel.runtime.geojson import feature_collection

    tif = geotiff(tmp_path / "scene.tif")
    box = [100, 60, 140, 80]
    s = run_scene(FAKE, tif, "REG_DET_HBB", text="ship", tile=256, overlap=64, predict=truth("REG_DET_HBB", [box]))
    fc = feature_collection(s)
    assert fc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    ring = np.asarray(fc["features"][0]["geometry"]["coordinates"][0])
    x0, y0 = ORIGIN
    assert near([ring[:, 0].min(), ring[:, 1].max()], [x0 + 10 * box[0], y0 - 10 * box[1]], tol=10)  # 1 px = 10 m
    assert near([ring[:, 0].max(), ring[:, 1].min()], [x0 + 10 * box[2], y0 - 10 * box[3]], tol=10)
    assert fc["features"][0]["properties"] == {"task": "REG_DET_HBB", "class": "ship", "tiles": ["r0c0"], "support": 1}
    lon, lat = np.asarray(feature_collection(s, to_wgs84=True)["features"][0]["geometry"]["coordinates"][0]).mean(0)
    assert abs(lon - 15.0146) < 0.002 and abs(lat - 41.9955) < 0.002  # 1.2 km east of 15 E, 4,650.7 km north


def test_sixteen_bit_four_band_raster_is_scaled_the_same_in_every_tile(tmp_path):
    h, w = 300, 400
    ramp = np.linspace(1000, 3000, w)[None, None].repeat(h, 1)
    data = np.concatenate([ramp, ramp * 2, ramp / 2, ramp + 7000]).astype("uint16")
    tif = geotiff(tmp_path / "ms.tif", w=w, h=h, count=4, dtype="uint16", data=data)
    seen = []
    s = run_scene(FAKE, tif, "REG_DET_HBB", text="ship", tile=256, overlap=64, bands="4,3,2", scale="percentile:2,98",
                  predict=truth("REG_DET_HBB", [], seen))
    assert s.settings == {"bands": [4, 3, 2], "scale": "percentile:2,98"}
    assert len(seen) == 4 and seen[0][..., 0].min() == 0 and seen[1][..., 0].max() == 255
    # column 200 is in both tile columns (0..256 and 144..400): the same value in each, so no seam
    assert np.array_equal(seen[0][:, 200], seen[1][:, 200 - 144])
    with pytest.raises(ConfigError, match="has 4 band"):
        run_scene(FAKE, tif, "REG_DET_HBB", text="ship", tile=256, overlap=64, bands="5,3,2")


def test_scene_without_crs_gives_pixel_coordinates(tmp_path):
    from PIL import Image

    from tiercel.runtime.geojson import feature_collection

    box = [300, 100, 340, 150]
    png = tmp_path / "scene.png"
    Image.fromarray(np.zeros((400, 600, 3), np.uint8)).save(png)
    for path in (geotiff(tmp_path / "plain.tif", crs=None), png):
        s = run_scene(FAKE, path, "REG_DET_HBB", text="ship", tile=256, overlap=64, predict=truth("REG_DET_HBB", [box]))
        assert s.crs is None and near(s.result.boxes[0], box)
        fc = feature_collection(s)
        assert fc["tiercel"]["coordinates"] == "pixel" and "no CRS" in fc["tiercel"]["note"] and "crs" not in fc
        ring = np.asarray(fc["features"][0]["geometry"]["coordinates"][0])
        assert near([*ring.min(0), *ring.max(0)], box)
        with pytest.raises(ConfigError, match="no CRS"):
            feature_collection(s, to_wgs84=True)


def test_corrupt_or_missing_raster_is_one_line_error(tmp_path, monkeypatch):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00garbage" * 20)
    with pytest.raises(DataError, match="broken.tif: cannot read raster") as err:
        run_scene(FAKE, bad, "REG_DET_HBB", text="ship", predict=truth("REG_DET_HBB", []))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="nothing.tif: image not found"):
        run_scene(FAKE, tmp_path / "nothing.tif", "REG_DET_HBB", text="ship")
    monkeypatch.setitem(__import__("sys").modules, "rasterio", None)  # as if tiercel[geo] were not installed
    with pytest.raises(MissingDependency, match=r"pip install 'tiercel\[geo\]'"):
        run_scene(FAKE, geotiff(tmp_path / "ok.tif"), "REG_DET_HBB", text="ship")


def test_whole_image_and_region_tasks_read_one_window(tmp_path):
    tif = geotiff(tmp_path / "scene.tif")
    seen = []
    s = run_scene(FAKE, tif, "IMG_CLS", tile=256, predict=lambda imgs, prompts, tiles: seen.extend(imgs) or ["harbor"])
    assert s.result.text == "harbor" and seen[0].shape == (64, 64, 3)  # the overview at the model's input size
    prompts = []
    region = [500, 300, 560, 380]  # near the bottom-right corner: the 256 px window is shifted inside the scene
    s = run_scene(FAKE, tif, "REG_CLS_HBB", region=region, tile=256,
                  predict=lambda imgs, ps, tiles: prompts.extend(ps) or ["ship"])
    assert s.tiles[0].tile.window == (344, 144, 256, 256) and s.result.text == "ship"
    read = tasks.get("REG_CLS_HBB").read_prompt(prompts[0], image_size=(256, 256))["region"]
    assert near(read, [156, 156, 216, 236], tol=1)


def test_change_detection_needs_co_registered_pair(tmp_path):
    before, after = geotiff(tmp_path / "a.tif"), geotiff(tmp_path / "b.tif", w=500)
    with pytest.raises(DataError, match="b.tif: 500x400 does not match"):
        run_scene(FAKE, before, "PIX_CHG", source2=after, predict=truth("PIX_CHG", []))
    same = geotiff(tmp_path / "c.tif")
    s = run_scene(FAKE, before, "PIX_CHG", source2=same, tile=256, overlap=64, predict=truth("PIX_CHG", OBJECTS[:1]))
    assert len(s.result.polygons) == 1 and len(s.tiles) == 6


def test_change_detection_names_a_geotiff_paired_with_a_plain_image(tmp_path):
    from PIL import Image

    before = geotiff(tmp_path / "a.tif")
    Image.new("RGB", (600, 400)).save(tmp_path / "b.png")
    with pytest.raises(ConfigError) as err:
        run_scene(FAKE, before, "PIX_CHG", source2=tmp_path / "b.png", predict=truth("PIX_CHG", []))
    assert str(err.value) == (f"--image2 {tmp_path / 'b.png'}: is a plain image while --image {before} is a raster "
                              "read with rasterio (GeoTIFF); give PIX_CHG two scenes of the same kind (two GeoTIFFs on "
                              "one grid, or two plain images)")


def test_geojson_replaces_only_its_own_files(tmp_path):
    from tiercel.runtime.geojson import write_geojson

    s = run_scene(FAKE, geotiff(tmp_path / "scene.tif"), "REG_DET_HBB", text="ship", tile=256, overlap=64,
                  predict=truth("REG_DET_HBB", OBJECTS))
    out = write_geojson(tmp_path / "out.geojson", s)
    assert len(json.loads(out.read_text())["features"]) == len(OBJECTS)
    write_geojson(out, s, to_wgs84=True)  # its own file: replaced
    foreign = tmp_path / "mine.geojson"
    foreign.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(TiercelError, match=r"mine.geojson: exists and was not written by tiercel, so it is not "
                                           r"replaced; choose another path$"):
        write_geojson(foreign, s)
    assert foreign.read_text() == '{"type": "FeatureCollection", "features": []}'  # untouched


def test_real_model_tiles_in_batches_as_per_window_runs(bundle, tmp_path):
    import tiercel.runtime
    from tiercel.runtime.raster import open_raster

    m = tiercel.runtime.load(bundle)
    tif = geotiff(tmp_path / "scene.tif", w=160, h=120)
    gen = {"num_beams": 1, "max_new_tokens": 8}
    s = m.run_scene(tif, "REG_DET_HBB", text="airplane", tile=64, overlap=16, batch=4, **gen)
    assert [t.tile.id for t in s.tiles] == [f"r{r}c{c}" for r in range(3) for c in range(3)]
    with open_raster(tif) as r:
        alone = [m.run(r.read(*t.tile.window), "REG_DET_HBB", text="airplane", **gen) for t in s.tiles]
    assert [t.result.raw for t in s.tiles] == [a.raw for a in alone]
    assert [t.result.boxes for t in s.tiles] == [a.boxes for a in alone]


def test_cli_tiles_a_scene_and_writes_geojson(bundle, tmp_path, capsys):
    from tiercel.cli import main

    tif, out = geotiff(tmp_path / "scene.tif", w=160, h=120), tmp_path / "ships.geojson"
    args = ["run", str(bundle), "--image", str(tif), "--task", "REG_DET_HBB", "--text", "ship", "--num-beams", "1",
            "--max-new-tokens", "8"]
    assert main([*args, "--tile", "64", "--overlap", "16", "--geojson", str(out), "--to-wgs84"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["type"] == "boxes" and printed["scene"]["tiles"] == 9 and printed["scene"]["crs"] == "EPSG:32633"
    written = json.loads(out.read_text())
    assert written["type"] == "FeatureCollection" and written["tiercel"]["coordinates"] == "wgs84"
    assert len(written["features"]) == len(printed["boxes"])
    assert main([*args, "--tile", "64", "--overlap", "64"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --tile/--overlap: needs tile > overlap") and "\n" not in err
    assert main([*args, "--tile", "2", "--overlap", "0"]) == 1  # 120,000 tiles of a 400 x 300 scene, before
    assert capsys.readouterr().err.strip() == ("error: --tile: at least 32 pixels (got 2); each tile is resized to the "
                                               "model's input, e.g. --tile 768 --overlap 128")
    assert main([*args, "--geojson", str(out)]) == 1  # scene options need --tile
    assert "only with --tile" in capsys.readouterr().err


def test_a_pytorch_predictor_runs_scenes_too(tiny_model, tiny_tokenizer, tmp_path):
    from PIL import Image

    from tiercel.models.predict import TorchPredictor

    png = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (100, 150, 3), dtype=np.uint8)).save(png)
    p, gen = TorchPredictor(tiny_model, tiny_tokenizer), {"num_beams": 1, "max_new_tokens": 6}
    s = p.run_scene(png, "REG_DET_HBB", text="ship", tile=64, overlap=16, batch=3, **gen)
    assert len(s.tiles) == 6 and s.crs is None
    rgb = np.asarray(Image.open(png))
    t = s.tiles[4].tile
    assert s.tiles[4].result.raw == p.run(rgb[t.y:t.y + t.h, t.x:t.x + t.w], "REG_DET_HBB", text="ship", **gen).raw
    assert p.run_scene(png, "IMG_CAP", tile=64, overlap=16, **gen).tiles[0].tile.id == "overview"
