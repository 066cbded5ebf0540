"""Evaluate any predictor (a bundle on a backend, or a PyTorch checkpoint) on a Falcon_SFT file, per task.

A predictor is anything with the runtime's API: `run(image, task, text=, region=, image2=, **generation)` and,
optionally, `run_batch(items, **generation)` or `run_all(image, tasks, texts, regions, **generation)`;
tiercel.runtime.Model and tiercel.models.predict.TorchPredictor both are, so distillation and quantisation losses
are measured by the same code. Records stream from the file; each record's prompt is read back into its
text/region (pixels of the image after `crop`) and re-issued through the predictor, its answer parsed as the
reference, and both scored by the task's metric (tiercel.tasks). Consecutive records are decoded together,
`batch_size` at a time, through `run_batch`: each distinct image goes through the vision encoder once (records on
the same image are consecutive in the synthetic benchmark and Falcon's files, and share one decoded image).

Knows nothing about torch, graphs or drawing (examples.py); imports only tasks, data and progress.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tiercel import progress as shown_progress
from tiercel import tasks as T
from tiercel.data.images import load_image
from tiercel.data.sft import Record, iter_records
from tiercel.errors import ConfigError, TaskError

BATCH_SIZE = 16  # prompts decoded together by default (tiercel eval --batch-size)


@dataclass
class Sample:
    """One scored record: what was asked, the reference and the prediction (both parsed, in pixels)."""

    index: int
    tag: str
    prompt: str
    images: list[str]
    crop: list
    size: tuple[int, int]
    truth: T.Result
    pred: T.Result

    def to_dict(self) -> dict:
        return {"index": self.index, "tag": self.tag, "prompt": self.prompt, "images": self.images, "crop": self.crop,
                "size": list(self.size), "truth": self.truth.to_dict(), "pred": self.pred.to_dict()}


@dataclass
class EvalReport:
    """Per-task metrics (each task's metric output, headline included), counts and kept samples."""

    per_task: dict[str, dict[str, float]]  # the metrics of `protocol`
    counts: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    examples: list[Sample] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. references longer than max_new_tokens, per task
    protocol: str = "tiercel"
    protocols: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # every protocol computed
    intervals: dict[str, list[float]] = field(default_factory=dict)  # tag -> 95% bootstrap interval (tiercel's headline)
    average_interval: list[float] | None = None  # the same for the average of headlines

    def headlines_of(self, protocol: str | None = None) -> dict[str, float]:
        """{tag: headline value} under `protocol` (default: the report's own)."""
        protocol = protocol or self.protocol
        return {tag: scores[T.get(tag).headline_of(protocol)] for tag, scores in self._metrics(protocol).items()}

    def average_of(self, protocol: str | None = None) -> float | None:
        """Mean headline over the tasks evaluated (Falcon's radar-chart scale / 100); None when none were."""
        protocol = protocol or self.protocol
        metrics = self._metrics(protocol)
        return T.average_headline(metrics, protocol) if metrics else None

    @property
    def headlines(self) -> dict[str, float]:
        return self.headlines_of()

    @property
    def average(self) -> float | None:
        return self.average_of()

    def _metrics(self, protocol: str) -> dict[str, dict[str, float]]:
        return self.per_task if protocol == self.protocol else self.protocols.get(protocol, {})

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, **self._scores(self.protocol), "tasks_averaged": len(self.per_task),
                "scale": "fractions; CIDEr as coco-caption gives it (Falcon's radar chart / 100)",
                "protocols": {name: self._scores(name) for name in self.protocols if name != self.protocol},
                "counts": self.counts, "skipped": self.skipped, "seconds": self.seconds,
                "examples": [s.to_dict() for s in self.examples], "predictions": self.predictions,
                "warnings": self.warnings}

    def _scores(self, protocol: str) -> dict:
        ours = protocol == "tiercel" and self.intervals
        return {"per_task": self._metrics(protocol),
                "headline": {t: {"metric": T.get(t).headline_of(protocol), "value": v,
                                 **({"ci95": self.intervals.get(t)} if ours else {})}
                             for t, v in self.headlines_of(protocol).items()},
                "average_headline": self.average_of(protocol),
                **({"average_headline_ci95": self.average_interval} if ours else {})}


