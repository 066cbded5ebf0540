"""What benchmarks/gpu.py records about where it ran: the commit, the GPU and its clocks, library versions, and the
bandwidth of one large tensor copy.

Each probe returns a dict for the results JSON and never raises for a missing tool (no nvidia-smi, no .git in a
copied tree): the entry says why it is empty instead. Knows nothing about models or paths.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# nvidia-smi query field -> key in the JSON (MHz, W, degrees C)
CLOCKS = {"clocks.sm": "sm_mhz", "clocks.mem": "mem_mhz", "clocks.max.sm": "max_sm_mhz",
          "clocks.max.mem": "max_mem_mhz", "power.draw": "power_w", "temperature.gpu": "temperature_c"}
DISTRIBUTIONS = ("tiercel", "onnx", "onnxruntime-gpu", "cuda-python", "tensorrt")  # versions as installed, if at all


def _out(*cmd) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout.rstrip()


def git_state() -> dict:
    """The commit the script ran from and whether tracked files differed from it (untracked files do not count).

    A copied tree without .git (a device machine gets the working tree only) takes GIT_COMMIT and GIT_DIRTY from
    the environment, set by whoever sent the copy; otherwise commit is None and `error` says why."""
    try:
        if Path(_out("git", "-C", str(ROOT), "rev-parse", "--show-toplevel")).resolve() != ROOT:
            raise RuntimeError(f"{ROOT} is not the top of a git work tree")
        changed = _out("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no").splitlines()
        return {"commit": _out("git", "-C", str(ROOT), "rev-parse", "HEAD"), "dirty": bool(changed),
                "changed_files": [line[3:] for line in changed][:20], "source": "git"}
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        if os.environ.get("GIT_COMMIT"):
            dirty = os.environ.get("GIT_DIRTY")
            return {"commit": os.environ["GIT_COMMIT"], "dirty": None if dirty is None else dirty not in ("0", ""),
                    "source": "GIT_COMMIT/GIT_DIRTY environment"}
        return {"commit": None, "dirty": None, "error": f"{type(exc).__name__}: {exc}".strip()[:300]}


def parse_clocks(csv: str) -> dict:
    """One line of `nvidia-smi --query-gpu=<CLOCKS> --format=csv,noheader,nounits` -> {key: number}; a field
    nvidia-smi cannot read ("[N/A]") stays a string."""
    fields = [f.strip() for f in csv.strip().splitlines()[0].split(",")]
    if len(fields) != len(CLOCKS):
        raise ValueError(f"expected {len(CLOCKS)} fields from nvidia-smi, got {csv.strip()!r}")

    def number(text: str):
        try:
            return float(text)
        except ValueError:
            return text

    return {key: number(text) for key, text in zip(CLOCKS.values(), fields)}


def gpu_clocks() -> dict:
    """SM and memory clocks (now and their maximum), power draw and temperature of the GPU torch sees first."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    try:
        csv = _out("nvidia-smi", "-i", first, f"--query-gpu={','.join(CLOCKS)}", "--format=csv,noheader,nounits")
        return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **parse_clocks(csv)}
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def copy_bandwidth(device: str, runs: int = 7) -> dict:
    """GB/s of one tensor copy, counting the bytes read and written: median, min and max of `runs` after a warm-up.

    On cuda a 1 GiB device-to-device copy timed by CUDA events (synchronised before and after), the bound a decode
    step that streams its weights and KV cache cannot beat; on a CPU a 256 MiB host copy (torch's threads), which
    only exercises the code."""
    import torch

    cuda = device == "cuda"
    nbytes = 1 << 30 if cuda else 256 << 20
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: first touch of the pages, the copy kernel's launch
    seconds = []
    for _ in range(runs):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            dst.copy_(src)
            seconds.append(time.perf_counter() - t)
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    gbs = [2 * nbytes / s / 1e9 for s in seconds]
    return {"gbs": statistics.median(gbs), "min_gbs": min(gbs), "max_gbs": max(gbs), "bytes": nbytes, "runs": runs,
            "method": ("torch copy_ of a uint8 tensor on cuda, CUDA events" if cuda else
                       f"torch copy_ of a uint8 host tensor, perf_counter, {torch.get_num_threads()} threads")
                      + "; GB/s = 2 x bytes / seconds (read + write), median of the runs after one warm-up"}


def gpu_info(device: str) -> dict:
    """GPU name, driver, memory and library versions (name "cpu" on a check run)."""
    import onnxruntime
    import torch
    import transformers
    from runtime_cpu import cpu_model

    info = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxruntime_providers": onnxruntime.get_available_providers()}
    for dist in DISTRIBUTIONS:
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if importlib.util.find_spec("tensorrt"):  # a tensorrt unpacked without its dist-info
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    info.update(host_cpu=cpu_model(), host_cores=os.cpu_count(), load_average_at_start=list(os.getloadavg()))
    if device != "cuda":
        return {"name": "cpu", "check_run": True, **info}
    try:  # Jetson has no nvidia-smi
        smi = _out("nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader")
    except (OSError, subprocess.SubprocessError):
        smi = ""
    fields = [f.strip() for f in smi.splitlines()[0].split(",")] if smi else []
    return {"name": torch.cuda.get_device_name(0), "nvidia_smi": dict(zip(("name", "driver", "memory", "max_sm_clock"), fields)),
            "multiprocessors": torch.cuda.get_device_properties(0).multi_processor_count,
            "cudnn": torch.backends.cudnn.version(), **info}
