"""One more stage for a finished fidelity student, with on-policy distillation: does it close the caption gap?

    OMP_NUM_THREADS=1 python benchmarks/student_stage_pilot.py --steps 3000 --on-policy 0,0.5 \
        --out benchmarks/results/student_stage_pilot.json

The fidelity table's best student (KD + hidden) keeps 72% of the teacher's 14-task average at 30,000 steps and 77%
at 60,000 (docs/fidelity.md, "What is left"); the three CIDEr tasks are most of what is left. Every student so
far learned from the dataset's answers with the teacher's logits on them. On-policy distillation (GKD,
`distill.on_policy`, docs/distill.md) has the student answer for itself and the teacher grade each of its tokens,
which is what a small student's free-running captions lack. It was never measured on this benchmark.

This trains that stage: the student's own recipe (fidelity_config.student_recipe, the YAML's KD + hidden
objective, seed 0 unless `--seed`, the finished teacher), started from the finished student (`--student`, default the table's
seed 0), with `distill.on_policy` set to each value of `--on-policy` in turn and only the step count (warmup
capped at a tenth) and the peak learning rate changed: by default the rate its schedule ended at (lr x
min_lr_ratio), since the recipe's own peak undoes a finished student within a few dozen steps (60 steps at
0.002 took the seed-0 student from 0.764 to 0.455 on 2 records per task in a smoke run). `--on-policy 0` is the control: the same extra steps on the
dataset's answers, so a gain of on-policy batches is told from a gain of training longer. Every run and the
starting student are scored on the first `--limit` test records per task (greedy, as the table).

Runs train in benchmarks/work/fidelity/extra/, so `fidelity_carry.py save` carries their newest checkpoints to
the next machine, and a rerun with the same arguments resumes them (a finished run, and the starting student's
scores where its file is the same, are reused from `--out`). Each run's predictions are kept in its folder
(predictions.json.gz), so `student_levers.py --finished` compares it with the table's finished students on the same
records. `--seed 1` trains with the table's second seed (the recipe's data order), for a student of that seed. The
fidelity table's students are not changed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import typing
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from fidelity_config import data_paths, load_config, student_recipe  # noqa: E402
from image_use import commit  # noqa: E402
from student_pilot import (  # noqa: E402
    GEOMETRY,
    PREDICTIONS,
    earlier,
    final_teacher,
    positive_steps,
    relengthened,
    steady_rate,
    without_heads,
)
from synth_runs import params, score, train  # noqa: E402

from tiercel.fileio import sha256_file  # noqa: E402
from tiercel.recipe import DistillSection, Divergence  # noqa: E402

FIDELITY = HERE / "work" / "fidelity"
OBJECTIVE = "kd_hidden"


def probabilities(text: str) -> list[float]:
    """argparse type of --on-policy: comma-separated probabilities in [0, 1], no repeats."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not 0 <= v <= 1 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated probabilities in [0, 1], e.g. 0,0.5")
    return values


def stage_recipe(base: dict, student: Path, on_policy: float, steps: int, lr: float, out: Path,
                 divergence: str | None = None, heads: bool = True) -> dict:
    """The student's recipe `base` started from `student` (its weights; the teacher's tokenizer as before), with
    `distill.on_policy` at `on_policy`, `steps` steps (warmup capped at a tenth), peak `lr` and `divergence` where
    given, into `out`. Without `heads`, the terms that train through heads of their own (distill.hidden's
    projections, distill.dense's heads) are weighted 0, so none is drawn afresh: ce and kd only."""
    recipe = copy.deepcopy(base)
    recipe["name"], recipe["out"] = f"fidelity-student-stage-{out.name}", str(out)
    recipe["student"] = {**recipe.get("student", {}), "init": "checkpoint", "checkpoint": str(student)}
    recipe["distill"] = {**relengthened(recipe["distill"], steps), "on_policy": on_policy, "lr": lr,
                          **({} if divergence is None else {"divergence": divergence})}
    if not heads:
        recipe["distill"] = without_heads(recipe["distill"])
    return recipe


def ended_lr(distill: dict) -> float:
    """The learning rate a recipe's schedule ends at: lr x min_lr_ratio (tiercel.recipe's defaults where unset)."""
    d = DistillSection(**distill)
    return d.lr * d.min_lr_ratio


