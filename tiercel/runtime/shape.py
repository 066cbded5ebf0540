"""The shape of a Florence-2 model: everything needed to build one with transformers' native classes, and what
a bundle's manifest records (model.shape). The runtime reads it (limits, profiling work) without torch; the
presets (tiercel.models.presets) are instances of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from tiercel.errors import ConfigError

FLORENCE_VOCAB = 51289  # Florence-2 / Falcon tokenizer size before `<image>` is added


def size_limit(name: str) -> int:
    """The largest value tiercel accepts for a size, by its name in a ModelShape or in a checkpoint's config: far
    past any Florence-2, Falcon or LLaVA model, but bounded so that a wrong number fails in one line instead of
    building a model that never fits in memory."""
    if "layers" in name or "depths" in name:
        return 1024
    if "heads" in name or "groups" in name:
        return 4096
    return {"vocab_size": 2**22, "max_position_embeddings": 2**20, "max_text_positions": 2**20}.get(name, 2**17)


@dataclass(frozen=True)
class ModelShape:
    """The shape of a Florence-2 model: DaViT vision tower, projector, BART text encoder-decoder."""

    vision_dims: tuple[int, ...] = field(default=(128, 256, 512, 1024), metadata={"help": "DaViT width per stage"})
    vision_depths: tuple[int, ...] = field(default=(1, 1, 9, 1), metadata={"help": "DaViT blocks per stage"})
    vision_heads: tuple[int, ...] = field(default=(4, 8, 16, 32), metadata={"help": "window-attention heads per stage"})
    vision_groups: tuple[int, ...] = field(default=(4, 8, 16, 32), metadata={"help": "channel-attention groups per stage"})
    window_size: int = field(default=12, metadata={"help": "DaViT window size"})
    d_model: int = field(default=768, metadata={"help": "text width; also the image projection width"})
    encoder_layers: int = field(default=6, metadata={"help": "text encoder layers"})
    decoder_layers: int = field(default=6, metadata={"help": "text decoder layers"})
    attention_heads: int = field(default=12, metadata={"help": "text attention heads (encoder and decoder)"})
    ffn_dim: int = field(default=3072, metadata={"help": "text feed-forward width"})
    vocab_size: int = field(default=FLORENCE_VOCAB + 1, metadata={"help": "vocabulary incl. <image>"})
    max_text_positions: int = field(default=1024, metadata={"help": "learned text positions (prompt + image tokens)"})
    image_size: int = field(default=768, metadata={"help": "square input size in pixels"})

    @property
    def image_grid(self) -> int:
        """Side of the final feature map: the DaViT strides are 4, 2, 2, 2."""
        return self.image_size // 32

    @property
    def image_tokens(self) -> int:
        """Tokens the projector emits per image: the spatial grid plus one temporal token."""
        return self.image_grid**2 + 1

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, where: str = "model") -> ModelShape:
        """Raise ConfigError for shapes transformers would reject later with a less clear message, or that would
        allocate without bound (a typo of 10000000 for d_model)."""
        for f in fields(self):
            value, limit = getattr(self, f.name), size_limit(f.name)
            items = value if isinstance(value, tuple) else (value,)
            if not (0 < len(items) <= 16 and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= limit for v in items)):
                kind = "a list of 1 to 16 whole numbers" if isinstance(value, tuple) else "a whole number"
                raise ConfigError(f"{where}: {f.name} must be {kind} 1..{limit} (got {repr(value)[:60]})")
        n = len(self.vision_dims)
        if not (len(self.vision_depths) == len(self.vision_heads) == len(self.vision_groups) == n):
            raise ConfigError(f"{where}: vision_dims, vision_depths, vision_heads and vision_groups need the same length")
        for dim, heads in zip(self.vision_dims, self.vision_heads):
            if dim % heads:
                raise ConfigError(f"{where}: vision width {dim} is not divisible by its {heads} heads")
        if self.d_model % self.attention_heads:
            raise ConfigError(f"{where}: d_model {self.d_model} is not divisible by attention_heads {self.attention_heads}")
        if self.image_size % 32:
            raise ConfigError(f"{where}: image_size must be a multiple of 32 (got {self.image_size})")
        if self.image_grid > 50:
            raise ConfigError(f"{where}: image_size {self.image_size} exceeds the 50x50 learned position grid (max 1600)")
        if self.max_text_positions < self.image_tokens + 8:
            raise ConfigError(f"{where}: max_text_positions {self.max_text_positions} cannot hold {self.image_tokens} image tokens and a prompt")
        return self
