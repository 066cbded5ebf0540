"""run_batch: tasks on several images in one batch give what `run` gives on each alone, and evaluate batches
records across images with it (one vision pass per distinct image) without changing a prediction."""

from __future__ import annotations

import numpy as np
import pytest

from tests.bundles import TASK_INPUTS, image


def _items(images: list[np.ndarray]) -> list[dict]:
    """Three tasks per image, and PIX_CHG on the first two as a pair."""
    tags = ["IMG_CAP", "REG_DET_HBB", "REG_CAP"]
    items = [{"image": img, "task": t, **TASK_INPUTS.get(t, {})} for img in images for t in tags]
    return items + [{"image": images[0], "task": "PIX_CHG", "image2": images[1]}]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_run_batch_equals_run_on_each_item_and_encodes_each_image_once(bundle, backend):
    import tiercel.runtime as rt
    from tiercel import tasks

    if backend == "openvino":
        pytest.importorskip("openvino")
    m = rt.load(bundle, backend=backend)
    images = [image(4), image(8), image(9, w=64, h=80)]  # the third of another size: answers in its own pixels
    items = _items(images)
    gen = {"num_beams": 2, "max_new_tokens": 6}
    together = m.run_batch(items, **gen)
    alone = [m.run(it["image"], it["task"], text=it.get("text"), region=it.get("region"), image2=it.get("image2"), **gen)
             for it in items]
    assert [r.to_dict() for r in together] == [r.to_dict() for r in alone]

    calls, seen = [], []
    vision, generate_ids = m.image_features, m.generate_ids
    m.image_features = lambda pixels: calls.append(len(pixels)) or vision(pixels)
    m.generate_ids = lambda features, prompts, **kw: seen.append((features, kw["rows"])) or generate_ids(features, prompts, **kw)
    m.run_batch(items, **gen)
    assert calls == [4]  # three images and the tiled pair, once each, in one call
    features, rows = seen[0]
    assert rows == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    want = [m.image_features(m.pixel_values(x))[0] for x in [*images, tasks.tile_change_pair(images[0], images[1])]]
    for row, r in zip(features[rows], rows):  # the tiny model's answers hardly depend on the image: check the routing
        assert np.abs(row - want[r]).max() < 1e-4
    assert m.run_batch([]) == []


@pytest.mark.parametrize("scheme, max_gap", [("int8-weight-only", 1e-5), ("int8-dynamic", None)])
def test_int8_weight_only_rounds_each_row_on_its_own(bundle, tmp_path, scheme, max_gap):
    """A decoder step's logits for a row are the same alone and beside a row of 30x larger activations under
    int8-weight-only (MatMulNBits quantizes each row by itself); int8-dynamic's one scale spans the call."""
    import onnxruntime as ort

    from tiercel.quantize import quantize_bundle
    from tiercel.runtime import read_bundle

    quantize_bundle(bundle, tmp_path / "q", scheme, n_val=0)
    b = read_bundle(tmp_path / "q")
    m = b.manifest.model
    sess = ort.InferenceSession(str(b.root / b.entries("onnxruntime")["decoder_with_past_model"].file),
                                providers=["CPUExecutionProvider"])
    d, heads, enc, rng = m.d_model, m.attention_heads, 20, np.random.default_rng(0)
    feeds = {f"past_key_values.{i}.{w}.{k}": rng.standard_normal((2, heads, 5 if w == "decoder" else enc, d // heads),
                                                                 dtype=np.float32)
             for i in range(m.decoder_layers) for w in ("decoder", "encoder") for k in ("key", "value")}
    feeds["inputs_embeds"] = rng.standard_normal((2, 1, d), dtype=np.float32) * np.array([1, 30], np.float32)[:, None, None]
    feeds["encoder_attention_mask"] = np.ones((2, enc), np.int64)
    both = sess.run(["logits"], feeds)[0]
    alone = sess.run(["logits"], {k: v[:1] for k, v in feeds.items()})[0]
    gap = np.abs(both[:1] - alone).max()
    assert (gap < max_gap) if max_gap else (gap > 1e-3), gap  # None: the row must move


def test_run_batch_chunks_the_vision_encoder_calls(bundle, monkeypatch):
    import tiercel.runtime as rt
    import tiercel.runtime.model as model

    m = rt.load(bundle)
    monkeypatch.setattr(model, "VISION_CHUNK", 2)
    calls, vision = [], m.image_features
    m.image_features = lambda pixels: calls.append(len(pixels)) or vision(pixels)
    items = [{"image": image(i), "task": "IMG_CAP"} for i in range(5)]
    got = m.run_batch(items, max_new_tokens=4)
    assert calls == [2, 2, 1]
    assert [r.to_dict() for r in got] == [m.run(image(i), "IMG_CAP", max_new_tokens=4).to_dict() for i in range(5)]


def test_run_batch_rejects_bad_items_in_one_line(bundle):
    import tiercel.runtime as rt
    from tiercel.errors import TaskError

    m = rt.load(bundle)
    with pytest.raises(TaskError, match=r"^run_batch: item 1 needs 'image' and 'task' .*got image, prompt$"):
        m.run_batch([{"image": image(0), "task": "IMG_CAP"}, {"image": image(0), "prompt": "x"}])
    with pytest.raises(TaskError, match="PIX_CHG: needs two images"):
        m.run_batch([{"image": image(0), "task": "IMG_CAP"}, {"image": image(0), "task": "PIX_CHG"}])
    with pytest.raises(TaskError, match="needs text"):
        m.run_batch([{"image": image(0), "task": "REG_DET_HBB"}])


@pytest.mark.parametrize("kind", ["bundle", "checkpoint"])
def test_evaluate_batches_across_images_and_changes_no_prediction(bundle, tiny_checkpoint, synth_dir, kind):
    from tiercel.evaluate import evaluate, open_predictor

    predictor = open_predictor(bundle if kind == "bundle" else tiny_checkpoint, threads=1)
    gen = {"num_beams": 1, "max_new_tokens": 8}
    calls, run_batch = [], predictor.run_batch
    predictor.run_batch = lambda items, **kw: calls.append(len(items)) or run_batch(items, **kw)
    test = synth_dir / "test.json"
    a = evaluate(predictor, test, generation=gen, keep_predictions=True, batch_size=7)
    b = evaluate(predictor, test, generation=gen, keep_predictions=True, batch=False)
    assert a.predictions == b.predictions and a.per_task == b.per_task
    assert max(calls) == 7 and sum(calls) >= sum(a.counts.values()) - 1  # a last batch of one goes through run
