"""benchmarks/gpu.py on a CPU with fake paths: a path that fails mid-run costs only its own numbers, the headline
speed-ups are medians of per-round ratios, and the machine probes read what nvidia-smi and git give."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu  # noqa: E402
import gpu_machine  # noqa: E402

IMAGE = np.zeros((64, 64, 3), np.uint8)


class FakePath:
    """What the rounds call on a path: run / run_all record 1 first and 31 decode steps of `step` seconds on the
    attached timer; from call `fail_at` on they raise, as an engine refusing a batch would."""

    backend = "fake"

    def __init__(self, step: float, fail_at: int | None = None):
        self.step, self.fail_at, self.calls, self.timer = step, fail_at, 0, None

    def generate_ids(self):
        return [[5, 6, 7]]

    def run(self, *args, **kwargs):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("engine profile allows 4 rows, got 14")
        self.generate_ids()
        if self.timer is not None:
            for name in ["first_token"] + ["decode_token"] * (gpu.NEW_TOKENS - 1):
                self.timer.record(name, self.step)
        return {}

    run_all = run


def measure(paths: dict, runs: int = 3) -> tuple[dict, dict, dict, dict]:
    """stage rounds, 14-task rounds of the paths still running, verdicts, failures: run_preset's sequence."""
    failed, log = {}, lambda msg: None
    stages = gpu.stage_rounds(paths, IMAGE, "IMG_CAP", runs, log, failed=failed)
    every = gpu.all_tasks({n: m for n, m in paths.items() if n not in failed}, IMAGE, runs, log, failed=failed)
    return stages, every, gpu.verdicts(stages, every), failed


def test_a_path_failing_in_the_stage_rounds_is_recorded_and_the_others_finish():
    broken = FakePath(0.001, fail_at=2)  # the warm-up passes, the first timed round raises
    stages, every, targets, failed = measure({"eager": FakePath(0.004), "broken": broken, "fast": FakePath(0.001)})
    assert failed == {"broken": "RuntimeError: engine profile allows 4 rows, got 14"}
    assert broken.calls == 2  # not called again after it failed
    assert set(stages) == {"eager", "fast"} and set(every) == {"what", "eager", "fast"}
    assert stages["fast"]["same_tokens_as_eager"] and len(every["fast"]["total_ms_per_run"]) == 3
    assert set(targets) == {"fast"}
    decode = targets["fast"]["decode_speedup"]
    assert decode["value"] == decode["min"] == decode["max"] == pytest.approx(4.0) and decode["per_round"] == [4.0] * 3
    assert decode["met"] is False and "all_tasks_speedup" in targets["fast"]


def test_a_path_failing_in_the_14_task_rounds_keeps_its_stage_numbers():
    late = FakePath(0.002, fail_at=1 + 3 + 2)  # warm-up + 3 stage rounds, the 14-task warm-up, then a failure
    stages, every, targets, failed = measure({"eager": FakePath(0.004), "late": late})
    assert list(failed) == ["late"] and "late" in stages and "late" not in every
    assert targets["late"]["decode_speedup"]["value"] == pytest.approx(2.0) and "all_tasks_speedup" not in targets["late"]


def test_eager_failing_ends_the_run_with_the_reason():
    with pytest.raises(RuntimeError, match="eager, the baseline every path is compared with, failed in stage round 1"):
        measure({"eager": FakePath(0.004, fail_at=2), "fast": FakePath(0.001)})


def test_the_headline_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    # eager drifts between rounds (as 3.3 -> 7.3 ms/token did on an H200); each round's ratio compares like with like
    got = gpu.speedup([2.0, 8.0, 4.0], [1.0, 4.0, 4.0], gpu.TARGETS["decode_speedup"])
    assert (got["value"], got["min"], got["max"], got["per_round"]) == (2.0, 1.0, 2.0, [2.0, 2.0, 1.0])
    assert got["target"] == ">= 5.0" and got["met"] is False  # the ratio of medians would say 4 / 4 = 1.0


def test_gpu_clocks_parse_nvidia_smi_and_keep_what_it_cannot_read():
    got = gpu_machine.parse_clocks("1980, 3201, 1980, 3201, 251.37, [N/A]\n")
    assert got == {"sm_mhz": 1980.0, "mem_mhz": 3201.0, "max_sm_mhz": 1980.0, "max_mem_mhz": 3201.0,
                   "power_w": 251.37, "temperature_c": "[N/A]"}
    with pytest.raises(ValueError, match="expected 6 fields"):
        gpu_machine.parse_clocks("1980, 3201")


def test_git_state_of_a_copy_without_git_takes_the_commit_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_machine, "ROOT", tmp_path)
    monkeypatch.delenv("GIT_COMMIT", raising=False)
    assert gpu_machine.git_state()["commit"] is None and gpu_machine.git_state()["error"]
    monkeypatch.setenv("GIT_COMMIT", "44a6758")
    monkeypatch.setenv("GIT_DIRTY", "0")
    assert gpu_machine.git_state() == {"commit": "44a6758", "dirty": False, "source": "GIT_COMMIT/GIT_DIRTY environment"}
