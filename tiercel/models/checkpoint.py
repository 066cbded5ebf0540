"""Load Florence-2 / Falcon checkpoints from a local directory, in the native or the original layout.

Nothing is downloaded and no code shipped with a checkpoint is run: weights are read with safetensors or
`torch.load(weights_only=True)`, config.json is read as JSON, and layout.py renames keys. The model is built
on the meta device and the checkpoint tensors are assigned into it, so a 0.77B model needs one copy in RAM.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from tiercel.errors import CheckpointError, ConfigError, require
from tiercel.fileio import read_json_object
from tiercel.models import layout
from tiercel.models.config_checks import (
    build_model,
    check_activation,
    check_divides,
    check_finite,
    check_floating,
    check_fractions,
    check_normalisation,
    check_size,
    check_that,
    check_token_ids,
    first_line,
    is_number,
    is_whole,
    short,
    strict_errors,
)
from tiercel.models.presets import IMAGENET_MEAN, IMAGENET_STD, match_preset
from tiercel.runtime.shape import ModelShape
from tiercel.runtime.tokenizer import TextTokenizer

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class Checkpoint:
    """A loaded model with everything needed to feed it: tokenizer and preprocessing."""

    model: object
    tokenizer: TextTokenizer
    shape: ModelShape
    path: Path
    layout: str  # "native" or "original"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    meta: dict = field(default_factory=dict)  # tiercel.json content (preset, provenance)
    notes: list[str] = field(default_factory=list)  # what loading changed: keys renamed, tokens added

    @property
    def preset(self) -> str | None:
        return self.meta.get("preset") or match_preset(self.shape)


def find_checkpoint_dir(path: str | Path) -> Path:
    """The directory holding config.json and weights: `path` itself when it holds them (whatever its subfolders
    hold), else its one subfolder up to 4 levels down that has them."""
    path = Path(path)
    if not path.exists():
        if _HUB_ID.match(str(path)):
            raise CheckpointError(
                f"{path}: not a local directory; tiercel never downloads. Download it first "
                f"(e.g. `huggingface-cli download {path} --local-dir ckpt/`) and pass the directory"
            )
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        raise CheckpointError(f"{path}: is a file; pass the checkpoint directory (the one with config.json)")
    if (path / "config.json").is_file() and _has_weights(path):
        return path
    candidates = [c.parent for c in _configs(path, depth=4) if _has_weights(c.parent)]
    if not candidates:
        raise CheckpointError(f"{path}: no config.json next to weights (model.safetensors or pytorch_model.bin) in it or its subfolders")
    if len(candidates) > 1:
        listed = ", ".join(str(c.relative_to(path)) or "." for c in candidates[:4])
        raise CheckpointError(f"{path}: holds several checkpoints ({listed}); pass one of them")
    return candidates[0]


def _configs(path: Path, depth: int) -> list[Path]:
    """Every config.json in `path` and its subfolders at most `depth` - 1 levels down, in sorted order (a walk
    that stops at that depth: `tiercel info /` does not read the whole disk)."""
    found = []
    for folder, dirs, files in os.walk(path):
        level = len(Path(folder).relative_to(path).parts)
        if level >= depth - 1:
            dirs.clear()
        dirs.sort()
        if "config.json" in files:
            found.append(Path(folder) / "config.json")
    return sorted(found)


def _has_weights(folder: Path) -> bool:
    return any((folder / n).is_file() for n in _WEIGHT_NAMES) or any(folder.glob("*.safetensors"))


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint directory, following a shard index when there is one."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            shards = sorted(set(read_weight_map(folder / index).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(f"{folder / missing[0]}: shard listed in {index} is missing")
            return [folder / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    return sorted(folder.glob("*.safetensors"))


def read_state_dict(files: list[Path]) -> dict:
    """All tensors of `files` (safetensors, or .bin read with weights_only=True) in one dict."""
    require("torch", "train", "reading checkpoint weights")
    state = {}
    for file in files:
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                state.update(load_file(str(file)))
            else:
                state.update(torch_load(file, "cannot read weights", "re-download it from a source you trust"))
        except CheckpointError:
            raise
        except Exception as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"{file}: cannot read weights ({first}); the file may be truncated, re-download it") from err
    return state


def torch_load(file: Path, what: str, remedy: str):
    """`torch.load(file, weights_only=True)`: tensors, numbers, strings and containers, so no code in the file
    runs. Anything else is one CheckpointError line, `FILE: WHAT (why); REMEDY`: a file that names other Python
    objects (listed; loading them could run code) is refused before it is unpickled at all."""
    import pickle
    import warnings

    import torch

    refused = unsafe_globals(file)
    if refused:
        raise CheckpointError(f"{file}: {what} (it holds Python objects whose loading could run code: "
                              f"{', '.join(refused[:3])}); {remedy}")
    try:
        with warnings.catch_warnings():  # a plain pickle makes torch warn about its protocol before refusing it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(file), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        raise CheckpointError(f"{file}: {what} ({_load_failure(file, err)}); {remedy}") from None


def unsafe_globals(file: Path) -> list[str]:
    """The Python objects (module.name) a torch.save file names beyond what weights_only loads, found by reading
    its pickle's opcodes without running them; [] also for a file torch.save did not write."""
    import torch

    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(file)))
    except Exception:  # not a torch.save archive, or a damaged one: torch.load's own error says more
        return []


