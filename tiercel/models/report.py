"""`tiercel info`: where a model's parameters, bytes and FLOPs go.

Counts come from the real transformers module built on the meta device (no weights allocated), FLOPs from
torch's FlopCounterMode on a meta forward pass (matmuls and convolutions; 1 multiply-add = 2 FLOPs).
The decoder's bytes per generated token is the number the profiler uses as its memory-bandwidth bound:
every decoder weight and the lm_head are read once per token, plus the cross-attention K/V of the encoder
sequence and the self-attention K/V of the tokens generated so far. Knows nothing about files.
"""

from __future__ import annotations

from dataclasses import dataclass

from tiercel.errors import ConfigError
from tiercel.runtime.shape import ModelShape

# Bits per weight at each precision. int4 counts one fp16 scale per group of 32 weights (4 + 16/32 bits); the lm_head
# and the token-embedding table stay int8 under int4 (`tiercel quantize` by default, as NNCF: 8 + 16/32 bits).
WEIGHT_BITS = {"fp32": 32.0, "fp16": 16.0, "int8": 8.0, "int4": 4.5}
INT4_KEPT_BITS = 8.5
# Activations (and so the KV cache) stay fp32 for fp32 weights and fp16 otherwise.
KV_BYTES = {"fp32": 4, "fp16": 2, "int8": 2, "int4": 2}
COMPONENTS = ("vision", "projector", "embeddings", "text_encoder", "text_decoder", "lm_head")


def _component(name: str) -> str:
    if name.startswith("model.vision_tower."):
        return "vision"
    if name.startswith("model.multi_modal_projector."):
        return "projector"
    if name.startswith("lm_head."):
        return "lm_head"
    if ".shared." in name or ".embed_tokens." in name or ".embed_positions." in name:
        return "embeddings"
    if ".encoder." in name:
        return "text_encoder"
    if ".decoder." in name:
        return "text_decoder"
    raise ValueError(f"unclassified parameter {name}")


@dataclass
class ModelReport:
    """Parameters, sizes, FLOPs and per-token decoder bytes of one model shape."""

    name: str
    shape: ModelShape
    params: dict[str, int]
    tied_lm_head: bool
    vision_gflops: float
    encoder_gflops: float
    decoder_weight_params: int
    encoder_tokens: int
    new_tokens: int
    lm_head_params: int = 0
    int8_under_int4: int = 0  # lm_head + token-embedding table, once when tied: int8 in an int4 bundle

    def _bits(self, precision: str, params: int, kept: int) -> float:
        """Bytes of `params` weights at `precision`, `kept` of them int8 when the precision is int4."""
        if precision != "int4":
            return params * WEIGHT_BITS[precision] / 8
        return (params - kept) * WEIGHT_BITS["int4"] / 8 + kept * INT4_KEPT_BITS / 8

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    def size_bytes(self, precision: str) -> float:
        return self._bits(precision, self.total_params, self.int8_under_int4)

    def decoder_bytes_per_token(self, precision: str = "fp32") -> dict[str, float]:
        """Bytes read per generated token (averaged over `new_tokens`), split into weights and KV cache."""
        s = self.shape
        kv = KV_BYTES[precision]
        weights = self._bits(precision, self.decoder_weight_params, self.lm_head_params)
        cross = s.decoder_layers * 2 * self.encoder_tokens * s.d_model * kv
        self_kv = s.decoder_layers * 2 * (self.new_tokens + 1) / 2 * s.d_model * kv
        return {"weights": weights, "cross_kv": cross, "self_kv": self_kv, "total": weights + cross + self_kv}

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": self.shape.to_dict(),
            "params": {**self.params, "total": self.total_params},
            "tied_lm_head": self.tied_lm_head,
            "size_bytes": {p: self.size_bytes(p) for p in WEIGHT_BITS},
            "vision_gflops": self.vision_gflops,
            "encoder_gflops": self.encoder_gflops,
            "image_tokens": self.shape.image_tokens,
            "encoder_tokens": self.encoder_tokens,
            "new_tokens": self.new_tokens,
            "decoder_bytes_per_token": {p: self.decoder_bytes_per_token(p) for p in WEIGHT_BITS},
            "notes": {
                "int4": "4 bits + one fp16 scale per 32 weights = 4.5 bits/weight; the lm_head and token-embedding "
                "table at 8.5 (int8, as tiercel quantize keeps them unless --all-layers)",
                "kv": "KV cache in fp32 for fp32 weights, fp16 otherwise",
                "decoder_bytes": "decoder layers + lm_head weights, cross-attention K/V of encoder_tokens, "
                "self-attention K/V averaged over new_tokens",
            },
        }


def model_report(model, name: str, prompt_tokens: int = 32, new_tokens: int = 32) -> ModelReport:
    """Measure `model` (a Florence2ForConditionalGeneration, ideally on the meta device).

    Args:
        prompt_tokens: text tokens assumed after the image tokens in the encoder input.
        new_tokens: generated tokens the self-attention KV average is taken over.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    shape: ModelShape = model.tiercel_shape
    _check_tokens(shape, name, prompt_tokens, new_tokens)
    params = dict.fromkeys(COMPONENTS, 0)
    for pname, p in model.named_parameters():  # tied parameters are listed once, under their first name
        params[_component(pname)] += p.numel()
    lm = model.lm_head.weight
    tied = lm is model.model.language_model.shared.weight
    decoder = params["text_decoder"] + lm.numel()
    device = next(model.parameters()).device
    enc_len = shape.image_tokens + prompt_tokens
    with torch.no_grad(), FlopCounterMode(display=False) as vision:
        model.model.get_image_features(torch.zeros(1, 3, shape.image_size, shape.image_size, device=device))
    with torch.no_grad(), FlopCounterMode(display=False) as encoder:
        embeds = torch.zeros(1, enc_len, shape.d_model, device=device)
        model.model.language_model.encoder(inputs_embeds=embeds)
    table = model.model.language_model.shared.weight.numel()
    return ModelReport(name, shape, params, tied, vision.get_total_flops() / 1e9, encoder.get_total_flops() / 1e9,
                       decoder, enc_len, new_tokens, lm.numel(), table + (0 if tied else lm.numel()))


def _check_tokens(shape: ModelShape, name: str, prompt_tokens: int, new_tokens: int) -> None:
    """ConfigError when the token counts do not fit the model's position tables (10^14 prompt tokens made torch
    overflow its storage size)."""
    room = shape.max_text_positions - shape.image_tokens
    if not 0 <= prompt_tokens <= room:
        raise ConfigError(f"--prompt-tokens: must be 0..{room}: {name} has {shape.max_text_positions} text positions, "
                          f"{shape.image_tokens} of them image tokens (got {prompt_tokens})")
    if not 1 <= new_tokens <= shape.max_text_positions:
        raise ConfigError(f"--new-tokens: must be 1..{shape.max_text_positions}, {name}'s decoder positions "
                          f"(got {new_tokens})")
