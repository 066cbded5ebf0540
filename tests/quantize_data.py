"""Shared inputs of the quantize tests: a tiny synthetic benchmark and a wider tiny bundle (made once per process)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path


@functools.cache
def synth_folder() -> Path:
    """`tiercel data synth --n 60 --size 64` through the library, in one process."""
    from tiercel.data.synth.writer import generate

    out = Path(tempfile.mkdtemp(prefix="tiercel-synth-")) / "synth"
    generate(out, n=60, size=64, seed=0, workers=1)
    return out


@functools.cache
def wide_bundle(tokenizer) -> Path:
    """A tiny model with d_model 128 / ffn 512, so weights (not graph overhead) dominate the decoder files."""
    from tiercel.export.bundle import export_model
    from tiercel.models import build

    model = build("tiny", seed=0, vocab_size=len(tokenizer), image_token_id=tokenizer.image_id, d_model=128, ffn_dim=512)
    out = Path(tempfile.mkdtemp(prefix="tiercel-wide-")) / "bundle"
    return export_model(model, tokenizer, out, backends=("onnxruntime",), parity=False)
