"""A folder or a stream of images through one model: prefetch, progress, one JSON line per image, resumable.

    m = tiercel.runtime.load("bundle/")
    summary = run_folder(m, "photos/", "results.jsonl", task="REG_DET_HBB", text="ship")
    summary.to_dict()   # {"images": 50, "done": 48, "skipped": 0, "failed": 2, "seconds": 21.3, "images_per_s": 2.35}

A background thread decodes the next images (at most `prefetch` of them waiting, plus the one it is decoding)
while the model answers the current one. A file that cannot be read is one error line in the results and one
line on stderr; the run goes on. A rerun with the same results file skips the images already answered there
(tiercel.runtime.jsonl) and retries those that failed. The per-image step is two callables: `load(path)` runs in
the prefetch thread, `answer(model, loaded) -> dict` in the caller's; a tiled scene reader passes
`load=lambda p: p` and an `answer` that tiles the path.

With `batch` > 1 the readable images go `batch` at a time through the model's `run_batch` (one vision call, one
decoding loop), which pays on small models and GPUs; lines still come in listing order.

Knows nothing about backends: `model` is anything with the runtime's run/run_all API (run_batch for `batch`).
"""

from __future__ import annotations

import glob
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiercel import progress, tasks
from tiercel.data.images import load_image
from tiercel.errors import ConfigError, DataError
from tiercel.runtime.jsonl import ResultsFile, key

# What the plain-image path reads (PIL); GeoTIFF scenes are PIL-readable .tif files too.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
ALL = "all"  # the "task" of a line written by --all: its result maps each tag to that task's result


@dataclass
class Summary:
    """What one run did: `images` listed, `done` answered now, `skipped` answered before, `failed` unreadable now."""

    images: int
    done: int
    skipped: int
    failed: int
    seconds: float
    out: str

    def to_dict(self) -> dict:
        rate = (self.done + self.failed) / self.seconds if self.seconds > 0 else None
        return {"images": self.images, "done": self.done, "skipped": self.skipped, "failed": self.failed,
                "seconds": round(self.seconds, 3), "images_per_s": None if rate is None else round(rate, 3),
                "out": self.out}


def list_images(spec: str | Path, recursive: bool = False, option: str = "--images") -> list[str]:
    """The image files of a folder (sorted; subfolders too with `recursive`) or of a glob pattern (`**` crosses
    folders), as paths that start with `spec`. Hidden files are left out. ConfigError when there are none."""
    spec = str(spec)
    suffixes = ", ".join(IMAGE_SUFFIXES)
    if Path(spec).is_dir():
        pattern = "**/*" if recursive else "*"
        found = sorted(str(p) for p in Path(spec).glob(pattern)  # a dangling link is listed: its line says so
                       if (p.is_file() or (p.is_symlink() and not p.exists())) and _is_image(p)
                       and not any(part.startswith(".") for part in p.relative_to(spec).parts))
        if not found:
            more = "" if recursive else "; --recursive reads its subfolders too"
            raise ConfigError(f"{option} {spec}: holds no images ({suffixes}){more}")
        return found
    matches = sorted(glob.glob(spec, recursive=True))
    if not matches:
        raise ConfigError(f"{option} {spec}: no such folder, and no file matches it as a glob pattern; give a folder "
                          "of images or a pattern such as 'photos/*.png'")
    found = [m for m in matches if Path(m).is_file() and _is_image(Path(m))]
    if not found:
        raise ConfigError(f"{option} {spec}: matches no image files ({suffixes})")
    return found


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def answerer(task: str | None = None, text: str | None = None, all_tasks: bool = False,
             **generation) -> Callable[[Any, Any], dict]:
    """`answer(model, image) -> dict`: the to_dict() of model.run(image, task, text), or with `all_tasks` a
    {tag: result} of one run_all over every single-image task the text allows. Checks the task first."""
    tags = folder_tags(task, text, all_tasks)
    if all_tasks:
        texts = {t: text for t in tags if tasks.get(t).needs_text} if text else None

        def answer_all(model, image) -> dict:
            return {t: r.to_dict() for t, r in model.run_all(image, tags, texts=texts, **generation).items()}

        return answer_all

    def answer(model, image) -> dict:
        return model.run(image, task=task, text=text, **generation).to_dict()

    return answer


