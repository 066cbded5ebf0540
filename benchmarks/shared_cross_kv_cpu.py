"""Beam search's cross-attention K/V once per item instead of once per beam: decoder step time before and after.

    OMP_NUM_THREADS=1 python benchmarks/shared_cross_kv_cpu.py [--rounds 5] [--steps 8] [--rows 3,42] [--beams 3]
    -> benchmarks/results/shared_cross_kv_cpu.json

The florence2-base shape with random weights is exported twice, split decoder, onnxruntime only, into
benchmarks/work/shared_cross_kv/ (reused when there; --rebuild makes them again): `per_item/` by this tiercel
(cross-attention K/V, encoder states and mask per item, shared by the item's beams) and `per_row/` by the tiercel
of `--baseline-commit` (the commit before the change: one copy per beam), whose source `git archive` unpacks
beside the bundles and which exports in a subprocess. Each fp32 bundle is quantised int8-dynamic with onnxruntime
(tiercel.quantize.quantize_bundle, as decode_profile_cpu.py does).

Timed on one thread, each graph through the runtime's own onnxruntime session, every variant in every round with
the order rotating one place each round (decode_profile_cpu.run_timed: the variant timed first in a fixed order
ran 4-19% slower), medians over rounds:
- decoder_with_past_model: `--steps` steps from a self-attention past of `--past` positions (present fed back),
  577 image + `--prompt` encoder tokens, at each `--rows` (rows = items x `--beams`): per_row graphs get the
  encoder K/V and mask repeated per beam (as the runtime feeds them), per_item graphs once per item;
- decoder_model (the first step): the encoder output [rows or items, S, D] and one token per row.

Bytes per decode step: weights (decode_profile_cpu.weight_bytes, by stored dtype) + the KV cache (cross-attention
per row or per item, self-attention past read and present written per row; decode_profile_cpu.step_bytes); the
bound is bytes / the one-thread copy bandwidth measured in every round (decode_profile_cpu.bandwidth, median).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from decode_profile_cpu import bandwidth, commit, product_session, step_bytes, weight_bytes  # noqa: E402
from quantize_cpu import decoder_feeds  # noqa: E402
from runtime_cpu import machine  # noqa: E402

WORK = HERE / "work" / "shared_cross_kv"
BASELINE = "c96829c"  # the last commit with per-row cross-attention K/V
LAYOUTS = ("per_row", "per_item")
SCHEMES = ("fp32", "int8-dynamic")
BUILD = """
import sys, time
from pathlib import Path
from tiercel.export.bundle import export_model
from tiercel.models import build
from tiercel.models.presets import get_preset
from tiercel.runtime.tokenizer import train_bpe
out = Path(sys.argv[1])
tok = train_bpe(["Describe the image.", "Detect all airplane in the image.", "A harbor with ships."] * 50, vocab_size=300)
model = build("florence2-base", seed=0, image_token_id=tok.image_id,
              vocab_size=max(get_preset("florence2-base").vocab_size, len(tok)))
t = time.perf_counter()
export_model(model, tok, out / "fp32", backends=("onnxruntime",), parity=False, overwrite=True)
print(f"{out.name}: exported in {time.perf_counter() - t:.0f} s", flush=True)
from tiercel.quantize import quantize_bundle
quantize_bundle(out / "fp32", out / "int8-dynamic", "int8-dynamic", calib=None, n=4, n_val=0, backend="onnxruntime",
                max_new_tokens=8, overwrite=True)
print(f"{out.name}: quantised", flush=True)
"""


def build(work: Path, baseline: str, rebuild: bool) -> None:
    """work/{per_row,per_item}/{fp32,int8-dynamic}: per_row by `baseline`'s source, per_item by this tree's."""
    repo = HERE.parent
    for layout in LAYOUTS:
        out = work / layout
        if not rebuild and all((out / s / "manifest.json").is_file() for s in SCHEMES):
            continue
        out.mkdir(parents=True, exist_ok=True)
        src = repo
        if layout == "per_row":
            src = work / f"src-{baseline}"
            if not (src / "tiercel").is_dir():
                src.mkdir(parents=True, exist_ok=True)
                archive = subprocess.run(["git", "archive", baseline], cwd=repo, capture_output=True, check=True).stdout
                subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": str(src)}
        subprocess.run([sys.executable, "-c", BUILD, str(out)], cwd=src, env=env, check=True)


def graph(bundle: Path, name: str) -> Path:
    from tiercel.runtime import read_bundle

    b = read_bundle(bundle)
    return b.root / b.entries("onnxruntime")[name].file


def first_feeds(shape: dict, rng, prompt: int, rows: int, items: int) -> dict:
    """decoder_model feeds: one token per row, the encoder output and mask per `items` rows."""
    d, enc = shape["d_model"], shape["image_tokens"] + prompt
    return {"inputs_embeds": rng.standard_normal((rows, 1, d), dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((items, enc, d), dtype=np.float32),
            "encoder_attention_mask": np.ones((items, enc), np.int64)}


def past_feeds(base: dict, rows: int, items: int) -> dict:
    """decoder_with_past feeds from one row's `base`: self-attention per row, cross-attention per `items`."""
    return {k: np.repeat(v, items if (".encoder." in k or k == "encoder_attention_mask") else rows, axis=0)
            for k, v in base.items()}


