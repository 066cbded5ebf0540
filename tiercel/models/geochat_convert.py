"""GeoChat's published checkpoint (LLaVA-1.5's own layout) -> transformers' LLaVA layout, which GeoChatAdapter loads.

GeoChat (MBZUAI/geochat-7B) is published as LLaVA-1.5 writes it: a Llama (Vicuna) checkpoint whose config.json
adds LLaVA's mm_* keys, its projector as `model.mm_projector.0/.2` (mlp2x_gelu: Linear, GELU, Linear), and the
CLIP it sees with named in `mm_vision_tower` (openai/clip-vit-large-patch14-336). GeoChat's loader fetches that
CLIP by name and interpolates its 24x24 grid of position embeddings to 36x36 for 504 px images (bicubic,
align_corners=True, the class position kept). This module does that interpolation once and writes what
transformers' LlavaForConditionalGeneration reads: config.json (vision image_size 504), model.safetensors, the
tokenizer with an `<image>` token (new embedding rows are the mean of the others), and a processor that resizes
the short side to 504 and centre-crops, as GeoChat's evaluation scripts preprocess.

CLIP weights come from `vision_tower` (a local copy of that CLIP in transformers' layout) when given, as GeoChat's
loader reloads CLIP by name after its own weights; otherwise from the checkpoint's `model.vision_tower.*` tensors
when it carries them. Weights are read with safetensors or torch.load(weights_only=True): no code from either
directory runs and nothing is downloaded. Knows nothing about prompts or answers (tiercel.distill.geochat).
"""

from __future__ import annotations

import math
from pathlib import Path

from tiercel.errors import CheckpointError, ConfigError, require
from tiercel.fileio import atomic_dir, write_json
from tiercel.models.checkpoint import (
    find_checkpoint_dir,
    read_json,
    read_state_dict,
    read_weight_map,
    weight_files,
)
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
    is_number,
    is_whole,
)
from tiercel.models.writer import check_output, provenance_of

IMAGE_SIZE = 504  # GeoChat's clip_interpolate_embeddings(image_size=504, patch_size=14)
CLIP_NAME = "openai/clip-vit-large-patch14-336"
# CLIP vision configs by the name GeoChat's mm_vision_tower gives, for checkpoints that carry the CLIP weights
# themselves: GeoChat ships no config for them
VISION_CONFIGS = {
    CLIP_NAME: {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5},
}
_LLAMA_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
               "rope_scaling", "attention_bias", "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id",
               "tie_word_embeddings")
_CLIP_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
              "image_size", "patch_size", "hidden_act", "layer_norm_eps", "projection_dim", "attention_dropout")
_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "max_position_embeddings", "num_channels", "image_size", "patch_size",
          "projection_dim")  # fields that size a tensor, in either config (bounds: runtime.shape.size_limit)
_ROPE_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings",
                 "attention_factor", "beta_fast", "beta_slow")
_SELECT = {"patch": "default", "cls_patch": "full"}  # mm_vision_select_feature -> vision_feature_select_strategy
_CKPT_VISION = "model.vision_tower.vision_tower.vision_model."  # CLIP inside a LLaVA checkpoint
_CLIP_VISION = "vision_model."  # CLIP in its own transformers checkpoint
_VISION = "model.vision_tower."  # CLIP in transformers' LLaVA
_POSITIONS = _VISION + "embeddings.position_embedding.weight"
_OPENAI_CLIP_MEAN, _OPENAI_CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def convert_geochat(src, dst, dtype: str = "float16", overwrite: bool = False, vision_tower=None,
                    image_size: int = IMAGE_SIZE) -> dict:
    """Convert GeoChat in LLaVA's layout at `src` to transformers' LLaVA layout in `dst` (written atomically).

    Args:
        src: GeoChat's directory (config.json with mm_* keys, pytorch_model*.bin or *.safetensors, tokenizer).
        dst: output directory; must not exist unless `overwrite`.
        dtype: "float32", "float16" or "bfloat16" for the written weights.
        vision_tower: a local CLIP checkpoint directory (transformers layout) for the CLIP GeoChat names;
            needed when `src` holds no CLIP weights.
        image_size: the size CLIP's position grid is interpolated to (GeoChat: 504).
    Returns a summary dict: dst, params, notes, image_size, image_tokens.
    """
    torch = require("torch", "train", "converting GeoChat")
    folder = find_checkpoint_dir(src)
    clip_folder = find_checkpoint_dir(vision_tower) if vision_tower is not None else None
    check_output(dst, overwrite, ("the checkpoint being converted", src), ("the checkpoint being converted", folder),
                 ("the vision tower", vision_tower), ("the vision tower", clip_folder))  # before minutes of reading
    geo = _geochat_config(folder)
    listed = _index_names(folder)
    if clip_folder is None and listed is not None and not any(map(_is_clip, listed)):
        raise _no_clip(folder)  # said before reading GeoChat's 14 GB
    vision = _vision_config(geo, folder, clip_folder)
    grid = _grid(image_size, vision["patch_size"])
    normalisation = _normalisation(clip_folder)
    files = weight_files(folder)
    state, ckpt_vision = _split(read_state_dict(files), folder)
    notes = []
    state.update(_vision_weights(ckpt_vision, clip_folder, folder, grid, notes))
    tokenizer, image_id = _tokenizer(folder)
    _grow_vocabulary(state, len(tokenizer), notes)
    config = _llava_config(geo, vision, image_size, state, image_id, folder, clip_folder)
    model = _assemble(config, state, getattr(torch, dtype), folder)
    processor = _processor(tokenizer, image_size, vision["patch_size"], config.vision_feature_select_strategy,
                           normalisation)
    with atomic_dir(dst, overwrite=overwrite, marker="tiercel.json") as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json(tmp / "tiercel.json", _meta(folder, files, clip_folder, image_size))
    params = sum(t.numel() for t in model.state_dict().values())
    return {"dst": str(dst), "params": params, "notes": notes, "image_size": image_size, "image_tokens": grid * grid}