def batch_answerer(task: str | None = None, text: str | None = None, all_tasks: bool = False,
                   **generation) -> Callable[[Any, list], list[dict]]:
    """`answer(model, images) -> [dict, ...]`: answerer's dicts for several images from one `run_batch` (each image
    through the vision encoder once, every prompt decoded together)."""
    tags = folder_tags(task, text, all_tasks)
    asks = [{"task": t, **({"text": text} if text and tasks.get(t).needs_text else {})} for t in tags]

    def answer(model, images: list) -> list[dict]:
        results = model.run_batch([{"image": image, **ask} for image in images for ask in asks], **generation)
        rows = [results[i:i + len(asks)] for i in range(0, len(results), len(asks))]
        if all_tasks:
            return [{t: r.to_dict() for t, r in zip(tags, row)} for row in rows]
        return [row[0].to_dict() for row in rows]

    return answer


def folder_tags(task: str | None, text: str | None, all_tasks: bool) -> list[str]:
    """The tags a folder run answers on each image; ConfigError for a task one image and `text` cannot serve."""
    if all_tasks:
        if task:
            raise ConfigError("--all and --task: give one of them with --images")
        return [t for t in tasks.TAGS if tasks.get(t).n_images == 1 and not tasks.get(t).needs_region
                and (text or not tasks.get(t).needs_text)]
    if not task:
        raise ConfigError("--task: required unless --all is given (e.g. --task IMG_CAP)")
    spec = tasks.get(task)
    if spec.n_images != 1:
        raise ConfigError(f"--task {spec.tag}: needs two images, and --images gives one at a time; run it with "
                          "--image and --image2")
    if spec.needs_region:
        raise ConfigError(f"--task {spec.tag}: needs a region, which --images does not take; run it with --image "
                          "and --region")
    if spec.needs_text and not text:
        raise ConfigError(f"--task {spec.tag}: needs --text (e.g. --text ship)")
    return [spec.tag]


def run_folder(model, images: str | Path | Sequence[str], out: str | Path, task: str | None = None,
               text: str | None = None, all_tasks: bool = False, *, prefetch: int = 4, recursive: bool = False,
               retry_errors: bool = True, overwrite: bool = False, load: Callable[[str], Any] = load_image,
               answer: Callable[[Any, Any], dict] | None = None, batch: int = 1, **generation) -> Summary:
    """Answer every image of a folder, a glob pattern or a list of paths, one JSON line each in `out`.

    Args:
        model: anything with run/run_all (tiercel.runtime.Model, a PyTorch predictor).
        images: a folder, a glob pattern (see list_images), or the paths themselves.
        out: the results file (tiercel.runtime.jsonl); the images already answered there are skipped.
        task, text, all_tasks: what to ask of each image, as `tiercel run` takes them.
        prefetch: images decoded ahead by a background thread; 0 decodes in the caller's thread.
        retry_errors: answer again the images whose earlier line is an error (default); False skips them too.
        overwrite: start `out` afresh (only a results file: a file tiercel did not write is never replaced).
        load, answer: the per-image step (default: load_image, then answerer(task, text, all_tasks)).
        batch: images answered together through the model's run_batch (default 1: one at a time). Not with a
            custom `answer`. A line's `seconds` is then its batch's time over the images in it.
        generation: num_beams, max_new_tokens, passed to run/run_all.
    """
    tags = folder_tags(task, text, all_tasks)  # before the results file is opened: a typo costs nothing
    if batch < 1:
        raise ConfigError(f"--batch: needs 1 or more images per batch (got {batch})")
    if batch > 1 and answer is not None:
        raise ConfigError("--batch: batches images for run's own tasks, not for a custom answer (tiled scenes batch "
                          "their tiles instead)")
    batched = batch_answerer(task, text, all_tasks, **generation) if batch > 1 else None
    answer = answer or answerer(task, text, all_tasks, **generation)
    paths = list_images(images, recursive) if isinstance(images, (str, Path)) else [str(p) for p in images]
    label = {"task": ALL if all_tasks else tags[0]} | ({"text": text} if text else {})
    t0 = time.perf_counter()
    with ResultsFile(out, overwrite=overwrite) as results:
        answered = {key(line) for line in results.lines if "result" in line or not retry_errors}
        todo = [p for p in paths if key({"image": p, **label}) not in answered]
        done = failed = 0
        with progress.track("run", total=len(paths), unit="images", completed=len(paths) - len(todo)) as bar:
            frames = prefetched(todo, load, prefetch)
            try:
                for group in _batches(frames, batch):
                    for path, line in zip((p for p, _, _ in group), _answer_group(model, answer, batched, group, label)):
                        results.append(line)
                        if "error" in line:
                            failed += 1
                            print(f"warning: {line['error']} (recorded in {out})", file=sys.stderr, flush=True)
                        else:
                            done += 1
                        bar.advance(1, note=Path(path).name)
            finally:
                frames.close()  # stops the prefetch thread, also on Ctrl-C
    return Summary(len(paths), done, len(paths) - len(todo), failed, time.perf_counter() - t0, str(out))


