"""OpenVINO at the bf16 hint keeps the KV cache in bf16: the same logits and tokens as the fp32 cache it replaced."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from tests.bundles import TASK_INPUTS, image, tiny_bundle

pytest.importorskip("openvino")

CAPABILITY = {"bf16": "BF16", "f16": "FP16"}


def test_bf16_bits_round_to_nearest_even():
    from tiercel.runtime.backends import bf16_bits

    u = np.array([0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0xC0000000, 0x7F7FFFFF, 0x7F800000, 0x7FC00001,
                  0x00000000, 0x80000000], np.uint32)
    # 1.0; 1 + 2^-8 is halfway: down to the even 0x3F80; 1 + 3 * 2^-8 halfway: up to the even 0x3F82; just above
    # halfway: up; -2; the largest float rounds to inf; inf; a NaN stays NaN; +0; -0
    want = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xC000, 0x7F80, 0x7F80, 0x7FC0, 0x0000, 0x8000]
    assert bf16_bits(u.view(np.float32)).tolist() == want


class _Core:
    def __init__(self, caps):
        self.caps = caps

    def get_property(self, device, key):
        assert (device, key) == ("CPU", "OPTIMIZATION_CAPABILITIES")
        return self.caps


@pytest.mark.parametrize("device, hint, caps, want", [
    ("CPU", "bf16", ["FP32", "BF16"], "bf16"),
    ("CPU", "BF16", ["FP32", "BF16"], "bf16"),
    ("CPU", "bf16", ["FP32", "FP16"], None),  # the plugin would compute in f32: the cache stays fp32
    ("CPU", "f16", ["FP32", "FP16"], "f16"),
    ("CPU", "f32", ["FP32", "BF16"], None),
    ("GPU", "bf16", ["FP32", "BF16"], None),
])
def test_kv_type_follows_what_the_cpu_computes_in(device, hint, caps, want):
    from tiercel.runtime.backends import _kv_type

    assert _kv_type(_Core(caps), device, {"INFERENCE_PRECISION_HINT": hint}) == want


def _needs(hint: str):
    import openvino as ov

    if CAPABILITY[hint] not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip(f"OpenVINO's CPU plugin does not compute in {hint} here: it computes in f32 and the cache stays fp32")


@contextlib.contextmanager
def _typing_off(monkeypatch):
    import tiercel.runtime.backends as backends

    with monkeypatch.context() as m:
        m.setattr(backends, "_kv_type", lambda *args: None)
        yield


def _pair(bundle_dir, monkeypatch, hint: str = "bf16"):
    import tiercel.runtime as rt

    options = {"INFERENCE_PRECISION_HINT": hint}
    with _typing_off(monkeypatch):
        before = rt.load(bundle_dir, backend="openvino", options=options)
    return before, rt.load(bundle_dir, backend="openvino", options=options)


def _steps(m, n: int = 4) -> tuple[list[np.ndarray], dict]:
    """Logits of n greedy decoder steps from one prompt, and the cache after them."""
    from tiercel.runtime.model import KVDecoder

    features = m.image_features(m.pixel_values(image(3)))
    hidden, mask = m.encode(features, ["<CAPTION>", "What is in the image?"])
    dec = KVDecoder(m.sessions, m.merged, m.shape.decoder_layers, m.embed, hidden, mask)
    dec._heads = m.shape.attention_heads
    tokens, out = np.full(2, 2, np.int64), []
    for _ in range(n):
        logits = dec.step(tokens)
        out.append(logits)
        tokens = logits.argmax(-1)
    return out, dec.cache


@pytest.mark.parametrize("decoder, hint", [("split", "bf16"), ("merged", "bf16"), ("split", "f16")])
def test_typed_cache_gives_the_fp32_cache_logits_bit_for_bit(tiny_model, tiny_tokenizer, monkeypatch, decoder, hint):
    _needs(hint)
    before, after = _pair(tiny_bundle(tiny_model, tiny_tokenizer, decoder=decoder, backends=("openvino",)), monkeypatch, hint)
    first, steps = ("decoder_model_merged",) * 2 if decoder == "merged" else ("decoder_model", "decoder_with_past_model")
    ins = {p.get_any_name(): p.get_element_type().get_type_name() for p in after.sessions[steps].compiled.inputs}
    outs = {p.get_any_name(): p.get_element_type().get_type_name() for p in after.sessions[first].compiled.outputs}
    assert {t for n, t in ins.items() if n.startswith("past_key_values.")} == {hint}
    assert {t for n, t in outs.items() if n.startswith("present.")} == {hint}
    assert (ins["inputs_embeds"], outs["logits"]) == ("f32", "f32")
    (old, old_cache), (new, new_cache) = _steps(before), _steps(after)
    for a, b in zip(old, new):
        np.testing.assert_array_equal(a, b)
    # the cache is held in half the bytes (bf16 as uint16 bit patterns), as the plugin itself rounded the fp32 cache
    from tiercel.runtime.backends import bf16_bits

    rounded = bf16_bits if hint == "bf16" else (lambda x: x.astype(np.float16))
    for name, value in new_cache.items():
        assert value.dtype == (np.uint16 if hint == "bf16" else np.float16), name
        assert value.nbytes * 2 == old_cache[name].nbytes, name
        np.testing.assert_array_equal(value, rounded(old_cache[name]), err_msg=name)


def test_bf16_cache_keeps_tokens_in_greedy_beam_and_run_all(tiny_model, tiny_tokenizer, monkeypatch):
    _needs("bf16")
    before, after = _pair(tiny_bundle(tiny_model, tiny_tokenizer, backends=("openvino",)), monkeypatch)
    img, tasks = image(5), ["IMG_CAP", "REG_DET_HBB", "PIX_SEG", "IMG_VQA"]
    texts = {t: TASK_INPUTS[t]["text"] for t in tasks if t in TASK_INPUTS}
    for kwargs in ({}, {"num_beams": 3}):
        a = before.run_all(img, tasks, texts, max_new_tokens=12, **kwargs)
        b = after.run_all(img, tasks, texts, max_new_tokens=12, **kwargs)
        assert {t: r.raw for t, r in a.items()} == {t: r.raw for t, r in b.items()}, kwargs
