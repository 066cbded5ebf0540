"""Open a PyTorch checkpoint directory as a predictor with the runtime's API (`run`, `run_all`).

A checkpoint runs as a TorchPredictor (transformers, fp32 by default, CPU) or, with backend "torch" or device
"cuda", as a GraphedPredictor (static KV cache, CUDA graphs on a GPU; tiercel.models.static_decode). Its one
setting is `dtype=fp32|fp16|bf16` (`--option dtype=...`); backend settings are for bundles.

`tiercel.evaluate.open_predictor` (bundles and checkpoints) and the profiler (`CHECKPOINTS`, handed to
tiercel.runtime.profile, which never imports torch or this package) both open checkpoints here. Importing this
module does not import torch: `checkpoint_dtype` validates settings on a machine without it.
"""

from __future__ import annotations

from pathlib import Path

from tiercel.errors import ConfigError, require
from tiercel.runtime.profile.runner import Checkpoints

CHECKPOINT_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
                     "bf16": "bfloat16", "bfloat16": "bfloat16"}


def checkpoint_dtype(path, options: dict | None) -> str | None:
    """The one setting a checkpoint takes, `--option dtype=fp32|fp16|bf16` (torch dtype name, or None for the
    default: fp16 with CUDA graphs on a GPU, fp32 otherwise); any other key is a one-line error."""
    options = dict(options or {})
    dtype = options.pop("dtype", None)
    if options:
        raise ConfigError(f"--option {next(iter(options))}: {path} is a checkpoint, which takes only dtype=fp32|fp16|bf16 "
                          "(backend settings are for bundles)")
    if dtype is not None and str(dtype).lower() not in CHECKPOINT_DTYPES:
        raise ConfigError(f"--option dtype={dtype}: choose fp32, fp16 or bf16")
    return None if dtype is None else CHECKPOINT_DTYPES[str(dtype).lower()]


def open_checkpoint(path: str | Path, backend: str = "onnxruntime", device: str | None = None, threads: int | None = None,
                    options: dict | None = None):
    """A checkpoint directory as a TorchPredictor, or a GraphedPredictor with backend "torch" or device "cuda".

    `backend` is only read for "torch" (a bundle backend name means "the checkpoint as transformers runs it");
    `threads` sets torch's intra-op threads (process-wide); `options`: {"dtype": "fp32"|"fp16"|"bf16"}.
    """
    path = Path(path)
    if path.is_file():
        raise ConfigError(f"{path}: is a file; give a bundle or checkpoint folder")
    if not path.exists():
        raise ConfigError(f"{path}: no such bundle or checkpoint directory")
    dtype = checkpoint_dtype(path, options)
    torch = require("torch", "train", f"opening {path} (not a bundle: no manifest.json, so read as a PyTorch checkpoint)")
    if threads:
        torch.set_num_threads(threads)
    if backend == "torch" or device == "cuda":
        from tiercel.models.static_decode import load_graphed

        return load_graphed(path, device, dtype)
    from tiercel.models.predict import TorchPredictor

    return TorchPredictor.from_checkpoint(path, dtype or "float32")


CHECKPOINTS = Checkpoints(check=checkpoint_dtype, open=open_checkpoint)
"""What the profiler needs to time checkpoints: `profile(..., checkpoints=CHECKPOINTS)`."""