def interpolate_positions(weight, grid: int):
    """CLIP position embeddings [1 + g*g, D] resampled to [1 + grid*grid, D] as GeoChat does when it loads CLIP.

    The class position stays; the g x g patch grid is resized bicubically with align_corners=True, in float32.
    """
    torch = require("torch", "train", "converting GeoChat")
    side = math.isqrt(weight.shape[0] - 1)
    if side * side != weight.shape[0] - 1:
        raise CheckpointError(f"CLIP position embeddings: {weight.shape[0] - 1} patch positions are not a square grid")
    if side == grid:
        return weight
    dim = weight.shape[1]
    patches = weight[1:].float().t().reshape(1, dim, side, side)
    resized = torch.nn.functional.interpolate(patches, size=grid, mode="bicubic", align_corners=True)
    return torch.cat([weight[:1].float(), resized.reshape(dim, grid * grid).t()]).to(weight.dtype)


def _geochat_config(folder: Path) -> dict:
    """config.json, checked to be a LLaVA-1.5 layout transformers' LLaVA can express, with sizes that fit a machine
    (checked before any weight is read or any module is built)."""
    where = folder / "config.json"
    config = read_json(where)
    if "mm_vision_tower" not in config:
        raise CheckpointError(f"{where}: no mm_vision_tower; not a GeoChat / LLaVA-1.5 checkpoint in LLaVA's layout")
    check_that(isinstance(config["mm_vision_tower"], str), where, "mm_vision_tower", "a model name",
               config["mm_vision_tower"])
    projector = config.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise CheckpointError(f"{where}: mm_projector_type {projector!r} is not supported; transformers' LLaVA has "
                              "GeoChat's two-layer projector (mlp2x_gelu) only")
    feature = config.get("mm_vision_select_feature", "patch")
    if not isinstance(feature, str) or feature not in _SELECT:
        raise CheckpointError(f"{where}: mm_vision_select_feature {feature!r} must be one of {', '.join(_SELECT)}")
    if config.get("mm_use_im_start_end"):
        raise CheckpointError(f"{where}: mm_use_im_start_end is true; transformers' LLaVA has no image start/end "
                              "tokens")
    for name in ("mm_hidden_size", "mm_vision_select_layer"):
        if name in config:
            check_that(is_whole(config[name]), where, name, "a whole number", config[name])
    _check_llama(config, where)
    return config


