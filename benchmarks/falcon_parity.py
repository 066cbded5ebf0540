"""Does tiercel's protocol="falcon" reproduce Falcon's own evaluation numbers? Same predictions, both scorers.

For each of the 14 tasks and each seed, benchmarks/falcon_parity_cases.py builds reference answers in Falcon's
grammar and perturbed predictions. The Falcon side writes them as the result JSON that Falcon's
single_gpu_inference_eval.py writes (answers extracted with that file's own extract_roi / extract_polygons /
CoordinatesQuantizer) and scores them with Falcon's eval/evaluation.py read_json_result, run from the checkout
given by --falcon in a separate Python that has Falcon's scorer dependencies (benchmarks/falcon_parity_runner.py;
two harness patches, listed in the output). The tiercel side parses the same texts with spec.parse and scores them
with spec.metric(..., protocol="falcon", crops=crops). Falcon's percentages are divided by 100.

    python -m venv /tmp/falcon-venv && /tmp/falcon-venv/bin/pip install scikit-learn imbalanced-learn seaborn \\
        matplotlib rouge nltk pycocoevalcap shapely pycocotools scikit-image numpy
    python benchmarks/falcon_parity.py --falcon /path/to/Falcon --falcon-python /tmp/falcon-venv/bin/python

This Python needs tiercel, torch and transformers (Falcon's inference file imports them). Writes
benchmarks/results/falcon_parity.json and the table in benchmarks/results/falcon_parity.md (between its markers).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # score the tiercel of this checkout, not whichever one is installed

from falcon_parity_cases import CAPTION_TASKS, LABEL_TASKS, cases  # noqa: E402
from image_use import commit, machine, write_result  # noqa: E402

TASK_ORDER = (
    "IMG_CLS", "IMG_CAP", "IMG_CAP_DETAILED", "IMG_VQA", "IMG_CT", "REG_CLS_HBB", "REG_CLS_OBB", "REG_DET_HBB",
    "REG_DET_OBB", "REG_VG", "REG_CAP", "PIX_CLS", "PIX_SEG", "PIX_CHG",
)  # fmt: skip
BOXES = {"REG_DET_HBB": 4, "REG_VG": 4, "REG_DET_OBB": 8}
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TOLERANCE = 1e-6
TABLE_START, TABLE_END = "<!-- table: written by benchmarks/falcon_parity.py -->", "<!-- end of table -->"


def load_inference(falcon: Path):
    """Falcon's single_gpu_inference_eval.py as a module (it imports torch and transformers at the top)."""
    spec = importlib.util.spec_from_file_location("falcon_inference", falcon / "single_gpu_inference_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def falcon_record(tag: str, i: int, sample: dict, infer, quantizer) -> dict:
    """One entry of Falcon's result JSON, as its eval_model builds it from the generated text and the label."""
    generated, label = f"</s><s>{sample['pred']}</s>", sample["ref"]  # as batch_decode(skip_special_tokens=False)
    images = [f"synthetic/s{i:05d}.png"] + ([f"synthetic/s{i:05d}_after.png"] if tag == "PIX_CHG" else [])
    w, h = sample["size"]
    if tag in BOXES:
        pattern = "".join([r"<(\d+)>"] * BOXES[tag])
        answer = [list(b) for b in infer.extract_roi(generated, pattern=pattern)]
        label = [list(b) for b in infer.extract_roi(label, pattern=pattern)]
    elif tag in ("PIX_SEG", "PIX_CHG"):
        size = (2 * w, 2 * h) if tag == "PIX_CHG" else (w, h)  # PIX_CHG: the 2W x 2H canvas of the tiled pair
        answer = infer.extract_polygons(generated, size, quantizer)
        label = infer.extract_polygons(label, size, quantizer)
    else:
        answer = generated.replace("</s>", "").replace("<s>", "").replace("<pad>", "").replace("</pad>", "")
    return {"image": images, "crop": sample["crop"], "question": tag, "answer": answer, "gt": label}


def falcon_scores(falcon: Path, python: str, runs: dict, infer, workdir: Path) -> tuple[dict, dict]:
    """Write one result JSON per run, score them all in one subprocess. Returns ({run: raw results}, runner info)."""
    quantizer = infer.CoordinatesQuantizer("floor", (1000, 1000))
    files = {}
    for name, (tag, samples) in runs.items():
        data = [falcon_record(tag, i, s, infer, quantizer) for i, s in enumerate(samples)]
        files[name] = workdir / f"{name.replace('/', '_')}.json"
        info = {"task": tag, "model": "falcon_parity", "dataset": "synthetic"}
        files[name].write_text(json.dumps({"info": info, "data": data}))
    out = workdir / "falcon_scores.json"
    argv = [python, str(HERE / "falcon_parity_runner.py"), str(falcon), str(out), *map(str, files.values())]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"Falcon's scorers failed (see {workdir}/falcon_stdout.log):\n{proc.stderr[-3000:]}\n"
                 "Its Python needs: pip install scikit-learn imbalanced-learn seaborn matplotlib rouge nltk "
                 "pycocoevalcap shapely pycocotools scikit-image numpy")  # fmt: skip
    result = json.loads(out.read_text())
    return {name: result["scores"][str(path)] for name, path in files.items()}, result


