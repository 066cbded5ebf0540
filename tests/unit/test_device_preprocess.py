"""GPU preprocessing (tiercel.models.device_preprocess), run here on torch's CPU device: the same integer and
lookup operations as on a GPU, compared with Pillow and the runtime's numpy preprocessing bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from tests.bundles import image

torch = pytest.importorskip("torch")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# shrink, enlarge, one side only, Pillow's vertical-first order (height shrinks > 2x the width), PIX_CHG's canvas
# (1536 -> 768 at full size: 2H x 2W of a 64 px frame here), odd and tiny sizes
@pytest.mark.parametrize("height,width,size", [(128, 128, 64), (40, 50, 64), (64, 200, 64), (300, 90, 64),
                                               (384, 256, 128), (77, 133, 96), (3, 2, 7), (64, 64, 64)])
def test_device_resize_and_normalise_give_the_runtimes_float32_values_bit_for_bit(height, width, size):
    from tiercel.models.device_preprocess import DevicePreprocessor
    from tiercel.runtime.preprocess import preprocess

    rgb = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    pre = DevicePreprocessor("cpu", size, MEAN, STD)
    got = pre([rgb, rgb[::-1].copy()])
    assert got.dtype == torch.float32 and tuple(got.shape) == (2, 3, size, size)
    want = np.concatenate([preprocess(rgb, size, MEAN, STD), preprocess(rgb[::-1].copy(), size, MEAN, STD)])
    assert np.array_equal(got.numpy(), want)
    assert not pre.host_shapes  # every shape here is resized by the device code, not handed back to Pillow


def test_full_size_change_canvas_is_pillows_bytes():
    """PIX_CHG at Florence-2's size: the 1536 x 1536 canvas to 768, where the host spends most of its time."""
    from PIL import Image

    from tiercel.models.device_preprocess import DevicePreprocessor

    canvas = np.random.default_rng(7).integers(0, 256, (1536, 1536, 3), dtype=np.uint8)
    pre = DevicePreprocessor("cpu", 768, MEAN, STD)
    got = pre.resize(torch.from_numpy(canvas).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.array_equal(got, np.asarray(Image.fromarray(canvas).resize((768, 768), Image.BICUBIC)))


def test_a_shape_that_differs_from_pillow_is_resized_on_the_host(monkeypatch, caplog):
    from tiercel.models import device_preprocess
    from tiercel.runtime.preprocess import pillow_taps, preprocess

    def other_filter(n, size):  # a Pillow whose coefficients differ (another filter, say): 1/1024 more on tap 0
        index, weight = pillow_taps(n, size)
        return index, weight + 4096 * (np.arange(weight.shape[1]) == 0)

    monkeypatch.setattr(device_preprocess, "pillow_taps", other_filter)
    rgb = np.random.default_rng(1).integers(0, 256, (100, 80, 3), dtype=np.uint8)
    pre = device_preprocess.DevicePreprocessor("cpu", 64, MEAN, STD)
    with caplog.at_level("WARNING"):
        got = pre([rgb])
    assert pre.host_shapes == {(100, 80)} and "100x80 -> 64" in caplog.text
    assert np.array_equal(got.numpy(), preprocess(rgb, 64, MEAN, STD))


def test_a_pillow_that_orders_its_passes_otherwise_is_caught_once_for_every_two_pass_shape(monkeypatch):
    from tiercel.models import device_preprocess
    from tiercel.runtime.preprocess import preprocess

    monkeypatch.setattr(device_preprocess, "pillow_pass_order", lambda h, w, s: [p for p, n in (("horizontal", w), ("vertical", h)) if n != s])
    pre = device_preprocess.DevicePreprocessor("cpu", 64, MEAN, STD)
    assert pre.agrees(64, 100) and pre.agrees(90, 64)  # one pass each: the order does not matter
    assert not pre._order_agrees()  # a 3s x 1.25s shape: Pillow runs the vertical pass first
    rgb = np.random.default_rng(2).integers(0, 256, (300, 90, 3), dtype=np.uint8)
    assert np.array_equal(pre([rgb]).numpy(), preprocess(rgb, 64, MEAN, STD)) and pre.host_shapes == {(300, 90)}


def test_torch_predictor_with_device_preprocessing_gives_the_host_paths_results(tiny_model, tiny_tokenizer):
    """run_all over the 14 tasks (PIX_CHG's canvas included) with pixels and features kept as tensors = with
    numpy pixels; image_features gives a tensor for a tensor and numpy for numpy."""
    from tiercel import tasks
    from tiercel.models.predict import TorchPredictor
    from tiercel.tasks.examples import task_inputs

    host = TorchPredictor(tiny_model, tiny_tokenizer)
    device = TorchPredictor(tiny_model, tiny_tokenizer)
    assert not host.device_preprocess  # the default off a GPU
    device.device_preprocess = True
    before, after = image(3), image(4)
    inputs = {t: task_inputs(t, (before.shape[1], before.shape[0])) for t in tasks.TAGS}
    texts = {t: x["text"] for t, x in inputs.items() if "text" in x}
    regions = {t: x["region"] for t, x in inputs.items() if "region" in x}
    gen = {"max_new_tokens": 8}
    want = host.run_all(before, texts=texts, regions=regions, image2=after, **gen)
    got = device.run_all(before, texts=texts, regions=regions, image2=after, **gen)
    assert len(got) == 14 and got == want
    pixels = device.preprocess_images([before])
    assert torch.is_tensor(pixels) and np.array_equal(pixels.numpy(), host.preprocess_images([before]))
    assert torch.is_tensor(device.image_features(pixels))
    assert np.array_equal(device.image_features(pixels).numpy(), host.image_features(pixels.numpy()))
