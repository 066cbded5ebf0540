"""The distillation objective: one forward pass of the student, every weighted loss term from the recipe.

`DistillObjective` is an nn.Module holding the student and the learned hidden-state projections, so DDP/FSDP
wrap and synchronise both. The teacher is not inside it: its outputs (or cached top-k logits) are computed
without gradients by the trainer and passed in. Knows nothing about data files, optimisers or checkpoints.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from tiercel.distill.data import IGNORE
from tiercel.distill.losses import HiddenDistiller, ce_loss, divergence, sample_weights, topk_divergence
from tiercel.errors import ConfigError


@dataclass
class Outputs:
    logits: torch.Tensor
    image: torch.Tensor  # projector output [B, N_img, D]
    encoder: torch.Tensor  # encoder last hidden state [B, T_enc, D]
    decoder: tuple  # decoder hidden states: embeddings then one per layer
    stages: tuple = ()  # with stages=True: the vision tower's feature map after each stage, [B, C_i, H_i, W_i]


def run_model(model, inputs: dict, decoder_input_ids: torch.Tensor, hidden: bool = False, stages: bool = False) -> Outputs:
    """Forward a Florence-2 model, keeping the image features the native forward does not return.

    Does what Florence2Model.forward does (embed, scatter image features into the `<image>` slots, encode,
    decode) with the vision pass run once and its output kept; with `stages`, also the feature map after each
    vision stage (the vision tower records every block's output; the last block of each stage is kept).
    """
    ids = inputs["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    vision = model.model.get_image_features(inputs["pixel_values"].to(embeds.dtype), **({"output_hidden_states": True} if stages else {}))
    image = vision.pooler_output.to(embeds.dtype)
    slots = (ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(slots, image)
    out = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], decoder_input_ids=decoder_input_ids,
                output_hidden_states=hidden, use_cache=False)
    kept = ()
    if stages:  # hidden_states: the first block's input, then every block's output
        ends = itertools.accumulate(model.config.vision_config.depths)
        kept = tuple(vision.hidden_states[i] for i in ends)
    return Outputs(out.logits, image, out.encoder_last_hidden_state, out.decoder_hidden_states or (), kept)


class DistillObjective(nn.Module):
    """Student + projections; forward(batch, teacher) returns the weighted loss and each term."""

    def __init__(self, student, cfg, teacher_shape=None, dense_channels: int = 0):
        super().__init__()
        self.student, self.cfg = student, cfg
        h = cfg.hidden
        pairs = {}
        if teacher_shape is not None:
            s_dim, t_dim = student.tiercel_shape.d_model, teacher_shape.d_model
            if h.vision:
                pairs["vision"] = (s_dim, t_dim)
            if h.encoder:
                pairs["encoder"] = (s_dim, t_dim)
            if h.decoder:
                pairs.update({f"decoder.{s}": (s_dim, t_dim) for s in h.decoder_layers})
                s_n, t_n = student.tiercel_shape.decoder_layers, teacher_shape.decoder_layers
                for s_layer, t_layer in h.decoder_layers.items():
                    if not (0 <= s_layer < s_n and 0 <= t_layer < t_n):
                        raise ConfigError(f"distill.hidden.decoder_layers: {s_layer}: {t_layer} names a layer the models lack "
                                          f"(student decoder layers 0..{s_n - 1}, teacher 0..{t_n - 1})")
            if h.stages:
                pairs.update({f"stage.{s}": (student.tiercel_shape.vision_dims[s], teacher_shape.vision_dims[t])
                              for s, t in stage_pairs(h, student.tiercel_shape, teacher_shape).items()})
        # the encoder output starts with the image tokens, whose count differs when the image sizes do
        image_tokens = {"encoder": (student.tiercel_shape.image_tokens, teacher_shape.image_tokens)} if "encoder" in pairs else None
        # a stage's map is always projected: the target is the teacher's map normalised per position, which a
        # student of the same width (a copied vision tower) does not produce as it is
        stages = tuple(n for n in pairs if n.startswith("stage."))
        self.distiller = HiddenDistiller(pairs, kind=h.kind, image_tokens=image_tokens, projected=stages) if pairs else None
        # dense losses (tiercel.distill.dense): one linear head per term, a token -> its cells (x channels)
        d, dim, cells2 = cfg.dense, student.tiercel_shape.d_model, cfg.dense.cells**2
        self.dense_answer = nn.Linear(dim, cells2) if d.answer else None
        self.dense_objects = nn.Linear(dim, cells2 * dense_channels) if d.objects and dense_channels else None

    @property
    def needs_decoder_states(self) -> bool:
        """Whether the loss reads the decoder's hidden states (run_model's `hidden`) of both models."""
        return self.distiller is not None and self.cfg.hidden.decoder > 0

    @property
    def needs_stages(self) -> bool:
        """Whether the loss reads the vision stages' feature maps (run_model's `stages`) of both models."""
        return self.distiller is not None and self.cfg.hidden.stages > 0

    def forward(self, batch: dict | None, teacher: Outputs | None = None, topk: tuple | None = None,
                ce_weight: float | None = None, student_call=None):
        if student_call is not None:  # dist.through_root: the student used directly, inside this (root) forward
            return student_call(self.student)
        cfg = self.cfg
        out = run_model(self.student, batch["student"], batch["decoder_input_ids"], hidden=self.needs_decoder_states,
                        stages=self.needs_stages)
        labels = batch["labels"]
        mask = labels != IGNORE
        weights = sample_weights(mask) if cfg.loss_norm == "sample" else None  # None: every answer token counts once
        terms = {}
        w_ce = cfg.ce if ce_weight is None else ce_weight
        if w_ce:
            terms["ce"] = (w_ce, ce_loss(out.logits, labels, weights=weights))
        if cfg.kd and teacher is not None:
            t_logits = teacher.logits[..., : out.logits.shape[-1]]  # a teacher vocab padded past the tokenizer
            terms["kd"] = (cfg.kd, divergence(out.logits, t_logits, mask, kind=cfg.divergence, temperature=cfg.temperature,
                                              beta=cfg.beta, alpha=cfg.alpha, weights=weights))
        elif cfg.kd and topk is not None:
            values, indices = topk
            terms["kd"] = (cfg.kd, topk_divergence(out.logits, values, indices, mask, kind=cfg.divergence,
                                                   temperature=cfg.temperature, beta=cfg.beta, alpha=cfg.alpha,
                                                   weights=weights))
        if self.distiller is not None and teacher is not None:
            terms.update(self._hidden_terms(out, teacher, batch, mask))
        if "dense" in batch:
            terms.update(self._dense_terms(out, batch["dense"]))
        total = sum(w * v for w, v in terms.values())
        return total, {k: v.detach() for k, (_, v) in terms.items()}, out  # tensors: a float() here would break a compiled graph

    def _dense_terms(self, out: Outputs, dense: dict) -> dict:
        """distill.dense: the answer's cover from the encoder at the image slots (a softmax over each record's
        cells), every class's cover from the image tokens (BCE per cell and channel). Florence-2's image tokens
        come first in the encoder input: the mean token, then the grid row by row."""
        terms, n_img = {}, out.image.shape[1]
        if self.dense_answer is not None:
            logits = self.dense_answer(out.encoder[:, 1:n_img, :]).flatten(1).float()
            target = dense["answer"].flatten(1)
            p = target / target.sum(1, keepdim=True).clamp_min(1e-6)
            per_row = -(p * torch.log_softmax(logits, -1)).sum(-1)
            terms["dense_answer"] = (self.cfg.dense.answer, _masked_mean(per_row, dense["answer_mask"]))
        if self.dense_objects is not None:
            logits = self.dense_objects(out.image[:, 1:, :]).float()
            per_row = nn.functional.binary_cross_entropy_with_logits(logits, dense["objects"], reduction="none").mean((1, 2))
            terms["dense_objects"] = (self.cfg.dense.objects, _masked_mean(per_row, dense["objects_mask"]))
        return terms

    def _hidden_terms(self, out: Outputs, teacher: Outputs, batch: dict, mask) -> dict:
        h = self.cfg.hidden
        s_feats, t_feats, masks = {}, {}, {}
        if h.vision:
            s_feats["vision"], t_feats["vision"] = out.image, teacher.image
        if h.encoder:
            s_feats["encoder"], t_feats["encoder"] = out.encoder, teacher.encoder
            masks["encoder"] = batch["student"]["attention_mask"].bool()
        for s_layer, t_layer in h.decoder_layers.items() if h.decoder else ():
            s_feats[f"decoder.{s_layer}"] = out.decoder[s_layer + 1]
            t_feats[f"decoder.{s_layer}"] = teacher.decoder[t_layer + 1]
            masks[f"decoder.{s_layer}"] = mask
        pairs = stage_pairs(h, self.student.tiercel_shape) if h.stages else {}
        for s_stage, t_stage in pairs.items():
            s_map, t_map = out.stages[s_stage], teacher.stages[t_stage]
            if t_map.shape[-2:] != s_map.shape[-2:]:  # another grid: the teacher's averaged down, or resampled up
                t_map = t_map.float()
                if all(t >= s for t, s in zip(t_map.shape[-2:], s_map.shape[-2:])):
                    t_map = nn.functional.adaptive_avg_pool2d(t_map, s_map.shape[-2:])
                else:
                    t_map = nn.functional.interpolate(t_map, size=s_map.shape[-2:], mode="bilinear", align_corners=False)
            t_tokens = t_map.flatten(2).transpose(1, 2).float()
            s_feats[f"stage.{s_stage}"] = s_map.flatten(2).transpose(1, 2)
            t_feats[f"stage.{s_stage}"] = nn.functional.layer_norm(t_tokens, t_tokens.shape[-1:])
        losses = self.distiller(s_feats, t_feats, masks)
        weights = {"vision": h.vision, "encoder": h.encoder}
        def weight(name: str) -> float:
            if name.startswith("stage."):
                return h.stages / len(pairs)
            return weights.get(name, h.decoder / max(len(h.decoder_layers), 1))

        return {f"hidden_{k}": (weight(k), v) for k, v in losses.items()}


def stage_pairs(hidden, student_shape, teacher_shape=None) -> dict[int, int]:
    """distill.hidden.stage_pairs, or every stage to the one of the same index where it is empty; with
    `teacher_shape`, ConfigError for a stage either model lacks."""
    pairs = dict(hidden.stage_pairs) or {i: i for i in range(len(student_shape.vision_dims))}
    if teacher_shape is not None:
        s_n, t_n = len(student_shape.vision_dims), len(teacher_shape.vision_dims)
        for s, t in pairs.items():
            if not (0 <= s < s_n and 0 <= t < t_n):
                raise ConfigError(f"distill.hidden.stage_pairs: {s}: {t} names a vision stage the models lack "
                                  f"(student stages 0..{s_n - 1}, teacher 0..{t_n - 1})")
    return pairs


def _masked_mean(per_row: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of `per_row` over the rows with keep 1 (0 when there is none: the term then adds nothing)."""
    return (per_row * keep).sum() / keep.sum().clamp_min(1.0)
