"""A pilot of the fidelity benchmark's students, from a teacher checkpoint taken while the teacher still trains.

    OMP_NUM_THREADS=1 python benchmarks/student_pilot.py --teacher-step 33000 --steps 3000 [--objectives ce,kd]

fidelity.py trains its six students (CE, KD, KD + hidden; two seeds) only once the teacher's two stages are done,
for hours of CPU (its docstring's estimate, whose student rates came from this pilot). This answers two
questions before those hours are spent, on the CPU core the teacher leaves free: how fast the students
train at the YAML's shapes (samples/s, measured), and whether a student of this size starts reading positions
(the geometry headlines) within the first few thousand steps, KD against CE.

It copies the teacher checkpoint `benchmarks/work/fidelity/teacher/checkpoints/step_N` (a loadable model folder;
the trainer prunes old ones) to benchmarks/work/student_pilot/, builds each objective's recipe exactly as
fidelity.py does (fidelity_config.student_recipe, seed 0) with only `distill.steps` (and the warmup, capped at a
tenth of them) changed, trains them one after the other, scores each on the first `--limit` test records per task
(greedy, as fidelity_progress.py scores the teacher) and writes benchmarks/results/student_pilot.json (commit,
command, machine, per run samples/s over the whole run and over its second half, wall time and headlines; a
finished run is reused, so a rerun only scores again; so are the teacher's scores, from `--out`, where its file
(sha256), the records and max_new_tokens are the same: a resumed long run does not score its teacher again). Each
run's predictions are kept in its folder (predictions.json.gz) for benchmarks/caption_facts.py and `tiercel
compare`. A pilot teacher is not the final one, and a pilot of 3,000 steps is not the table: the numbers say where
the students stand early, not what they reach.

`--final-teacher` distils from the finished teacher instead of a checkpoint, as fidelity.py's students do: with
`--steps 60000 --objectives kd_hidden --limit 1200` it asks whether the KD + hidden student, still rising at the
table's 30,000 steps, keeps rising when trained twice as long from scratch (same recipe, longer schedule). Such a
run trains in benchmarks/work/fidelity/extra/, so `fidelity_carry.py save` carries it to the next machine.

`--init slice` starts each student from the teacher's leading slices (`student.init: teacher, widths: slice`,
docs/distill.md) instead of the YAML's random init, in its own run folder (`kd_3000_slice`), so it compares
with the random-init run of the same length.

`--overrides '{"vision_dims": [12, 24, 48, 64]}'` changes the student's shape (merged over the YAML's
student.overrides), in a run folder named after it; the script refuses a student less than 4x smaller than the
teacher, as fidelity.py does.

`--distill '{"hidden": {"stages": 0.5}}'` changes the recipe's `distill:` section the same way (merged key by key,
nested sections too), in a folder named after it (`hidden.stages-0.5`).

`--seed 1` trains each student with the fidelity table's second seed (fidelity_config.student_recipe's seed), in a
folder named after it (`_seed1`), so a lever is compared with the table's student of the same seed.

`--bundles` also runs fidelity.py's bundle stages on the first objective's student, with the YAML's `bundles:`
settings and fidelity.py's own functions: export (ONNX + OpenVINO IR), every scheme on every backend through
the accuracy guard, each bundle scored on the same `--limit` records and decoded unconstrained / stepwise /
jump-forward on `constrained.backend` (`constrained.limit` records per task). So a guard that refuses a scheme,
or a stage that fails at the students' real size, shows up hours before the full run reaches it.
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
from fidelity_config import data_paths, load_config, merge, student_recipe, teacher_recipes  # noqa: E402
from image_use import commit  # noqa: E402
from synth_runs import params, score, train  # noqa: E402

from tiercel.fileio import sha256_file  # noqa: E402

FIDELITY = HERE / "work" / "fidelity"
WORK = HERE / "work" / "student_pilot"
PREDICTIONS = "predictions.json.gz"  # a scored run's predictions, in its folder (student_levers.py reads them)
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


def positive_steps(text: str) -> int:
    """argparse type of --steps: a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of steps >= 1")
    return n


def json_object(text: str) -> dict:
    """argparse type of --overrides and --distill: a non-empty JSON object."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a JSON object, e.g. '{{\"vision_dims\": [12, 24, 48, 64]}}'")
    return value


def overrides_name(overrides: dict) -> str:
    """A run folder's suffix for `overrides`: vision_dims=[12, 24, 48, 64] -> vision_dims-12-24-48-64."""
    def text(v):
        return "-".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    return "_".join(f"{k}-{text(v)}" for k, v in sorted(overrides.items()))


def flat(tree: dict, prefix: str = "") -> dict:
    """{"hidden": {"stages": 0.5}} -> {"hidden.stages": 0.5}."""
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def run_name(objective: str, args: argparse.Namespace) -> str:
    """One folder name per run: kd_3000, kd_3000_slice, kd_hidden_30000_hidden.stages-0.5_seed1_final."""
    return (f"{objective}_{args.steps}" + (f"_{args.init}" if args.init else "")
            + (f"_{overrides_name(args.overrides)}" if args.overrides else "")
            + (f"_{overrides_name(flat(args.distill))}" if args.distill else "")
            + (f"_seed{args.seed}" if args.seed else "") + ("_final" if args.final_teacher else ""))


