"""Process-group plumbing for `torchrun --nproc_per_node N tiercel distill ...` (gloo on CPU, nccl on GPU).

Single-process runs need no launcher: without torchrun's environment, rank 0 of 1 on the best device.
Knows nothing about data; of models only the one rule of FSDP below.

Under FSDP2 the student's parameters are sharded DTensors, gathered only by the hooks of a forward through the
root module. Work that calls the student directly (validation, on-policy `generate`) therefore runs inside that
forward (through_root), on every process in step. That needs no more memory than a training forward (a layer's
parameters are gathered while it runs) and no copy; the alternative, gathering a full state dict into an
unsharded copy on rank 0, needs the whole model on one device, which is what FSDP is there to avoid, while the
other processes wait. The price: every process runs validation over the same records (eval_limit of them, every
eval_every steps).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup() -> Dist:
    """Join the process group torchrun describes in the environment (or run alone)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local}" if cuda else "cpu"
    if world > 1 and not torch.distributed.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local, device)


def barrier(d: Dist) -> None:
    if d.active:
        import torch

        torch.distributed.barrier()


def all_mean(d: Dist, values: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over processes (for logging; gradients are synchronised by DDP/FSDP)."""
    if not d.active or not values:
        return values
    import torch

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return {k: float(v) / d.world for k, v in zip(keys, t)}


def teardown(d: Dist) -> None:
    if d.active:
        import torch

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def through_root(run, fn):
    """`fn(student)` for work that calls the student directly (validation, on-policy sampling). Under FSDP2 it
    runs inside the root module's forward (DistillObjective's `student_call`), whose hooks initialise FSDP and
    all-gather the parameters the root shards itself (embeddings, vision tower, projector); called outside, the
    first such call fails ("FSDP requires running forward through the root module first", or "mixed
    torch.Tensor and DTensor"). The sharded layers gather their parameters in their own forward hooks, which are
    collectives: every process must run the same forwards (validation runs on every process, generation with
    synced_gpus). Elsewhere fn(student) is called as it is."""
    if sharded(run):
        return run.wrapped(None, student_call=fn)
    return fn(run.objective.student)


def sharded(run) -> bool:
    """Whether a training run shards its student with FSDP over several processes."""
    return run.dist.active and run.recipe.distill.strategy == "fsdp"
