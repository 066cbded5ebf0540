"""Backends as data: a small spec per backend plus the code that opens one graph as a session.

A session is anything with `input_names` and `run(feeds) -> {output name: array}`; model.py only sees that.
Sessions that can keep tensors on their device (onnxruntime through I/O binding, TensorRT engines in
tiercel/runtime/tensorrt.py) also have the "bound" trio model.py's BoundKVDecoder uses:

    run_bound(feeds, keep) -> outputs    feeds may be numpy arrays or device values; outputs named in `keep`
                                         stay on the device as device values, the rest come back as numpy
    to_device(array) -> device value     one upload, e.g. the encoder mask fed to every decoder step
    take_rows(value, rows) -> value      value[rows] along the batch axis (beam search reorder)

Feeds are cast to each input's declared dtype, so an fp16 bundle takes the runtime's float32 arrays.
Backend packages are imported when a session is opened, so a device needs only the one it uses; a missing one
fails with the exact `pip install 'tiercel[extra]'`. Knows nothing about what the graphs compute.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiercel.errors import BundleError, ConfigError, require


@dataclass(frozen=True)
class BackendSpec:
    """What a backend reads and where it runs."""

    name: str
    package: str  # import name of the Python package it needs
    extra: str  # pip extra that installs it
    suffix: str  # graph file suffix in a bundle
    devices: tuple[str, ...]  # device strings it accepts; the first is the default
    precisions: tuple[str, ...]
    dynamic_shapes: bool
    open: Callable = None  # (file, device, threads, options) -> session
    bound: bool = False  # its sessions have run_bound/to_device/take_rows (KV cache kept on the device)
    opens: str = "bundle"  # what it runs: a bundle's graphs, or a PyTorch "checkpoint" directory (torch)
    help: str = ""  # one line for CLI help and docs
    check: Callable = None  # (bundle, entries) -> None: refuses graphs this machine cannot run, before any opens


# onnxruntime's type strings of the float inputs a feed may need casting to
_ORT_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OrtSession:
    """onnxruntime InferenceSession; device "cpu", "cuda" or "tensorrt" picks the execution provider.

    `run` is onnxruntime's plain run (numpy in, numpy out; on a GPU every call copies all inputs and outputs).
    `run_bound` goes through I/O binding: outputs in `keep` stay where the graph ran as OrtValues (device
    memory on "cuda"/"tensorrt", host memory on "cpu", where the same code runs and is tested) and can be fed
    back without a copy; `take_rows` copies to the host, gathers and copies back.
    """

    _PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                  "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}

    def __init__(self, file: Path, device: str = "cpu", threads: int | None = None, options: dict | None = None):
        ort = require("onnxruntime", "onnx", "the onnxruntime backend")
        providers = self._PROVIDERS[device]
        missing = [p for p in providers[:-1] if p not in ort.get_available_providers()]
        if missing:
            raise BundleError(f"onnxruntime has no {missing[0]} here; install onnxruntime-gpu or use device 'cpu'")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        _ort_options(ort, opts, {**ORT_CPU_CONFIG, **(options or {})} if device == "cpu" else options or {})
        try:
            self.session = ort.InferenceSession(str(file), opts, providers=providers)
        except Exception as err:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...): a damaged graph
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise BundleError(f"{file}: onnxruntime cannot load this graph ({first[:200]}); export the bundle again") from None
        if providers[0] not in self.session.get_providers():  # onnxruntime falls back to the CPU when a CUDA library fails to load
            raise BundleError(f"{file.name}: onnxruntime could not start {providers[0]} (a CUDA/cuDNN library failed to load); "
                              "check LD_LIBRARY_PATH and the onnxruntime-gpu install, or use device 'cpu'")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ort, self.device_type = ort, "cpu" if device == "cpu" else "cuda"
        # float inputs declared other than float32 (an fp16 bundle): feeds are cast to them; fp32 graphs: none
        self.casts = {i.name: np.dtype(_ORT_FLOATS[i.type]) for i in self.session.get_inputs()
                      if i.type in _ORT_FLOATS and i.type != "tensor(float)"}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.casts:
            feeds = {k: self._cast(k, v) for k, v in feeds.items()}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def _cast(self, name: str, value: np.ndarray) -> np.ndarray:
        dtype = self.casts.get(name)
        return value if dtype is None or value.dtype == dtype else value.astype(dtype)

    def run_bound(self, feeds: dict, keep=()) -> dict:
        """Run with I/O binding: `feeds` are numpy arrays or OrtValues; outputs in `keep` stay OrtValues."""
        io = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, self.ort.OrtValue):
                io.bind_ortvalue_input(name, value)
            else:  # onnxruntime copies it to the device during the run (and holds the array until then)
                io.bind_cpu_input(name, np.ascontiguousarray(self._cast(name, value)))
        for name in self.output_names:
            io.bind_output(name, self.device_type if name in keep else "cpu")
        self.session.run_with_iobinding(io)  # returns after the run; host outputs are complete
        return {name: value if name in keep else value.numpy() for name, value in zip(self.output_names, io.get_outputs())}

    def to_device(self, array: np.ndarray, name: str | None = None):
        """An OrtValue on this session's device holding `array` (cast to input `name`'s dtype when given)."""
        array = np.ascontiguousarray(self._cast(name, array) if name else array)
        return self.ort.OrtValue.ortvalue_from_numpy(array, self.device_type, 0)

    def take_rows(self, value, rows: np.ndarray):
        """value[rows] on the batch axis; goes through the host (beam search reorders once per step)."""
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value.numpy()[rows]), self.device_type, 0)


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # /proc/cpuinfo flags of exact u8 x s8 dot products


# numpy's names of the x86 features tiercel asks about -> Linux's /proc/cpuinfo names. numpy knows neither AVX-VNNI
# nor AMX, so where its features stand in (no /proc/cpuinfo), a CPU with only those counts as without VNNI.
_NUMPY_FLAGS = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16",
                "AVX512FP16": "avx512_fp16"}


def numpy_cpu_flags(features: dict[str, bool] | None = None) -> frozenset[str] | None:
    """The x86 features numpy detected at import (cpuid, with the OS's support for the wider registers checked), on
    every OS, under Linux's flag names; None where numpy reports none of them (not x86, or a numpy without its
    feature table). `features`: numpy's table (default: this process's)."""
    if features is None:
        try:
            from numpy._core._multiarray_umath import __cpu_features__ as features
        except ImportError:  # numpy 1.x
            try:
                from numpy.core._multiarray_umath import __cpu_features__ as features
            except ImportError:
                return None
    if not any(name in features for name in _NUMPY_FLAGS):
        return None
    return frozenset(flag for name, flag in _NUMPY_FLAGS.items() if features.get(name))


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags from `cpuinfo`; where it cannot be read (Windows, macOS), those numpy detected
    (numpy_cpu_flags); None where neither says."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            line = next((ln for ln in f if ln.startswith("flags")), None)
    except OSError:
        return numpy_cpu_flags()
    return frozenset(line.split(":", 1)[1].split()) if line else numpy_cpu_flags()


def saturating_int8(machine: str, flags: frozenset[str] | None) -> bool:
    """Whether onnxruntime's u8 x s8 int8 kernels saturate on this CPU: x86 without VNNI (SSE4.1, AVX2, AVX512
    without VNNI) adds pairs of products in 16 bits (its session-config header says so). An x86 CPU whose flags
    are unknown counts as saturating (the exact path is only slower); other CPUs (ARM) have no such kernels."""
    if machine.lower() not in ("x86_64", "amd64", "x86", "i386", "i686"):
        return False
    return flags is None or not flags & VNNI_FLAGS


# Session config of every onnxruntime CPU session (and of the roofline's int8 peak, which bounds them): exact u8 x u8
# int8 products where u8 x s8 saturates, else nothing. Only there: on a CPU with VNNI or AMX the key gives the same
# outputs 1.1-2x slower (an Intel Xeon with AMX: the int8 vision encoder 3.80 against 1.90 s,
# benchmarks/results/int8_products_cpu.md). --option may set it either way.
CPU_FLAGS = cpu_flags()  # this machine's, read once (cpu_flags): the session config below and `tiercel profile` use it
ORT_CPU_CONFIG = {"session.x64quantprecision": "1"} if saturating_int8(platform.machine(), CPU_FLAGS) else {}

_ORT_FLAGS = ("enable_cpu_mem_arena", "enable_mem_pattern", "enable_mem_reuse", "use_deterministic_compute")
_ORT_INTS = ("inter_op_num_threads", "intra_op_num_threads")
_ORT_ENUMS = {"graph_optimization_level": "GraphOptimizationLevel", "execution_mode": "ExecutionMode",
              "execution_order": "ExecutionOrder"}


def _ort_options(ort, opts, options: dict) -> None:
    """Apply `--option` pairs to onnxruntime SessionOptions.

    A key with a dot is a session config entry (onnxruntime's own naming, area.name: session.intra_op.allow_spinning);
    onnxruntime accepts any such key without a word, so a misspelt one still does nothing. A key without a dot must
    be one of the SessionOptions attributes below; anything else is refused rather than silently ignored.
    """
    for key, value in options.items():
        text = str(value).strip()
        if "." in key:
            opts.add_session_config_entry(key, text)
        elif key in _ORT_FLAGS:
            if text.lower() not in ("1", "0", "true", "false"):
                raise ConfigError(f"--option {key}={text}: expected 1, 0, true or false")
            setattr(opts, key, text.lower() in ("1", "true"))
        elif key in _ORT_INTS:
            if not text.isdigit():
                raise ConfigError(f"--option {key}={text}: expected a whole number >= 0")
            setattr(opts, key, int(text))
        elif key in _ORT_ENUMS:
            enum = getattr(ort, _ORT_ENUMS[key])
            members = {name.upper(): member for name, member in enum.__members__.items()}
            member = members.get(text.upper()) or members.get("ORT_" + text.upper())
            if member is None:
                raise ConfigError(f"--option {key}={text}: expected one of {', '.join(enum.__members__)}")
            setattr(opts, key, member)
        else:
            known = ", ".join((*_ORT_FLAGS, *_ORT_INTS, *_ORT_ENUMS))
            raise ConfigError(f"--option {key}: onnxruntime has no such setting; give a session config key "
                              f"(area.name, e.g. session.intra_op.allow_spinning=0) or one of: {known}")


class OpenVinoSession:
    """openvino CompiledModel on a device string ("CPU", "GPU", "NPU", "AUTO"); reads IR (.xml) or ONNX.

    On a CPU computing in bf16 or f16 (`INFERENCE_PRECISION_HINT`, where the plugin has it), the KV cache
    ports (past_key_values.* in, present.* out) take and give that type, so the cache stays in the precision
    the graph computes in: the plugin no longer converts the fp32 encoder KV at every step (bit-identical
    logits; the bf16 decode step 1.16x faster at one row, 2.1x at the 14 rows of `run_all`:
    benchmarks/results/openvino_kv_cpu.md). numpy has no bfloat16, so bf16 KV arrays are uint16 arrays of
    the bit patterns (the top half of each float32, rounded to nearest even); fp32 feeds to those ports are
    converted, so any caller may still pass float32.
    """

    def __init__(self, file: Path, device: str = "CPU", threads: int | None = None, options: dict | None = None):
        ov = require("openvino", "openvino", "the openvino backend")
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        if device.upper() == "CPU":
            config["INFERENCE_PRECISION_HINT"] = "f32"  # OpenVINO would otherwise pick bf16 on CPUs that have it
        config.update(options or {})  # compile properties, e.g. PERFORMANCE_HINT=LATENCY
        self.ov, model = ov, core.read_model(str(file))
        self.kv = _kv_type(core, device, config)
        if self.kv is not None:
            model = _kv_ports_as(ov, model, self.kv)
        try:
            self.compiled = core.compile_model(model, device.upper(), config)
        except RuntimeError as err:
            if not options:
                raise
            first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise ConfigError(f"--option: OpenVINO rejected {options} ({first})") from err
        self.request = self.compiled.create_infer_request()
        self.input_names = [_public_name(p) for p in self.compiled.inputs]
        self.output_names = [_public_name(p) for p in self.compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.kv is not None:
            feeds = {k: self._kv_feed(v) if k.startswith("past_key_values.") else v for k, v in feeds.items()}
        # share_inputs: OpenVINO reads the numpy buffers instead of copying them (the encoder KV cache, fed at
        # every decode step, is the big one); safe because infer is synchronous and returns copies here
        result = self.request.infer(feeds, share_inputs=True)
        out = {name: np.array(result[port]) for name, port in zip(self.output_names, self.compiled.outputs)}
        if self.kv == "bf16":  # OpenVINO hands bf16 out as float16-typed bits
            out = {k: v.view(np.uint16) if k.startswith("present.") else v for k, v in out.items()}
        return out

    def _kv_feed(self, value: np.ndarray):
        if self.kv == "f16":
            return value.astype(np.float16, copy=False)
        bits = value if value.dtype == np.uint16 else bf16_bits(value)
        return self.ov.Tensor(np.ascontiguousarray(bits), list(bits.shape), self.ov.Type.bf16)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even as OpenVINO's own conversion does;
    NaN stays NaN (quiet)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    out = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), out)


def _kv_type(core, device: str, config: dict) -> str | None:
    """"bf16" or "f16" when the CPU plugin computes in it here (the hint asks and the CPU has it), else None."""
    hint = str(config.get("INFERENCE_PRECISION_HINT", "")).lower()
    capability = {"bf16": "BF16", "f16": "FP16"}.get(hint)
    if device.upper() != "CPU" or capability is None:
        return None
    return hint if capability in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else None


def _kv_ports_as(ov, model, kv: str):
    """The model with its past_key_values.* inputs and present.* outputs in `kv` (bf16 or f16)."""
    ports = [("input", p) for p in model.inputs] + [("output", p) for p in model.outputs]
    ports = [(side, p) for side, p in ports if _public_name(p).startswith(("past_key_values.", "present."))]
    if not ports:
        return model
    ppp = ov.preprocess.PrePostProcessor(model)
    for side, port in ports:
        getattr(ppp, side)(port.get_any_name()).tensor().set_element_type(getattr(ov.Type, kv))
    return ppp.build()


def _public_name(port) -> str:
    """A port's public tensor name: OpenVINO may add internal ones like /embed/Gather_output_0."""
    names = sorted(port.get_names())
    return next((n for n in names if not n.startswith("/")), names[0])


def _check_engines(bundle, entries):
    from tiercel.runtime.tensorrt import check_engines

    check_engines(bundle, entries)


def _tensorrt_session(file: Path, device: str = "cuda", threads: int | None = None, options: dict | None = None):
    from tiercel.runtime.tensorrt import TensorRTSession  # numpy-only module; tensorrt is imported when opened

    return TensorRTSession(file, device, threads, options)


# The one registry of backends: export writes graphs for the "bundle" ones, the runtime opens them, and the
# torch entry runs checkpoint directories (tiercel.models.open; transformers on a CPU, CUDA graphs on a GPU).
BACKENDS: dict[str, BackendSpec] = {
    "onnxruntime": BackendSpec("onnxruntime", "onnxruntime", "onnx", ".onnx", ("cpu", "cuda", "tensorrt"),
                               ("fp32", "fp16", "int8", "int4"), True, OrtSession, bound=True,
                               help="ONNX graphs on onnxruntime (CPU; CUDA / TensorRT EP with onnxruntime-gpu)"),
    "openvino": BackendSpec("openvino", "openvino", "openvino", ".xml", ("CPU", "GPU", "NPU", "AUTO"),
                            ("fp32", "fp16", "int8", "int4"), True, OpenVinoSession, help="OpenVINO IR"),
    "tensorrt": BackendSpec("tensorrt", "tensorrt", "tensorrt", ".engine", ("cuda",), ("fp16", "int8"), True,
                            _tensorrt_session, bound=True, help="TensorRT engines (NVIDIA GPU)",
                            check=_check_engines),
    "torch": BackendSpec("torch", "torch", "train", "", ("cpu", "cuda"), ("fp32", "fp16", "bf16"), True,
                         opens="checkpoint", help="a checkpoint directory in PyTorch (CUDA graphs on a GPU)"),
}


def bundle_backends() -> list[str]:
    """Backends whose graphs a bundle holds (what export writes and tiercel.runtime.load opens)."""
    return [name for name, spec in BACKENDS.items() if spec.opens == "bundle"]


def backends_help(checkpoints: bool = True) -> str:
    """The backend names for a CLI option's help, from the registry."""
    names = ", ".join(bundle_backends())
    torch = [n for n, s in BACKENDS.items() if s.opens == "checkpoint"]
    return f"{names}" + (f"; {', '.join(torch)} for a checkpoint (CUDA graphs on a GPU)" if checkpoints and torch else "")


def get_backend(name: str, opens: str | None = None, where: str = "") -> BackendSpec:
    """The spec of backend `name`; ConfigError lists the valid names (those that open `opens`, when given;
    `where` names what was asked, e.g. a bundle path)."""
    names = [n for n, s in BACKENDS.items() if opens is None or s.opens == opens]
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}'; choose one of: {', '.join(names)}")
    spec = BACKENDS[name]
    if opens is not None and spec.opens != opens:
        what = f"{where}: a {opens}" if where else f"a {opens}"
        raise ConfigError(f"{what}; --backend {name} runs a {spec.opens} directory (for a {opens} use {', '.join(names)})")
    return spec


def check_device(spec: BackendSpec, device: str | None) -> str:
    """`device`, or the backend's default; ConfigError lists the devices the backend accepts."""
    if device is None:
        return spec.devices[0]
    if device.lower() not in [d.lower() for d in spec.devices] and not device.upper().startswith(("GPU.", "HETERO", "MULTI")):
        raise ConfigError(f"backend '{spec.name}' does not run on device '{device}'; choose one of: {', '.join(spec.devices)}")
    return device


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """["key=value", ...] from the command line -> {key: value}; ConfigError names a pair without '='."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option: expected KEY=VALUE (got {pair!r}); e.g. --option session.intra_op.allow_spinning=0")
        out[key.strip()] = value.strip()
    return out
