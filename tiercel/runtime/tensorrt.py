"""TensorRT engines (.engine files written by `tiercel export --backend tensorrt`) as runtime sessions.

    m = tiercel.runtime.load("bundle/", backend="tensorrt")     # NVIDIA GPU, tensorrt >= 10, cuda-python

One TensorRTSession per engine: it deserialises the engine, and per call sets every input's shape
(`set_input_shape`), binds device addresses (`set_tensor_address`), runs `execute_async_v3` on one CUDA stream
that all sessions of the process share (so a tensor one engine writes is ready for the next), and copies the
outputs the caller wants on the host back. Host inputs go through per-input staging buffers that grow and are
reused; outputs named in `keep` get fresh device buffers that stay on the GPU as DeviceArray (the KV cache
between decode steps; model.py's BoundKVDecoder) and are freed stream-ordered when dropped.

The planning (dtype table, shape checks against the engine's optimisation profile, buffer sizes) is plain
Python and tested on CPU. Everything that touches tensorrt or CUDA was written against the TensorRT 10 and
cuda-python APIs and has NOT been run: no GPU was available where it was written (see docs/export.md, "TensorRT").
Knows nothing about what the graphs compute, nor about torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiercel.errors import BundleError, MissingDependency, require

# TensorRT DataType names -> numpy; others (bf16, fp8, int4) are not used by tiercel's engines' I/O
TRT_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32,
              "INT64": np.int64, "BOOL": np.bool_}
MIN_BUFFER = 256  # bytes; also gives empty tensors (the merged decoder's first past) a valid address


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor: name, direction, numpy dtype, and (inputs) the profile's min/max shapes."""

    name: str
    is_input: bool
    dtype: np.dtype
    min_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None


def numpy_dtype(trt_name: str, where: str = "engine") -> np.dtype:
    """The numpy dtype of a TensorRT DataType name ("FLOAT", "HALF", ...); BundleError for others."""
    if trt_name not in TRT_DTYPES:
        raise BundleError(f"{where}: I/O tensor type {trt_name} is not supported by tiercel's runtime "
                          f"(supported: {', '.join(TRT_DTYPES)}); rebuild the engine with `tiercel export --backend tensorrt`")
    return np.dtype(TRT_DTYPES[trt_name])


def check_shape(where: str, spec: TensorSpec, shape: tuple[int, ...]) -> None:
    """BundleError when `shape` does not fit input `spec`'s optimisation profile (rank or any dimension)."""
    lo, hi = spec.min_shape, spec.max_shape
    if lo is None or hi is None:
        return
    if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
        raise BundleError(f"{where}: input {spec.name} has shape {tuple(shape)}, outside the engine's profile "
                          f"(min {tuple(lo)}, max {tuple(hi)}); use a smaller batch/prompt/max_new_tokens or rebuild "
                          "the engines with larger limits (tiercel.export.tensorrt.profiles)")


def nbytes(shape, dtype) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def capacity(size: int) -> int:
    """Bytes to allocate for a staging buffer of `size` bytes: the next power of two, at least MIN_BUFFER."""
    return max(MIN_BUFFER, 1 << max(0, int(size) - 1).bit_length())


