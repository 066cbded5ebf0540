"""Runtime: checksums, clear errors, preprocessing identical to the processor, results, no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from tests.bundles import TASK_INPUTS, image  # noqa: E402


@pytest.fixture()
def copy(bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def test_tampered_graph_fails_with_one_clear_line(copy):
    import tiercel.runtime as rt
    from tiercel.errors import BundleError

    f = copy / "decoder_with_past_model.onnx"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        rt.load(copy)
    assert str(err.value) == f"{copy}/manifest.json: sha256 of decoder_with_past_model.onnx does not match; re-export the bundle"


def test_a_damaged_graph_whose_checksum_was_edited_to_match_is_one_line(copy):
    import hashlib

    import tiercel.runtime as rt
    from tiercel.errors import BundleError

    f = copy / "vision_encoder.onnx"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # cut, and the manifest made to agree
    manifest = json.loads((copy / "manifest.json").read_text())
    for g in manifest["graphs"]:
        if g["file"] == f.name:
            g["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"^{copy}/vision_encoder\.onnx: onnxruntime cannot load this graph \(.*\); "
                                          "export the bundle again$"):
        rt.load(copy, backend="onnxruntime").run(image(), task="IMG_CAP")


def test_missing_graph_and_unknown_backend(copy):
    import tiercel.runtime as rt
    from tiercel.errors import BundleError, ConfigError

    (copy / "openvino" / "encoder_model.bin").unlink()
    with pytest.raises(BundleError, match="openvino/encoder_model.bin is missing; re-export the bundle"):
        rt.load(copy, backend="openvino")
    with pytest.raises(ConfigError, match="unknown backend 'coreml'; choose one of: onnxruntime, openvino, tensorrt"):
        rt.load(copy, backend="coreml")
    with pytest.raises(BundleError, match="not a tiercel bundle"):
        rt.load(copy / "openvino")


def test_missing_backend_package_names_the_extra(bundle, monkeypatch):
    import tiercel.runtime as rt
    from tiercel.errors import MissingDependency

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependency, match=r"pip install 'tiercel\[onnx\]'"):
        rt.load(bundle)


def test_preprocessing_equals_the_transformers_processor(bundle):
    transformers = pytest.importorskip("transformers")
    import tiercel.runtime as rt

    m = rt.load(bundle)
    proc = transformers.CLIPImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False, resample=3,
                                           image_mean=m.pre.mean, image_std=m.pre.std, do_convert_rgb=False)
    img = image(5, w=150, h=70)
    want = proc(images=img, return_tensors="np")["pixel_values"]
    assert np.abs(m.pixel_values(img) - want).max() < 1e-5


# (384, 256, 128): a shape where Pillow 13 orders a band's two passes unlike the whole image's, so the bands differ
# and the one-call fallback must be taken; (300, 90, 200): not a whole multiple
@pytest.mark.parametrize("height,width,size", [(384, 200, 192), (400, 130, 200), (600, 64, 200), (300, 90, 200), (384, 256, 128)])
def test_resize_in_bands_equals_one_pillow_resize_bit_for_bit(monkeypatch, height, width, size):
    from PIL import Image

    from tiercel.runtime import preprocess

    monkeypatch.setattr(preprocess, "_BAND_THREADS", 3)  # 3 bands (uneven for 200) whatever this machine's cores
    rgb = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))
    assert np.array_equal(preprocess.resize_square(rgb, size), want)


def test_normalize_by_lookup_equals_the_per_pixel_arithmetic_bit_for_bit():
    from tiercel.runtime.preprocess import normalize

    rng = np.random.default_rng(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for shape in [(37, 53, 3), (2, 16, 16, 3)]:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        want = (pixels.astype(np.float32) * np.float32(1 / 255) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        got = normalize(pixels, mean, std)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got, np.moveaxis(want, -1, -3))
    floats = rng.random((8, 8, 3)).astype(np.float32) * 255  # not an image's bytes: the arithmetic itself
    want = np.moveaxis((floats / 255 - np.float32(mean)) / np.float32(std), -1, -3)
    assert np.abs(normalize(floats, mean, std) - want).max() < 1e-5


@pytest.mark.parametrize("kind", ["gray", "rgba", "uint16", "float"])
def test_odd_image_formats_are_converted(bundle, kind):
    import tiercel.runtime as rt

    m = rt.load(bundle)
    rgb = image(6)
    arrays = {"gray": rgb[:, :, 0], "rgba": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
              "uint16": rgb.astype(np.uint16) * 257, "float": rgb.astype(np.float32) / 255}
    got = m.pixel_values(arrays[kind])
    assert got.shape == (1, 3, 64, 64) and np.isfinite(got).all()
    if kind != "gray":
        assert np.abs(got - m.pixel_values(rgb)).max() < 0.02


def test_run_returns_typed_results_and_run_all_equals_single_runs(bundle):
    import tiercel.runtime as rt
    from tiercel.errors import TaskError

    m = rt.load(bundle)
    img = image(4)
    tags = ["IMG_CAP", "IMG_CT", "REG_CAP", "REG_DET_HBB", "PIX_SEG"]
    texts = {t: TASK_INPUTS[t]["text"] for t in tags if "text" in TASK_INPUTS.get(t, {})}
    regions = {t: TASK_INPUTS[t]["region"] for t in tags if "region" in TASK_INPUTS.get(t, {})}
    together = m.run_all(img, tags, texts=texts, regions=regions, num_beams=1, max_new_tokens=6)
    alone = {t: m.run(img, t, text=texts.get(t), region=regions.get(t), num_beams=1, max_new_tokens=6) for t in tags}
    assert {t: r.to_dict() for t, r in together.items()} == {t: r.to_dict() for t, r in alone.items()}
    assert together["IMG_CT"].kind == "count" and together["REG_DET_HBB"].kind == "boxes"
    json.dumps({t: r.to_dict() for t, r in together.items()})
    chg = m.run(img, "PIX_CHG", image2=image(8), max_new_tokens=4)
    assert chg.kind == "polygons"
    with pytest.raises(TaskError, match="needs two images"):
        m.run(img, "PIX_CHG")
    with pytest.raises(TaskError, match="only PIX_CHG takes image2"):
        m.run(img, "IMG_CAP", image2=img)
    with pytest.raises(TaskError, match="needs text"):
        m.run(img, "REG_DET_HBB")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_run_all_with_image2_batches_pix_chg_and_equals_single_runs(bundle, backend):
    import tiercel.runtime as rt
    from tiercel.errors import TaskError

    if backend == "openvino":
        pytest.importorskip("openvino")
    m = rt.load(bundle, backend=backend)
    before, after = image(4), image(8)
    tags = ["IMG_CAP", "PIX_CHG", "REG_DET_HBB"]
    gen = {"num_beams": 2, "max_new_tokens": 6}
    together = m.run_all(before, tags, texts={"REG_DET_HBB": "ship"}, image2=after, **gen)
    alone = {"IMG_CAP": m.run(before, "IMG_CAP", **gen), "PIX_CHG": m.run(before, "PIX_CHG", image2=after, **gen),
             "REG_DET_HBB": m.run(before, "REG_DET_HBB", text="ship", **gen)}
    assert {t: r.to_dict() for t, r in together.items()} == {t: r.to_dict() for t, r in alone.items()}
    # the tiny model's answers hardly depend on the image, so check the routing itself: each row's features
    from tiercel import tasks

    seen = []
    generate_ids = m.generate_ids
    m.generate_ids = lambda features, prompts, **kw: seen.append(features) or generate_ids(features, prompts, **kw)
    m.run_all(before, tags, texts={"REG_DET_HBB": "ship"}, image2=after, **gen)
    scene = m.image_features(m.pixel_values(before))[0]
    pair = m.image_features(m.pixel_values(tasks.tile_change_pair(before, after)))[0]
    assert np.abs(scene - pair).max() > 0.1
    for row, want in zip(seen[0], [scene, pair, scene]):
        assert np.abs(row - want).max() < 1e-4
    del m.generate_ids
    default = m.run_all(before, texts={"REG_DET_HBB": "ship"}, image2=after, num_beams=1, max_new_tokens=3)
    assert "PIX_CHG" in default and "REG_DET_HBB" in default
    with pytest.raises(TaskError, match="PIX_CHG: needs two images"):
        m.run_all(before, ["IMG_CAP", "PIX_CHG"])
    with pytest.raises(TaskError, match="image2 is only for PIX_CHG, which is not among the tasks"):
        m.run_all(before, ["IMG_CAP"], image2=after)


def test_runtime_runs_without_torch_or_transformers(bundle):
    code = (
        "import sys, numpy as np, tiercel.runtime as rt;"
        f"m = rt.load({str(bundle)!r});"
        "r = m.run(np.zeros((40, 50, 3), np.uint8), 'IMG_CAP', max_new_tokens=3);"
        "print(' '.join(x for x in ('torch', 'transformers', 'onnx') if x in sys.modules) or 'clean', r.kind)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "clean caption"


def _edit_manifest(root, change):
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(change(manifest)))
    return path


def _set(m, *keys_value):
    *keys, last, value = keys_value
    part = m
    for key in keys:
        part = part[key]
    part[last] = value
    return m


def _first_graph_file(m, value):
    m["graphs"][0]["file"] = value
    return m


@pytest.mark.parametrize("change, message", [
    (lambda m: [m], "must hold a JSON object (got list); re-export the bundle"),
    (lambda m: {k: v for k, v in m.items() if k != "generation"}, "generation: Field required; re-export the bundle"),
    (lambda m: {**m, "preprocessing": {}}, "preprocessing.size: Field required; re-export the bundle"),
    (lambda m: {**m, "generation": {**m["generation"], "beams": 2}}, "generation: unknown setting 'beams'; known: "),
    (lambda m: _first_graph_file(m, "../../etc/passwd"),
     "graphs.0.file: must be a path inside the bundle (got '../../etc/passwd'); re-export the bundle"),
    (lambda m: _first_graph_file(m, "/etc/passwd"), "graphs.0.file: must be a path inside the bundle (got '/etc/passwd')"),
    (lambda m: {**m, "decoder": []}, "decoder must be one of merged, split (got [])"),
    (lambda m: {**m, "tasks": ["IMG_CAP", "IMG_CAPTION"]}, "tasks.1: unknown task 'IMG_CAPTION'; known: IMG_CLS, "),
    (lambda m: _set(m, "model", "shape", {}), "model.shape.vision_dims: Field required; re-export the bundle"),
    (lambda m: _set(m, "model", "shape", "max_text_positions", "256"),
     "model.shape.max_text_positions: Input should be a valid integer; re-export the bundle"),
    (lambda m: _set(m, "model", "decoder_layers", None), "model.decoder_layers: Input should be a valid integer"),
    (lambda m: _set(m, "preprocessing", "size", 32), "preprocessing.size: 32 differs from the model's image_size 64"),
    (lambda m: _set(m, "generation", "num_beams", 10**6), "generation.num_beams: Input should be less than or equal to 32"),
    (lambda m: _set(m, "generation", "num_beams", "3"), "generation.num_beams: Input should be a valid integer"),
    (lambda m: _set(m, "generation", "eos_token_id", 5000),
     "generation.eos_token_id: 5000 is not a token of this model's 1403-token vocabulary; re-export the bundle"),
    (lambda m: _set(m, "generation", "length_penalty", 1e300), "generation.length_penalty: Input should be less than"),
    (lambda m: _set(m, "generation", "early_stopping", 3),
     "generation.early_stopping: must be true, false or \"never\" (got 3); re-export the bundle"),
    (lambda m: _set(_set(m, "model", "shape", "image_size", 200000), "preprocessing", "size", 200000),
     "model.shape: image_size must be a whole number 1..131072 (got 200000); re-export the bundle"),
    (lambda m: _set(_set(m, "model", "shape", "image_size", 3200), "preprocessing", "size", 3200),
     "model.shape: image_size 3200 exceeds the 50x50 learned position grid (max 1600); re-export the bundle"),
    (lambda m: _set(m, "model", "shape", "d_model", 10**7),
     "model.shape: d_model must be a whole number 1..131072 (got 10000000); re-export the bundle"),
    (lambda m: _set(m, "preprocessing", "mean", [0.5]), "preprocessing.mean: List should have at least 3 items"),
    (lambda m: _set(m, "preprocessing", "std", [0.2, 0.2, 0.2, 0.2, 0.2]), "preprocessing.std: List should have at most 3 items"),
])
def test_a_manifest_of_the_wrong_shape_is_one_line(copy, change, message):
    import tiercel.runtime as rt
    from tiercel.errors import BundleError

    path = _edit_manifest(copy, change)
    with pytest.raises(BundleError) as err:
        rt.load(copy)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_a_manifest_nested_too_deeply_is_one_line(copy):
    import tiercel.runtime as rt
    from tiercel.errors import BundleError

    (copy / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(BundleError, match=r"manifest.json: not valid JSON"):
        rt.load(copy)


def test_the_folder_of_a_killed_export_never_loads(copy, tmp_path):
    import tiercel.runtime as rt
    from tiercel.errors import BundleError

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    leftover = tmp_path / f".bundle.tmp-{proc.pid}-abc123"
    copy.rename(leftover)
    with pytest.raises(BundleError, match="the temporary folder of an export or quantize run that was killed"):
        rt.load(leftover)


def test_the_folder_of_a_running_export_never_loads(copy, tmp_path):
    import os

    import tiercel.runtime as rt
    from tiercel.errors import BundleError

    running = tmp_path / f".bundle.tmp-{os.getppid()}-abc123"  # a live process, not this one
    copy.rename(running)
    with pytest.raises(BundleError) as err:
        rt.load(running)
    assert str(err.value) == (f"{running}: the temporary folder of an export or quantize run that is still running "
                              f"(process {os.getppid()}); wait for the bundle it renames this folder to")


def test_a_graph_file_linking_outside_the_bundle_is_refused(copy, tmp_path):
    import tiercel.runtime as rt
    from tiercel.errors import BundleError

    outside = tmp_path / "elsewhere.onnx"
    (copy / "vision_encoder.onnx").rename(outside)  # same bytes, so the checksum alone would pass
    (copy / "vision_encoder.onnx").symlink_to(outside)
    with pytest.raises(BundleError) as err:
        rt.load(copy)
    assert str(err.value) == (f"{copy}/manifest.json: vision_encoder.onnx links to a file outside the bundle; "
                              "re-export the bundle")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_prompt_and_new_tokens_are_checked_against_the_position_tables(bundle, tiny_checkpoint, backend):
    from tiercel.errors import ConfigError

    if backend == "torch":
        from tiercel.models.predict import TorchPredictor

        m = TorchPredictor.from_checkpoint(tiny_checkpoint)
    else:
        pytest.importorskip(backend)
        import tiercel.runtime as rt

        m = rt.load(bundle, backend=backend)
    limit = m.max_positions  # the tiny model: 256 positions, 5 image tokens
    with pytest.raises(ConfigError) as err:
        m.run(image(), "IMG_CAP", max_new_tokens=limit + 1)
    assert str(err.value) == (f"max_new_tokens: {limit + 1} is more than this model's {limit} decoder positions; "
                              f"use {limit} or less (--max-new-tokens)")
    with pytest.raises(ConfigError, match=rf"prompt: 5 image tokens \+ \d+ prompt tokens are more than this model's "
                                          rf"{limit} text positions; shorten the prompt \(--text\) to {limit - 5} tokens"):
        m.run(image(), "REG_VG", text="airplane " * limit, max_new_tokens=4)
    assert m.run(image(), "IMG_CAP", max_new_tokens=limit, num_beams=1) is not None  # the bound itself runs


def test_the_manifest_is_one_typed_model_written_as_it_is_read(copy, tmp_path):
    from tiercel.errors import BundleError
    from tiercel.runtime.manifest import Manifest, read_manifest, write_manifest

    m = read_manifest(copy / "manifest.json")
    assert isinstance(m, Manifest) and m.format_version == 1 and m.decoder == "split"
    assert m.model.shape.image_size == m.preprocessing.size and "onnxruntime" in m.backends
    again = tmp_path / "again"
    again.mkdir()
    write_manifest(again, m)
    assert json.loads((again / "manifest.json").read_text()) == json.loads((copy / "manifest.json").read_text())
    bad = m.model_dump(mode="json")
    bad["graphs"][0]["file"] = "../outside.onnx"  # what is written is checked as what is read
    with pytest.raises(BundleError, match=r"graphs\.0\.file: must be a path inside the bundle"):
        write_manifest(again, bad)
