"""Does a canonical corner order of the training quads lift REG_DET_OBB? An A/B from one teacher checkpoint.

    python benchmarks/quad_order.py --checkpoint CKPT                      # both arms, one after the other (CPU)
    python benchmarks/quad_order.py --checkpoint CKPT --parallel --steps 6000 --max-seconds 300   # a GPU machine
    python benchmarks/quad_order.py --diagnose --checkpoint CKPT --data DATA_DIR   # the numbers behind the change

`--diagnose` measures, without training: which corner the training quads of DATA_DIR/train.json start from
(0 = the one canonical_quad puts first, then clockwise), and, on the first `--limit` test records of REG_DET_OBB
and REG_DET_HBB, the share of CKPT's predicted boxes and quads that overlap a reference at IoU >= 0.5 (the IoU of
tiercel's metric: convex hulls for quads) and of predicted quads whose corners cross (not in convex order). Writes
benchmarks/results/quad_order_diagnosis.json.

The synthetic generator writes each oriented box from the corner its rotation puts first, so the first corner of
a training quad is any of the four (benchmarks/results/quad_order.md has the counts). This fine-tunes the same
checkpoint twice on the same data, with the fidelity teacher's recipe (benchmarks/recipes/fidelity.yaml, its
`teacher:` section: task weights, dense losses, answer length), changing only `data.quad_order`: `keep` (as
written) and `canonical` (tiercel.tasks.grammar.canonical_quad). Then both are scored on REG_DET_OBB and
REG_DET_HBB (greedy, CPU fp32) at the newest step both arms reached, beside the checkpoint they started from.

Data: a fresh synthetic benchmark with the fidelity knobs and another seed (`--seed`, default 1), so none of
its scenes were in the checkpoint's training data. `--max-seconds` stops each arm's training there (its
newest checkpoint is scored), so a lease of fixed length always ends with a result. Writes
benchmarks/results/quad_order.json (commit, command, machine, per arm: steps, samples/s, scores). On a machine
whose copy of the tree has no or an older .git (a device machine), pass the commit as GIT_COMMIT=<hash>.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from fidelity_config import merge  # noqa: E402
from image_use import commit  # noqa: E402

TASKS = ("REG_DET_OBB", "REG_DET_HBB")
ARMS = ("keep", "canonical")


def make_data(work: Path, n: int, seed: int) -> Path:
    import yaml

    from tiercel.data.synth import generate
    from tiercel.data.synth.knobs import Knobs

    folder = work / "data"
    if not (folder / "test.json").is_file():
        cfg = yaml.safe_load((HERE / "recipes" / "fidelity.yaml").read_text())["data"]
        generate(folder, n=n, size=cfg["size"], seed=seed, knobs=Knobs(**cfg["knobs"]), overwrite=True)
    return folder


def arm_recipe(args, arm: str, data: Path) -> dict:
    import yaml

    teacher = yaml.safe_load((HERE / "recipes" / "fidelity.yaml").read_text())["teacher"]
    base = {"name": f"quad-order-{arm}", "out": str(args.work / arm), "seed": 0,
            "data": {"train": str(data / "train.json"), "val": str(data / "val.json"), "root": str(data),
                     "objects": str(data / "objects.json")}}
    recipe = merge(base, teacher)
    recipe["student"] = {"init": "checkpoint", "checkpoint": str(args.checkpoint)}
    recipe["tokenizer"] = {"source": "file", "path": str(args.checkpoint / "tokenizer.json")}
    recipe["data"]["quad_order"] = arm
    recipe["distill"] = {**recipe["distill"], "steps": args.steps, "lr": args.lr, "warmup_steps": args.warmup,
                         "save_every": args.save_every, "keep_checkpoints": 1000, "eval_every": 0,
                         "compile": False, "log_every": 50}
    return recipe


def train_arm(args, arm: str, data: Path) -> None:
    """Train one arm in a child process, stopped after --max-seconds; its checkpoints stay."""
    recipe = arm_recipe(args, arm, data)
    code = ("import json, sys; sys.path[:0] = %r; from synth_runs import train; train(json.loads(sys.argv[1]))"
            % [str(HERE), str(HERE.parent)])
    log = open(args.work / f"{arm}.log", "w")
    try:
        subprocess.run([sys.executable, "-c", code, json.dumps(recipe)], stdout=log, stderr=subprocess.STDOUT,
                       timeout=args.max_seconds, check=False)
    except subprocess.TimeoutExpired:
        print(f"{arm}: stopped after {args.max_seconds} s", flush=True)


def steps_of(run: Path) -> dict[int, Path]:
    return {int(p.name.split("_")[1]): p for p in (run / "checkpoints").glob("step_*") if (p / "model.safetensors").is_file()}


def evaluate(model: Path, data: Path, limit: int, threads: int) -> dict:
    from tiercel.evaluate import evaluate as tiercel_evaluate
    from tiercel.evaluate import open_predictor

    predictor = open_predictor(model, threads=threads)
    report = tiercel_evaluate(predictor, data / "test.json", data, tasks=list(TASKS), limit=limit,
                              generation={"num_beams": 1, "max_new_tokens": 128})
    return {"headline": report.headlines, "counts": report.counts, "seconds": report.seconds}


def start_corner(values: list[int]) -> int:
    """Which corner of `values` (8 bins) canonical_quad would put first: 0..3, counted clockwise from the first."""
    import numpy as np

    from tiercel.tasks.grammar import canonical_quad

    pts = [tuple(p) for p in np.asarray(values).reshape(4, 2).tolist()]
    x, y = np.asarray(pts, dtype=float).T
    clockwise = float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) >= 0
    first = tuple(canonical_quad(values)[:2])
    i = pts.index(first)
    return i if clockwise else (-i) % 4


def crosses(values: list[int]) -> bool:
    """Whether a quad's edges cross (its corners are not in the order of their convex hull)."""
    import numpy as np

    from tiercel.tasks.metrics.geometry import convex_hull

    pts = np.asarray(values, dtype=float).reshape(4, 2)
    hull = [tuple(p) for p in convex_hull(pts).tolist()]
    if len(hull) < 4:
        return True
    order = [hull.index(tuple(p)) for p in pts.tolist()]
    steps = {(b - a) % 4 for a, b in zip(order, order[1:] + order[:1])}
    return not (steps == {1} or steps == {3})


