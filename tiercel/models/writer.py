"""Write checkpoints: the native layout tiercel works in, and the original layout (for round-trip tests
and for tools that still expect it). Every write goes through a temporary directory and a rename.

Knows nothing about how a model was trained or loaded; it writes what it is given.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from tiercel import __version__
from tiercel.errors import require
from tiercel.fileio import atomic_dir, check_distinct, check_new_output, sha256_file, write_json
from tiercel.models import layout
from tiercel.models.presets import IMAGENET_MEAN, IMAGENET_STD, match_preset


def tiercel_meta(model, mean=IMAGENET_MEAN, std=IMAGENET_STD, provenance: dict | None = None) -> dict:
    """The tiercel.json written beside every checkpoint tiercel produces."""
    shape = model.tiercel_shape
    return {
        "format": 1,
        "preset": match_preset(shape),
        "shape": shape.to_dict(),
        "image_size": shape.image_size,
        "image_mean": list(mean),
        "image_std": list(std),
        "provenance": {
            "tiercel_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(provenance or {}),
        },
    }


def preprocessor_config(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict:
    """preprocessor_config.json as Florence-2 checkpoints ship it: resize to size x size, rescale, normalise."""
    square = {"height": size, "width": size}
    return {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "Florence2Processor",
        "do_resize": True,
        "size": square,
        "crop_size": square,
        "do_center_crop": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(mean),
        "image_std": list(std),
        "resample": 3,
    }


def write_native(folder: Path, model, tokenizer, meta: dict, state_dict: dict | None = None) -> None:
    """Fill `folder` with a native checkpoint: safetensors weights, config, tokenizer.json, tiercel.json and
    preprocessor_config.json. `state_dict` replaces the model's own (e.g. gathered from FSDP shards)."""
    transformers = require("transformers", "train", "writing a checkpoint")
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    tokenizer.save(folder)
    write_json(folder / "tiercel.json", meta)
    write_json(folder / "preprocessor_config.json", preprocessor_config(meta["image_size"], meta["image_mean"], meta["image_std"]))


def save_native(model, tokenizer, dst: str | Path, meta: dict | None = None, overwrite: bool = False) -> Path:
    """Write `model` in the native transformers layout (safetensors), tokenizer.json and tiercel.json."""
    dst = Path(dst)
    with atomic_dir(dst, overwrite=overwrite, marker="tiercel.json") as tmp:
        write_native(tmp, model, tokenizer, meta or tiercel_meta(model))
    return dst


def save_original(model, tokenizer, dst: str | Path, overwrite: bool = False) -> Path:
    """Write `model` in the original remote-code layout Florence-2 and Falcon are published in.

    Tied embeddings are written once as `language_model.model.shared.weight` plus `language_model.lm_head.weight`,
    and `image_projection` is transposed, as in the published files.
    """
    require("safetensors", "train", "writing a checkpoint")
    from safetensors.torch import save_file

    state = {}
    for key, tensor in model.state_dict().items():
        if key.endswith((".encoder.embed_tokens.weight", ".decoder.embed_tokens.weight")):
            continue
        name = layout.native_to_original(key)
        value = tensor.t() if name in layout.TRANSPOSED_ORIGINAL else tensor
        state[name] = value.detach().contiguous().clone()  # tied tensors must not share storage in safetensors
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "config.json", layout.native_config_to_original(model.config.to_dict()))
        write_json(tmp / "preprocessor_config.json", preprocessor_config(model.tiercel_shape.image_size))
        tokenizer.save(tmp)
    return Path(dst)


def provenance_of(folder: Path, files: list[Path], layout_name: str) -> dict:
    """Where a converted checkpoint came from: its path, layout and the sha256 of each weight file."""
    return {
        "source": str(folder.resolve()),
        "source_layout": layout_name,
        "source_sha256": {f.name: sha256_file(f) for f in files},
    }


def check_output(dst: str | Path, overwrite: bool, *inputs: tuple[str, str | Path | None]) -> None:
    """Before the weights load: TiercelError unless `dst` can take a converted checkpoint. It is none of `inputs`
    ((what, path)) and holds none of them; it is new, or (with `overwrite`) empty or a checkpoint tiercel wrote
    (fileio.MARKERS' tiercel.json)."""
    check_distinct(dst, "", *inputs, whole=True)  # --overwrite would replace the input
    check_new_output(dst, overwrite, "tiercel.json")
