"""The two Florence-2 checkpoint layouts and the mapping between them.

Florence-2 and Falcon are published in the ORIGINAL remote-code layout (keys like
`vision_tower.blocks.2.0.spatial_block.window_attn.fn.qkv.weight`, `language_model.model.*`, a transposed
`image_projection`); transformers >= 5 uses the NATIVE layout (`model.vision_tower...conv1`,
`model.language_model.*`). This module maps keys and config.json fields both ways as pure data
transformations. It never imports or runs code shipped with a checkpoint, and knows nothing about files.
"""

from __future__ import annotations

import re

from tiercel.errors import CheckpointError

# Original-layout keys that have no native counterpart and are safe to drop: DaViT's classification
# norm/head (the captioning path stops before them) and BART's all-zero final_logits_bias.
IGNORED_ORIGINAL = re.compile(r"^(vision_tower\.(norms|head)\.|language_model\.final_logits_bias$)")
TRANSPOSED_ORIGINAL = {"image_projection"}  # stored as [in, out] in the original layout

_BLOCK = re.compile(r"^model\.vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.(.+)$")
_BLOCK_RENAMES = {  # native suffix -> original suffix, {attn} = window_attn | channel_attn
    "conv1.": "conv1.fn.dw.",
    "norm1.": "{attn}.norm.",
    "{attn}.": "{attn}.fn.",
    "conv2.": "conv2.fn.dw.",
    "norm2.": "ffn.norm.",
    "ffn.": "ffn.fn.net.",
}
_PREFIXES = (  # native prefix -> original prefix, first match wins
    ("lm_head.", "language_model.lm_head."),
    ("model.language_model.", "language_model.model."),
    ("model.multi_modal_projector.image_projection.weight", "image_projection"),
    ("model.multi_modal_projector.image_proj_norm.", "image_proj_norm."),
    ("model.multi_modal_projector.image_position_embed.", "image_pos_embed."),
    ("model.multi_modal_projector.visual_temporal_embed.", "visual_temporal_embed."),
)


def native_to_original(key: str) -> str:
    """The original-layout name of a native state-dict key."""
    block = _BLOCK.match(key)
    if block:
        stage, idx, kind, rest = block.groups()
        attn = "window_attn" if kind == "spatial" else "channel_attn"
        for native, original in _BLOCK_RENAMES.items():
            native = native.format(attn=attn)
            if rest.startswith(native):
                rest = original.format(attn=attn) + rest[len(native):]
                break
        return f"vision_tower.blocks.{stage}.{idx}.{kind}_block.{rest}"
    conv = re.match(r"^model\.vision_tower\.convs\.(\d+)\.conv\.(.+)$", key)
    if conv:
        return f"vision_tower.convs.{conv.group(1)}.proj.{conv.group(2)}"
    if key.startswith("model.vision_tower."):
        return key[len("model."):]
    for native, original in _PREFIXES:
        if key.startswith(native):
            return original + key[len(native):]
    raise CheckpointError(f"no original-layout name is known for native key '{key}'")


def is_original_layout(config: dict, keys) -> bool:
    """True when config.json or the weight names follow the original remote-code layout."""
    vision = config.get("vision_config") or {}
    if "dim_embed" in vision or "auto_map" in config:
        return True
    return any(k.startswith(("vision_tower.", "language_model.")) for k in keys)


_TEXT_FIELDS = (
    "vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
    "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
    "activation_function", "dropout", "attention_dropout", "activation_dropout", "init_std",
    "scale_embedding", "bos_token_id", "pad_token_id", "eos_token_id", "decoder_start_token_id",
    "forced_bos_token_id", "forced_eos_token_id", "encoder_layerdrop", "decoder_layerdrop",
)
_TEXT_REQUIRED = _TEXT_FIELDS[:9]
_VISION_FIELDS = ("depths", "num_heads", "num_groups", "window_size", "patch_size", "patch_stride",
                  "patch_padding", "patch_prenorm", "projection_dim", "drop_path_rate")


def original_config_to_native(config: dict, where: str = "config.json") -> dict:
    """Native Florence2Config kwargs from an original-layout config.json dict."""
    vision, text = config.get("vision_config"), config.get("text_config")
    if not isinstance(vision, dict) or not isinstance(text, dict):
        raise CheckpointError(f"{where}: needs both vision_config and text_config sections")
    for name in ("dim_embed", *_VISION_FIELDS[:3]):
        if name not in vision:
            raise CheckpointError(f"{where}: vision_config.{name} is missing")
    missing = [f for f in _TEXT_REQUIRED if f not in text]
    if missing:
        raise CheckpointError(f"{where}: text_config.{missing[0]} is missing")
    native_vision = {k: vision[k] for k in _VISION_FIELDS if k in vision}
    native_vision["embed_dim"] = vision["dim_embed"]
    temporal = vision.get("visual_temporal_embedding") or {}
    if "max_temporal_embeddings" in temporal:
        native_vision["max_temporal_embeddings"] = temporal["max_temporal_embeddings"]
    pos = vision.get("image_pos_embed") or {}
    if "max_pos_embeddings" in pos:
        native_vision["max_position_embeddings"] = pos["max_pos_embeddings"]
    native_text = {k: text[k] for k in _TEXT_FIELDS if k in text}
    native_text["model_type"] = "bart"
    if native_vision.get("projection_dim", native_text["d_model"]) != native_text["d_model"]:
        raise CheckpointError(f"{where}: vision_config.projection_dim {native_vision['projection_dim']} must equal text_config.d_model {native_text['d_model']}")
    return {"vision_config": native_vision, "text_config": native_text}


def native_config_to_original(native: dict) -> dict:
    """An original-layout config.json dict (as Florence-2 / Falcon publish it) from a native config dict."""
    vision = {k: native["vision_config"][k] for k in _VISION_FIELDS if k in native["vision_config"]}
    vision.update(
        model_type="davit",
        dim_embed=native["vision_config"]["embed_dim"],
        visual_temporal_embedding={"type": "COSINE", "max_temporal_embeddings": native["vision_config"]["max_temporal_embeddings"]},
        image_pos_embed={"type": "learned_abs_2d", "max_pos_embeddings": native["vision_config"]["max_position_embeddings"]},
        image_feature_source=["spatial_avg_pool", "temporal_avg_pool"],
    )
    text = {k: native["text_config"][k] for k in _TEXT_FIELDS if k in native["text_config"]}
    text["model_type"] = "florence2_language"
    return {
        "architectures": ["Florence2ForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration_florence2.Florence2Config",
            "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration",
        },
        "model_type": "florence2",
        "projection_dim": text["d_model"],
        "vision_config": vision,
        "text_config": text,
        "vocab_size": text["vocab_size"],
    }
