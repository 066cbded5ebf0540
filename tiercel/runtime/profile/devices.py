"""Edge devices as data, and the roofline ESTIMATE of a bundle's latency on one of them.

An estimate is not a measurement: it assumes each stage runs at a fixed fraction (efficiency) of the
device's memory bandwidth or compute peak, whichever bounds it, at the precision of the bundle's graphs:

    t_stage = max(bytes / (bandwidth * mem_efficiency), FLOPs / (peak[precision] * compute_efficiency))
    per token = t_decode_token;  per image = t_vision_encoder + t_text_encoder + t_first_token

Bytes and FLOPs come from roofline.bundle_work (graph file sizes and the model shape). Other devices come from
a YAML/JSON file (`tiercel profile --device-spec FILE`), see `load_device_specs`. Knows nothing about timing.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tiercel.errors import ConfigError

MEM_EFFICIENCY = 0.6  # assumed share of peak bandwidth a decode step reaches (not measured on a Jetson)
COMPUTE_EFFICIENCY = 0.35  # assumed share of peak FLOP/s the vision/encoder graphs reach (not measured on a Jetson)
FORMULA = ("t_stage = max(bytes / (bandwidth x mem_efficiency), FLOPs / (peak[precision] x compute_efficiency)); "
           "per token = t_decode_token; per image = t_vision_encoder + t_text_encoder + t_first_token")


@dataclass(frozen=True)
class DeviceSpec:
    """Peaks of one device. `peak_tflops` maps a compute precision (fp32, fp16, int8) to dense TFLOPS/TOPS."""

    name: str
    bandwidth_gbs: float
    peak_tflops: dict = field(hash=False)
    mem_efficiency: float = MEM_EFFICIENCY
    compute_efficiency: float = COMPUTE_EFFICIENCY
    source: str = ""
    unverified: tuple[str, ...] = ()  # which numbers are derived rather than read from a datasheet

    def to_dict(self) -> dict:
        return {**asdict(self), "unverified": list(self.unverified)}


# Sources: NVIDIA Jetson AGX Orin Series Technical Brief v1.2 (AGX Orin 64GB GPU: 16 SMs, 2048 CUDA cores,
# 5.3 FP32 TFLOPS, 64 tensor cores, 170 sparse INT8 TOPS, 1.3 GHz); NVIDIA Jetson Orin Nano / Orin NX module
# datasheets and the Orin Nano Super Developer Kit datasheet (Dec 2024): Orin Nano 8GB 40 sparse INT8 TOPS,
# 68 GB/s, GPU 625 MHz; "Super" 67 sparse INT8 TOPS, 102 GB/s, GPU 1020 MHz; Orin NX 16GB 102.4 GB/s, GPU
# 918 MHz, 1024 CUDA cores; AGX Orin 204.8 GB/s. Bandwidths are as published (also FALCON.md).
# Derived, hence "unverified": dense FP16 tensor TFLOPS = sparse INT8 TOPS / 4 (structured sparsity doubles,
# INT8 doubles FP16 on Ampere tensor cores); dense INT8 = sparse / 2; FP32 = CUDA cores x 2 x GPU clock.
# The Orin NX GPU figure is the Orin Nano per-clock rate scaled to 918 MHz (its 100 TOPS include the DLAs).
DEVICES: dict[str, DeviceSpec] = {
    "orin-nano-8gb": DeviceSpec("Jetson Orin Nano 8GB", 68.0, {"fp32": 1.28, "fp16": 10.0, "int8": 20.0},
                                source="Orin Nano module datasheet: 68 GB/s, 40 sparse INT8 TOPS, GPU 625 MHz",
                                unverified=("peak_tflops",)),
    "orin-nano-8gb-super": DeviceSpec("Jetson Orin Nano 8GB Super", 102.0, {"fp32": 2.09, "fp16": 16.7, "int8": 33.5},
                                      source="Orin Nano Super dev kit datasheet: 102 GB/s, 67 sparse INT8 TOPS, GPU 1020 MHz",
                                      unverified=("peak_tflops",)),
    "orin-nx-16gb": DeviceSpec("Jetson Orin NX 16GB", 102.4, {"fp32": 1.88, "fp16": 14.7, "int8": 29.4},
                               source="Orin NX module datasheet: 102.4 GB/s, 1024 CUDA cores, GPU 918 MHz",
                               unverified=("peak_tflops",)),
    "agx-orin-64gb": DeviceSpec("Jetson AGX Orin 64GB", 204.8, {"fp32": 5.3, "fp16": 42.5, "int8": 85.0},
                                source="AGX Orin technical brief v1.2: 204.8 GB/s, 5.3 FP32 TFLOPS, 170 sparse INT8 TOPS",
                                unverified=("peak_tflops.fp16", "peak_tflops.int8")),
}


def compute_precision(precision: str) -> str:
    """The arithmetic a graph of `precision` runs in: int4 weight-only schemes compute in fp16."""
    p = str(precision).lower()
    if p.startswith("int8"):
        return "int8"
    if p.startswith(("int4", "fp16", "bf16")):
        return "fp16"
    return "fp32"


def stage_seconds(flops: float, nbytes: float, device: DeviceSpec, precision: str) -> float:
    """The estimate formula for one stage (see the module docstring)."""
    key = compute_precision(precision)
    peak = device.peak_tflops.get(key) or device.peak_tflops.get("fp16") or next(iter(device.peak_tflops.values()))
    t_mem = nbytes / (device.bandwidth_gbs * 1e9 * device.mem_efficiency)
    t_cmp = flops / (peak * 1e12 * device.compute_efficiency)
    return max(t_mem, t_cmp)


def estimate(work: dict, device: DeviceSpec, new_tokens: int) -> dict:
    """ESTIMATED latencies of one generation on `device` from roofline.bundle_work output (StageWork per
    stage, each at its graph's precision).

    Returns per-stage ms and per_token_ms, tokens_per_s, per_image_ms, task_ms (= per image + (new_tokens - 1)
    tokens), with the efficiencies assumed.
    """
    stages = {s: stage_seconds(w.flops, w.bytes, device, w.precision) for s, w in work.items()}
    per_image = stages["vision_encoder"] + stages["text_encoder"] + stages["first_token"]
    per_token = stages["decode_token"]
    return {"device": device.name, "estimate": True, "stages_ms": {s: t * 1e3 for s, t in stages.items()},
            "precision": {s: compute_precision(w.precision) for s, w in work.items()},
            "per_token_ms": per_token * 1e3, "tokens_per_s": 1.0 / per_token if per_token > 0 else math.inf,
            "per_image_ms": per_image * 1e3, "task_ms": (per_image + max(new_tokens - 1, 0) * per_token) * 1e3,
            "mem_efficiency": device.mem_efficiency, "compute_efficiency": device.compute_efficiency}


def load_device_specs(path: str | Path) -> dict[str, DeviceSpec]:
    """Devices from a YAML or JSON file: one mapping, or a list of them, or {key: mapping}.

    Each mapping: name, bandwidth_gbs, peak_tflops {fp32/fp16/int8: number}, optional mem_efficiency,
    compute_efficiency (0 < x <= 1) and source.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: device spec file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # yaml and json raise different classes; both mean the same to the user
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({str(err).splitlines()[0]})") from None
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):  # {key: device}
        items = [(str(k), v) for k, v in data.items()]
    else:
        items = [(None, d) for d in (data if isinstance(data, list) else [data])]
    specs = {}
    for i, (key, item) in enumerate(items):
        spec = _spec(item, f"{path}: {key or f'device {i}'}")
        specs[key or _slug(spec.name)] = spec
    if not specs:
        raise ConfigError(f"{path}: holds no device; give at least name, bandwidth_gbs and peak_tflops")
    return specs


