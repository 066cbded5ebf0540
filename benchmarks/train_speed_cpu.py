"""Training speed on a CPU: samples/s of the demo teacher and the demo KD student under each trainer setting.

Both shapes come from tiercel/recipes/demo.yaml: the teacher (pipeline.train_teacher, plain fine-tuning on the
labels) and the student (logit + hidden-state KD from a live teacher, whose forward is inside the timing, as in a
real KD step). Every configuration is a real training run of tiercel's trainer: `trainer.prepare`, then
`trainer.train_step` (sample, collate, teacher forward, student forward, losses, backward, clip, AdamW, schedule),
on the same synthetic data (`tiercel.data.synth`, demo image size).

The machine may be shared, so the configurations are timed round-robin: every round runs `--steps` steps of each
configuration on the same step indices (so the same samples), and records the load average. A configuration's
number is the median over rounds of samples/s. Its first `--warmup` steps (and with them torch.compile's
compilation) are timed separately and left out. Threads are set per configuration with torch.set_num_threads.

A second part checks that the faster settings train as well: fresh runs of `--quality-steps` steps with the
same seed, one after another, per precision/compile/optimizer setting, comparing their losses to fp32's.

    PYTHONPATH=. .venv/bin/python benchmarks/train_speed_cpu.py           # 5-40 minutes on a 2-core CPU: a cold compile and a busy machine take most of it
    PYTHONPATH=. .venv/bin/python benchmarks/train_speed_cpu.py --quick   # plumbing check, numbers meaningless
    PYTHONPATH=. .venv/bin/python benchmarks/train_speed_cpu.py --configs fp32,bf16,compile,compile_bf16 \
        --threads 1 --batch 16 --name train_speed_cpu_amx    # a subset, one thread each, batch 16, its own files

--configs picks rows (fp32, the baseline, always runs), --threads and --batch override every row's threads and
every row that keeps the baseline's batch, --name names the JSON and .md (default train_speed_cpu).

Writes benchmarks/results/train_speed_cpu.json and the tables of benchmarks/results/train_speed_cpu.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_use import commit, machine, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARK = "<!-- tables: written by benchmarks/train_speed_cpu.py -->"


@dataclass(frozen=True)
class Config:
    """One trainer setting; the defaults are the trainer's defaults before this benchmark (the baseline)."""

    precision: str = "fp32"
    compile: bool = False
    fused_adamw: bool = False
    image_cache: int = 4096
    batch: int = 8
    threads: int = 2

    def distill(self) -> dict:
        return {"precision": self.precision, "compile": self.compile, "image_cache": self.image_cache, "batch_size": self.batch}


BASE = Config()
CONFIGS = {
    "fp32": BASE,
    "bf16": replace(BASE, precision="bf16"),
    "compile": replace(BASE, compile=True),
    "compile_bf16": replace(BASE, compile=True, precision="bf16"),
    "fused_adamw": replace(BASE, fused_adamw=True),
    "no_image_cache": replace(BASE, image_cache=0),
    "threads1": replace(BASE, threads=1),
    "batch16": replace(BASE, batch=16),
    "batch32": replace(BASE, batch=32),
    "compile_fused_batch32": replace(BASE, compile=True, fused_adamw=True, batch=32),
}
QUALITY = ["fp32", "bf16", "fused_adamw"]  # same batch and seed as fp32; compile: tests/integration/test_distill.py


def cpu_flags() -> list[str]:
    """The CPU flags that decide which low-precision kernels exist (AVX-512 BF16/VNNI, AMX)."""
    line = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
    return sorted(f for f in line.split(":", 1)[-1].split() if f.startswith(("avx512", "amx", "avx2", "fma", "avx_vnni")))


def shapes() -> tuple[dict, dict, dict]:
    """(teacher, student) as {"preset", "overrides"} from the shipped demo recipe, and the recipe."""
    demo = yaml.safe_load((ROOT / "tiercel" / "recipes" / "demo.yaml").read_text())
    t = demo["pipeline"]["train_teacher"]
    return {"preset": t["preset"], "overrides": t["overrides"]}, dict(demo["student"]), demo


def make_recipe(work: Path, model: str, name: str, cfg: Config, data: Path, demo: dict, steps: int) -> dict:
    """The recipe of one run: the demo's teacher fine-tuning or its KD student, with `cfg`'s settings."""
    teacher, student, _ = shapes()
    out = work / "runs" / f"{model}_{name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    common = {"name": f"{model}_{name}", "out": str(out), "seed": 0,
              "data": {"train": str(data / "train.json"), "root": str(data), "max_answer_tokens": demo["data"]["max_answer_tokens"]}}
    sched = {"steps": steps, "lr": 1e-3, "warmup_steps": 10, "save_every": steps}
    if model == "teacher":
        return {**common, "tokenizer": {"source": "file", "path": str(work / "teacher" / "student")},
                "student": teacher, "distill": {**sched, **cfg.distill()}}
    kd = {k: demo["distill"][k] for k in ("ce", "kd", "temperature", "hidden")}
    return {**common, "tokenizer": {"source": "teacher"}, "teacher": {"kind": "checkpoint", "path": str(work / "teacher" / "student")},
            "student": student, "distill": {**sched, **kd, **cfg.distill()}}