def as_fractions(tag: str, r: dict) -> dict:
    """Falcon's results under tiercel's metric names, as fractions (Falcon gives captions and detection in %)."""
    if tag in LABEL_TASKS:
        return {k: r[k] for k in ("accuracy", "precision", "recall", "f1")}
    if tag in ("IMG_VQA", "IMG_CT"):
        return {"accuracy": r["accuracy"], "f1": r["f1"]}
    if tag in CAPTION_TASKS:
        bleu = {f"bleu{n + 1}": b / 100 for n, b in enumerate(r["bleu"])}
        return {**bleu, "rouge_l": r["rouge_l"] / 100, "cider": r["CIDEr"] / 100}
    if tag == "REG_DET_HBB":
        return {"ap50": r["mAP@0.5"] / 100}
    if tag in ("REG_DET_OBB", "REG_VG"):
        names = {"ap": "mAP", "acc": "Accuracy", "precision": "Precision", "recall": "Recall", "far": "FAR"}
        return {f"{k}{round(t * 100)}": r[f"{v}@{t}"] / 100 for k, v in names.items() for t in SWEEP}
    return {"miou": r["miou"], "dice": r["mdice"]}


def tiercel_scores(tag: str, samples: list[dict]) -> dict:
    """spec.metric(protocol="falcon") on the same texts; {"error": ...} when tiercel cannot score them."""
    import tiercel.tasks as T

    spec = T.get(tag)
    try:
        preds = [spec.parse(s["pred"], image_size=s["size"]) for s in samples]
        refs = [spec.parse(s["ref"], image_size=s["size"]) for s in samples]
        sizes, crops = [s["size"] for s in samples], [s["crop"] for s in samples]
        return {k: float(v) for k, v in spec.metric(preds, refs, sizes, protocol="falcon", crops=crops).items()}
    except Exception as e:  # noqa: BLE001 - recorded per run: one task's failure must not hide the others
        return {"error": f"{type(e).__name__}: {e}"}


def compare(falcon: dict, tiercel: dict) -> dict:
    """Per-metric absolute difference over Falcon's metrics; verdict "equal" when all are within TOLERANCE."""
    if "error" in tiercel:
        return {"diff": {}, "max_abs_diff": None, "verdict": "tiercel failed", "missing": sorted(falcon)}
    missing = sorted(k for k in falcon if k not in tiercel)
    diff = {k: abs(tiercel[k] - v) for k, v in falcon.items() if k not in missing}
    worst = max(diff.values(), default=0.0)
    verdict = "missing metrics" if missing else ("equal" if worst <= TOLERANCE else "differs")
    return {"diff": diff, "max_abs_diff": worst, "verdict": verdict, "missing": missing}


