"""On-policy distillation (GKD, Agarwal et al. 2024): the student answers, the teacher grades each token.

With probability `distill.on_policy` a batch's answers are replaced by answers the student samples itself
(temperature 1, no top-k), so the teacher's distribution supervises the sequences the student will really
produce at inference. Sampling uses torch's global RNG, whose state checkpoints save, so resumes stay exact.
"""

from __future__ import annotations

from tiercel.distill.data import IGNORE


def student_answers(student, batch: dict, tokenizer, max_tokens: int, synced: bool = False) -> None:
    """Overwrite batch["labels"] and batch["decoder_input_ids"] in place with the student's sampled answers.

    `synced`: keep stepping until every process has finished its answers (FSDP, whose sharded layers gather
    their parameters in collectives at every step; called through dist.through_root)."""
    import torch

    inputs = batch["student"]
    width = min(batch["labels"].shape[1], max_tokens + 2)
    was_training = student.training
    student.eval()
    with torch.no_grad():
        gen = student.generate(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"],
            max_new_tokens=width, min_new_tokens=1, do_sample=True, top_k=0, num_beams=1, no_repeat_ngram_size=0,
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
