"""TensorRT engines (.engine files written by `tiercel engines` or `tiercel export --backend tensorrt`) as sessions.

    m = tiercel.runtime.load("bundle/", backend="tensorrt")     # NVIDIA GPU, TensorRT 10.3 .. 11.x, cuda-python

One TensorRTSession per engine: it deserialises the engine, and per call picks the optimisation profile that
fits the call's shapes best (one for a single row, one for batches; `set_optimization_profile_async`), sets every
input's shape (`set_input_shape`), binds device addresses (`set_tensor_address`), runs `execute_async_v3` on one
CUDA stream that all sessions of the process share (so a tensor one engine writes is ready for the next), and
copies the outputs the caller wants on the host back. A call with more rows than any profile takes is split into
chunks of rows that fit, and the chunks' outputs are joined (on the device for outputs that stay there). Batched
inputs may differ in rows by a whole factor (a per_item decoder: encoder inputs per item, the rest per item x
beams): chunks then hold whole items, each with all of its beams. Host
inputs go through per-input staging buffers that grow and are reused; outputs named in `keep` get fresh device
buffers that stay on the GPU as DeviceArray (the KV cache between decode steps; model.py's BoundKVDecoder) and
are freed stream-ordered when dropped.

Engines run only on the TensorRT version and GPU that built them: `check_engines` compares what the manifest
records for each engine (tiercel.export.tensorrt) with this machine before any engine is read.

The planning (dtype table, profile choice, chunk sizes, buffer sizes, version range) is plain Python and tested
on CPU; the rest is tested through tests/fake_tensorrt.py, a stand-in for tensorrt and cuda.bindings that runs
each engine's ONNX graph with onnxruntime. Written against the TensorRT 10.3 and 11 and cuda-python 12/13 APIs;
it has NOT run on a GPU (none was available where it was written; see docs/export.md, "TensorRT").
Knows nothing about what the graphs compute, nor about torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiercel.errors import BundleError, MissingDependency, require

# TensorRT DataType names -> numpy; others (bf16, fp8, int4) are not used by tiercel's engines' I/O
TRT_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32,
              "INT64": np.int64, "BOOL": np.bool_}
MIN_BUFFER = 256  # bytes; also gives empty tensors (the merged decoder's first past) a valid address
# The TensorRT releases tiercel builds and runs engines with: 10.3 (JetPack 6 on Orin) up to 11.x. Strongly typed
# networks and the name-based tensor API exist in all of them; 12 is refused until someone checks it.
TENSORRT_RANGE = ((10, 3), (12, 0))


def check_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string; BundleError outside TENSORRT_RANGE."""
    found = re.match(r"(\d+)\.(\d+)", str(version))
    (lo, hi), got = TENSORRT_RANGE, (int(found[1]), int(found[2])) if found else None
    if got is None or not lo <= got < hi:
        raise BundleError(f"TensorRT {version} is not supported: tiercel builds and runs engines with TensorRT "
                          f"{lo[0]}.{lo[1]} up to {hi[0] - 1}.x; install one of those (JetPack 6 ships 10.3)")
    return got


def import_tensorrt(why: str = "the tensorrt backend"):
    """The tensorrt module, its version checked (MissingDependency without it, BundleError outside the range)."""
    trt = require("tensorrt", "tensorrt", why)
    check_version(getattr(trt, "__version__", "unknown"))
    return trt


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor: name, direction, numpy dtype, and (inputs) each profile's (min, opt, max) shapes."""

    name: str
    is_input: bool
    dtype: np.dtype
    profiles: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = ()

    def batched(self) -> bool:
        """Whether axis 0 is a dynamic batch axis (the profiles' min and max differ there)."""
        return bool(self.profiles) and any(lo[:1] != hi[:1] for lo, _, hi in self.profiles)


