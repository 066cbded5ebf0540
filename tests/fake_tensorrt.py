"""A stand-in for the tensorrt module and CUDA memory, so TensorRTSession's own code runs on a CPU.

An "engine" file holds ONNX bytes; the fake engine runs them with onnxruntime. Device memory is a dict of
bytearrays keyed by fake pointers that are never reused, so a buffer freed while still bound fails loudly
(KeyError). What this cannot show: that real TensorRT/CUDA behave as the API documents.
"""

from __future__ import annotations

import math
import types

import numpy as np

_TYPES = {"tensor(float)": "FLOAT", "tensor(float16)": "HALF", "tensor(int64)": "INT64", "tensor(bool)": "BOOL"}
_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "BOOL": np.bool_}


class FakeCuda:
    def __init__(self):
        self.memory, self.next, self.handle = {}, 4096, 0
        self.uploads = self.downloads = 0

    def malloc(self, size: int) -> int:
        ptr, self.next = self.next, self.next + size + 4096
        self.memory[ptr] = bytearray(size)
        return ptr

    def free(self, ptr: int) -> None:
        del self.memory[ptr]

    def upload(self, ptr: int, array: np.ndarray) -> None:
        self.uploads += 1
        self.memory[ptr][: array.nbytes] = array.tobytes()

    def download(self, array: np.ndarray, ptr: int) -> None:
        self.downloads += 1
        array.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(self.memory[ptr][: array.nbytes]), np.uint8)

    def read(self, ptr: int, shape, dtype) -> np.ndarray:
        count = math.prod(shape)
        return np.frombuffer(bytes(self.memory[ptr]), dtype, count=count).reshape(shape)

    def sync(self) -> None:
        pass


class _Context:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.results = engine, {}, {}, None

    def set_input_shape(self, name, shape):
        self.shapes[name], self.results = tuple(shape), None
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def _run(self):
        # real TensorRT infers output shapes from input shapes; the fake runs the graph to learn them
        if self.results is None:
            cuda, feeds = self.engine.cuda, {}
            for i in self.engine.session.get_inputs():
                feeds[i.name] = cuda.read(self.addresses[i.name], self.shapes[i.name], _NP[_TYPES[i.type]]).copy()
            names = [o.name for o in self.engine.session.get_outputs()]
            self.results = dict(zip(names, self.engine.session.run(names, feeds)))
        return self.results

    def get_tensor_shape(self, name):
        return self._run()[name].shape

    def execute_async_v3(self, stream):
        for name, value in self._run().items():
            self.engine.cuda.memory[self.addresses[name]][: value.nbytes] = np.ascontiguousarray(value).tobytes()
        self.results = None
        return True


class _Engine:
    def __init__(self, data: bytes, cuda: FakeCuda):
        import onnxruntime as ort

        self.session, self.cuda = ort.InferenceSession(data, providers=["CPUExecutionProvider"]), cuda
        self.types = {i.name: _TYPES[i.type] for i in [*self.session.get_inputs(), *self.session.get_outputs()]}
        self.input_set = {i.name for i in self.session.get_inputs()}
        self.names = list(self.types)
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name in self.input_set else "OUTPUT"

    def get_tensor_dtype(self, name):
        return types.SimpleNamespace(name=self.types[name])

    def get_tensor_profile_shape(self, name, profile):
        rank = len(next(i.shape for i in self.session.get_inputs() if i.name == name))
        return (0,) * rank, (1,) * rank, (64,) + (4096,) * (rank - 1)

    def create_execution_context(self):
        return _Context(self)


def module(cuda: FakeCuda) -> types.ModuleType:
    """A `tensorrt` module with just what tiercel.runtime.tensorrt calls."""
    trt = types.ModuleType("tensorrt")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return _Engine(data, cuda) if data[:4] != b"bad!" else None

    trt.Runtime = Runtime
    return trt