@dataclass
class _Item:
    record: Record
    spec: T.TaskSpec
    images: list
    size: tuple[int, int]
    inputs: dict
    truth: T.Result


def check_protocols(protocol: str, tags: list[str]) -> list[str]:
    """The protocols `protocol` names ("both": tiercel's, then Falcon's), checked before any work: an unknown
    name, or Falcon's scoring of `tags` without its libraries, is one TaskError line."""
    if protocol not in (*T.PROTOCOLS, "both"):
        raise TaskError(f"unknown evaluation protocol {protocol!r}; valid protocols: {', '.join(T.PROTOCOLS)}, both")
    names = list(T.PROTOCOLS) if protocol == "both" else [protocol]
    if "falcon" in names:
        from tiercel.tasks import falcon

        falcon.check_dependencies(tags)
    return names


def check_tasks(tasks) -> list[str]:
    """Canonical tags of `tasks` (None: all 14); TaskError names a bad one and lists the valid tags."""
    return list(T.TAGS) if not tasks else list(dict.fromkeys(T.get(t).tag for t in tasks))


def evaluate(predictor, records, root=None, tasks=None, limit: int | None = None, generation: dict | None = None,
             examples: int = 0, batch: bool = True, keep_predictions: bool = False, progress=None,
             protocol: str = "tiercel", batch_size: int = BATCH_SIZE, bootstrap: int = 0) -> EvalReport:
    """Score `predictor` on Falcon_SFT records, task by task.

    Args:
        records: a Falcon_SFT file (.json list or .jsonl, streamed) or an iterable of tiercel.data Records.
        root: folder the records' image paths are relative to (default: the file's folder, or the cwd).
        tasks: tags to evaluate (default: all 14); records of other tasks and without a tag are skipped.
        limit: at most this many records per task (stops reading once every task has them).
        generation: decoding overrides passed to every run, e.g. {"num_beams": 1, "max_new_tokens": 64}.
        examples: keep this many samples per task in `report.examples` (for examples.write_examples).
        batch: decode up to `batch_size` consecutive records together (`run_batch`: one vision pass per distinct
            image, one decoding loop for all prompts); False: one record at a time.
        batch_size: prompts per batch (with `batch`).
        keep_predictions: keep every record's parsed prediction in `report.predictions`, with what scoring it
            needs: the parsed reference (`truth`), the image size (W, H) and the record's crop, so the rows can be
            scored again (tiercel.tasks.from_dict, spec.metric) without the images.
        progress: called with the number of records scored so far.
        protocol: "tiercel" (default), "falcon" (Falcon's published evaluation, tiercel.tasks.falcon) or "both":
            tiercel's in `report.per_task`, Falcon's in `report.protocols["falcon"]`.
        bootstrap: resamples of the records behind the 95% intervals of tiercel's headlines and their average
            (`report.intervals`, `report.average_interval`; tiercel.tasks.metrics.resample.intervals); 0 (the
            default here; `tiercel eval` asks for 1,000): none. Not counted in `report.seconds`.
    """
    wanted = check_tasks(tasks)
    protocols = check_protocols(protocol, wanted)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: must be >= 1 (got {limit})")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1 (got {batch_size})")
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap: must be >= 0 (got {bootstrap})")
    file = None
    if isinstance(records, (str, os.PathLike)):
        file = records
        root = Path(records).parent if root is None else root
        records = iter_records(records)
    root = Path(root) if root is not None else Path()
    generation = generation or {}
    collected = {t: ([], [], [], []) for t in wanted}
    answers: dict[str, list[str]] = {t: [] for t in wanted}  # reference texts, for the truncation count
    report = EvalReport({}, {}, {})
    start, done = time.perf_counter(), 0
    total = _expected(file, wanted, limit) if file is not None and shown_progress.active() else None
    with shown_progress.track("eval", total, "records") as bar:
        for group in _groups(_items(records, root, wanted, limit, report.skipped), predictor, batch, batch_size):
            for item, pred in zip(group, _predict(predictor, group, generation)):
                preds, refs, sizes, crops = collected[item.spec.tag]
                preds.append(pred), refs.append(item.truth), sizes.append(item.size), crops.append(item.record.crop)
                answers[item.spec.tag].append(item.record.answer)
                if sum(1 for s in report.examples if s.tag == item.spec.tag) < examples:
                    report.examples.append(_sample(item, pred))
                if keep_predictions:
                    report.predictions.append({"index": item.record.index, "tag": item.spec.tag, "pred": pred.to_dict(),
                                               "truth": item.truth.to_dict(), "size": list(item.size),
                                               "crop": list(item.record.crop)})
            done += len(group)
            bar.update(done)
            if progress:
                progress(done)
    for tag, (preds, refs, sizes, crops) in collected.items():
        if preds:
            for name in protocols:
                scores = T.get(tag).metric(preds, refs, sizes, protocol=name, crops=crops)
                report.protocols.setdefault(name, {})[tag] = scores
            report.counts[tag] = len(preds)
    report.protocol = protocols[0]
    report.per_task = report.protocols.get(report.protocol, {})
    report.seconds = time.perf_counter() - start
    if bootstrap and "tiercel" in protocols and report.counts:
        from tiercel.tasks.metrics.resample import intervals

        report.intervals, report.average_interval = intervals(
            {t: v[:3] for t, v in collected.items() if v[0]}, rounds=bootstrap)
    report.warnings = _cut_references(predictor, answers, generation)
    return report


