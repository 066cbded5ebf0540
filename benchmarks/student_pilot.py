"""A pilot of the fidelity benchmark's students, from a teacher checkpoint taken while the teacher still trains.

    OMP_NUM_THREADS=1 python benchmarks/student_pilot.py --teacher-step 33000 --steps 3000 [--objectives ce,kd]

fidelity.py trains its six students (CE, KD, KD + hidden; two seeds) only once the teacher's two stages are done,
12,000 steps each: about 5.6 hours of CPU by its docstring's estimate, whose student rates were guesses. This
answers two questions before those hours are spent, on the CPU core the teacher leaves free: how fast the students
train at the YAML's shapes (samples/s, measured), and whether a student of this size starts reading positions
(the geometry headlines) within the first few thousand steps, KD against CE.

It copies the teacher checkpoint `benchmarks/work/fidelity/teacher/checkpoints/step_N` (a loadable model folder;
the trainer prunes old ones) to benchmarks/work/student_pilot/, builds each objective's recipe exactly as
fidelity.py does (fidelity_config.student_recipe, seed 0) with only `distill.steps` (and the warmup, capped at a
tenth of them) changed, trains them one after the other, scores each on the first `--limit` test records per task
(greedy, as fidelity_progress.py scores the teacher) and writes benchmarks/results/student_pilot.json (commit,
command, machine, per run samples/s over the whole run and over its second half, wall time and headlines; a
finished run is reused, so a rerun only scores again). A pilot teacher is not the final one, and a pilot
of 3,000 steps is not the table: the numbers say where the students stand early, not what they reach.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from fidelity_config import data_paths, load_config, student_recipe  # noqa: E402
from image_use import commit  # noqa: E402
from synth_runs import params, score, train  # noqa: E402

FIDELITY = HERE / "work" / "fidelity"
WORK = HERE / "work" / "student_pilot"
GEOMETRY = ("REG_VG", "REG_DET_HBB", "REG_DET_OBB", "PIX_SEG", "PIX_CHG")


def steady_rate(run: Path) -> float | None:
    """Samples/s over the second half of a run's logged steps (the trainer's own figure counts from the first step,
    so it includes torch.compile's minutes of warm-up)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train_seconds"' in x]
    rows = [r for r in rows if "samples" in r]
    if len(rows) < 4:
        return None
    a, b = rows[len(rows) // 2], rows[-1]
    return (b["step"] - a["step"]) * b["samples"] / (b["train_seconds"] - a["train_seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-step", type=int, required=True, help="the teacher checkpoint to distil from")
    ap.add_argument("--steps", type=int, default=3000, help="training steps per student (fidelity.yaml: 12,000)")
    ap.add_argument("--objectives", default="ce,kd", help="comma-separated: ce, kd, kd_hidden")
    ap.add_argument("--limit", type=int, default=64, help="test records per task scored")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "student_pilot.json")
    args = ap.parse_args()
    from runtime_cpu import machine

    src = FIDELITY / "teacher" / "checkpoints" / f"step_{args.teacher_step:06d}"
    teacher = WORK / f"teacher_step_{args.teacher_step:06d}"
    if not teacher.is_dir():
        if not (src / "model.safetensors").is_file():
            sys.exit(f"{src}: no such teacher checkpoint (the trainer keeps its last two); pass a step it has")
        shutil.copytree(src, teacher.with_name(teacher.name + ".copying"), dirs_exist_ok=True)
        teacher.with_name(teacher.name + ".copying").rename(teacher)
    cfg = load_config(HERE / "recipes" / "fidelity.yaml", quick=False)
    folder = FIDELITY / "data"
    data = data_paths(folder)
    results = {"what": "benchmarks/student_pilot.py: fidelity students trained briefly from a teacher checkpoint",
               "command": "python benchmarks/student_pilot.py " + " ".join(sys.argv[1:]), "commit": commit(),
               "machine": {**machine(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
               "teacher": {"step": args.teacher_step, "params": params(teacher)}, "steps": args.steps,
               "limit": args.limit, "runs": {}}
    teacher_scores = score(teacher, Path(data["test"]), folder, args.limit, cfg.eval.max_new_tokens)
    results["teacher"].update(headline=teacher_scores["headline"], average=teacher_scores["average"])
    for objective in args.objectives.split(","):
        recipe = student_recipe(cfg, WORK, data, teacher, objective, 0, quick=False)
        recipe["out"] = str(WORK / f"{objective}_{args.steps}")
        recipe["distill"] = {**recipe["distill"], "steps": args.steps,
                             "warmup_steps": min(recipe["distill"].get("warmup_steps", 0), args.steps // 10),
                             "eval_every": 0}
        t0 = time.perf_counter()
        run = train(recipe)
        scores = score(run["student"], Path(data["test"]), folder, args.limit, cfg.eval.max_new_tokens)
        results["runs"][objective] = {**{k: v for k, v in run.items() if k != "student"},
                                      "steady_samples_per_s": steady_rate(Path(recipe["out"])),
                                      "params": params(run["student"]), "wall_s": time.perf_counter() - t0,
                                      "headline": scores["headline"], "average": scores["average"]}
        geo = ", ".join(f"{t} {scores['headline'][t]:.3f}" for t in GEOMETRY)
        print(f"{objective}: {steady_rate(Path(recipe['out'])) or 0:.1f} samples/s, average {scores['average']:.3f}; {geo}",
              flush=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
