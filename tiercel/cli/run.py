"""`tiercel run BUNDLE --image A --task TAG`: run a task (or several with --all) and print the result as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tiercel.cli.app import BACKEND_OPTION, MAX_BEAMS, app
from tiercel.runtime.backends import backends_help


@app.command()
def run(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `tiercel export`, or a checkpoint directory (PyTorch; CUDA graphs with --device cuda)."),
    image: Path = typer.Option(None, "--image", help="Image file (grayscale, RGBA and 16-bit are converted)."),
    image2: Path = typer.Option(None, "--image2", help="Second image ('after'), for PIX_CHG only."),
    task: str = typer.Option(None, "--task", help="Task tag, e.g. IMG_CAP or REG_DET_HBB."),
    text: str = typer.Option(None, "--text", help="Class, question or description for tasks that need one."),
    region: str = typer.Option(None, "--region", help=r"Region in pixels as JSON: \[x1,y1,x2,y2], or \[\[x,y],...] for quads/polygons."),  # \[: no Rich tag
    backend: str = typer.Option("onnxruntime", "--backend", help=f"{backends_help()}."),
    device: str = typer.Option(None, "--device", help="Backend device (cpu/cuda for onnxruntime and torch, CPU/GPU/NPU for openvino)."),
    option: list[str] = BACKEND_OPTION,
    all_tasks: bool = typer.Option(False, "--all", help="Run every task the inputs allow in one batch (PIX_CHG too when --image2 is given)."),
    num_beams: int = typer.Option(None, min=1, max=MAX_BEAMS, help="Beams (default: the bundle's setting)."),
    max_new_tokens: int = typer.Option(None, min=1, help="Generated tokens at most (default: the bundle's setting)."),
    constrained: bool = typer.Option(True, "--constrained/--no-constrained", help="Decode every answer under its task's grammar, so it always parses (docs/runtime.md); --no-constrained decodes freely."),
    tile: int = typer.Option(None, "--tile", help="Tile a large scene (GeoTIFF or image) into windows of this many pixels and merge the answers (docs/scenes.md)."),
    overlap: int = typer.Option(None, "--overlap", help="Pixels shared by neighbouring tiles (with --tile; default 128)."),
    batch: int = typer.Option(None, "--batch", help="Tiles per vision/generation call with --tile (default 4); with --images alone, images answered together (default 1)."),
    bands: str = typer.Option(None, "--bands", help="Bands as R,G,B, 1-based as in GDAL, e.g. 3,2,1 (with --tile; default: the first three)."),
    scale: str = typer.Option(None, "--scale", help="To 8 bits: minmax, percentile:2,98, fixed:LOW,HIGH or none (with --tile; default minmax for non-8-bit data)."),
    geojson: Path = typer.Option(None, "--geojson", help="Also write the merged answer as GeoJSON features (with --tile)."),
    to_wgs84: bool = typer.Option(False, "--to-wgs84", help="GeoJSON in WGS84 lon/lat instead of the scene's CRS."),
    images: str = typer.Option(None, "--images", help="A folder of images, or a glob pattern ('photos/**/*.jpg'), instead of --image: one JSON line per image in --out."),
    jsonl: Path = typer.Option(None, "--out", help="Results file (JSONL) for --images; a rerun skips the images already answered in it."),
    recursive: bool = typer.Option(False, "--recursive", help="With --images DIR: its subfolders too."),
    prefetch: int = typer.Option(4, "--prefetch", min=0, max=256, help="With --images: images decoded ahead while the model runs (0: none)."),
    retry_errors: bool = typer.Option(True, "--retry-errors/--no-retry-errors", help="With --images: answer again the images --out records as unreadable."),
    overwrite: bool = typer.Option(False, "--overwrite", help="With --images: start --out afresh (only a tiercel results file is replaced)."),
):
    """Run a bundle on an image and print the typed result(s) as JSON."""
    from tiercel.data.images import load_image
    from tiercel.errors import ConfigError

    if images is not None or jsonl is not None:
        if image is not None or image2 is not None or region is not None:
            raise ConfigError("--images: runs a folder; drop --image, --image2 and --region (or run one image with --image)")
        if given := next((k for k, v in {"--geojson": geojson, "--to-wgs84": to_wgs84 or None}.items() if v), None):
            raise ConfigError(f"{given}: not with --images (one GeoJSON per scene: run each with --image)")
        tiled = {"tile": tile, "overlap": overlap, "batch": batch, "bands": bands, "scale": scale}
        if tile is None and (given := next((k for k, v in tiled.items() if v is not None and k != "batch"), None)):
            raise ConfigError(f"--{given}: only with --tile (tiled scenes); add e.g. --tile 768")
        return _run_images(bundle, images, jsonl, task, text, all_tasks, recursive, prefetch, retry_errors, overwrite,
                           open_args=(backend, device, option), tiled=tiled if tile is not None else None,
                           batch=1 if tile is not None or batch is None else batch,
                           num_beams=num_beams, max_new_tokens=max_new_tokens, **_unconstrained(constrained))
    if image is None:
        raise ConfigError("--image or --images: give one (an image file, or a folder or glob pattern of images)")
    if overwrite:
        raise ConfigError("--overwrite: only with --images (a --geojson file tiercel wrote is replaced without it)")
    if not all_tasks and not task:
        raise ConfigError("--task: required unless --all is given (e.g. --task IMG_CAP)")
    scene = {"overlap": overlap, "batch": batch, "bands": bands, "scale": scale, "geojson": geojson,
             "to_wgs84": to_wgs84 or None}
    if tile is not None or any(v is not None for v in scene.values()):
        from tiercel.cli.tiled import run_tiled

        gen = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, **_unconstrained(constrained)}
        out = run_tiled(bundle, image, image2, task, text, _region(region), tile, all_tasks, backend, device, option,
                        gen, **scene)
        typer.echo(json.dumps(out, indent=2))
        return
    region_value = _region(region)
    img = load_image(image)
    _check_region(region_value, task, all_tasks, (img.shape[1], img.shape[0]))  # before the model loads
    img2 = load_image(image2) if image2 is not None else None
    from tiercel.evaluate import open_predictor
    from tiercel.runtime.backends import parse_options

    m = open_predictor(bundle, backend=backend, device=device, options=parse_options(option))
    gen = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, **_unconstrained(constrained)}
    if all_tasks:
        from tiercel import tasks

        tags = [task] if task else None
        texts = {t: text for t in tasks.TAGS if tasks.get(t).needs_text} if text else None
        results = m.run_all(img, tags, texts=texts, regions=_regions(region_value), image2=img2, **gen)
        out = {tag: r.to_dict() for tag, r in results.items()}
    else:
        out = m.run(img, task=task, text=text, region=region_value, image2=img2, **gen).to_dict()
    typer.echo(json.dumps(out, indent=2))


def _unconstrained(constrained: bool) -> dict:
    """The generation keyword for --no-constrained ({} by default: constrained is the runtime's default)."""
    return {} if constrained else {"constrained": False}


SOME_FAILED = 3  # --images: every image was tried, some could not be read (error lines in --out)


def _run_images(bundle: Path, images: str | None, out: Path | None, task, text, all_tasks: bool, recursive: bool,
                prefetch: int, retry_errors: bool, overwrite: bool, open_args: tuple, tiled: dict | None = None,
                batch: int = 1, **gen) -> None:
    """`--images`: every image of a folder or pattern into --out (tiercel.runtime.folder); a summary on stdout.
    `tiled` ({tile, overlap, batch, bands, scale}): each image is a scene run in tiles (Model.run_scene)."""
    from tiercel.errors import ConfigError
    from tiercel.evaluate import open_predictor
    from tiercel.runtime.backends import parse_options
    from tiercel.runtime.folder import folder_tags, list_images, run_folder
    from tiercel.runtime.jsonl import read_results

    if images is None or out is None:
        raise ConfigError(f"{'--out' if out is None else '--images'}: --images and --out go together "
                          "(e.g. --images photos/ --out results.jsonl)")
    paths = list_images(images, recursive)  # every check before the model loads
    folder_tags(task, text, all_tasks)
    if batch < 1:
        raise ConfigError(f"--batch: needs 1 or more images per batch (got {batch})")
    read_results(out)
    step = {}
    if tiled is not None:  # each scene is read window by window inside run_scene: nothing to decode ahead
        step = _scene_step(tiled, task, text, all_tasks, gen)
    backend, device, option = open_args
    m = open_predictor(bundle, backend=backend, device=device, options=parse_options(option))
    summary = run_folder(m, paths, out, task, text, all_tasks, prefetch=prefetch, retry_errors=retry_errors,
                         overwrite=overwrite, batch=batch, **step, **gen)
    typer.echo(json.dumps(summary.to_dict()))
    if summary.failed:
        typer.echo(f"warning: {summary.failed} of {summary.images} images could not be read; each is an error line "
                   f"in {out}", err=True)
        raise typer.Exit(SOME_FAILED)


def _scene_step(tiled: dict, task, text, all_tasks: bool, gen: dict) -> dict:
    """run_folder's load/answer for a folder of scenes, every option checked before the model loads."""
    from tiercel.cli.tiled import ALL_WITH_TILE, scene_options
    from tiercel.errors import ConfigError

    if all_tasks:
        raise ConfigError(ALL_WITH_TILE)
    opts = scene_options(**tiled)
    generation = {k: v for k, v in gen.items() if v is not None}
    return {"load": lambda path: path,
            "answer": lambda model, path: model.run_scene(path, task, text=text, **opts, **generation).to_dict()}


def _region(value: str | None):
    from tiercel.errors import ConfigError

    if value is None:
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: about 1000 nested [; ValueError: JSON or its digit limit
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise ConfigError(f"--region: not valid JSON (got {shown!r}); e.g. --region '[10, 20, 110, 90]'") from None


def _check_region(region, task: str | None, all_tasks: bool, size: tuple[int, int]) -> None:
    """ConfigError naming --region when the region does not fit the task(s) it goes to or the image."""
    from tiercel import tasks
    from tiercel.errors import ConfigError
    from tiercel.tasks.prompts import region_problem

    if region is None:
        return
    if all_tasks:  # _regions: a flat list feeds the box tasks, points the quad and polygon ones
        kind = "box" if isinstance(region, list) and all(isinstance(v, (int, float)) for v in region) else "polygon"
    else:
        kind = tasks.get(task).needs_region
        if not kind:
            raise ConfigError(f"--region: {tasks.get(task).tag} takes no region; drop --region or pick a region "
                              "task such as REG_CAP")
    problem = region_problem(kind, region, size)
    if problem:
        raise ConfigError(f"--region: {problem}")


def _regions(region) -> dict | None:
    """One --region for --all: a flat [x1,y1,x2,y2] feeds the box tasks, a point list the quad/polygon ones."""
    if region is None:
        return None
    from tiercel import tasks

    flat = all(isinstance(v, (int, float)) for v in region)
    kinds = {"box"} if flat else ({"quad", "polygon"} if len(region) == 4 else {"polygon"})
    return {t: region for t in tasks.TAGS if tasks.get(t).needs_region in kinds}