def _cut_references(predictor, answers: dict[str, list[str]], generation: dict) -> list[str]:
    """One line per task where more than 1% of the reference answers are longer than the tokens the model may
    generate: those scores are capped by the setting, not by the model."""
    from tiercel.data.sft import truncation_lines

    tokenizer = getattr(predictor, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "lengths"):
        return []
    limit = generation.get("max_new_tokens") or predictor.generation.max_new_tokens
    counts = {tag: {"records": len(refs), "answers_cut": sum(n + 1 > limit for n in tokenizer.lengths(refs))}
              for tag, refs in answers.items() if refs}  # + 1: the closing </s> is generated too
    return truncation_lines(counts, limit, 0, answers="max_new_tokens")


def _expected(file, wanted: list[str], limit: int | None) -> int:
    """Records `evaluate` will score, read from the file's tags (its answers and images are not checked here)."""
    counts = dict.fromkeys(wanted, 0)
    for record in iter_records(file):
        if record.tag in counts:
            counts[record.tag] += 1
    return sum(c if limit is None else min(c, limit) for c in counts.values())


def _items(records, root: Path, wanted: list[str], limit: int | None, skipped: dict):
    """Records of the wanted tasks, loaded: images (cropped), size, prompt inputs, parsed reference."""
    counts = dict.fromkeys(wanted, 0)
    last = (None, None)  # (paths, crop) and images of the last record: consecutive records share the arrays
    for record in records:
        if limit is not None and all(c >= limit for c in counts.values()):
            return
        if record.tag not in counts:
            key = "no task tag" if record.tag is None else "other task"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        if limit is not None and counts[record.tag] >= limit:
            continue
        spec = T.get(record.tag)
        key = (tuple(record.image_paths(root)), tuple(record.crop))
        images = last[1] if last[0] == key else [load_image(p, record.crop) for p in key[0]]
        last = (key, images)
        if len(images) != spec.n_images:
            raise ConfigError(f"record {record.index}: {spec.tag} takes {spec.n_images} image(s), the record has "
                              f"{len(images)}; check it with `tiercel data validate`")
        size = (images[0].shape[1], images[0].shape[0])
        truth = spec.parse(record.answer, image_size=size)
        if isinstance(truth, T.Count) and truth.value is None:
            key = f"{spec.tag}: answer holds no number"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        read = spec.read_prompt(record.prompt, image_size=size)
        inputs = {k: v for k, v in read.items() if k in ("text", "region") and v is not None}
        counts[record.tag] += 1
        yield _Item(record, spec, images, size, inputs, truth)


def _groups(items, predictor, batch: bool, size: int):
    """The items in the batches `_predict` runs: up to `size` consecutive items with `run_batch`; without it
    (a predictor with `run_all` only), runs of items on the same image(s) and crop with distinct single-image tasks."""
    if batch and hasattr(predictor, "run_batch"):
        group = []
        for item in items:
            group.append(item)
            if len(group) == size:
                yield group
                group = []
        if group:
            yield group
        return
    batch = batch and hasattr(predictor, "run_all")
    group, key = [], None
    for item in items:
        k = (tuple(item.record.images), tuple(item.record.crop))
        fits = batch and item.spec.n_images == 1 and k == key and item.spec.tag not in {g.spec.tag for g in group}
        if group and not fits:
            yield group
            group = []
        group.append(item)
        key = k if item.spec.n_images == 1 else None
    if group:
        yield group


