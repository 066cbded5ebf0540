"""`tiercel distill RECIPE`: the training loop shared by plain fine-tuning and every distillation mode.

One step: for each of `grad_accum` micro-batches, draw samples (TaskSampler, a pure function of the step),
run the teacher without gradients (or read its cached top-k logits), run the student through
DistillObjective, backpropagate; then clip, step AdamW and the warmup+cosine schedule. Every `save_every`
steps an atomic checkpoint is written; `resume=True` continues from the newest one exactly (weights,
optimizer, schedule, RNG, and the data order, which depends on the step only). A NaN/inf loss stops the run
with a one-line error and leaves the last good checkpoint in place. Under torchrun the same code runs
DDP (or FSDP), each process taking a disjoint slice of every global batch.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tiercel.data.sft import truncation_lines
from tiercel.distill import checkpoints
from tiercel.distill.data import IGNORE, ModelInput, SFTData, TaskSampler, collate, model_input, to_device
from tiercel.distill.dist import Dist, all_mean, barrier, setup, sharded, teardown, through_root
from tiercel.errors import Terminated, TiercelError
from tiercel.fileio import atomic_write_text, check_output_dir
from tiercel.progress import track
from tiercel.recipe import Recipe, dump_recipe


class TrainingDiverged(TiercelError):
    """The loss became NaN or infinite."""


@contextmanager
def sigterm_requests():
    """A flag that SIGTERM sets while the block runs (the previous handler is put back after it). A cluster's
    preemption, `docker stop` and systemd send SIGTERM and wait before they kill: the loop finishes its step,
    checkpoints it and stops, instead of losing the steps since the last `save_every`. Off the main thread
    (where Python cannot install handlers) the flag never sets."""
    flag = threading.Event()
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    except ValueError:  # not the main thread
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def lr_lambda(cfg):
    """Linear warmup to 1, then cosine decay to cfg.min_lr_ratio at cfg.steps."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def make_optimizer(objective, cfg, fused: bool = True):
    """AdamW without weight decay on norms, biases and embeddings' position tables.

    fused: torch's one-kernel AdamW, the same update rule as the per-tensor loop (not bit-identical to it) at a
    fraction of its per-parameter overhead, which dominates small models' steps (train_speed_cpu.md). Not for
    FSDP's sharded parameters.
    """
    import torch

    decay, no_decay = [], []
    seen = set()
    for name, p in objective.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or "norm" in name or "embed_positions" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=fused or None)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))


@dataclass
class Run:
    """Everything a training run holds; built once by `prepare`, stepped by `train_step`. Every part is
    declared here; nothing else is attached to a run."""

    recipe: Recipe
    dist: Dist
    dir: Path
    teacher: Any = None  # models.checkpoint.Checkpoint when the teacher kind runs live, else None
    tokenizer: Any = None  # runtime.tokenizer.TextTokenizer shared by student (and teacher)
    data: SFTData | None = None  # the training file (or the teacher's generated answers)
    val_data: SFTData | None = None  # data.val, read before training so a broken file fails first
    sampler: TaskSampler | None = None
    init_report: dict | None = None  # how the student was initialised (student.py)
    objective: Any = None  # objective.DistillObjective: the student and every loss
    inputs: dict[str, ModelInput] = field(default_factory=dict)  # "student" / "teacher" -> image size, norm
    topk: Any = None  # cache.TopKCache for a cached teacher
    dense: Any = None  # dense.DenseTargets when distill.dense has a weight
    wrapped: Any = None  # the objective under DDP / FSDP (the objective itself on one process)
    optimizer: Any = None
    scheduler: Any = None
    train_seconds: float = 0.0  # wall time of the steps so far, resumes included (checkpointed)
    tb: Any = None  # TensorBoard SummaryWriter, rank 0, opened at the first log line

    @property
    def log_file(self) -> Path:
        return self.dir / "metrics.jsonl"


