"""The paths benchmarks/runtime_cpu.py times, opened side by side on one model and its bundles.

transformers eager (tiercel.models.TorchPredictor) in fp32 and under torch.autocast bf16, and tiercel.runtime on
the fp32 bundle (onnxruntime, OpenVINO, OpenVINO with INFERENCE_PRECISION_HINT=bf16) and on int8-static bundles
made here with tiercel.quantize.quantize_bundle. Knows nothing about how the paths are timed or compared.
"""

from __future__ import annotations

import time
from pathlib import Path

BACKENDS = ("onnxruntime", "openvino")
BF16 = {"INFERENCE_PRECISION_HINT": "bf16"}  # the openvino-bf16 path's compile property (--bf16)
EAGER = ("eager", "eager-bf16")  # the baselines: transformers' modules, one call per task
PRECISION = {"eager": "fp32", "eager-bf16": "bf16", "onnxruntime": "fp32", "openvino": "fp32", "openvino-bf16": "bf16",
             "onnxruntime-int8": "int8", "openvino-int8": "int8", "openvino-int8-bf16": "int8"}
# the precision of the KV cache and of what is not quantized, where it is not the path's own
KV_PRECISION = {"openvino-int8-bf16": "bf16"}


def quantize_int8(fp32: Path, work: Path, backends: list[str], n_calib: int, log) -> tuple[dict, dict]:
    """{path name: (backend, int8-static bundle)} for each of `backends`, and the seconds each took: quantize_cpu.py's
    recipe (`n_calib` of 42 synthetic 64 px samples, no guard: n_val=0)."""
    from tiercel.data.synth.writer import generate
    from tiercel.quantize import quantize_bundle

    bundles, seconds = {}, {}
    if backends:
        generate(work / "synth", n=42, size=64, workers=1, overwrite=True)
    for backend in backends:
        name, t = f"{backend}-int8", time.perf_counter()
        quantize_bundle(fp32, work / name, "int8-static", calib=work / "synth", n=n_calib, n_val=0, backend=backend,
                        max_new_tokens=8, overwrite=True)
        bundles[name], seconds[name] = (backend, work / name), time.perf_counter() - t
        log(f"quantised {name} in {seconds[name]:.0f} s")
    return bundles, seconds


def autocast_predictor(model, tok):
    """A TorchPredictor whose run and run_all calls run whole (vision tower, text encoder, generate) under
    torch.autocast("cpu", dtype=torch.bfloat16): eager-bf16."""
    import torch

    from tiercel.models.predict import TorchPredictor

    class AutocastPredictor(TorchPredictor):
        def run(self, *args, **kwargs):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return super().run(*args, **kwargs)

        def run_all(self, *args, **kwargs):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return super().run_all(*args, **kwargs)

    return AutocastPredictor(model, tok)


def open_paths(model, tok, bundle: Path, threads: int | None, bf16: bool = False, eager_bf16: bool = False,
               int8: dict | None = None) -> tuple[dict, dict]:
    """{path name: Model}, and the load seconds of each bundle path; `threads` None: library defaults.

    Args:
        bf16: also "openvino-bf16", the OpenVINO bundle compiled with INFERENCE_PRECISION_HINT=bf16, and with an
            OpenVINO int8 bundle among `int8`, "openvino-int8-bf16": that bundle with the same hint (int8 matmuls,
            the rest and the KV cache in bf16).
        eager_bf16: also "eager-bf16" (autocast_predictor).
        int8: {path name: (backend, bundle)} of int8 bundles to open as well (quantize_int8)."""
    import torch
    import transformers

    import tiercel.runtime
    from tiercel.models.predict import TorchPredictor

    # An eos id of -1 is how exactly 32 tokens are forced; transformers warns that generation will not stop.
    transformers.logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)
    # TorchPredictor times transformers' decoder steps itself while a timer is attached; both share one model
    paths, load_s = {"eager": TorchPredictor(model, tok)}, {}
    if eager_bf16:
        paths["eager-bf16"] = autocast_predictor(model, tok)
    opened = [(backend, backend, bundle, None) for backend in BACKENDS]
    opened += [("openvino-bf16", "openvino", bundle, BF16)] if bf16 else []
    opened += [(name, backend, path, None) for name, (backend, path) in (int8 or {}).items()]
    if bf16 and "openvino-int8" in (int8 or {}):
        opened.append(("openvino-int8-bf16", "openvino", int8["openvino-int8"][1], BF16))
    for name, backend, path, options in opened:
        t = time.perf_counter()
        paths[name] = tiercel.runtime.load(path, backend=backend, threads=threads, options=options)
        load_s[name] = time.perf_counter() - t
    return paths, load_s


def has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bfloat16 here (AVX512_BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def cpu_bf16() -> bool:
    """Whether the CPU's flags list avx512_bf16 or amx_bf16 (torch's bf16 matmuls run natively), as tiercel
    profile reads them."""
    from tiercel.runtime.profile.runner import machine_info

    return bool(machine_info()["cpu_bf16"])
