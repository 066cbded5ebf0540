"""A large synthetic GeoTIFF with known objects, for benchmarks/scene_cpu.py: synthetic scenes side by side.

    python benchmarks/scene_raster.py --out /tmp/scene.tif --size 8192      # + /tmp/scene.objects.json

The raster is written block by block (one `block` x `block` scene at a time through rasterio windows), so writing
an 8,192 px raster holds one scene in memory. Each block is an independent scene of tiercel's synthetic benchmark
(tiercel.data.synth: the same classes, colours and difficulty knobs as `tiercel data synth`), so objects lie
anywhere, including across the tiles a tiled run cuts the raster into. The objects file lists every object's
class, horizontal box and oriented quad in scene pixels; the raster is georeferenced (UTM zone 33N, 0.5 m
pixels by default) so map coordinates can be checked too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def write_scene_raster(path: Path, size: int = 8192, block: int = 1024, seed: int = 0, crs: str = "EPSG:32633",
                       origin: tuple[float, float] = (500000.0, 4200000.0), pixel: float = 0.5) -> list[dict]:
    """Write the raster; returns its objects: {"cls", "hbb": [x1, y1, x2, y2], "quad": [[x, y] x 4]} in pixels."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from tiercel.data.synth.knobs import Knobs
    from tiercel.data.synth.layout import sample_scene
    from tiercel.data.synth.render import render

    if size % block:
        raise SystemExit(f"--size {size} must be a multiple of --block {block}")
    knobs, objects = Knobs(), []
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": crs,
               "transform": from_origin(origin[0], origin[1], pixel, pixel), "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        for by in range(size // block):
            for bx in range(size // block):
                scene = sample_scene(np.random.default_rng([seed, by, bx]), block, knobs)
                dst.write(render(scene, knobs).transpose(2, 0, 1), window=Window(bx * block, by * block, block, block))
                dx, dy = bx * block, by * block
                objects += [{"cls": o.cls, "hbb": [o.hbb[0] + dx, o.hbb[1] + dy, o.hbb[2] + dx, o.hbb[3] + dy],
                             "quad": [[float(x) + dx, float(y) + dy] for x, y in o.quad]} for o in scene.objects]
    return objects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t = time.perf_counter()
    objects = write_scene_raster(args.out, args.size, args.block, args.seed)
    args.out.with_suffix(".objects.json").write_text(json.dumps(objects))
    print(f"wrote {args.out} ({args.size} px, {len(objects)} objects) in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