def _predict(predictor, group: list[_Item], generation: dict) -> list[T.Result]:
    if len(group) == 1:
        item = group[0]
        extra = {"image2": item.images[1]} if item.spec.n_images == 2 else {}
        return [predictor.run(item.images[0], item.spec.tag, **item.inputs, **extra, **generation)]
    if hasattr(predictor, "run_batch"):
        return predictor.run_batch([{"image": i.images[0], "task": i.spec.tag, **i.inputs,
                                     **({"image2": i.images[1]} if i.spec.n_images == 2 else {})} for i in group],
                                   **generation)
    tags = [i.spec.tag for i in group]
    texts = {i.spec.tag: i.inputs["text"] for i in group if "text" in i.inputs}
    regions = {i.spec.tag: i.inputs["region"] for i in group if "region" in i.inputs}
    results = predictor.run_all(group[0].images[0], tags, texts=texts, regions=regions, **generation)
    return [results[t] for t in tags]


def _sample(item: _Item, pred: T.Result) -> Sample:
    r = item.record
    return Sample(r.index, item.spec.tag, r.prompt, list(r.images), list(r.crop), item.size, item.truth, pred)


def open_predictor(path: str | Path, backend: str = "onnxruntime", device: str | None = None, threads: int | None = None,
                   options: dict | None = None):
    """A bundle directory (manifest.json) opened on `backend`, or a checkpoint directory read by PyTorch.

    A checkpoint runs as a TorchPredictor (transformers, fp32, CPU), or as a GraphedPredictor (fp16, CUDA graphs,
    tiercel.models.static_decode) with backend "torch" or device "cuda" (tiercel.models.open). `threads`: the
    backend's intra-op threads, or torch's (process-wide) for a checkpoint; `options`: backend settings for a
    bundle (tiercel.runtime.load), or {"dtype": "fp32"|"fp16"|"bf16"} for a checkpoint.
    """
    from tiercel.runtime.backends import get_backend
    from tiercel.runtime.bundle import is_bundle

    path = Path(path)
    get_backend(backend)
    if is_bundle(path):
        get_backend(backend, "bundle", str(path))
        import tiercel.runtime

        return tiercel.runtime.load(path, backend=backend, device=device, threads=threads, options=options)
    from tiercel.models.open import open_checkpoint  # torch only when a checkpoint is opened

    return open_checkpoint(path, backend, device, threads, options)


def prompt_check(predictor, records, root=None, max_new_tokens: int = 32) -> dict:
    """Whether a model's answers depend on the task prompt: every single-image task on the first record's image
    (one greedy `run_all`) and how many distinct answers came back.

    One answer for every task means the model ignores its prompt: it has collapsed. The demo's teacher did that
    at a short warmup on one CPU and not on another (docs/recipes.md, the teacher check); the pipeline runs this on the teacher it
    trains. `warning` is None, or a sentence fragment ("gave one answer to all 13 task prompts on ...").
    """
    from tiercel.tasks.examples import run_all_inputs

    record = next(iter_records(records))
    image = load_image(record.image_paths(root)[0], record.crop)
    size = (image.shape[1], image.shape[0])
    tags = [t for t in T.TAGS if T.get(t).n_images == 1]
    results = predictor.run_all(image, tags, *run_all_inputs(tags, size), max_new_tokens=max_new_tokens, num_beams=1)
    distinct = len({r.raw for r in results.values()})
    warning = None
    if distinct == 1:
        raw = results[tags[0]].raw
        shown = "an empty answer" if not raw else repr(raw[:60]) + ("..." if len(raw) > 60 else "")
        warning = f"gave one answer to all {len(tags)} task prompts on {record.images[0]} ({shown}): it ignores its prompt"
    return {"image": record.images[0], "tasks": len(tags), "distinct_answers": distinct, "warning": warning}
