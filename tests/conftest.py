"""Shared fixtures: a tiny tokenizer and tiny Florence-2 model built in code (no network, no weights)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_CORPUS = [
    "Classify the image.\nUse one or a few words.",
    "Describe the image.",
    "Describe the image in detail.",
    "Count the number of ship.",
    "Detect all airplane in the image.\nUse horizontal bounding boxes.",
    "Detect all ship in the image.\nUse oriented bounding boxes.",
    "A harbor with three ships and a storage tank near the water.",
    "An airport with two airplanes parked on the asphalt.",
] * 20


@functools.cache
def has_nvidia_gpu() -> bool:
    """Whether nvidia-smi lists a GPU (no torch import: the runtime's GPU tests may not need it)."""
    if shutil.which("nvidia-smi") is None:
        return False
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return out.returncode == 0 and "GPU" in out.stdout


def pytest_collection_modifyitems(config, items):
    """Tests marked "gpu" are skipped on machines without an NVIDIA GPU (CI, developers' machines)."""
    marked = [item for item in items if item.get_closest_marker("gpu")]
    if marked and not has_nvidia_gpu():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU (nvidia-smi lists none)")
        for item in marked:
            item.add_marker(skip)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `tiercel` command in a subprocess; returns the completed process (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "tiercel", *args], capture_output=True, text=True, env=full_env, cwd=ROOT)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tiercel.runtime.tokenizer import train_bpe

    return train_bpe(TINY_CORPUS, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    pytest.importorskip("torch")
    from tiercel.models import build

    return build("tiny", seed=0, vocab_size=len(tiny_tokenizer), image_token_id=tiny_tokenizer.image_id)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tiny_tokenizer, tmp_path_factory):
    """The tiny model written once as a native checkpoint directory named "tiny"."""
    from tiercel.models.writer import save_native

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_native(tiny_model, tiny_tokenizer, out)
    return out


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small synthetic benchmark (all 14 tasks, 64 px), generated once per test session."""
    from tiercel.data.synth import generate

    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, n=160, size=64, seed=0, workers=1)
    return out


@pytest.fixture(scope="session")
def bundle(tiny_model, tiny_tokenizer):
    """The tiny model exported once (split decoder, onnxruntime + openvino); see tests/bundles.py."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from tests.bundles import tiny_bundle

    return tiny_bundle(tiny_model, tiny_tokenizer)