def _load_failure(file: Path, err: BaseException) -> str:
    import zipfile

    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    if isinstance(err, EOFError) or not zipfile.is_zipfile(file):
        return "empty, cut short, or not written by torch.save"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # torch's message carries terminal colour codes
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if unpickler:
        return unpickler.group(1)[:160]
    return text.splitlines()[0][:160] if text else type(err).__name__


def read_weight_map(index: Path) -> dict:
    """A shard index's weight_map (tensor name -> shard file). CheckpointError naming the index unless every shard
    is a file name inside the checkpoint folder: an absolute path or `..` would read weights from elsewhere."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise CheckpointError(f"{index}: weight_map must map tensor names to shard files")
    outside = sorted(f for f in set(weight_map.values()) if not _inside(f))
    if outside:
        raise CheckpointError(f"{index}: weight_map names the shard {short(outside[0])}, which is not a file in "
                              f"{index.parent}; shard names must be plain file names, re-download the checkpoint")
    return weight_map


def _inside(name: str) -> bool:
    """Whether the shard name `name` stays inside its folder (checked by name: a symlinked folder such as the Hugging
    Face cache's snapshots may point elsewhere)."""
    posix = PurePosixPath(name)
    return bool(name) and "\\" not in name and not posix.is_absolute() and ".." not in posix.parts \
        and not PureWindowsPath(name).drive


def read_json(file: Path) -> dict:
    """A checkpoint's JSON file (config.json, tiercel.json, ...) as a dict; CheckpointError otherwise."""
    return read_json_object(file, CheckpointError)


def load_checkpoint(path: str | Path, dtype: str = "float32") -> Checkpoint:
    """Load a native- or original-layout Florence-2/Falcon checkpoint directory into a native model.

    Args:
        path: the checkpoint directory (or a folder with exactly one checkpoint inside).
        dtype: "float32", "float16" or "bfloat16" for the loaded weights.
    """
    from tiercel.models.zoo import shape_from_config

    folder = find_checkpoint_dir(path)
    state = read_state_dict(weight_files(folder))
    spec = read_config(folder, keys=state)
    tokenizer = TextTokenizer.from_dir(folder)
    notes = []
    if tokenizer.ensure_image_token():
        notes.append(f"added <image> to the tokenizer as id {tokenizer.image_id}")
    spec.config.image_token_id = tokenizer.image_id
    model = _assemble(spec.config, state, spec.original, dtype, folder, notes)
    if len(tokenizer) > spec.config.text_config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
        notes.append(f"resized the vocabulary to {len(tokenizer)} for <image>")
    shape = shape_from_config(model.config, image_size=spec.image_size)
    model.tiercel_shape = shape
    layout_name = "original" if spec.original else "native"
    return Checkpoint(model.eval(), tokenizer, shape, folder, layout_name, spec.mean, spec.std, spec.meta, notes)


@dataclass
class ConfigSpec:
    """What config.json, preprocessor_config.json and tiercel.json say, before any weight is read."""

    config: object  # transformers.Florence2Config (native)
    original: bool
    image_size: int
    mean: tuple
    std: tuple
    meta: dict


def read_config(folder: Path, keys=()) -> ConfigSpec:
    """Read a checkpoint directory's configuration (either layout) into a native Florence2Config."""
    transformers = require("transformers", "train", "reading a checkpoint config")
    config = read_json(folder / "config.json")
    if config.get("model_type") not in ("florence2", None):
        raise CheckpointError(f"{folder / 'config.json'}: model_type '{config.get('model_type')}' is not a Florence-2 model (expected 'florence2')")
    where = folder / "config.json"
    if not all(isinstance(config.get(section), dict) for section in ("vision_config", "text_config")):
        raise CheckpointError(f"{where}: needs both vision_config and text_config sections (JSON objects)")
    original = layout.is_original_layout(config, keys)
    check_finite(config, where)
    try:
        kwargs = layout.original_config_to_native(config, str(where)) if original else dict(config)
    except (TypeError, AttributeError) as err:  # a section of the wrong JSON type
        raise CheckpointError(f"{where}: not an original-layout Florence-2 config ({first_line(err)}); fix the file "
                              "or re-download the checkpoint") from err
    kwargs = {k: kwargs[k] for k in ("vision_config", "text_config")}
    _check_sizes(kwargs, where, original)
    _check_vision(kwargs["vision_config"], where, original)
    _check_text(kwargs["text_config"], where)
    if "image_token_id" in config:
        kwargs["image_token_id"] = config["image_token_id"]
    meta = read_json(folder / "tiercel.json") if (folder / "tiercel.json").is_file() else {}
    size, mean, std = _preprocessing(folder, meta)
    try:
        native = transformers.Florence2Config(**kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: {str(err).splitlines()[0]}") from err
    except strict_errors() as err:  # "Validation error for field 'x':\n TypeError: ... . Errors: <each type tried>"
        raise CheckpointError(f"{where}: {str(err).split('. Errors:')[0]}") from err
    return ConfigSpec(native, original, size, mean, std, meta)


# Fields that size a tensor: a value <= 0 or not a whole number would fail deep inside torch.
_SIZES = {"text_config": ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                          "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings"),
          "vision_config": ("embed_dim", "depths", "num_heads", "num_groups", "window_size", "projection_dim",
                            "patch_size", "patch_stride", "in_channels", "max_temporal_embeddings",
                            "max_position_embeddings")}
_STAGES = ("embed_dim", "depths", "num_heads", "num_groups", "patch_size", "patch_stride", "patch_padding",
           "patch_prenorm")  # DaViT's per-stage lists
# what the original layout calls the native vision fields it renames
_ORIGINAL_VISION = {"embed_dim": "dim_embed", "max_temporal_embeddings": "visual_temporal_embedding.max_temporal_embeddings",
                    "max_position_embeddings": "image_pos_embed.max_pos_embeddings"}
_TOKEN_IDS = ("bos_token_id", "pad_token_id", "eos_token_id", "decoder_start_token_id", "forced_bos_token_id",
              "forced_eos_token_id")


def _check_sizes(kwargs: dict, where: Path, original: bool = False) -> None:
    """CheckpointError naming the field unless every size the config gives is a whole number in 1..size_limit
    (or a list of at most 16 of them)."""
    for section, names in _SIZES.items():
        for name in (n for n in names if n in kwargs[section]):
            label = _ORIGINAL_VISION.get(name, name) if original and section == "vision_config" else name
            check_size(kwargs[section][name], name, f"{section}.{label}", where)


def _check_vision(vision: dict, where: Path, original: bool) -> None:
    """DaViT's stage lists, one entry each per stage, stage widths the heads and groups divide, and the scalars
    transformers uses unchecked (an unknown activation is a KeyError deep inside the model)."""
    transformers = require("transformers", "train", "reading a checkpoint config")
    default = transformers.Florence2VisionConfig()
    stages = {name: vision.get(name, list(getattr(default, name))) for name in _STAGES}  # transformers' defaults are tuples
    label = {n: "vision_config." + (_ORIGINAL_VISION.get(n, n) if original else n) for n in _STAGES}
    for name, value in stages.items():
        check_that(isinstance(value, list) and bool(value), where, label[name], "a list with one entry per stage", value)
    count = len(stages["embed_dim"])
    for name, value in stages.items():
        check_that(len(value) == count, where, label[name], f"a list of {count} entries, one per stage as "
                   f"{label['embed_dim']} has", value)
    check_that(all(is_whole(v) and 0 <= v <= 1024 for v in stages["patch_padding"]), where, label["patch_padding"],
               "whole numbers 0..1024", stages["patch_padding"])
    check_that(all(isinstance(v, bool) for v in stages["patch_prenorm"]), where, label["patch_prenorm"],
               "true or false for each stage", stages["patch_prenorm"])
    for heads in ("num_heads", "num_groups"):
        check_divides(stages["embed_dim"], stages[heads], where, label["embed_dim"], label[heads])
    check_activation(vision, "activation_function", where, "vision_config.")
    check_fractions(vision, ("drop_path_rate",), where, "vision_config.")
    if "mlp_ratio" in vision:
        check_that(is_number(vision["mlp_ratio"]) and 0 < vision["mlp_ratio"] <= 64, where, "vision_config.mlp_ratio",
                   "a number > 0 and <= 64", vision["mlp_ratio"])


def _check_text(text: dict, where: Path) -> None:
    """The BART text model: widths its heads divide, a known activation, dropouts that are fractions, token ids
    inside the vocabulary."""
    width = text.get("d_model", 1024)
    for heads in ("encoder_attention_heads", "decoder_attention_heads"):
        if heads in text:
            check_divides([width], [text[heads]], where, "text_config.d_model", f"text_config.{heads}")
    check_activation(text, "activation_function", where, "text_config.")
    check_fractions(text, ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop",
                           "decoder_layerdrop", "classifier_dropout"), where, "text_config.")
    check_token_ids(text, _TOKEN_IDS, text.get("vocab_size", 51289), where, "text_config.")