def diagnose(args) -> None:
    from collections import Counter

    import numpy as np

    from tiercel.data.sft import iter_records
    from tiercel.evaluate import evaluate as tiercel_evaluate
    from tiercel.evaluate import open_predictor
    from tiercel.tasks.grammar import read
    from tiercel.tasks.metrics.geometry import box_iou, convex_iou

    data = args.data.resolve()
    starts = Counter(start_corner(q) for r in iter_records(data / "train.json") if r.tag == "REG_DET_OBB"
                     for q in read(r.answer, "quad")[0])
    refs = {r.index: r.answer for r in iter_records(data / "test.json") if r.tag in TASKS}
    report = tiercel_evaluate(open_predictor(args.checkpoint, threads=args.threads), data / "test.json", data,
                              tasks=list(TASKS), limit=args.limit, keep_predictions=True,
                              generation={"num_beams": 1, "max_new_tokens": 128})
    kind = {"REG_DET_OBB": ("quad", convex_iou), "REG_DET_HBB": ("box", box_iou)}
    best: dict[str, list[float]] = {t: [] for t in TASKS}
    crossed = []
    for p in report.predictions:
        k, iou = kind[p["tag"]]
        truth = read(refs[p["index"]], k)[0]
        shape = (lambda v: np.asarray(v, float).reshape(4, 2)) if k == "quad" else (lambda v: v)
        for v in read(p["pred"]["raw"], k)[0]:
            best[p["tag"]].append(max((iou(shape(v), shape(t)) for t in truth), default=0.0))
            if k == "quad":
                crossed.append(crosses(v))
    n = sum(starts.values())
    result = {
        "what": "Where the training quads start, and how well a checkpoint's boxes and quads overlap the references",
        "commit": os.environ.get("GIT_COMMIT") or commit(), "command": "python benchmarks/quad_order.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "checkpoint": str(args.checkpoint), "data": str(data),
        "train_quads": n, "start_corner_share": {str(i): starts[i] / n for i in range(4)},
        "limit": args.limit, "headline": report.headlines,
        "predicted": {t: {"n": len(v), "iou50_share": float(np.mean(np.asarray(v) >= 0.5)) if v else None,
                          "median_iou": float(np.median(v)) if v else None} for t, v in best.items()},
        "predicted_quads_crossing_share": float(np.mean(crossed)) if crossed else None,
    }
    out = args.out.with_name("quad_order_diagnosis.json") if args.out.name == "quad_order.json" else args.out
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("start_corner_share", "headline", "predicted", "predicted_quads_crossing_share")}))
    print(f"wrote {out}")


