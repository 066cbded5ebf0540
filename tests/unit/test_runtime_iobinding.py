"""The device-resident decode path (BoundKVDecoder over onnxruntime I/O binding) on the CPU execution provider.

On a GPU the same code keeps the KV cache in device memory; here its OrtValues live in host memory, so what is
tested is the logic: which outputs are fed back, the cross-attention KV reused, beam reorders, dtype casts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from tests.bundles import image, tiny_bundle  # noqa: E402

PROMPTS = ["Describe the image.", "Detect all airplane in the image.\nUse horizontal bounding boxes.",
           "Count the number of ship."]


@pytest.fixture(scope="module", params=["split", "merged"])
def pair(request, tiny_model, tiny_tokenizer):
    import tiercel.runtime as rt

    path = tiny_bundle(tiny_model, tiny_tokenizer, request.param, ("onnxruntime",))
    return rt.load(path), rt.load(path, io_binding=True)


@pytest.mark.parametrize("beams", [1, 3])
def test_bound_decoder_generates_the_same_tokens_as_the_numpy_path(pair, beams):
    from tiercel.runtime.profile import forced_generation

    plain, bound = pair
    assert not plain.io_binding and bound.io_binding
    features = plain.image_features(plain.pixel_values(image(3)))
    for gen in ({"num_beams": beams, "max_new_tokens": 12}, forced_generation(20, beams)):  # eos allowed / 20 forced
        want = plain.generate_ids(features, PROMPTS, **gen)
        got = bound.generate_ids(features, PROMPTS, **gen)
        assert got == want
    assert [len(ids) for ids in got] == [20] * len(PROMPTS)


def test_bound_run_all_equals_plain_run_all(pair):
    plain, bound = pair
    tags = ["IMG_CAP", "IMG_CLS", "REG_DET_HBB"]
    texts = {"REG_DET_HBB": "airplane"}
    a = plain.run_all(image(5), tags, texts=texts, num_beams=3, max_new_tokens=8)
    b = bound.run_all(image(5), tags, texts=texts, num_beams=3, max_new_tokens=8)
    assert {t: r.to_dict() for t, r in a.items()} == {t: r.to_dict() for t, r in b.items()}


def test_run_bound_keeps_named_outputs_as_ortvalues_and_feeds_them_back(bundle):
    import onnxruntime as ort

    import tiercel.runtime as rt

    m = rt.load(bundle, io_binding=True)
    emb = m.sessions["embed_tokens"]
    out = emb.run_bound({"input_ids": np.array([[2, 0]], np.int64)}, keep={"inputs_embeds"})
    assert isinstance(out["inputs_embeds"], ort.OrtValue)
    assert np.array_equal(out["inputs_embeds"].numpy(), emb.run({"input_ids": np.array([[2, 0]], np.int64)})["inputs_embeds"])
    value = emb.to_device(np.arange(6, dtype=np.float32).reshape(3, 2))
    assert np.array_equal(emb.take_rows(value, np.array([2, 0])).numpy(), [[4, 5], [0, 1]])


def test_load_picks_the_path_by_device_and_refuses_openvino_binding(bundle):
    import tiercel.runtime as rt
    from tiercel.errors import ConfigError

    assert rt.load(bundle).io_binding is False  # CPU: the numpy path, whose speed the CPU benchmarks measured
    pytest.importorskip("openvino")
    with pytest.raises(ConfigError, match="backend 'openvino' has no device-resident path"):
        rt.load(bundle, backend="openvino", io_binding=True)


@pytest.fixture(scope="module", params=["split", "merged"])
def varied(request, tiny_tokenizer):
    """The tiny model with its weights scaled up, so that prompts get different answers (plain, bound)."""
    import torch

    import tiercel.runtime as rt
    from tiercel.export.bundle import export_model
    from tiercel.models import build

    model = build("tiny", seed=0, vocab_size=len(tiny_tokenizer), image_token_id=tiny_tokenizer.image_id).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    path = export_model(model, tiny_tokenizer, Path(tempfile.mkdtemp()) / "b", backends=("onnxruntime",),
                        decoder=request.param, parity=False)
    return rt.load(path), rt.load(path, io_binding=True)


def test_rows_that_finish_early_leave_the_batch_with_the_same_tokens(varied):
    from tiercel.runtime.profile import forced_generation

    features = varied[0].image_features(varied[0].pixel_values(image(3)))
    prompts = PROMPTS + ["What is in the image?", "Classify the image."]
    free = varied[0].generate_ids(features, prompts, **forced_generation(10, 1))
    # an "eos" that one row emits after a few steps and two rows never: that row finishes early
    eos, row = next((t, r) for r, ids in enumerate(free) for t in ids[2:8] if sum(t in x for x in free) == 1)
    others = [r for r in range(len(prompts)) if r != row][:2]
    chosen = [prompts[r] for r in [row, *others]]
    gen = {**forced_generation(10, 1), "eos_token_id": eos}
    for m in varied:
        batched = m.generate_ids(features, chosen, **gen)
        assert batched == [m.generate_ids(features, [p], **gen)[0] for p in chosen]
        assert len(batched[0]) < 10 and batched[0][-1] == eos and len(batched[1]) == len(batched[2]) == 10


def test_a_cuda_session_that_onnxruntime_quietly_puts_on_the_cpu_is_an_error(tmp_path, monkeypatch):
    """onnxruntime-gpu falls back to the CPU when cuDNN or cuBLAS fails to load; tiercel says so instead of running slowly."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tiercel.errors import BundleError
    from tiercel.runtime.backends import OrtSession

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "vision_encoder.onnx")
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", lambda f, o, providers: real(f, o, providers=["CPUExecutionProvider"]))
    with pytest.raises(BundleError, match=r"^vision_encoder.onnx: onnxruntime could not start CUDAExecutionProvider"):
        OrtSession(tmp_path / "vision_encoder.onnx", device="cuda")
