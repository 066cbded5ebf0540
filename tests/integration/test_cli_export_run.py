"""The real CLI end to end: `tiercel export` a tiny checkpoint, `tiercel run` it, and every bad input in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def bundle(tiny_model, tiny_tokenizer, tmp_path_factory):
    from tiercel.models.writer import save_native

    root = tmp_path_factory.mktemp("cli")
    save_native(tiny_model, tiny_tokenizer, root / "ckpt")
    out = run_cli("export", str(root / "ckpt"), "--out", str(root / "bundle"), "--backend", "onnxruntime")
    assert out.returncode == 0, out.stderr
    assert "greedy identical 3/3" in out.stdout
    return root / "bundle"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    rgb = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "a.png")
    Image.fromarray(rgb[::-1]).save(root / "b.png")
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(root / "gray16.png")
    (root / "broken.png").write_bytes(b"not an image")
    return root


def test_export_then_run_prints_json_results(bundle, images):
    out = run_cli("run", str(bundle), "--image", str(images / "a.png"), "--task", "REG_DET_HBB", "--text", "airplane",
                  "--max-new-tokens", "5")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["type"] == "boxes" and isinstance(result["boxes"], list)
    out = run_cli("run", str(bundle), "--image", str(images / "gray16.png"), "--all", "--text", "ship",
                  "--max-new-tokens", "4", "--num-beams", "1")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert {"IMG_CAP", "IMG_CLS", "IMG_CT", "REG_DET_HBB", "PIX_SEG"} <= set(results) and "PIX_CHG" not in results
    out = run_cli("run", str(bundle), "--image", str(images / "a.png"), "--image2", str(images / "b.png"),
                  "--task", "PIX_CHG", "--max-new-tokens", "4")
    assert out.returncode == 0 and json.loads(out.stdout)["type"] == "polygons"
    out = run_cli("run", str(bundle), "--image", str(images / "a.png"), "--image2", str(images / "b.png"), "--all",
                  "--max-new-tokens", "4", "--num-beams", "1")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["PIX_CHG"]["type"] == "polygons" and "IMG_CAP" in json.loads(out.stdout)


def test_backend_options_change_threads_not_results(bundle, images):
    args = ["run", str(bundle), "--image", str(images / "a.png"), "--task", "IMG_CAP", "--max-new-tokens", "6"]
    plain = run_cli(*args)
    quiet = run_cli(*args, "--option", "session.intra_op.allow_spinning=0", "--option", "session.inter_op.allow_spinning=0")
    assert plain.returncode == quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout) == json.loads(plain.stdout)


@pytest.mark.parametrize("args, message", [
    (["--task", "PIX_CHG"], "PIX_CHG: needs two images"),
    (["--task", "IMG_CAP", "--image2", "{img}/b.png"], "only PIX_CHG takes image2"),
    (["--all", "--task", "IMG_CAP", "--image2", "{img}/b.png"], "image2 is only for PIX_CHG"),
    (["--task", "NOPE"], "unknown task 'NOPE'"),
    (["--task", "REG_DET_HBB"], "REG_DET_HBB: the prompt needs text"),
    (["--task", "IMG_CAP", "--backend", "coreml"], "unknown backend 'coreml'"),
    (["--task", "IMG_CAP", "--option", "allow_spinning"], "--option: expected KEY=VALUE (got 'allow_spinning')"),
    (["--task", "IMG_CAP", "--option", "foo=bar"], "--option foo: onnxruntime has no such setting"),
    (["--task", "IMG_CAP", "--option", "graph_optimization_level=fast"], "expected one of ORT_DISABLE_ALL"),
])
def test_bad_input_is_one_line_and_exit_1(bundle, images, args, message):
    args = [a.replace("{img}", str(images)) for a in args]
    out = run_cli("run", str(bundle), "--image", str(images / "a.png"), *args)
    assert out.returncode == 1
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_unreadable_image_and_tampered_bundle(bundle, images, tmp_path):
    out = run_cli("run", str(bundle), "--image", str(images / "broken.png"), "--task", "IMG_CAP")
    assert out.returncode == 1 and "cannot read image" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    (copy / "encoder_model.onnx").write_bytes(b"0" + (copy / "encoder_model.onnx").read_bytes())
    out = run_cli("run", str(copy), "--image", str(images / "a.png"), "--task", "IMG_CAP")
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: {copy}/manifest.json: sha256 of encoder_model.onnx does not match; re-export the bundle"
    shutil.copy(bundle / "encoder_model.onnx", copy / "encoder_model.onnx")
    (copy / "decoder_model.onnx").unlink()
    out = run_cli("run", str(copy), "--image", str(images / "a.png"), "--task", "IMG_CAP")
    assert out.returncode == 1 and "decoder_model.onnx is missing" in out.stderr


def test_run_a_checkpoint_on_the_torch_backend_gives_the_bundles_results(bundle, images):
    """--backend torch runs the checkpoint itself (static-KV decoder; CUDA graphs on a GPU, fp32 here on the CPU)."""
    ckpt = bundle.parent / "ckpt"
    for args in (["--task", "REG_DET_HBB", "--text", "airplane"], ["--all", "--image2", str(images / "b.png")]):
        common = ["--image", str(images / "a.png"), *args, "--max-new-tokens", "6", "--num-beams", "2"]
        torch_out = run_cli("run", str(ckpt), "--backend", "torch", "--device", "cpu", *common)
        ort_out = run_cli("run", str(bundle), *common)
        assert torch_out.returncode == 0, torch_out.stderr
        assert json.loads(torch_out.stdout) == json.loads(ort_out.stdout)


def test_torch_backend_without_a_gpu_is_one_line(bundle, images):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = run_cli("run", str(bundle.parent / "ckpt"), "--backend", "torch", "--device", "cuda", "--image",
                  str(images / "a.png"), "--task", "IMG_CAP")
    assert out.returncode == 1
    assert out.stderr.strip() == "error: --device cuda: torch sees no CUDA GPU here; use --device cpu or a CUDA build of torch"
