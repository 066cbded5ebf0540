"""Stand-ins for the `tensorrt` module and cuda-python's `cuda.bindings.runtime`, so tiercel's TensorRT code runs
on a CPU: export's builder calls, the runtime's sessions and its CUDA calls, end to end.

What it keeps faithful (each is a way the real libraries would fail tiercel):
- The API surface: only names TensorRT 10.3 and 11 both have (tests/tensorrt_api.py holds the lists, taken from
  the TensorRT Python API documentation, and a test checks this module against them), version by version where
  they differ: `module(version="11.4.0")` has no BuilderFlag.FP16/INT8/OBEY_PRECISION_CONSTRAINTS.
- The builder: a strongly typed network refuses precision builder flags; every dynamic input needs a shape in
  every profile with min <= opt <= max and the network's rank and static dimensions; the engine records its
  profiles and the TensorRT version that built it, and a runtime of another version cannot deserialise it.
- Execution: `set_input_shape` is refused (False) outside the active profile, as TensorRT does; profiles are
  switched with `set_optimization_profile_async`; I/O dtypes are the graph's (strong typing); every pointer
  a run reads or writes must lie inside a live allocation (a buffer freed while bound fails loudly).
- CUDA: cuda-python's (err, value) tuples, stream-ordered malloc/free/memcpy on host memory via ctypes.

An engine is the ONNX graph's bytes behind a JSON header; it runs on onnxruntime (`drift` scales its float
outputs, to test the parity check). What this cannot show: that TensorRT compiles these graphs, its kernels'
numerics, or real GPU memory behaviour.
"""

from __future__ import annotations

import ctypes
import enum
import json
import math
import types

import numpy as np

MAGIC = b"FAKETRT1"
_TYPES = {"tensor(float)": "FLOAT", "tensor(float16)": "HALF", "tensor(int64)": "INT64", "tensor(int32)": "INT32",
          "tensor(bool)": "BOOL", "tensor(int8)": "INT8", "tensor(uint8)": "UINT8"}
_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_,
       "INT8": np.int8, "UINT8": np.uint8}
