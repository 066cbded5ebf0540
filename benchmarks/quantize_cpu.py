"""fp32 vs int8 vs int4 bundles on this CPU: size and speed (a), and accuracy of a trained student (b).

Usage:
    python benchmarks/quantize_cpu.py [--preset florence2-base] [--runs 5] [--n-calib 4] [--variants ov-fp32,ov-int8]
                                      [--student CKPT --data SYNTH_DIR [--student-variants int4,mixed]]
                                      [--out benchmarks/results/quantize_cpu.json]

(a) The preset's shape with random weights (accuracy means nothing there): the fp32 bundle is exported
    (onnxruntime + OpenVINO IR), then quantised seven ways (all by default; --variants picks) -
    onnxruntime int8-static, int8-dynamic, int4-weight-only (MatMulNBits, block 32, symmetric) and
    int8-weight-only (MatMulNBits 8-bit, block 128), OpenVINO/NNCF int8-static (nncf.quantize), int8-dynamic
    (nncf.compress_weights INT8: weights only) and int4 (group 32) - and each is timed:
    vision encoder ms per image, and decoder_with_past ms per token (16 greedy-like steps with the KV cache
    growing from 32, prompt of image tokens + 20). All bundles are opened together and timed in alternation:
    medians of `--runs` rounds, each running every bundle once, after one warm-up (timed one after another, a
    machine that drifted during the run moved one bundle's numbers and not another's).
(b) With --student: the checkpoint is exported and quantised with onnxruntime every way in STUDENT_VARIANTS
    (int8-static, int8-dynamic, int4 blocks 32 and 128, int4 asymmetric, mixed, and int4 block 32 with
    --min-agreement 0.9; int4 rounded by GPTQ on the calibration samples' activations; `--student-variants`
    picks a subset), each with the accuracy guard at its defaults on
    the val split of --data (--n-val samples balanced over tasks, max drop 1% for int8 and 3% for int4 and mixed,
    the issue's targets; calibration on --n-calib-student
    train samples), and every bundle is scored on the whole test split (14-task average) and timed the same way.
    The guard's verdict (val) and the test score are recorded side by side, so whether the guard's val check
    predicts the test drop can be read off.
Load average and CPU model are recorded: the machine is shared, so read the numbers with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from runtime_cpu import machine

from tiercel.fileio import write_json

VARIANTS = {  # name -> (runtime backend, quantize backend, scheme) ; None: the fp32 bundle itself
    "ort-fp32": ("onnxruntime", None, None),
    "ort-int8": ("onnxruntime", "onnxruntime", "int8-static"),
    "ort-int4": ("onnxruntime", "onnxruntime", "int4-weight-only"),
    "ort-int8-dynamic": ("onnxruntime", "onnxruntime", "int8-dynamic"),
    "ort-int8-weight-only": ("onnxruntime", "onnxruntime", "int8-weight-only"),
    "ov-fp32": ("openvino", None, None),
    "ov-int8": ("openvino", "openvino", "int8-static"),
    "ov-int8-dynamic": ("openvino", "openvino", "int8-dynamic"),
    "ov-int4": ("openvino", "openvino", "int4-weight-only"),
}


def _median(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bundle_timers(bundle: Path, backend: str, steps: int = 16, past: int = 32, prompt: int = 20) -> dict:
    """{"vision": one 768 px image through the vision encoder, "decode": `steps` decoder_with_past steps from a
    past of `past` (KV growing)} as callables over the bundle's opened graphs."""
    from tiercel.runtime import read_bundle
    from tiercel.runtime.backends import get_backend

    b = read_bundle(bundle)
    spec, entries = get_backend(backend), b.entries(backend)
    shape, size = b.manifest.model.model_dump(), b.manifest.preprocessing.size
    rng = np.random.default_rng(0)
    vision = spec.open(b.root / entries["vision_encoder"].file, spec.devices[0], None)
    pixels = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    dec = spec.open(b.root / entries["decoder_with_past_model"].file, spec.devices[0], None)
    return {"vision": lambda: vision.run({"pixel_values": pixels}), "steps": steps,
            "decode": decode_steps(dec, decoder_feeds(shape, rng, past, prompt), steps)}


