"""benchmarks/runtime_cpu.py on a CPU with fake paths: rounds rotate which path goes first, the 14-task rounds
say where each path's time went and compare every path with both eager baselines, and the compute bounds are
FLOPs over the measured peak of each path's precision."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import runtime_bounds  # noqa: E402
import runtime_cpu  # noqa: E402

from tiercel import tasks  # noqa: E402
from tiercel.models.presets import get_preset  # noqa: E402

IMAGE = np.zeros((64, 64, 3), np.uint8)


class Clock:
    """A perf_counter that only the fake paths move: wall times in these tests are the stages' own seconds, not
    how fast this machine runs the Python around them."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class FakePath:
    """run / run_all record a vision stage and 1 first + 31 decode steps of `step` seconds on the attached timer
    (and on the clock, when given), and append the path's name to a shared call log."""

    def __init__(self, name: str, backend: str, step: float, calls: list, clock: Clock | None = None):
        self.name, self.backend, self.step, self.calls, self.timer, self.clock = name, backend, step, calls, None, clock

    def generate_ids(self):
        return [[5, 6, 7]]

    def run(self, *args, **kwargs):
        self.calls.append(self.name)
        self.generate_ids()
        if self.timer is not None:
            for name in ["vision_encoder", "first_token"] + ["decode_token"] * (runtime_cpu.NEW_TOKENS - 1):
                self.timer.record(name, self.step)
                if self.clock is not None:
                    self.clock.now += self.step
        return {}

    run_all = run


def fake_paths(calls: list, clock: Clock | None = None) -> dict:
    specs = {"eager": ("torch", 0.004), "eager-bf16": ("torch", 0.002), "onnxruntime": ("onnxruntime", 0.001)}
    return {name: FakePath(name, backend, step, calls, clock) for name, (backend, step) in specs.items()}


def test_each_round_opens_one_path_later():
    calls = []
    paths = fake_paths(calls)
    for i in range(4):
        runtime_cpu.one_round(paths, lambda m: m.run(), f"round {i}", lambda msg: None, start=i)
    assert calls == ["eager", "eager-bf16", "onnxruntime", "eager-bf16", "onnxruntime", "eager",
                     "onnxruntime", "eager", "eager-bf16", "eager", "eager-bf16", "onnxruntime"]


def test_14_tasks_against_both_eager_baselines_with_where_the_time_went(monkeypatch):
    calls, clock = [], Clock()
    monkeypatch.setattr(runtime_cpu, "time", clock)  # timed() reads runtime_cpu.time.perf_counter
    paths = fake_paths(calls, clock)
    stages = runtime_cpu.stage_rounds(paths, IMAGE, "IMG_CAP", 2, lambda msg: None, now=clock.perf_counter)
    every = runtime_cpu.all_tasks_rounds(paths, IMAGE, 2, lambda msg: None)
    n = len(tasks.TAGS)
    assert calls.count("eager") == 3 + 2 * n and calls.count("onnxruntime") == 3 + 1 + 2  # + the run_all warm-up
    went = every["onnxruntime"]["time_goes"]
    assert sum(went["share"].values()) == pytest.approx(1.0)
    assert went["ms"]["decode_steps"] == pytest.approx(31 * 1.0, rel=0.01)  # 31 steps of 1 ms
    assert every["eager"]["time_goes"]["ms"]["vision"] == pytest.approx(n * 4.0, rel=0.01)  # one per task call

    peaks = {"fp32": {"gflops": 150.0}, "bf16": {"gflops": 401.0}}  # no int8 peak: no int8 bound
    result = {"paths": stages, "all_tasks": every}
    bounds = runtime_bounds.add_bounds(result, get_preset("tiny").to_dict(), peaks, [20] * n)
    bound = {"bound_ms": 1.0, "bound_ms_by_precision": {"fp32": 1.0, "bf16": 0.5, "int8": 0.25}}
    targets = runtime_cpu.verdicts(stages, bound, every, bounds)
    ours = targets["onnxruntime"]
    # each path against the bytes its precision reads: eager-bf16's 2 ms step against the bf16 bound (0.5 ms)
    assert targets["eager-bf16"]["decode_vs_own_bound"] == pytest.approx(4.0)
    assert ours["decode_vs_own_bound"] == pytest.approx(1.0)
    assert {"all_tasks_vs_eager", "all_tasks_vs_eager_bf16", "vision_vs_compute_bound"} <= set(ours)
    assert ours["all_tasks_vs_eager"]["target"] == ">= 10.0"
    assert ours["all_tasks_vs_eager_bf16"]["value"] < ours["all_tasks_vs_eager"]["value"]  # bf16 eager is faster
    assert "all_tasks_vs_eager" in targets["eager-bf16"] and "met" not in targets["eager-bf16"]["all_tasks_vs_eager"]


def test_florence2_base_vision_bound_at_the_issue_peaks():
    # issue 28: 380.7 GFLOPs at 150 GFLOP/s fp32 and 401 GFLOP/s bf16
    shape, peaks = get_preset("florence2-base").to_dict(), {"fp32": {"gflops": 150.0}, "bf16": {"gflops": 401.0}}
    assert runtime_bounds.vision_bound(shape, "fp32", peaks)["bound_ms"] == pytest.approx(2537.9, abs=0.1)
    assert runtime_bounds.vision_bound(shape, "bf16", peaks)["bound_ms"] == pytest.approx(949.3, abs=0.1)
    assert runtime_bounds.vision_bound(shape, "int8", peaks)["bound_ms"] is None


def test_matmul_peaks_measure_fp32_and_int8():
    pytest.importorskip("torch")
    peaks = runtime_bounds.matmul_peaks(["fp32", "int8"], size=64, repeats=2)
    int8 = peaks["int8"]
    assert peaks["fp32"]["gflops"] > 0 and int8["gflops"] > 0
    # the int8 peak is the faster of torch._int_mm and onnxruntime's MatMulInteger, and the op says which
    torch_peak = int8.get("torch_int_mm_gflops", int8["gflops"] if int8["op"].startswith("torch._int_mm") else None)
    assert int8["gflops"] == max(torch_peak, int8["onnxruntime_gflops"])
    assert int8["op"].startswith("torch._int_mm" if int8["gflops"] == torch_peak else "onnxruntime MatMulInteger")
