"""Model shapes as data: the published Florence-2 / Falcon sizes and tiercel's edge students.

A ModelShape is everything needed to build a Florence-2 model with transformers' native classes; it
knows nothing about weights or checkpoints (see checkpoint.py) and imports no torch.

Edge students (numbers measured with `tiercel info PRESET`; decoder bytes/token at fp16, 32-token prompt):

- tiercel-small (75.0M params, 768 px): for Orin NX / AGX-class devices, and Orin Nano when the full
  577-token image grid matters (small objects). Vision widths halved from Florence-2-base with 6 instead of 9
  blocks in stage 3; text d_model 512 with 4+4 layers. Where it goes: 27.3M in the tied 51k-token
  embedding/lm_head, 17.9M vision, 29.4M text layers. Vision drops from 381 to 76 GFLOPs per image (5x)
  and the decoder reads 91 MB per token instead of 204 MB (2.2x): the lm_head is now the largest read.
- tiercel-nano (22.7M params, 512 px): for Orin Nano 8GB. Vision widths a quarter of base, d_model 256 with
  3+3 layers. 13.4M of its parameters sit in the vocabulary, which cannot shrink without leaving Falcon's
  tokenizer. The input drops to 512 px, so the encoder sees 257 image tokens instead of 577: vision costs
  6.9 GFLOPs (55x less than base) and the decoder reads 34 MB per token (6x less), cross-attention K/V included.
- tiny: for tests only (64 px, widths 16-64, 1-2 layers); builds in milliseconds.
"""

from __future__ import annotations

from dataclasses import fields, replace

from tiercel.errors import ConfigError
from tiercel.runtime.shape import FLORENCE_VOCAB, ModelShape  # noqa: F401  (presets are ModelShapes)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


_FLORENCE_BASE = ModelShape()
_FLORENCE_LARGE = ModelShape(
    vision_dims=(256, 512, 1024, 2048),
    vision_heads=(8, 16, 32, 64),
    vision_groups=(8, 16, 32, 64),
    d_model=1024,
    encoder_layers=12,
    decoder_layers=12,
    attention_heads=16,
    ffn_dim=4096,
)

PRESETS: dict[str, ModelShape] = {
    "florence2-base": _FLORENCE_BASE,
    "florence2-large": _FLORENCE_LARGE,
    "falcon-base": _FLORENCE_BASE,
    "falcon-large": _FLORENCE_LARGE,
    "tiercel-small": ModelShape(
        vision_dims=(64, 128, 256, 512),
        vision_depths=(1, 1, 6, 1),
        vision_heads=(2, 4, 8, 16),
        vision_groups=(2, 4, 8, 16),
        d_model=512,
        encoder_layers=4,
        decoder_layers=4,
        attention_heads=8,
        ffn_dim=2048,
    ),
    "tiercel-nano": ModelShape(
        vision_dims=(32, 64, 128, 256),
        vision_depths=(1, 1, 4, 1),
        vision_heads=(1, 2, 4, 8),
        vision_groups=(1, 2, 4, 8),
        window_size=8,
        d_model=256,
        encoder_layers=3,
        decoder_layers=3,
        attention_heads=4,
        ffn_dim=1024,
        max_text_positions=512,
        image_size=512,
    ),
    "tiny": ModelShape(
        vision_dims=(16, 32, 48, 64),
        vision_depths=(1, 1, 1, 1),
        vision_heads=(1, 2, 2, 4),
        vision_groups=(1, 2, 2, 4),
        window_size=4,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        attention_heads=4,
        ffn_dim=128,
        vocab_size=1200,
        max_text_positions=256,
        image_size=64,
    ),
}


def get_preset(name: str, **overrides) -> ModelShape:
    """Return a preset by name, with fields replaced by `overrides` (e.g. vocab_size=len(tokenizer))."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset '{name}'; choose one of: {', '.join(PRESETS)}")
    valid = {f.name for f in fields(ModelShape)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"preset '{name}': unknown field '{unknown[0]}'; valid fields: {', '.join(sorted(valid))}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return replace(PRESETS[name], **overrides).check(f"preset '{name}'")


def match_preset(shape: ModelShape) -> str | None:
    """Name of the first preset whose shape equals `shape` ignoring vocab_size, or None."""
    for name, preset in PRESETS.items():
        if replace(preset, vocab_size=shape.vocab_size) == shape:
            return name
    return None