def numpy_dtype(trt_name: str, where: str = "engine") -> np.dtype:
    """The numpy dtype of a TensorRT DataType name ("FLOAT", "HALF", ...); BundleError for others."""
    if trt_name not in TRT_DTYPES:
        raise BundleError(f"{where}: I/O tensor type {trt_name} is not supported by tiercel's runtime "
                          f"(supported: {', '.join(TRT_DTYPES)}); rebuild the engines with `tiercel engines BUNDLE`")
    return np.dtype(TRT_DTYPES[trt_name])


def _fits(shape, lo, hi) -> bool:
    return len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))


def check_shape(where: str, spec: TensorSpec, shape: tuple[int, ...], profile: int = 0) -> None:
    """BundleError when `shape` does not fit input `spec`'s optimisation profile `profile` (rank or any dimension)."""
    if not spec.profiles:
        return
    lo, _, hi = spec.profiles[profile]
    if not _fits(shape, lo, hi):
        raise BundleError(f"{where}: input {spec.name} has shape {tuple(shape)}, outside the engine's profile "
                          f"(min {tuple(lo)}, max {tuple(hi)}); use a shorter prompt or fewer max_new_tokens, or "
                          "rebuild the engines with larger limits (`tiercel engines BUNDLE --max-batch N`)")