def run_name(student: Path, on_policy: float, steps: int, lr: float, divergence: str | None = None,
             heads: bool = True, seed: int = 0) -> str:
    """student_stage_seed0_3000_op0.5_lr0.0002[_reverse_kl][_noheads][_seedN] (the starting student's folder, then
    the arguments; seed 0 adds nothing): one folder per run."""
    start = student.parent.name if student.name == "student" else student.name
    return (f"student_stage_{start}_{steps}_op{on_policy:g}_lr{lr:g}" + (f"_{divergence}" if divergence else "")
            + ("" if heads else "_noheads") + (f"_seed{seed}" if seed else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, default=FIDELITY / "students" / OBJECTIVE / "seed0" / "student",
                    help="the finished student to start from (default: the table's KD + hidden student, seed 0)")
    ap.add_argument("--on-policy", type=probabilities, default=[0.0, 0.5],
                    help="distill.on_policy of each run, comma-separated (0: the control, dataset answers only)")
    ap.add_argument("--steps", type=positive_steps, default=3000, help="steps of each run")
    ap.add_argument("--lr", type=float, help="peak learning rate (default: where the student's schedule ended, lr x min_lr_ratio)")
    ap.add_argument("--divergence", choices=typing.get_args(Divergence),
                    help="distill.divergence of every run (default: the recipe's; GKD found reverse KL and JSD best on-policy)")
    ap.add_argument("--no-heads", action="store_true",
                    help="weigh distill.hidden and distill.dense 0: no head of the objective starts afresh (ce and kd only)")
    ap.add_argument("--limit", type=int, default=1200, help="test records per task scored (1200: all of them)")
    ap.add_argument("--seed", type=int, default=0, help="the recipe's seed (the table's students: 0 and 1)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "student_stage_pilot.json")
    args = ap.parse_args()
    if args.lr is not None and not args.lr > 0:
        ap.error(f"--lr must be > 0 (got {args.lr})")
    student = args.student.resolve()
    if not (student / "model.safetensors").is_file():
        sys.exit(f"{student}: no finished student (model.safetensors) there; pass --student a student folder")
    from runtime_cpu import machine

    cfg = load_config(HERE / "recipes" / "fidelity.yaml", quick=False)
    data = data_paths(FIDELITY / "data")
    _, teacher = final_teacher(cfg, data)
    base = student_recipe(cfg, FIDELITY, data, teacher, OBJECTIVE, args.seed, quick=False)
    lr = args.lr or ended_lr(base["distill"])
    test, root, mnt = Path(data["test"]), FIDELITY / "data", cfg.eval.max_new_tokens
    result = {"what": "benchmarks/student_stage_pilot.py: one more stage for a finished student, on-policy against not",
              "command": "python benchmarks/student_stage_pilot.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": {**machine(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
              "steps": args.steps, "lr": lr, "limit": args.limit, "max_new_tokens": mnt,
              "divergence": args.divergence or base["distill"].get("divergence"), "heads": not args.no_heads, "seed": args.seed,
              "runs": {}}

    def write() -> None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    same = {"path": str(student), "sha256": sha256_file(student / "model.safetensors"), "limit": args.limit, "max_new_tokens": mnt}
    start = earlier(args.out, "start", same)
    if start is None:
        s = score(student, test, root, args.limit, mnt)
        start = {**same, "params": params(student), "headline": s["headline"], "average": s["average"]}
    else:
        print(f"start: scores of the same student file and records reused from {args.out}", flush=True)
    result["start"] = start
    write()
    for p in args.on_policy:
        out = FIDELITY / "extra" / run_name(student, p, args.steps, lr, args.divergence, not args.no_heads, args.seed)
        recipe = stage_recipe(base, student, p, args.steps, lr, out, args.divergence, not args.no_heads)
        t0 = time.perf_counter()
        run = train(recipe)
        s = score(run["student"], test, root, args.limit, mnt, predictions=out / PREDICTIONS)
        result["runs"][f"{p:g}"] = {"on_policy": p, "folder": str(out.relative_to(HERE.parent)),
                                    **{k: v for k, v in run.items() if k != "student"},
                                    "steady_samples_per_s": steady_rate(out), "wall_s": time.perf_counter() - t0,
                                    "headline": s["headline"], "average": s["average"]}
        write()
        geo = ", ".join(f"{t} {s['headline'][t]:.3f}" for t in GEOMETRY)
        print(f"on_policy {p:g}: average {start['average']:.3f} -> {s['average']:.3f}; {geo}", flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
