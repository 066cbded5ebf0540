"""One more stage for the fidelity teacher, with some tasks drawn more often: does its PIX_CHG reach issue 22's 0.3?

    OMP_NUM_THREADS=1 python benchmarks/teacher_stage_pilot.py --steps 6000 --weight PIX_CHG=12 \
        --out benchmarks/results/teacher_stage_pilot.json

It trains one stage after the fidelity teacher's last (benchmarks/recipes/fidelity.yaml): that stage's recipe,
started from the finished teacher, with only the task weights (`--weight TASK=W`, over the stage's own) and the step
count changed. It then scores the result on the first `--limit` test records per task (greedy, as the table) and
sets it beside the finished teacher's own scores in benchmarks/results/fidelity.json, which the fidelity run made
on every test record. Its 12,000-step run with PIX_CHG x3 and no heads (teacher_stage_pilot.md) met all five
geometry targets and became the YAML's third stage.

The run trains in benchmarks/work/fidelity/extra/, so `fidelity_carry.py save` carries its newest checkpoint to
the next machine, and a rerun with the same arguments resumes it. The fidelity table's teacher is not changed:
a better teacher would mean training the six students and the bundles again.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from fidelity_config import data_paths, load_config, teacher_stages  # noqa: E402
from image_use import commit  # noqa: E402
from student_pilot import final_teacher, positive_steps, relengthened, steady_rate, without_heads  # noqa: E402
from synth_runs import params, score, train  # noqa: E402

from tiercel import tasks  # noqa: E402

FIDELITY = HERE / "work" / "fidelity"


def weight(text: str) -> tuple[str, float]:
    """argparse type of --weight: TASK=W, a known task and a weight >= 0."""
    task, sep, value = text.partition("=")
    if not sep or task not in tasks.TAGS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TASK=W with TASK one of {', '.join(tasks.TAGS)}")
    try:
        w = float(value)
    except ValueError:
        w = -1.0
    if w < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the weight must be a number >= 0")
    return task, w


def stage_recipe(last: dict, teacher: Path, weights: dict, steps: int, out: Path, heads: bool = True) -> dict:
    """The teacher's last stage recipe, started from `teacher` (its checkpoint and tokenizer), with `weights` over
    its task weights and `steps` steps (warmup capped at a tenth of them), training into `out`. Without `heads`,
    distill.dense is weighed 0, so no head is drawn afresh (the finished teacher's were not saved)."""
    recipe = copy.deepcopy(last)
    recipe["name"], recipe["out"] = f"fidelity-teacher-pilot-{out.name}", str(out)
    recipe["student"] = {**recipe.get("student", {}), "init": "checkpoint", "checkpoint": str(teacher)}
    recipe["tokenizer"] = {"source": "file", "path": str(teacher / "tokenizer.json")}
    data = recipe.setdefault("data", {})
    data["task_weights"] = {**data.get("task_weights", {}), **weights}
    recipe["distill"] = relengthened(recipe["distill"], steps)
    if not heads:
        recipe["distill"] = without_heads(recipe["distill"])
    return recipe


def run_name(weights: dict, steps: int, heads: bool = True, stage: int = 3) -> str:
    """teacher_stage3_6000_PIX_CHG12[_noheads]: one folder per set of arguments and per stage it adds (3: after the
    YAML's two; a stage after three is teacher_stage4_..., so it never reuses, or empties, a stage-3 run's folder)."""
    return f"teacher_stage{stage}_{steps}_" + "_".join(f"{t}{w:g}" for t, w in sorted(weights.items())) + ("" if heads else "_noheads")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=positive_steps, default=6000, help="steps of the new stage (the YAML's last stage: 6,000)")
    ap.add_argument("--weight", type=weight, action="append", required=True,
                    help="TASK=W over the last stage's task weights (repeatable), e.g. PIX_CHG=12")
    ap.add_argument("--no-heads", action="store_true",
                    help="weigh distill.dense 0: no head of the objective starts afresh (ce only)")
    ap.add_argument("--limit", type=int, default=1200, help="test records per task scored (1200: all of them)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "teacher_stage_pilot.json")
    args = ap.parse_args()
    from runtime_cpu import machine

    weights = dict(args.weight)
    cfg = load_config(HERE / "recipes" / "fidelity.yaml", quick=False)
    data = data_paths(FIDELITY / "data")
    last, teacher = final_teacher(cfg, data)
    table = HERE / "results" / "fidelity.json"
    before = json.loads(table.read_text())["models"]["teacher"]["eval"]
    heads = not args.no_heads
    stage = len(teacher_stages(cfg)) + 1
    recipe = stage_recipe(last, teacher, weights, args.steps, FIDELITY / "extra" / run_name(weights, args.steps, heads, stage), heads)
    t0 = time.perf_counter()
    run = train(recipe)
    scores = score(run["student"], Path(data["test"]), FIDELITY / "data", args.limit, cfg.eval.max_new_tokens)
    result = {"what": "benchmarks/teacher_stage_pilot.py: one more teacher stage with some tasks drawn more often",
              "command": "python benchmarks/teacher_stage_pilot.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": {**machine(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
              "weights": weights, "task_weights": recipe["data"]["task_weights"], "steps": args.steps, "heads": heads,
              "lr": recipe["distill"]["lr"], "limit": args.limit, "params": params(run["student"]),
              "before": {"source": f"{table.relative_to(HERE.parent)} models.teacher.eval (every test record)",
                         "headline": before["headline"], "average": before["average"]},
              "after": {"headline": scores["headline"], "average": scores["average"], "counts": scores["counts"]},
              "train": {k: v for k, v in run.items() if k != "student"} | {"steady_samples_per_s": steady_rate(Path(recipe["out"]))},
              "wall_s": time.perf_counter() - t0}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    rows = [f"{t} {before['headline'][t]:.3f} -> {scores['headline'][t]:.3f}" for t in scores["headline"]]
    print("\n".join(rows) + f"\naverage {before['average']:.3f} -> {scores['average']:.3f}\nwrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
