"""Training checkpoints: atomic, self-contained, and enough to resume a run exactly.

runs/NAME/checkpoints/step_000200/ holds the student in the native layout (loadable by
tiercel.models.load_checkpoint, exportable as is), training_heads.safetensors (the objective's own tensors:
distill.hidden's projections and distill.dense's heads; <out>/student keeps it too, so a new run started from
the student goes on with them) and trainer_state.pt: optimizer, scheduler, step and RNG states. `latest` names
the newest complete checkpoint; it is written after the checkpoint directory has been renamed into place, so a
crash mid-save leaves the previous one in charge. Resuming reads trainer_state.pt with
torch.load(weights_only=True) and the heads with safetensors, so no code in them can run, and checks that the
checkpoint's tensors fit the recipe's student and heads before it loads any of them.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from tiercel.errors import CheckpointError
from tiercel.fileio import atomic_dir, atomic_path, atomic_write_text
from tiercel.models.checkpoint import torch_load, unsafe_globals
from tiercel.models.writer import tiercel_meta, write_native

# trainer_state.pt layout: 2 holds RNG states as tensors and lists, loadable with weights_only=True
STATE_FORMAT = 2
HEADS = "training_heads.safetensors"  # every tensor of the objective outside the student, named as in its state dict


def heads_of(state: dict) -> dict:
    """The entries of a DistillObjective state dict that are not the student's: distiller.* (distill.hidden's
    projections), dense_answer.* and dense_objects.* (distill.dense's heads)."""
    return {k: v for k, v in state.items() if not k.startswith("student.")}


def full_states(objective, optimizer, sharded: bool):
    """(student state dict, heads state dict, optimizer state dict or None) for saving.

    For FSDP the parameters are sharded DTensors: torch.distributed.checkpoint gathers the student and the heads
    in full (a collective, so every process must call this); the optimizer state stays sharded and each process
    writes its own part with save_optimizer_shard (so an FSDP run resumes with the same number of processes).
    """
    if not sharded:
        return *_split(objective.state_dict()), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return *_split(get_model_state_dict(objective, options=opts)), None


def _split(full: dict) -> tuple[dict, dict]:
    """A DistillObjective state dict as (the student's, named as in the student; the heads, heads_of)."""
    return {k.removeprefix("student."): v for k, v in full.items() if k.startswith("student.")}, heads_of(full)


def save_optimizer_shard(ckpt: Path, rank: int, optimizer) -> None:
    """FSDP: this process's optimizer shard, next to the checkpoint's weights (fileio.atomic_path)."""
    import torch

    with atomic_path(ckpt / f"optimizer.rank{rank}.pt") as tmp:
        torch.save(optimizer.state_dict(), tmp)


def save(run_dir: Path, step: int, objective, optimizer, scheduler, tokenizer, extra_meta: dict, keep: int,
         states: tuple | None = None, publish: bool = True, train_seconds: float = 0.0) -> Path:
    """Write checkpoint `step`; with `publish`, point `latest` at it and prune beyond `keep` (mark_latest).

    `states` is full_states(...) when the caller gathered them (FSDP); by default they are read here.
    """
    import torch
    from safetensors.torch import save_file

    ckpt_root = run_dir / "checkpoints"
    dst = ckpt_root / f"step_{step:06d}"
    student = objective.student
    model_state, heads, optim_state = states or full_states(objective, optimizer, sharded=False)
    meta = tiercel_meta(student, provenance=extra_meta)
    with atomic_dir(dst, overwrite=True) as tmp:
        write_native(tmp, student, tokenizer, meta, state_dict=model_state)
        save_file({k: v.detach().cpu().contiguous() for k, v in heads.items()}, str(tmp / HEADS))  # written when empty too
        state = {
            "format": STATE_FORMAT,
            "step": step,
            "optimizer": optim_state,
            "scheduler": scheduler.state_dict(),
            "distiller": None,  # the heads are in HEADS; checkpoints before it kept the projections here
            "rng": rng_states(),
            "train_seconds": float(train_seconds),  # wall time of the steps so far, over every resume
        }
        torch.save(state, tmp / "trainer_state.pt")
    if publish:
        mark_latest(run_dir, dst, keep)
    return dst


CHECKPOINT_NAME = re.compile(r"step_\d{6,}")  # what save() names a checkpoint folder: step_000200


def ours(path: Path) -> bool:
    """Whether `path` is a checkpoint folder save() wrote: its name, a real folder, and its trainer state."""
    return (CHECKPOINT_NAME.fullmatch(path.name) is not None and path.is_dir() and not path.is_symlink()
            and (path / "trainer_state.pt").is_file())


def mark_latest(run_dir: Path, ckpt: Path, keep: int) -> None:
    """Point `latest` at a complete checkpoint and remove all but the newest `keep` of the checkpoints save()
    wrote (by step); anything else in checkpoints/ (a user's step_000200.bak) is left as it is."""
    ckpt_root = run_dir / "checkpoints"
    atomic_write_text(ckpt_root / "latest", ckpt.name + "\n")
    mine = sorted((p for p in ckpt_root.iterdir() if ours(p)), key=lambda p: int(p.name[5:]))
    for old in mine[:-keep]:
        if old != ckpt:
            shutil.rmtree(old, ignore_errors=True)


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None. CheckpointError when `latest` names anything
    but a checkpoint folder of this run (another run's, through `..` or an absolute path)."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace").strip()
    if CHECKPOINT_NAME.fullmatch(name) is None:
        raise CheckpointError(f"{pointer}: names {name[:80]!r}, not a checkpoint of this run (step_NNNNNN); "
                              "write the newest checkpoints/step_* folder's name into it, or start a new run in another out")
    path = run_dir / "checkpoints" / name
    return path if ours(path) else None


def restore(path: Path, objective, optimizer, scheduler, sharded: bool = False, rank: int = 0) -> tuple[int, float]:
    """Load weights, heads, optimizer, scheduler and RNG states from checkpoint `path`; returns its step and the
    wall seconds of training up to it (0 for a checkpoint written before they were recorded).

    Nothing is loaded until the checkpoint is known to fit the recipe's student and distillation heads. With
    `sharded` (FSDP) the full states are scattered into the shards by torch.distributed.checkpoint. A checkpoint
    written before HEADS existed has distill.dense's heads nowhere: they start again from their initial weights,
    with a warning, since the rest of the run can still go on.
    """

    state = load_state(path / "trainer_state.pt")
    if state["step"] != int(path.name[5:]):
        raise CheckpointError(f"{path / 'trainer_state.pt'}: holds step {state['step']}, but its folder is {path.name}; "
                              f"{restart_hint(path)}")
    weights = load_tensors(path / "model.safetensors", restart_hint(path))
    heads, complete = saved_heads(path, state)
    mine = heads_of(objective.state_dict())
    _check_fits(path, objective, weights, heads, mine, complete)
    optim_state = _optimizer_state(path, state, sharded, rank)
    lost = sorted(k for k in mine if k not in heads)
    if lost and rank == 0:
        print(f"warning: {path}: written before checkpoints kept the distill.dense heads ({', '.join(lost)}); they "
              "start again from their initial weights, so this run will not end exactly as an unbroken one", file=sys.stderr)
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        full = {**{f"student.{k}": v for k, v in weights.items()}, **heads}
        set_model_state_dict(objective, full, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        objective.student.load_state_dict(weights, strict=False)
        objective.student.tie_weights()
        objective.load_state_dict(heads, strict=False)
    _fitting(path, "optimizer", lambda: optimizer.load_state_dict(optim_state))
    scheduler.load_state_dict(state["scheduler"])
    set_rng_states(state["rng"])
    return int(state["step"]), float(state.get("train_seconds", 0.0))


def saved_heads(path: Path, state: dict) -> tuple[dict, bool]:
    """A checkpoint's heads, and whether they are complete: HEADS, or for a checkpoint written before it the
    hidden-state projections trainer_state.pt held (the dense heads were not saved then)."""

    if (path / HEADS).is_file():
        return load_tensors(path / HEADS, restart_hint(path)), True
    return {f"distiller.{k}": v for k, v in (state.get("distiller") or {}).items()}, False


def start_heads(folder: Path, objective) -> dict:
    """At the start of a run from a tiercel student (student.init checkpoint, student.heads checkpoint): load the
    heads saved beside it (HEADS, in a checkpoint folder or <out>/student) wherever name and shape fit the
    recipe's, so the student is not trained against freshly drawn heads. Returns the names loaded and fresh."""

    mine, file = heads_of(objective.state_dict()), Path(folder) / HEADS
    saved = load_tensors(file, "start the run with student.heads: fresh, or from a student whose heads are whole") if file.is_file() else {}
    fits = {k: v for k, v in saved.items() if k in mine and tuple(v.shape) == tuple(mine[k].shape)}
    objective.load_state_dict(fits, strict=False)
    return {"loaded": sorted(fits), "fresh": sorted(set(mine) - set(fits))}


def _optimizer_state(path: Path, state: dict, sharded: bool, rank: int) -> dict:
    """The optimizer state: in trainer_state.pt, or under FSDP this process's shard (loaded weights_only)."""
    if not sharded:
        return state["optimizer"]
    shard = path / f"optimizer.rank{rank}.pt"
    if not shard.is_file():
        raise CheckpointError(f"{shard}: missing; an FSDP run resumes with the same number of processes it was saved with")
    return torch_load(shard, "not an optimizer state tiercel can read safely", restart_hint(path))


def _check_fits(path: Path, objective, weights: dict, heads: dict, mine: dict, complete: bool) -> None:
    """CheckpointError unless the checkpoint's tensors have the names and shapes of the recipe's student and its
    heads `mine` (a changed student, distill.hidden or distill.dense since the run started). Without `complete`
    (a checkpoint from before HEADS) the dense heads may be missing."""
    _same_tensors(path, "student", weights, objective.student.state_dict(), optional=_tied)
    older = (lambda key: key.startswith("dense_")) if not complete else (lambda key: False)
    _same_tensors(path, "distill.hidden / distill.dense heads", heads, mine, optional=older)


def _tied(key: str) -> bool:
    """Weights the native layout may leave out: they are the shared embedding (tie_weights restores them)."""
    return key.endswith("embed_tokens.weight") or key == "lm_head.weight"


def _same_tensors(path: Path, what: str, saved: dict, model: dict, optional=lambda key: False) -> None:
    missing = [k for k in model if k not in saved and not optional(k)]
    unexpected = [k for k in saved if k not in model]
    wrong = [k for k in saved if k in model and tuple(saved[k].shape) != tuple(model[k].shape)]
    if wrong:
        k = wrong[0]
        why = f"{k}: {list(saved[k].shape)} in the checkpoint, {list(model[k].shape)} in the recipe"
    elif missing:
        why = f"{missing[0]} only in the recipe"
    elif unexpected:
        why = f"{unexpected[0]} only in the checkpoint"
    else:
        return
    raise CheckpointError(f"{path}: checkpoint does not fit the recipe's {what} ({why}); resume with the recipe the "
                          "run started with, or start a new run with another out")


def _fitting(path: Path, what: str, load) -> None:
    """Run `load`; a state torch refuses (e.g. other parameter groups) is one CheckpointError line."""
    try:
        load()
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: checkpoint does not fit the recipe's {what} ({first}); resume with the recipe "
                              "the run started with, or start a new run with another out") from None


def restart_hint(ckpt: Path) -> str:
    """What to do with a checkpoint resume cannot use (--resume is needed while it is there, so a plain rerun
    of the same out is refused)."""
    return (f"start a new run with another out; student.init checkpoint with student.checkpoint {ckpt} "
            "keeps its weights")


def load_state(path: Path) -> dict:
    """trainer_state.pt through torch.load(weights_only=True): tensors, numbers, strings and containers only,
    so a planted pickle cannot run code. A file that needs more (an older tiercel's, or not tiercel's) is
    refused, unread."""
    remedy = restart_hint(path.parent)
    refused = unsafe_globals(path)
    if refused and all(name.startswith("numpy.") for name in refused):
        raise CheckpointError(f"{path}: trainer state of an older tiercel, whose pickled numpy RNG state resume no "
                              f"longer loads (unpickling it could run code); {remedy}")
    state = torch_load(path, "not a trainer state tiercel can read safely", remedy)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: trainer state of another format (this tiercel writes format {STATE_FORMAT}); {remedy}")
    if lacking := [k for k in ("step", "optimizer", "scheduler", "distiller", "rng") if k not in state]:
        raise CheckpointError(f"{path}: trainer state without '{lacking[0]}'; {remedy}")
    if wrong := _malformed(state):
        raise CheckpointError(f"{path}: trainer state with {wrong}; {remedy}")
    return state


def _malformed(state: dict) -> str | None:
    """What in a trainer state has a type or value save() never writes (a hand-edited or damaged file), or None."""
    import torch

    step, rng = state["step"], state["rng"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"step {step!r} (a whole number >= 0 is written)"
    for key in ("scheduler", "rng", "optimizer", "distiller"):  # FSDP keeps the optimizer in per-rank files: None
        if not isinstance(state[key], dict) and (state[key] is not None or key in ("scheduler", "rng")):
            return f"{key} of type {type(state[key]).__name__} (a mapping is written)"
    if not (isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8
            and isinstance(rng.get("numpy"), (list, tuple)) and len(rng["numpy"]) == 5
            and isinstance(rng.get("python"), (list, tuple)) and len(rng["python"]) == 3):
        return "an rng state that is not the torch, numpy and python states save() writes"
    seconds = state.get("train_seconds", 0.0)
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < float("inf"):
        return f"train_seconds {seconds!r} (a finite number >= 0 is written)"
    return None


def load_tensors(file: Path, remedy: str) -> dict:
    """A safetensors file of a checkpoint; CheckpointError (one line) where it is damaged or not safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({str(err).splitlines()[0]}); {remedy}") from None


def rng_states() -> dict:
    """The torch, numpy and python RNG states as tensors, numbers and lists (what weights_only loads)."""
    import random

    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [int(version), list(internal), py_gauss],
    }


def set_rng_states(rng: dict) -> None:
    """Restore what rng_states() returned."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(rng["torch"])
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = rng["python"]
    random.setstate((version, tuple(internal), py_gauss))
