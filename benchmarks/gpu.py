"""transformers eager fp16 vs tiercel's GPU path on one CUDA GPU, stage by stage, in one run.

Usage (a CUDA machine with torch, onnxruntime-gpu and, for the tensorrt path, tensorrt + cuda-python):
    python benchmarks/gpu.py                                    # florence2-base and -large; results/gpu_<gpu>.json
    python benchmarks/gpu.py --preset florence2-base --paths eager,ort_bound --runs 5
Check of the script on a CPU (every line but the CUDA specifics; writes no results/gpu_*.json):
    python benchmarks/gpu.py --check --out /tmp/gpu_check.json  # = --device cpu --preset tiny --runs 2
On a copy of the tree without .git, set GIT_COMMIT (and GIT_DIRTY=0/1) so that the JSON names the commit.

RUN ON H200s (2026-11-27): eager and the two onnxruntime paths on florence2-base once (cut off before the JSON), and
eager / torch_static / torch_graphs (+ fused or split q/k/v) on florence2-base and -large in seven runs
(results/gpu_nvidia_h200.json is the last; every run is in results/gpu_nvidia_h200_2026-11-27/ with a README), and
once on an H100 (results/gpu_nvidia_h100_80gb_hbm3.json). The tensorrt path has not run (no tensorrt there). benchmarks/gpu_check.sh is the prepared device script.

Each preset's shape is built with random weights (tiercel.models.zoo; speed does not depend on their values),
exported once to an fp16 bundle (`--precision fp16`: norms/softmax fp32, fp16 KV; plus TensorRT engines when the
tensorrt path is asked for) under benchmarks/work/gpu/ (git-ignored; parity skipped: tokens are compared below).
The paths make the same calls on a synthetic image of the preset's size (768x768), greedy, exactly 32 new tokens
(tiercel.runtime.profile.forced_generation):

    eager      tiercel.models.TorchPredictor: the transformers model in fp16 on cuda, PyTorch eager (no compile),
               its default attention implementation (recorded); transformers `generate` batched over prompts.
               Images are preprocessed on the host, as the transformers processor does (by the runtime's numpy
               code, which is faster than the processor's). On --device cpu it runs in fp32 (fp16 matmuls on a
               CPU are no baseline)
    ort        the fp16 bundle, onnxruntime CUDA EP, plain run: every decode step copies the KV cache to the
               host and back (what io binding saves)
    ort_bound  the fp16 bundle, onnxruntime CUDA EP with I/O binding: KV cache and token embeddings stay on
               the GPU (BoundKVDecoder; tiercel's default on cuda) - tiercel's GPU path
    torch_graphs  tiercel.models.static_decode.GraphedPredictor on the eager path's model: the same vision tower
               and text encoder, the decoder as a static-KV step replayed as one CUDA graph per token, decoding
               by the runtime's generate.py (on --device cpu: the static step without graphs). On cuda the images
               are resized and normalised on the GPU (tiercel.models.device_preprocess: Pillow's bytes) and the
               image features stay there
    torch_graphs_split  torch_graphs with each self-attention's q, k and v projected by three matmuls, as
               transformers does (fuse_qkv=False): what fusing them into one (the default) buys
    torch_static  the same static-KV decoder launched op by op (no graphs): what the graphs themselves buy
    tensorrt   fp16 TensorRT engines (backend "tensorrt", also device-resident KV); skipped with the reason
               recorded when tensorrt is not installed or the device is not cuda

Stages come from the runtime's StageTimer through `Model.timer` (TorchPredictor shares the hook; its decoder
steps are timed by its forward hooks, TorchPredictor._timed_steps). On cuda the timer's clock calls torch.cuda.synchronize() first, so a stage
holds its GPU work; onnxruntime and TensorRT runs end synchronised anyway (their outputs reach the host).
Medians over `--runs` interleaved rounds after one warm-up: vision (vision tower + projector), first_token
(first decoder step, which projects the cross-attention K/V), decode_token (each later step), end_to_end.
14 tasks on one image: every path runs one `run_all` over the 14 tasks: PIX_CHG's before/after pair goes through the
vision encoder in the same call as the image, and the 14 prompts decode as one batch (for eager that is
transformers `generate` on the batch, like the reference); median of `--all-runs` rounds after a warm-up.

A path that fails to open, or raises in a round (say an engine refusing a batch), goes into the preset's `failed`
({path: "Type: message"}; `failed_in` says where) and leaves the later rounds; the others finish. Eager failing ends
the run: it is the baseline.

Speed-ups (`targets` per path): within each interleaved round i the ratio eager_i / path_i, for decode (each round's
median step), end_to_end and the 14 tasks; the value is the median of those ratios, with their min, max and every
round's. A round's two numbers were taken seconds apart, so a drift of the GPU's speed between rounds cancels out
of the ratio. `of_medians` and speedup_of_stage_medians: eager's median over the path's median, for comparison.
After the interleaved rounds the script runs itself again with --paths eager in a new process (not with
--no-fresh-eager): `eager_fresh_process` holds those stages and 14-task times and their ratio to the interleaved
eager's (fresh_over_interleaved), so a slower or faster eager in a process of its own shows in the same file.

Targets (issue 9): decode per token >= 5x faster than eager; 14 tasks >= 3x faster. Reference (H100,
transformers eager, florence2-base fp16): vision 17 ms, decode 4.8 ms/token, 14 tasks x 33 tokens batched 337 ms
(REFERENCE; recorded beside this run's own eager numbers, which are the ones compared).

Recorded with the numbers (benchmarks/gpu_machine.py): the git commit and whether tracked files were changed (`git`),
GPU name, driver and library versions (`gpu`), the GPU's SM and memory clocks with their maxima, power draw and
temperature at the start and end of the run (`gpu_clocks`), and a 1 GiB device-to-device copy's bandwidth, read +
write bytes, at start and end (`copy_bandwidth`; on --device cpu a host copy). The output file is named after the GPU.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gpu_machine import copy_bandwidth, git_state, gpu_clocks, gpu_info  # noqa: E402
from runtime_cpu import NEW_TOKENS, STAGES, all_task_inputs, check, one_round, stage_rounds, timed  # noqa: E402

from tiercel import tasks  # noqa: E402
from tiercel.models.predict import device_clock  # noqa: E402
from tiercel.runtime.profile import forced_generation  # noqa: E402
from tiercel.runtime.profile.runner import profile_image  # noqa: E402
from tiercel.runtime.profile.timing import StageTimer  # noqa: E402

PATHS = ("eager", "ort", "ort_bound", "torch_static", "torch_graphs", "torch_graphs_split", "tensorrt")
BUNDLE_PATHS = {"ort", "ort_bound", "tensorrt"}  # the paths that need the exported fp16 bundle
PRESETS = ("florence2-base", "florence2-large")
TARGETS = {"decode_speedup": (">=", 5.0), "all_tasks_speedup": (">=", 3.0)}
REFERENCE = {"florence2-base": {"gpu": "H100", "what": "transformers eager fp16 (issue 9)", "vision_ms": 17.0,
                                "decode_ms_per_token": 4.8, "all_tasks_ms": 337.0, "all_tasks": "14 tasks x 33 tokens, batched"}}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", help=f"model shape, repeatable (default: {', '.join(PRESETS)})")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: check the script without a GPU")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {', '.join(PATHS)}")
    ap.add_argument("--runs", type=int, default=5, help="timed rounds of the single-task call (after one warm-up)")
    ap.add_argument("--all-runs", type=int, default=5, help="timed rounds of the 14-task comparison")
    ap.add_argument("--task", default="IMG_CAP", help="task of the single-call stage timing")
    ap.add_argument("--check", action="store_true", help="= --device cpu --preset tiny --runs 2 --all-runs 2")
    ap.add_argument("--out", type=Path, help="JSON file (default on cuda: benchmarks/results/gpu_<gpu name>.json)")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "gpu", help="where the presets' bundles are written")
    ap.add_argument("--export-only", action="store_true", help="build and export the presets' bundles, measure nothing")
    ap.add_argument("--reuse", action="store_true",
                    help="use a bundle already in --work when its manifest names this preset's weights (state hash)")
    ap.add_argument("--no-fresh-eager", dest="fresh_eager", action="store_false",
                    help="skip the second eager measurement in a new process (eager_fresh_process)")
    # PATH:N makes PATH's run/run_all raise from its N-th call on: checks that a failing path costs only its own numbers
    ap.add_argument("--fail", metavar="PATH:N", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.check:
        args.device, args.preset, args.runs, args.all_runs = "cpu", args.preset or ["tiny"], 2, 2
    args.preset = args.preset or list(PRESETS)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = [p for p in args.paths if p not in PATHS]
    if bad or "eager" not in args.paths:
        ap.error(f"--paths: eager plus any of {', '.join(PATHS[1:])} (got {args.paths})")
    if args.fail and not re.fullmatch(r"[a-z_]+:[1-9][0-9]*", args.fail):
        ap.error(f"--fail: PATH:N, N >= 1 (got {args.fail})")
    if args.device != "cuda" and (args.out is None or args.out.resolve().parent == (HERE / "results").resolve()):
        ap.error("on --device cpu give --out outside benchmarks/results/ (results/gpu_*.json hold GPU measurements)")
    return args


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def tensorrt_skip(device: str) -> str | None:
    """Why the tensorrt path cannot run here, or None."""
    if device != "cuda":
        return "needs --device cuda"
    return None if importlib.util.find_spec("tensorrt") else "tensorrt not installed"


def build_and_export(preset: str, paths: list[str], work: Path, log, reuse: bool = False):
    """The preset with random weights (fp32, CPU), its tokenizer, and its fp16 bundle (+ engines for tensorrt).

    With `reuse`, a bundle already at `work`/fp16 whose manifest records this model's state hash is kept (export_s
    is then None): an --export-only run can export while the packages for the GPU path are still being copied.
    """
    from tiercel.export.bundle import export_model, state_hash
    from tiercel.models import build
    from tiercel.models.presets import get_preset
    from tiercel.runtime.tokenizer import train_bpe

    tok = train_bpe(["Describe the image.", "Detect all airplane in the image.", "A harbor with ships."] * 50, vocab_size=300)
    model = build(preset, seed=0, image_token_id=tok.image_id, vocab_size=max(get_preset(preset).vocab_size, len(tok)))
    if not BUNDLE_PATHS & set(paths):
        return model, tok, None, None  # eager and the torch paths run the model itself
    backends = ("onnxruntime", "tensorrt") if "tensorrt" in paths else ("onnxruntime",)  # paths: after tensorrt_skip
    manifest = work / "fp16" / "manifest.json"
    if reuse and "tensorrt" not in backends and manifest.exists():
        recorded = json.loads(manifest.read_text()).get("provenance", {}).get("source_sha256", {}).get("state_dict")
        if recorded == state_hash(model):
            log(f"reusing the {preset} fp16 bundle at {work / 'fp16'}")
            return model, tok, work / "fp16", None
        log(f"{work / 'fp16'} holds other weights: exporting again")
    t = time.perf_counter()
    bundle = export_model(model, tok, work / "fp16", backends=backends, precision="fp16", parity=False, overwrite=True)
    log(f"exported {preset} fp16 ({', '.join(backends)}) in {time.perf_counter() - t:.0f} s")
    return model, tok, bundle, time.perf_counter() - t


def open_paths(model, tok, bundle: Path, names: list[str], device: str, failed: dict) -> dict:
    """{path: Model} for the paths in `names`; a path that fails to open goes into `failed` with its error."""
    import torch
    import transformers

    import tiercel.runtime as rt
    from tiercel.models.predict import TorchPredictor
    from tiercel.models.static_decode import GraphedPredictor

    transformers.logging.set_verbosity_error()  # eos -1 forces 32 tokens; transformers warns it will not stop
    dtype = torch.float16 if device == "cuda" else torch.float32
    eager = TorchPredictor(copy.deepcopy(model).to(device=device, dtype=dtype), tok)
    eager.device_preprocess = False  # the baseline preprocesses on the host, as the transformers processor does
    paths = {"eager": eager}
    opens = {"torch_graphs": lambda: GraphedPredictor(eager.model, tok),
             "torch_graphs_split": lambda: GraphedPredictor(eager.model, tok, fuse_qkv=False),
             "torch_static": lambda: GraphedPredictor(eager.model, tok, graphs=False),
             "ort": lambda: rt.load(bundle, device=device, io_binding=False),
             "ort_bound": lambda: rt.load(bundle, device=device, io_binding=True),
             "tensorrt": lambda: rt.load(bundle, backend="tensorrt")}
    for name in (n for n in names if n != "eager"):
        try:
            paths[name] = opens[name]()
        except Exception as exc:  # noqa: BLE001 - one path that cannot start must not cost the others' numbers
            failed[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name} not measured: {failed[name]}", flush=True)
    return paths


def all_tasks(paths: dict, image: np.ndarray, runs: int, log, now=time.perf_counter, failed: dict | None = None) -> dict:
    """14 tasks on one image: one run_all per path (PIX_CHG's before/after pair in the same batch); medians.

    `failed`: see runtime_cpu.one_round; a path that fails here has no 14-task numbers."""
    gen = forced_generation(NEW_TOKENS, 1)
    _, texts, regions, after = all_task_inputs(image)
    call = lambda m: m.run_all(image, list(tasks.TAGS), texts, regions, image2=after, **gen)

    def once(m) -> float:
        t0 = time.perf_counter()
        call(m)
        return 1000 * (time.perf_counter() - t0)  # results are on the host: all GPU work has finished

    live, rows = dict(paths), {n: [] for n in paths}
    one_round(live, once, "the 14-task warm-up", log, failed)  # the batch of 14 is a new shape
    for i in range(runs):
        got = one_round(live, once, f"14-task round {i + 1}", log, failed)
        for name, ms in got.items():
            rows[name].append(ms)
        log(f"14-task round {i + 1}/{runs}: " + ", ".join(f"{n} {ms:.0f} ms" for n, ms in got.items()))
    # where the time goes: 3 more interleaved rounds under the stage timer (its clock syncs the GPU at every stage
    # boundary, so these totals are not the timed ones above); medians per stage
    profiled = {n: [] for n in paths}
    for i in range(3):
        got = one_round(live, lambda m: profile_round(m, now, lambda: call(m)), f"14-task profiled round {i + 1}", log, failed)
        for name, r in got.items():
            profiled[name].append(r)
    out = {"what": f"one run_all of the {len(tasks.TAGS)} tasks (PIX_CHG's pair batched with the image), {NEW_TOKENS} tokens each"}
    for name in live:
        rounds = profiled[name]
        out[name] = {"total_ms": statistics.median(rows[name]), "total_ms_per_run": rows[name]}
        out[name]["profiled_rounds"] = p = {"total_ms": statistics.median(r["total_ms"] for r in rounds),
                                            "stages_ms": {k: statistics.median(r["stages_ms"][k] for r in rounds) for k in rounds[0]["stages_ms"]},
                                            "rounds": rounds}
        log(f"14 tasks, {name}, profiled (median of 3): total {p['total_ms']:.1f}: "
            + ", ".join(f"{k} {v:.1f}" for k, v in p["stages_ms"].items()) + " ms")
    return out


def profile_round(m, now, call) -> dict:
    """One call under a StageTimer: total ms and ms per stage; "unstaged" is the rest (host work between stages:
    tokenising the prompts, the results' Python objects)."""
    m.timer = StageTimer(clock=now)
    try:
        seconds, b = timed(m, call)
    finally:
        m.timer = None
    stages = {s: 1000 * sum(b[p] for p in parts) for s, parts in STAGES.items()}
    stages["decode_tokens"] = 1000 * sum(b["decode_token"])
    stages["unstaged"] = 1000 * seconds - sum(stages.values())
    return {"total_ms": 1000 * seconds, "stages_ms": stages}


def speedup(eager: list[float], path: list[float], target: tuple[str, float] | None = None) -> dict:
    """eager_i / path_i for each interleaved round i: the median is the value (checked against `target`), with the
    lowest, the highest and every round's. A ratio within a round compares times a change of the machine's speed
    (clocks, load) touched alike."""
    ratios = [a / b for a, b in zip(eager, path)]
    value = statistics.median(ratios)
    return {**(check(value, target) if target else {"value": round(value, 3)}), "min": round(min(ratios), 3),
            "max": round(max(ratios), 3), "per_round": [round(r, 3) for r in ratios]}


def verdicts(stages: dict, every: dict) -> dict:
    """Per tiercel path: decode, end-to-end and 14-task speed-ups over eager (medians of the per-round ratios; the
    two targets) and, as `of_medians` / speedup_of_stage_medians, eager's median over the path's median."""
    eager, out = stages["eager"], {}
    for name in (n for n in stages if n != "eager"):
        s = stages[name]
        of_medians = lambda k: round(eager["stages_ms"][k] / s["stages_ms"][k], 3)
        v = out[name] = {
            "decode_speedup": {**speedup(eager["decode_token_ms_per_run"], s["decode_token_ms_per_run"], TARGETS["decode_speedup"]),
                               "of_medians": of_medians("decode_token")},
            "end_to_end_speedup": {**speedup(eager["end_to_end_ms_per_run"], s["end_to_end_ms_per_run"]),
                                   "of_medians": of_medians("end_to_end")}}
        if name in every:  # not when the path failed in the 14-task rounds
            v["all_tasks_speedup"] = {**speedup(every["eager"]["total_ms_per_run"], every[name]["total_ms_per_run"],
                                                TARGETS["all_tasks_speedup"]),
                                      "of_medians": round(every["eager"]["total_ms"] / every[name]["total_ms"], 3)}
        v["speedup_of_stage_medians"] = {k: eager["stages_ms"][k] / s["stages_ms"][k]
                                         for k in ("vision", "first_token", "decode_token", "end_to_end") if s["stages_ms"][k] > 0}
    return out


def fail_from(m, n: int) -> None:
    """--fail: `m.run` and `m.run_all` raise from their n-th call on (counted together)."""
    calls = [0]

    def refusing(fn):
        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] >= n:
                raise RuntimeError(f"--fail: call {calls[0]} refused (a made-up failure)")
            return fn(*args, **kwargs)
        return call

    m.run, m.run_all = refusing(m.run), refusing(m.run_all)


def run_preset(preset: str, args, now, log) -> dict:
    """One preset's interleaved measurements: stage rounds, 14-task rounds, verdicts; failing paths recorded."""
    import torch

    work = args.work / preset
    skipped = {"tensorrt": tensorrt_skip(args.device)} if "tensorrt" in args.paths and tensorrt_skip(args.device) else {}
    names = [p for p in args.paths if p not in skipped]
    model, tok, bundle, export_s = build_and_export(preset, names, work, log, reuse=args.reuse)
    failed, failed_in = {}, {}  # {path: "Type: message"}, {path: where}
    note = lambda where: failed_in.update({n: where for n in failed if n not in failed_in})
    paths = open_paths(model, tok, bundle, names, args.device, failed)
    note("open")
    if args.fail and args.fail.split(":")[0] in paths:
        name, n = args.fail.split(":")
        fail_from(paths[name], int(n))
    image = profile_image(paths["eager"].pre.size)
    result = {"export_s": export_s, "skipped": skipped, "failed": failed, "failed_in": failed_in,
              "image_size": list(image.shape[:2]),
              "preprocess_on": {n: "device" if getattr(m, "device_preprocess", False) else "host" for n, m in paths.items()},
              "eager_dtype": str(paths["eager"]._dtype), "attn_implementation": paths["eager"].model.config._attn_implementation,
              "reference": REFERENCE.get(preset)}
    result["stages"] = stage_rounds(paths, image, args.task, args.runs, log, now=now, failed=failed)
    note("stage rounds")
    live = {n: m for n, m in paths.items() if n not in failed}
    result["all_tasks"] = all_tasks(live, image, args.all_runs, log, now, failed=failed)
    note("14-task rounds")
    for name in ("torch_graphs", "torch_graphs_split"):  # which parts ran as CUDA graphs (True) or why not (the error)
        if name in paths:
            result[f"{name}_status"] = paths[name].graph_status()
    result["targets"] = verdicts(result["stages"], result["all_tasks"])
    if args.device == "cuda":
        result["max_memory_allocated_torch_gb"] = torch.cuda.max_memory_allocated() / 1e9  # the process so far: every torch path
    return result


def fresh_eager(preset: str, args, interleaved: dict, log) -> dict:
    """The eager path alone in a new process (this script with --paths eager, same preset and rounds): its stages
    and 14-task times beside the interleaved eager's, which shared the process and the GPU with the other paths.
    A failure is recorded (`error`), not raised."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eager.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--paths", "eager", "--no-fresh-eager", "--preset", preset,
               "--device", args.device, "--runs", str(args.runs), "--all-runs", str(args.all_runs), "--task", args.task,
               "--out", str(out)]
        log(f"{preset}: eager again in a fresh process")
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = {"command": " ".join(["python", "benchmarks/gpu.py", *cmd[2:-2]]), "wall_s": time.perf_counter() - t}
        try:
            child = json.loads(out.read_text())["presets"][preset]
        except (OSError, ValueError, KeyError) as exc:
            got["error"] = f"exit {proc.returncode}, no results ({type(exc).__name__}): {proc.stderr.strip()[-1500:]}"
            log(f"{preset}: eager in a fresh process failed: {got['error'][-300:]}")
            return got
    eager, again = interleaved["stages"]["eager"], child["stages"]["eager"]
    got.update(stages=again, all_tasks={k: child["all_tasks"]["eager"][k] for k in ("total_ms", "total_ms_per_run")},
               fresh_over_interleaved={k: again["stages_ms"][k] / eager["stages_ms"][k] for k in ("vision", "decode_token", "end_to_end")})
    got["fresh_over_interleaved"]["all_tasks"] = got["all_tasks"]["total_ms"] / interleaved["all_tasks"]["eager"]["total_ms"]
    log(f"{preset}: eager decode {again['stages_ms']['decode_token']:.2f} ms/token in a fresh process, "
        f"{eager['stages_ms']['decode_token']:.2f} interleaved")
    return got


def print_summary(preset: str, r: dict, log) -> None:
    names = list(r["stages"])
    log(f"{preset}: {'ms (median)':<16}" + "".join(f"{n:>14}" for n in names))
    for stage in ("vision", "encoder", "first_token", "decode_token", "end_to_end"):
        log(f"{'':<{len(preset) + 2}}{stage:<16}" + "".join(f"{r['stages'][n]['stages_ms'][stage]:>14.2f}" for n in names))
    log(f"{'':<{len(preset) + 2}}{'14 tasks':<16}"
        + "".join(f"{r['all_tasks'][n]['total_ms']:>14.1f}" if n in r["all_tasks"] else f"{'-':>14}" for n in names))
    for name, v in r["targets"].items():
        log(f"  {name} (median of per-round ratios): " + "; ".join(
            f"{k} {c['value']}x (min {c['min']}, max {c['max']}"
            + (f"; {c['target']}: {'met' if c['met'] else 'MISSED'})" if "target" in c else ")")
            for k, c in v.items() if k.endswith("_speedup")))
    for name, error in r["failed"].items():
        log(f"  {name} FAILED in {r['failed_in'][name]}: {error}")


def write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def machine_state(device: str) -> tuple[dict, dict]:
    """(the GPU's clocks, power and temperature; a device-to-device copy's bandwidth) now."""
    return gpu_clocks(), copy_bandwidth(device)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see runtime_cpu.py (eager on a busy CPU)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if args.export_only:
        for preset in args.preset:
            names = [p for p in args.paths if not (p == "tensorrt" and tensorrt_skip(args.device))]
            build_and_export(preset, names, args.work / preset, log, reuse=args.reuse)
        return
    import torch

    started = time.perf_counter()
    info = gpu_info(args.device)
    out = args.out or HERE / "results" / f"gpu_{slug(info['name'])}.json"
    clocks, bandwidth = machine_state(args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # the copy's 2 GiB are not the paths' memory
    log(f"copy bandwidth {bandwidth['gbs']:.0f} GB/s; clocks {clocks}")
    result = {"command": "python benchmarks/gpu.py " + " ".join(sys.argv[1:]), "git": git_state(), "gpu": info,
              "device": args.device, "gpu_clocks": {"start": clocks}, "copy_bandwidth": {"start": bandwidth},
              "task": args.task, "batch": 1, "new_tokens": NEW_TOKENS, "num_beams": 1, "runs": args.runs,
              "all_runs": args.all_runs, "bundle_precision": "fp16", "targets": {k: f"{o} {v}" for k, (o, v) in TARGETS.items()},
              "presets": {}}
    now = device_clock(args.device)
    for preset in args.preset:
        result["presets"][preset] = r = run_preset(preset, args, now, log)
        result["wall_s"] = time.perf_counter() - started
        write(out, result)  # after every step: a cut-off run keeps what it did
        gc.collect()  # the paths' models and sessions: the fresh process below gets the GPU to itself
        if args.device == "cuda":
            torch.cuda.empty_cache()
        if args.fresh_eager:
            r["eager_fresh_process"] = fresh_eager(preset, args, r, log)
        print_summary(preset, r, log)
        result["wall_s"] = time.perf_counter() - started
        result["load_average_at_end"] = list(os.getloadavg())
        write(out, result)
    result["gpu_clocks"]["end"], result["copy_bandwidth"]["end"] = machine_state(args.device)
    result["wall_s"] = time.perf_counter() - started
    write(out, result)
    log(f"wrote {out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
