"""Greedy and beam-search decoding in numpy, step for step what transformers' `generate` does.

The decoder is a `step(tokens [N]) -> logits [N, V]` callable that keeps its own KV cache, plus
`reorder(rows)` for beam search and, optionally, `keep_rows(rows)`: greedy decoding then drops finished rows
from the decoder's batch (KV cache, encoder states, mask) once a quarter of the rows it holds have finished,
so a batch of short and long answers (run_all: a class name next to a polygon list) stops paying for the
short ones. Rows never interact in the decoder, so the tokens are the same as without it. Logits processors, in transformers' order: no-repeat n-gram (which counts
the decoder start token), the answer grammar when a `constraint` is given (tiercel.runtime.constrain: it masks
what each row's task grammar does not allow, and does nothing at the forced steps), forced bos on the first new
token, forced eos on the last one allowed by `max_new_tokens`. Beam search follows transformers' vectorised implementation (length penalty, the
`early_stopping` heuristic, 2 x num_beams candidates per step) so both pick the same sequence.

Knows nothing about graphs, images or tasks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from tiercel.errors import ConfigError

_NEG = np.float32(-1.0e9)
# Beams multiply the decoder's batch and KV cache; 32 is ten times Florence-2's 3 (more is a typo, and 10^6
# beams asked for 23 GB before the first step).
MAX_BEAMS = 32


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings; the bundle's manifest holds the defaults, calls may override any field."""

    decoder_start_token_id: int = 2
    bos_token_id: int = 0
    eos_token_id: int = 2
    pad_token_id: int = 1
    forced_bos_token_id: int | None = 0
    forced_eos_token_id: int | None = 2
    num_beams: int = 3
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 256
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    # greedy with a grammar: append a token the grammar forces without a decoder step of its own, where the
    # decoder takes several tokens per call (tiercel.runtime.constrain); off: one token per step (a latency profile)
    jump_forward: bool = True

    def with_overrides(self, **overrides) -> GenerationConfig:
        valid = {f.name for f in fields(self)}
        unknown = sorted(k for k in overrides if k not in valid)
        if unknown:
            raise ConfigError(f"unknown generation setting '{unknown[0]}'; valid: {', '.join(sorted(valid))}")
        cfg = replace(self, **{k: v for k, v in overrides.items() if v is not None})
        if cfg.num_beams < 1 or cfg.max_new_tokens < 1:
            raise ConfigError(f"num_beams and max_new_tokens must be >= 1 (got {cfg.num_beams}, {cfg.max_new_tokens})")
        if cfg.num_beams > MAX_BEAMS:
            raise ConfigError(f"num_beams: must be {MAX_BEAMS} or less (got {cfg.num_beams})")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def process(scores: np.ndarray, seqs: np.ndarray, cfg: GenerationConfig, constraint=None, items=None) -> np.ndarray:
    """Apply the logits processors to `scores` [N, V] given the sequences so far [N, cur_len].

    `constraint` (tiercel.runtime.constrain.Constraint): the grammar mask; `items` [N] are the batch items of the
    rows (greedy: the rows still held, beam search: row // num_beams). The n-gram ban is lifted in a row where it
    would leave none of the tokens its grammar allows.
    """
    cur_len = seqs.shape[1]
    allowed = None if constraint is None else constraint.allowed(seqs, items, scores.shape[-1])
    n = cfg.no_repeat_ngram_size
    if n and cur_len + 1 >= n:
        for row, seq in enumerate(seqs.tolist()):
            prefix = tuple(seq[cur_len + 1 - n :]) if n > 1 else ()
            banned = list({seq[i + n - 1] for i in range(cur_len - n + 1) if tuple(seq[i : i + n - 1]) == prefix})
            if allowed is not None and banned and _leaves_nothing(allowed[row], banned, constraint.cutback[row], cfg):
                continue
            scores[row, banned] = -np.inf
    if allowed is not None:
        scores[~allowed] = -np.inf
    forced = forced_token(cur_len, cfg)
    if forced is not None:
        scores[:] = -np.inf
        scores[:, forced] = 0
    return scores


def _leaves_nothing(allowed: np.ndarray, banned: list[int], cutback: bool, cfg: GenerationConfig) -> bool:
    """Whether banning `banned` leaves a row none of the tokens its grammar allows (an eos allowed only to cut an
    open structure back is no real choice)."""
    real = allowed.copy()
    if cutback:
        real[cfg.eos_token_id] = False
    return real[banned].sum() == real.sum()