PRECISION_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4")
# BuilderFlag members per major version (a subset tiercel's tests need; tests/tensorrt_api.py has the full lists)
_FLAGS = {10: ("FP16", "BF16", "INT8", "FP8", "INT4", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS",
               "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS",
               "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "STRIP_PLAN", "REFIT_IDENTICAL"),
          11: ("REFIT", "DISABLE_TIMING_CACHE", "SPARSE_WEIGHTS", "DIRECT_IO", "VERSION_COMPATIBLE",
               "EXCLUDE_LEAN_RUNTIME", "STRIP_PLAN", "REFIT_IDENTICAL")}


class FakeGpu:
    """Device memory (ctypes buffers; a pointer is the buffer's host address) and the calls made on it."""

    def __init__(self, name: str = "Fake GPU", capability: tuple[int, int] = (8, 7)):
        self.buffers: dict[int, ctypes.Array] = {}
        self.name, self.capability = name, capability
        self.uploads = self.downloads = self.copies = self.mallocs = 0

    @property
    def memory(self) -> dict:
        return self.buffers

    def malloc(self, size: int) -> int:
        buf = ctypes.create_string_buffer(max(1, size))
        ptr = ctypes.addressof(buf)
        self.buffers[ptr] = buf
        self.mallocs += 1
        return ptr

    def free(self, ptr: int) -> None:
        if ptr not in self.buffers:
            raise RuntimeError(f"cudaFreeAsync of {ptr:#x}, which is not an allocation")
        del self.buffers[ptr]

    def check(self, ptr: int, size: int) -> None:
        """RuntimeError unless [ptr, ptr + size) lies inside one live allocation (an illegal address on a GPU)."""
        for start, buf in self.buffers.items():
            if start <= ptr and ptr + size <= start + ctypes.sizeof(buf):
                return
        raise RuntimeError(f"illegal memory access: {size} bytes at {ptr:#x} are not inside a live allocation")

    def read(self, ptr: int, shape, dtype) -> np.ndarray:
        size = math.prod(shape) * np.dtype(dtype).itemsize
        self.check(ptr, size)
        return np.frombuffer(ctypes.string_at(ptr, size), dtype).reshape(shape).copy()

    def write(self, ptr: int, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array).tobytes()
        self.check(ptr, len(data))
        ctypes.memmove(ptr, data, len(data))


def cuda_runtime(gpu: FakeGpu) -> types.ModuleType:
    """`cuda.bindings.runtime` with the calls tiercel.runtime.tensorrt.Cuda makes, returning (err, ...) tuples."""
    rt = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
        cudaSuccess = 0
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    class cudaStream_t:  # noqa: N801
        def __init__(self, handle: int):
            self._handle = handle

        def __int__(self):
            return self._handle

    class cudaDeviceProp:  # noqa: N801
        def __init__(self):
            self.name = gpu.name.encode() + b"\x00" * (256 - len(gpu.name))
            self.major, self.minor = gpu.capability
            self.totalGlobalMem = 8 << 30

    ok = cudaError_t.cudaSuccess
    streams = []

    def cudaStreamCreate():  # noqa: N802
        streams.append(cudaStream_t(0x5000 + len(streams)))
        return ok, streams[-1]

    def _stream(stream):
        if int(stream) not in {int(s) for s in streams}:
            raise RuntimeError(f"unknown stream {stream!r}")

    def cudaMallocAsync(size, stream):  # noqa: N802
        _stream(stream)
        return ok, gpu.malloc(int(size))

    def cudaFreeAsync(ptr, stream):  # noqa: N802
        _stream(stream)
        gpu.free(int(ptr))
        return (ok,)

    def cudaMemcpyAsync(dst, src, count, kind, stream):  # noqa: N802
        _stream(stream)
        kind = cudaMemcpyKind(kind)
        if kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToDevice):
            gpu.check(int(dst), count)
        if kind in (cudaMemcpyKind.cudaMemcpyDeviceToHost, cudaMemcpyKind.cudaMemcpyDeviceToDevice):
            gpu.check(int(src), count)
        ctypes.memmove(int(dst), int(src), count)
        counter = {1: "uploads", 2: "downloads", 3: "copies"}[int(kind)]
        setattr(gpu, counter, getattr(gpu, counter) + 1)
        return (ok,)

    def cudaStreamSynchronize(stream):  # noqa: N802
        _stream(stream)
        return (ok,)

    def cudaGetErrorName(err):  # noqa: N802
        return ok, cudaError_t(err).name.encode()

    def cudaGetDevice():  # noqa: N802
        return ok, 0

    def cudaGetDeviceProperties(device):  # noqa: N802
        return ok, cudaDeviceProp()

    for obj in (cudaError_t, cudaMemcpyKind, cudaStream_t, cudaDeviceProp, cudaStreamCreate, cudaMallocAsync,
                cudaFreeAsync, cudaMemcpyAsync, cudaStreamSynchronize, cudaGetErrorName, cudaGetDevice,
                cudaGetDeviceProperties):
        setattr(rt, obj.__name__, obj)
    return rt