def decode(run, feeds: dict, steps: int) -> None:
    feeds = dict(feeds)
    for _ in range(steps):
        out = run(feeds)
        feeds.update({f"past_key_values.{k[len('present.'):]}": v for k, v in out.items() if k.startswith("present.")})


def timed(jobs: dict, rounds: int, per: dict) -> tuple[dict, list]:
    """{job: ms per call in each round}: every job once per round after a warm-up, the order rotated each round;
    and the copy bandwidth measured once per round. `per`: calls (steps) each job's run makes."""
    for job in jobs.values():
        job()
    times, gbs, names = defaultdict(list), [], list(jobs)
    for r in range(rounds):
        gbs.append(bandwidth(repeats=3))
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            jobs[name]()
            times[name].append((time.perf_counter() - t) * 1e3 / per[name])
        print(f"round {r + 1}/{rounds}", flush=True)
    return times, gbs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--past", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=20)
    ap.add_argument("--rows", default="3,42", help="decoder rows (items x beams), comma-separated")
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--baseline-commit", default=BASELINE)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "shared_cross_kv_cpu.json")
    args = ap.parse_args()
    result = {"command": "python benchmarks/shared_cross_kv_cpu.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": machine(), "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "intra_op": 1}}
    build(args.work, args.baseline_commit, args.rebuild)
    if args.build_only:
        return
    from tiercel.fileio import write_json
    from tiercel.runtime import read_bundle

    shape = read_bundle(args.work / "per_item" / "fp32").manifest.model.model_dump()
    rng = np.random.default_rng(0)
    one = decoder_feeds(shape, rng, args.past, args.prompt)
    jobs, per, meta = {}, {}, {}
    for layout in LAYOUTS:
        for scheme in SCHEMES:
            bundle = args.work / layout / scheme
            step, _ = product_session(graph(bundle, "decoder_with_past_model"), "onnxruntime")
            first, _ = product_session(graph(bundle, "decoder_model"), "onnxruntime")
            for rows in map(int, args.rows.split(",")):
                items = rows // args.beams if layout == "per_item" else rows
                f_step, f_first = past_feeds(one, rows, items), first_feeds(shape, rng, args.prompt, rows, items)
                key = f"{layout}/{scheme}@{rows}"
                jobs[f"step:{key}"] = lambda s=step, f=f_step: decode(s, f, args.steps)
                jobs[f"first:{key}"] = lambda s=first, f=f_first: s(f)
                per[f"step:{key}"], per[f"first:{key}"] = args.steps, 1
                meta[key] = (bundle, rows, items)
    times, bw = timed(jobs, args.rounds, per)
    gbs = statistics.median(b["copy_gbs"] for b in bw)
    rows_out = {}
    for key, (bundle, rows, items) in meta.items():
        weights = weight_bytes(graph(bundle, "decoder_with_past_model"))
        need = step_bytes(weights, shape, args.past, args.prompt, rows)
        need["kv_cross"] = step_bytes(weights, shape, args.past, args.prompt, items)["kv_cross"]
        need["total"] = sum(v for k, v in need.items() if k != "total")
        bound = need["total"] / (gbs * 1e9) * 1e3
        step_ms = statistics.median(times[f"step:{key}"])
        rows_out[key] = {"layout": key.split("/")[0], "scheme": key.split("/")[1].split("@")[0], "rows": rows,
                         "cross_kv_rows": items, "step_ms": step_ms, "step_ms_rounds": times[f"step:{key}"],
                         "first_step_ms": statistics.median(times[f"first:{key}"]),
                         "first_step_ms_rounds": times[f"first:{key}"], "bytes": need, "bound_ms": bound,
                         "ratio": step_ms / bound}
        print(f"{key}: step {step_ms:.2f} ms (bound {bound:.2f}), first step {rows_out[key]['first_step_ms']:.1f} ms",
              flush=True)
    for key, row in rows_out.items():  # paired by round: both ran within the same round, under the same load
        if row["layout"] == "per_item":
            old = rows_out[key.replace("per_item", "per_row")]
            row["vs_per_row"] = {
                "step": statistics.median(a / b for a, b in zip(row["step_ms_rounds"], old["step_ms_rounds"])),
                "first_step": statistics.median(a / b for a, b in zip(row["first_step_ms_rounds"],
                                                                      old["first_step_ms_rounds"]))}
    result.update(settings=vars(args) | {"work": str(args.work), "out": str(args.out)},
                  bandwidth={"rounds": bw, "copy_gbs_used": gbs}, rows=rows_out)
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, result)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
