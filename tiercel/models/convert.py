"""Checkpoint conversion, by source family: each converter reads its family's published layout and writes the
layout tiercel loads, with provenance.

    florence: any Florence-2 / Falcon checkpoint (native or original layout) -> tiercel's native layout
    geochat:  GeoChat in LLaVA-1.5's own layout -> transformers' LLaVA layout (the GeoChat teacher)
"""

from __future__ import annotations

from pathlib import Path

from tiercel.errors import ConfigError
from tiercel.fileio import check_distinct, check_new_output
from tiercel.models.checkpoint import load_checkpoint, weight_files
from tiercel.models.writer import provenance_of, save_native, tiercel_meta

DTYPES = ("float32", "float16", "bfloat16")
SOURCES = {"florence": "float32", "geochat": "float16"}  # source family -> the dtype written by default (as published)


def convert(source: str, src: str | Path, dst: str | Path, dtype: str | None = None, overwrite: bool = False,
            vision_tower: str | Path | None = None, image_size: int | None = None) -> dict:
    """Convert `src`, a checkpoint of family `source` (see SOURCES), into `dst`. Returns a summary dict.

    `vision_tower` and `image_size` are GeoChat's (see tiercel.models.geochat_convert); other families refuse them.
    """
    if source not in SOURCES:
        raise ConfigError(f"--from: must be one of {', '.join(SOURCES)} (got {source})")
    dtype = dtype or SOURCES[source]
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: must be one of {', '.join(DTYPES)} (got {dtype})")
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
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: must be one of {', '.join(DTYPES)} (got {dtype})")
    check_distinct(dst, "", ("the checkpoint being converted", src), whole=True)  # --overwrite would replace the input
    check_new_output(dst, overwrite, "tiercel.json")  # before the weights load, not after
    ckpt = load_checkpoint(src, dtype=dtype)
    provenance = provenance_of(ckpt.path, weight_files(ckpt.path), ckpt.layout)
    meta = tiercel_meta(ckpt.model, ckpt.mean, ckpt.std, provenance)
    save_native(ckpt.model, ckpt.tokenizer, dst, meta=meta, overwrite=overwrite)
    params = sum(p.numel() for p in ckpt.model.parameters())
    return {"dst": str(dst), "preset": meta["preset"], "params": params, "notes": ckpt.notes, "layout": ckpt.layout}
