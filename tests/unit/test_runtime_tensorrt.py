"""The TensorRT backend on a CPU: planning functions, clear failures, and export -> engines -> runtime end to end.

The end-to-end tests install tests/fake_tensorrt.py (tensorrt and cuda.bindings.runtime stand-ins: engines are
ONNX bytes run by onnxruntime, device memory is host memory reached through pointers): the builder calls,
profiles, shapes, addresses, staging buffers, device-resident KV, chunked batches and beam reorders go through
tiercel's own code exactly as on a GPU. Real TensorRT and CUDA are exercised only by tests/gpu.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest

from tests import fake_tensorrt
from tests.bundles import image

PROMPTS = ["Describe the image.", "Count the number of ship.", "Detect all airplane in the image."]


def _spec(name, *profiles, dtype=np.float16):
    from tiercel.runtime.tensorrt import TensorSpec

    return TensorSpec(name, True, np.dtype(dtype), tuple(profiles))


def test_planning_dtypes_shapes_and_buffer_sizes():
    from tiercel.errors import BundleError
    from tiercel.runtime.tensorrt import capacity, check_shape, numpy_dtype

    assert numpy_dtype("HALF") == np.float16 and numpy_dtype("INT64") == np.int64 and numpy_dtype("BOOL") == np.bool_
    with pytest.raises(BundleError, match="type BF16 is not supported"):
        numpy_dtype("BF16", "x.engine")
    spec = _spec("past_key_values.0.decoder.key", ((1, 8, 1, 64), (1, 8, 32, 64), (4, 8, 1024, 64)))
    check_shape("d.engine", spec, (3, 8, 17, 64))
    with pytest.raises(BundleError, match=r"d.engine: input past_key_values.0.decoder.key has shape \(3, 8, 1025, 64\), "
                                          r"outside the engine's profile \(min \(1, 8, 1, 64\), max \(4, 8, 1024, 64\)\)"):
        check_shape("d.engine", spec, (3, 8, 1025, 64))
    with pytest.raises(BundleError, match="outside"):
        check_shape("d.engine", spec, (1, 8, 64))
    assert [capacity(n) for n in (0, 1, 256, 257, 5000)] == [256, 256, 256, 512, 8192]


def test_plan_picks_the_nearest_profile_and_splits_batches_too_large_for_any():
    from tiercel.errors import BundleError
    from tiercel.runtime.tensorrt import plan_call

    single, batched = ((1, 1), (1, 8), (42, 100)), ((1, 1), (14, 8), (42, 100))
    ids = _spec("input_ids", single, batched, dtype=np.int64)
    flag = _spec("use_cache_branch", ((1,), (1,), (1,)), ((1,), (1,), (1,)), dtype=np.bool_)  # static: never split
    assert plan_call("e", [ids, flag], {"input_ids": (1, 5), "use_cache_branch": (1,)}) == (0, None)
    assert plan_call("e", [ids, flag], {"input_ids": (3, 5), "use_cache_branch": (1,)}) == (0, None)  # 3 nearer 1 than 14
    assert plan_call("e", [ids, flag], {"input_ids": (9, 5), "use_cache_branch": (1,)}) == (1, None)
    assert plan_call("e", [ids, flag], {"input_ids": (100, 5), "use_cache_branch": (1,)}) == (0, 42)  # 42 + 42 + 16
    with pytest.raises(BundleError, match=r"e: input input_ids has shape \(2, 101\), outside the engine's profile "
                                          r"\(min \(1, 1\), max \(42, 100\)\)"):
        plan_call("e", [ids, flag], {"input_ids": (2, 101), "use_cache_branch": (1,)})  # a prompt no chunk shortens


def test_plan_splits_a_beam_batch_into_whole_items():
    """A per_item decoder: the mask per item, the token rows per item x beams; chunks hold whole items."""
    from tiercel.errors import BundleError
    from tiercel.runtime.tensorrt import batch_units, plan_call

    rows = _spec("inputs_embeds", ((1, 1, 8), (1, 1, 8), (4, 1, 8)), ((1, 1, 8), (4, 1, 8), (4, 1, 8)))
    mask = _spec("encoder_attention_mask", ((1, 1), (1, 8), (4, 100)), ((1, 1), (4, 8), (4, 100)), dtype=np.int64)
    shapes = lambda r, i: {"inputs_embeds": (r, 1, 8), "encoder_attention_mask": (i, 20)}  # noqa: E731
    assert batch_units("e", [rows, mask], shapes(9, 3)) == (3, {"inputs_embeds": 3, "encoder_attention_mask": 1})
    assert plan_call("e", [rows, mask], shapes(3, 1)) == (1, None)  # 1 item x 3 beams runs whole (3 rows: opt 4)
    assert plan_call("e", [rows, mask], shapes(9, 3)) == (0, 1)  # 3 items x 3 beams: 4 rows take one item
    assert plan_call("e", [rows, mask], shapes(4, 4)) == (1, None)  # greedy: items = rows
    with pytest.raises(BundleError, match=r"e: the batched inputs disagree on the batch size \(inputs_embeds 8, "
                                          r"encoder_attention_mask 3\)"):
        plan_call("e", [rows, mask], shapes(8, 3))


def test_version_range_is_checked_in_one_line():
    from tiercel.errors import BundleError
    from tiercel.runtime.tensorrt import check_version

    assert check_version("10.3.0.26") == (10, 3) and check_version("11.4.0") == (11, 4)
    for bad in ("10.2.0", "8.6.1", "12.0.0", "unknown"):
        with pytest.raises(BundleError, match=rf"^TensorRT {bad} is not supported: tiercel builds and runs engines "
                                              r"with TensorRT 10.3 up to 11.x; install one of those \(JetPack 6 ships 10.3\)$"):
            check_version(bad)


def test_without_cuda_python_the_error_names_it(monkeypatch):
    from tiercel.errors import MissingDependency
    from tiercel.runtime.tensorrt import cudart

    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(MissingDependency, match=r"'cuda-python' package; install it with: pip install 'tiercel\[tensorrt\]'"):
        cudart()


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


def _export(model, tok, out, decoder="split", version="10.3.0.26", **kw):
    """The tiny model exported in fp16 with engines built by the fake TensorRT `version`."""
    from tiercel.export.bundle import export_model

    mp = pytest.MonkeyPatch()
    try:
        fake_tensorrt.install(mp, version=version)
        return export_model(model, tok, out, backends=("onnxruntime", "tensorrt"), decoder=decoder, precision="fp16", **kw)
    finally:
        mp.undo()


@pytest.fixture(scope="module", params=["split", "merged"])
def trt_bundle(request, tiny_model, tiny_tokenizer, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return _export(tiny_model, tiny_tokenizer, tmp_path_factory.mktemp("trt") / request.param, request.param)


@pytest.fixture
def fake_gpu(monkeypatch):
    gpu, _ = fake_tensorrt.install(monkeypatch)
    return gpu


def test_export_records_where_each_engine_was_built_and_its_parity(trt_bundle):
    from tiercel.runtime.bundle import read_bundle

    b = read_bundle(trt_bundle)
    entries = b.entries("tensorrt")
    b.verify(entries.values())
    assert sorted(entries) == sorted(b.graph_names())
    assert {e.file for e in entries.values()} == {f"tensorrt/{n}.engine" for n in b.graph_names()}
    assert {e.precision for e in entries.values()} == {"fp16"}
    assert entries["encoder_model"].inputs == ["inputs_embeds", "attention_mask"]
    beams = b.manifest.generation.num_beams
    for e in entries.values():
        info = e.engine
        assert (info.tensorrt, info.gpu, info.compute_capability) == ("10.3.0.26", "Fake GPU", "8.7")
        assert (info.max_batch, info.vision_batch, info.profiles) == (14 * beams, 4, 2)
        assert info.parity["real"] <= 1e-2 and info.parity["random"] <= 1e-2
    assert b.manifest.parity["tensorrt"]["greedy_identical"] == "3/3"


@pytest.mark.parametrize("beams", [1, 3])
def test_tensorrt_session_generates_like_onnxruntime(trt_bundle, fake_gpu, beams):
    import tiercel.runtime as rt
    from tiercel.runtime.profile import forced_generation
    from tiercel.runtime.tensorrt import TensorRTSession

    ref, m = rt.load(trt_bundle), rt.load(trt_bundle, backend="tensorrt")
    assert m.io_binding  # a GPU backend: the KV cache stays in (fake) device memory
    features = m.image_features(m.pixel_values(image(2)))
    np.testing.assert_allclose(features, ref.image_features(ref.pixel_values(image(2))), atol=1e-6)
    gen = forced_generation(16, beams)
    assert m.generate_ids(features, PROMPTS, **gen) == ref.generate_ids(features, PROMPTS, **gen)
    assert m.generate_ids(features, PROMPTS[:1], num_beams=beams, max_new_tokens=10) == \
        ref.generate_ids(features, PROMPTS[:1], num_beams=beams, max_new_tokens=10)
    assert all(isinstance(s, TensorRTSession) for s in m.sessions.values()) and fake_gpu.uploads > 0
    # one row ran on the single-row profile, the batch of 3 prompts x 3 beams on the batched one
    assert m.sessions["decoder_with_past_model" if "decoder_with_past_model" in m.sessions else "decoder_model_merged"].profile == 0
    # the KV cache went away with its generation: only the reusable staging buffers are still allocated
    assert len(fake_gpu.buffers) == sum(len(s.staging) for s in m.sessions.values())
    plain = rt.load(trt_bundle, backend="tensorrt", io_binding=False)  # host round trips every step; same tokens
    assert plain.generate_ids(features, PROMPTS, **gen) == ref.generate_ids(features, PROMPTS, **gen)


def test_fourteen_tasks_with_beams_fit_the_default_profiles(trt_bundle, fake_gpu):
    import tiercel.runtime as rt
    from tests.bundles import TASK_INPUTS

    ref, m = rt.load(trt_bundle), rt.load(trt_bundle, backend="tensorrt")
    texts = {t: v["text"] for t, v in TASK_INPUTS.items() if "text" in v}
    regions = {t: v["region"] for t, v in TASK_INPUTS.items() if "region" in v}
    got = m.run_all(image(0), texts=texts, regions=regions, image2=image(1), num_beams=3, max_new_tokens=6)
    want = ref.run_all(image(0), texts=texts, regions=regions, image2=image(1), num_beams=3, max_new_tokens=6)
    assert len(got) == 14 and {t: r.raw for t, r in got.items()} == {t: r.raw for t, r in want.items()}
    assert fake_gpu.copies == 0  # 14 x 3 = 42 rows: no chunking needed


def test_batches_larger_than_the_profiles_run_in_chunks(tiny_model, tiny_tokenizer, tmp_path, fake_gpu):
    import tiercel.runtime as rt

    path = _export(tiny_model, tiny_tokenizer, tmp_path / "b", max_batch=4)
    assert rt.read_bundle(path).entries("tensorrt")["decoder_model"].engine.max_batch == 4
    ref, m = rt.load(path), rt.load(path, backend="tensorrt")
    features = m.image_features(m.pixel_values(image(2)))
    want = ref.generate_ids(features, PROMPTS, num_beams=3, max_new_tokens=8)  # 9 rows
    assert m.generate_ids(features, PROMPTS, num_beams=3, max_new_tokens=8) == want
    assert fake_gpu.copies > 0  # the chunks' KV outputs were joined on the device
    pixels = np.concatenate([m.pixel_values(image(i)) for i in range(6)])  # 6 images, the vision profile takes 4
    np.testing.assert_allclose(m.image_features(pixels), ref.image_features(pixels), atol=1e-6)


def test_engines_from_another_tensorrt_or_gpu_are_refused_in_one_line(trt_bundle, monkeypatch):
    import tiercel.runtime as rt
    from tiercel.errors import BundleError

    fake_tensorrt.install(monkeypatch, version="11.4.0")
    with pytest.raises(BundleError, match=r"tensorrt/\w+\.engine: built for another machine \(TensorRT 10.3.0.26 vs "
                                          r"11.4.0\); engines run only where they were built: rebuild them here with "
                                          r"`tiercel engines .*`$"):
        rt.load(trt_bundle, backend="tensorrt")
    fake_tensorrt.install(monkeypatch, fake_tensorrt.FakeGpu("NVIDIA H200", (9, 0)))
    with pytest.raises(BundleError, match=r"\(GPU Fake GPU vs NVIDIA H200; compute capability 8.7 vs 9.0\)"):
        rt.load(trt_bundle, backend="tensorrt")


def test_engine_tensorrt_cannot_read_is_one_line(fake_gpu, tmp_path):
    from tiercel.errors import BundleError
    from tiercel.runtime.tensorrt import TensorRTSession

    bad = tmp_path / "x.engine"
    bad.write_bytes(b"bad!")
    with pytest.raises(BundleError, match="x.engine: TensorRT cannot load this engine .* rebuild it here"):
        TensorRTSession(bad)


def test_a_drifting_engine_is_refused_and_the_bundle_is_left_as_it_was(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    from tests.bundles import tiny_bundle
    from tiercel.errors import BundleError
    from tiercel.export.tensorrt import add_engines

    src = tiny_bundle(tiny_model, tiny_tokenizer, "split", ("onnxruntime",))
    path = tmp_path / "b"
    shutil.copytree(src, path)
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    manifest = (path / "manifest.json").read_text()
    fake_tensorrt.install(monkeypatch, drift=0.05)
    with pytest.raises(BundleError, match=r"b: TensorRT parity failed: \w+ differs from its ONNX graph by 0.0\d+ relative "
                                          r"to its scale \(> 0.01\); the engines were not kept \(rerun with --no-parity"):
        add_engines(path)
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    assert (path / "manifest.json").read_text() == manifest


def test_engines_cli_adds_engines_to_a_bundle(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import tiercel.runtime as rt
    from tests.bundles import tiny_bundle
    from tiercel.cli import app

    path = tmp_path / "b"
    shutil.copytree(tiny_bundle(tiny_model, tiny_tokenizer, "split", ("onnxruntime",)), path)
    fake_tensorrt.install(monkeypatch, version="11.4.0")
    res = CliRunner().invoke(app, ["engines", str(path), "--max-batch", "6"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == f"wrote 5 engines to {path / 'tensorrt'} (TensorRT 11.4.0, Fake GPU, fp32); " \
                                                   "run them with --backend tensorrt"
    entries = rt.read_bundle(path).entries("tensorrt")
    assert {e.engine.max_batch for e in entries.values()} == {6}
    m = rt.load(path, backend="tensorrt")
    ref = rt.load(path)
    features = ref.image_features(ref.pixel_values(image(3)))
    assert m.generate_ids(features, PROMPTS, num_beams=1, max_new_tokens=8) == \
        ref.generate_ids(features, PROMPTS, num_beams=1, max_new_tokens=8)
    res = CliRunner().invoke(app, ["engines", str(path)])  # again: the engines are replaced, nothing else changes
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (path / "tensorrt").iterdir()) == sorted(f"{n}.engine" for n in entries)
    assert {e.engine.max_batch for e in rt.read_bundle(path).entries("tensorrt").values()} == {14 * m.generation.num_beams}


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_engines_cli_without_tensorrt_exits_1_with_the_install_line(tiny_model, tiny_tokenizer, tmp_path):
    import subprocess

    from tests.bundles import tiny_bundle

    path = tiny_bundle(tiny_model, tiny_tokenizer, "split", ("onnxruntime",))
    proc = subprocess.run([sys.executable, "-m", "tiercel", "engines", str(path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == ("error: building TensorRT engines needs the 'tensorrt' package; "
                                                    "install it with: pip install 'tiercel[tensorrt]'")
    assert not (path / "tensorrt").exists()
    proc = subprocess.run([sys.executable, "-m", "tiercel", "engines", str(tmp_path / "nosuch")], capture_output=True,
                          text=True)  # a wrong path is named first, not hidden behind the missing package
    assert proc.returncode == 1 and "nosuch" in proc.stderr and "tensorrt" not in proc.stderr.lower()


def test_quantize_engines_builds_int8_engines_from_the_qdq_graphs(tiny_model, tiny_tokenizer, fake_gpu, tmp_path):
    import tiercel.runtime as rt
    from tests.bundles import tiny_bundle
    from tests.quantize_data import synth_folder
    from tiercel.quantize import quantize_bundle

    fp32 = tiny_bundle(tiny_model, tiny_tokenizer, "split", ("onnxruntime",))
    quantize_bundle(fp32, tmp_path / "q", "int8-static", calib=synth_folder(), n=4, n_val=0, backend="tensorrt",
                    engines=True)
    b = rt.read_bundle(tmp_path / "q")
    engines = b.entries("tensorrt")
    # TensorRT's Q/DQ form keeps the embeddings unquantized: that engine is fp32, the others int8
    assert {n: e.precision for n, e in engines.items()} == {n: "fp32" if n == "embed_tokens" else "int8" for n in engines}
    header = json.loads((tmp_path / "q" / "tensorrt" / "encoder_model.engine").read_bytes()[8:].split(b"\n")[0])
    assert len(header["profiles"]) == 2
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
