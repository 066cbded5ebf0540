"""`tiercel profile`: time every stage of bundles on backends, with roofline fractions and device estimates.

Each (bundle, backend) pair is loaded once, warmed up, then each task runs `runs` times through the real
runtime (`Model.run`, and `Model.run_all` over the single-image tasks) with a StageTimer attached. Generation
is forced to exactly `new_tokens` tokens (eos never ends it) so runs, tasks and bundles are comparable.
Stage percentiles pool the single-task runs of all tasks; decode_token pools every decode step.

A PyTorch checkpoint directory is profiled the same way when the caller hands over how to open one
(`checkpoints=tiercel.models.open.CHECKPOINTS`, as `tiercel profile` does: transformers, or with backend "torch" /
device "cuda" the static-KV decoder with CUDA graphs); its roofline work counts each stage's share of the
parameters. A run on a GPU gets no roofline fractions: the peaks measured here are the CPU's.

numpy only: this module and everything it imports run on a device without torch. It never imports tiercel.models
(the runtime depends on tasks only): checkpoint opening is passed in.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tiercel import tasks
from tiercel.errors import BundleError, ConfigError
from tiercel.progress import track
from tiercel.runtime.bundle import is_bundle
from tiercel.runtime.generate import MAX_BEAMS
from tiercel.runtime.profile import devices as dev
from tiercel.runtime.profile import roofline
from tiercel.runtime.profile.timing import STAGES, MemoryProbe, StageTimer, breakdown, percentiles
from tiercel.tasks.examples import run_all_inputs, task_inputs

DEFAULT_TASKS = ("IMG_CAP", "REG_DET_HBB")
# The synthetic image's side at most: the largest square tiercel decodes from a file (data.images, 805 MB as RGB);
# 10^8 asked numpy for 142 PB.
MAX_IMAGE_SIZE = 16384
MAX_THREADS = 1024  # as `tiercel eval --threads`: more than any machine's cores is a typo
# The roofline compares these measured stages with their bound.
ROOFLINE_STAGES = ("vision_encoder", "text_encoder", "first_token", "decode_token")


@dataclass
class ProfileSettings:
    """What to run and how often. `num_beams` None keeps each bundle's own setting."""

    runs: int = 5
    warmup: int = 1
    new_tokens: int = 32
    num_beams: int | None = None
    tasks: tuple[str, ...] = DEFAULT_TASKS
    run_all: bool = True
    image_size: int = 768
    threads: int | None = None
    device: str | None = None
    options: dict | None = None  # backend settings (tiercel.runtime.load's `options`)

    def check(self) -> ProfileSettings:
        bounds = (("runs", 1, 100_000), ("warmup", 0, 100_000), ("new_tokens", 2, 65536), ("image_size", 16, MAX_IMAGE_SIZE),
                  ("num_beams", 1, MAX_BEAMS), ("threads", 1, MAX_THREADS))
        for name, low, high in bounds:
            value = getattr(self, name)
            if value is not None and (value < low or (high is not None and value > high)):
                bound = f">= {low}" if high is None else f"{low}..{high}"
                raise ConfigError(f"--{name.replace('_', '-')}: must be {bound} (got {value})")
        if not self.tasks:
            raise ConfigError("--tasks: give at least one task tag")
        self.tasks = tuple(tasks.get(t).tag for t in self.tasks)
        return self

    @property
    def batch_tasks(self) -> list[str]:
        """The single-image tasks that `run_all` batches (none when fewer than two)."""
        tags = [t for t in self.tasks if tasks.get(t).n_images == 1]
        return tags if self.run_all and len(tags) > 1 else []

    def steps(self) -> int:
        """Timed and warm-up calls per (bundle, backend): the progress bar's total."""
        return (self.warmup + self.runs) * (len(self.tasks) + (1 if self.batch_tasks else 0))


def forced_generation(new_tokens: int, num_beams: int | None) -> dict:
    """Generation overrides that produce exactly `new_tokens` tokens, one decoder step each: no eos id can match,
    none is forced, no jump-forward."""
    out = {"max_new_tokens": new_tokens, "eos_token_id": -1, "forced_eos_token_id": None, "jump_forward": False}
    return {**out, "num_beams": num_beams} if num_beams else out


