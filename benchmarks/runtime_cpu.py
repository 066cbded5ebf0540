"""transformers eager fp32 vs tiercel onnxruntime / OpenVINO fp32 bundles on this CPU, stage by stage, in one run.

Usage:
    python benchmarks/runtime_cpu.py [--preset florence2-base] [--runs 5] [--all-runs 3] [--task IMG_CAP]
                                     [--threads N] [--bf16] [--out benchmarks/results/runtime_cpu.json]
    python benchmarks/runtime_cpu.py --preset tiny --runs 2 --out /tmp/rt.json   # checks the script: ~18 s

florence2-base with the defaults takes roughly 25 minutes on the 2-core dev machine (an estimate from earlier stage
timings, not a run: export ~2 min, 6 stage rounds ~4.5 min, 14-task warm-up + 3 rounds ~18 min, mostly the 3 x 14
eager calls).

The preset's shape is built with random weights (speed does not depend on their values) and exported once to an
fp32 bundle with ONNX and OpenVINO IR graphs under benchmarks/work/runtime_cpu/ (git-ignored; export parity is
skipped, the generated tokens are compared below instead). Three paths then make the same call - one `--task` on a
synthetic image of the preset's size (768x768 for florence2-base), batch 1, greedy, exactly 32 new tokens (no eos
id can match and none is forced: tiercel.runtime.profile.forced_generation):

    eager        tiercel.models.TorchPredictor: the transformers model's own modules (vision tower, embeddings,
                 text encoder) and transformers `generate` from the encoder output; fp32, PyTorch eager (no
                 compile), the model's default attention implementation (recorded)
    onnxruntime  tiercel.runtime.load(bundle, backend="onnxruntime").run(...)
    openvino     tiercel.runtime.load(bundle, backend="openvino").run(...)

With --bf16 a fourth path runs the same OpenVINO bundle in bfloat16 on CPUs that have it (AVX512_BF16 or AMX):

    openvino-bf16  tiercel.runtime.load(bundle, backend="openvino",
                                        options={"INFERENCE_PRECISION_HINT": "bf16"}).run(...)

It is not an fp32 path (the issue's targets are fp32 against fp32): its numbers answer what the
`--option INFERENCE_PRECISION_HINT=bf16` a user can pass to `tiercel run` buys on such a CPU, and its tokens are
compared with eager's like the others' (random weights: bf16 rounding may change them, which says nothing
about a trained model; README has the accuracy on one).
Its decode_vs_bound is taken against the fp32 bound like the others', though it may read fewer bytes.

All paths are loaded together and interleaved (eager, onnxruntime, openvino, again), so a change in the machine's
load falls on each of them; one warm-up round, then `--runs` timed rounds. Times are time.perf_counter, recorded by
the runtime's StageTimer through `Model.timer` (TorchPredictor is a Model, so it shares the hook); each stage is the
median over the rounds:

    preprocess     RGB conversion, prompt, resize and normalise: the runtime's numpy code in all three paths
    vision         vision tower + projector (torch `get_image_features` / the vision_encoder graph)
    encoder        token embedding (image features put in the `<image>` slots) + the text encoder
    first_token    the first decoder step, which also projects the cross-attention K/V. Eager: a forward
                   pre/post hook pair on the model times every forward call `generate` makes; the call whose KV
                   cache is empty is the first token, the others are decode tokens
    decode_token   one later step: token embedding, decoder with KV cache, lm_head; median over all 31 steps of
                   all rounds (the bound is compared with this). decode_token_mean: median over rounds of each
                   round's mean step, which slow outlier steps raise. Argmax and logits processing are outside
                   both (generate_overhead)
    end_to_end     wall time of the whole `run` call, post-processing into a task result included

Decode against memory bandwidth: bandwidth is measured in this run (roofline.measure_bandwidth: numpy copy of
128 MiB over all cores, read + write, best of 5) before and after the timed rounds, and the higher value is used.
Bytes per token come from tiercel.models.report (decoder layers + lm_head weights, cross-attention K/V of the task's
encoder tokens, self-attention K/V averaged over the 32 tokens; fp32); bound = bytes / bandwidth.

14 tasks on one image: tiercel makes one `run_all(image, 14 tasks, image2=...)` call: the image and PIX_CHG's tiled
before/after pair go through the vision encoder as a batch of 2, and the 14 prompts (each row with its own image's
features) go through the text encoder and decoder as one right-padded batch. Eager makes 14 separate
`TorchPredictor.run` calls. Greedy,
32 forced tokens per task, texts and regions from tiercel.tasks.examples.task_inputs. tiercel's batched
call is warmed up once (new batch shapes; eager's shapes were warmed by the stage rounds), then `--all-runs`
interleaved rounds (default 3, at most --runs: 14 eager calls are the slowest part of the run), median.

Targets (issue 5): end-to-end >= 1.5x faster than eager; decode per token within 1.5x of the bandwidth bound;
14 tasks >= 5x faster than 14 eager calls. Each is written with its value and whether it was met. CPU model, cores,
load average and library versions are recorded: the machine may be shared, so read the numbers with them. Each
library uses its own default thread count unless --threads sets all three. OMP_WAIT_POLICY is PASSIVE unless the
environment sets it (the value used is recorded): on a shared machine PyTorch's spin-waiting OpenMP threads made the
eager baseline many times slower (tiny preset's vision tower at load 4.7 on 2 cores: 1.1 s with libgomp's default,
7-15 ms PASSIVE, 5 ms on 1 thread; a whole `--preset tiny --runs 2` took 46-68 s instead of 16 s). onnxruntime and
OpenVINO use their own thread pools, so this only keeps eager from looking slower than it is.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tiercel import tasks
from tiercel.fileio import write_json
from tiercel.runtime.profile import StageTimer, breakdown, forced_generation
from tiercel.runtime.profile.roofline import measure_bandwidth
from tiercel.runtime.profile.runner import profile_image
from tiercel.tasks.examples import run_all_inputs, task_inputs

HERE = Path(__file__).resolve().parent
NEW_TOKENS = 32
BACKENDS = ("onnxruntime", "openvino")
BF16 = {"INFERENCE_PRECISION_HINT": "bf16"}  # the openvino-bf16 path's compile property (--bf16)
TARGETS = {"end_to_end_speedup": (">=", 1.5), "decode_vs_bound": ("<=", 1.5), "all_tasks_speedup": (">=", 5.0)}
# reported stage -> the StageTimer stages it sums
STAGES = {"preprocess": ("preprocess",), "vision": ("vision_encoder",), "encoder": ("embed_tokens", "text_encoder"),
          "first_token": ("first_token",), "generate_overhead": ("generate_overhead",), "postprocess": ("postprocess",)}


def cpu_model() -> str:
    """The CPU's model name as lscpu gives it."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), platform.processor())


