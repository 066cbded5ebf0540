"""On-policy distillation (GKD, Agarwal et al. 2024): the student answers, the teacher grades each token.

With probability `distill.on_policy` a batch's answers are replaced by answers the student samples itself
(temperature 1, no top-k), so the teacher's distribution supervises the sequences the student will really
produce at inference.

Sampling is Gumbel-max: at every step each row's logits get Gumbel noise drawn from a generator seeded by that
row's own seed (the run's seed, the step and the record's index; see row_seeds) and the position, and the
argmax is taken. That is an exact sample from softmax(logits), and it does not depend on which other records
share the batch: N processes that split a batch sample what one process does, and a resumed run samples what
the uninterrupted one did.
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
    width = min(batch["labels"].shape[1], max_tokens + 2)
    was_training = student.training
    student.eval()
    with torch.no_grad():
        gen = student.generate(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"],
            max_new_tokens=width, min_new_tokens=1, do_sample=False, num_beams=1, no_repeat_ngram_size=0,
            logits_processor=LogitsProcessorList([_GumbelNoise(seeds)]),
            decoder_start_token_id=tokenizer.eos_id, forced_bos_token_id=tokenizer.bos_id,
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
