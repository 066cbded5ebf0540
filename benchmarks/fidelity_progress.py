"""How far the fidelity benchmark's teacher and students have come: `tiercel eval` on their checkpoints.

    python benchmarks/fidelity_progress.py                    # the latest checkpoint, 64 test records per task
    python benchmarks/fidelity_progress.py --step 17000 --limit 64
    python benchmarks/fidelity_progress.py --stage 2 --step 3000   # the teacher's second stage (teacher_stage2/)
    python benchmarks/fidelity_progress.py --step 40000 50000 60000 --wait   # each as it is written (background)
    python benchmarks/fidelity_progress.py --student kd/seed0 --step 10000 20000 30000 --wait   # a student

`--student OBJECTIVE/seedN` scores that student's checkpoints (benchmarks/work/fidelity/students/...; `extra/RUN`: a
longer run under benchmarks/work/fidelity/extra/, docs/fidelity.md "What is left") instead and
writes to benchmarks/results/fidelity_student_progress.json: how soon each objective reads positions, which the
table's final numbers do not show.

benchmarks/fidelity.py trains the teacher for 60,000 steps (about 5 h of one core) and keeps its last two checkpoints
(benchmarks/work/fidelity/teacher/checkpoints/step_NNNNNN, loadable model directories; so a step is there for about
2,000 steps of training, and `--wait` polls for the ones asked and scores each when it appears). This runs `tiercel
eval` on one of them, on the first `--limit` test records of every task (greedy, the bundle defaults, constrained
decoding as `tiercel eval` does by default), and appends the headline per task to
benchmarks/results/fidelity_teacher_progress.json with the step, commit, command and machine, so the curve towards
issue 22's targets builds up across sessions. The final numbers are fidelity.py's (all test records).

Rows are kept per training (`--run`): the first teacher's checkpoints were lost with its machine on 2026-12-04 during
stage 2, before any stage-2 checkpoint was scored (rows without a run are that training, run 1); the same recipe then
started again from step 0 as run 2, so its rows sit beside run 1's at the same steps; run 2 was lost the same way on
2026-12-05 at about step 56,000, and run 3 (the default now) is the one carried between machines by
benchmarks/fidelity_carry.py. Each row also has the checkpoint's `train_seconds` (wall time of training up to it,
over every resume; null for checkpoints written before the trainer recorded it).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from image_use import commit  # benchmarks/ is on sys.path when this runs as a script

from tiercel.fileio import atomic_write_text

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "fidelity"
DATA = HERE / "work" / "fidelity" / "data" / "test.json"
OUT = HERE / "results" / "fidelity_teacher_progress.json"
OUT_STUDENTS = HERE / "results" / "fidelity_student_progress.json"
TARGETS = {"REG_VG": 0.6, "REG_DET_HBB": 0.4, "REG_DET_OBB": 0.3, "PIX_SEG": 0.4, "PIX_CHG": 0.3}  # issue 22


def train_seconds(ckpt: Path) -> float | None:
    """The wall time of training up to this checkpoint (trainer_state.pt), None where the trainer did not record it."""
    from tiercel.distill.checkpoints import load_state

    seconds = load_state(ckpt / "trainer_state.pt").get("train_seconds")
    return None if seconds is None else float(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, nargs="+", help="checkpoint step(s) (default: the latest)")
    ap.add_argument("--wait", action="store_true", help="wait for each --step's checkpoint to be written, then score it")
    ap.add_argument("--limit", type=int, default=64, help="test records per task")
    ap.add_argument("--stage", type=int, default=1, help="the teacher's training stage (fidelity.yaml teacher.stages)")
    ap.add_argument("--run", type=int, default=3, help="which training of the teacher the checkpoints belong to "
                    "(1 and 2: lost with their machines; 3: started on 2026-12-05, carried in git)")
    ap.add_argument("--student", metavar="OBJECTIVE/seedN", help="score this student's checkpoints instead of the "
                    "teacher's, e.g. kd/seed0 (fidelity.yaml student.objectives and seeds), or extra/RUN for a run "
                    "benchmarks/student_pilot.py --final-teacher trains (e.g. extra/kd_hidden_60000_final)")
    args = ap.parse_args()
    if args.wait and not args.step:
        sys.exit("--wait: give the checkpoint steps to wait for with --step")
    if args.student:
        base = WORK if args.student.startswith("extra/") else WORK / "students"
        ckpts = base / args.student / "checkpoints"
        if not ckpts.parent.is_dir():
            found = sorted(str(p.parent.relative_to(WORK / "students")) for p in (WORK / "students").glob("*/*/recipe.yaml"))
            sys.exit(f"--student {args.student}: no such student under {base} (found: {', '.join(found) or 'none'})")
    else:
        ckpts = WORK / ("teacher" if args.stage == 1 else f"teacher_stage{args.stage}") / "checkpoints"
    for step in args.step or [None]:
        name = f"step_{step:06d}" if step else (ckpts / "latest").read_text().strip()
        while args.wait and not (ckpts / name).is_dir():  # checkpoints appear whole (renamed into place)
            time.sleep(30)
        score(args, ckpts / name)


def score(args, ckpt: Path) -> None:
    """Evaluate one checkpoint and add its row to the progress JSON."""
    name = ckpt.name
    if not ckpt.is_dir():
        sys.exit(f"{ckpt}: no such checkpoint (kept: {', '.join(sorted(p.name for p in ckpt.parent.glob('step_*')))})")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "eval.json"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tiercel", "eval", str(ckpt), "--data", str(DATA), "--limit",
                        str(args.limit), "--json", str(report)], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        seconds = time.perf_counter() - t0
        r = json.loads(report.read_text())
    headline = {tag: h["value"] for tag, h in r["headline"].items()}
    who = {"model": args.student} if args.student else {"run": args.run, "stage": args.stage}
    row = {**who, "step": int(name.split("_")[1]), "limit": args.limit, "records": sum(r["counts"].values()),
           "headline": headline, "metrics": {tag: h["metric"] for tag, h in r["headline"].items()}, "average_headline": r["average_headline"],
           "geometry_targets": {t: {"value": headline[t], "target": v, "met": headline[t] >= v} for t, v in TARGETS.items()},
           "generation": r["generation"], "eval_seconds": seconds, "train_seconds": train_seconds(ckpt), "commit": commit(),
           "command": "python benchmarks/fidelity_progress.py " + " ".join(sys.argv[1:]),
           "machine": {"cores": os.cpu_count(), "loadavg": os.getloadavg()},
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = OUT_STUDENTS if args.student else OUT
    with open(out.parent / f".{out.name}.lock", "w") as lock:  # one waiter per student may finish at the same time
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = json.loads(out.read_text())["runs"] if out.is_file() else []
        at = lambda x: (x.get("model", ""), x.get("run", 1), x.get("stage", 1), x["step"], x["limit"])  # noqa: E731
        runs = sorted([x for x in runs if at(x) != at(row)] + [row], key=at)
        atomic_write_text(out, json.dumps({"what": __doc__.splitlines()[0], "runs": runs}, indent=1) + "\n")
    label = args.student or f"run {row['run']} stage {row['stage']}"
    print(f"{label} step {row['step']}: " + ", ".join(f"{t} {v['value']:.3f}/{v['target']}" for t, v in row["geometry_targets"].items())
          + f", 14-task average {row['average_headline']:.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
