"""Distillation losses: cross-entropy, token-level divergences (full vocabulary or a cached top-k), hidden states.

    loss = ce_loss(student_logits, labels)
    loss = loss + divergence(student_logits, teacher_logits, labels != -100, kind="jsd", temperature=2.0)
    loss = loss + topk_divergence(student_logits, values, indices, mask, kind="forward_kl")
    hidden = HiddenDistiller({"vision": (256, 768), "decoder.2": (256, 768)})   # learned projections
    terms = hidden(student_features, teacher_features, masks)                    # {"vision": ..., ...}

Divergences work on log-probabilities (log_softmax, logsumexp), in float32 whatever the input dtype, so a
probability that underflows to 0 contributes 0 (0 * log 0 = 0) instead of NaN. Every divergence is softened
by the temperature T on both sides and multiplied by T^2 (Hinton et al. 2015), then averaged over the masked
tokens. p is always the TEACHER distribution and q the STUDENT's.

This module knows nothing about models, tokenizers, data or recipes: it takes tensors and returns scalars.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tiercel.errors import ConfigError

IGNORE_INDEX = -100


def sample_weights(mask: torch.Tensor) -> torch.Tensor:
    """Token weights [B, T] that sum to 1 over each sample's tokens in `mask` (rows without any stay 0), so a
    weighted mean is the mean over samples of each sample's token mean (distill.loss_norm "sample")."""
    m = mask.float()
    return m / m.sum(dim=1, keepdim=True).clamp(min=1)