def _preprocessing(folder: Path, meta: dict):
    """Image size, mean and std: tiercel.json first, then preprocessor_config.json, then Florence-2's defaults.
    CheckpointError naming the file and field for a size that is not a whole number 32..8192, or a mean or std that
    is not three finite numbers (std > 0)."""
    pre_file = folder / "preprocessor_config.json"
    pre = read_json(pre_file) if pre_file.is_file() else {}
    size = pre.get("size", pre.get("crop_size", 768))
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge", 768))

    def source(key: str) -> Path:
        return folder / "tiercel.json" if key in meta else pre_file

    size = meta.get("image_size", size)
    if not (isinstance(size, int) and not isinstance(size, bool) and 32 <= size <= 8192):
        raise CheckpointError(f"{source('image_size')}: image_size: must be a whole number 32..8192 (got {short(size)})")
    out = [int(size)]
    for name, default in (("image_mean", IMAGENET_MEAN), ("image_std", IMAGENET_STD)):
        out.append(check_normalisation(name, meta.get(name, pre.get(name, default)), source(name)))
    return tuple(out)


def _assemble(config, state: dict, original: bool, dtype: str, folder: Path, notes: list[str]):
    """Build the model on the meta device and assign checkpoint tensors into it, checking every key and shape."""
    torch = require("torch", "train", "loading a checkpoint")
    transformers = require("transformers", "train", "loading a checkpoint")
    with torch.device("meta"):
        model = build_model(lambda: transformers.Florence2ForConditionalGeneration(config), folder / "config.json")
    expected = model.state_dict()
    groups = _tied_groups(model)
    torch_dtype = getattr(torch, dtype)
    loaded, used = {}, set()
    for key, ref in expected.items():
        tensor, src = _find(key, groups, state, original)
        if tensor is None:
            if key.endswith("visual_temporal_embed.pos_idx_to_embed"):
                continue  # a deterministic sinusoid table: recomputed below when absent
            name = layout.native_to_original(key) if original else key
            raise CheckpointError(f"{folder}: weight '{name}' is missing from the checkpoint (expected shape {list(ref.shape)})")
        if src in layout.TRANSPOSED_ORIGINAL and original:
            tensor = tensor.t().contiguous()
        if tuple(tensor.shape) != tuple(ref.shape):
            raise CheckpointError(f"{folder}: weight '{src}' has shape {list(tensor.shape)} but the config needs {list(ref.shape)}")
        check_floating(tensor, ref, src, folder)
        loaded[key] = tensor.to(torch_dtype) if tensor.is_floating_point() else tensor
        used.update(_names(groups.get(key, [key]), original))  # a tied copy stored twice is not 'unexpected'
    extra = sorted(k for k in state if k not in used and not (original and layout.IGNORED_ORIGINAL.match(k)))
    if extra:
        raise CheckpointError(f"{folder}: unexpected weight '{extra[0]}' ({len(extra)} in all); the checkpoint does not match its config.json")
    if original:
        notes.append(f"converted {sum(k in used for k in state)} original-layout tensors to the native layout")
    model.load_state_dict(loaded, strict=False, assign=True)
    _restore_buffers(model, loaded, torch_dtype)
    model.tie_weights()
    return model.to(torch_dtype)


