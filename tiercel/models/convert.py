"""Checkpoint conversion, by source family: each converter reads its family's published layout and writes the
layout tiercel loads, with provenance.

    florence: any Florence-2 / Falcon checkpoint (native or original layout) -> tiercel's native layout
    geochat:  GeoChat in LLaVA-1.5's own layout -> transformers' LLaVA layout (the GeoChat teacher)

An output never replaces its input, a folder holding it, or a folder tiercel did not write.
"""

from __future__ import annotations

from pathlib import Path

from tiercel.errors import ConfigError
from tiercel.models.checkpoint import find_checkpoint_dir, load_checkpoint, weight_files
from tiercel.models.writer import check_output, provenance_of, save_native, tiercel_meta

DTYPES = ("float32", "float16", "bfloat16")
SOURCES = {"florence": "float32", "geochat": "float16"}  # source family -> the dtype written by default (as published)


def convert(source: str, src: str | Path, dst: str | Path, dtype: str | None = None, overwrite: bool = False,
            vision_tower: str | Path | None = None, image_size: int | None = None) -> dict:
    """Convert `src`, a checkpoint of family `source` (see SOURCES), into `dst`. Returns a summary dict.

    `vision_tower` and `image_size` are GeoChat's (see tiercel.models.geochat_convert); other families refuse them.
    """
    if source not in SOURCES:
        raise ConfigError(f"--from: must be one of {', '.join(SOURCES)} (got {source})")
    dtype = SOURCES[source] if dtype is None else dtype
    _check_dtype(dtype)
    if source == "geochat":
        from tiercel.models.geochat_convert import IMAGE_SIZE, convert_geochat

        size = IMAGE_SIZE if image_size is None else image_size
        return convert_geochat(src, dst, dtype, overwrite, vision_tower=vision_tower, image_size=size)
    for flag, value in (("--vision-tower", vision_tower), ("--image-size", image_size)):
        if value is not None:
            raise ConfigError(f"{flag}: only for --from geochat")
    return convert_checkpoint(src, dst, dtype=dtype, overwrite=overwrite)


def convert_checkpoint(src: str | Path, dst: str | Path, dtype: str = "float32", overwrite: bool = False) -> dict:
    """Convert `src` to the native layout in `dst` (written atomically). Returns a summary dict."""
    _check_dtype(dtype)
    folder = find_checkpoint_dir(src)  # SRC may be a folder above the checkpoint: DST must not be that one either
    check_output(dst, overwrite, ("the checkpoint being converted", src), ("the checkpoint being converted", folder))
    ckpt = load_checkpoint(folder, dtype=dtype)
    provenance = provenance_of(ckpt.path, weight_files(ckpt.path), ckpt.layout)
    meta = tiercel_meta(ckpt.model, ckpt.mean, ckpt.std, provenance)
    save_native(ckpt.model, ckpt.tokenizer, dst, meta=meta, overwrite=overwrite)
    params = sum(p.numel() for p in ckpt.model.parameters())
    return {"dst": str(dst), "preset": meta["preset"], "params": params, "notes": ckpt.notes, "layout": ckpt.layout}


def _check_dtype(dtype) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: must be one of {', '.join(DTYPES)} (got {dtype!r})")
