"""Tiled inference on a large GeoTIFF on this CPU: merge accuracy, tiles/s, scene time, peak RSS, Jetson estimates.

Usage:
    python benchmarks/scene_cpu.py                  # 8,192 px scene, tiercel-nano and tiercel-small int8 bundles
    python benchmarks/scene_cpu.py --quick          # 2,048 px, tiercel-nano only, one round (a check of the script)

The scene is benchmarks/scene_raster.py's: 8 x 8 synthetic scenes of 1,024 px side by side in one tiled, deflated,
georeferenced GeoTIFF, with every object known. Three parts, all in one run:

1. Merge accuracy (no model): each tile is answered by an oracle that reports the objects of one class as that
   tile sees them (ground truth cut at the tile's edges, written as Falcon answers in the tile's bins, then parsed
   back), exactly or with noise (each corner moved by N(0, 1.5 px), 10% of boxes dropped, independently per
   tile). Scored with REG_DET_HBB's metric (AP@0.5): per tile (answers against the cut ground truth, pooled over
   tiles), the merged scene against the whole objects, and the per-tile boxes simply shifted to the scene without
   merging (the duplicates a merge removes). A trained detector at 768 px does not exist yet (docs/fidelity.md),
   so this measures what the merge adds or loses on top of whatever a detector gets right per tile.
2. Speed: tiercel-nano and tiercel-small with random weights (speed does not depend on their values), exported and
   quantized int8-dynamic (no calibration data needed), run on the whole scene (REG_DET_HBB, tiles of 768 with
   128 px overlap, batches of 4 tiles, exactly `--tokens` generated tokens per tile, one onnxruntime thread: a
   training run holds the other core), each in a fresh process so its peak RSS is its own; the 2,048 px scene
   runs too, to show that memory does not grow with the raster (peak RSS is the child's VmHWM). Rounds interleave
   the runs; medians.
3. ESTIMATES per scene on the Jetson devices of tiercel.runtime.profile.devices: tiles x the estimated time of one
   tile (vision + text encoder + first token + (tokens - 1) decode steps, one row), with that module's formula.

Writes benchmarks/results/scene_cpu.json (or scene_cpu_quick.json); the write-up is scene_cpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "scene"
TILE, OVERLAP, BATCH = 768, 128, 4
CLASSES = ("vehicle", "building")
NOISE_PX, DROP = 1.5, 0.1


def raster(size: int) -> tuple[Path, list[dict]]:
    """The scene of `size` px and its objects (written once, then reused)."""
    from scene_raster import write_scene_raster

    path = WORK / f"scene_{size}.tif"
    objects_file = path.with_suffix(".objects.json")
    if not objects_file.is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        objects_file.write_text(json.dumps(write_scene_raster(path, size)))
    return path, json.loads(objects_file.read_text())


# ---- 1. merge accuracy ------------------------------------------------------------------------------------------
def _cut(box, t, min_side: float = 3.0):
    x1, y1, x2, y2 = max(box[0], t.x), max(box[1], t.y), min(box[2], t.x + t.w), min(box[3], t.y + t.h)
    return None if x2 - x1 < min_side or y2 - y1 < min_side else [x1 - t.x, y1 - t.y, x2 - t.x, y2 - t.y]


def oracle(boxes: list, noisy: bool, seed: int = 0):
    """A predict step answering each tile with `boxes` (scene px) cut to it, as Falcon answer text."""
    from tiercel import tasks

    spec = tasks.get("REG_DET_HBB")

    def predict(images, prompts, tiles):
        out = []
        for t in tiles:
            cut = [c for c in (_cut(b, t) for b in boxes) if c is not None]
            if noisy:
                rng = np.random.default_rng([seed, t.x, t.y])
                cut = [list(np.clip(np.asarray(c) + rng.normal(0, NOISE_PX, 4), 0, [t.w, t.h, t.w, t.h]))
                       for c in cut if rng.random() >= DROP]
                cut = [c for c in cut if c[2] - c[0] >= 1 and c[3] - c[1] >= 1]
            out.append(spec.format(tasks.Boxes(boxes=cut), image_size=(t.w, t.h)))
        return out

    return predict


def merge_accuracy(path: Path, objects: list[dict]) -> dict:
    from tiercel import tasks
    from tiercel.runtime.scene import run_scene, shifted

    spec, model = tasks.get("REG_DET_HBB"), SimpleNamespace(dialect="falcon", pre=SimpleNamespace(size=TILE))
    out = {}
    for cls in CLASSES:
        boxes = [o["hbb"] for o in objects if o["cls"] == cls]
        for noisy in (False, True):
            t0 = time.perf_counter()
            s = run_scene(model, path, "REG_DET_HBB", text=cls, tile=TILE, overlap=OVERLAP, batch=BATCH,
                          predict=oracle(boxes, noisy))
            seconds = time.perf_counter() - t0
            refs = [tasks.Boxes(boxes=[c for c in (_cut(b, r.tile) for b in boxes) if c is not None]) for r in s.tiles]
            per_tile = spec.metric([r.result for r in s.tiles], refs, [(r.tile.w, r.tile.h) for r in s.tiles])
            whole = tasks.Boxes(boxes=boxes)
            merged = spec.metric([s.result], [whole], [(s.width, s.height)])
            naive = tasks.Boxes(boxes=[b for r in s.tiles for b in shifted(r.result, r.tile.x, r.tile.y).boxes])
            unmerged = spec.metric([naive], [whole], [(s.width, s.height)])
            key = spec.headline
            out[f"{cls}/{'noisy' if noisy else 'exact'}"] = {
                "objects": len(boxes), "tiles": len(s.tiles), "per_tile_boxes": len(naive.boxes),
                "merged_boxes": len(s.result.boxes), f"per_tile_{key}": per_tile[key], f"merged_scene_{key}": merged[key],
                f"unmerged_scene_{key}": unmerged[key], "seconds_read_and_merge": seconds}
            print(f"merge {cls:8s} {'noisy' if noisy else 'exact'}: {len(boxes)} objects, {len(naive.boxes)} tile boxes -> "
                  f"{len(s.result.boxes)} merged; {key} per tile {per_tile[key]:.3f}, merged scene {merged[key]:.3f}, "
                  f"unmerged {unmerged[key]:.3f}", flush=True)
    return out


# ---- 2. speed ---------------------------------------------------------------------------------------------------
def bundle(preset: str) -> Path:
    """The preset with random weights, exported (fp32) and quantized int8-dynamic, under WORK (reused)."""
    from tiercel.export.bundle import export_model
    from tiercel.models import build
    from tiercel.models.presets import get_preset
    from tiercel.quantize import quantize_bundle
    from tiercel.runtime.tokenizer import train_bpe

    out = WORK / "bundles" / f"{preset}-int8"
    if (out / "manifest.json").is_file():
        return out
    tok = train_bpe(["Detect all vehicle in the image.", "A parking lot with cars."] * 50, vocab_size=300)
    model = build(preset, seed=0, image_token_id=tok.image_id, vocab_size=max(get_preset(preset).vocab_size, len(tok)))
    fp32 = export_model(model, tok, WORK / "bundles" / f"{preset}-fp32", parity=False, overwrite=True)
    quantize_bundle(fp32, out, "int8-dynamic", n_val=0, overwrite=True)
    return out


def measure(bundle_path: Path, scene: Path, tokens: int, batch: int = BATCH) -> dict:
    """In this (fresh) process: the whole scene through the bundle; seconds, vision/decode split, RSS after
    loading the bundle and peak RSS."""
    import tiercel.runtime as rt
    from tiercel.runtime.profile import forced_generation
    from tiercel.runtime.scene import run_scene

    m = rt.load(bundle_path, threads=1)
    loaded = rss_mb("VmRSS")
    gen = forced_generation(tokens, 1)
    spent = {"vision": 0.0, "generate": 0.0}

    def predict(images, prompts, tiles):
        t0 = time.perf_counter()
        features = m.image_features(m.preprocess_images(images))
        t1 = time.perf_counter()
        ids = m.generate_ids(features, prompts, **gen)
        spent["vision"] += t1 - t0
        spent["generate"] += time.perf_counter() - t1
        return [m.tokenizer.decode(i) for i in ids]

    t0 = time.perf_counter()
    s = run_scene(m, scene, "REG_DET_HBB", text="vehicle", tile=TILE, overlap=OVERLAP, batch=batch, predict=predict)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tiles": len(s.tiles), "tiles_per_s": len(s.tiles) / seconds,
            "vision_s": spent["vision"], "generate_s": spent["generate"],
            "other_s": seconds - spent["vision"] - spent["generate"],
            "batch": batch, "rss_after_load_mb": loaded, "peak_rss_mb": rss_mb("VmHWM")}


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux keeps that across exec, so a child
    started by a parent that had built and quantized models would report the parent's peak."""
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def child(bundle_path: Path, scene: Path, tokens: int, batch: int = BATCH) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--measure", str(bundle_path), str(scene), str(tokens), str(batch)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def estimates(bundle_path: Path, tiles: int, tokens: int) -> dict:
    """ESTIMATED scene seconds per Jetson device: tiles x one tile's estimated time (one row)."""
    from tiercel.runtime.bundle import read_bundle
    from tiercel.runtime.profile.devices import DEVICES, FORMULA, estimate
    from tiercel.runtime.profile.roofline import bundle_work

    b = read_bundle(bundle_path)
    work = bundle_work(b, "onnxruntime", enc_tokens=b.manifest.model.image_tokens + 12, new_tokens=tokens, rows=1)
    out = {"estimate": True, "formula": f"scene_s = tiles x task_ms / 1000; {FORMULA}", "tiles": tiles}
    for key, dev in DEVICES.items():
        e = estimate(work, dev, tokens)
        out[key] = {"per_tile_ms": e["task_ms"], "scene_s": tiles * e["task_ms"] / 1000}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--presets", default="tiercel-nano,tiercel-small")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32, help="generated tokens per tile (forced: no early eos)")
    ap.add_argument("--quick", action="store_true", help="--size 2048 --presets tiercel-nano --rounds 1")
    ap.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)  # BUNDLE SCENE TOKENS BATCH: one run here
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), Path(args.measure[1]), int(args.measure[2]), int(args.measure[3]))))
        return
    if args.quick:
        args.size, args.presets, args.rounds = 2048, "tiercel-nano", 1
    sys.path.insert(0, str(HERE))
    from image_use import commit
    from runtime_cpu import cpu_model

    started = time.perf_counter()
    import onnxruntime
    import rasterio

    result = {"command": "python benchmarks/scene_cpu.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                          "loadavg_start": os.getloadavg(), "onnxruntime": onnxruntime.__version__,
                          "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__},
              "settings": {"tile": TILE, "overlap": OVERLAP, "batch": BATCH, "tokens": args.tokens, "threads": 1,
                           "scheme": "int8-dynamic", "noise_px": NOISE_PX, "drop": DROP}}
    big, objects = raster(args.size)
    sizes = sorted({args.size, 2048})
    scenes = {s: raster(s)[0] for s in sizes}
    result["scene"] = {"size": args.size, "objects": len(objects), "bytes": big.stat().st_size}
    result["merge"] = merge_accuracy(big, objects)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    bundles = {p: bundle(p) for p in presets}
    # batch 4 on every scene size; batch 1 on the smallest too (how much of the peak is the batch's activations)
    plan = [(p, s, BATCH) for p in presets for s in sizes] + [(p, sizes[0], 1) for p in presets]
    runs = {f"{p}@{s}" + ("" if b == BATCH else f"/batch{b}"): [] for p, s, b in plan}
    for r in range(args.rounds):
        for p, s, b in plan:
            row = child(bundles[p], scenes[s], args.tokens, b)
            runs[f"{p}@{s}" + ("" if b == BATCH else f"/batch{b}")].append(row)
            print(f"round {r + 1}/{args.rounds} {p} {s} px batch {b}: " + (row.get("error") or
                  f"{row['tiles']} tiles in {row['seconds']:.1f} s ({row['tiles_per_s']:.2f} tiles/s), "
                  f"vision {row['vision_s']:.1f} s, generate {row['generate_s']:.1f} s, RSS after load "
                  f"{row['rss_after_load_mb']:.0f} MB, peak {row['peak_rss_mb']:.0f} MB"),
                  flush=True)
    result["speed"] = {}
    for key, rows in runs.items():
        ok = [r for r in rows if "error" not in r]
        summary = {k: statistics.median(r[k] for r in ok) for k in ("seconds", "tiles_per_s", "vision_s", "generate_s",
                                                                    "other_s", "rss_after_load_mb", "peak_rss_mb")} if ok else {}
        result["speed"][key] = {**summary, "tiles": ok[0]["tiles"] if ok else None, "runs": rows}
    tiles = next((v["tiles"] for k, v in result["speed"].items() if k.endswith(f"@{args.size}") and v["tiles"]), None)
    result["jetson_estimates"] = {p: estimates(bundles[p], tiles, args.tokens) for p in presets} if tiles else {}
    result["wall_s"] = time.perf_counter() - started
    result["machine"]["loadavg_end"] = os.getloadavg()
    out = HERE / "results" / ("scene_cpu_quick.json" if args.quick else "scene_cpu.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