def prepare(recipe: Recipe, dist: Dist) -> Run:
    """Load tokenizer, teacher, data and student; build the objective, optimiser and (DDP) wrapper."""
    import torch

    from tiercel.distill.setup import load_teacher, resolve_tokenizer, training_file
    from tiercel.distill.student import init_student

    run = Run(recipe, dist, Path(recipe.out))
    torch.manual_seed(recipe.seed)
    run.teacher = load_teacher(recipe, dist)
    run.tokenizer = resolve_tokenizer(recipe, run.teacher, run.dir, dist)
    d = recipe.data
    run.data = SFTData(training_file(recipe), d.root, run.tokenizer, d.max_prompt_tokens, d.max_answer_tokens, recipe.distill.image_cache, d.quad_order, d.cut_answers)
    if d.val is not None:  # read before training: a broken val file fails now, not at the first validation
        run.val_data = SFTData(d.val, d.root, run.tokenizer, d.max_prompt_tokens, d.max_answer_tokens, recipe.distill.image_cache, d.quad_order, d.cut_answers)
    run.sampler = TaskSampler(run.data.by_task, d.task_weights, recipe.seed)
    student, run.init_report = init_student(recipe.student, run.tokenizer, run.teacher.model if run.teacher else None, recipe.seed)
    from tiercel.distill.objective import DistillObjective

    run.dense = _dense_targets(recipe, run.data, student)
    run.objective = DistillObjective(student, recipe.distill, run.teacher.model.tiercel_shape if run.teacher else None,
                                     dense_channels=run.dense.channels if run.dense else 0).to(dist.device)
    if recipe.student.init == "checkpoint" and recipe.student.heads == "checkpoint":  # a resume loads its own after this
        run.init_report["heads"] = checkpoints.start_heads(Path(run.init_report["path"]), run.objective)
    run.inputs = {"student": model_input(student)}
    if run.teacher is not None:
        run.inputs["teacher"] = model_input(run.teacher.model, run.teacher.mean, run.teacher.std)
    run.topk = None
    if recipe.teacher.spec.logits == "cached":
        from tiercel.distill.cache import TopKCache

        run.topk = TopKCache(recipe.teacher.cache, run.data, run.tokenizer, recipe.teacher.top_k)
    run.wrapped = _wrap(run.objective, recipe.distill.strategy, dist)  # FSDP swaps in sharded parameters: wrap first
    if recipe.distill.compile:  # in place: parameter names, and so checkpoints, stay as they are
        run.objective.compile()
    run.optimizer, run.scheduler = make_optimizer(run.objective, recipe.distill, fused=not sharded(run))
    return run


def _dense_targets(recipe: Recipe, data: SFTData, student):
    """distill.dense's targets on the student's image grid, or None when both weights are 0."""
    d = recipe.distill.dense
    if not (d.answer or d.objects):
        return None
    from tiercel.data.objects import ObjectsFile
    from tiercel.distill.dense import DenseTargets

    objects = ObjectsFile(recipe.data.objects) if d.objects else None
    return DenseTargets(data, student.tiercel_shape.image_grid, d.cells, objects)


def _wrap(objective, strategy: str, dist: Dist):
    if not dist.active:
        return objective
    import torch

    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in list(objective.student.model.language_model.encoder.layers) + list(objective.student.model.language_model.decoder.layers):
            fully_shard(layer)
        return fully_shard(objective)
    ids = [dist.local_rank] if dist.device.startswith("cuda") else None
    return torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids, find_unused_parameters=True)


def _autocast(precision: str, device: str):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


def on_policy_batch(recipe: Recipe, step: int, micro: int) -> bool:
    """Whether micro-batch (step, micro) trains on the student's own answers: drawn with probability
    distill.on_policy from the seed, the same on every process and after a resume."""
    import numpy as np

    p = recipe.distill.on_policy
    return p > 0 and np.random.default_rng([recipe.seed, step, micro, 7]).random() < p


def micro_step(run: Run, step: int, micro: int, total: int, sync: bool) -> tuple[dict, int]:
    """Forward and backward one micro-batch; returns its loss terms and its loss units (see loss_units).

    Its mean loss is weighted by its units over `total`, the global batch's, counted on the answers it trains
    on: an on-policy micro-batch counts the student's sampled answers, not the dataset's.
    """
    import contextlib

    import torch

    cfg, dist = run.recipe.distill, run.dist
    indices = run.sampler.draw(step, micro, cfg.batch_size * dist.world)[dist.rank :: dist.world]
    batch = to_device(collate(run.data, indices, run.inputs, run.tokenizer.eos_id, run.dense), dist.device)
    ce_weight = None
    on_policy = on_policy_batch(run.recipe, step, micro)
    if on_policy:
        from tiercel.distill.onpolicy import row_seeds, student_answers

        seeds = row_seeds(run.recipe.seed, step, micro, indices)
        max_tokens, synced = run.recipe.data.max_answer_tokens, sharded(run)
        through_root(run, lambda student: student_answers(student, batch, run.tokenizer, max_tokens, seeds, synced))
        ce_weight = 0.0  # the labels are the student's own tokens; only the teacher supervises them
    teacher_out = topk = None
    if run.teacher is not None and run.recipe.teacher.spec.logits == "live":
        from tiercel.distill.objective import run_model

        with torch.no_grad(), _autocast(cfg.precision, dist.device):
            teacher_out = run_model(run.teacher.model, batch["teacher"], batch["decoder_input_ids"],
                                    hidden=run.objective.needs_decoder_states, stages=run.objective.needs_stages)
    if run.topk is not None and not on_policy:
        topk = run.topk.lookup(indices, batch["labels"], dist.device)
    units = sum(loss_units(run, [(batch["labels"] != IGNORE).sum(1).tolist()])[0])
    no_sync = getattr(run.wrapped, "no_sync", None)
    ctx = no_sync() if (not sync and no_sync is not None) else contextlib.nullcontext()
    with ctx:
        with _autocast(cfg.precision, dist.device):
            loss, terms, _ = run.wrapped(batch, teacher_out, topk, ce_weight)
        terms = {k: float(v) for k, v in terms.items()}
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {float(loss.detach())} at step {step} ({terms}); lower distill.lr or use precision fp32; "
                                   f"the last good checkpoint is kept in {run.dir / 'checkpoints'}")
        (loss * (units * dist.world / total)).backward()  # times the process count, which DDP/FSDP average out
    return {"loss": float(loss.detach()), **terms}, units