def canvas_check(tag: str, samples: list[dict], infer) -> dict:
    """PIX_SEG/PIX_CHG: how Falcon's mask canvas rule bears on the score, recomputed in this harness.

    Without a crop, evaluate_segmentation's square side is int(max(max(max(sublist) for sublist in poly)) + 5) of
    both sides: the nested max() picks the lexicographically largest part, then that part's largest coordinate.
    The recomputation rasterises the same polygons as the runner's patched polygon_to_mask, once with that rule
    ("nested") and once with the largest coordinate of all parts ("largest"), and counts the samples whose
    sides differ. Needs pycocotools in this Python; returns {} without it.
    """
    try:
        import numpy as np
        from pycocotools import mask as mask_utils
    except ImportError:
        return {}
    quantizer = infer.CoordinatesQuantizer("floor", (1000, 1000))
    scores, differ = {"nested": [], "largest": []}, 0
    for i, sample in enumerate(samples):
        record = falcon_record(tag, i, sample, infer, quantizer)
        truth, pred, crop = record["gt"], record["answer"], record["crop"]
        if not truth or not pred:
            continue
        sides = {
            "nested": int(max(max(max(max(p) for p in truth)), max(max(max(p) for p in pred))) + 5),
            "largest": int(max(v for poly in (truth, pred) for inst in poly for part in inst for v in part) + 5),
        }
        differ += not crop and sides["nested"] != sides["largest"]
        for rule, side in sides.items():
            w, h = (crop[2] - crop[0], crop[3] - crop[1]) if crop else (side, side)
            a, b = (_mask(mask_utils, np, poly, h, w) for poly in (truth, pred))
            inter, total = float((a & b).sum()), float(a.sum() + b.sum())
            scores[rule].append(
                (inter / (total - inter) if total > inter else 1.0, 2 * inter / total if total else 1.0)
            )
    out = {
        f"{k}_{rule}": float(np.mean([s[j] for s in v]))
        for rule, v in scores.items()
        for j, k in enumerate(("miou", "dice"))
    }
    return {**out, "samples_scored": len(scores["nested"]), "canvas_sides_differ": differ}


def _mask(mask_utils, np, polygons, h: int, w: int):
    parts = [part for instance in polygons for part in instance if len(part) >= 6]
    if not parts:
        return np.zeros((h, w), dtype=bool)
    return mask_utils.decode(mask_utils.frPyObjects(parts, h, w)).any(axis=2)


def falcon_commit(falcon: Path, given: str | None) -> str:
    if given:
        return given
    git = subprocess.run(["git", "-C", str(falcon), "rev-parse", "HEAD"], capture_output=True, text=True)
    return git.stdout.strip() if git.returncode == 0 else "unknown (pass --falcon-commit)"


def summary(result: dict) -> dict:
    """Per task: runs, samples, verdicts, and the largest difference over its metrics and seeds."""
    out = {}
    for tag in result["headlines"]:
        runs = [r for r in result["runs"] if r["task"] == tag]
        diffs = [(d, k, r["seed"]) for r in runs for k, d in r["diff"].items()]
        worst = max(diffs, default=(None, None, None), key=lambda x: x[0])
        out[tag] = {"runs": len(runs), "samples": sum(r["n"] for r in runs), "metrics": len(runs[0]["falcon"]),
                    "verdicts": sorted({r["verdict"] for r in runs}), "max_abs_diff": worst[0],
                    "worst_metric": worst[1], "worst_seed": worst[2]}  # fmt: skip
    return out


