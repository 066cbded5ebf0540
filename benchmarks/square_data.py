"""The simplest localisation data set: one bright square on a plain dark background, as Falcon_SFT REG_VG.

Each image is SIZE x SIZE, a uniform grey background (value 20-80) with one square (value 200-255, side
`--min-side`..`--max-side` px) at a uniform random position. The answer is its box in Falcon's bins,
`<box><x1><y1><x2><y2></box>`, written through tiercel.tasks so it parses like every other answer. A model that
reads its image should learn this in a few hundred steps; one that does not is not reading its image.

    python benchmarks/square_data.py --out benchmarks/work/square/data --n 2000 --size 128
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tiercel import tasks as T
from tiercel.data.sft import Record, write_records

DESCRIPTION = "the bright square"
SPLITS = {"train": 0.9, "val": 0.05, "test": 0.05}


def square_image(rng: np.random.Generator, size: int, min_side: int, max_side: int, grid: int = 0,
                 anchor: str = "corner"):
    """(HxWx3 uint8 image, [x1, y1, x2, y2] box of its square in pixels, x2/y2 exclusive). `grid` > 0 puts the
    square's corner (`anchor` "corner": each corner coordinate takes `grid` values at a fixed side) or its centre
    ("centre": on the cell centres of a grid x grid lattice, as the synthetic benchmark's `grid` knob places
    objects, so corners vary with the side) on grid x grid positions."""
    image = np.full((size, size, 3), int(rng.integers(20, 81)), np.uint8)
    side = int(rng.integers(min_side, max_side + 1))
    if grid and anchor == "centre":
        cells = rng.integers(0, grid, size=2)
        x, y = (min(max(int((int(v) + 0.5) * size / grid - side / 2), 0), size - side) for v in cells)
    elif grid:
        x, y = (int(v) * (size - side) // max(grid - 1, 1) for v in rng.integers(0, grid, size=2))
    else:
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    image[y : y + side, x : x + side] = int(rng.integers(200, 256))
    return image, [x, y, x + side, y + side]


def write(out: Path, n: int, size: int, seed: int, min_side: int, max_side: int, grid: int = 0,
          anchor: str = "corner") -> dict:
    """Write images/, train.json, val.json, test.json and meta.json under `out`; returns the meta."""
    rng = np.random.default_rng(seed)
    spec = T.get("REG_VG")
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        image, box = square_image(rng, size, min_side, max_side, grid, anchor)
        rel = f"images/{i:06d}.png"
        Image.fromarray(image).save(out / rel)
        prompt = spec.prompt(text=DESCRIPTION)
        answer = spec.format(T.Boxes(boxes=[box]), (size, size))
        records.append(Record(-1, "REG_VG", prompt, answer, [rel], []))
    counts, start = {}, 0
    for split, share in SPLITS.items():
        end = n if split == "test" else start + int(round(share * n))
        counts[split] = write_records(out / f"{split}.json", records[start:end])
        start = end
    meta = {"generator": "benchmarks/square_data.py", "n": n, "size": size, "seed": seed,
            "min_side": min_side, "max_side": max_side, "grid": grid, "anchor": anchor, "counts": counts}  # fmt: skip
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-side", type=int, default=16)
    ap.add_argument("--max-side", type=int, default=40)
    ap.add_argument("--grid", type=int, default=0, help="positions per axis (0: any pixel)")
    ap.add_argument("--anchor", choices=("corner", "centre"), default="corner", help="what --grid places")
    args = ap.parse_args()
    print(json.dumps(write(args.out, args.n, args.size, args.seed, args.min_side, args.max_side, args.grid,
                           args.anchor)))


if __name__ == "__main__":
    main()
