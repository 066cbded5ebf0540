"""Write the synthetic benchmark: plan records over splits and scenes, render in parallel, write atomically.

Layout of the output folder: `images/*.png`, `train.json`, `val.json`, `test.json` (Falcon_SFT lists, image
paths relative to the folder) and `meta.json`. Splits get about 80/10/10 of the records and each holds
every task at least once (so n >= 42). Tasks are dealt in shuffled rounds of all 14, then grouped
`RECORDS_PER_SCENE` to a scene: several records share one image, as in real Falcon data, and scenes never
cross splits. A scene's randomness comes from (seed, split, scene index) alone, so the output is
byte-identical for a seed whatever the number of workers.

This module knows nothing about drawing or text; it only schedules scene jobs and writes files.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import tiercel.tasks as T
from tiercel.data.objects import OBJECTS_FORMAT
from tiercel.data.sft import Record, write_records
from tiercel.data.synth import truth
from tiercel.data.synth.catalog import OBJECT_CLASSES, OBJECTS, REGION_CLASSES, SCENE_CLASSES
from tiercel.data.synth.knobs import Knobs
from tiercel.data.synth.layout import changed_twin, sample_scene
from tiercel.data.synth.render import render, render_pair
from tiercel.errors import ConfigError, DataError
from tiercel.fileio import atomic_dir, few
from tiercel.progress import track

GENERATOR_VERSION = "1"
SPLITS = ("train", "val", "test")
RECORDS_PER_SCENE = 10
MIN_SIZE = 64
# Scenes are drawn whole in memory by numpy; 4096 px is over 5x Florence-2's largest input (768) and 48 MB a scene.
MAX_SIZE = 4096
PNG_LEVEL = 1  # fastest zlib level: sensor noise makes higher levels buy only a few percent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Job:
    """One scene to render and the tasks it answers."""

    split: str
    scene: int
    tags: tuple[str, ...]
    seed: int
    size: int
    knobs: Knobs


def split_sizes(n: int) -> dict[str, int]:
    """Records per split: ~80/10/10, each split with at least one round of all 14 tasks."""
    k = len(T.TAGS)
    if n < 3 * k:
        raise ConfigError(f"synth: n must be >= {3 * k} so that every split holds all {k} tasks (got {n})")
    held = max(k, round(0.1 * n))
    return {"train": n - 2 * held, "val": held, "test": held}


def plan(n: int, seed: int, size: int, knobs: Knobs) -> list[Job]:
    """All scene jobs, in output order."""
    jobs = []
    for s, (split, count) in enumerate(split_sizes(n).items()):
        rng = np.random.default_rng([seed, s, 7919])
        tags = [t for _ in range(-(-count // len(T.TAGS))) for t in rng.permutation(T.TAGS)][:count]
        for i in range(0, count, RECORDS_PER_SCENE):
            chunk = tuple(str(t) for t in tags[i : i + RECORDS_PER_SCENE])
            jobs.append(Job(split, i // RECORDS_PER_SCENE, chunk, seed, size, knobs))
    return jobs


# objects.json's channels: object classes, object colours, land-region classes (names do not repeat)
OBJECTS_CHANNELS = [*OBJECT_CLASSES, *sorted({c for spec in OBJECTS.values() for c in spec.colors}), *REGION_CLASSES]


def draw_scene(job: Job):
    """The scene a job draws (the first of its seeded attempts that can answer all its tasks): (scene, changed twin
    or None, records' (tag, prompt, answer)). Deterministic: the generator and analyses of its images share it."""
    split_id = SPLITS.index(job.split)
    for attempt in range(50):
        rng = np.random.default_rng([job.seed, split_id, job.scene, attempt])
        scene = sample_scene(rng, job.size, job.knobs)
        if not scene.objects:  # every task but IMG_CLS needs something to talk about
            continue
        after, changed = changed_twin(rng, scene, job.knobs) if "PIX_CHG" in job.tags else (None, None)
        try:
            return scene, after, [(tag, *truth.make(tag, scene, rng, changed)) for tag in job.tags]
        except truth.NoTruth:
            continue
    # pragma: no cover - 50 scenes in a row without a well-posed record would be a generator bug
    raise DataError(f"synth: scene {job.split}/{job.scene} found no valid layout in 50 attempts")


def image_name(job: Job) -> str:
    """The job's image path, relative to the data folder, without the suffix."""
    return f"images/{job.split}_{job.scene:06d}"


def run_job(job: Job, out: Path) -> tuple[list[tuple[str, str, str, list[str]]], dict]:
    """Draw a scene that can answer all of the job's tasks, save its image(s); return its records and the
    labelled shapes of each image (objects.json)."""
    scene, after, answers = draw_scene(job)
    name = image_name(job)
    if after is None:
        _save(render(scene, job.knobs), out / f"{name}.png")
    else:
        first, second = render_pair(scene, after, job.knobs)
        _save(first, out / f"{name}.png")
        _save(second, out / f"{name}_after.png")
    shapes = {f"{name}.png": scene_shapes(scene)} | ({f"{name}_after.png": scene_shapes(after)} if after else {})
    records = [(tag, prompt, answer, [f"{name}.png"] + ([f"{name}_after.png"] if tag == "PIX_CHG" else []))
               for tag, prompt, answer in answers]
    return records, shapes


def scene_shapes(scene) -> list:
    """objects.json's entries for one image (tiercel.distill.dense.ObjectsFile): every object's outline with its
    class and colour channels, and every named land region's polygon with its class, in the [0, 1] frame."""
    out = [[[OBJECTS_CHANNELS.index(o.cls), OBJECTS_CHANNELS.index(o.color)], _unit(o.outline, scene.size)]
           for o in scene.objects]
    out += [[[OBJECTS_CHANNELS.index(r.name)], _unit(r.polygon, scene.size)] for r in scene.regions if r.name and r.eligible]
    return out


def _unit(points, size: int) -> list:
    return [[round(float(x) / size, 4), round(float(y) / size, 4)] for x, y in np.asarray(points)]


def _save(image: np.ndarray, path: Path) -> None:
    """Write an RGB PNG with the Sub filter on every row and zlib level 1.

    PIL tries all five PNG filters per row, which costs more than rendering the scene; one fixed filter
    compresses these noisy images within a few percent of that, at under half the time. Any PNG reader
    (PIL included) reads the result.
    """
    h, w, _ = image.shape
    sub = image.copy()
    sub[:, 1:] -= image[:, :-1]  # uint8 wrap-around is exactly PNG's modulo-256 difference
    rows = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    rows[:, 0] = 1  # filter type 1: Sub
    rows[:, 1:] = sub.reshape(h, -1)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    path.write_bytes(PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), PNG_LEVEL))
                     + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def generate(out: str | os.PathLike, n: int, size: int = 256, seed: int = 0, workers: int | None = None,
             knobs: Knobs = Knobs(), overwrite: bool = False, progress: Callable[[int], None] | None = None) -> dict:
    """Write the benchmark to `out` (built in a temp folder, then renamed: fileio.atomic_dir). Returns meta.json.

    Args:
        out: output folder; must not exist (or be empty) unless `overwrite`.
        n: number of records over all splits (>= 42).
        size: image side in pixels (>= 64).
        seed: same seed, same bytes.
        workers: processes (default: up to 2, the CPUs available); 1 runs in this process. They are
            forked where the OS allows; elsewhere (spawn) call this from a `__main__`-guarded script.
        progress: called with the number of records written so far after each scene.
    """
    out = Path(out)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"synth: size must be {MIN_SIZE}..{MAX_SIZE} pixels (got {size})")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: folder exists and is not empty; pass --overwrite or choose another --out")
        if not is_synth_folder(out):
            raise DataError(f"{out}: holds files tiercel did not write (no meta.json of the synthetic benchmark), so "
                            "it is not replaced even with --overwrite; choose another --out or empty it yourself")
        foreign = foreign_entries(out)
        if foreign:
            raise DataError(f"{out}: holds files the generator did not write ({few(foreign)}), so it is not replaced even "
                            "with --overwrite; move them out or choose another --out")
    jobs = plan(n, seed, size, knobs)
    # checked above: `out` is missing, empty or the generator's own, so replacing it loses nothing of the user's
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "images").mkdir()
        records = _render_all(jobs, tmp, workers, progress)
        meta = _write_files(tmp, jobs, records, n, size, seed, knobs)
    return meta


