"""Training checkpoints: atomic, self-contained, and enough to resume a run exactly.

runs/NAME/checkpoints/step_000200/ holds the student in the native layout (loadable by
tiercel.models.load_checkpoint, exportable as is) plus trainer_state.pt: optimizer, scheduler, projection
heads, step and RNG states. `latest` names the newest complete checkpoint; it is written after the
checkpoint directory has been renamed into place, so a crash mid-save leaves the previous one in charge.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tiercel.errors import CheckpointError
from tiercel.fileio import atomic_dir, atomic_path, atomic_write_text
from tiercel.models.writer import tiercel_meta, write_native

# trainer_state.pt layout: 2 holds RNG states as tensors and lists, loadable with weights_only=True
STATE_FORMAT = 2


def full_states(objective, optimizer, sharded: bool):
    """(student state dict, optimizer state dict or None) for saving.

    For FSDP the parameters are sharded DTensors: torch.distributed.checkpoint gathers the student in full (a
    collective, so every process must call this); the optimizer state stays sharded and each process writes
    its own part with save_optimizer_shard (so an FSDP run resumes with the same number of processes).
    """
    if not sharded:
        return objective.student.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(objective.student, options=opts), None


def save_optimizer_shard(ckpt: Path, rank: int, optimizer) -> None:
    """FSDP: this process's optimizer shard, next to the checkpoint's weights (fileio.atomic_path)."""
    import torch

    with atomic_path(ckpt / f"optimizer.rank{rank}.pt") as tmp:
        torch.save(optimizer.state_dict(), tmp)


def save(run_dir: Path, step: int, objective, optimizer, scheduler, tokenizer, extra_meta: dict, keep: int,
         states: tuple | None = None, publish: bool = True) -> Path:
    """Write checkpoint `step`; with `publish`, point `latest` at it and prune beyond `keep` (mark_latest).

    `states` is full_states(...) when the caller gathered them (FSDP); by default they are read here.
    """
    import torch

    ckpt_root = run_dir / "checkpoints"
    dst = ckpt_root / f"step_{step:06d}"
    student = objective.student
    model_state, optim_state = states or full_states(objective, optimizer, sharded=False)
    meta = tiercel_meta(student, provenance=extra_meta)
    with atomic_dir(dst, overwrite=True) as tmp:
        write_native(tmp, student, tokenizer, meta, state_dict=model_state)
        state = {
            "format": STATE_FORMAT,
            "step": step,
            "optimizer": optim_state,
            "scheduler": scheduler.state_dict(),
            "distiller": objective.distiller.state_dict() if objective.distiller is not None else None,
            "rng": rng_states(),
        }
        torch.save(state, tmp / "trainer_state.pt")
    if publish:
        mark_latest(run_dir, dst, keep)
    return dst


def mark_latest(run_dir: Path, ckpt: Path, keep: int) -> None:
    """Point `latest` at a complete checkpoint and remove all but the newest `keep`."""
    ckpt_root = run_dir / "checkpoints"
    atomic_write_text(ckpt_root / "latest", ckpt.name + "\n")
    for old in sorted(ckpt_root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "trainer_state.pt").is_file() else None


def restore(path: Path, objective, optimizer, scheduler, sharded: bool = False, rank: int = 0) -> int:
    """Load weights, optimizer, scheduler and RNG states from checkpoint `path`; returns its step.

    With `sharded` (FSDP) the full states are scattered into the shards by torch.distributed.checkpoint.
    """
    import torch
    from safetensors.torch import load_file

    state = load_state(path / "trainer_state.pt")
    weights = load_file(str(path / "model.safetensors"))
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        shard = path / f"optimizer.rank{rank}.pt"
        if not shard.is_file():
            raise CheckpointError(f"{shard}: missing; an FSDP run resumes with the same number of processes it was saved with")
        set_model_state_dict(objective.student, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        optimizer.load_state_dict(torch.load(shard, map_location="cpu", weights_only=True))
        return _restore_rest(state, objective, scheduler)
    try:
        missing, unexpected = objective.student.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # tensors of another shape: the recipe's student changed since the checkpoint
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)[:160])
        raise CheckpointError(f"{path}: checkpoint does not fit the recipe's student ({first}); resume with the "
                              "recipe the run started with, or start a new run in another out") from None
    missing = [k for k in missing if not k.endswith(("embed_tokens.weight",)) and k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(f"{path}: checkpoint does not fit the recipe's student (first: {(missing or unexpected)[0]}); resume with the same recipe")
    objective.student.tie_weights()
    optimizer.load_state_dict(state["optimizer"])
    return _restore_rest(state, objective, scheduler)


def _restore_rest(state: dict, objective, scheduler) -> int:
    if objective.distiller is not None and state["distiller"] is not None:
        objective.distiller.load_state_dict(state["distiller"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_states(state["rng"])
    return int(state["step"])


def load_state(path: Path) -> dict:
    """trainer_state.pt through torch.load(weights_only=True): tensors, numbers, strings and containers only,
    so a planted pickle cannot run code. A file that needs more (an older tiercel's, or not tiercel's) is
    refused."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        why = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a trainer state tiercel can read safely ({why}); resume from a "
                              "checkpoint written by this tiercel, or start the run without --resume") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: trainer state of another format (tiercel writes format {STATE_FORMAT}); "
                              "resume from a checkpoint written by this tiercel, or start the run without --resume")
    return state


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