def machine() -> dict:
    """CPU model, cores, load average now, OMP_WAIT_POLICY and library versions."""
    import onnxruntime
    import openvino
    import torch
    import transformers

    flags = open("/proc/cpuinfo").read()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "avx2": " avx2" in flags, "avx512_vnni": "avx512_vnni" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "loadavg_start": os.getloadavg(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}


def build_and_export(preset: str, work: Path, log):
    """The preset with random weights, its tokenizer, and its fp32 bundle (ONNX + OpenVINO IR)."""
    from tiercel.export.bundle import export_model
    from tiercel.models import build
    from tiercel.models.presets import get_preset
    from tiercel.runtime.tokenizer import train_bpe

    corpus = ["Describe the image.", "Detect all airplane in the image.", "A harbor with ships."] * 50
    tok = train_bpe(corpus, vocab_size=300)  # ids only need to fit; weights are random
    vocab = max(get_preset(preset).vocab_size, len(tok))  # the preset's own vocabulary: lm_head at full size
    model = build(preset, seed=0, image_token_id=tok.image_id, vocab_size=vocab)
    t = time.perf_counter()
    bundle = export_model(model, tok, work / "fp32", backends=BACKENDS, parity=False, overwrite=True)
    log(f"exported {preset} in {time.perf_counter() - t:.0f} s")
    return model, tok, bundle, time.perf_counter() - t


