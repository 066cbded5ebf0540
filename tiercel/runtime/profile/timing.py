"""Stage timing for the profiler: the timer the runtime calls into, memory probes, and percentiles.

`StageTimer` is what `tiercel.runtime.model.Model.timer` expects: `stage(name)` returns a context manager that
records (name, seconds) when it exits. One run's events become a breakdown (`breakdown`): seconds per stage,
the list of per-token decode steps, and the search overhead of the generation loop (generate minus its
decoder steps). Knows nothing about graphs, bundles or what a stage computes.
"""

from __future__ import annotations

import math
import time

import numpy as np

STAGES = ("preprocess", "vision_encoder", "embed_tokens", "text_encoder", "first_token", "decode_token",
          "generate_overhead", "postprocess")
PERCENTILES = (50, 90, 99)


class _Span:
    __slots__ = ("timer", "name", "start")

    def __init__(self, timer: StageTimer, name: str):
        self.timer, self.name = timer, name

    def __enter__(self):
        self.start = self.timer.clock()
        return self

    def __exit__(self, *exc):
        self.timer.record(self.name, self.timer.clock() - self.start)
        return False


class StageTimer:
    """Collects (stage, seconds) events; `on_stage` (e.g. a memory probe's sample) runs after each stage."""

    def __init__(self, clock=time.perf_counter, on_stage=None):
        self.clock, self.on_stage = clock, on_stage
        self.events: list[tuple[str, float]] = []

    def stage(self, name: str) -> _Span:
        return _Span(self, name)

    def record(self, name: str, seconds: float) -> None:
        self.events.append((name, seconds))
        if self.on_stage is not None:
            self.on_stage()

    def take(self) -> list[tuple[str, float]]:
        """The events so far; the timer starts empty again."""
        events, self.events = self.events, []
        return events


def breakdown(events: list[tuple[str, float]]) -> dict:
    """One run's events -> {stage: seconds} with "decode_token" as the list of per-step seconds and
    "generate_overhead" = generate - first_token - sum(decode_token) (logits processing, beam bookkeeping)."""
    out: dict = {s: 0.0 for s in STAGES}
    out["decode_token"] = []
    generate = 0.0
    for name, seconds in events:
        if name == "decode_token":
            out["decode_token"].append(seconds)
        elif name == "generate":
            generate += seconds
        else:
            out[name] = out.get(name, 0.0) + seconds
    if generate:
        out["generate_overhead"] = max(generate - out["first_token"] - sum(out["decode_token"]), 0.0)
    out["generate"] = generate
    return out


def percentiles(samples, qs=PERCENTILES) -> dict[str, float]:
    """{"p50", "p90", "p99", "mean", "min", "max", "n"} of `samples` (numpy's linear interpolation); nan when empty."""
    x = np.asarray(list(samples), dtype=np.float64)
    if x.size == 0:
        return {**{f"p{q}": math.nan for q in qs}, "mean": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    values = np.percentile(x, qs)
    return {**{f"p{q}": float(v) for q, v in zip(qs, values)}, "mean": float(x.mean()), "min": float(x.min()),
            "max": float(x.max()), "n": int(x.size)}


class MemoryProbe:
    """Peak resident memory (RSS) of this process, sampled on demand.

    Uses psutil when installed; otherwise the kernel's lifetime peak (`resource.ru_maxrss`), which cannot be
    reset between bundles, so `source` says which one the numbers are.
    """

    def __init__(self):
        try:
            import psutil

            self._process = psutil.Process()
            self.source = "psutil rss, sampled after every stage"
        except ImportError:
            self._process = None
            self.source = "ru_maxrss (process lifetime peak; pip install psutil for per-bundle peaks)"
        self.peak = self.current()

    def current(self) -> int:
        if self._process is not None:
            return int(self._process.memory_info().rss)
        import resource
        import sys

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)

    def sample(self) -> None:
        now = self.current()
        if now > self.peak:
            self.peak = now

    def reset(self) -> int:
        """Start a new peak from the current RSS; returns it."""
        self.peak = self.current()
        return self.peak