def forced_token(cur_len: int, cfg: GenerationConfig) -> int | None:
    """The token every row must take next with `cur_len` tokens so far (forced bos / forced eos), or None."""
    forced = None
    if cur_len == 1 and cfg.forced_bos_token_id is not None:
        forced = cfg.forced_bos_token_id
    if cur_len == cfg.max_new_tokens and cfg.forced_eos_token_id is not None:  # max_length - 1, start token counted
        forced = cfg.forced_eos_token_id
    return forced


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)  # no copy of fp32 logits
    shifted = x - x.max(axis=-1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # in place: one [N, V] array less a step
    return shifted


def _trim(seq, cfg: GenerationConfig) -> list[int]:
    """Generated ids after the decoder start, up to and including the first eos."""
    out = []
    for token in list(seq)[1:]:
        out.append(int(token))
        if token == cfg.eos_token_id:
            break
    return out


def greedy(decoder, batch: int, cfg: GenerationConfig, constraint=None) -> list[list[int]]:
    """Greedy decoding of `batch` rows; finished rows get pad tokens, and leave the decoder's batch when it
    has `keep_rows` (see the module docstring), or are fed pads until all finish when it has not.

    A decoder with `step_argmax(tokens) -> ids [N]` (the argmax of the step's logits, taken where they are, e.g.
    on a GPU) is used that way when no processor needs the scores (no_repeat_ngram_size 0): forced tokens then
    replace the argmax, which is what `process` + argmax gives, and the logits never come to the host. A
    `constraint` needs the logits, so the decoder's `step` serves it.
    """
    seqs = np.full((batch, 1), cfg.decoder_start_token_id, dtype=np.int64)
    done = np.zeros(batch, dtype=bool)
    held = np.arange(batch)  # the rows the decoder holds, in its order
    compact = hasattr(decoder, "keep_rows")
    argmax_step = None if cfg.no_repeat_ngram_size or constraint else getattr(decoder, "step_argmax", None)
    jump = cfg.jump_forward and constraint is not None and getattr(decoder, "multi_token", False)
    draft = None  # jump-forward: bool [held] of the rows whose last token the grammar drafted, not yet checked
    while seqs.shape[1] <= cfg.max_new_tokens:
        if argmax_step is not None:
            best = np.asarray(argmax_step(seqs[held, -1]), dtype=np.int64)
            forced = forced_token(seqs.shape[1], cfg)
            best = best if forced is None else np.full_like(best, forced)
        else:
            if draft is None:
                scores = decoder.step(seqs[held, -1]).astype(np.float32)
            else:
                scores = _check_draft(decoder, seqs, held, done, draft, cfg, constraint)
            best = process(scores, seqs[held], cfg, constraint, held).argmax(axis=-1)
        seqs, draft = _append(seqs, held, done, best, cfg), None
        if done.all():
            break
        if jump and seqs.shape[1] < cfg.max_new_tokens:  # room for the draft and the step that checks it
            live = ~done[held]
            only = constraint.forced(seqs[held], held, scores.shape[-1], live)
            if only is not None:
                seqs, draft = _append(seqs, held, done, only, cfg), live
                if done.all():
                    break
        finished = done[held]
        if compact and finished.sum() * 4 >= len(held):
            decoder.keep_rows(np.flatnonzero(~finished))
            held = held[~finished]
            draft = None if draft is None else draft[~finished]
    return [_trim(s, cfg) for s in seqs]


def _check_draft(decoder, seqs, held, done, draft, cfg: GenerationConfig, constraint) -> np.ndarray:
    """One decoder step over the last two tokens (the chosen one and the grammar's draft): the first position's
    logits choose as a step of its own would have, and where that is not the draft (the grammar leaves only an
    eos that cuts the structure back) the row takes it instead; returns the second position's logits."""
    both = decoder.step(seqs[held, -2:]).astype(np.float32)
    check = process(both[:, 0], seqs[held, :-1], cfg, constraint, held).argmax(axis=-1)
    cut = draft & (check != seqs[held, -1])
    seqs[held[cut], -1] = check[cut]
    done[held[cut]] |= check[cut] == cfg.eos_token_id
    constraint.jumped += int((draft & ~cut).sum())
    return both[:, 1]


def _append(seqs: np.ndarray, held: np.ndarray, done: np.ndarray, tokens: np.ndarray, cfg: GenerationConfig) -> np.ndarray:
    """seqs with one more column: `tokens` for the held rows not done, pad elsewhere; rows that took eos are
    marked in `done` (in place)."""
    nxt = np.full(seqs.shape[0], cfg.pad_token_id, dtype=np.int64)
    nxt[held] = np.where(done[held], cfg.pad_token_id, tokens)
    done |= nxt == cfg.eos_token_id
    return np.concatenate([seqs, nxt[:, None]], axis=1)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, largest first (ties: lowest index first): exactly the first k of a stable
    sort of -x, in a few vectorised passes. A beam step ranks num_beams x vocabulary candidates per item (154k for
    Florence-2's 3 beams); sorting them all took 16 ms a step per item on one Zen 4 core, more than an int8
    decoder step (benchmarks/results/beam_search_cpu.md).

    A floor at or below each row's k-th largest value is the k-th largest of the maxima of 64 blocks (a subset's
    k-th largest cannot exceed the whole row's); every value at or above it is a candidate, and a stable sort of
    the candidates in index order ranks them as the full sort would. A masked row (constrained decoding leaves
    -inf almost everywhere) takes its finite values as candidates; many candidates are narrowed by a partition.
    """
    rows, n = x.shape
    if k >= n or np.isnan(x).any():  # NaN: the sort's order (NaN last) is not the comparisons'
        return np.argsort(-x, axis=-1, kind="stable")[:, :k]
    blocks = max(k, 64)
    if n >= 16 * blocks:
        size = n // blocks
        maxima = x[:, : size * blocks].reshape(rows, blocks, size).max(axis=-1)
        floor = np.partition(maxima, blocks - k, axis=-1)[:, blocks - k]
    else:
        floor = np.full(rows, -np.inf, x.dtype)
    out = np.empty((rows, k), np.int64)
    for r, row in enumerate(x):
        cand = np.flatnonzero(row >= floor[r]) if floor[r] > -np.inf else np.flatnonzero(row > -np.inf)
        if cand.size > 4 * k + 256:  # a flat row: keep the candidates at or above their own k-th largest
            values = row[cand]
            cand = cand[values >= np.partition(values, values.size - k)[values.size - k]]
        if cand.size < k:  # fewer than k finite values: the lowest-index -inf fill up, as in the sort
            cand = np.sort(np.concatenate([cand, np.flatnonzero(row == -np.inf)[: k - cand.size]]))
        out[r] = cand[np.argsort(-row[cand], kind="stable")[:k]]
    return out


def beam_search(decoder, batch: int, cfg: GenerationConfig, constraint=None) -> list[list[int]]:
    """Beam search over `batch` items; the decoder runs batch * num_beams rows (item-major)."""
    k, max_len, lp = cfg.num_beams, cfg.max_new_tokens + 1, cfg.length_penalty
    keep = 2 * k  # transformers keeps (1 + number of eos ids) * num_beams candidates
    running = np.full((batch, k, max_len), cfg.pad_token_id, dtype=np.int64)
    running[:, :, 0] = cfg.decoder_start_token_id
    finished_seqs = running.copy()
    running_scores = np.zeros((batch, k), np.float32)
    running_scores[:, 1:] = _NEG
    beam_scores = np.full((batch, k), _NEG, np.float32)
    is_finished = np.zeros((batch, k), bool)
    improvable = np.ones((batch, 1), bool)
    top_mask = np.arange(keep) < k
    rows = np.arange(batch)[:, None]
    items = np.repeat(np.arange(batch), k)
    cur_len = 1
    while True:
        logits = decoder.step(running[:, :, cur_len - 1].reshape(-1))
        logp = process(_log_softmax(logits), running[:, :, :cur_len].reshape(batch * k, cur_len), cfg, constraint, items)
        vocab = logp.shape[-1]
        acc = (logp.reshape(batch, k, vocab) + running_scores[:, :, None]).reshape(batch, k * vocab)
        idx = _topk(acc, keep)
        top_lp, parent, token = np.take_along_axis(acc, idx, 1), idx // vocab, idx % vocab
        top_seqs = running[rows, parent].copy()
        top_seqs[:, :, cur_len] = token
        hits = (token == cfg.eos_token_id) | (cur_len + 1 >= max_len)
        # live beams: the best k candidates that did not just stop
        run_lp = top_lp + hits.astype(np.float32) * _NEG
        nxt = _topk(run_lp, k)
        running, running_scores = top_seqs[rows, nxt], np.take_along_axis(run_lp, nxt, 1)
        beam_parent = np.take_along_axis(parent, nxt, 1)
        # finished beams: merge the candidates that stopped among the top k with the ones kept so far
        just_done = hits & top_mask[None, :]
        scored = top_lp / np.float32(cur_len ** lp)
        if cfg.early_stopping is True:
            scored = scored + (is_finished.all(axis=1, keepdims=True)).astype(np.float32) * _NEG
        scored = scored + (~improvable).astype(np.float32) * _NEG + (~just_done).astype(np.float32) * _NEG
        m_seqs = np.concatenate([finished_seqs, top_seqs], 1)
        m_scores = np.concatenate([beam_scores, scored], 1)
        m_done = np.concatenate([is_finished, just_done], 1)
        best = _topk(m_scores, k)
        finished_seqs, beam_scores, is_finished = m_seqs[rows, best], np.take_along_axis(m_scores, best, 1), np.take_along_axis(m_done, best, 1)
        decoder.reorder((beam_parent + rows * k).reshape(-1))
        cur_len += 1
        hyp_len = (max_len - 1) if (cfg.early_stopping == "never" and lp > 0) else (cur_len - 1)
        best_running = running_scores[:, :1] / np.float32(hyp_len ** lp)
        worst_done = np.where(is_finished, beam_scores.min(axis=1, keepdims=True), _NEG)
        improvable = improvable & (best_running > worst_done).any(axis=-1, keepdims=True)
        open_beam = not (is_finished.all() and cfg.early_stopping is True)
        if not (improvable.any() and open_beam and not hits.all()):
            break
    return [_trim(finished_seqs[b, 0], cfg) for b in range(batch)]


def generate(decoder, batch: int, cfg: GenerationConfig, constraint=None) -> list[list[int]]:
    """Greedy (num_beams 1) or beam search; `constraint` masks each row by its item's answer grammar."""
    search = greedy if cfg.num_beams == 1 else beam_search
    out = search(decoder, batch, cfg, constraint)
    return out if constraint is None else constraint.rollback(out)