def _spec(item, where: str) -> DeviceSpec:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a mapping with name, bandwidth_gbs, peak_tflops")
    unknown = sorted(set(item) - {"name", "bandwidth_gbs", "peak_tflops", "mem_efficiency", "compute_efficiency", "source"})
    if unknown:
        raise ConfigError(f"{where}: unknown field '{unknown[0]}'; valid: name, bandwidth_gbs, peak_tflops, "
                          "mem_efficiency, compute_efficiency, source")
    name = str(item.get("name") or "").strip()
    if not name:
        raise ConfigError(f"{where}: name: required")
    bandwidth = _positive(item.get("bandwidth_gbs"), f"{where}: bandwidth_gbs")
    peaks = item.get("peak_tflops")
    if not isinstance(peaks, dict) or not peaks:
        raise ConfigError(f"{where}: peak_tflops: must map fp32/fp16/int8 to TFLOPS (got {peaks!r})")
    bad = sorted(set(peaks) - {"fp32", "fp16", "int8"})
    if bad:
        raise ConfigError(f"{where}: peak_tflops: unknown precision '{bad[0]}'; use fp32, fp16, int8")
    peaks = {k: _positive(v, f"{where}: peak_tflops.{k}") for k, v in peaks.items()}
    eff = {k: _positive(item.get(k, d), f"{where}: {k}", upper=1.0)
           for k, d in (("mem_efficiency", MEM_EFFICIENCY), ("compute_efficiency", COMPUTE_EFFICIENCY))}
    return DeviceSpec(name, bandwidth, peaks, source=str(item.get("source", "")), **eff)


def _positive(value, where: str, upper: float | None = None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
    if not ok or (upper is not None and value > upper):
        limit = f"in (0, {upper:g}]" if upper is not None else "> 0"
        raise ConfigError(f"{where}: must be a number {limit} (got {value!r})")
    return float(value)


def _slug(name: str) -> str:
    return "-".join(name.lower().replace("/", " ").split())