def foreign_entries(path: Path) -> list[str]:
    """What in the generator's folder `path` it did not write (relative paths, sorted): entries other than its
    split files, objects.json, meta.json and images/, and in images/ anything but the PNGs objects.json names
    ("images/NAME.png"; any PNG where objects.json cannot be read). Replacing the folder would delete them."""
    own = {f"{split}.json" for split in SPLITS} | {"objects.json", "meta.json", "images"}
    out = sorted(e.name for e in path.iterdir() if e.name not in own)
    images = path / "images"
    if images.is_symlink() or (images.exists() and not images.is_dir()):
        return sorted([*out, "images"])
    if images.is_dir():
        try:
            named = set(json.loads((path / "objects.json").read_text())["images"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            named = None
        out += sorted(f"images/{e.name}" for e in images.iterdir()
                      if not (e.is_file() and not e.is_symlink() and e.suffix == ".png"
                              and (named is None or f"images/{e.name}" in named)))
    return sorted(out)


def is_synth_folder(path: Path) -> bool:
    """Whether `path` was written by this generator: its meta.json names tiercel.data.synth."""
    try:
        return json.loads((Path(path) / "meta.json").read_text()).get("generator") == "tiercel.data.synth"
    except (OSError, ValueError, AttributeError, RecursionError):  # anything else is not this generator's
        return False


def _render_all(jobs: list[Job], tmp: Path, workers: int | None, progress) -> list[list]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = workers or min(2, cpus)
    results, done = [], 0
    if workers <= 1:
        iterator = (run_job(job, tmp) for job in jobs)
        pool = None
    else:
        # fork where there is one: workers start at once and callers need no `if __name__ == "__main__"`
        # guard. Forking a process that runs threads is unsafe, so the CLI's progress bar runs none.
        # A process pool from concurrent.futures, not multiprocessing.Pool: when a worker dies (killed, out of
        # memory) it raises BrokenProcessPool, where Pool.imap waits forever for the dead worker's results.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(method))
        iterator = pool.map(run_job, jobs, [tmp] * len(jobs), chunksize=4)
    try:
        with track("synth", total=sum(len(job.tags) for job in jobs), unit="records") as bar:
            for result in iterator:  # map keeps job order: output does not depend on scheduling
                results.append(result)
                done += len(result[0])
                bar.update(done)
                if progress:
                    progress(done)
    except BrokenProcessPool:
        raise DataError("synth: a worker process died (killed, or out of memory?); rerun with fewer --workers "
                        "or a smaller --size") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _write_files(tmp: Path, jobs: list[Job], results: list[tuple], n: int, size: int, seed: int, knobs: Knobs) -> dict:
    counts = {split: Counter() for split in SPLITS}
    images = Counter()
    shapes = {name: entry for _, per_image in results for name, entry in per_image.items()}
    objects = {"format": OBJECTS_FORMAT, "channels": OBJECTS_CHANNELS, "images": shapes}
    (tmp / "objects.json").write_text(json.dumps(objects, separators=(",", ":")) + "\n", encoding="utf-8")
    for split in SPLITS:
        rows = [r for job, (res, _) in zip(jobs, results) if job.split == split for r in res]
        records = [Record(-1, tag, prompt, answer, paths, []) for tag, prompt, answer, paths in rows]
        write_records(tmp / f"{split}.json", records)
        counts[split].update(r.tag for r in records)
        images[split] = len({p for r in records for p in r.images})
    meta = {
        "generator": "tiercel.data.synth", "version": GENERATOR_VERSION, "dialect": truth.DIALECT,
        "n": n, "size": size, "seed": seed, "records_per_scene": RECORDS_PER_SCENE,
        "classes": list(OBJECT_CLASSES), "scene_classes": list(SCENE_CLASSES), "region_classes": list(REGION_CLASSES),
        "counts": {s: {t: counts[s][t] for t in T.TAGS} for s in SPLITS},
        "images": dict(images), "knobs": knobs.to_dict(),
    }  # fmt: skip
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta
