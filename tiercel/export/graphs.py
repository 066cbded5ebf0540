"""The four Florence-2 graphs as small torch modules that trace cleanly, with the public tensor names.

Each module wraps the weights of a native `Florence2ForConditionalGeneration` (nothing is copied) and spells
out what transformers does implicitly: the decoder takes its KV cache as plain tensors named like the public
Florence-2 ONNX ports (past_key_values.{i}.{decoder,encoder}.{key,value} -> present.*), derives positions from
the past length, and masks padded encoder positions additively. Self-attention KV grows by the new tokens on
every step; cross-attention KV is projected from the encoder output once (first step) and then passed back in.

Cross-attention KV is per ITEM, not per row: the decoder's rows are item-major (row = item * beams + beam, as
beam search lays them out) and the encoder inputs and encoder KV have one row per item, so every beam of an item
reads the same K/V (the beams are a broadcast batch axis of their item's attention). Greedy decoding is beams = 1.

This module knows nothing about ONNX files or bundles (see onnx_export.py); it only defines what is traced.
"""

from __future__ import annotations

import torch
from torch import nn

VISION, EMBED, ENCODER = "vision_encoder", "embed_tokens", "encoder_model"
DECODER_FIRST, DECODER_PAST, DECODER_MERGED = "decoder_model", "decoder_with_past_model", "decoder_model_merged"


def kv_names(prefix: str, layers: int, which=("decoder", "encoder")) -> list[str]:
    """past_key_values.{i}.{decoder,encoder}.{key,value} (prefix "past_key_values") or present.* names."""
    return [f"{prefix}.{i}.{w}.{kv}" for i in range(layers) for w in which for kv in ("key", "value")]


class VisionEncoder(nn.Module):
    """pixel_values [B, 3, S, S] -> image_features [B, N_img, D]: DaViT plus the projector."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values).pooler_output


class EmbedTokens(nn.Module):
    """input_ids [B, T] -> inputs_embeds [B, T, D] (the shared, possibly scaled, embedding)."""

    def __init__(self, model):
        super().__init__()
        self.embed = model.get_input_embeddings()

    def forward(self, input_ids):
        return self.embed(input_ids)


def _mask_bias(mask, dtype):
    """[B, S] 0/1 mask -> additive [B, 1, 1, S] bias (0 where attended, dtype's min where padded)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _heads(x, heads):
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _attend(q, k, v, scaling, bias):
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling + bias
    out = torch.matmul(torch.softmax(scores, dim=-1), v)
    b, h, t, hd = out.shape
    return out.transpose(1, 2).reshape(b, t, h * hd)


def _cross_attend(ca, h, k, v, bias, items, t):
    """Cross-attention of h [rows, t, D] (rows = items x beams, item-major) against one k, v [items, H, S, d] per
    item -> [items, beams, t, H, d]. Beams are a broadcast batch axis next to the heads: each row is the same
    matrix-vector product as with its own K/V copy (scores key-major: K @ q^T reads K as stored, as rewrite.py
    makes the other attentions do), and the beams of a head read the same K/V one after another, from cache."""
    heads = ca.num_heads
    q = ca.q_proj(h).view(items, -1, t, heads, ca.q_proj.out_features // heads)
    q_t = q.permute(0, 3, 1, 4, 2)  # [items, H, beams, d, t]
    # scaled after the transpose, as the other attentions are: a Mul right after this MatMul becomes onnxruntime's
    # FusedMatMul, whose broadcasting path ran 4x slower than MatMul's here
    scores = torch.matmul(k.unsqueeze(2), q_t).transpose(-1, -2) * ca.scaling + bias.unsqueeze(1)
    out = torch.matmul(torch.softmax(scores, dim=-1), v.unsqueeze(2))  # [items, H, beams, t, d]
    return out.permute(0, 2, 3, 1, 4)


class TextEncoder(nn.Module):
    """inputs_embeds [B, T, D], attention_mask [B, T] -> last_hidden_state [B, T, D] (BART encoder, post-LN)."""

    def __init__(self, model):
        super().__init__()
        self.enc = model.model.language_model.encoder

    def forward(self, inputs_embeds, attention_mask):
        enc = self.enc
        t = inputs_embeds.shape[1]
        pos = enc.embed_positions.weight[enc.embed_positions.offset + torch.arange(t, device=inputs_embeds.device)]
        h = enc.layernorm_embedding(inputs_embeds + pos)
        bias = _mask_bias(attention_mask, h.dtype)
        for layer in enc.layers:
            a = layer.self_attn
            heads = a.num_heads
            out = _attend(_heads(a.q_proj(h), heads), _heads(a.k_proj(h), heads), _heads(a.v_proj(h), heads), a.scaling, bias)
            h = layer.self_attn_layer_norm(h + a.out_proj(out))
            h = layer.final_layer_norm(h + layer.fc2(layer.activation_fn(layer.fc1(h))))
        return h


class DecoderStep(nn.Module):
    """One decoder call with an explicit KV cache.

    with_past=False (first step): inputs_embeds [rows, t, D], encoder_hidden_states [items, S, D],
    encoder_attention_mask [items, S] -> logits [rows, t, V] and present.* for self-attention ([rows, H, t, d]) AND
    cross-attention ([items, H, S, d]). with_past=True: inputs_embeds, encoder_attention_mask and past_key_values.*
    -> logits and present.*.decoder.* only (the cross-attention KV does not change). rows = items * beams.
    """

    def __init__(self, model, with_past: bool):
        super().__init__()
        self.dec = model.model.language_model.decoder
        self.lm_head = model.lm_head
        self.with_past = with_past

    def forward(self, inputs_embeds, encoder_attention_mask, *rest):
        dec, n = self.dec, len(self.dec.layers)
        if self.with_past:
            past = [rest[4 * i : 4 * i + 4] for i in range(n)]  # (dk, dv, ek, ev) per layer
            past_len = past[0][0].shape[2]
        else:
            encoder_hidden_states = rest[0]
            past, past_len = None, 0
        t = inputs_embeds.shape[1]
        steps = torch.arange(t, device=inputs_embeds.device) + past_len
        h = dec.layernorm_embedding(inputs_embeds + dec.embed_positions.weight[steps + dec.embed_positions.offset])
        keys = torch.arange(past_len + t, device=inputs_embeds.device)
        causal = (keys[None, :] > steps[:, None]).to(h.dtype) * torch.finfo(h.dtype).min  # [t, past+t]
        cross_bias = _mask_bias(encoder_attention_mask, h.dtype)  # [items, 1, 1, S]
        items = encoder_attention_mask.shape[0]
        presents = []
        for i, layer in enumerate(dec.layers):
            sa, ca = layer.self_attn, layer.encoder_attn
            heads = sa.num_heads
            k, v = _heads(sa.k_proj(h), heads), _heads(sa.v_proj(h), heads)
            if past is not None:
                k, v = torch.cat([past[i][0], k], dim=2), torch.cat([past[i][1], v], dim=2)
            out = _attend(_heads(sa.q_proj(h), heads), k, v, sa.scaling, causal)
            h = layer.self_attn_layer_norm(h + sa.out_proj(out))
            if past is not None:
                ek, ev = past[i][2], past[i][3]
            else:
                ek, ev = _heads(ca.k_proj(encoder_hidden_states), heads), _heads(ca.v_proj(encoder_hidden_states), heads)
            out = _cross_attend(ca, h, ek, ev, cross_bias, items, t)
            h = layer.encoder_attn_layer_norm(h + ca.out_proj(out.reshape_as(inputs_embeds)))
            h = layer.final_layer_norm(h + layer.fc2(layer.activation_fn(layer.fc1(h))))
            presents += [k, v] if past is not None else [k, v, ek, ev]
        return (self.lm_head(h), *presents)