def _check_llama(config: dict, where: Path) -> None:
    """GeoChat's Llama: sizes within tiercel's bounds, heads that divide the width, a known activation and RoPE,
    token ids inside the vocabulary. Fields the config leaves out take LlamaConfig's defaults."""
    check_finite(config, where)
    _check_sizes(config, where)
    heads = config.get("num_attention_heads", 32)
    check_divides([config.get("hidden_size", 4096)], [heads], where, "hidden_size", "num_attention_heads")
    check_divides([heads], [config.get("num_key_value_heads", heads)], where, "num_attention_heads",
                  "num_key_value_heads")
    check_activation(config, "hidden_act", where)
    check_fractions(config, ("attention_dropout",), where)
    for name in ("rms_norm_eps", "rope_theta"):
        if name in config:
            check_that(is_number(config[name]) and config[name] > 0, where, name, "a number > 0", config[name])
    for name in ("attention_bias", "tie_word_embeddings"):
        if name in config:
            check_that(isinstance(config[name], bool), where, name, "true or false", config[name])
    _check_rope(config.get("rope_scaling"), where)
    check_token_ids(config, ("bos_token_id", "eos_token_id"), config.get("vocab_size", 32000), where)
    if config.get("pad_token_id") != -1:  # -1: no padding token, as some LLaMA conversions write it
        check_token_ids(config, ("pad_token_id",), config.get("vocab_size", 32000), where)
    transformers = require("transformers", "train", "converting GeoChat")
    text = {k: config[k] for k in _LLAMA_KEYS if k in config}
    build_model(lambda: transformers.LlamaConfig(**text), where)  # transformers' own checks (RoPE keys), named here


def _check_rope(scaling, where: Path) -> None:
    """rope_scaling: null, or an object whose type transformers implements."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if scaling is None:
        return
    kinds = ("default", *ROPE_INIT_FUNCTIONS)
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    check_that(isinstance(kind, str) and kind in kinds, where, "rope_scaling",
               f"null or an object whose type is one of {', '.join(kinds)}", scaling)
    for name in (n for n in _ROPE_NUMBERS if n in scaling):
        check_that(is_number(scaling[name]) and scaling[name] > 0, where, f"rope_scaling.{name}", "a number > 0",
                   scaling[name])


def _check_clip(vision: dict, where: Path, label: str) -> None:
    """The CLIP vision config (`label`: where its fields sit in `where`): sizes within bounds, heads that divide
    the width, a known activation."""
    check_finite(vision, where, label.rstrip("."))
    _check_sizes(vision, where, label)
    check_divides([vision["hidden_size"]], [vision.get("num_attention_heads", 12)], where, label + "hidden_size",
                  label + "num_attention_heads")
    check_activation(vision, "hidden_act", where, label)
    check_fractions(vision, ("attention_dropout",), where, label)
    if "layer_norm_eps" in vision:
        check_that(is_number(vision["layer_norm_eps"]) and vision["layer_norm_eps"] > 0, where,
                   label + "layer_norm_eps", "a number > 0", vision["layer_norm_eps"])
    transformers = require("transformers", "train", "converting GeoChat")
    build_model(lambda: transformers.CLIPVisionConfig(**vision), where)  # transformers' own checks, named here


def _check_sizes(config: dict, where: Path, label: str = "") -> None:
    """Each size the config gives (null: the default) a whole number within tiercel's bounds."""
    for name in (n for n in _SIZES if config.get(n) is not None):
        check_that(not isinstance(config[name], list), where, label + name, "a whole number", config[name])
        check_size(config[name], name, label + name, where)


def _vision_config(geo: dict, folder: Path, clip_folder: Path | None) -> dict:
    """The CLIP vision config: from the --vision-tower directory, else known by the name GeoChat gives."""
    label = ""
    if clip_folder is not None:
        where = clip_folder / "config.json"
        config = read_json(where)
        if config.get("model_type") == "clip":  # a whole CLIPModel, as openai publishes it
            config, label = config.get("vision_config") or {}, "vision_config."
            check_that(isinstance(config, dict), where, "vision_config", "a JSON object", config)
    elif geo["mm_vision_tower"] in VISION_CONFIGS:
        where, config = folder / "config.json", VISION_CONFIGS[geo["mm_vision_tower"]]
    else:
        raise CheckpointError(f"{folder / 'config.json'}: mm_vision_tower '{geo['mm_vision_tower']}' is not "
                              f"{CLIP_NAME}; pass a local copy of it with --vision-tower")
    vision = {"hidden_size": 768, "patch_size": 32, **{k: config[k] for k in _CLIP_KEYS if k in config}}
    _check_clip(vision, where, label)
    if geo.get("mm_hidden_size", vision["hidden_size"]) != vision["hidden_size"]:
        raise CheckpointError(f"{folder / 'config.json'}: mm_hidden_size {geo['mm_hidden_size']} does not match the "
                              f"vision tower's hidden_size {vision['hidden_size']}; pass the CLIP it was trained with")
    layers, layer = vision.get("num_hidden_layers", 12), geo.get("mm_vision_select_layer", -2)
    check_that(-layers - 1 <= layer <= layers, folder / "config.json", "mm_vision_select_layer",
               f"a layer index of the vision tower ({layers} layers: -{layers + 1}..{layers})", layer)
    return vision


