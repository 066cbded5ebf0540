"""Student levers against the table's own KD + hidden students at the same length, on the same test records.

    OMP_NUM_THREADS=1 python benchmarks/student_levers.py \
        --run wide_vision=benchmarks/work/fidelity/extra/kd_hidden_30000_vision_dims-16-32-48-64_final \
        --run vision_stages=benchmarks/work/fidelity/extra/kd_hidden_30000_hidden.stages-0.5_final

A lever (a wider vision tower, vision-stage matching: student_pilot.py) trains the table's KD + hidden recipe for
its 30,000 steps with one thing changed and scores every test record, keeping the predictions in its run folder.
The table's students then go on to a finish stage, so the table's numbers are not a lever's baseline. This scores
the table's KD + hidden students as they stood after their 30,000 steps (work/fidelity/students/kd_hidden/seedN,
the training run before `_finish`), once: the predictions are kept in that run's folder, beside its student, and
reused while they are there (delete them to score again). It then compares, with fidelity.py's paired bootstrap
(tiercel.evaluate.compare, 1,000 rounds, on the same records), each lever against each of the two seeds, and the
seed-1 student against the seed-0 one: the last says how far a seed alone moves each task, so a lever's change
within it is not the lever's.

`--finished` compares finished students instead: the levers' finish stages (student_stage_pilot.py, whose run
folders keep their predictions) against the table's KD + hidden students after their own finish stage, whose
predictions the fidelity run's eval stages kept (work/fidelity/predictions/eval__kd_hidden__seedN.json.gz, every
test record); it never scores them again.

    OMP_NUM_THREADS=1 python benchmarks/student_levers.py --finished --out benchmarks/results/student_levers_finished.json \
        --run vision_stages=benchmarks/work/fidelity/extra/student_stage_kd_hidden_30000_hidden.stages-0.5_final_3000_op0_lr0.0002_noheads

Every run must distil from the same teacher file as the baseline (its recipe's teacher.path), else the script
stops with one line. Writes benchmarks/results/student_levers.json: commit, command, machine, the teacher's
average on the same records (its evaluation in the fidelity run), per model its headlines, average and share of
the teacher's, and the paired comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from fidelity import PAIRED_ROUNDS, paired  # noqa: E402
from fidelity_config import data_paths, load_config  # noqa: E402
from image_use import commit  # noqa: E402
from student_pilot import PREDICTIONS  # noqa: E402
from synth_runs import score  # noqa: E402

FIDELITY = HERE / "work" / "fidelity"


def baselines(finished: bool) -> dict[str, tuple[Path, Path]]:
    """The table's two KD + hidden students: {name: (training run folder, its predictions)}, after 30,000 steps or,
    `finished`, after the finish stage (predictions from the fidelity run's eval stages). The first is the base."""
    runs = FIDELITY / "students" / "kd_hidden"
    if finished:
        return {f"kd_hidden/seed{s}_finish": (runs / f"seed{s}_finish", FIDELITY / "predictions" / f"eval__kd_hidden__seed{s}.json.gz")
                for s in (0, 1)}
    return {f"kd_hidden/seed{s}": (runs / f"seed{s}", runs / f"seed{s}" / PREDICTIONS) for s in (0, 1)}


def teacher_of(run: Path) -> str:
    """The teacher folder a training run distilled from (its recipe.yaml's teacher.path, resolved)."""
    import yaml

    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    return str(Path(recipe["teacher"]["path"]).resolve())


def named_run(text: str) -> tuple[str, Path]:
    """argparse type of --run: NAME=RUN_FOLDER, the folder holding the run's predictions."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=RUN_FOLDER")
    return name, Path(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=named_run, action="append", required=True, metavar="NAME=RUN_FOLDER",
                    help="a lever's run folder holding predictions.json.gz (student_pilot.py's; with --finished, "
                    "student_stage_pilot.py's); repeatable")
    ap.add_argument("--limit", type=int, default=1200, help="test records per task the baselines score (the levers')")
    ap.add_argument("--finished", action="store_true",
                    help="compare finish-stage runs with the table's finished students (the fidelity run's predictions)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "student_levers.json")
    args = ap.parse_args()
    from runtime_cpu import machine

    bases = baselines(args.finished)
    base_name, second = list(bases)

    t0 = time.perf_counter()
    cfg = load_config(HERE / "recipes" / "fidelity.yaml", quick=False)
    folder = FIDELITY / "data"
    data = data_paths(folder)
    everyone = {**bases, **{name: (run, run / PREDICTIONS) for name, run in args.run}}  # name: (run folder, predictions)
    teacher = teacher_of(bases[base_name][0])
    for name, (run, _) in everyone.items():
        if not (run / "recipe.yaml").is_file():
            sys.exit(f"{run}: no recipe.yaml; give a training run's folder for {name}")
        if teacher_of(run) != teacher:
            sys.exit(f"{run}: {name} distilled from {teacher_of(run)}, not the baseline's teacher {teacher}")
    for name, (run, predictions) in bases.items():
        if predictions.is_file():
            continue
        if args.finished:
            sys.exit(f"{predictions}: not there; the fidelity run has not evaluated {name} (benchmarks/fidelity.py)")
        print(f"{name}: scoring {run / 'student'} on {args.limit} test records per task", flush=True)
        score(run / "student", Path(data["test"]), folder, args.limit, cfg.eval.max_new_tokens, predictions=predictions)
    for name, run in args.run:
        if not (run / PREDICTIONS).is_file():
            sys.exit(f"{run / PREDICTIONS}: not there; the run has not been scored (student_pilot.py and "
                     "student_stage_pilot.py score it at its end)")
    teacher_eval = json.loads((FIDELITY / "stages" / "eval__teacher.json").read_text())["result"]
    teacher_average = teacher_eval["average"]

    pairs = [(second, base_name)] + [(name, base) for name, _ in args.run for base in bases]
    comparisons = {}
    for name, base in pairs:
        print(f"{name} against {base}: paired bootstrap, {PAIRED_ROUNDS} rounds", flush=True)
        comparisons[f"{name} - {base}"] = {"base": base, "other": name, **paired(
            everyone[base][1], everyone[name][1], PAIRED_ROUNDS, 0.95, 0)}
    models = {}
    for got in comparisons.values():
        for side in ("base", "other"):
            run, predictions = everyone[got[side]]
            models.setdefault(got[side], {"path": str(run), "predictions": str(predictions),
                                          "headline": {t: p[side] for t, p in got["per_task"].items()},
                                          "average": got["average"][side]})
    for m in models.values():
        m["share_of_teacher"] = m["average"] / teacher_average
    results = {"what": "benchmarks/student_levers.py: student levers against the table's KD + hidden students "
                       + ("after the finish stage" if args.finished else "at 30,000 steps") + ", paired on the same test records",
               "finished": args.finished,
               "command": "python benchmarks/student_levers.py " + " ".join(sys.argv[1:]), "commit": commit(),
               "machine": {**machine(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
               "limit": None if args.finished else args.limit, "teacher": {"path": teacher, "average": teacher_average,
                                                "headline": teacher_eval["headline"]},
               "models": models, "paired": comparisons, "wall_s": time.perf_counter() - t0}
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"wrote {args.out}")


def table(results: dict) -> str:
    """Markdown: per task the teacher's and each model's headline, then each paired change (bold where its interval
    excludes 0), the average and the share of the teacher's."""
    from tiercel.evaluate.compare import change_cell

    names, teacher = list(results["models"]), results["teacher"]
    rows = ["| task | teacher | " + " | ".join(names) + " | " + " | ".join(results["paired"]) + " |",
            "|---" * (2 + len(names) + len(results["paired"])) + "|"]
    for tag in next(iter(results["models"].values()))["headline"]:
        cells = [f"{teacher['headline'][tag]:.3f}", *(f"{m['headline'][tag]:.3f}" for m in results["models"].values()),
                 *(change_cell(p["per_task"][tag]) for p in results["paired"].values())]
        rows.append(f"| {tag} | " + " | ".join(cells) + " |")
    cells = [f"{teacher['average']:.3f}", *(f"{m['average']:.3f}" for m in results["models"].values()),
             *(change_cell(p["average"]) for p in results["paired"].values())]
    rows.append("| 14-task average | " + " | ".join(cells) + " |")
    rows.append("| share of the teacher's | | " + " | ".join(f"{m['share_of_teacher']:.1%}" for m in results["models"].values())
                + " |" + " |" * len(results["paired"]))
    return "\n".join(rows)


if __name__ == "__main__":
    main()
