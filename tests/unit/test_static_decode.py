"""The static-KV decoder (tiercel.models.static_decode) generates transformers' tokens; CUDA graphs are GPU-only.

On a CPU the same static step runs without a graph, so what is tested here is the decoder itself: positions,
masks, padded encoder length, beam reorders, buffers reused across calls. tests/gpu adds the graph capture.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("torch")

from tests.bundles import TASK_INPUTS, image  # noqa: E402

PROMPTS = ["Describe the image.", "Detect all airplane in the image.\nUse horizontal bounding boxes.",
           "Count the number of ship."]


@pytest.fixture(scope="module", params=[False, True], ids=["qkv-split", "qkv-fused"])
def pair(tiny_model, tiny_tokenizer, request):
    """transformers' model and the static decoder over it: q/k/v projected one by one, or as one matmul."""
    import torch

    from tiercel.models.predict import TorchPredictor
    from tiercel.models.static_decode import GraphedPredictor

    torch.set_num_threads(1)
    return TorchPredictor(tiny_model, tiny_tokenizer), GraphedPredictor(tiny_model, tiny_tokenizer, fuse_qkv=request.param)


def test_first_step_logits_equal_the_transformers_decoder(pair):
    import torch

    eager, static = pair
    features = eager.image_features(eager.pixel_values(image(3)))
    ids, mask = eager._prompt_batch(features, PROMPTS)
    with torch.no_grad():
        encoded = eager._encode(features, ids, mask)
        hidden = encoded.last_hidden_state
        start = torch.full((3, 1), eager.generation.decoder_start_token_id)
        want = eager.model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=start).logits[:, -1]
    decoder = static.decoder(3, hidden.shape[1], 8)
    decoder.start(hidden, mask, static._stage)
    assert decoder.enc_len == 64 and decoder.enc_len > hidden.shape[1]  # padded and masked
    assert decoder.qkv is (static._qkv if static.fuse_qkv else None)  # one fused copy per model, shared by its decoders
    np.testing.assert_allclose(decoder.step(start[:, 0].numpy()), want.numpy(), atol=1e-4)


@pytest.mark.parametrize("gen", ["greedy", "beams-3", "forced-20", "forced-beams"])
def test_static_decoder_generates_the_transformers_tokens(pair, gen):
    from tiercel.runtime.profile import forced_generation

    gen = {"greedy": {"num_beams": 1, "max_new_tokens": 12}, "beams-3": {"num_beams": 3, "max_new_tokens": 10},
           "forced-20": forced_generation(20, 1), "forced-beams": forced_generation(12, 2)}[gen]
    eager, static = pair
    features = eager.image_features(eager.pixel_values(image(4)))
    want = eager.generate_ids(features, PROMPTS, **gen)
    assert static.generate_ids(features, PROMPTS, **gen) == want
    assert static.generate_ids(features, PROMPTS[::-1], **gen) == want[::-1]  # same buffers, other prompt order


def test_run_all_of_the_14_tasks_matches_transformers_and_reuses_one_decoder(pair):
    from tiercel import tasks as T

    eager, static = pair
    texts = {t: x["text"] for t, x in TASK_INPUTS.items() if "text" in x}
    regions = {t: x["region"] for t, x in TASK_INPUTS.items() if "region" in x}
    gen = {"num_beams": 1, "max_new_tokens": 16}
    want = eager.run_all(image(5), list(T.TAGS), texts, regions, image2=image(6), **gen)
    static._decoders.clear()
    for _ in range(2):
        assert static.run_all(image(5), list(T.TAGS), texts, regions, image2=image(6), **gen) == want
    assert len(static._decoders) == 1


def test_more_new_tokens_than_the_position_table_is_a_one_line_error_before_any_work(pair, monkeypatch):
    from tiercel.errors import ConfigError

    eager, static = pair
    limit = static.model.model.language_model.decoder.embed_positions.num_embeddings - 2
    features = eager.image_features(eager.pixel_values(image(3)))
    monkeypatch.setattr(static, "_encode", lambda *a, **k: pytest.fail("the text encoder ran"))
    with pytest.raises(ConfigError) as err:
        static.generate_ids(features, PROMPTS[:1], max_new_tokens=limit + 1)
    assert str(err.value) == (f"max_new_tokens: {limit + 1} is more than this model's {limit} decoder positions; "
                              f"use {limit} or less (--max-new-tokens)")  # the words of every other backend


def test_a_graph_that_cannot_be_captured_falls_back_to_the_same_results(pair, monkeypatch):
    """Where capture fails (here: no CUDA at all), the vision tower and the decoder step run eagerly instead."""
    from tiercel.models import static_decode
    from tiercel.models.static_decode import GraphedPredictor

    warnings = []
    monkeypatch.setattr(static_decode._log, "warning", lambda msg, *args: warnings.append(msg % args))
    eager, static = pair
    forced = GraphedPredictor(static.model, static.tokenizer)
    forced.use_graphs = True
    pixels = eager.pixel_values(image(4))
    np.testing.assert_array_equal(forced.image_features(pixels), eager.image_features(pixels))
    features = eager.image_features(pixels)
    want = forced.generate_ids(features, PROMPTS, max_new_tokens=8, num_beams=1)
    for d in forced._decoders.values():
        d.use_graph = True
    assert forced.generate_ids(features, PROMPTS, max_new_tokens=8, num_beams=1) == want
    status = forced.graph_status()
    assert list(status["vision"]) == [1] and status["vision"][1].startswith(("AssertionError", "RuntimeError"))
    assert all(isinstance(v, str) for v in status["decoder"].values())
    assert [w.split(" (")[0] for w in warnings] == ["vision tower not captured as a CUDA graph"] + [
        "decoder step not captured as a CUDA graph"] * len(status["decoder"])


def test_bf16_checkpoint_option_runs_the_static_decoder_in_bf16(tiny_checkpoint):
    import torch

    from tiercel.errors import ConfigError
    from tiercel.evaluate.core import open_predictor

    ckpt = tiny_checkpoint
    fp32 = open_predictor(ckpt, "torch", "cpu")
    bf16 = open_predictor(ckpt, "torch", "cpu", options={"dtype": "bf16"})
    assert fp32._dtype == torch.float32 and bf16._dtype == torch.bfloat16
    features = fp32.image_features(fp32.pixel_values(image(6)))
    logits = {}
    for name, p in (("fp32", fp32), ("bf16", bf16)):
        ids, mask = p._prompt_batch(features, PROMPTS)
        with torch.no_grad():
            hidden = p._encode(features, ids, mask).last_hidden_state
        decoder = p.decoder(3, hidden.shape[1], 8)
        decoder.start(hidden, mask, p._stage)
        logits[name] = decoder.step(np.full(3, p.generation.decoder_start_token_id))
        assert decoder.k.dtype == p._dtype  # the KV cache is held in the checkpoint's dtype
    scale = np.abs(logits["fp32"]).max()
    assert np.abs(logits["bf16"] - logits["fp32"]).max() < 0.02 * scale  # bf16 rounding (0.4% measured), not another model
    assert open_predictor(ckpt, "onnxruntime", "cpu", options={"dtype": "fp16"})._dtype == torch.float16
    with pytest.raises(ConfigError, match=re.escape("is a checkpoint, which takes only dtype=fp32|fp16|bf16")):
        open_predictor(ckpt, "torch", "cpu", options={"threads": "2"})
    with pytest.raises(ConfigError, match="--option dtype=int8: choose fp32, fp16 or bf16"):
        open_predictor(ckpt, "torch", "cpu", options={"dtype": "int8"})
