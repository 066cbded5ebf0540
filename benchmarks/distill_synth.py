"""Distillation on the synthetic benchmark: a teacher, then a ~4x smaller student trained three ways.

Same data, steps and seed for every student; only the objective differs:
  ce          plain fine-tuning on the labels (no teacher)
  kd          0.5 CE + 0.5 forward KL to the teacher's logits (T = 2)
  kd_hidden   kd + hidden-state losses (image features, encoder output, last decoder layer) through learned projections
Every model is scored on the test split with tiercel's task metrics (greedy decoding) and the JSON goes to
benchmarks/results/distill_synth.json with the machine it ran on.

    .venv/bin/python benchmarks/distill_synth.py            # about 30 minutes on an idle 2-core CPU
    .venv/bin/python benchmarks/distill_synth.py --quick    # a few minutes: plumbing check, numbers meaningless
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_runs import params, score, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEACHER = dict(vision_dims=[16, 32, 64, 128], vision_depths=[1, 1, 2, 1], vision_heads=[1, 2, 2, 4], vision_groups=[1, 2, 2, 4],
               window_size=4, d_model=192, encoder_layers=2, decoder_layers=3, attention_heads=4, ffn_dim=768,
               max_text_positions=256, image_size=128)
STUDENT = dict(TEACHER, vision_dims=[8, 16, 32, 64], vision_depths=[1, 1, 1, 1], vision_heads=[1, 1, 2, 2], vision_groups=[1, 1, 2, 2],
               d_model=96, encoder_layers=1, decoder_layers=2, ffn_dim=384)
VARIANTS = {
    "ce": {"ce": 1.0},
    "kd": {"ce": 0.5, "kd": 0.5, "divergence": "forward_kl", "temperature": 2.0},
    "kd_hidden": {"ce": 0.5, "kd": 0.5, "divergence": "forward_kl", "temperature": 2.0,
                  "hidden": {"vision": 0.5, "encoder": 0.5, "decoder": 0.5, "decoder_layers": {1: 2}, "kind": "mse"}},
}


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "load_avg_start": os.getloadavg()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "work" / "distill_synth"))
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--teacher-steps", type=int, default=1000)
    ap.add_argument("--student-steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-limit", type=int, default=8, help="test records per task")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--max-answer-tokens", type=int, default=40, help="training answers are cut to this many tokens")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--resume", action="store_true", help="keep the work directory: reuse finished data and runs, resume killed runs")
    args = ap.parse_args()
    if args.quick:
        args.n, args.teacher_steps, args.student_steps, args.eval_limit, args.max_new_tokens = 600, 20, 10, 2, 16
    work = Path(args.work)
    if not args.resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    info = {"machine": machine(), "args": vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    from tiercel.data.synth import generate

    data = work / "data"
    if not (args.resume and (data / "test.json").is_file()):
        generate(data, n=args.n, size=256, seed=0, overwrite=True)
    common = {"data": {"train": str(data / "train.json"), "val": str(data / "val.json"), "root": str(data), "max_answer_tokens": args.max_answer_tokens},
              "seed": 0}
    sched = lambda steps: {"steps": steps, "batch_size": args.batch, "lr": 2e-3, "warmup_steps": max(1, steps // 20),  # noqa: E731
                           "save_every": steps, "log_every": 10, "eval_limit": 64}
    teacher = {"name": "teacher", "out": str(work / "teacher"), **common, "tokenizer": {"source": "train", "vocab_size": 1500},
               "student": {"preset": "tiny", "overrides": TEACHER}, "distill": sched(args.teacher_steps)}
    runs = {"teacher": train(teacher)}
    for name, objective in VARIANTS.items():
        recipe = {"name": name, "out": str(work / name), **common, "tokenizer": {"source": "teacher"},
                  "teacher": {"kind": "checkpoint", "path": runs["teacher"]["student"]},
                  "student": {"preset": "tiny", "overrides": STUDENT}, "distill": {**sched(args.student_steps), **objective}}
        if name == "ce":  # no teacher, but the teacher's vocabulary, so the three students differ only in their objective
            recipe["teacher"], recipe["tokenizer"] = {"kind": "none"}, {"source": "file", "path": str(work / "teacher" / "tokenizer.json")}
        runs[name] = train(recipe)
    for name, r in runs.items():
        r["params"] = params(r["student"])
        r["eval"] = score(r["student"], data / "test.json", data, args.eval_limit, args.max_new_tokens)
    t_avg = runs["teacher"]["eval"]["average"]
    info["runs"] = runs
    info["summary"] = {
        "teacher_average": t_avg,
        **{f"{k}_average": runs[k]["eval"]["average"] for k in VARIANTS},
        **{f"{k}_retention": runs[k]["eval"]["average"] / t_avg if t_avg else None for k in VARIANTS},
        "kd_beats_ce": runs["kd"]["eval"]["average"] > runs["ce"]["eval"]["average"],
        "size_ratio": runs["teacher"]["params"] / runs["ce"]["params"],
    }
    info["machine"]["load_avg_end"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / ("distill_synth_quick.json" if args.quick else "distill_synth.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=1, default=str) + "\n")
    print(table(runs))
    print(json.dumps(info["summary"], indent=1))
    print(f"wrote {out}")


def table(runs: dict) -> str:
    from tiercel.tasks import TAGS

    names = list(runs)
    lines = ["| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for tag in TAGS:
        cells = []
        for n in names:
            h = runs[n]["eval"]["headline"].get(tag)
            cells.append("-" if h is None else f"{100 * h:.1f}")
        lines.append(f"| {tag} | " + " | ".join(cells) + " |")
    lines.append("| **average** | " + " | ".join(f"**{100 * runs[n]['eval']['average']:.1f}**" for n in names) + " |")
    lines.append("| params | " + " | ".join(f"{runs[n]['params'] / 1e6:.2f}M" for n in names) + " |")
    lines.append("| train samples/s | " + " | ".join(f"{runs[n]['samples_per_s']:.1f}" for n in names) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
