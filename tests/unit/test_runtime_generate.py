"""Runtime generation equals transformers' generate: greedy on all 14 tasks (both backends), beam search."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from tests.bundles import TASK_INPUTS, hf_generate, image, torch_features  # noqa: E402

NEW = 6


@pytest.fixture(scope="module")
def prompts():
    from tiercel import tasks

    img = image(1)
    size = (img.shape[1], img.shape[0])
    return {t: tasks.get(t).prompt(image_size=size, **TASK_INPUTS.get(t, {})) for t in tasks.TAGS}


@pytest.fixture(scope="module")
def reference(tiny_model, bundle, prompts):
    """transformers' greedy ids per task, from the runtime's pixel values (preprocessing is tested elsewhere)."""
    import tiercel.runtime as rt

    m = rt.load(bundle)
    feats = torch_features(tiny_model, m.pixel_values(image(1)))
    forced = m.generation.forced_bos_token_id
    return feats, {t: hf_generate(tiny_model, m.tokenizer, feats, p, num_beams=1, max_new_tokens=NEW,
                                  forced_bos_token_id=forced) for t, p in prompts.items()}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_greedy_is_token_identical_to_transformers_for_all_14_tasks(bundle, prompts, reference, backend):
    import tiercel.runtime as rt

    m = rt.load(bundle, backend=backend)
    feats = m.image_features(m.pixel_values(image(1)))
    want = reference[1]
    got = {t: m.generate_ids(feats, [p], num_beams=1, max_new_tokens=NEW)[0] for t, p in prompts.items()}
    assert len(got) == 14
    assert got == want
    assert all(len(ids) >= 1 for ids in got.values())


@pytest.mark.parametrize("tag, ngram", [("IMG_CAP", 0), ("REG_DET_HBB", 0), ("PIX_SEG", 0), ("REG_VG", 2)])
def test_beam_search_matches_transformers(tiny_model, bundle, prompts, reference, tag, ngram):
    import tiercel.runtime as rt

    m = rt.load(bundle)
    feats = m.image_features(m.pixel_values(image(1)))
    want = hf_generate(tiny_model, m.tokenizer, reference[0], prompts[tag], num_beams=3, max_new_tokens=8,
                       no_repeat_ngram_size=ngram or None, forced_bos_token_id=m.generation.forced_bos_token_id)
    got = m.generate_ids(feats, [prompts[tag]], num_beams=3, max_new_tokens=8, no_repeat_ngram_size=ngram)[0]
    assert got == want


def test_batched_beam_search_equals_one_prompt_at_a_time(bundle, prompts):
    import tiercel.runtime as rt

    m = rt.load(bundle)
    feats = m.image_features(m.pixel_values(image(2)))
    chosen = [prompts["IMG_CAP"], prompts["REG_VG"], prompts["PIX_CLS"]]
    batched = m.generate_ids(feats, chosen, num_beams=3, max_new_tokens=7)
    assert batched == [m.generate_ids(feats, [p], num_beams=3, max_new_tokens=7)[0] for p in chosen]