def step_tokens(run: Run, step: int) -> list[list[int]]:
    """Answer-token counts of every sample of the step's global batch, per micro-batch (no communication:
    the sampler is deterministic, so every process can count the whole batch)."""
    cfg, world = run.recipe.distill, run.dist.world
    return [[len(run.data.label_ids(i)) for i in run.sampler.draw(step, m, cfg.batch_size * world)] for m in range(cfg.grad_accum)]


def loss_units(run: Run, counts: list[list[int]]) -> list[list[int]]:
    """What each sample adds to the loss's denominator: its answer tokens (loss_norm "token"), or 1 for a
    sample with any answer token (loss_norm "sample": each sample's token mean counts once)."""
    if run.recipe.distill.loss_norm == "token":
        return counts
    return [[min(c, 1) for c in micro] for micro in counts]


def train_step(run: Run, step: int) -> dict:
    """One optimizer step over `grad_accum` micro-batches; returns token-weighted metrics of the global batch.

    The loss is the mean over every answer token of the global batch (loss_norm "sample": over every sample of
    it, each sample's own token mean), whatever its split over processes and micro-batches: each micro-batch's
    mean loss is weighted by its share of the batch's tokens (samples). So N processes reproduce one process
    with the same global batch. On-policy answers are sampled after the batch's tokens are counted (from the
    dataset, without communication): their micro-batches are weighted by the sampled tokens against that count,
    and once every process's sampled count is known (one all-reduce) the gradient is rescaled to the true total.
    """
    import torch

    cfg, dist = run.recipe.distill, run.dist
    run.optimizer.zero_grad(set_to_none=True)
    counts = step_tokens(run, step)
    planned = sum(map(sum, loss_units(run, counts)))
    sums: dict[str, float] = {}
    trained = 0
    for m in range(cfg.grad_accum):
        log, units = micro_step(run, step, m, planned, sync=(m == cfg.grad_accum - 1))
        trained += units
        for k, v in log.items():
            sums[k] = sums.get(k, 0.0) + v * units
    total = planned if cfg.on_policy == 0 else max(1, round(all_mean(dist, {"units": trained})["units"] * dist.world))
    if total != planned:
        _scale_grads(run.objective, planned / total)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.objective.parameters(), cfg.clip_grad)
    run.optimizer.step()
    run.scheduler.step()
    metrics = {k: v * dist.world / total for k, v in all_mean(dist, sums).items()}  # all_mean * world: the sum
    metrics["grad_norm"] = float(grad_norm)
    metrics["lr"] = run.scheduler.get_last_lr()[0]
    metrics["samples"] = cfg.batch_size * cfg.grad_accum * dist.world
    metrics["tokens"] = sum(map(sum, counts))
    return metrics


def _scale_grads(objective, factor: float) -> None:
    for p in objective.parameters():
        if p.grad is not None:
            p.grad.mul_(factor)


class DistillResult(BaseModel):
    """What `distill` returns (and `tiercel distill` prints): where the student is and how training ended."""

    run_dir: Path
    student: Path | None  # <out>/student; None on the processes of a torchrun launch other than rank 0
    steps: int
    resumed_from: int | None  # the checkpoint step a resumed run started from
    last: dict | None = None  # the last metrics line (loss and its terms)
    val: dict | None = None  # the last validation (val_loss, per-task scores)


