"""transformers eager (fp32 and bf16 autocast) vs tiercel fp32, bf16 and int8 bundles on this CPU, in one run.

Usage:
    python benchmarks/runtime_cpu.py [--preset florence2-base] [--runs 5] [--all-runs 3] [--task IMG_CAP]
                                     [--threads N] [--bf16] [--int8 onnxruntime[,openvino]] [--n-calib 4]
                                     [--out benchmarks/results/runtime_cpu.json]
    python benchmarks/runtime_cpu.py --preset tiny --runs 2 --bf16 --threads 1 --out /tmp/rt.json   # checks it: ~20 s

On a 2-core machine shared with a training job we run with `OMP_NUM_THREADS=1 ... --threads 1`, so that every
path gets the same one core. `--preset florence2-base --runs 3 --all-runs 3 --bf16 --threads 1` takes about 30
minutes there (an estimate from an earlier 2-thread run's timings, doubled, not a run: export and int8
quantisation ~4 min, 4 stage rounds ~4 min, 14-task warm-up and 3 rounds ~19 min, mostly the 3 x 14 calls of
each eager path). The paths are opened in benchmarks/runtime_paths.py, peaks and bounds are in
benchmarks/runtime_bounds.py.

The preset's shape is built with random weights (speed does not depend on their values) and exported once to an
fp32 bundle with ONNX and OpenVINO IR graphs under benchmarks/work/runtime_cpu/ (git-ignored; export parity is
skipped, the generated tokens are compared below instead), then quantised to int8-static for each `--int8`
backend with tiercel.quantize.quantize_bundle as benchmarks/quantize_cpu.py does it: `--n-calib` (4) of 42
synthetic 64 px samples, no accuracy guard. Every path makes the same call - one `--task` on a synthetic image of
the preset's size (768x768 for florence2-base), batch 1, greedy, exactly 32 new tokens (no eos id can match and
none is forced: tiercel.runtime.profile.forced_generation):

    eager             tiercel.models.TorchPredictor: the transformers model's own modules (vision tower, embeddings,
                      text encoder) and transformers `generate` from the encoder output; fp32, PyTorch eager (no
                      compile), the model's default attention implementation (recorded)
    eager-bf16        the same TorchPredictor with each run / run_all call (vision, text encoder and generate) under
                      torch.autocast("cpu", dtype=torch.bfloat16): the fair eager baseline on a CPU with bf16;
                      skipped (and recorded so) where /proc/cpuinfo has neither avx512_bf16 nor amx_bf16
    onnxruntime       tiercel.runtime.load(fp32 bundle, backend="onnxruntime").run(...)
    openvino          tiercel.runtime.load(fp32 bundle, backend="openvino").run(...)
    openvino-bf16     (--bf16) the fp32 bundle on OpenVINO with options={"INFERENCE_PRECISION_HINT": "bf16"}, the
                      `--option` a user passes to `tiercel run`; needs AVX512_BF16 or AMX
    onnxruntime-int8  (--int8 onnxruntime, the default) the int8-static bundle on onnxruntime
    openvino-int8     (--int8 ...,openvino) the OpenVINO/NNCF int8-static bundle; not by default: its
                      quantisation took 7 minutes of this 2-core machine in quantize_cpu.json
    openvino-int8-bf16  (--int8 ...,openvino with --bf16) that bundle with INFERENCE_PRECISION_HINT=bf16: int8
                      matmuls, everything else and the KV cache in bf16 (decode bound: int8 weights, bf16 KV)

Tokens are compared with eager's (random weights: bf16 and int8 rounding may change them, which says nothing about
a trained model; quantize_cpu.md and README have accuracy on trained ones).

All paths are loaded together and interleaved, and each round starts one path later than the one before (round i
opens with path i): whichever path ran first in a round was measured 4-19% slower. One warm-up round, then
`--runs` timed rounds. Times are time.perf_counter, recorded by the runtime's StageTimer through `Model.timer`
(TorchPredictor is a Model, so it shares the hook); each stage is the median over the rounds:

    preprocess     RGB conversion, prompt, resize and normalise: the runtime's numpy code in every path
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

Bounds (benchmarks/runtime_bounds.py), all in the JSON:
- Compute peaks as issue 28 measures them: a 2048^3 torch matmul at the benchmark's thread count, median of 5 -
  fp32, bf16 (where the CPU has it) and int8 (the faster of torch._int_mm, int8 x int8 -> int32, and onnxruntime's
  MatMulInteger, best of 5: torch's ran at 1 GFLOP/s on an AVX2-only CPU). Each path's vision stage is
  compared with vision GFLOPs (roofline.vision_flops; 380.7 for florence2-base) at its precision's peak (fp32
  paths: fp32, eager-bf16 and openvino-bf16: bf16, int8 bundles: int8; optimistic for int8, whose
  activation x activation matmuls stay fp32).
- Decode against memory bandwidth: bandwidth is measured in this run (roofline.measure_bandwidth: numpy read of
  256 MiB, a max or a matrix-vector product, the faster, best of 5, on `--threads` threads; runs before 2026-12-07
  used a copy over all cores, read + write counted) before and after the timed rounds, and the higher value is
  used. Bytes per token come from tiercel.models.report (decoder layers + lm_head weights, cross-attention K/V of
  the task's encoder tokens, self-attention K/V averaged over the 32 tokens); bound = bytes / bandwidth, with fp32
  weights for decode_vs_bound (every path, comparable between runs) and at the path's precision for
  decode_vs_own_bound: weights and KV cache in bf16 for eager-bf16 (autocast's K/V projections) and openvino-bf16
  (OpenVinoSession types the KV ports), int8 weights with an fp32 KV cache for the int8 bundles.

14 tasks on one image: each tiercel path makes one `run_all(image, 14 tasks, image2=...)` call: the image and
PIX_CHG's tiled before/after pair go through the vision encoder as a batch of 2, and the 14 prompts (each row
with its own image's features) go through the text encoder and decoder as one right-padded batch. Each eager path
makes 14 separate `TorchPredictor.run` calls. Greedy, 32 forced tokens per task, texts and regions from
tiercel.tasks.examples.task_inputs. tiercel's batched calls are warmed up once (new batch shapes; eager's were
warmed by the stage rounds), then `--all-runs` rotated rounds (default 3, at most --runs), median, every call
under the stage timer: for each path, where the median round's time went (vision, text encoder, first token,
decode steps, other: ms and share of the call), and the compute bound of its vision and text-encoder work.

Targets: issue 5 - end-to-end >= 1.5x faster than eager, decode per token within 1.5x of the bandwidth bound,
14 tasks >= 5x faster than 14 eager calls; issue 28 - 14 tasks >= 10x faster than 14 eager calls, against eager
and against eager-bf16, and the vision stage within 1.5x of its compute bound. Each is written with its value and
whether it was met. CPU model, cores, load average, the git commit and library versions are recorded: the machine
may be shared, so read the numbers with them. Each library uses its own default thread count unless --threads
sets all three. OMP_WAIT_POLICY is PASSIVE unless the environment sets it (the value used is recorded): on a
shared machine PyTorch's spin-waiting OpenMP threads made the eager baseline many times slower (tiny preset's
vision tower at load 4.7 on 2 cores: 1.1 s with libgomp's default, 7-15 ms PASSIVE, 5 ms on 1 thread).
onnxruntime and OpenVINO use their own thread pools, so this only keeps eager from looking slower than it is.
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
from runtime_bounds import add_bounds, encoder_tokens, matmul_peaks
from runtime_paths import BACKENDS, EAGER, KV_PRECISION, PRECISION, cpu_bf16, has_bf16, open_paths, quantize_int8

from tiercel import tasks
from tiercel.fileio import write_json
from tiercel.runtime.profile import StageTimer, breakdown, forced_generation
from tiercel.runtime.profile.roofline import measure_bandwidth
from tiercel.runtime.profile.runner import profile_image
from tiercel.tasks.examples import run_all_inputs, task_inputs

HERE = Path(__file__).resolve().parent
NEW_TOKENS = 32
WEIGHT_SCALE = {"fp32": 1.0, "bf16": 0.5, "int8": 0.25, "int8+bf16": 0.25}  # decoder weight bytes per fp32 byte
# KV cache bytes per fp32 byte: bf16 paths hold it in bf16 (autocast's projections; OpenVinoSession at the bf16
# hint), the int8 bundles in fp32 (activations stay fp32)
KV_SCALE = {"fp32": 1.0, "bf16": 0.5, "int8": 1.0, "int8+bf16": 0.5}  # int8+bf16: openvino-int8-bf16
TARGETS = {"end_to_end_speedup": (">=", 1.5), "decode_vs_bound": ("<=", 1.5), "all_tasks_speedup": (">=", 5.0),  # issue 5
           "all_tasks_vs_eager": (">=", 10.0), "vision_vs_compute_bound": ("<=", 1.5)}  # issue 28
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

    from tiercel.runtime.backends import ORT_CPU_CONFIG

    flags = open("/proc/cpuinfo").read()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "avx2": " avx2" in flags, "avx512_vnni": "avx512_vnni" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "loadavg_start": os.getloadavg(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__,
            "onnxruntime_cpu_config": dict(ORT_CPU_CONFIG)}  # what tiercel's onnxruntime sessions ran with here


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


def timed(m, fn, generations: int = 1) -> tuple[float, dict]:
    """(seconds, stage breakdown) of `fn`, which makes `generations` generate calls (one per task for eager's 14
    separate calls); fails when the decoder steps were not all seen as stages."""
    m.timer.take()
    start = time.perf_counter()
    fn()
    seconds, events = time.perf_counter() - start, m.timer.take()
    steps = [name for name, _ in events if name in ("first_token", "decode_token")]
    if steps != (["first_token"] + ["decode_token"] * (NEW_TOKENS - 1)) * generations:
        raise RuntimeError(f"{m.backend}: expected {generations} first_token and {generations * (NEW_TOKENS - 1)} "
                           f"decode_token stages, got {steps.count('first_token')} and {steps.count('decode_token')}")
    return seconds, breakdown(events)


def one_round(live: dict, call, where: str, log, failed: dict | None = None, start: int = 0) -> dict:
    """call(m) for each path in `live`, in order from the `start`-th (then round to the first): {path: result}.

    With `failed` given, a path other than eager whose call raises goes into it ({path: "Type: message"}) and out of
    `live`, and the others go on; without it the error ends the run, and so does eager's (the baseline)."""
    got, order = {}, list(live.items())
    start %= max(len(order), 1)
    for name, m in order[start:] + order[:start]:
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
    """One warm-up and `runs` timed interleaved rounds of `run(image, task)`, round i opening with path i (so
    that no path is always first); per path a summary.

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
                            log, failed, start=i)
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
    """The 14 tasks on one image: one tiercel run_all per path (PIX_CHG's pair in the same batch, image2) vs 14
    run calls per eager path, under the stage timer; medians of `runs` rounds (round i opens with path i), and
    where the median round's time went."""
    gen = forced_generation(NEW_TOKENS, 1)
    inputs, texts, regions, after = all_task_inputs(image)
    n = len(tasks.TAGS)

    def call(m) -> tuple[float, dict]:
        if m.backend == "torch":  # an eager path: one call per task
            return timed(m, lambda: [m.run(image, t, **inputs[t], **gen) for t in tasks.TAGS], generations=n)
        return timed(m, lambda: m.run_all(image, list(tasks.TAGS), texts, regions, image2=after, **gen))

    rows = {name: [] for name in paths}
    for m in paths.values():
        m.timer = StageTimer()
    try:
        for m in paths.values():
            if m.backend != "torch":
                call(m)  # warm-up: the batch of 14 is a new shape for the graphs
        for i in range(runs):
            got = one_round(paths, call, f"14-task round {i + 1}", log, start=i)
            for name, row in got.items():
                rows[name].append(row)
            log(f"14-task round {i + 1}/{runs}: " + ", ".join(f"{k} {s:.1f} s" for k, (s, _) in got.items()))
    finally:
        for m in paths.values():
            m.timer = None
    out = {"tasks": list(tasks.TAGS)}
    for name, r in rows.items():
        middle = sorted(r, key=lambda row: row[0])[len(r) // 2]  # the median round (the upper one of two)
        out[name] = {"what": f"{n} separate run calls" if paths[name].backend == "torch" else
                     f"one run_all of the {n} tasks (vision batch 2: the image and PIX_CHG's pair)",
                     "total_ms": 1000 * statistics.median(s for s, _ in r), "total_ms_per_run": [1000 * s for s, _ in r],
                     "time_goes": time_goes(*middle)}
    return out


def time_goes(seconds: float, b: dict) -> dict:
    """Where one call's time went: ms and share of the call for vision, text encoder (with the token embedding),
    first token, decode steps, and other (preprocessing, prompts, the generation loop's own work, parsing)."""
    ms = {part: 1000 * sum(b[s] for s in stages) for part, stages in
          {"vision": ("vision_encoder",), "text_encoder": ("embed_tokens", "text_encoder"), "first_token": ("first_token",)}.items()}
    ms["decode_steps"] = 1000 * sum(b["decode_token"])
    ms["other"] = 1000 * seconds - sum(ms.values())
    return {"total_ms": 1000 * seconds, "ms": ms, "share": {k: v / (1000 * seconds) for k, v in ms.items()}}


def decode_bound(model, m, task: str, image: np.ndarray, bandwidth: float) -> dict:
    """Bytes one decode token reads (tiercel.models.report, fp32) and the time they take at `bandwidth`; also that
    time with the weights at each precision of WEIGHT_SCALE (KV in fp32), and with weights and KV at each precision
    (bound_ms_by_precision: KV_SCALE; what decode_vs_own_bound divides by)."""
    from tiercel.models import build
    from tiercel.models.report import model_report

    size = (image.shape[1], image.shape[0])
    prompt = tasks.get(task).prompt(image_size=size, dialect=m.dialect, **task_inputs(task, size))
    n_img = m.shape.image_tokens
    prompt_tokens = len(m.tokenizer.prompt_ids(prompt, n_img)) - n_img
    meta = build(model.tiercel_shape, device="meta", image_token_id=model.config.image_token_id)  # no weights allocated
    report = model_report(meta, "benchmark", prompt_tokens=prompt_tokens, new_tokens=NEW_TOKENS)
    per_token = report.decoder_bytes_per_token("fp32")
    kv = per_token["cross_kv"] + per_token["self_kv"]
    ms = lambda weights, kv_scale: 1000 * (weights * per_token["weights"] + kv_scale * kv) / bandwidth  # noqa: E731
    return {"encoder_tokens": n_img + prompt_tokens, "bytes_per_token": per_token, "bandwidth_gbs": bandwidth / 1e9,
            "bound_ms": 1000 * per_token["total"] / bandwidth,
            "bound_ms_by_weight_precision": {p: ms(k, 1.0) for p, k in WEIGHT_SCALE.items()},
            "bound_ms_by_precision": {p: ms(k, KV_SCALE[p]) for p, k in WEIGHT_SCALE.items()}}


def check(value: float, target: tuple[str, float]) -> dict:
    op, goal = target
    return {"value": round(value, 3), "target": f"{op} {goal}", "met": value >= goal if op == ">=" else value <= goal}


def verdicts(paths: dict, bound: dict, all_tasks: dict, bounds: dict) -> dict:
    """Per path the issues' targets: decode and vision against their bounds (every path); for the tiercel paths
    also stage and 14-task speed-ups over each eager baseline, and issue 5's end-to-end and 14-task targets against
    eager fp32; for eager-bf16 its speed-ups over eager."""
    out = {}
    for name, p in paths.items():
        s, v = p["stages_ms"], {}
        v["decode_vs_bound"] = check(s["decode_token"] / bound["bound_ms"], TARGETS["decode_vs_bound"])
        own = PRECISION[name] + (f"+{KV_PRECISION[name]}" if name in KV_PRECISION else "")
        v["decode_vs_own_bound"] = s["decode_token"] / bound["bound_ms_by_precision"][own]
        if bounds[name]["vision"]["measured_over_bound"] is not None:
            v["vision_vs_compute_bound"] = check(bounds[name]["vision"]["measured_over_bound"],
                                                 TARGETS["vision_vs_compute_bound"])
        for base in (b for b in EAGER if b in paths and b != name and (name not in EAGER or b == "eager")):
            e, tag = paths[base]["stages_ms"], base.replace("-", "_")
            v[f"speedup_vs_{tag}"] = {k: e[k] / s[k] for k in s if s[k] > 0}
            theirs, ours = all_tasks[base]["total_ms_per_run"], all_tasks[name]["total_ms_per_run"]
            v[f"all_tasks_vs_{tag}"] = {**check(all_tasks[base]["total_ms"] / all_tasks[name]["total_ms"],
                                                TARGETS["all_tasks_vs_eager"]),
                                        "per_round": [a / b for a, b in zip(theirs, ours)]}  # same round, either order
        if name not in EAGER:
            v["end_to_end_speedup"] = check(paths["eager"]["stages_ms"]["end_to_end"] / s["end_to_end"],
                                            TARGETS["end_to_end_speedup"])
            v["all_tasks_speedup"] = check(all_tasks["eager"]["total_ms"] / all_tasks[name]["total_ms"],
                                           TARGETS["all_tasks_speedup"])
        elif name == "eager-bf16":
            v["all_tasks_vs_eager"] = {k: v["all_tasks_vs_eager"][k] for k in ("value", "per_round")}  # no target
        out[name] = v
    return out


def print_summary(result: dict, log) -> None:
    paths, every, bounds = result["paths"], result["all_tasks"], result["bounds"]
    row = lambda label, cells: log(f"{label:<20}" + "".join(f"{c:>19}" for c in cells))  # noqa: E731
    row("ms (median)", paths)
    for stage in paths["eager"]["stages_ms"]:
        row(stage, [f"{p['stages_ms'][stage]:.1f}" for p in paths.values()])
    row("vision bound", [f"{bounds[n]['vision']['bound_ms'] or float('nan'):.1f}" for n in paths])
    row("14 tasks", [f"{every[n]['total_ms']:.1f}" for n in paths])
    for base in (b for b in EAGER if b in paths):
        row(f"  x vs {base}", [f"{every[base]['total_ms'] / every[n]['total_ms']:.2f}" for n in paths])
    for part in every["eager"]["time_goes"]["share"]:
        row(f"  {part} share", [f"{every[n]['time_goes']['share'][part]:.0%}" for n in paths])
    peaks = result["peaks"]
    log("matmul peaks (GFLOP/s): " + ", ".join(f"{k} {v['gflops']:.0f}" if "gflops" in v else f"{k} {v['error']}"
                                               for k, v in peaks.items()))
    bound = result["decode_bound"]
    log(f"decode bound {bound['bound_ms']:.2f} ms ({bound['bytes_per_token']['total'] / 1e6:.1f} MB per token "
        f"at {bound['bandwidth_gbs']:.1f} GB/s)")
    for name, v in result["targets"].items():
        log(f"{name}: " + "; ".join(f"{k} {c['value']} ({c['target']}: {'met' if c['met'] else 'MISSED'})"
                                     for k, c in v.items() if isinstance(c, dict) and "met" in c))


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
    ap.add_argument("--int8", default="onnxruntime",
                    help=f"comma-separated backends to time an int8-static bundle on ({', '.join(BACKENDS)}), or none")
    ap.add_argument("--n-calib", type=int, default=4, help="calibration samples of the int8 bundles")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "runtime_cpu.json")
    args = ap.parse_args()
    args.all_runs = min(3, args.runs) if args.all_runs is None else args.all_runs
    if args.runs < 1 or args.all_runs < 1:
        ap.error(f"--runs and --all-runs must be >= 1 (got {args.runs}, {args.all_runs})")
    args.int8 = [] if args.int8 == "none" else args.int8.split(",")
    if set(args.int8) - set(BACKENDS):
        ap.error(f"--int8: choose from {', '.join(BACKENDS)} or none (got {','.join(args.int8)})")
    return args


def skipped_paths(args, eager_bf16: bool) -> dict:
    """{path: why it is not in this run} for the paths this run leaves out."""
    out = {} if eager_bf16 else {"eager-bf16": "/proc/cpuinfo has neither avx512_bf16 nor amx_bf16"}
    if not args.bf16:
        out["openvino-bf16"] = "not asked for (--bf16)"
    for backend in sorted(set(BACKENDS) - set(args.int8)):
        out[f"{backend}-int8"] = f"not in --int8 ({','.join(args.int8) or 'none'})"
    return out


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads libgomp: before its first import
    import torch
    from image_use import commit

    log = lambda msg: print(msg, flush=True)  # noqa: E731
    started = time.perf_counter()
    result = {"command": "python benchmarks/runtime_cpu.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": machine(), "preset": args.preset, "task": args.task, "batch": 1, "new_tokens": NEW_TOKENS,
              "num_beams": 1, "runs": args.runs, "all_runs": args.all_runs,
              "generation_overrides": forced_generation(NEW_TOKENS, 1)}
    work = HERE / "work" / "runtime_cpu" / args.preset
    if args.bf16 and not has_bf16():
        raise SystemExit("--bf16: OpenVINO's CPU plugin has no BF16 here (it needs AVX512_BF16 or AMX); run without --bf16")
    eager_bf16 = cpu_bf16()
    result["skipped"] = skipped_paths(args, eager_bf16)
    model, tok, bundle, result["export_s"] = build_and_export(args.preset, work, log)
    int8, result["quantize_s"] = quantize_int8(bundle, work, args.int8, args.n_calib, log)
    result["int8"] = {"scheme": "int8-static", "n_calib": args.n_calib, "calibration": "42 synthetic 64 px samples",
                      "guard": "none (n_val=0)"}
    paths, result["load_s"] = open_paths(model, tok, bundle, args.threads, args.bf16, eager_bf16, int8)
    result["precision"] = {name: PRECISION[name] for name in paths}
    result["threads"] = {"requested": args.threads, "torch": torch.get_num_threads()}
    result["attn_implementation"] = model.config._attn_implementation
    image = profile_image(paths["onnxruntime"].pre.size)
    result["image_size"] = list(image.shape[:2])
    result["machine"]["loadavg_timing_start"] = os.getloadavg()
    bandwidth = [measure_bandwidth(threads=args.threads)]
    result["peaks"] = matmul_peaks([p for p in ("fp32", "bf16", "int8") if p != "bf16" or eager_bf16])
    log("matmul peaks: " + ", ".join(f"{k} {v.get('gflops', float('nan')):.0f} GFLOP/s" for k, v in result["peaks"].items()))
    result["paths"] = stage_rounds(paths, image, args.task, args.runs, log)
    result["all_tasks"] = all_tasks_rounds(paths, image, args.all_runs, log)
    bandwidth.append(measure_bandwidth(threads=args.threads))
    result["bandwidth_gbs"] = {"before": bandwidth[0] / 1e9, "after": bandwidth[1] / 1e9, "used": max(bandwidth) / 1e9,
                               "method": f"roofline.measure_bandwidth: numpy read of 256 MiB on {args.threads or 'all'} "
                                         "threads, best of 5; the higher of before/after is used"}
    result["decode_bound"] = decode_bound(model, paths["onnxruntime"], args.task, image, max(bandwidth))
    _, texts, regions, _ = all_task_inputs(image)
    tokens = encoder_tokens(paths["onnxruntime"], (image.shape[1], image.shape[0]), texts, regions)
    result["bounds"] = add_bounds(result, model.tiercel_shape.to_dict(), result["peaks"], tokens)
    result["targets"] = verdicts(result["paths"], result["decode_bound"], result["all_tasks"], result["bounds"])
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - started
    print_summary(result, log)
    write_json(args.out, result)  # atomic: a crash leaves the previous results file whole
    log(f"wrote {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
