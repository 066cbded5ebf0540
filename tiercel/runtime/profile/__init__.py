"""Latency profiling of bundles: per-stage timings, roofline fractions and edge-device estimates.

    from tiercel.runtime.profile import ProfileSettings, profile
    report = profile(["bundle-a/", "bundle-b/"], backends=["onnxruntime"], settings=ProfileSettings(runs=5))
    report.to_dict()                    # JSON-ready; tiercel.runtime.profile.report renders tables and charts

Modules: timing (the timer the runtime calls into, percentiles, memory), roofline (work per stage from the
manifest, this machine's measured peaks), devices (Jetson presets and the estimate formula), runner (the
profiling loop), report (rich tables; the PNG chart needs matplotlib). numpy only, never torch.
"""

from tiercel.runtime.profile.devices import DEVICES, DeviceSpec, estimate, load_device_specs
from tiercel.runtime.profile.runner import (
           BundleProfile,
           Checkpoints,
           ProfileReport,
           ProfileSettings,
           forced_generation,
           profile,
)
from tiercel.runtime.profile.timing import MemoryProbe, StageTimer, breakdown, percentiles

__all__ = ["DEVICES", "BundleProfile", "Checkpoints", "DeviceSpec", "MemoryProbe", "ProfileReport", "ProfileSettings", "StageTimer",
           "breakdown", "estimate", "forced_generation", "load_device_specs", "percentiles", "profile"]