def profile_image(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic size x size RGB test image (gradients plus noise); content does not change the timings."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // (2 * size)], -1)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


@dataclass
class BundleProfile:
    """Everything measured for one (bundle, backend) pair; times in seconds, sizes in bytes."""

    label: str
    bundle: str
    backend: str
    device: str
    preset: str | None
    decoder: str
    num_beams: int
    graphs: dict
    load_seconds: float
    rss: dict
    stages: dict = field(default_factory=dict)
    tokens_per_s: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)
    run_all: dict | None = None
    encoder_tokens: float = 0.0
    work: dict = field(default_factory=dict)
    roofline: dict = field(default_factory=dict)
    roofline_skipped: str | None = None  # why there are no roofline fractions (a run on a GPU)
    estimates: dict = field(default_factory=dict)
    weights_bytes: int | None = None  # a checkpoint: its parameters, each once (graphs count a tied lm_head twice)

    @property
    def size_bytes(self) -> int:
        return self.weights_bytes if self.weights_bytes is not None else sum(g["bytes"] for g in self.graphs.values())

    def stage_p50(self) -> dict[str, float]:
        return {s: v["p50"] for s, v in self.stages.items()}

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("label", "bundle", "backend", "device", "preset", "decoder", "num_beams",
                                             "graphs", "load_seconds", "rss", "stages", "tokens_per_s", "tasks",
                                             "run_all", "encoder_tokens", "roofline", "roofline_skipped", "estimates")}
        out["size_bytes"] = self.size_bytes
        out["work"] = {s: {"flops": w.flops, "bytes": w.bytes, "precision": w.precision} for s, w in self.work.items()}
        return out


@dataclass
class ProfileReport:
    """A whole `tiercel profile` run: the machine, its measured peaks, settings and one profile per pair."""

    machine: dict
    peaks: roofline.MachinePeaks
    settings: ProfileSettings
    profiles: list[BundleProfile]
    devices: dict[str, dev.DeviceSpec]

    def to_dict(self) -> dict:
        s = self.settings
        return {"machine": self.machine, "peaks": self.peaks.to_dict(),
                "settings": {"runs": s.runs, "warmup": s.warmup, "new_tokens": s.new_tokens, "num_beams": s.num_beams,
                             "tasks": list(s.tasks), "run_all_tasks": s.batch_tasks, "image_size": s.image_size,
                             "threads": s.threads, "device": s.device,
                             "options": s.options or {}},
                "units": {"times": "seconds", "sizes": "bytes", "tokens_per_s": "generated tokens per second per sequence"},
                "estimate_formula": dev.FORMULA,
                "devices": {k: d.to_dict() for k, d in self.devices.items()},
                "profiles": [p.to_dict() for p in self.profiles]}


def machine_info() -> dict:
    """CPU model, cores, load average at start, OS and library versions: what a timing needs next to it."""
    from tiercel.runtime.backends import CPU_FLAGS, ORT_CPU_CONFIG

    cpu, flags = platform.processor() or platform.machine(), CPU_FLAGS or frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": [round(x, 2) for x in load],
            "cpu_bf16": sorted(flags & {"avx512_bf16", "amx_bf16"}),  # what OpenVINO's CPU plugin computes bf16 with
            # the session config tiercel gave onnxruntime here: exact int8 products (slower) where u8 x s8 saturates
            "onnxruntime_cpu_config": dict(ORT_CPU_CONFIG),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__}


def _label(path: Path, backend: str, paths: list[Path], backends: list[str]) -> str:
    names = [p.name for p in paths]
    name = path.name if names.count(path.name) == 1 else f"{path.parent.name}/{path.name}"
    return f"{name}/{backend}" if len(backends) > 1 or len(paths) == 1 else name


@dataclass(frozen=True)
class Checkpoints:
    """How to open a PyTorch checkpoint directory, from a caller that may import torch (tiercel.models.open.CHECKPOINTS).

    check(path, options): raises a one-line error for settings a checkpoint does not take (before any timing);
    open(path, backend, device, threads, options): a predictor with the runtime's API and a `timer` attribute.
    """

    check: Callable
    open: Callable


