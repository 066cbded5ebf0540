"""`tiercel run --tile`: a large scene in tiles, merged answers as JSON and optionally GeoJSON (docs/scenes.md).

Not a verb of its own: tiercel/cli/run.py hands over here when --tile (or another scene option) is given. Every
value is checked before the model loads, so a typo costs no minutes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tiercel.errors import ConfigError

DEFAULT_OVERLAP, DEFAULT_BATCH = 128, 4


ALL_WITH_TILE = "--all: not with --tile; run one --task per scene"


def scene_options(tile: int, overlap: int | None, batch: int | None, bands: str | None, scale: str | None) -> dict:
    """run_scene's tiling keywords from the CLI options: defaults filled, tiling checked, bands and scale parsed."""
    from tiercel.runtime.raster import parse_bands, parse_scale
    from tiercel.runtime.scene import check_tiling

    overlap = DEFAULT_OVERLAP if overlap is None else overlap
    batch = DEFAULT_BATCH if batch is None else batch
    check_tiling(tile, overlap, batch)
    return {"tile": tile, "overlap": overlap, "batch": batch, "bands": parse_bands(bands), "scale": parse_scale(scale)}


def run_tiled(bundle: Path, image: Path, image2: Path | None, task: str | None, text: str | None, region, tile: int | None,
              all_tasks: bool, backend: str, device: str | None, option: list[str], generation: dict,
              overlap: int | None = None, batch: int | None = None, bands: str | None = None, scale: str | None = None,
              geojson: Path | None = None, to_wgs84: bool | None = None) -> dict:
    """Check the scene options, run the scene and write the GeoJSON; -> the JSON `tiercel run` prints."""
    given = {"--overlap": overlap, "--batch": batch, "--bands": bands, "--scale": scale, "--geojson": geojson,
             "--to-wgs84": to_wgs84}
    if tile is None:
        name = next(k for k, v in given.items() if v is not None)
        raise ConfigError(f"{name}: only with --tile (tiled scenes); add e.g. --tile 768")
    if all_tasks:
        raise ConfigError(ALL_WITH_TILE)
    if to_wgs84 and geojson is None:
        raise ConfigError("--to-wgs84: only with --geojson (the JSON on stdout is in scene pixels)")
    opts = scene_options(tile, overlap, batch, bands, scale)
    overlap, batch, bands, scale = opts["overlap"], opts["batch"], opts["bands"], opts["scale"]
    if geojson is not None:
        from tiercel.runtime.geojson import check_geojson_output

        check_geojson_output(geojson)
    from tiercel.evaluate import open_predictor
    from tiercel.runtime.backends import parse_options
    from tiercel.runtime.scene import run_scene

    with _open_scene(image, bands, scale, region, task, bool(to_wgs84)) as raster:
        model = open_predictor(bundle, backend=backend, device=device, options=parse_options(option))
        scene = run_scene(model, raster, task, text=text, region=region, tile=tile, overlap=overlap, batch=batch,
                          source2=image2, **generation)
    if geojson is not None:
        from tiercel.runtime.geojson import write_geojson

        write_geojson(geojson, scene, to_wgs84=bool(to_wgs84))
    if scene.crs is None:
        print(f"note: {image} has no CRS; coordinates are scene pixels", file=sys.stderr)
    return scene.to_dict()


def _open_scene(image: Path, bands, scale, region, task: str, to_wgs84: bool):
    """The scene opened (header, scaling statistics) before the model loads: bad files, bands and CRS fail first."""
    from tiercel import tasks
    from tiercel.runtime.raster import open_raster
    from tiercel.tasks.prompts import region_problem

    spec = tasks.get(task)
    if region is not None and not spec.needs_region:
        raise ConfigError(f"--region: {spec.tag} takes no region; drop --region or pick a region task such as REG_CAP")
    raster = open_raster(image, bands, scale)
    problem = None
    if to_wgs84 and raster.crs is None:
        problem = (f"--to-wgs84: {image} has no CRS, so there is no map position to transform; drop --to-wgs84 "
                   "(features are written in pixels)")
    elif spec.needs_region:
        why = region_problem(spec.needs_region, region, (raster.width, raster.height)) if region is not None else ""
        if why is not None:
            problem = f"--region: {spec.tag} needs a region in scene pixels" + (f"; {why}" if why else "")
    if problem:
        raster.close()
        raise ConfigError(problem)
    return raster