def prepare_run(recipe: dict, cfg: Config):
    """A trainer Run built as `tiercel distill` builds it, with the per-tensor (the old default) or fused AdamW."""
    import torch

    from tiercel.distill.dist import setup
    from tiercel.distill.trainer import make_optimizer, prepare
    from tiercel.recipe import parse_recipe

    torch.set_num_threads(cfg.threads)
    run = prepare(parse_recipe(recipe), setup())
    run.optimizer, run.scheduler = make_optimizer(run.objective, run.recipe.distill, fused=cfg.fused_adamw)
    return run


def timed_steps(run, cfg: Config, steps: range) -> tuple[float, list[float]]:
    """Seconds for train_step over `steps` with cfg's threads, and the losses."""
    import torch

    from tiercel.distill.trainer import train_step

    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    losses = [train_step(run, s)["loss"] for s in steps]
    return time.perf_counter() - t0, losses


def speed(work: Path, data: Path, demo: dict, args) -> dict:
    """Round-robin timing of every configuration of both models."""
    runs, out = {}, {}
    for model in ("teacher", "student"):
        for name, cfg in CONFIGS.items():
            runs[(model, name)] = prepare_run(make_recipe(work, model, name, cfg, data, demo, 10_000), cfg)
    warm = range(args.warmup)
    for key, run in runs.items():  # warm-up, compilation included
        cfg = CONFIGS[key[1]]
        seconds, _ = timed_steps(run, cfg, warm)
        out[key] = {"config": asdict(cfg), "warmup_steps": args.warmup, "warmup_s": seconds, "rounds": [], "loss_last": None}
        print(f"warm-up {key}: {seconds:.1f} s", flush=True)
    loads = []
    for r in range(args.rounds):
        steps = range(args.warmup + r * args.steps, args.warmup + (r + 1) * args.steps)
        for key, run in runs.items():
            cfg = CONFIGS[key[1]]
            seconds, losses = timed_steps(run, cfg, steps)
            out[key]["rounds"].append(cfg.batch * len(steps) / seconds)
            out[key]["loss_last"] = losses[-1]
        loads.append(os.getloadavg())
        print(f"round {r + 1}/{args.rounds}: load {loads[-1][0]:.2f}", flush=True)
    result = {"loadavg_per_round": loads, "models": {}}
    for model in ("teacher", "student"):
        rows = {name: out[(model, name)] for name in CONFIGS}
        for row in rows.values():
            row["samples_per_s"] = statistics.median(row["rounds"])
        base = rows["fp32"]
        for row in rows.values():
            row["ratio_vs_fp32"] = row["samples_per_s"] / base["samples_per_s"]
            # warm-up beyond eager fp32's: what compiling costs once (a rough figure: the warm-up steps differ in shape)
            row["extra_warmup_s_vs_fp32"] = row["warmup_s"] - base["warmup_s"]
        params = sum(p.numel() for p in runs[(model, "fp32")].objective.student.parameters())
        result["models"][model] = {"params": params, "configs": rows}
    return result


def quality(work: Path, data: Path, demo: dict, steps: int) -> dict:
    """Fresh runs with the same seed, one at a time: loss of each setting against fp32's after `steps` steps."""
    result = {}
    for model in ("teacher", "student"):
        rows = {}
        for name in QUALITY:
            cfg = CONFIGS[name]
            run = prepare_run(make_recipe(work, model, f"q_{name}", cfg, data, demo, steps), cfg)
            seconds, losses = timed_steps(run, cfg, range(steps))
            tail = losses[-10:]
            rows[name] = {"loss_first": losses[0], "loss_last10_mean": statistics.mean(tail), "seconds": seconds,
                          "losses_every_10": losses[::10]}
            print(f"quality {model} {name}: last-10 mean loss {rows[name]['loss_last10_mean']:.4f}", flush=True)
        ref = rows["fp32"]["loss_last10_mean"]
        for row in rows.values():
            row["rel_diff_vs_fp32"] = (row["loss_last10_mean"] - ref) / ref
        result[model] = {"steps": steps, "runs": rows}
    return result


def teacher_checkpoint(work: Path, data: Path, demo: dict, steps: int) -> None:
    """A briefly trained demo-shape teacher (and its tokenizer) for the KD student; its forward costs what any does."""
    from tiercel.distill.trainer import distill
    from tiercel.recipe import parse_recipe

    teacher, _, _ = shapes()
    t = demo["pipeline"]["train_teacher"]
    recipe = {"name": "teacher", "out": str(work / "teacher"), "seed": 0,
              "data": {"train": str(data / "train.json"), "root": str(data), "max_answer_tokens": demo["data"]["max_answer_tokens"]},
              "tokenizer": {"source": "train", "vocab_size": t["vocab_size"]}, "student": teacher,
              "distill": {"steps": steps, "batch_size": 8, "lr": t["lr"], "warmup_steps": 1, "save_every": steps}}
    distill(parse_recipe(recipe), progress=False)