def module(gpu: FakeGpu, version: str = "10.3.0.26", drift: float = 0.0, log: list | None = None) -> types.ModuleType:
    """A `tensorrt` module of TensorRT `version` (10.x or 11.x names) running engines on `gpu`.

    drift: the engines' float outputs are scaled by (1 + drift) (a numerically wrong engine); log: collects the
    messages TensorRT would log (errors from the builder and the runtime).
    """
    major = int(version.split(".")[0])
    log = [] if log is None else log
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

        def __init__(self, min_severity=2):
            pass

    class DataType(enum.IntEnum):
        FLOAT, HALF, INT8, INT32, BOOL, UINT8, FP8, BF16, INT64, INT4 = range(10)

    class TensorIOMode(enum.IntEnum):
        NONE, INPUT, OUTPUT = range(3)

    if major == 10:  # TensorRT 11 renumbered the flags and dropped EXPLICIT_BATCH (tests/tensorrt_api.py)
        NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    else:
        NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0})

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    BuilderFlag = enum.IntEnum("BuilderFlag", list(_FLAGS[10 if major == 10 else 11]))

    class ITensor:
        def __init__(self, name, shape):
            self._name, self._shape = name, shape

        @property
        def name(self):
            return self._name

        @property
        def shape(self):
            return self._shape

    class INetworkDefinition:
        def __init__(self, flags):
            self._flags, self._onnx, self._inputs = flags, None, []

        @property
        def num_inputs(self):
            return len(self._inputs)

        def get_input(self, index):
            return self._inputs[index]

    class ParserError:
        def __init__(self, desc):
            self._desc = desc

        def desc(self):
            return self._desc

    class OnnxParser:
        def __init__(self, network, logger):
            self._network, self._errors = network, []

        def parse_from_file(self, model):
            import onnx

            try:
                proto = onnx.load(model)
                onnx.checker.check_model(proto)
            except Exception as err:  # noqa: BLE001 - the real parser reports, it does not raise
                self._errors.append(ParserError(f"{type(err).__name__}: {err}"))
                return False
            self._network._onnx = proto.SerializeToString()
            init = {i.name for i in proto.graph.initializer}
            self._network._inputs = [
                ITensor(i.name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim))
                for i in proto.graph.input if i.name not in init]
            return True

        @property
        def num_errors(self):
            return len(self._errors)

        def get_error(self, index):
            return self._errors[index]

    class IOptimizationProfile:
        def __init__(self):
            self._shapes = {}

        def set_shape(self, input, min, opt, max):  # noqa: A002 - TensorRT's keyword names
            self._shapes[input] = [list(map(int, min)), list(map(int, opt)), list(map(int, max))]

    class IBuilderConfig:
        def __init__(self):
            self._flags, self._profiles, self._pools = set(), [], {}

        def set_flag(self, flag):
            self._flags.add(BuilderFlag(flag).name)

        def set_memory_pool_limit(self, pool, pool_size):
            self._pools[MemoryPoolType(pool).name] = int(pool_size)

        def add_optimization_profile(self, profile):
            self._profiles.append(profile)
            return len(self._profiles) - 1

    class IHostMemory(bytes):
        @property
        def nbytes(self):
            return len(self)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            return INetworkDefinition(int(flags))

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            error = _build_error(network, config)
            if error:
                log.append(f"[E] {error}")
                return None
            header = {"version": version, "profiles": [p._shapes for p in config._profiles], "drift": drift}
            return IHostMemory(MAGIC + json.dumps(header).encode() + b"\n" + network._onnx)

    def _build_error(network, config):
        # 11: always strongly typed (the flag is ignored); 10.x: weakly typed unless the flag is set
        strongly = major >= 11 or bool(network._flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        used = sorted(f for f in config._flags if f in PRECISION_FLAGS)
        if strongly and used:
            return f"builder flag {used[0]} is not allowed for a strongly typed network"
        if not config._profiles:
            return "a network with dynamic shapes needs at least one optimization profile"
        for k, prof in enumerate(config._profiles):
            for tensor in network._inputs:
                if all(d >= 0 for d in tensor.shape):
                    continue
                if tensor.name not in prof._shapes:
                    return f"profile {k} has no shape for input {tensor.name}"
                lo, mid, hi = prof._shapes[tensor.name]
                if not len(lo) == len(mid) == len(hi) == len(tensor.shape):
                    return f"profile {k}: {tensor.name} has rank {len(tensor.shape)}, not {len(lo)}"
                if any(not a <= b <= c for a, b, c in zip(lo, mid, hi)):
                    return f"profile {k}: {tensor.name} needs min <= opt <= max ({lo}, {mid}, {hi})"
                if any(d >= 0 and not a == c == d for d, a, c in zip(tensor.shape, lo, hi)):
                    return f"profile {k}: {tensor.name} differs from the network's static dimensions {tensor.shape}"
        return None

    class IExecutionContext:
        def __init__(self, engine):
            self._engine, self._shapes, self._addresses, self._profile, self._results = engine, {}, {}, 0, None

        def set_optimization_profile_async(self, profile_index, stream_handle):
            if not 0 <= profile_index < self._engine.num_optimization_profiles:
                return False
            self._profile, self._shapes, self._results = profile_index, {}, None
            return True

        @property
        def active_optimization_profile(self):
            return self._profile

        def set_input_shape(self, name, shape):
            shape = tuple(int(d) for d in shape)
            if name in self._engine._profiles[self._profile]:
                lo, _, hi = self._engine._profiles[self._profile][name]
                if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
                    log.append(f"[E] {name}: shape {shape} is outside profile {self._profile}")
                    return False
            self._shapes[name], self._results = shape, None
            return True

        def set_tensor_address(self, name, memory):
            self._addresses[name] = int(memory)
            return True

        def _run(self):
            # TensorRT infers output shapes from the input shapes; the fake runs the graph to learn them
            if self._results is None:
                feeds = {}
                for i in self._engine._session.get_inputs():
                    feeds[i.name] = gpu.read(self._addresses[i.name], self._shapes[i.name], _NP[_TYPES[i.type]])
                names = [o.name for o in self._engine._session.get_outputs()]
                out = dict(zip(names, self._engine._session.run(names, feeds)))
                scale = self._engine._drift
                self._results = {k: (v * (1 + scale)).astype(v.dtype) if scale and v.dtype.kind == "f" else v
                                 for k, v in out.items()}
            return self._results

        def get_tensor_shape(self, name):
            return tuple(self._run()[name].shape)

        def execute_async_v3(self, stream_handle):
            missing = [i.name for i in self._engine._session.get_inputs() if i.name not in self._shapes]
            if missing:
                log.append(f"[E] input {missing[0]} has no shape")
                return False
            for name, value in self._run().items():
                gpu.write(self._addresses[name], value)
            self._results = None
            return True

    class ICudaEngine:
        def __init__(self, header, data):
            import onnxruntime as ort

            self._session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            self._profiles = [{k: tuple(map(tuple, v)) for k, v in p.items()} for p in header["profiles"]]
            self._drift = header.get("drift", 0.0)
            io = [*self._session.get_inputs(), *self._session.get_outputs()]
            self._types = {i.name: _TYPES[i.type] for i in io}
            self._inputs = {i.name for i in self._session.get_inputs()}
            self._names = list(self._types)

        @property
        def num_io_tensors(self):
            return len(self._names)

        @property
        def num_optimization_profiles(self):
            return len(self._profiles)

        def get_tensor_name(self, index):
            return self._names[index]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name in self._inputs else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return DataType[self._types[name]]

        def get_tensor_profile_shape(self, name, profile_index):
            if name not in self._profiles[profile_index]:
                static = next(i.shape for i in self._session.get_inputs() if i.name == name)
                return (tuple(static),) * 3
            return self._profiles[profile_index][name]

        def create_execution_context(self):
            return IExecutionContext(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, serialized_engine):
            data = bytes(serialized_engine)
            if not data.startswith(MAGIC):
                log.append("[E] the engine plan file is not compatible with this version of TensorRT")
                return None
            header, _, onnx_bytes = data[len(MAGIC):].partition(b"\n")
            header = json.loads(header)
            if header["version"] != version:
                log.append(f"[E] the engine was built by TensorRT {header['version']}, this is {version}")
                return None
            return ICudaEngine(header, onnx_bytes)

    for obj in (Logger, DataType, TensorIOMode, NetworkDefinitionCreationFlag, MemoryPoolType, BuilderFlag, ITensor,
                INetworkDefinition, ParserError, OnnxParser, IOptimizationProfile, IBuilderConfig, IHostMemory, Builder,
                IExecutionContext, ICudaEngine, Runtime):
        setattr(trt, obj.__name__, obj)
    trt.float32, trt.float16, trt.int8 = DataType.FLOAT, DataType.HALF, DataType.INT8
    return trt


def install(monkeypatch, gpu: FakeGpu | None = None, version: str = "10.3.0.26", drift: float = 0.0):
    """Put a fake tensorrt and cuda.bindings.runtime into sys.modules for one test; returns (gpu, trt module).

    tiercel.runtime.tensorrt.Cuda's shared instance is reset so the next session builds one on the fake."""
    import sys

    from tiercel.runtime import tensorrt as rt_trt

    gpu = gpu or FakeGpu()
    trt = module(gpu, version, drift)
    runtime = cuda_runtime(gpu)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, mod in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", runtime)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(rt_trt.Cuda, "_shared", None)
    return gpu, trt