def _grid(image_size: int, patch: int) -> int:
    if not isinstance(image_size, int) or image_size <= 0 or image_size % patch:
        raise ConfigError(f"--image-size: must be a positive multiple of the CLIP patch size {patch} "
                          f"(got {image_size})")
    return image_size // patch


def _index_names(folder: Path) -> list[str] | None:
    """The tensor names a sharded checkpoint's index lists, without reading the shards; None when unsharded."""
    for index in ("pytorch_model.bin.index.json", "model.safetensors.index.json"):
        if (folder / index).is_file():
            return list(read_weight_map(folder / index))
    return None


def _is_clip(key: str) -> bool:
    return key.startswith(_CKPT_VISION)


def _no_clip(folder: Path) -> CheckpointError:
    return CheckpointError(f"{folder}: holds no CLIP vision tower weights (GeoChat loads them by name from "
                           f"{CLIP_NAME}); download that model and pass its directory with --vision-tower")


def _split(state: dict, folder: Path) -> tuple[dict, dict]:
    """GeoChat's tensors under transformers' LLaVA names, and the CLIP tensors it carries (LLaVA names)."""
    renamed, vision = {}, {}
    for key, tensor in state.items():
        if key.endswith((".inv_freq", ".position_ids")):
            continue  # buffers recomputed from the config
        if _is_clip(key):
            vision[_VISION + key[len(_CKPT_VISION):]] = tensor
            continue
        name = _llava_name(key)
        if name is None:
            raise CheckpointError(f"{folder}: unexpected weight '{key}'; not a GeoChat / LLaVA-1.5 checkpoint")
        renamed[name] = tensor
    return renamed, vision


def _llava_name(key: str) -> str | None:
    if key.startswith("model.mm_projector."):
        layer, _, rest = key[len("model.mm_projector."):].partition(".")
        linear = {"0": "linear_1", "2": "linear_2"}.get(layer)
        return f"model.multi_modal_projector.{linear}.{rest}" if linear else None
    if key.startswith("model.") and not key.startswith("model.vision_tower."):
        return "model.language_model." + key[len("model."):]
    return key if key == "lm_head.weight" else None


def _vision_weights(ckpt_vision: dict, clip_folder: Path | None, folder: Path, grid: int, notes: list[str]) -> dict:
    """The CLIP tensors under LLaVA names, position embeddings interpolated to `grid` x `grid`."""
    if clip_folder is not None:
        state = read_state_dict(weight_files(clip_folder))
        # a CLIPModel keeps its vision half under vision_model.; transformers 5 saves a CLIPVisionModel without it
        prefix = _CLIP_VISION if any(k.startswith(_CLIP_VISION) for k in state) else ""
        vision = {_VISION + k[len(prefix):]: v for k, v in state.items()
                  if k.startswith(prefix) and not k.endswith(".position_ids")}
        if not vision:
            raise CheckpointError(f"{clip_folder}: holds no CLIP vision weights (vision_model.*)")
        notes.append(f"CLIP weights from {clip_folder}" + (" (the checkpoint's own copy is not used, as in "
                                                            "GeoChat's loader)" if ckpt_vision else ""))
    elif ckpt_vision:
        vision = ckpt_vision
        notes.append("CLIP weights from the checkpoint itself")
    else:
        raise _no_clip(folder)
    if _POSITIONS in vision:
        before = vision[_POSITIONS].shape[0]
        vision[_POSITIONS] = interpolate_positions(vision[_POSITIONS], grid)
        if before != vision[_POSITIONS].shape[0]:
            side = math.isqrt(before - 1)
            notes.append(f"CLIP position embeddings interpolated from {side}x{side} to {grid}x{grid} (bicubic)")
    return vision