def batch_units(where: str, batched: list[TensorSpec], shapes: dict[str, tuple[int, ...]]) -> tuple[int, dict[str, int]]:
    """(units, {input: rows per unit}) of a call's batched inputs: units is the fewest rows any of them has (a
    per_item decoder's items; otherwise the batch) and every other one must hold a whole multiple of it (beams).
    BundleError when they disagree otherwise."""
    sizes = {s.name: shapes[s.name][0] for s in batched if shapes[s.name]}
    units = min(sizes.values(), default=0)
    if units < 1 or any(n % units for n in sizes.values()):
        raise BundleError(f"{where}: the batched inputs disagree on the batch size "
                          f"({', '.join(f'{name} {n}' for name, n in sizes.items())})")
    return units, {name: n // units for name, n in sizes.items()}


def plan_call(where: str, inputs: list[TensorSpec], shapes: dict[str, tuple[int, ...]]) -> tuple[int, int | None]:
    """(profile, units per run) for a call with these input shapes; units as batch_units counts them (rows, or
    a per_item decoder's items).

    The count is None when the call runs whole. Among the profiles that take the call whole, the one whose opt
    batch is nearest the call's batch (in ratio) wins, so one row runs on the kernels chosen for one row. When none
    takes the whole batch but one takes fewer units of it, the call is split into runs of the most units a profile
    takes. Otherwise BundleError names the first input that fits no profile.
    """
    count = len(inputs[0].profiles) if inputs and inputs[0].profiles else 0
    if count == 0:
        return 0, None
    batched = [s for s in inputs if s.batched()]
    batch = shapes[batched[0].name][0] if batched and shapes[batched[0].name] else None

    def fits(k: int, units: int | None) -> bool:
        for s in inputs:
            shape = shapes[s.name]
            if units is not None and s in batched:
                shape = (units * per[s.name], *shape[1:])
            lo, _, hi = s.profiles[k]
            if not _fits(shape, lo, hi):
                return False
        return True

    def nearness(k: int) -> float:
        opt = batched[0].profiles[k][1][0] if batched else 1
        return abs(math.log(max(batch or 1, 1) / max(opt, 1)))

    whole = [k for k in range(count) if fits(k, None)]
    if whole:
        return min(whole, key=lambda k: (nearness(k), k)), None
    units, per = batch_units(where, batched, shapes) if batch else (0, {})
    if units > 1:
        caps = {k: min(s.profiles[k][2][0] // per[s.name] for s in batched) for k in range(count)}
        split = [k for k in range(count) if 1 <= caps[k] < units and fits(k, caps[k])]
        if split:
            k = max(split, key=lambda k: (caps[k], -k))
            return k, caps[k]
    last = count - 1
    for s in inputs:
        check_shape(where, s, shapes[s.name], last)
    raise BundleError(f"{where}: no optimisation profile takes these input shapes; rebuild the engines with "
                      "`tiercel engines BUNDLE`")


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

    def copy(self, dst: int, src: int, size: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self.call(self.rt.cudaMemcpyAsync(dst, src, size, kind, self.stream))

    def sync(self) -> None:
        self.call(self.rt.cudaStreamSynchronize(self.stream))

    def device(self) -> dict:
        """{"gpu": name, "compute_capability": "major.minor"} of the current CUDA device."""
        props = self.call(self.rt.cudaGetDeviceProperties(self.call(self.rt.cudaGetDevice())))
        name = props.name
        name = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).split("\x00")[0].strip()
        return {"gpu": name, "compute_capability": f"{props.major}.{props.minor}"}


def device_info() -> dict:
    """What engines are tied to on this machine: {"tensorrt": version, "gpu": name, "compute_capability": "8.7"}."""
    trt = import_tensorrt()
    return {"tensorrt": str(trt.__version__), **Cuda.shared().device()}


def engine_mismatch(built: dict, here: dict) -> str | None:
    """What differs between where an engine was built and this machine ("TensorRT 10.3.0 vs 11.4.0"), or None."""
    diffs = [f"{label} {built.get(key)} vs {here.get(key)}" for key, label in
             (("tensorrt", "TensorRT"), ("gpu", "GPU"), ("compute_capability", "compute capability"))
             if built.get(key) != here.get(key)]
    return "; ".join(diffs) or None


def check_engines(bundle, entries: dict) -> None:
    """BundleError (one line) when an engine of `entries` was built for another TensorRT or GPU than this one.

    Engines without a record of where they were built (written before tiercel recorded it) are opened as they
    are; TensorRT itself then refuses a foreign one (TensorRTSession says to rebuild).
    """
    recorded = {name: e.engine for name, e in entries.items() if getattr(e, "engine", None) is not None}
    if not recorded:
        return
    here = device_info()
    for name, engine in recorded.items():
        why = engine_mismatch(engine.model_dump(), here)
        if why:
            raise BundleError(f"{bundle.root / entries[name].file}: built for another machine ({why}); engines run "
                              f"only where they were built: rebuild them here with `tiercel engines {bundle.root}`")


class DeviceArray:
    """A tensor in GPU memory: pointer, shape, dtype. Freed (stream-ordered) when the last reference goes.

    `rows(start, stop)` is a view of rows start..stop of axis 0 (contiguous memory: the same buffer at an
    offset); a view frees nothing and keeps its parent alive.
    """

    def __init__(self, cuda: Cuda, shape, dtype, size: int | None = None, view_of: tuple | None = None):
        self.cuda, self.shape, self.dtype = cuda, tuple(int(d) for d in shape), np.dtype(dtype)
        if view_of is not None:
            self.parent, offset = view_of
            self.ptr, self.size = self.parent.ptr + offset, nbytes(self.shape, self.dtype)
            return
        self.parent = None
        self.size = max(MIN_BUFFER, size if size is not None else nbytes(self.shape, self.dtype))
        self.ptr = cuda.malloc(self.size)

    @classmethod
    def from_numpy(cls, cuda: Cuda, array: np.ndarray) -> DeviceArray:
        array = np.ascontiguousarray(array)
        out = cls(cuda, array.shape, array.dtype)
        cuda.upload(out.ptr, array)
        cuda.sync()  # the host array may go away as soon as we return
        return out

    def rows(self, start: int, stop: int) -> DeviceArray:
        row = nbytes(self.shape[1:], self.dtype)
        return DeviceArray(self.cuda, (stop - start, *self.shape[1:]), self.dtype, view_of=(self, start * row))

    def numpy(self) -> np.ndarray:
        host = np.empty(self.shape, self.dtype)
        self.cuda.download(host, self.ptr)
        self.cuda.sync()
        return host

    def __del__(self):
        if getattr(self, "parent", True) is not None:  # a view, or __init__ failed before allocating
            return
        try:
            self.cuda.free(self.ptr)
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass


def join_rows(cuda: Cuda, parts: list[DeviceArray]) -> DeviceArray:
    """One DeviceArray holding `parts` one after another on axis 0 (device-to-device copies)."""
    out = DeviceArray(cuda, (sum(p.shape[0] for p in parts), *parts[0].shape[1:]), parts[0].dtype)
    offset = 0
    for p in parts:
        size = nbytes(p.shape, p.dtype)
        cuda.copy(out.ptr + offset, p.ptr, size)
        offset += size
    return out


def _rows(value, start: int, stop: int):
    return value.rows(start, stop) if isinstance(value, DeviceArray) else np.asarray(value)[start:stop]


class TensorRTSession:
    """One deserialised engine with an execution context; the session interface of backends.py."""

    def __init__(self, file: Path, device: str = "cuda", threads: int | None = None, options: dict | None = None):
        trt = import_tensorrt()
        self.cuda, self.where = Cuda.shared(), str(file)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(file).read_bytes())
        if self.engine is None:
            raise BundleError(f"{file}: TensorRT cannot load this engine (engines are tied to the TensorRT version and "
                              "GPU that built them); rebuild it here with `tiercel engines BUNDLE`")
        self.context = self.engine.create_execution_context()
        self.profile = 0  # a new context starts on profile 0
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
        shapes = [self.engine.get_tensor_profile_shape(name, k) for k in range(self.engine.num_optimization_profiles)]
        return TensorSpec(name, True, dtype, tuple(tuple(tuple(int(d) for d in s) for s in level) for level in shapes))

    def _stage(self, key: str, size: int) -> DeviceArray:
        """A reusable device buffer of at least `size` bytes (safe: every run ends with a stream sync)."""
        buf = self.staging.get(key)
        if buf is None or buf.size < size:
            buf = self.staging[key] = DeviceArray(self.cuda, (0,), np.uint8, capacity(size))
        return buf

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_bound(feeds, keep=())

    def run_bound(self, feeds: dict, keep=()) -> dict:
        """Run once; `feeds` are numpy arrays or DeviceArrays, outputs in `keep` stay DeviceArrays.

        A batch larger than every profile runs in chunks of rows (plan_call; whole items of a per_item decoder)
        whose outputs are joined."""
        shapes = {s.name: tuple(feeds[s.name].shape) for s in self.inputs}
        profile, rows = plan_call(self.where, self.inputs, shapes)
        if profile != self.profile:
            if not self.context.set_optimization_profile_async(profile, self.cuda.handle):
                raise BundleError(f"{self.where}: TensorRT cannot switch to optimisation profile {profile}")
            self.profile = profile
        if rows is None:
            return self._run(feeds, keep)
        units, per = batch_units(self.where, [s for s in self.inputs if s.batched()], shapes)
        parts, sizes = [], []
        for start in range(0, units, rows):
            stop = min(start + rows, units)
            chunk = {n: _rows(v, start * per[n], stop * per[n]) if n in per else v for n, v in feeds.items()}
            parts.append(self._run(chunk, keep))
            sizes.append(stop - start)
        out = {}
        for name in self.output_names:
            pieces = [p[name] for p in parts]
            first = pieces[0].shape[0] // sizes[0] if pieces[0].shape else 0  # output rows per unit
            if not first or any(p.shape[:1] != (n * first,) for p, n in zip(pieces, sizes)):
                raise BundleError(f"{self.where}: output {name} has no batch axis to join the chunks on; rebuild the "
                                  "engines with a larger --max-batch")
            out[name] = join_rows(self.cuda, pieces) if name in keep else np.concatenate(pieces)
        self.cuda.sync()  # the chunks' buffers are freed once the joins have read them
        return out

    def _run(self, feeds: dict, keep) -> dict:
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
            if not self.context.set_input_shape(spec.name, shape):  # plan_call checked it against the profile
                raise BundleError(f"{self.where}: TensorRT refused shape {tuple(shape)} for input {spec.name}")
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