def table(result: dict) -> str:
    """The markdown tables of the write-up, from the result only."""
    lines = []
    for model, m in result["speed"]["models"].items():
        lines += [f"**{model}** ({m['params'] / 1e6:.2f}M parameters)", "",
                  "| configuration | precision | compile | fused AdamW | image cache | batch | threads | samples/s (median) | x fp32 | warm-up s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, row in m["configs"].items():
            c = row["config"]
            lines.append(f"| {name} | {c['precision']} | {'yes' if c['compile'] else 'no'} | {'yes' if c['fused_adamw'] else 'no'} | "
                         f"{c['image_cache']} | {c['batch']} | {c['threads']} | {row['samples_per_s']:.1f} | "
                         f"{row['ratio_vs_fp32']:.2f} | {row['warmup_s']:.1f} |")
        lines.append("")
    lines += ["Loss after the quality runs (same seed and samples; mean over the last 10 steps):", "",
              "| model | steps | " + " | ".join(QUALITY) + " |", "|---|---|" + "---|" * len(QUALITY)]
    for model, q in result["quality"].items():
        cells = [f"{q['runs'][n]['loss_last10_mean']:.4f} ({q['runs'][n]['rel_diff_vs_fp32']:+.2%})" for n in QUALITY]
        lines.append(f"| {model} | {q['steps']} | " + " | ".join(cells) + " |")
    loads = [x[0] for x in result["speed"]["loadavg_per_round"]]
    lines += ["", f"1-minute load average over the {len(loads)} rounds: {min(loads):.2f} to {max(loads):.2f}."]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, tables: str) -> None:
    """Replace the tables below MARK in the write-up (the prose above it is kept)."""
    text = path.read_text() if path.is_file() else f"# Training speed on a CPU\n\n{MARK}\n"
    head = text.split(MARK)[0]
    path.write_text(f"{head}{MARK}\n\n{tables}")
    print(f"wrote {path}")


def select(args) -> None:
    """Narrow CONFIGS and QUALITY to --configs and apply --threads / --batch (a one-line error for an unknown row)."""
    names = ["fp32", *[n for n in (args.configs or "").split(",") if n and n != "fp32"]] if args.configs else list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"--configs: no row {', '.join(unknown)}; rows: {', '.join(CONFIGS)}")
    chosen = {}
    for n in names:
        cfg = CONFIGS[n]
        if args.batch and cfg.batch == BASE.batch:
            cfg = replace(cfg, batch=args.batch)
        chosen[n] = replace(cfg, threads=args.threads) if args.threads else cfg
    CONFIGS.clear()
    CONFIGS.update(chosen)
    QUALITY[:] = [n for n in QUALITY if n in CONFIGS]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "work" / "train_speed_cpu"))
    ap.add_argument("--n", type=int, default=400, help="synthetic records (the generator writes about 10 per image)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="steps per configuration per round")
    ap.add_argument("--warmup", type=int, default=3, help="steps per configuration before timing (compilation happens here)")
    ap.add_argument("--quality-steps", type=int, default=60)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--configs", help=f"comma-separated rows to run (default: all of {', '.join(CONFIGS)}); fp32 always runs")
    ap.add_argument("--threads", type=int, help="torch threads for every row (default: each row's own, 2 or 1)")
    ap.add_argument("--batch", type=int, help="batch size of every row that keeps the baseline's (default 8)")
    ap.add_argument("--name", default="train_speed_cpu", help="results/NAME.json and NAME.md")
    args = ap.parse_args()
    select(args)
    if args.quick:
        args.rounds, args.steps, args.warmup, args.quality_steps = 2, 2, 2, 12
    from tiercel.data.synth import generate

    _, _, demo = shapes()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    meta = generate(data, n=args.n, size=demo["pipeline"]["synth"]["size"], seed=0, overwrite=True)
    teacher_checkpoint(work, data, demo, 20)
    result = {"commit": commit(), "command": " ".join(["python", *sys.argv]), "machine": {**machine(), "cpu_flags": cpu_flags()},
              "args": vars(args), "data": {"n": args.n, "size": meta["size"], "images": meta["images"]}}
    result["speed"] = speed(work, data, demo, args)
    result["quality"] = quality(work, data, demo, args.quality_steps)
    name = f"{args.name}_quick" if args.quick else args.name
    write_result(RESULTS / f"{name}.json", result)
    tables = table(result)
    print(tables)
    if not args.quick:
        write_markdown(RESULTS / f"{name}.md", tables)


if __name__ == "__main__":
    main()
