"""The fake TensorRT and CUDA modules (tests/fake_tensorrt.py) only have names the real ones have.

tests/tensorrt_api.py lists the TensorRT 10.3 and 11 Python API (and the cuda-python runtime calls), read from
NVIDIA's bindings and documentation. Every public name of the fakes must be in the list of its version, with
properties as properties and methods as methods: tiercel's code can only call what the fake has (anything
else is an AttributeError in the end-to-end tests), so a call TensorRT 10.3 or 11 lacks fails on a CPU.
"""

from __future__ import annotations

import enum

import pytest

from tests import fake_tensorrt
from tests import tensorrt_api as api


@pytest.mark.parametrize(("version", "names"), [("10.3.0.26", api.TRT_10_3), ("11.4.0", api.TRT_11)])
def test_the_fake_tensorrt_has_only_real_names(version, names):
    trt = fake_tensorrt.module(fake_tensorrt.FakeGpu(), version)
    public = [n for n in vars(trt) if not n.startswith("_") or n == "__version__"]
    assert sorted(n for n in public if n not in names["tensorrt"]) == []
    checked = 0
    for name in public:
        cls = getattr(trt, name)
        if not isinstance(cls, type):
            continue
        if issubclass(cls, enum.Enum):
            own = set(cls.__members__)
            assert sorted(own - names[name]) == [], name
        else:
            own = {n: v for n, v in vars(cls).items() if not n.startswith("_")}
            assert sorted(set(own) - names[name]) == [], name
            props = api.PROPERTIES.get(name, frozenset())
            assert sorted(n for n, v in own.items() if isinstance(v, property) != (n in props)) == [], name
        checked += 1
    assert checked >= 15
    assert "FP16" not in trt.BuilderFlag.__members__ if version.startswith("11") else "FP16" in trt.BuilderFlag.__members__


def test_removed_flags_are_the_documented_ones():
    removed = api.REMOVED_IN_11["BuilderFlag"]
    assert {"FP16", "INT8", "BF16", "OBEY_PRECISION_CONSTRAINTS"} <= removed
    assert "EXPLICIT_BATCH" in api.TRT_10_3["NetworkDefinitionCreationFlag"] - api.TRT_11["NetworkDefinitionCreationFlag"]
    assert "STRONGLY_TYPED" in api.TRT_10_3["NetworkDefinitionCreationFlag"] & api.TRT_11["NetworkDefinitionCreationFlag"]


def test_the_fake_cuda_runtime_has_only_real_calls():
    rt = fake_tensorrt.cuda_runtime(fake_tensorrt.FakeGpu())
    assert sorted(n for n in vars(rt) if not n.startswith("_") and n not in api.CUDA_RUNTIME) == []
    ok, stream = rt.cudaStreamCreate()
    assert ok == rt.cudaError_t.cudaSuccess and rt.cudaStreamSynchronize(stream) == (ok,)  # (err,) for no output
    ok, props = rt.cudaGetDeviceProperties(0)
    assert isinstance(props.name, bytes) and {"name", "major", "minor"} <= api.CUDA_DEVICE_PROP_FIELDS