def keep_ids(model) -> dict:
    """Wrap `model.generate_ids` (on the instance) so the last call's ids stay in the returned dict."""
    seen, inner = {}, model.generate_ids

    def generate_ids(*args, **kwargs):
        seen["ids"] = inner(*args, **kwargs)
        return seen["ids"]

    model.generate_ids = generate_ids
    return seen


def open_paths(model, tok, bundle: Path, threads: int | None, bf16: bool = False) -> tuple[dict, dict]:
    """{path name: Model}, and the load seconds of the bundle on each backend; `threads` None: library defaults;
    `bf16`: also "openvino-bf16", the OpenVINO bundle compiled with INFERENCE_PRECISION_HINT=bf16."""
    import torch
    import transformers

    import tiercel.runtime
    from tiercel.models.predict import TorchPredictor

    # An eos id of -1 is how exactly 32 tokens are forced; transformers warns that generation will not stop.
    transformers.logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)
    eager = TorchPredictor(model, tok)  # times transformers' decoder steps itself while a timer is attached
    paths, load_s = {"eager": eager}, {}
    opened = [(backend, backend, None) for backend in BACKENDS] + ([("openvino-bf16", "openvino", BF16)] if bf16 else [])
    for name, backend, options in opened:
        t = time.perf_counter()
        paths[name] = tiercel.runtime.load(bundle, backend=backend, threads=threads, options=options)
        load_s[name] = time.perf_counter() - t
    return paths, load_s