def _tied_groups(model) -> dict[str, list[str]]:
    """For each state-dict key, all keys that share its parameter (tied embeddings / lm_head)."""
    by_id: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), []).append(name)
    return {name: names for names in by_id.values() for name in names}


def _names(keys: list[str], original: bool) -> list[str]:
    return [layout.native_to_original(k) for k in keys] if original else list(keys)


def _find(key: str, groups: dict, state: dict, original: bool):
    """The checkpoint tensor for native `key` (or any key tied to it) and the name it had there."""
    for src in _names(groups.get(key, [key]), original):
        if src in state:
            return state[src], src
    return None, None


def _restore_buffers(model, loaded: dict, torch_dtype):
    """Materialise the sinusoid table when the checkpoint did not carry it (it is not learned)."""
    torch = require("torch", "train", "loading a checkpoint")
    embed = model.model.multi_modal_projector.visual_temporal_embed
    if embed.pos_idx_to_embed.is_meta:
        sine, cosine = embed.get_sinusoid_embeddings(embed.max_seq_len, embed.embed_dim)
        table = torch.empty(embed.max_seq_len, embed.embed_dim)
        table[:, 0::2], table[:, 1::2] = sine, cosine
        embed.pos_idx_to_embed = table.to(torch_dtype)


def resolve(target: str, device: str = "meta"):
    """A model for a preset name or a checkpoint directory; weights are not read (meta device by default).

    Returns (model, name). Used by `tiercel info`, which only needs shapes.
    """
    from tiercel.models.presets import PRESETS
    from tiercel.models.zoo import build, shape_from_config

    if target in PRESETS:
        return build(target, device=device), target
    if not Path(target).exists() and "/" not in target:
        raise ConfigError(f"'{target}' is neither a preset ({', '.join(PRESETS)}) nor an existing checkpoint directory")
    torch = require("torch", "train", "building a Florence-2 model")
    transformers = require("transformers", "train", "building a Florence-2 model")
    folder = find_checkpoint_dir(target)
    spec = read_config(folder)
    with torch.device(device):
        model = build_model(lambda: transformers.Florence2ForConditionalGeneration(spec.config), folder / "config.json")
    model.tiercel_shape = shape_from_config(spec.config, image_size=spec.image_size)
    return model.eval(), str(folder)
