"""`tiercel distill generate-answers RECIPE`: a teacher of any family answers every training prompt.

Builds the recipe's adapter (florence: a Florence-2/Falcon checkpoint with its own tokenizer; geochat: a
LLaVA-format GeoChat directory) and runs tiercel.distill.teachers.generate_answers. Under torchrun, process r
answers records r, r+N, ... into its own part file; the main process joins the parts into teacher.answers.
Each part resumes on its own after a crash. Knows recipes and adapters, not the training loop.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from tiercel import progress
from tiercel.data.sft import iter_records, write_records
from tiercel.errors import ConfigError


def answers_path(recipe) -> Path:
    return Path(recipe.teacher.answers or Path(recipe.out) / "teacher_answers.json")


def make_adapter(recipe, device: str):
    """The TeacherAdapter a recipe's teacher section describes."""
    from tiercel.distill.teachers import FlorenceAdapter, GeoChatAdapter

    if recipe.teacher.adapter == "geochat":
        return GeoChatAdapter.from_dir(recipe.teacher.path, device=device, max_new_tokens=recipe.data.max_answer_tokens)
    from tiercel.models import load_checkpoint

    ckpt = load_checkpoint(recipe.teacher.path)
    ckpt.model.to(device).eval()
    return FlorenceAdapter(ckpt.model, ckpt.tokenizer, ckpt.shape.image_size, ckpt.mean, ckpt.std,
                           max_new_tokens=recipe.data.max_answer_tokens)


def generate_for_recipe(recipe) -> dict:
    """Write the teacher's answers for the recipe's training file; returns the (main process's) summary."""
    from tiercel.distill.dist import barrier, setup, teardown
    from tiercel.distill.teachers import generate_answers

    if recipe.teacher.kind != "generated":
        raise ConfigError("generate-answers needs teacher.kind generated (with teacher.path and teacher.adapter)")
    dist = setup()
    try:
        out = answers_path(recipe)
        part = out if dist.world == 1 else out.with_name(f"{out.stem}.rank{dist.rank}{out.suffix}")
        records = itertools.islice(iter_records(recipe.data.train, strict=False), dist.rank, None, dist.world)
        total = None
        if progress.active() and dist.main:  # one more pass over the file, for an ETA someone will see
            total = len(range(dist.rank, sum(1 for _ in iter_records(recipe.data.train, strict=False)), dist.world))
        with progress.track("generate-answers", total, "records", enabled=dist.main) as bar:
            summary = generate_answers(make_adapter(recipe, dist.device), records, recipe.data.root, part, progress=bar.advance)
        barrier(dist)
        if dist.world > 1 and dist.main:
            parts = [out.with_name(f"{out.stem}.rank{r}{out.suffix}") for r in range(dist.world)]
            write_records(out, (rec for p in parts for rec in iter_records(p)))
            summary["joined_parts"] = [str(p) for p in parts]
        return summary
    finally:
        teardown(dist)
