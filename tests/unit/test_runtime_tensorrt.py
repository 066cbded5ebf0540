"""The TensorRT backend on a CPU: planning functions, clear failures, and the session's own logic end to end.

The end-to-end tests swap in tests/fake_tensorrt.py (engines that are ONNX bytes run by onnxruntime, device
memory in bytearrays): shapes, addresses, staging buffers, device-resident KV and beam reorders go through
TensorRTSession and BoundKVDecoder exactly as on a GPU. Real TensorRT and CUDA are exercised only by the
gpu-marked tests (tests/gpu/).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys

import numpy as np
import pytest

from tests.bundles import image


def test_planning_dtypes_shapes_and_buffer_sizes():
    from tiercel.errors import BundleError
    from tiercel.runtime.tensorrt import TensorSpec, capacity, check_shape, numpy_dtype

    assert numpy_dtype("HALF") == np.float16 and numpy_dtype("INT64") == np.int64 and numpy_dtype("BOOL") == np.bool_
    with pytest.raises(BundleError, match="type BF16 is not supported"):
        numpy_dtype("BF16", "x.engine")
    spec = TensorSpec("past_key_values.0.decoder.key", True, np.dtype(np.float16), (1, 8, 1, 64), (4, 8, 1024, 64))
    check_shape("d.engine", spec, (3, 8, 17, 64))
    with pytest.raises(BundleError, match=r"d.engine: input past_key_values.0.decoder.key has shape \(5, 8, 17, 64\), "
                                          r"outside the engine's profile \(min \(1, 8, 1, 64\), max \(4, 8, 1024, 64\)\)"):
        check_shape("d.engine", spec, (5, 8, 17, 64))
    with pytest.raises(BundleError, match="outside"):
        check_shape("d.engine", spec, (1, 8, 64))
    assert [capacity(n) for n in (0, 1, 256, 257, 5000)] == [256, 256, 256, 512, 8192]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_without_tensorrt_load_says_what_to_install(bundle, tmp_path):
    import tiercel.runtime as rt
    from tiercel.errors import MissingDependency

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    man = (copy / "manifest.json").read_text().replace('"backend": "openvino"', '"backend": "tensorrt"')
    (copy / "manifest.json").write_text(man)  # an IR file stands in for an engine: loading stops before reading it
    with pytest.raises(MissingDependency, match=r"the tensorrt backend needs the 'tensorrt' package; "
                                                r"install it with: pip install 'tiercel\[tensorrt\]'"):
        rt.load(copy, backend="tensorrt")


def test_without_cuda_python_the_error_names_it(monkeypatch):
    from tiercel.errors import MissingDependency
    from tiercel.runtime.tensorrt import cudart

    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(MissingDependency, match=r"'cuda-python' package; install it with: pip install 'tiercel\[tensorrt\]'"):
        cudart()


@pytest.fixture(scope="module", params=["split", "merged"])
def trt_bundle(request, tiny_model, tiny_tokenizer, tmp_path_factory):
    """The tiny model exported with --backend tensorrt, engines replaced by their ONNX bytes (no GPU here)."""
    pytest.importorskip("onnxruntime")
    from tiercel.export import tensorrt as export_trt
    from tiercel.export.bundle import export_model

    mp = pytest.MonkeyPatch()
    built = []

    def fake_build(onnx_file, engine_file, profile, fp16=True, workspace_gb=2.0, int8=None):
        built.append((engine_file.name, sorted(profile)))
        engine_file.parent.mkdir(parents=True, exist_ok=True)
        engine_file.write_bytes(onnx_file.read_bytes())
        return engine_file

    mp.setattr(export_trt, "check_available", lambda: None)
    mp.setattr(export_trt, "build_engine", fake_build)
    out = tmp_path_factory.mktemp("trt") / request.param
    try:
        export_model(tiny_model, tiny_tokenizer, out, backends=("onnxruntime", "tensorrt"), decoder=request.param)
    finally:
        mp.undo()
    return out, built


@pytest.fixture
def fake_gpu(monkeypatch):
    from tests import fake_tensorrt
    from tiercel.runtime import tensorrt

    cuda = fake_tensorrt.FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.module(cuda))
    monkeypatch.setattr(tensorrt.Cuda, "_shared", cuda)
    return cuda


def test_export_writes_tensorrt_entries_the_runtime_accepts(trt_bundle):
    from tiercel.runtime.bundle import read_bundle

    path, built = trt_bundle
    b = read_bundle(path)
    entries = b.entries("tensorrt")
    b.verify(entries.values())
    assert sorted(entries) == sorted(b.graph_names())
    assert {e.file for e in entries.values()} == {f"tensorrt/{n}.engine" for n in b.graph_names()}
    assert {e.precision for e in entries.values()} == {"fp16"}
    assert entries["encoder_model"].inputs == ["inputs_embeds", "attention_mask"]
    assert len(built) == len(entries)


@pytest.mark.parametrize("beams", [1, 3])
def test_tensorrt_session_generates_like_onnxruntime(trt_bundle, fake_gpu, beams):
    import tiercel.runtime as rt
    from tiercel.runtime.profile import forced_generation
    from tiercel.runtime.tensorrt import TensorRTSession

    path, _ = trt_bundle
    ref, m = rt.load(path), rt.load(path, backend="tensorrt")
    assert m.io_binding  # a GPU backend: the KV cache stays in (fake) device memory
    prompts = ["Describe the image.", "Count the number of ship.", "Detect all airplane in the image."]
    features = m.image_features(m.pixel_values(image(2)))
    np.testing.assert_allclose(features, ref.image_features(ref.pixel_values(image(2))), atol=1e-6)
    gen = forced_generation(16, beams)
    assert m.generate_ids(features, prompts, **gen) == ref.generate_ids(features, prompts, **gen)
    assert m.generate_ids(features, prompts[:1], num_beams=beams, max_new_tokens=10) == \
        ref.generate_ids(features, prompts[:1], num_beams=beams, max_new_tokens=10)
    assert all(isinstance(s, TensorRTSession) for s in m.sessions.values()) and fake_gpu.uploads > 0
    # the KV cache went away with its generation: only the reusable staging buffers are still allocated
    assert len(fake_gpu.memory) == sum(len(s.staging) for s in m.sessions.values())
    plain = rt.load(path, backend="tensorrt", io_binding=False)  # host round trips every step; same tokens
    assert plain.generate_ids(features, prompts, **gen) == ref.generate_ids(features, prompts, **gen)


def test_engine_from_another_tensorrt_is_one_line(trt_bundle, fake_gpu, tmp_path):
    from tiercel.errors import BundleError
    from tiercel.runtime.tensorrt import TensorRTSession

    bad = tmp_path / "x.engine"
    bad.write_bytes(b"bad!")
    with pytest.raises(BundleError, match="x.engine: TensorRT cannot load this engine .* rebuild it here"):
        TensorRTSession(bad)


def test_quantize_engines_builds_int8_engines_from_the_qdq_graphs(tiny_model, tiny_tokenizer, fake_gpu, tmp_path,
                                                                   monkeypatch):
    import tiercel.runtime as rt
    from tests.bundles import tiny_bundle
    from tests.quantize_data import synth_folder
    from tiercel.export import tensorrt as export_trt
    from tiercel.quantize import quantize_bundle

    built = {}

    def fake_build(onnx_file, engine_file, profile, fp16=True, workspace_gb=2.0, int8=None):
        built[engine_file.stem] = int8
        engine_file.parent.mkdir(parents=True, exist_ok=True)
        engine_file.write_bytes(onnx_file.read_bytes())  # the fake GPU runs an engine's ONNX bytes
        return engine_file

    monkeypatch.setattr(export_trt, "check_available", lambda: None)
    monkeypatch.setattr(export_trt, "build_engine", fake_build)
    fp32 = tiny_bundle(tiny_model, tiny_tokenizer, "split", ("onnxruntime",))
    quantize_bundle(fp32, tmp_path / "q", "int8-static", calib=synth_folder(), n=4, n_val=0, backend="tensorrt",
                    engines=True)
    b = rt.read_bundle(tmp_path / "q")
    engines = b.entries("tensorrt")
    assert built == {n: n != "embed_tokens" for n in b.graph_names()}  # TensorRT's Q/DQ form keeps embeddings fp32
    assert {n: e.precision for n, e in engines.items()} == {n: "fp16" if n == "embed_tokens" else "int8" for n in engines}
    on_gpu, on_cpu = rt.load(tmp_path / "q", backend="tensorrt"), rt.load(tmp_path / "q")
    features = on_cpu.image_features(on_cpu.pixel_values(image(2)))
    assert on_gpu.generate_ids(features, ["Describe the image."], num_beams=1, max_new_tokens=6) == \
        on_cpu.generate_ids(features, ["Describe the image."], num_beams=1, max_new_tokens=6)


def test_quantize_engines_needs_the_tensorrt_backend_and_tensorrt(tmp_path, tiny_model, tiny_tokenizer):
    from tests.bundles import tiny_bundle
    from tiercel.errors import ConfigError, MissingDependency
    from tiercel.quantize import quantize_bundle

    fp32 = tiny_bundle(tiny_model, tiny_tokenizer, "split", ("onnxruntime",))
    with pytest.raises(ConfigError, match="engines builds TensorRT engines, so it needs backend tensorrt"):
        quantize_bundle(fp32, tmp_path / "q", "int8-static", engines=True)
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(MissingDependency, match="tensorrt"):
            quantize_bundle(fp32, tmp_path / "q", "int8-static", backend="tensorrt", engines=True)
    assert not (tmp_path / "q").exists()
