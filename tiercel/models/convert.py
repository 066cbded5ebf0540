"""Checkpoint conversion: load any supported layout, write tiercel's native layout with provenance."""

from __future__ import annotations

from pathlib import Path

from tiercel.errors import ConfigError
from tiercel.models.checkpoint import load_checkpoint, weight_files
from tiercel.models.writer import provenance_of, save_native, tiercel_meta

DTYPES = ("float32", "float16", "bfloat16")


def convert_checkpoint(src: str | Path, dst: str | Path, dtype: str = "float32", overwrite: bool = False) -> dict:
    """Convert `src` to the native layout in `dst` (written atomically). Returns a summary dict."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: must be one of {', '.join(DTYPES)} (got {dtype})")
    ckpt = load_checkpoint(src, dtype=dtype)
    provenance = provenance_of(ckpt.path, weight_files(ckpt.path), ckpt.layout)
    meta = tiercel_meta(ckpt.model, ckpt.mean, ckpt.std, provenance)
    save_native(ckpt.model, ckpt.tokenizer, dst, meta=meta, overwrite=overwrite)
    params = sum(p.numel() for p in ckpt.model.parameters())
    return {"dst": str(dst), "preset": meta["preset"], "params": params, "notes": ckpt.notes, "layout": ckpt.layout}
