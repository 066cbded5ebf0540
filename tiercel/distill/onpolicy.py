"""On-policy distillation (GKD, Agarwal et al. 2024): the student answers, the teacher grades each token.

With probability `distill.on_policy` a batch's answers are replaced by answers the student samples itself
(temperature 1, no top-k), so the teacher's distribution supervises the sequences the student will really
produce at inference.

Sampling is Gumbel-max: at every step each row's logits get Gumbel noise drawn from a generator seeded by that
row's own seed (the run's seed, the step and the record's index; see row_seeds) and the position, and the
argmax is taken. That is an exact sample from softmax(logits). A row's answer ends with </s> by the length of
its dataset answer at the latest (a bound of its own; see _EndBy). So a record's answer does not depend on which
other records share the batch: N processes that split a batch sample what one process does, and a resumed run
samples what the uninterrupted one did.
"""

from __future__ import annotations

from tiercel.distill.data import IGNORE


def row_seeds(seed: int, step: int, micro: int, indices: list[int]) -> list[int]:
    """One sampling seed per record of a micro-batch, from what identifies it in the run (not its row)."""
    import numpy as np

    return [int(np.random.default_rng([seed, step, micro, int(i), 11]).integers(2**62)) for i in indices]


def student_answers(student, batch: dict, tokenizer, max_tokens: int, seeds: list[int], synced: bool = False) -> None:
    """Overwrite batch["labels"] and batch["decoder_input_ids"] in place with the student's sampled answers.

    `seeds`: one per row (row_seeds). `synced`: keep stepping until every process has finished its answers (FSDP,
    whose sharded layers gather their parameters in collectives at every step; called through dist.through_root).
    """
    import torch
    from transformers import LogitsProcessorList

    inputs = batch["student"]
    limits = (batch["labels"] != IGNORE).sum(1).clamp(max=max_tokens + 2).tolist()
    was_training = student.training
    student.eval()
    with torch.no_grad():
        gen = student.generate(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"],
            max_new_tokens=max(limits), min_new_tokens=1, do_sample=False, num_beams=1, no_repeat_ngram_size=0,
            logits_processor=LogitsProcessorList([_GumbelNoise(seeds), _EndBy(limits, tokenizer.eos_id)]),
            decoder_start_token_id=tokenizer.eos_id, forced_bos_token_id=tokenizer.bos_id, forced_eos_token_id=None,
            eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, synced_gpus=synced,
        )
    student.train(was_training)
    labels = gen[:, 1:].clone()
    after_eos = (labels == tokenizer.eos_id).int().cumsum(1) - (labels == tokenizer.eos_id).int() > 0
    labels[after_eos] = IGNORE
    labels[labels == tokenizer.pad_id] = IGNORE
    dec = gen[:, :-1].clone()
    dec[:, 1:][labels[:, :-1] == IGNORE] = tokenizer.pad_id
    batch["labels"], batch["decoder_input_ids"] = labels, dec


class _GumbelNoise:
    """Logits processor: adds Gumbel(0, 1) noise from each row's own generator, seeded by (row seed, position),
    so that the greedy pick that follows is a sample from softmax(logits). Masked (-inf) tokens stay masked."""

    def __init__(self, seeds: list[int]):
        self.seeds = seeds

    def __call__(self, input_ids, scores):
        import torch

        position = input_ids.shape[1]
        noise = torch.empty(scores.shape, dtype=torch.float64)
        for row, seed in enumerate(self.seeds):
            gen = torch.Generator().manual_seed((seed + 1_000_003 * position) % 2**63)
            noise[row].uniform_(1e-12, 1.0, generator=gen)
        gumbel = -torch.log(-torch.log(noise))
        return (scores.double() + gumbel.to(scores.device)).to(scores.dtype)


class _EndBy:
    """Logits processor: forces </s> as the last token a row may have (its dataset answer's length), so each row
    ends by a bound of its own, not by the batch's longest answer (as generate's forced_eos_token_id would)."""

    def __init__(self, limits: list[int], eos_id: int):
        self.limits, self.eos_id = limits, eos_id

    def __call__(self, input_ids, scores):
        label = input_ids.shape[1] - 1  # the label index being chosen: input_ids starts with the decoder start
        for row, limit in enumerate(self.limits):
            if label >= limit - 1:
                scores[row] = float("-inf")
                scores[row, self.eos_id] = 0.0
        return scores
