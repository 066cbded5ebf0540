"""Resolve a recipe's teacher and tokenizer before training starts, with one-line errors for bad combinations.

Knows recipes and checkpoints; nothing about the training loop.
"""

from __future__ import annotations

from pathlib import Path

from tiercel.distill.dist import Dist, barrier
from tiercel.errors import ConfigError
from tiercel.runtime.tokenizer import TextTokenizer, train_bpe


def load_teacher(recipe, dist: Dist):
    """The teacher Checkpoint for logit/hidden KD (teacher.kind checkpoint), else None.

    A cached teacher is not loaded: its top-k logits are on disk. A generated-answers teacher has already
    written its answers (`tiercel distill generate-answers`), which become the training data.
    """
    if recipe.teacher.spec.logits != "live":
        return None
    import torch

    from tiercel.models import load_checkpoint

    dtype = "bfloat16" if recipe.distill.precision == "bf16" and dist.device.startswith("cuda") else "float32"
    teacher = load_checkpoint(recipe.teacher.path, dtype=dtype)
    teacher.model.to(dist.device).eval().requires_grad_(False)
    del torch
    return teacher


def check_inputs(recipe, device: str) -> None:
    """Refuse, before any work, what would fail later: data files and the image root that cannot be read (a
    missing data.val used to fail after all the training) and fp16 autocast off CUDA. One ConfigError lists all."""
    fields = ("val",) if recipe.teacher.spec.trains_on == "answers" else ("train", "val")  # generated: trains on answers
    problems = data_problems(recipe.data, fields) + precision_problems(recipe, device)
    if problems:
        raise ConfigError("recipe: " + "; ".join(problems))


def data_problems(data, fields) -> list[str]:
    """`data.FIELD: PATH: why` for each of `fields` that is set but not a readable file, and for data.root."""
    import os

    problems = []
    for field in fields:
        path = getattr(data, field)
        if path is not None and not (Path(path).is_file() and os.access(path, os.R_OK)):
            problems.append(f"data.{field}: {path}: {'not readable' if Path(path).is_file() else 'file not found'}")
    if not (Path(data.root).is_dir() and os.access(data.root, os.R_OK | os.X_OK)):
        problems.append(f"data.root: {data.root}: {'not readable' if Path(data.root).is_dir() else 'folder not found'}")
    return problems


def precision_problems(recipe, device: str) -> list[str]:
    """fp16 autocast is for CUDA GPUs; elsewhere the recipe must ask for bf16 or fp32."""
    if recipe.distill.precision == "fp16" and not str(device).startswith("cuda"):
        return [f"distill.precision: fp16 needs a CUDA GPU (running on {device}); use bf16 or fp32"]
    return []


def training_file(recipe) -> Path:
    """The file the student trains on: the data, or the teacher's generated answers."""
    if recipe.teacher.spec.trains_on != "answers":
        return Path(recipe.data.train)
    from tiercel.distill.answers import answers_path

    answers = answers_path(recipe)
    if not answers.is_file():
        raise ConfigError(f"{answers}: no teacher answers yet; run `tiercel distill generate-answers RECIPE` first")
    return answers


def resolve_tokenizer(recipe, teacher, run_dir: Path, dist: Dist) -> TextTokenizer:
    """The run's tokenizer (tokenizer.source), saved as <run>/tokenizer.json so a resume reuses it."""
    source = recipe.tokenizer.source
    saved = run_dir / "tokenizer.json"
    # Every process looks before any may write: rank 0 saves the tokenizer below, and a process that saw that
    # file and returned early would skip the barriers rank 0 waits in (a deadlock with a slow-starting rank).
    resumed = saved.is_file()
    barrier(dist)
    if resumed:
        return TextTokenizer.from_dir(saved)
    if source == "teacher":
        tok = teacher.tokenizer if teacher is not None else _teacher_tokenizer(recipe)
    elif source == "file":
        tok = TextTokenizer.from_dir(recipe.tokenizer.path)
        tok.ensure_image_token()
    elif source == "student":
        if recipe.student.checkpoint is None:
            raise ConfigError("tokenizer.source student needs student.checkpoint")
        tok = _checkpoint_tokenizer(recipe.student.checkpoint)
    else:
        tok = _trained(recipe, run_dir, dist)
    if teacher is not None:
        from tiercel.distill.teachers import check_same_vocabulary

        check_same_vocabulary(teacher.tokenizer, tok)
    if dist.main and not saved.is_file():
        tok.save(run_dir)
    barrier(dist)
    return tok


def _checkpoint_tokenizer(path) -> TextTokenizer:
    from tiercel.models.checkpoint import find_checkpoint_dir

    tok = TextTokenizer.from_dir(find_checkpoint_dir(path))
    tok.ensure_image_token()
    return tok


def _teacher_tokenizer(recipe) -> TextTokenizer:
    if recipe.teacher.spec.needs_cache and recipe.teacher.cache and (Path(recipe.teacher.cache) / "tokenizer.json").is_file():
        return TextTokenizer.from_dir(recipe.teacher.cache)
    if recipe.teacher.path is None:
        raise ConfigError("tokenizer.source teacher needs teacher.path")
    return _checkpoint_tokenizer(recipe.teacher.path)


def _trained(recipe, run_dir: Path, dist: Dist) -> TextTokenizer:
    """Train the BPE tokenizer on rank 0 from the training prompts and answers; the others read it."""
    from tiercel.data.sft import iter_records

    saved = run_dir / "tokenizer.json"
    if dist.main:
        texts = (t for r in iter_records(training_file(recipe)) for t in (r.prompt, r.answer))
        train_bpe(texts, vocab_size=recipe.tokenizer.vocab_size).save(run_dir)
    barrier(dist)
    return TextTokenizer.from_dir(saved)
