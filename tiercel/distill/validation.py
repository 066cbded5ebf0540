"""Periodic validation during training: teacher-forced loss and token accuracy on the val split.

Runs on the main process only, or under FSDP on every process in lockstep (its sharded parameters are
gathered by collectives; see dist.through_root) with the main process reporting, on the first
`distill.eval_limit` val records in file order, so numbers are comparable across steps and runs. Task metrics
of generated answers are computed by `tiercel eval` on the finished student; here only what is cheap enough to
run every few hundred steps.
"""

from __future__ import annotations


def validate_run(run, step: int) -> dict:
    """Val loss / token accuracy of the student at `step` (empty dict on non-main processes or without val data)."""
    from tiercel.distill.dist import sharded, through_root

    if run.recipe.data.val is None or not (run.dist.main or sharded(run)):
        return {}
    result = through_root(run, lambda student: _validate(run, student, step))
    return result if run.dist.main else {}


def _validate(run, student, step: int) -> dict:
    import torch

    from tiercel.distill.data import IGNORE, SFTData, collate, to_device
    from tiercel.distill.losses import ce_loss
    from tiercel.distill.objective import run_model

    recipe = run.recipe
    if run.val_data is None:
        d = recipe.data
        run.val_data = SFTData(d.val, d.root, run.tokenizer, d.max_prompt_tokens, d.max_answer_tokens, recipe.distill.image_cache, d.quad_order, d.cut_answers)
    data = run.val_data
    n = min(len(data), recipe.distill.eval_limit)
    was_training = student.training
    student.eval()
    loss_sum = correct = total = 0.0
    with torch.no_grad():
        for start in range(0, n, recipe.distill.batch_size):
            idx = list(range(start, min(n, start + recipe.distill.batch_size)))
            batch = to_device(collate(data, idx, {"student": run.inputs["student"]}, run.tokenizer.eos_id), run.dist.device)
            out = run_model(student, batch["student"], batch["decoder_input_ids"])
            mask = batch["labels"] != IGNORE
            tokens = int(mask.sum())
            loss_sum += float(ce_loss(out.logits, batch["labels"])) * tokens
            correct += float(((out.logits.argmax(-1) == batch["labels"]) & mask).sum())
            total += tokens
    student.train(was_training)
    return {"step": step, "loss": loss_sum / max(total, 1), "token_accuracy": correct / max(total, 1), "records": n}