def rates(run: Path) -> dict:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").is_file() else []
    r = [x["samples_per_s"] for x in lines if "samples_per_s" in x]
    return {"samples_per_s": r[-1] if r else None, "last_logged_step": max((x.get("step", 0) for x in lines), default=0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="the teacher checkpoint both arms start from")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "quad_order")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "quad_order.json")
    ap.add_argument("--n", type=int, default=42000, help="records of the generated benchmark (train/val/test 80/10/10)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--max-seconds", type=float, default=None, help="stop each arm's training after this long")
    ap.add_argument("--limit", type=int, default=200, help="test records per task scored")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each scoring")
    ap.add_argument("--parallel", action="store_true", help="train the arms at the same time (a GPU machine)")
    ap.add_argument("--diagnose", action="store_true", help="only measure the corner order and CKPT's overlaps (no training)")
    ap.add_argument("--data", type=Path, default=HERE / "work" / "fidelity" / "data", help="with --diagnose: the benchmark folder")
    args = ap.parse_args()
    if args.diagnose:
        args.checkpoint = args.checkpoint.resolve()
        return diagnose(args)
    args.checkpoint, args.work = args.checkpoint.resolve(), args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = make_data(args.work, args.n, args.seed)
    data_s = time.perf_counter() - t0
    if args.parallel:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(ARMS)) as pool:
            list(pool.map(lambda a: train_arm(args, a, data), ARMS))
    else:
        for arm in ARMS:
            train_arm(args, arm, data)
    common = set.intersection(*(set(steps_of(args.work / a)) for a in ARMS))
    if not common:
        sys.exit(f"no step saved by both arms (logs in {args.work}); lower --save-every or raise --max-seconds")
    step = max(common)
    models = {"start": args.checkpoint, **{a: steps_of(args.work / a)[step] for a in ARMS}}
    if args.parallel:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(models)) as pool:
            futures = {k: pool.submit(evaluate, m, data, args.limit, args.threads) for k, m in models.items()}
            scores = {k: f.result() for k, f in futures.items()}
    else:
        scores = {k: evaluate(m, data, args.limit, args.threads) for k, m in models.items()}
    import torch

    result = {
        "what": __doc__.splitlines()[0], "commit": os.environ.get("GIT_COMMIT") or commit(), "command": "python benchmarks/quad_order.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "checkpoint": str(args.checkpoint),
        "data": {"n": args.n, "seed": args.seed, "seconds": data_s},
        "settings": {k: getattr(args, k) for k in ("steps", "lr", "warmup", "limit", "max_seconds")},
        "scored_at_step": step, "scores": scores,
        "arms": {a: {**rates(args.work / a), "steps_saved": sorted(steps_of(args.work / a))} for a in ARMS},
        "seconds": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    for k, s in scores.items():
        print(k, {t: round(v, 3) for t, v in s["headline"].items()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
