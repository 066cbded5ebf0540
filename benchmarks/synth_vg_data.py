"""REG_VG-only copies of the synthetic benchmark, at a chosen difficulty, for benchmarks/square_vg.py.

Generates `n` records of every task with `tiercel.data.synth.generate` and the given knobs, then writes the REG_VG
records of each split (train/val/test.json) into `--out`, with `images/` linked to the generated images.
`--const-description` replaces every description by "the object" (a set without text priors). `objects.json` maps
each image to the boxes of all its objects (the generator's own layout), a dense target that the image alone
determines (square_vg.py --aux-target objects). `labels.json` adds what each object is: {"channels": [class and
colour names], "objects": {image: [[class channel, colour channel, x1, y1, x2, y2], ...]}} (square_vg.py --aux
image:labels:...), so image features can be taught what sits where, the words a description uses.

    python benchmarks/synth_vg_data.py --out benchmarks/work/synth_vg/vg_grid4 --grid 4 --seed 104
    python benchmarks/synth_vg_data.py --out benchmarks/work/synth_vg/vg_easy4 --grid 4 --density 0.2 --scale 2 --trees 0 --seed 200
    python benchmarks/synth_vg_data.py --out benchmarks/work/synth_vg/vg_one4_const --grid 4 --density 0.05 --scale 2 \\
        --trees 0 --seed 200 --const-description

(Section 11 of square_vg.md used seeds 104, 116 and 100 for grid4, grid16 and grid0.)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from tiercel.data.synth import generate
from tiercel.data.synth.catalog import OBJECTS
from tiercel.data.synth.knobs import Knobs
from tiercel.data.synth.layout import sample_scene
from tiercel.data.synth.writer import draw_scene, image_name, plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=42000, help="records of all 14 tasks generated (REG_VG: 1/14)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", type=int, default=0)
    ap.add_argument("--density", type=float, default=1.0)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--trees", type=float, default=1.0)
    ap.add_argument("--const-description", action="store_true")
    ap.add_argument("--workers", type=int, default=1, help="generator processes")
    args = ap.parse_args()
    knobs = Knobs(grid=args.grid, density=args.density, scale=args.scale, trees=args.trees)
    counts = [len(sample_scene(np.random.default_rng([9, i]), args.size, knobs).objects) for i in range(200)]
    full = args.out.parent / f"full_{args.out.name}"
    if not (full / "meta.json").exists():
        generate(full, n=args.n, size=args.size, seed=args.seed, workers=args.workers, knobs=knobs)
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "images").exists():
        os.symlink((full / "images").resolve(), args.out / "images")
    written = {}
    for split in ("train", "val", "test"):
        records = [r for r in json.loads((full / f"{split}.json").read_text())
                   if "[REG_VG]" in r["conversations"][0]["content"]]
        if args.const_description:
            for r in records:
                lines = r["conversations"][0]["content"].split("\n")
                lines[3] = "the object"
                r["conversations"][0]["content"] = "\n".join(lines)
        (args.out / f"{split}.json").write_text(json.dumps(records))
        written[split] = len(records)
    scenes = {f"{image_name(job)}.png": draw_scene(job)[0].objects for job in plan(args.n, args.seed, args.size, knobs)}
    objects = {name: [o.hbb for o in objs] for name, objs in scenes.items()}
    (args.out / "objects.json").write_text(json.dumps(objects))
    classes = list(OBJECTS)
    colors = sorted({c for spec in OBJECTS.values() for c in spec.colors})
    channels = classes + colors
    labels = {name: [[classes.index(o.cls), channels.index(o.color), *o.hbb] for o in objs] for name, objs in scenes.items()}
    (args.out / "labels.json").write_text(json.dumps({"channels": channels, "objects": labels}))
    print(json.dumps({"knobs": knobs.to_dict(), "objects_per_scene": float(np.mean(counts)), "records": written,
                      "images": len(objects)}))


if __name__ == "__main__":
    main()