def distill(recipe: Recipe, resume: bool = False, progress: bool = True) -> DistillResult:
    """Train the student a recipe describes; the student ends up in <out>/student.

    progress: False hides the step bar even where the caller turned progress on (tiercel.progress.shown).
    """
    dist = setup()
    try:
        return _distill(recipe, dist, resume, progress)
    finally:
        teardown(dist)


def _distill(recipe: Recipe, dist: Dist, resume: bool, progress: bool) -> dict:
    from tiercel.distill.setup import check_inputs
    from tiercel.distill.validation import validate_run

    check_inputs(recipe, dist.device)
    run_dir = Path(recipe.out)
    if dist.main:
        check_output_dir(run_dir)  # a file there, or no permission: before the models load
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_resumable(run_dir, resume)
    barrier(dist)
    run = prepare(recipe, dist)
    start, before = 0, 0.0
    if resume and (path := checkpoints.latest(run_dir)) is not None:
        start, before = checkpoints.restore(path, run.objective, run.optimizer, run.scheduler, sharded=sharded(run), rank=dist.rank)
    if dist.main:  # before any step: cut answers teach the model to stop early, or never to close a polygon
        d = recipe.data  # (after the resume check, so a refused resume stays one error line)
        for line in truncation_lines(run.data.truncation(), d.max_answer_tokens, d.max_prompt_tokens):
            print(f"warning: {run.data.path}: {line}", file=sys.stderr)
        if start == 0 and (fresh := (run.init_report.get("heads") or {}).get("fresh")):
            print(f"warning: {run.init_report['path']}: no trained {', '.join(sorted({k.split('.')[0] for k in fresh}))} "
                  f"heads beside the student ({checkpoints.HEADS}); they start from random weights and at first "
                  "disturb the trained student: weigh distill.hidden and distill.dense 0 to leave them out (docs/distill.md)",
                  file=sys.stderr)
        # only once the checkpoint fits: a refused resume leaves the run's recipe as it was
        atomic_write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
        atomic_write_text(run_dir / "init_report.json", json.dumps(run.init_report, indent=1) + "\n")
        _forget_after(run.log_file, start)
    cfg = recipe.distill
    t0, samples, metrics, evals = time.perf_counter(), 0, {}, []
    with sigterm_requests() as stop, track("distill", cfg.steps, "steps", completed=start, enabled=progress and dist.main) as bar:
        for step in range(start, cfg.steps):
            metrics = train_step(run, step)
            samples += metrics["samples"]
            done = step + 1
            metrics["samples_per_s"] = samples / (time.perf_counter() - t0)
            run.train_seconds = metrics["train_seconds"] = before + time.perf_counter() - t0
            if done % cfg.log_every == 0 or done == cfg.steps:
                _log(run, {"step": done, **metrics})
            if done % cfg.save_every == 0 or done == cfg.steps:  # saved before validating, which may fail
                _save(run, done)
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                evals.append(validate_run(run, done))
                if evals[-1]:
                    _log(run, {"step": done, **{f"val_{k}": v for k, v in evals[-1].items() if isinstance(v, (int, float)) and k != "step"}})
            bar.update(done, note=f"loss {metrics['loss']:.4f}, {metrics['samples_per_s']:.1f} samples/s")
            if done < cfg.steps and _stop_agreed(stop, dist):
                if done % cfg.save_every:
                    _save(run, done)
                raise Terminated(f"{run_dir}: stopped by SIGTERM after step {done}, checkpoint saved; rerun with "
                                 "--resume to continue", step=done)
    final = _publish(run_dir) if dist.main else None
    return DistillResult(run_dir=run_dir, student=final, steps=cfg.steps, resumed_from=start, last=metrics,
                         val=evals[-1] if evals else None)


def _stop_agreed(stop: threading.Event, dist: Dist) -> bool:
    """Whether any process got SIGTERM: all of them then checkpoint and stop at the same step (a collective)."""
    if not dist.active:
        return stop.is_set()
    return all_mean(dist, {"stop": float(stop.is_set())})["stop"] > 0


def _save(run: Run, step: int) -> None:
    """Checkpoint on the main process; under FSDP every process adds its optimizer shard before `latest` moves."""
    cfg, dist = run.recipe.distill, run.dist
    fsdp = sharded(run)
    states = checkpoints.full_states(run.objective, run.optimizer, fsdp)  # a collective under FSDP
    if dist.main:
        checkpoints.save(run.dir, step, run.objective, run.optimizer, run.scheduler, run.tokenizer,
                         {"recipe": run.recipe.name, "step": step}, cfg.keep_checkpoints, states=states, publish=not fsdp,
                         train_seconds=run.train_seconds)
    barrier(dist)
    if fsdp:
        ckpt = run.dir / "checkpoints" / f"step_{step:06d}"
        checkpoints.save_optimizer_shard(ckpt, dist.rank, run.optimizer)
        barrier(dist)
        if dist.main:
            checkpoints.mark_latest(run.dir, ckpt, cfg.keep_checkpoints)
        barrier(dist)