def decoder_feeds(shape: dict, rng, past: int, prompt: int) -> dict:
    """decoder_with_past feeds (random values: speed only): a self-attention cache of `past` positions, the
    encoder's K/V over the image tokens + `prompt`, one token's embedding and the encoder mask."""
    d, heads, layers = shape["d_model"], shape["attention_heads"], shape["decoder_layers"]
    enc = shape["image_tokens"] + prompt
    feeds = {f"past_key_values.{i}.{w}.{k}": rng.standard_normal((1, heads, past if w == "decoder" else enc, d // heads), dtype=np.float32)
             for i in range(layers) for w in ("decoder", "encoder") for k in ("key", "value")}
    return {**feeds, "inputs_embeds": rng.standard_normal((1, 1, d), dtype=np.float32),
            "encoder_attention_mask": np.ones((1, enc), np.int64)}


def decode_steps(session, base: dict, steps: int):
    """A callable running `steps` decoder_with_past steps from `base`, each step's present.* fed back as past."""
    def decode():
        feeds = dict(base)
        for _ in range(steps):
            out = session.run(feeds)
            feeds.update({f"past_key_values.{k[len('present.'):]}": v for k, v in out.items() if k.startswith("present.")})

    return decode


def time_bundle(bundle: Path, backend: str, runs: int) -> dict:
    """vision ms and decode ms/token of one bundle: medians of `runs` after a warm-up."""
    return time_interleaved({"one": bundle_timers(bundle, backend)}, runs)["one"]


def time_interleaved(timers: dict, runs: int) -> dict:
    """{name: bundle_timers(...)} -> {name: {"vision_ms", "decode_ms_per_token"}}: one warm-up each, then `runs`
    rounds in which every bundle runs once in turn, so that a machine that speeds up or slows down during the
    benchmark moves every bundle alike instead of the ones timed at that moment (the ratios are what is read).
    Round i starts i bundles later: whichever bundle ran first in a round ran 4-19% slower in
    decode_profile_cpu.md's runs, so no bundle keeps that place."""
    for t in timers.values():
        t["vision"](), t["decode"]()
    rows = {name: {"vision": [], "decode": []} for name in timers}
    names = list(timers)
    for i in range(runs):
        for name in names[i % len(names):] + names[: i % len(names)]:
            t = timers[name]
            for kind in ("vision", "decode"):
                start = time.perf_counter()
                t[kind]()
                rows[name][kind].append(time.perf_counter() - start)
    return {name: {"vision_ms": 1000 * statistics.median(r["vision"]),
                   "decode_ms_per_token": 1000 * statistics.median(r["decode"]) / timers[name]["steps"]}
            for name, r in rows.items()}


def sizes(bundle: Path, backend: str) -> dict:
    from tiercel.runtime import read_bundle

    b = read_bundle(bundle)
    entries = b.entries(backend)
    size = lambda e: sum((b.root / f).stat().st_size for f in [e.file, *e.extra_files])  # noqa: E731
    per = {n: size(e) for n, e in entries.items()}
    return {"bundle_bytes": sum(per.values()), "decoder_bytes": per["decoder_model"] + per["decoder_with_past_model"],
            "vision_bytes": per["vision_encoder"], "graphs": per}


def run_variants(fp32: Path, work: Path, calib, runs: int, n_calib: int, n_val: int, log, variants=None) -> dict:
    from tiercel.quantize import quantize_bundle

    results, timers = {}, {}
    for name, (runtime, qbackend, scheme) in VARIANTS.items():
        if variants is not None and name not in variants:
            continue
        bundle = fp32
        row = {"backend": runtime, "scheme": scheme or "fp32"}
        if scheme:
            t = time.perf_counter()
            section = quantize_bundle(fp32, work / name, scheme, calib=calib if scheme == "int8-static" else None,
                                      n=n_calib, n_val=n_val, backend=qbackend, max_new_tokens=8,
                                      overwrite=True)
            row.update(quantize_s=time.perf_counter() - t, guard=section.guard.model_dump(), choices=choices(work / name))
            bundle = work / name
        row.update(sizes(bundle, runtime))
        results[name], timers[name] = row, bundle_timers(bundle, runtime)
    for name, timing in time_interleaved(timers, runs).items():  # every bundle open, timed in alternation
        results[name].update(timing)
        log(f"{name}: {json.dumps({k: v for k, v in results[name].items() if k not in ('graphs', 'guard')})}")
    for name, row in results.items():  # ratios against the same backend's fp32
        ref = results[f"{name.split('-')[0]}-fp32"]
        row["ratios"] = {"bundle_size": row["bundle_bytes"] / ref["bundle_bytes"],
                         "decoder_size": row["decoder_bytes"] / ref["decoder_bytes"],
                         "vision_speedup": ref["vision_ms"] / row["vision_ms"],
                         "decode_speedup": ref["decode_ms_per_token"] / row["decode_ms_per_token"]}
    return results


def choices(bundle: Path) -> dict:
    """Per graph, what a candidate check chose and every candidate's held-out error (OpenVINO int8-static's
    calibration, int4's data-aware variants), from the manifest."""
    out = {}
    for g in json.loads((bundle / "manifest.json").read_text())["graphs"]:
        q = g.get("quantization", {})
        for chosen, errors in (("calibration", "calibration_check"), ("chosen", "data_aware")):
            if errors in q:
                out[g["name"]] = {"chosen": q[chosen], "errors": q[errors]}
    return out


def shape_benchmark(preset: str, runs: int, n_calib: int, work: Path, log, variants=None) -> dict:
    from tiercel.data.synth.writer import generate
    from tiercel.export.bundle import export_model
    from tiercel.models import build
    from tiercel.runtime.tokenizer import train_bpe

    corpus = ["Describe the image.", "Detect all airplane in the image.", "A harbor with ships."] * 50
    tok = train_bpe(corpus, vocab_size=300)  # ids only need to fit; weights are random
    from tiercel.models.presets import get_preset

    vocab = max(get_preset(preset).vocab_size, len(tok))  # the preset's own vocabulary: lm_head at full size
    model = build(preset, seed=0, image_token_id=tok.image_id, vocab_size=vocab)
    t = time.perf_counter()
    fp32 = export_model(model, tok, work / "fp32", backends=("onnxruntime", "openvino"), parity=False, overwrite=True)
    log(f"exported {preset} in {time.perf_counter() - t:.0f} s")
    del model
    calib = generate(work / "synth", n=42, size=64, workers=1) and work / "synth"
    return {"preset": preset, "export_s": time.perf_counter() - t, "n_calib": n_calib,
            "variants": run_variants(fp32, work, calib, runs, n_calib, 0, log, variants)}


STUDENT_VARIANTS = {  # name -> (scheme, quantize_bundle keyword arguments); max_drop: the targets
    "int8": ("int8-static", {"max_drop": 0.01}),
    "int8-dynamic": ("int8-dynamic", {"max_drop": 0.01}),
    "int4": ("int4-weight-only", {"max_drop": 0.03}),
    "int4-b128": ("int4-weight-only", {"block_size": 128, "max_drop": 0.03}),
    "int4-asym": ("int4-weight-only", {"symmetric": False, "max_drop": 0.03}),
    "mixed": ("mixed", {"max_drop": 0.03}),  # its decoder is int4
    "int4-agree90": ("int4-weight-only", {"max_drop": 0.03, "min_agreement": 0.9}),  # int4 with the agreement floor
}


def rounding(bundle: Path) -> dict:
    """Per int4 graph: MatMuls GPTQ rounded, and the summed relative output error on held-out feeds of
    round-to-nearest and of GPTQ fitted on the other half (the manifest's rows, gptq.choose)."""
    out = {}
    for g in json.loads((bundle / "manifest.json").read_text())["graphs"]:
        rows = [r for r in g.get("quantization", {}).get("rounding", []) if "error_rtn" in r]
        if rows:
            out[g["name"]] = {"layers": len(rows), "gptq": sum(r["method"] == "gptq" for r in rows),
                              "error_rtn": round(sum(r["error_rtn"] for r in rows), 4),
                              "error_gptq": round(sum(r["error_gptq"] for r in rows), 4)}
    return out


def student_benchmark(student: Path, data: Path, runs: int, n_calib: int, n_val: int, work: Path, log,
                      variants=None) -> dict:
    import tiercel.runtime
    from tiercel.errors import TiercelError
    from tiercel.export.bundle import export_checkpoint
    from tiercel.quantize import guard, load_samples, quantize_bundle

    fp32 = export_checkpoint(student, work / "student-fp32", backends=("onnxruntime",), overwrite=True)
    test = load_samples(data, n=10_000, split="test")
    out = {"n_calib": n_calib, "n_val": n_val}
    ref = None
    chosen = {k: v for k, v in STUDENT_VARIANTS.items() if variants is None or k in variants}
    for name, (scheme, kwargs) in {"fp32": (None, {}), **chosen}.items():
        bundle, row = fp32, {"scheme": scheme or "fp32", **kwargs}
        if scheme:
            bundle = work / f"student-{name}"
            start = time.perf_counter()
            try:
                section = quantize_bundle(fp32, bundle, scheme, calib=data, n=n_calib, n_val=n_val, overwrite=True,
                                          log=log, **kwargs)
            except TiercelError as err:  # the guard gave up: record why, score nothing
                out[name] = {**row, "error": str(err)}
                log(f"student {name}: {err}")
                continue
            g = section.guard.model_dump()
            row.update(quantize_s=time.perf_counter() - start, guard={
                k: g.get(k) for k in ("passed", "samples", "drop", "drop_bound", "confidence", "token_agreement", "fp32_average",
                                    "quantized_average", "caution")},
                guard_attempts=len(g.get("attempts", [])), layers_kept=g["attempts"][-1]["kept"],
                rounding=rounding(bundle))
        model = tiercel.runtime.load(bundle)
        ids = guard.run_samples(model, test, max_new_tokens=256)
        scores = guard.headlines(model.tokenizer, test, ids, model.dialect)
        average = sum(v for v in scores.values() if v == v) / max(1, sum(v == v for v in scores.values()))
        ref = ref or {"ids": ids, "average": average}
        row.update(test_samples=len(test), per_task=scores, average=average,
                   test_drop=(ref["average"] - average) / ref["average"] if ref["average"] else 0.0,
                   test_token_agreement=sum(map(guard.agreement, ref["ids"], ids)) / len(ids),
                   **sizes(bundle, "onnxruntime"), **time_bundle(bundle, "onnxruntime", runs))
        out[name] = row
        log(f"student {name}: test average {average:.4f} (drop {row['test_drop']:.2%})"
            + (f", guard on val: drop {row['guard']['drop']:.2%}, passed {row['guard']['passed']}" if scheme else ""))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="florence2-base")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n-calib", type=int, default=4)
    ap.add_argument("--n-calib-student", type=int, default=128, help="calibration samples for (b)")
    ap.add_argument("--n-val", type=int, default=224, help="guard val samples for (b), balanced over tasks")
    ap.add_argument("--skip-shape", action="store_true", help="only (b)")
    ap.add_argument("--variants", help=f"comma-separated subset of (a)'s bundles: {', '.join(VARIANTS)} (each quantised "
                    "bundle needs its backend's fp32 beside it, for the ratios)")
    ap.add_argument("--student", type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--student-variants", help=f"comma-separated subset of (b)'s variants: {', '.join(STUDENT_VARIANTS)}")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/quantize_cpu.json"))
    args = ap.parse_args()
    log = lambda m: print(m, flush=True)  # noqa: E731
    from image_use import commit

    result = {"command": "python benchmarks/quantize_cpu.py " + " ".join(os.sys.argv[1:]), "commit": commit(),
              "machine": machine()}
    shape_variants = args.variants.split(",") if args.variants else None
    if shape_variants:
        unknown = sorted(set(shape_variants) - set(VARIANTS))
        missing = sorted({f"{v.split('-')[0]}-fp32" for v in shape_variants} - set(shape_variants))
        if unknown or missing:
            raise SystemExit(f"--variants: unknown {unknown}, fp32 missing {missing}; choose from {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory(prefix="tiercel-qbench-") as tmp:
        result["shape"] = None if args.skip_shape else shape_benchmark(args.preset, args.runs, args.n_calib, Path(tmp), log,
                                                                       shape_variants)
        if args.student and args.data:
            variants = args.student_variants.split(",") if args.student_variants else None
            unknown = sorted(set(variants or ()) - set(STUDENT_VARIANTS))
            if unknown:
                raise SystemExit(f"--student-variants: unknown {unknown}; choose from {', '.join(STUDENT_VARIANTS)}")
            result["student"] = student_benchmark(args.student, args.data, args.runs, args.n_calib_student, args.n_val,
                                                  Path(tmp), log, variants)
        else:
            result["student"] = None
            log("(b) skipped: pass --student CKPT --data DIR (a trained student and its synth folder) to measure accuracy")
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, result)  # atomic: a crash leaves the previous results file whole
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
