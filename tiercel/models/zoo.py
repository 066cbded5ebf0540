"""Build native transformers Florence-2 models from tiercel ModelShapes, and read shapes back.

Knows nothing about files: checkpoint.py loads weights into what this builds.
"""

from __future__ import annotations

from tiercel.errors import ConfigError, require
from tiercel.models.presets import get_preset
from tiercel.runtime.shape import ModelShape

# BART / Florence-2 special token ids; tiercel's own tokenizers keep the same order (see tokenizer.py).
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


def to_config(shape: ModelShape, image_token_id: int | None = None, dropout: float = 0.1):
    """A transformers Florence2Config for `shape`. `image_token_id` defaults to the last vocabulary id.

    `dropout` sets the text dropout and the vision tower's stochastic-depth rate (Florence-2 uses 0.1 for both).
    """
    transformers = require("transformers", "train", "building a Florence-2 model")
    shape.check()
    image_token_id = shape.vocab_size - 1 if image_token_id is None else image_token_id
    if not 0 <= image_token_id < shape.vocab_size:
        raise ConfigError(f"image_token_id {image_token_id} is outside the vocabulary (size {shape.vocab_size})")
    vision = dict(
        embed_dim=list(shape.vision_dims),
        depths=list(shape.vision_depths),
        num_heads=list(shape.vision_heads),
        num_groups=list(shape.vision_groups),
        window_size=shape.window_size,
        projection_dim=shape.d_model,
        drop_path_rate=dropout,
    )
    text = dict(
        model_type="bart",
        vocab_size=shape.vocab_size,
        d_model=shape.d_model,
        encoder_layers=shape.encoder_layers,
        decoder_layers=shape.decoder_layers,
        encoder_attention_heads=shape.attention_heads,
        decoder_attention_heads=shape.attention_heads,
        encoder_ffn_dim=shape.ffn_dim,
        decoder_ffn_dim=shape.ffn_dim,
        max_position_embeddings=shape.max_text_positions,
        dropout=dropout,
        bos_token_id=BOS_ID,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=EOS_ID,
        forced_eos_token_id=EOS_ID,
    )
    return transformers.Florence2Config(vision_config=vision, text_config=text, image_token_id=image_token_id)


def shape_from_config(config, image_size: int = 768) -> ModelShape:
    """The ModelShape of a native Florence2Config (the inverse of `to_config`)."""
    v, t = config.vision_config, config.text_config
    if t.encoder_attention_heads != t.decoder_attention_heads or t.encoder_ffn_dim != t.decoder_ffn_dim:
        raise ConfigError("text encoder and decoder differ in heads or FFN width; tiercel shapes assume they match")
    return ModelShape(
        vision_dims=tuple(v.embed_dim),
        vision_depths=tuple(v.depths),
        vision_heads=tuple(v.num_heads),
        vision_groups=tuple(v.num_groups),
        window_size=v.window_size,
        d_model=t.d_model,
        encoder_layers=t.encoder_layers,
        decoder_layers=t.decoder_layers,
        attention_heads=t.encoder_attention_heads,
        ffn_dim=t.encoder_ffn_dim,
        vocab_size=t.vocab_size,
        max_text_positions=t.max_position_embeddings,
        image_size=image_size,
    )


def build(preset: str | ModelShape, *, image_token_id: int | None = None, device: str = "cpu", seed: int | None = None,
          dropout: float = 0.1, **overrides):
    """Build a randomly initialised Florence2ForConditionalGeneration.

    Args:
        preset: a preset name (see presets.PRESETS) or a ModelShape.
        image_token_id: id of `<image>`; defaults to the last vocabulary id.
        device: "meta" builds without allocating weights (for counting and shape checks).
        seed: seed torch before initialising, for reproducible weights.
        dropout: text dropout and vision stochastic depth while training.
        **overrides: ModelShape fields to replace, e.g. vocab_size=len(tokenizer).
    """
    torch = require("torch", "train", "building a Florence-2 model")
    transformers = require("transformers", "train", "building a Florence-2 model")
    shape = get_preset(preset, **overrides) if isinstance(preset, str) else preset.check()
    config = to_config(shape, image_token_id=image_token_id, dropout=dropout)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.Florence2ForConditionalGeneration(config)
    model.tiercel_shape = shape
    return model.eval()