def relengthened(distill: dict, steps: int) -> dict:
    """A recipe's `distill:` section run for `steps` steps: the warmup capped at a tenth of them, no validation."""
    return {**distill, "steps": steps, "warmup_steps": min(distill.get("warmup_steps", 0), steps // 10), "eval_every": 0}


def without_heads(distill: dict) -> dict:
    """A recipe's `distill:` section with the terms that train through heads of their own weighed 0
    (distill.hidden's projections, distill.dense's heads): a run from a model whose heads were not saved then
    draws none afresh, and trains on ce and kd only."""
    out = dict(distill)
    if "hidden" in out:
        out["hidden"] = {**out["hidden"], "vision": 0.0, "encoder": 0.0, "decoder": 0.0}
    if "dense" in out:
        out["dense"] = {**out["dense"], "answer": 0.0, "objects": 0.0}
    return out


def earlier(out: Path, key: str, same: dict, limit: int | None = None) -> dict | None:
    """`key`'s scored entry (headline and average) in an earlier JSON `out`, where its fields in `same` are equal
    and, with `limit`, the file's top-level limit too; else None (no file, unreadable, or anything differs)."""
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError):
        return None
    was = old.get(key) if isinstance(old, dict) else None
    ok = (isinstance(was, dict) and (limit is None or old.get("limit") == limit) and "headline" in was
          and "average" in was and all(was.get(k) == v for k, v in same.items()))
    return was if ok else None


def earlier_teacher(out: Path, teacher: dict, limit: int) -> dict | None:
    """The teacher's scores in an earlier `out` of this script, where they are of the same teacher file (sha256),
    step, records (`limit`) and max_new_tokens; else None (no file, unreadable, or anything differs)."""
    return earlier(out, "teacher", {k: teacher[k] for k in ("sha256", "step", "max_new_tokens")}, limit)


def final_teacher(cfg, data: dict) -> tuple[dict, Path]:
    """The fidelity run's last teacher stage recipe and its finished model folder; exits with one line if the
    teacher has not finished."""
    last = teacher_recipes(cfg, FIDELITY, data, quick=False)[-1]
    teacher = Path(last["out"]) / "student"
    if not (teacher / "model.safetensors").is_file():
        sys.exit(f"{teacher}: the fidelity run's teacher has not finished; run benchmarks/fidelity.py first")
    return last, teacher


def bundles(student: Path, cfg, data: dict, limit: int, out: Path, threads: int | None, write) -> dict:
    """fidelity.py's bundle stages on one student: {bundle key: its quantize record (guard), scores, constrained
    summary, or the error that stopped it}; `write(rows)` is called after each bundle."""
    from fidelity import bundle_key, constrained, quantize

    from tiercel.export.bundle import export_checkpoint

    b, e, c = cfg.bundles, cfg.eval, cfg.constrained
    test, root, fp32, rows = Path(data["test"]), Path(data["root"]), out / "fp32", {}
    t0 = time.perf_counter()
    export_checkpoint(student, fp32, backends=tuple(b.backends), decoder="split", overwrite=True)
    rows["export_s"] = time.perf_counter() - t0
    for backend in b.backends:
        for scheme in ("fp32", *b.schemes):
            path, row = (fp32 if scheme == "fp32" else out / f"{backend}-{scheme}"), {}
            rows[bundle_key(backend, scheme)] = row
            try:
                if scheme != "fp32":
                    t0 = time.perf_counter()
                    row["quantize"] = quantize(fp32, path, backend, scheme, b, data) | {"seconds": time.perf_counter() - t0}
                s = score(path, test, root, limit, e.max_new_tokens, backend=backend, threads=threads)
                row.update(headline=s["headline"], average=s["average"], seconds=s["seconds"])
                if backend == c.backend:
                    row["constrained"] = constrained(path, backend, test, c.limit, e.max_new_tokens, threads)
            except Exception as err:  # recorded as that bundle's error, as fidelity.py does; the others still run
                row["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
            print(f"{bundle_key(backend, scheme)}: " + (row.get("error") or f"average {row['average']:.3f}"), flush=True)
            write(rows)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--teacher-step", type=int, help="the teacher checkpoint to distil from")
    who.add_argument("--final-teacher", action="store_true",
                     help="distil from the fidelity run's finished teacher (its last stage), as fidelity.py does")
    ap.add_argument("--steps", type=positive_steps, default=3000, help="training steps per student (fidelity.yaml: 30,000)")
    ap.add_argument("--objectives", default="ce,kd", help="comma-separated: ce, kd, kd_hidden")
    ap.add_argument("--limit", type=int, default=64, help="test records per task scored")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "student_pilot.json")
    ap.add_argument("--init", choices=["slice"], help="start each student from the teacher's leading slices "
                    "(student.init teacher, widths slice) instead of the YAML's random init; runs get their own folders")
    ap.add_argument("--overrides", type=json_object, help="student.overrides fields to change, as JSON "
                    "(merged over the YAML's); runs get their own folders")
    ap.add_argument("--distill", type=json_object, help="distill: fields to change, as JSON (merged key by key "
                    "over the objective's); runs get their own folders")
    ap.add_argument("--seed", type=int, default=0, help="the students' seed (the fidelity table trains 0 and 1); "
                    "a seed other than 0 gets its own folders")
    ap.add_argument("--bundles", action="store_true",
                    help="also export, quantize, score and decode constrained the first objective's student (fidelity.yaml bundles:)")
    args = ap.parse_args()
    from runtime_cpu import machine

    def run_dir(objective: str) -> Path:
        # a run from the final teacher lives in the fidelity work folder, so benchmarks/fidelity_carry.py carries its
        # newest checkpoint to the next machine with the rest of that run
        return (FIDELITY / "extra" if args.final_teacher else WORK) / run_name(objective, args)

    cfg = load_config(HERE / "recipes" / "fidelity.yaml", quick=False)
    folder = FIDELITY / "data"
    data = data_paths(folder)
    if args.final_teacher:
        _, teacher = final_teacher(cfg, data)
    else:
        src = FIDELITY / "teacher" / "checkpoints" / f"step_{args.teacher_step:06d}"
        teacher = WORK / f"teacher_step_{args.teacher_step:06d}"
        if not teacher.is_dir():
            if not (src / "model.safetensors").is_file():
                sys.exit(f"{src}: no such teacher checkpoint (the trainer keeps its last two); pass a step it has")
            shutil.copytree(src, teacher.with_name(teacher.name + ".copying"), dirs_exist_ok=True)
            teacher.with_name(teacher.name + ".copying").rename(teacher)
    from fidelity import student_size
    from fidelity_report import SIZE_RATIO

    results = {"what": "benchmarks/student_pilot.py: fidelity students trained briefly from a teacher checkpoint",
               "command": "python benchmarks/student_pilot.py " + " ".join(sys.argv[1:]), "commit": commit(),
               "machine": {**machine(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
               "teacher": {"step": "final" if args.final_teacher else args.teacher_step, "params": params(teacher)}, "steps": args.steps,
               "limit": args.limit, "seed": args.seed, "runs": {}}
    results["teacher"].update(sha256=sha256_file(teacher / "model.safetensors"), max_new_tokens=cfg.eval.max_new_tokens)
    earlier = earlier_teacher(args.out, results["teacher"], args.limit)
    if earlier is None:  # a resumed run scores its teacher once: the JSON holds it from the first start on
        teacher_scores = score(teacher, Path(data["test"]), folder, args.limit, cfg.eval.max_new_tokens)
        results["teacher"].update(headline=teacher_scores["headline"], average=teacher_scores["average"])
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    else:
        results["teacher"].update(headline=earlier["headline"], average=earlier["average"])
        print(f"teacher: scores of the same teacher file and records reused from {args.out}", flush=True)
    for objective in args.objectives.split(","):
        recipe = student_recipe(cfg, WORK, data, teacher, objective, args.seed, quick=False)
        recipe["out"] = str(run_dir(objective))
        if args.init == "slice":  # the teacher's leading slices (student.widths, docs/distill.md) instead of random
            recipe["student"] = {**recipe["student"], "init": "teacher", "widths": "slice"}
        if args.overrides:
            recipe["student"] = {**recipe["student"], "overrides": {**recipe["student"].get("overrides", {}), **args.overrides}}
            t_params, s_params = student_size(recipe, teacher)
            if s_params is not None and t_params < SIZE_RATIO * s_params:
                sys.exit(f"--overrides: the student is only {t_params / s_params:.2f}x smaller than the teacher; the "
                         f"issue asks >= {SIZE_RATIO:g}x")
        if args.distill:
            recipe["distill"] = merge(recipe["distill"], args.distill)
        recipe["distill"] = relengthened(recipe["distill"], args.steps)
        t0 = time.perf_counter()
        run = train(recipe)
        scores = score(run["student"], Path(data["test"]), folder, args.limit, cfg.eval.max_new_tokens,
                       predictions=Path(recipe["out"]) / PREDICTIONS)
        results["runs"][objective] = {**{k: v for k, v in run.items() if k != "student"},
                                      "steady_samples_per_s": steady_rate(Path(recipe["out"])),
                                      "params": params(run["student"]), "wall_s": time.perf_counter() - t0,
                                      "headline": scores["headline"], "average": scores["average"]}
        geo = ", ".join(f"{t} {scores['headline'][t]:.3f}" for t in GEOMETRY)
        print(f"{objective}: {steady_rate(Path(recipe['out'])) or 0:.1f} samples/s, average {scores['average']:.3f}; {geo}",
              flush=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.bundles:
        first = args.objectives.split(",")[0]
        student = run_dir(first) / "student"
        threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or None

        def write(rows: dict) -> None:
            results["bundles"] = {"student": first, **rows}
            args.out.write_text(json.dumps(results, indent=1) + "\n")

        bundles(student, cfg, data, args.limit, WORK / f"bundles_{student.parent.name}", threads, write)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