def _tokenizer(folder: Path):
    """GeoChat's tokenizer with `<image>` added as a special token; returns (tokenizer, image token id)."""
    transformers = require("transformers", "train", "converting GeoChat")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # transformers raises many kinds for a missing or unreadable tokenizer
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{folder}: cannot read GeoChat's tokenizer ({first}); it needs tokenizer.json, or "
                              "tokenizer.model with the sentencepiece package installed") from err
    tokenizer.add_tokens([transformers.AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    return tokenizer, tokenizer.convert_tokens_to_ids("<image>")


def _grow_vocabulary(state: dict, size: int, notes: list[str]) -> None:
    """Give tokens the tokenizer added (`<image>`) embedding and output rows: the mean of the existing rows."""
    torch = require("torch", "train", "converting GeoChat")
    if "lm_head.weight" not in state:  # tied embeddings are stored once
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]
    rows = state["lm_head.weight"].shape[0]
    if size <= rows:
        return
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        table = state[key]
        state[key] = torch.cat([table, table.float().mean(0, keepdim=True).expand(size - rows, -1).to(table.dtype)])
    notes.append(f"vocabulary grown from {rows} to {size} for <image>")


def _llava_config(geo: dict, vision: dict, image_size: int, state: dict, image_id: int, folder: Path,
                  clip_folder: Path | None):
    """transformers' LlavaConfig; what transformers still refuses in a config is one line naming its file."""
    transformers = require("transformers", "train", "converting GeoChat")
    text = {k: geo[k] for k in _LLAMA_KEYS if k in geo}
    text["vocab_size"] = state["lm_head.weight"].shape[0]
    grid = image_size // vision["patch_size"]
    where = folder / "config.json"
    text_config = build_model(lambda: transformers.LlamaConfig(**text), where)
    vision_config = build_model(lambda: transformers.CLIPVisionConfig(**{**vision, "image_size": image_size}),
                                where if clip_folder is None else clip_folder / "config.json")
    return build_model(lambda: transformers.LlavaConfig(
        text_config=text_config, vision_config=vision_config,
        image_token_id=image_id, image_seq_length=grid * grid, projector_hidden_act="gelu",
        vision_feature_layer=geo.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=_SELECT[geo.get("mm_vision_select_feature", "patch")],
        tie_word_embeddings=geo.get("tie_word_embeddings", False)), where)


def _assemble(config, state: dict, torch_dtype, folder: Path):
    """A LlavaForConditionalGeneration holding `state`; every key and shape checked first."""
    torch = require("torch", "train", "converting GeoChat")
    transformers = require("transformers", "train", "converting GeoChat")
    with torch.device("meta"):
        model = build_model(lambda: transformers.LlavaForConditionalGeneration(config), folder / "config.json")
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in state:
            raise CheckpointError(f"{folder}: weight for '{key}' is missing (expected shape {list(ref.shape)})")
        if tuple(state[key].shape) != tuple(ref.shape):
            raise CheckpointError(f"{folder}: weight for '{key}' has shape {list(state[key].shape)} but config.json "
                                  f"needs {list(ref.shape)}")
        check_floating(state[key], ref, key, folder)
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{folder}: unexpected weight for '{extra[0]}' ({len(extra)} in all)")
    loaded = {k: v.to(torch_dtype).contiguous() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(loaded, strict=True, assign=True)
    return model.eval()


def _normalisation(clip_folder: Path | None) -> tuple[tuple, tuple]:
    """The image mean and std: the vision tower's (its preprocessor_config.json), else OpenAI CLIP's."""
    pre = clip_folder / "preprocessor_config.json" if clip_folder is not None else None
    if pre is None or not pre.is_file():
        return _OPENAI_CLIP_MEAN, _OPENAI_CLIP_STD
    config = read_json(pre)
    return (check_normalisation("image_mean", config.get("image_mean", _OPENAI_CLIP_MEAN), pre),
            check_normalisation("image_std", config.get("image_std", _OPENAI_CLIP_STD), pre))


def _processor(tokenizer, image_size: int, patch: int, strategy: str, normalisation: tuple[tuple, tuple]):
    """LLaVA's processor: short side to `image_size`, centre crop, CLIP normalisation; `<image>` expanded."""
    transformers = require("transformers", "train", "converting GeoChat")
    mean, std = normalisation
    images = transformers.CLIPImageProcessor(size={"shortest_edge": image_size},
                                             crop_size={"height": image_size, "width": image_size},
                                             image_mean=list(mean), image_std=list(std))
    return transformers.LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch,
                                       vision_feature_select_strategy=strategy, image_token="<image>",
                                       num_additional_image_tokens=1)


def _meta(folder: Path, files: list[Path], clip_folder: Path | None, image_size: int) -> dict:
    """tiercel.json: what was converted from what (sha256 of every weight file read)."""
    provenance = provenance_of(folder, files, "geochat")
    if clip_folder is not None:
        provenance["vision_tower"] = provenance_of(clip_folder, weight_files(clip_folder), "clip")
    return {"format": 1, "family": "llava", "converted_from": "geochat", "image_size": image_size,
            "provenance": provenance}