def check_pairs(paths: list[Path], backends: list[str], options: dict | None = None,
                checkpoints: Checkpoints | None = None) -> None:
    """Fail before any timing (one-line errors): a missing directory, an unknown backend, a bundle without graphs
    for a backend or asked for torch, a checkpoint given a setting other than dtype, or no way to open one."""
    from tiercel.runtime.backends import get_backend
    from tiercel.runtime.bundle import read_bundle

    for backend in backends:
        get_backend(backend)
    for path in paths:
        if not is_bundle(path):
            if path.is_file():
                raise BundleError(f"{path}: is a file; give a bundle or checkpoint folder")
            if not path.is_dir():
                raise BundleError(f"{path}: no such bundle or checkpoint directory")
            if checkpoints is None:
                raise ConfigError(f"{path}: no manifest.json, so a checkpoint, which this call cannot open; "
                                  "pass checkpoints=tiercel.models.open.CHECKPOINTS (needs torch) or use `tiercel profile`")
            checkpoints.check(path, options)
            continue
        bundle = read_bundle(path)
        for backend in backends:
            get_backend(backend, "bundle", str(path))
            bundle.entries(backend)


def profile(paths, backends=("onnxruntime",), settings: ProfileSettings | None = None,
            devices: dict[str, dev.DeviceSpec] | None = None, image=None, progress=None,
            checkpoints: Checkpoints | None = None) -> ProfileReport:
    """Profile every bundle on every backend; measure this machine's peaks; add roofline fractions and estimates.

    Args:
        paths: bundle directories.
        backends: backend names; every bundle must have graphs for each.
        devices: device specs for the estimates (default: the Jetson presets in devices.DEVICES).
        image: the image to run on (default: a synthetic settings.image_size square).
        progress: called as progress(label) after every warm-up or timed call.
        checkpoints: how to open checkpoint directories among `paths` (tiercel.models.open.CHECKPOINTS).
    """
    settings = (settings or ProfileSettings()).check()
    paths, backends = [Path(p) for p in paths], list(backends)
    check_pairs(paths, backends, settings.options, checkpoints)
    devices = dict(dev.DEVICES if devices is None else devices)
    machine = machine_info()
    profiles = []
    with track("profile", len(paths) * len(backends) * settings.steps(), "runs") as bar:
        bar.update(note="measuring machine peaks")
        peaks = roofline.measure_machine(settings.threads)
        image = profile_image(settings.image_size) if image is None else image
        tick = _ticks(bar, progress)
        for path in paths:
            for backend in backends:
                p = profile_bundle(path, backend, settings, image, _label(path, backend, paths, backends), tick, checkpoints)
                if str(p.device).lower() == "cpu":
                    p.roofline = roofline.fractions(p.stage_p50(), p.work, peaks, p.backend, settings.options)
                else:  # the peaks are this machine's CPU: a fraction of them says nothing about a GPU's run
                    p.roofline_skipped = f"ran on {p.device}; the measured peaks are this machine's CPU"
                p.estimates = {key: dev.estimate(p.work, d, settings.new_tokens) for key, d in devices.items()}
                profiles.append(p)
    return ProfileReport(machine, peaks, settings, profiles, devices)


def _ticks(bar, progress) -> Callable[[str], None]:
    """progress(label) after every warm-up or timed call, which also advances the bar."""
    def tick(label: str) -> None:
        bar.advance(1, note=f"profiling {label}")
        if progress:
            progress(label)

    return tick


def open_model(path: Path, backend: str, settings: ProfileSettings, checkpoints: Checkpoints | None = None):
    """A bundle on `backend` (tiercel.runtime, no torch), or a checkpoint directory opened by `checkpoints`."""
    if is_bundle(path):
        import tiercel.runtime as rt

        return rt.load(path, backend=backend, device=settings.device, threads=settings.threads, options=settings.options)
    return checkpoints.open(path, backend, settings.device, settings.threads, settings.options)