def _check_resumable(run_dir: Path, resume: bool):
    if not resume and checkpoints.latest(run_dir) is not None:
        raise TiercelError(f"{run_dir}: holds checkpoints of an earlier run; pass --resume to continue it or choose another recipe out")
    _check_run_files(run_dir)


def _check_run_files(run_dir: Path) -> None:
    """TiercelError if `run_dir` holds a `student` folder or a `recipe.yaml` that a run did not write: the run
    replaces both (the published student, the recipe it ran)."""
    from tiercel.fileio import marker_is_ours, marker_note
    from tiercel.recipes import is_recipe

    student = run_dir / "student"
    if student.exists() and (not student.is_dir() or (any(student.iterdir()) and not marker_is_ours(student / "tiercel.json"))):
        why = "a file" if not student.is_dir() else marker_note(student / "tiercel.json")
        raise TiercelError(f"{student}: was not written by tiercel ({why}), and the run would replace it with its "
                           "student; choose another recipe out, or move it yourself")
    recipe = run_dir / "recipe.yaml"
    if recipe.exists() and not is_recipe(recipe):
        raise TiercelError(f"{recipe}: is not a recipe, and the run would replace it with its own; choose another "
                           "recipe out, or move it yourself")
    report = run_dir / "init_report.json"
    if report.exists() and not _is_init_report(report):
        raise TiercelError(f"{report}: was not written by tiercel, and the run would replace it with its own; choose "
                           "another recipe out, or move it yourself")
    log = run_dir / "metrics.jsonl"
    if log.exists() and (bad := _foreign_log_line(log)) is not None:
        raise TiercelError(f"{log}: line {bad} is not a tiercel metrics line, and a run appends to and trims this "
                           "file; choose another recipe out, or move it yourself")


def _is_init_report(path: Path) -> bool:
    """Whether `path` is the init_report.json a run writes: a JSON object whose `init` is a student.init value."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(report, dict) and report.get("init") in ("preset", "checkpoint", "teacher")


def _foreign_log_line(path: Path) -> int | None:
    """The first line of a metrics log that a run did not write (1-based), or None. A last line cut short by a
    kill is the run's own."""
    if not path.is_file():
        return 1
    lines = path.read_bytes().splitlines(keepends=True)
    for n, raw in enumerate(lines, start=1):
        torn = n == len(lines) and not raw.endswith(b"\n")
        if _logged_step(raw.decode("utf-8", errors="replace")) == float("inf") and not torn:
            return n
    return None


def _publish(run_dir: Path) -> str:
    """Copy the newest checkpoint's model (without trainer state) to <out>/student, atomically."""
    import shutil

    from tiercel.fileio import atomic_dir

    src = checkpoints.latest(run_dir)
    if src is None:  # checkpoints/ changed under the run (a folder removed by hand)
        raise TiercelError(f"{run_dir / 'checkpoints'}: the run's newest checkpoint is gone, so there is no student to "
                           "publish; resume from the checkpoint that is left with --resume")
    with atomic_dir(run_dir / "student", overwrite=True) as tmp:
        for f in src.iterdir():
            if f.name != "trainer_state.pt" and not f.name.startswith("optimizer.rank"):
                shutil.copy2(f, tmp / f.name)
    return str(run_dir / "student")


def _forget_after(log_file: Path, step: int) -> None:
    """Drop the lines a killed run logged after `step`, the checkpoint it resumes from, so no step shows twice."""
    if not log_file.is_file():
        return
    lines = log_file.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _logged_step(line) <= step]
    if len(kept) != len(lines):
        atomic_write_text(log_file, "".join(kept))


def _logged_step(line: str) -> float:
    try:
        step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return float("inf")  # a line torn by the kill: dropped
    return step if isinstance(step, int) and not isinstance(step, bool) else float("inf")


def _log(run: Run, record: dict) -> None:
    if not run.dist.main:
        return
    with open(run.log_file, "a") as f:
        f.write(json.dumps(record) + "\n")
    if run.tb is None:
        run.tb = _tensorboard(run.dir)
    if run.tb:
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                run.tb.add_scalar(k, v, record["step"])


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return False
    return SummaryWriter(str(run_dir / "tensorboard"))