def _weighted_mean(per_token: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (per_token * weights).sum() / weights.sum().clamp(min=1e-12)


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of logits [B, T, V] against labels [B, T], averaged over tokens whose label is not ignored
    (with `weights` [B, T]: their weighted mean, e.g. sample_weights).

    Returns 0 (still attached to the graph) when every label is ignored.
    """
    vocab = logits.shape[-1]
    if weights is not None:
        per_token = F.cross_entropy(logits.float().reshape(-1, vocab), labels.reshape(-1), ignore_index=ignore_index,
                                    reduction="none").reshape(labels.shape)
        return _weighted_mean(per_token, torch.where(labels != ignore_index, weights.float(), 0.0))
    total = F.cross_entropy(logits.float().reshape(-1, vocab), labels.reshape(-1), ignore_index=ignore_index,
                            reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


# ---- divergences on log-probabilities along the last axis -------------------------------------------------


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum p (log p - log q); terms where p == 0 are 0, even where log p is -inf."""
    p = logp.exp()
    diff = torch.where(p > 0, logp - logq, torch.zeros_like(logp))  # keeps -inf - x out of the gradient
    return (p * diff).sum(-1)


def _mix(loga: torch.Tensor, logb: torch.Tensor, w: float) -> torch.Tensor:
    """log(w * a + (1 - w) * b) from log a and log b, without leaving log space."""
    if w <= 0:
        return logb
    if w >= 1:
        return loga
    return torch.logsumexp(torch.stack([loga + math.log(w), logb + math.log1p(-w)]), dim=0)


def forward_kl(s: torch.Tensor, t: torch.Tensor, beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """KL(p || q): mass-covering; the classic KD loss."""
    return _kl(t, s)


def reverse_kl(s: torch.Tensor, t: torch.Tensor, beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """KL(q || p): mode-seeking."""
    return _kl(s, t)


def jsd(s: torch.Tensor, t: torch.Tensor, beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """Generalised JSD(beta) of GKD (Agarwal et al. 2024): beta KL(p || m) + (1 - beta) KL(q || m),
    m = beta p + (1 - beta) q, with p the teacher. beta = 0.5 is the symmetric Jensen-Shannon divergence."""
    m = _mix(t, s, beta)
    return beta * _kl(t, m) + (1 - beta) * _kl(s, m)


def skew_kl(s: torch.Tensor, t: torch.Tensor, beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """Skew forward KL(alpha) of DistiLLM (Ko et al. 2024): KL(p || alpha p + (1 - alpha) q)."""
    return _kl(t, _mix(t, s, alpha))


def skew_reverse_kl(s: torch.Tensor, t: torch.Tensor, beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """Skew reverse KL(alpha) of DistiLLM: KL(q || alpha q + (1 - alpha) p)."""
    return _kl(s, _mix(s, t, alpha))


# name -> fn(student_logp, teacher_logp, beta, alpha) -> divergence per position (last axis reduced)
DIVERGENCES = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
}


def check_divergence(kind: str, temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.1) -> None:
    """Raise ConfigError when `kind` or its parameters are invalid (the valid names are listed)."""
    if kind not in DIVERGENCES:
        raise ConfigError(f"unknown divergence {kind!r}; valid kinds: {', '.join(DIVERGENCES)}")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ConfigError(f"divergence {kind!r}: temperature must be > 0 (got {temperature!r})")
    if kind == "jsd" and not 0 < beta < 1:
        raise ConfigError(f"divergence 'jsd': beta must be in (0, 1) (got {beta!r}); at 0 or 1 JSD(beta) is 0 — "
                          "use forward_kl or reverse_kl")
    if kind.startswith("skew") and not 0 <= alpha < 1:
        raise ConfigError(f"divergence {kind!r}: alpha must be in [0, 1) (got {alpha!r})")


def _masked_rows(mask: torch.Tensor | None, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The [N, ...] rows of [B, T, ...] tensors where `mask` [B, T] is True (all rows when mask is None)."""
    if mask is None:
        return [x.reshape(-1, x.shape[-1]) for x in tensors]
    mask = mask.bool()
    return [x[mask] for x in tensors]


def _mean_scaled(per_token: torch.Tensor, temperature: float, anchor: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    if per_token.numel() == 0:
        return anchor.sum() * 0.0  # no token selected: a zero that keeps the graph (and DDP) happy
    mean = per_token.mean() if weights is None else _weighted_mean(per_token, weights.float())
    return mean * temperature**2


def _row_weights(weights: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
    """`weights` [B, T] at the rows _masked_rows selects."""
    if weights is None:
        return None
    return weights.reshape(-1) if mask is None else weights[mask.bool()]


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
               kind: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
               alpha: float = 0.1, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Token-level divergence between student and teacher logits [B, T, V], averaged over `mask` [B, T]
    (with `weights` [B, T]: their weighted mean over the masked tokens, e.g. sample_weights).

    Both sides are softened by `temperature` and the result multiplied by temperature**2. `kind` is a key of
    DIVERGENCES; `beta` is JSD's mixing weight on the teacher, `alpha` the skew KLs' weight on the first
    argument's own distribution. The teacher side receives no gradient.
    """
    check_divergence(kind, temperature, beta, alpha)
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} differ in shape; logit distillation needs a shared vocabulary")
    s, t = _masked_rows(mask, student_logits, teacher_logits.detach())
    s = F.log_softmax(s.float() / temperature, dim=-1)
    t = F.log_softmax(t.float() / temperature, dim=-1)
    return _mean_scaled(DIVERGENCES[kind](s, t, beta, alpha), temperature, student_logits, _row_weights(weights, mask))


def topk_divergence(student_logits: torch.Tensor, teacher_values: torch.Tensor, teacher_indices: torch.Tensor,
                    mask: torch.Tensor | None = None, kind: str = "forward_kl", temperature: float = 1.0,
                    beta: float = 0.5, alpha: float = 0.1, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Divergence against a teacher cached as its top-k per token: values/indices [B, T, K], logits [B, T, V].

    Both distributions live on the teacher's k tokens. The teacher's is softmax(values / T) over the k entries;
    values may be raw logits or log_softmax at temperature 1 (a constant shift cancels). The student's full
    log-softmax is gathered at the k indices and renormalised over them, i.e. log_softmax(logits[idx] / T).
    Renormalising the student too (instead of keeping its full-vocabulary log-probs) makes every divergence a
    proper one between two distributions on the same support, so that with k = V (any index order) this is
    exactly `divergence`. For a smaller k, with S the top-k set, P = p(S), Q = q(S) and p_S, q_S the
    restrictions renormalised (forward KL; chain rule):

        KL(p || q) = P * KL(p_S || q_S) + (1 - P) * KL(p_rest || q_rest) + KL(Bern(P) || Bern(Q))

    so the top-k loss differs from the full one by at most (1 - P) * (KL(p_S||q_S) + KL(p_rest||q_rest))
    + KL(Bern(P) || Bern(Q)): small when the teacher is peaked (P near 1) and the student puts a similar mass
    on the teacher's top-k. Indices must be distinct within a row. The teacher side receives no gradient.
    """
    check_divergence(kind, temperature, beta, alpha)
    if teacher_values.shape != teacher_indices.shape or teacher_values.shape[:-1] != student_logits.shape[:-1]:
        raise ConfigError(f"top-k cache {tuple(teacher_values.shape)} / {tuple(teacher_indices.shape)} does not fit "
                          f"student logits {tuple(student_logits.shape)}; expected [B, T, K] for both")
    s, values, idx = _masked_rows(mask, student_logits, teacher_values.detach(), teacher_indices)
    s = F.log_softmax(s.float().gather(-1, idx.long()) / temperature, dim=-1)
    t = F.log_softmax(values.float() / temperature, dim=-1)
    return _mean_scaled(DIVERGENCES[kind](s, t, beta, alpha), temperature, student_logits, _row_weights(weights, mask))


# ---- hidden states ----------------------------------------------------------------------------------------


def _mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (s - t).pow(2).mean(-1)


def _cosine(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)


# name -> per-token loss [B, N, D] x [B, N, D] -> [B, N]
HIDDEN_LOSSES = {"mse": _mse, "cosine": _cosine}


def align_image_tokens(teacher: torch.Tensor, n_student: int) -> torch.Tensor:
    """Resample Florence-2 image tokens [B, 1 + g_t^2, D] to the student's count 1 + g_s^2.

    Florence-2's projector (transformers' Florence2MultiModalProjector) emits the pooled per-frame token
    FIRST (the mean of the spatial tokens, before projection), then the g x g grid row by row. The pooled token
    is matched directly; the grid is resized with bilinear interpolation (half-pixel centres, align_corners=False,
    no antialiasing), e.g. 577 -> 257 tokens for a 768 px teacher and a 512 px student.
    """
    b, m, d = teacher.shape
    if m == n_student:
        return teacher
    g_t, g_s = _grid_side(m), _grid_side(n_student)
    grid = teacher[:, 1:].reshape(b, g_t, g_t, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(g_s, g_s), mode="bilinear", align_corners=False)
    return torch.cat([teacher[:, :1], grid.permute(0, 2, 3, 1).reshape(b, g_s * g_s, d)], dim=1)


def _grid_side(n_tokens: int) -> int:
    side = math.isqrt(max(n_tokens - 1, 0))
    if n_tokens < 2 or side * side != n_tokens - 1:
        raise ConfigError(f"{n_tokens} image tokens is not 1 pooled token + a square grid (e.g. 577 = 1 + 24 x 24)")
    return side


class HiddenDistiller(nn.Module):
    """Hidden-state distillation through learned projections: one loss per named feature pair.

    Args:
        pairs: feature name -> (student width, teacher width), e.g. {"vision": (256, 768), "decoder.2": (256, 768)}.
            A `nn.Linear(student, teacher)` is learned where the widths differ; otherwise features are compared
            as they are.
        kind: "mse" (mean squared error per token, averaged over the width) or "cosine" (1 - cosine per token).
        projected: feature names that get a learned projection even where the widths are equal.
        image_tokens: feature name -> (student image tokens, teacher image tokens) for features whose sequence
            STARTS with image tokens and continues with tokens both models share (the text encoder's output:
            image tokens, then `<s> prompt </s>`). Those image prefixes are aligned with align_image_tokens.
            A feature named "vision" (or "vision.*") is taken to be image tokens only and needs no entry.

    The teacher's features are detached. Losses are averaged over masks[name] (student tokens), or all tokens.
    """

    def __init__(self, pairs: dict[str, tuple[int, int]], kind: str = "mse",
                 image_tokens: dict[str, tuple[int, int]] | None = None, projected: tuple[str, ...] = ()):
        super().__init__()
        if kind not in HIDDEN_LOSSES:
            raise ConfigError(f"unknown hidden-state loss {kind!r}; valid kinds: {', '.join(HIDDEN_LOSSES)}")
        self.kind = kind
        self.pairs = {name: (int(ds), int(dt)) for name, (ds, dt) in pairs.items()}
        self.image_tokens = dict(image_tokens or {})
        unknown = sorted(set(self.image_tokens) - set(self.pairs))
        if unknown:
            raise ConfigError(f"image_tokens names {unknown[0]!r}, which is not a distilled feature; "
                              f"features: {', '.join(self.pairs)}")
        self.keys = {name: name.replace(".", "_") for name in self.pairs}  # ModuleDict keys may not hold dots
        if len(set(self.keys.values())) != len(self.keys):
            raise ConfigError(f"hidden feature names {', '.join(self.pairs)} collide once '.' becomes '_'; rename one")
        self.proj = nn.ModuleDict({self.keys[n]: nn.Linear(ds, dt) for n, (ds, dt) in self.pairs.items()
                                   if ds != dt or n in projected})

    def forward(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """{name: student [B, N, Ds]}, {name: teacher [B, M, Dt]}, {name: mask [B, N] bool} -> {name: loss}."""
        out = {}
        for name, (_, width) in self.pairs.items():
            for side, features in (("student", student), ("teacher", teacher)):
                if name not in features:
                    got = ", ".join(sorted(features)) or "none"
                    raise ConfigError(f"hidden feature {name!r} missing from the {side} features (got {got})")
            s = student[name]
            key = self.keys[name]
            s = self.proj[key](s) if key in self.proj else s
            if s.shape[-1] != width or teacher[name].shape[-1] != width:
                raise ConfigError(f"hidden feature {name!r}: widths {s.shape[-1]} (student, projected) and "
                                  f"{teacher[name].shape[-1]} (teacher) do not match the pair's teacher width {width}")
            t = self._align(name, teacher[name].detach(), s.shape[1])
            per_token = HIDDEN_LOSSES[self.kind](s.float(), t.float())
            mask = None if masks is None else masks.get(name)
            out[name] = _masked_mean(per_token, mask)
        return out

    def _align(self, name: str, t: torch.Tensor, n_student: int) -> torch.Tensor:
        if name in self.image_tokens:
            img_s, img_t = self.image_tokens[name]
            if t.shape[1] - img_t != n_student - img_s:
                raise ConfigError(f"hidden feature {name!r}: after the image tokens the student has {n_student - img_s} "
                                  f"tokens and the teacher {t.shape[1] - img_t}; they must match")
            return torch.cat([align_image_tokens(t[:, :img_t], img_s), t[:, img_t:]], dim=1)
        if t.shape[1] == n_student:
            return t
        if name == "vision" or name.startswith("vision."):
            return align_image_tokens(t, n_student)
        raise ConfigError(f"hidden feature {name!r}: student has {n_student} tokens and teacher {t.shape[1]}; "
                          f"give image_tokens={{{name!r}: (student, teacher)}} when they start with image tokens")


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_token.mean()
    mask = mask.bool()
    return torch.where(mask, per_token, torch.zeros_like(per_token)).sum() / mask.sum().clamp(min=1)
