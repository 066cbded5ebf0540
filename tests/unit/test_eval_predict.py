"""A checkpoint (PyTorch) and its bundle are evaluated the same way and predict the same, token for token."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from tests.bundles import TASK_INPUTS, image  # noqa: E402
from tiercel import tasks as T  # noqa: E402
from tiercel.evaluate import evaluate  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Eager torch on a tiny model is fastest on one thread (and on a loaded 2-core machine, 20x faster)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def torch_predictor(tiny_model, tiny_tokenizer):
    from tiercel.models.predict import TorchPredictor

    return TorchPredictor(tiny_model, tiny_tokenizer)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tiercel.data.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, n=60, size=64, seed=1, workers=1)
    return root


def test_torch_predictor_takes_the_bundles_settings(bundle, torch_predictor):
    import tiercel.runtime as rt

    m = rt.load(bundle)
    assert torch_predictor.generation == m.generation
    assert torch_predictor.pre.size == m.pre.size and torch_predictor.pre.mean == m.pre.mean


def test_beam_search_run_and_run_all_match_the_bundle_on_every_task(bundle, torch_predictor):
    import tiercel.runtime as rt

    m = rt.load(bundle)
    img, gen = image(5), {"num_beams": 2, "max_new_tokens": 8}  # greedy: see the eval test below
    for tag in T.TAGS:
        extra = {"image2": image(6)} if tag == "PIX_CHG" else TASK_INPUTS.get(tag, {})
        assert torch_predictor.run(img, tag, **extra, **gen) == m.run(img, tag, **extra, **gen), tag
    single = [t for t in T.TAGS if t != "PIX_CHG"]
    texts = {t: x["text"] for t, x in TASK_INPUTS.items() if "text" in x}
    regions = {t: x["region"] for t, x in TASK_INPUTS.items() if "region" in x}
    assert torch_predictor.run_all(img, single, texts, regions, **gen) == m.run_all(img, single, texts, regions, **gen)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_eval_of_checkpoint_and_bundle_agree(bundle, torch_predictor, synth, backend):
    import tiercel.runtime as rt

    gen = {"num_beams": 1, "max_new_tokens": 10}
    a = evaluate(torch_predictor, synth / "test.json", generation=gen, keep_predictions=True)
    b = evaluate(rt.load(bundle, backend=backend), synth / "test.json", generation=gen, keep_predictions=True)
    assert len(a.predictions) == 14 and a.predictions == b.predictions
    assert _same(a.per_task, b.per_task)  # nan (e.g. count MAE with no numbers) equals nan here


def _same(x: dict, y: dict) -> bool:
    return all(x[t].keys() == y[t].keys() and all((x[t][k] == y[t][k]) or (x[t][k] != x[t][k] and y[t][k] != y[t][k])
                                                   for k in x[t]) for t in x) and x.keys() == y.keys()