def table(result: dict) -> str:
    """Markdown: one row per task, worst over its seeds; then the mask-canvas check of the pixel tasks."""
    seed = result["seeds"][0]
    rows = ["| task | runs (samples) | metrics | headline | Falcon | tiercel | max abs diff | worst metric | verdict |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for tag, t in result["tasks"].items():
        head = result["headlines"][tag]
        first = next(r for r in result["runs"] if r["task"] == tag and r["seed"] == seed)
        fal, tie = first["falcon"].get(head), first["tiercel"].get(head)
        rows.append(
            f"| {tag} | {t['runs']} ({t['samples']}) | {t['metrics']} | {head} | {_num(fal)} | {_num(tie)} | "
            f"{_num(t['max_abs_diff'], '.3g')} | {t['worst_metric'] or '-'} | {', '.join(t['verdicts'])} |"
        )
    text = "\n".join(rows) + (
        f"\n\nFalcon and tiercel: the headline of seed {seed}. Max abs diff, worst metric: over all compared "
        f"metrics and seeds. Verdict: equal when every difference is <= {TOLERANCE:g}.\n"
    )
    checks = [r for r in result["runs"] if r.get("canvas_check")]
    if checks:
        text += (
            "\nMask canvas check (PIX_SEG, PIX_CHG; miou): the harness rasterises the same polygons with Falcon's "
            "nested-max square side and with the largest coordinate of all parts.\n\n"
            "| task | seed | Falcon | harness, nested max | tiercel | harness, largest coordinate | "
            "samples scored | canvas sides differ |\n|---|---|---|---|---|---|---|---|\n"
        )
        for r in checks:
            c = r["canvas_check"]
            text += (
                f"| {r['task']} | {r['seed']} | {_num(r['falcon']['miou'], '.6f')} | {_num(c['miou_nested'], '.6f')} "
                f"| {_num(r['tiercel'].get('miou'), '.6f')} | {_num(c['miou_largest'], '.6f')} | "
                f"{c['samples_scored']} | {c['canvas_sides_differ']} |\n"
            )
    return text


def _num(x, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def write_md(path: Path, result: dict) -> None:
    """Put the table between the markers of `path` (a skeleton with the markers when it does not exist)."""
    block = f"{TABLE_START}\n{table(result)}{TABLE_END}"
    text = path.read_text() if path.exists() else f"# Falcon parity\n\n{TABLE_START}\n{TABLE_END}\n"
    head, rest = text.split(TABLE_START, 1)
    path.write_text(head + block + rest.split(TABLE_END, 1)[1])
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--falcon", type=Path, required=True, help="a checkout of TianHuiLab/Falcon")
    ap.add_argument(
        "--falcon-python",
        default=os.environ.get("FALCON_PYTHON", "python3"),
        help="a Python with Falcon's scorer dependencies (default: $FALCON_PYTHON or python3)",
    )
    ap.add_argument("--falcon-commit", help="Falcon's commit, when --falcon is not a git checkout")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tasks", nargs="+", default=list(TASK_ORDER), choices=TASK_ORDER)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "falcon_parity.json")
    ap.add_argument("--keep", type=Path, help="keep Falcon's result files and its log in this folder")
    args = ap.parse_args()  # fmt: skip

    import tiercel.tasks as T

    runs = {f"{tag}/seed{seed}": (tag, cases(tag, seed)) for tag in args.tasks for seed in args.seeds}
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="falcon_parity_"))
    workdir.mkdir(parents=True, exist_ok=True)
    infer = load_inference(args.falcon)
    raw, runner = falcon_scores(args.falcon.resolve(), args.falcon_python, runs, infer, workdir)
    result = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "commit": commit(),
        "machine": {**machine(), "falcon_python": runner["versions"]},
        "falcon": {"commit": falcon_commit(args.falcon, args.falcon_commit), "path": str(args.falcon)},
        "harness_patches": runner["patches"],
        "seeds": args.seeds,
        "tolerance": TOLERANCE,
        "headlines": {tag: T.get(tag).headline_of("falcon") for tag in args.tasks},
        "runs": [],
    }
    for name, (tag, samples) in runs.items():
        falcon, tiercel = as_fractions(tag, raw[name]), tiercel_scores(tag, samples)
        verdict = compare(falcon, tiercel)
        kinds = {k: sum(s["kind"] == k for s in samples) for k in sorted({s["kind"] for s in samples})}
        run = {"task": tag, "seed": int(name.split("seed")[1]), "n": len(samples), "kinds": kinds,
               "falcon": falcon, "tiercel": tiercel, **verdict, "falcon_raw": raw[name]}  # fmt: skip
        if tag in ("PIX_SEG", "PIX_CHG"):
            run["canvas_check"] = canvas_check(tag, samples, infer)
        result["runs"].append(run)
        print(f"{name:<26} n={len(samples):<4} {verdict['verdict']:<15} max abs diff {verdict['max_abs_diff']}")
    result["tasks"] = summary(result)
    write_result(args.out, result)
    if set(args.tasks) == set(TASK_ORDER):
        write_md(args.out.with_suffix(".md"), result)


if __name__ == "__main__":
    main()