def profile_bundle(path: Path, backend: str, settings: ProfileSettings, image: np.ndarray, label: str,
                   progress=None, checkpoints: Checkpoints | None = None) -> BundleProfile:
    """Load one bundle (or checkpoint) on one backend and time `settings.runs` runs of every task (after warm-up)."""
    gc.collect()
    memory = MemoryProbe()
    baseline = memory.reset()
    start = time.perf_counter()
    m = open_model(path, backend, settings, checkpoints)
    load_seconds = time.perf_counter() - start
    after_load = memory.current()
    gen = forced_generation(settings.new_tokens, settings.num_beams)
    m.check_new_tokens(m.generation.with_overrides(**gen), option="--new-tokens")  # before any timed call
    beams = settings.num_beams or m.generation.num_beams
    # a torch model on a GPU returns from a stage before its kernels finish: its clock synchronises first
    m.timer = StageTimer(clock=getattr(m, "stage_clock", time.perf_counter), on_stage=memory.sample)
    size = (image.shape[1], image.shape[0])
    singles, per_task, batch = [], {t: [] for t in settings.tasks}, []
    for i in range(settings.warmup + settings.runs):
        timed = i >= settings.warmup
        for tag in settings.tasks:
            extra = {"image2": image[::-1]} if tasks.get(tag).n_images == 2 else task_inputs(tag, size)
            seconds, events = _timed_call(m, lambda: m.run(image, tag, **extra, **gen))
            if timed:
                per_task[tag].append(seconds)
                singles.append(breakdown(events))
            if progress:
                progress(label)
        if settings.batch_tasks:
            texts, regions = run_all_inputs(settings.batch_tasks, size)
            seconds, events = _timed_call(m, lambda: m.run_all(image, settings.batch_tasks, texts, regions, **gen))
            if timed:
                batch.append((seconds, breakdown(events)))
            if progress:
                progress(label)
    m.timer = None
    enc_tokens = _mean_encoder_tokens(m, settings.tasks, size)
    if m.bundle is not None:
        graphs, decoder, weights = roofline.graph_files(m.bundle, backend), m.bundle.manifest.decoder, None
    else:  # a checkpoint: what each stage reads is its share of the parameters; labelled by what ran it
        graphs, decoder, weights = m.weight_graphs(), m.backend, m.weight_bytes()
        label = f"{label[: -len(backend)]}{m.backend}" if label.endswith(f"/{backend}") else label
    cross_rows = 1 if getattr(m, "per_item", False) else beams  # one prompt: its beams share one cross K/V copy
    work = roofline.stage_work(m.shape.shape.model_dump(), graphs, round(enc_tokens), settings.new_tokens, beams,
                               cross_rows)
    result = BundleProfile(label, str(path), m.backend, m.device, m.shape.preset, decoder, beams, graphs,
                           load_seconds, {"baseline": baseline, "after_load": after_load, "peak": memory.peak,
                                          "source": memory.source},
                           encoder_tokens=enc_tokens, work=work, weights_bytes=weights)
    _summarise(result, singles, per_task, batch, settings)
    del m
    gc.collect()
    return result


def _timed_call(m, fn) -> tuple[float, list]:
    m.timer.take()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, m.timer.take()


def _mean_encoder_tokens(m, tags, size) -> float:
    n_img = m.shape.image_tokens
    lengths = []
    for tag in tags:
        prompt = tasks.get(tag).prompt(image_size=size, dialect=m.dialect, **task_inputs(tag, size))
        lengths.append(len(m.tokenizer.prompt_ids(prompt, n_img)))
    return float(np.mean(lengths))


def _summarise(result: BundleProfile, singles: list, per_task: dict, batch: list, settings: ProfileSettings) -> None:
    stages = {s: [b[s] for b in singles] for s in STAGES if s != "decode_token"}
    stages["decode_token"] = [t for b in singles for t in b["decode_token"]]
    stages["generate"] = [b["generate"] for b in singles]
    result.stages = {s: percentiles(v) for s, v in stages.items()}
    result.tokens_per_s = percentiles(settings.new_tokens / b["generate"] for b in singles if b["generate"] > 0)
    result.tasks = {t: percentiles(v) for t, v in per_task.items()}
    if batch:
        n = len(settings.batch_tasks)
        result.run_all = {"tasks": settings.batch_tasks, "end_to_end": percentiles(s for s, _ in batch),
                          "tokens_per_s": percentiles(n * settings.new_tokens / b["generate"] for _, b in batch),
                          "sequential_p50": sum(result.tasks[t]["p50"] for t in settings.batch_tasks)}