def _batches(frames, size: int):
    """Runs of consecutive (path, image, error) items holding `size` readable images (the last may hold fewer)."""
    group, good = [], 0
    for item in frames:
        group.append(item)
        good += item[2] is None
        if good == size:
            yield group
            group, good = [], 0
    if group:
        yield group


def _answer_group(model, answer, batched, group: list, label: dict) -> list[dict]:
    """The lines of a run of items, in order: one `batched` call for its readable images when batching (each alone
    through `answer` if the batch hits a bad input, so only that image gets the error line), else one by one."""
    good = [image for _, image, error in group if error is None]
    if batched is not None and len(good) > 1:
        start = time.perf_counter()
        try:
            answers = iter(batched(model, good))
        except DataError:
            pass
        else:
            seconds = round((time.perf_counter() - start) / len(good), 4)
            return [{"image": path, **label, **({"error": error} if error is not None else
                                                {"result": next(answers), "seconds": seconds})}
                    for path, _, error in group]
    return [_answer(model, answer, image, error, {"image": path, **label}) for path, image, error in group]


def _answer(model, answer, image, error: str | None, head: dict) -> dict:
    """The line for one image: its result and the seconds the model took, or the reason it could not be read."""
    if error is None:
        start = time.perf_counter()
        try:
            result = answer(model, image)
        except DataError as err:  # a bad input found while answering (a tiled reader's window, say)
            error = _one_line(err)
        else:
            return head | {"result": result, "seconds": round(time.perf_counter() - start, 4)}
    return head | {"error": error}


def prefetched(paths: Sequence[str], load: Callable[[str], Any], size: int) -> Iterator[tuple[str, Any, str | None]]:
    """(path, load(path), None), or (path, None, reason) when load raised, for each path in order. With `size` > 0
    a daemon thread loads ahead, holding at most `size` loaded images in its queue (and one in hand); closing
    the iterator stops it."""
    if size <= 0:
        yield from (_load(load, p) for p in paths)
        return
    ready: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)  # wakes up to see `stop` once the consumer has gone
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for path in paths:
                if not put(_load(load, path)):
                    return
            put(_END)
        except BaseException as err:  # what _load does not catch reaches the consumer instead of hanging it
            put(err)

    worker = threading.Thread(target=work, name="tiercel-prefetch", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=1.0)  # a daemon: a load still under way does not hold the process


_END = object()  # the prefetch thread's last item


def _load(load: Callable[[str], Any], path: str) -> tuple[str, Any, str | None]:
    try:
        return path, load(path), None
    except DataError as err:
        return path, None, _one_line(err)
    except Exception as err:  # any decoder failure is this file's, not the run's: PIL plugins raise many kinds
        return path, None, f"{path}: cannot read image ({type(err).__name__}: {_one_line(err)})"


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