def cudart():
    """cuda-python's runtime module (cuda.bindings.runtime, or cuda.cudart in cuda-python < 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as err:
            raise MissingDependency("cuda-python", "tensorrt", "the tensorrt backend") from err
    return runtime


class Cuda:
    """The few CUDA runtime calls the sessions need, on one stream shared by every session of the process."""

    _shared = None

    @classmethod
    def shared(cls) -> Cuda:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def __init__(self):
        self.rt = cudart()
        self.stream = self.call(self.rt.cudaStreamCreate())
        self.handle = int(self.stream)

    def call(self, result):
        """Check a cuda-python (err, *values) tuple; returns the value(s)."""
        err, *values = result
        if err != self.rt.cudaError_t.cudaSuccess:
            name = self.rt.cudaGetErrorName(err)[1]
            raise BundleError(f"CUDA call failed ({name.decode() if isinstance(name, bytes) else name}); "
                              "check the GPU and driver with nvidia-smi")
        return values[0] if len(values) == 1 else (values or None)

    def malloc(self, size: int) -> int:
        return int(self.call(self.rt.cudaMallocAsync(size, self.stream)))

    def free(self, ptr: int) -> None:
        self.call(self.rt.cudaFreeAsync(ptr, self.stream))  # stream-ordered: after work already queued on it

    def upload(self, ptr: int, array: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, self.stream))

    def download(self, array: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, kind, self.stream))

    def sync(self) -> None:
        self.call(self.rt.cudaStreamSynchronize(self.stream))


class DeviceArray:
    """A tensor in GPU memory: pointer, shape, dtype. Freed (stream-ordered) when the last reference goes."""

    def __init__(self, cuda: Cuda, shape, dtype, size: int | None = None):
        self.cuda, self.shape, self.dtype = cuda, tuple(int(d) for d in shape), np.dtype(dtype)
        self.size = max(MIN_BUFFER, size if size is not None else nbytes(self.shape, self.dtype))
        self.ptr = cuda.malloc(self.size)

    @classmethod
    def from_numpy(cls, cuda: Cuda, array: np.ndarray) -> DeviceArray:
        array = np.ascontiguousarray(array)
        out = cls(cuda, array.shape, array.dtype)
        cuda.upload(out.ptr, array)
        cuda.sync()  # the host array may go away as soon as we return
        return out

    def numpy(self) -> np.ndarray:
        host = np.empty(self.shape, self.dtype)
        self.cuda.download(host, self.ptr)
        self.cuda.sync()
        return host

    def __del__(self):
        try:
            self.cuda.free(self.ptr)
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass


class TensorRTSession:
    """One deserialised engine with an execution context; the session interface of backends.py."""

    def __init__(self, file: Path, device: str = "cuda", threads: int | None = None, options: dict | None = None):
        trt = require("tensorrt", "tensorrt", "the tensorrt backend")
        self.cuda, self.where = Cuda.shared(), str(file)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(file).read_bytes())
        if self.engine is None:
            raise BundleError(f"{file}: TensorRT cannot load this engine (engines are tied to the TensorRT version and "
                              "GPU that built them); rebuild it here with `tiercel export --backend tensorrt`")
        self.context = self.engine.create_execution_context()
        specs = [self._spec(trt, self.engine.get_tensor_name(i)) for i in range(self.engine.num_io_tensors)]
        self.inputs = [s for s in specs if s.is_input]
        self.outputs = [s for s in specs if not s.is_input]
        self.input_names = [s.name for s in self.inputs]
        self.output_names = [s.name for s in self.outputs]
        self.staging: dict[str, DeviceArray] = {}

    def _spec(self, trt, name: str) -> TensorSpec:
        is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dtype = numpy_dtype(self.engine.get_tensor_dtype(name).name, self.where)
        if not is_input:
            return TensorSpec(name, False, dtype)
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        return TensorSpec(name, True, dtype, tuple(lo), tuple(hi))

    def _stage(self, key: str, size: int) -> DeviceArray:
        """A reusable device buffer of at least `size` bytes (safe: every run ends with a stream sync)."""
        buf = self.staging.get(key)
        if buf is None or buf.size < size:
            buf = self.staging[key] = DeviceArray(self.cuda, (0,), np.uint8, capacity(size))
        return buf

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_bound(feeds, keep=())

    def run_bound(self, feeds: dict, keep=()) -> dict:
        """Run once; `feeds` are numpy arrays or DeviceArrays, outputs in `keep` stay DeviceArrays."""
        hold = []  # host arrays stay alive until the stream is synchronised
        for spec in self.inputs:
            value = feeds[spec.name]
            if isinstance(value, DeviceArray):
                ptr, shape = value.ptr, value.shape
            else:
                array = np.ascontiguousarray(value, dtype=spec.dtype)
                ptr, shape = self._stage(spec.name, array.nbytes).ptr, array.shape
                self.cuda.upload(ptr, array)
                hold.append(array)
            check_shape(self.where, spec, shape)
            self.context.set_input_shape(spec.name, shape)
            self.context.set_tensor_address(spec.name, ptr)
        out, host = {}, []
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise BundleError(f"{self.where}: output {spec.name} has no shape after setting the inputs ({shape})")
            if spec.name in keep:
                out[spec.name] = buf = DeviceArray(self.cuda, shape, spec.dtype)
            else:
                buf = self._stage(f"out:{spec.name}", nbytes(shape, spec.dtype))
                out[spec.name] = np.empty(shape, spec.dtype)
                host.append((out[spec.name], buf.ptr))
            self.context.set_tensor_address(spec.name, buf.ptr)
        if not self.context.execute_async_v3(self.cuda.handle):
            raise BundleError(f"{self.where}: TensorRT execution failed (see the TensorRT log above)")
        for array, ptr in host:
            self.cuda.download(array, ptr)
        self.cuda.sync()
        return out

    def to_device(self, array: np.ndarray, name: str | None = None) -> DeviceArray:
        """A DeviceArray holding `array`, cast to input `name`'s dtype when given."""
        dtype = next((s.dtype for s in self.inputs if s.name == name), array.dtype)
        return DeviceArray.from_numpy(self.cuda, np.asarray(array, dtype=dtype))

    def take_rows(self, value: DeviceArray, rows: np.ndarray) -> DeviceArray:
        """value[rows] on the batch axis through the host (beam search reorders once per step)."""
        return DeviceArray.from_numpy(self.cuda, value.numpy()[rows])
