"""Calibration data: real images and prompts, and the feeds every graph sees when the fp32 bundle runs them.

Samples come from a Falcon_SFT file (or a `tiercel data synth` folder: its train/val/test.json). The fp32
bundle is opened with tiercel.runtime and each of its sessions is wrapped in a `Recorder`, so the feeds are
exactly what the runtime passes during real greedy generation: the vision encoder's pixel values, the prompt
embeddings, and the decoder's inputs at EVERY generated position (the first step for decoder_model, each later
step with its growing KV cache for decoder_with_past_model), not only the first step (FALCON.md: calibrating on
the first step alone breaks decoders). Steps are then thinned evenly to `n` per graph, keeping all positions
represented. Knows nothing about how the feeds are used (onnx_backend.py, openvino_backend.py, sensitivity.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tiercel.errors import ConfigError, DataError
from tiercel.progress import track


@dataclass
class Sample:
    """One record ready for the runtime: the image (PIX_CHG: the tiled pair), prompt text and reference answer."""

    tag: str
    prompt: str
    answer: str
    image: np.ndarray
    size: tuple[int, int]  # (W, H) that answers refer to (one frame for PIX_CHG)
    index: int = -1  # the record's position in its file (load_samples), so a larger draw can skip what was drawn


@dataclass
class Calibration:
    """Recorded feeds per graph name, plus where they came from."""

    feeds: dict[str, list[dict]] = field(default_factory=dict)
    every: dict[str, list[dict]] = field(default_factory=dict)  # capture(keep_all=...): unthinned, for GPTQ
    source: str = ""
    samples: int = 0
    positions: list[int] = field(default_factory=list)  # past length of each kept decoder_with_past feed

    def summary(self) -> dict:
        pos = self.positions
        return {"source": self.source, "samples": self.samples, "feeds": {g: len(f) for g, f in self.feeds.items()},
                "decoder_positions": {"min": min(pos), "max": max(pos), "distinct": len(set(pos))} if pos else {}}


def sft_file(calib: str | os.PathLike, split: str = "train") -> Path:
    """A Falcon_SFT file, or `<folder>/<split>.json` when `calib` is a synth folder."""
    path = Path(calib)
    if path.is_dir():
        path = path / f"{split}.json"
    if not path.is_file():
        raise DataError(f"{path}: no such Falcon_SFT file; pass --calib FILE or a `tiercel data synth` folder")
    return path


def load_samples(calib: str | os.PathLike, root: str | os.PathLike | None = None, n: int = 128,
                 split: str = "train", per_task: int | None = None, skip: frozenset[int] = frozenset()) -> list[Sample]:
    """Up to `n` samples with a known task tag and an image, in file order; images relative to `root`
    (default: the file's folder). `per_task` caps each task's share, so a file sorted by task still gives
    every task its samples (records over a task's cap are skipped without reading their images). Records whose
    position is in `skip` count toward `n` and the caps but are not returned (nor their images read): a draw of
    2n with `skip` = an earlier draw of n returns what the larger draw adds to it."""
    from tiercel import tasks
    from tiercel.data import iter_records, load_image

    if n < 1:
        raise ConfigError(f"--n: must be >= 1 (got {n})")
    path = sft_file(calib, split)
    root = Path(root) if root is not None else path.parent
    out, counts, taken = [], {}, 0
    for index, rec in enumerate(iter_records(path)):
        if rec.tag not in tasks.TASKS or not rec.images:
            continue
        if per_task is not None and counts.get(rec.tag, 0) >= per_task:
            continue
        counts[rec.tag] = counts.get(rec.tag, 0) + 1
        taken += 1
        if index not in skip:
            images = [load_image(p, rec.crop or None) for p in rec.image_paths(root)]
            h, w = images[0].shape[:2]
            image = tasks.tile_change_pair(images[0], images[1]) if tasks.get(rec.tag).n_images == 2 else images[0]
            out.append(Sample(rec.tag, rec.prompt, rec.answer, image, (w, h), index))
        if taken == n:
            break
    if not out and not skip:
        raise DataError(f"{path}: no records with a Falcon task tag and an image")
    return out


class Recorder:
    """A session wrapper that keeps every feed it is given (references; the runtime never mutates them).

    A decoder's self-attention cache grows by one position a step, and each step's cache is a new array: kept
    as they come, a sample's steps would hold O(steps^2) of it (by count, 77 MB per 64-token sample at the
    Florence-2-base shape, 10 GB for the default 128 samples). So while each step's cache starts with the
    previous step's (checked equal: a reordered cache, as beam search makes, starts a new chain), all earlier
    feeds of the chain are re-pointed to views of the newest array, and the arrays they held are freed.
    onnxruntime and OpenVINO both take the strided views as inputs.
    """

    def __init__(self, session):
        self.session, self.input_names, self.seen = session, session.input_names, []
        self._chains: dict[str, list[dict]] = {}  # cache input name -> feeds whose array is a prefix of the newest

    def run(self, feeds):
        feeds = dict(feeds)
        for name, new in feeds.items():
            if ".decoder." in name and isinstance(new, np.ndarray):
                self._extend(name, new, feeds)
        self.seen.append(feeds)
        return self.session.run(feeds)

    def _extend(self, name: str, new: np.ndarray, feeds: dict) -> None:
        chain = self._chains.setdefault(name, [])
        axis = _grown_axis(chain[-1][name], new) if chain else None
        if axis is None:
            chain.clear()
        for f in chain:
            f[name] = new[(slice(None),) * axis + (slice(0, f[name].shape[axis]),)]
        chain.append(feeds)


def _grown_axis(old, new: np.ndarray) -> int | None:
    """The axis along which `new` extends `old` (same values before it), or None."""
    if not isinstance(old, np.ndarray) or old.ndim != new.ndim or old.dtype != new.dtype:
        return None
    grown = [axis for axis, (a, b) in enumerate(zip(old.shape, new.shape)) if a != b]
    if len(grown) != 1 or old.shape[grown[0]] > new.shape[grown[0]]:
        return None
    axis = grown[0]
    return axis if np.array_equal(new[(slice(None),) * axis + (slice(0, old.shape[axis]),)], old) else None


def thin(items: list, n: int) -> list:
    """`n` items evenly spread over `items` (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def capture(bundle: str | os.PathLike, samples: list[Sample], n: int = 128, max_new_tokens: int = 64,
            backend: str = "onnxruntime", keep_all=(), threads: int | None = None) -> Calibration:
    """Run the fp32 `bundle` on `samples` (greedy, up to `max_new_tokens`) and record each graph's feeds.

    keep_all: graphs whose every feed is also kept unthinned in `Calibration.every` (GPTQ's Hessians want every
    decode step: one token a step gives a decoder as many activation rows as it has feeds). The recorders hold
    all of them until thinning anyway (a sample's steps share its encoder KV arrays; each step adds its growing
    self-attention cache), so this keeps them alive longer, not more of them.
    """
    import tiercel.runtime

    model = tiercel.runtime.load(bundle, backend=backend, threads=threads)
    recorders = {name: Recorder(s) for name, s in model.sessions.items()}
    model.sessions = recorders
    with track("calibrate", len(samples), "samples") as bar:
        for s in samples:
            generate(model, s, max_new_tokens=max_new_tokens)
            bar.advance(1)
    calib = Calibration(source=str(bundle), samples=len(samples))
    for name, rec in recorders.items():
        calib.feeds[name] = thin(rec.seen, n)
        if name in keep_all:
            calib.every[name] = rec.seen
    past = calib.feeds.get("decoder_with_past_model", [])
    calib.positions = [int(f["past_key_values.0.decoder.key"].shape[2]) for f in past]
    return calib


def generate(model, sample: Sample, max_new_tokens: int = 64, num_beams: int = 1) -> list[int]:
    """Token ids the runtime model generates for `sample` (its recorded prompt, not a rebuilt one)."""
    features = model.image_features(model.pixel_values(sample.image))
    return model.generate_ids(features, [sample.prompt], num_beams=num_beams, max_new_tokens=max_new_tokens)[0]