def has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bfloat16 here (AVX512_BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def timed(m, fn) -> tuple[float, dict]:
    """(seconds, stage breakdown) of one call; fails when the decoder steps were not all seen as stages."""
    m.timer.take()
    start = time.perf_counter()
    fn()
    seconds, events = time.perf_counter() - start, m.timer.take()
    steps = [name for name, _ in events if name in ("first_token", "decode_token")]
    if steps != ["first_token"] + ["decode_token"] * (NEW_TOKENS - 1):
        raise RuntimeError(f"{m.backend}: expected 1 first_token and {NEW_TOKENS - 1} decode_token stages, "
                           f"got {steps.count('first_token')} and {steps.count('decode_token')}")
    return seconds, breakdown(events)


def one_round(live: dict, call, where: str, log, failed: dict | None = None) -> dict:
    """call(m) for each path in `live`, in order: {path: result}.

    With `failed` given, a path other than eager whose call raises goes into it ({path: "Type: message"}) and out of
    `live`, and the others go on; without it the error ends the run, and so does eager's (the baseline)."""
    got = {}
    for name, m in list(live.items()):
        try:
            got[name] = call(m)
        except Exception as exc:  # noqa: BLE001 - one path's failure must not cost the others' numbers
            if failed is None:
                raise
            if name == "eager":
                raise RuntimeError(f"eager, the baseline every path is compared with, failed in {where}: "
                                   f"{type(exc).__name__}: {exc}") from exc
            failed[name] = f"{type(exc).__name__}: {exc}"
            del live[name]
            log(f"{name} failed in {where} and leaves the run: {failed[name]}")
    return got


def stage_rounds(paths: dict, image: np.ndarray, task: str, runs: int, log, now=time.perf_counter,
                 failed: dict | None = None) -> dict:
    """One warm-up and `runs` timed interleaved rounds of `run(image, task)`; per path a summary.

    `now`: the stage clock (benchmarks/gpu.py passes one that synchronises the GPU first). `failed`: see one_round;
    a path that fails leaves the later rounds and has no summary."""
    gen = forced_generation(NEW_TOKENS, 1)
    extra = task_inputs(task, (image.shape[1], image.shape[0]))
    live, rows = dict(paths), {name: [] for name in paths}
    ids = {name: keep_ids(m) for name, m in paths.items()}
    for m in paths.values():
        m.timer = StageTimer(clock=now)
    try:
        for i in range(1 + runs):
            got = one_round(live, lambda m: timed(m, lambda: m.run(image, task, **extra, **gen)), f"stage round {i}",
                            log, failed)
            for name, row in got.items():
                rows[name].append(row)
            log(f"stage round {i}/{runs}{' (warm-up)' if i == 0 else ''}: "
                + ", ".join(f"{n} {row[0]:.2f} s" for n, row in got.items()))
    finally:
        for m in paths.values():
            m.timer = None
    want, out = ids["eager"]["ids"][0], {}
    for name in live:
        got = ids[name]["ids"][0]
        same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        out[name] = {**summarise(rows[name][1:]), "tokens_generated": len(got), "same_tokens_as_eager": got == want,
                     "leading_tokens_equal_to_eager": same}
    return out


def summarise(rows: list[tuple[float, dict]]) -> dict:
    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    stages = {s: ms([sum(b[p] for p in parts) for _, b in rows]) for s, parts in STAGES.items()}
    stages["decode_token"] = ms([t for _, b in rows for t in b["decode_token"]])
    stages["decode_token_mean"] = ms([statistics.fmean(b["decode_token"]) for _, b in rows])
    stages["end_to_end"] = ms([s for s, _ in rows])
    order = ("preprocess", "vision", "encoder", "first_token", "decode_token", "decode_token_mean", "generate_overhead",
             "postprocess", "end_to_end")
    return {"stages_ms": {s: stages[s] for s in order}, "end_to_end_ms_per_run": [1000 * s for s, _ in rows],
            "decode_token_ms_per_run": [ms(b["decode_token"]) for _, b in rows],  # each round's median step
            "decode_steps_per_run": len(rows[0][1]["decode_token"]), "first_token_steps_per_run": 1}


def all_task_inputs(image: np.ndarray) -> tuple[dict, dict, dict, np.ndarray]:
    """The 14 tasks' inputs on `image`: ({tag: run kwargs}, texts, regions, PIX_CHG's "after" image)."""
    size = (image.shape[1], image.shape[0])
    after = image[::-1].copy()
    inputs = {t: ({"image2": after} if tasks.get(t).n_images == 2 else task_inputs(t, size)) for t in tasks.TAGS}
    texts, regions = run_all_inputs([t for t in tasks.TAGS if tasks.get(t).n_images == 1], size)
    return inputs, texts, regions, after


def all_tasks_rounds(paths: dict, image: np.ndarray, runs: int, log) -> dict:
    """The 14 tasks on one image: one tiercel run_all (PIX_CHG's pair in the same batch, image2) vs 14 eager
    run calls; medians of `runs`."""
    gen = forced_generation(NEW_TOKENS, 1)
    inputs, texts, regions, after = all_task_inputs(image)

    def batched(m) -> dict:
        t0 = time.perf_counter()
        m.run_all(image, list(tasks.TAGS), texts, regions, image2=after, **gen)
        return {"run_all_ms": 1000 * (time.perf_counter() - t0)}

    def separate(m) -> dict:
        t0 = time.perf_counter()
        for tag in tasks.TAGS:
            m.run(image, tag, **inputs[tag], **gen)
        return {"calls_ms": 1000 * (time.perf_counter() - t0)}

    ours = [name for name in paths if name != "eager"]
    for name in ours:
        batched(paths[name])  # warm-up: the batch of 14 is a new shape for the graphs
    rows = {name: [] for name in paths}
    for i in range(runs):
        for name, m in paths.items():
            rows[name].append(separate(m) if name == "eager" else batched(m))
            rows[name][-1]["total_ms"] = sum(rows[name][-1].values())
        log(f"14-task round {i + 1}/{runs}: " + ", ".join(f"{n} {r[-1]['total_ms'] / 1000:.1f} s" for n, r in rows.items()))
    med = lambda name, key: statistics.median(r[key] for r in rows[name])  # noqa: E731
    out = {"tasks": list(tasks.TAGS),
           "eager": {"what": f"{len(tasks.TAGS)} separate run calls", "total_ms": med("eager", "total_ms"),
                     "total_ms_per_run": [r["total_ms"] for r in rows["eager"]]}}
    for name in ours:
        out[name] = {"what": f"one run_all of the {len(tasks.TAGS)} tasks (vision batch 2: the image and PIX_CHG's pair)",
                     "total_ms": med(name, "total_ms"), "total_ms_per_run": [r["total_ms"] for r in rows[name]]}
    return out


def decode_bound(model, m, task: str, image: np.ndarray, bandwidth: float) -> dict:
    """Bytes one decode token reads (tiercel.models.report, fp32) and the time they take at `bandwidth`."""
    from tiercel.models import build
    from tiercel.models.report import model_report

    size = (image.shape[1], image.shape[0])
    prompt = tasks.get(task).prompt(image_size=size, dialect=m.dialect, **task_inputs(task, size))
    n_img = m.shape.image_tokens
    prompt_tokens = len(m.tokenizer.prompt_ids(prompt, n_img)) - n_img
    meta = build(model.tiercel_shape, device="meta", image_token_id=model.config.image_token_id)  # no weights allocated
    report = model_report(meta, "benchmark", prompt_tokens=prompt_tokens, new_tokens=NEW_TOKENS)
    per_token = report.decoder_bytes_per_token("fp32")
    return {"encoder_tokens": n_img + prompt_tokens, "bytes_per_token": per_token, "bandwidth_gbs": bandwidth / 1e9,
            "bound_ms": 1000 * per_token["total"] / bandwidth}


def check(value: float, target: tuple[str, float]) -> dict:
    op, goal = target
    return {"value": round(value, 3), "target": f"{op} {goal}", "met": value >= goal if op == ">=" else value <= goal}


def verdicts(paths: dict, bound: dict, all_tasks: dict) -> dict:
    """Per path: stage speed-ups over eager and the issue's three targets (eager gets the decode check only)."""
    eager = paths["eager"]["stages_ms"]
    out = {"eager": {"decode_vs_bound": check(eager["decode_token"] / bound["bound_ms"], TARGETS["decode_vs_bound"])}}
    for name in (n for n in paths if n != "eager"):
        s = paths[name]["stages_ms"]
        out[name] = {"speedup_vs_eager": {k: eager[k] / s[k] for k in s if s[k] > 0},
                     "end_to_end_speedup": check(eager["end_to_end"] / s["end_to_end"], TARGETS["end_to_end_speedup"]),
                     "decode_vs_bound": check(s["decode_token"] / bound["bound_ms"], TARGETS["decode_vs_bound"]),
                     "all_tasks_speedup": check(all_tasks["eager"]["total_ms"] / all_tasks[name]["total_ms"],
                                                TARGETS["all_tasks_speedup"])}
    return out


def print_summary(result: dict, log) -> None:
    paths = result["paths"]
    log(f"{'ms (median)':<18}" + "".join(f"{n:>14}" for n in paths))
    for stage in paths["eager"]["stages_ms"]:
        log(f"{stage:<18}" + "".join(f"{p['stages_ms'][stage]:>14.1f}" for p in paths.values()))
    log(f"{'14 tasks':<18}" + "".join(f"{result['all_tasks'][n]['total_ms']:>14.1f}" for n in paths))
    bound = result["decode_bound"]
    log(f"decode bound {bound['bound_ms']:.2f} ms ({bound['bytes_per_token']['total'] / 1e6:.1f} MB per token "
        f"at {bound['bandwidth_gbs']:.1f} GB/s)")
    for name, v in result["targets"].items():
        log(f"{name}: " + "; ".join(f"{k} {c['value']} ({c['target']}: {'met' if c['met'] else 'MISSED'})"
                                     for k, c in v.items() if k != "speedup_vs_eager"))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="florence2-base", help="model shape (random weights)")
    ap.add_argument("--runs", type=int, default=5, help="timed rounds of the single-task call (after one warm-up)")
    ap.add_argument("--all-runs", type=int, help="timed rounds of the 14-task comparison (default: 3, at most --runs)")
    ap.add_argument("--task", default="IMG_CAP", choices=[t for t in tasks.TAGS if tasks.get(t).n_images == 1],
                    help="task of the single-call stage timing")
    ap.add_argument("--threads", type=int,
                    help="intra-op threads for torch, onnxruntime and OpenVINO (default: each library's own)")
    ap.add_argument("--bf16", action="store_true",
                    help="also time the OpenVINO bundle in bfloat16 (openvino-bf16; needs AVX512_BF16 or AMX)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "runtime_cpu.json")
    args = ap.parse_args()
    args.all_runs = min(3, args.runs) if args.all_runs is None else args.all_runs
    if args.runs < 1 or args.all_runs < 1:
        ap.error(f"--runs and --all-runs must be >= 1 (got {args.runs}, {args.all_runs})")
    return args


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads libgomp: before its first import
    import torch

    log = lambda msg: print(msg, flush=True)  # noqa: E731
    started = time.perf_counter()
    result = {"command": "python benchmarks/runtime_cpu.py " + " ".join(sys.argv[1:]), "machine": machine(),
              "preset": args.preset, "task": args.task, "batch": 1, "new_tokens": NEW_TOKENS, "num_beams": 1,
              "runs": args.runs, "all_runs": args.all_runs, "generation_overrides": forced_generation(NEW_TOKENS, 1)}
    work = HERE / "work" / "runtime_cpu" / args.preset
    if args.bf16 and not has_bf16():
        raise SystemExit("--bf16: OpenVINO's CPU plugin has no BF16 here (it needs AVX512_BF16 or AMX); run without --bf16")
    model, tok, bundle, result["export_s"] = build_and_export(args.preset, work, log)
    paths, result["load_s"] = open_paths(model, tok, bundle, args.threads, args.bf16)
    result["precision"] = {name: "bf16" if name == "openvino-bf16" else "fp32" for name in paths}
    result["threads"] = {"requested": args.threads, "torch": torch.get_num_threads()}
    result["attn_implementation"] = model.config._attn_implementation
    image = profile_image(paths["onnxruntime"].pre.size)
    result["image_size"] = list(image.shape[:2])
    result["machine"]["loadavg_timing_start"] = os.getloadavg()
    bandwidth = [measure_bandwidth()]
    result["paths"] = stage_rounds(paths, image, args.task, args.runs, log)
    result["all_tasks"] = all_tasks_rounds(paths, image, args.all_runs, log)
    bandwidth.append(measure_bandwidth())
    result["bandwidth_gbs"] = {"before": bandwidth[0] / 1e9, "after": bandwidth[1] / 1e9, "used": max(bandwidth) / 1e9,
                               "method": "roofline.measure_bandwidth: numpy copy of 128 MiB over all cores, "
                                         "read+write, best of 5; the higher of before/after is used"}
    result["decode_bound"] = decode_bound(model, paths["onnxruntime"], args.task, image, max(bandwidth))
    result["targets"] = verdicts(result["paths"], result["decode_bound"], result["all_tasks"])
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - started
    print_summary(result, log)
    write_json(args.out, result)  # atomic: a crash leaves the previous results file whole
    log(f"wrote {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
