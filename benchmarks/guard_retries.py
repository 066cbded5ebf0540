"""The accuracy guard's retries on the fidelity run's fp32 bundle: which layers each attempt keeps back, and what
that does to the val score.

Quantizes `benchmarks/work/fidelity/bundles/fp32` (the `bundles.source` student that benchmarks/fidelity.py exported
last) with the settings of benchmarks/recipes/fidelity.yaml (calibration on the train split, the guard on 896 val
records, each scheme's max_drop), once per backend and scheme given, into benchmarks/work/guard_retries/. Records
every attempt (layers kept back per graph, point drop, 90% bound, token agreement) beside the same bundle's attempts
in the fidelity run's quantize stage (benchmarks/work/fidelity/stages/). The first attempt keeps nothing back, so
it must match the stage's exactly (`first_attempt_matches`, for runs with the stage's settings): that checks that
the two quantize alike.

The first use (guard_retries.md): the stages were made by the guard before it kept a layer back in every graph
holding its weight (tiercel.quantize.sensitivity.units), so the later attempts show what that fix changed.
`--accuracy-levels` runs onnxruntime's MatMulNBits at other accuracy levels (int4: is the loss in the weights'
rounding or in the int8 activations of level 4?). `--variants` runs each scheme with quantize settings changed
(`all_layers=true`, `symmetric=false,block_size=64`; `default` for the YAML's), one after the other.

    OMP_NUM_THREADS=1 python benchmarks/guard_retries.py --schemes onnxruntime:int8-static openvino:int4-weight-only
    OMP_NUM_THREADS=1 python benchmarks/guard_retries.py --schemes onnxruntime:int4-weight-only --max-retries 0 \
        --accuracy-levels 4 0 --out benchmarks/results/guard_retries_int4_level.json
    OMP_NUM_THREADS=1 python benchmarks/guard_retries.py --schemes onnxruntime:int4-weight-only --max-retries 0 \
        --variants default all_layers=true symmetric=false --out benchmarks/results/guard_retries_int4_variants.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fidelity_config import data_paths, load_config, quantize_settings  # noqa: E402
from image_use import commit  # noqa: E402
from runtime_cpu import machine  # noqa: E402

from tiercel.fileio import atomic_write_text  # noqa: E402

RESULTS = HERE / "results"


def variant(text: str) -> tuple[str, dict]:
    """'default' -> ('default', {}); 'all_layers=true,block_size=64' -> (the text, {"all_layers": True,
    "block_size": 64}) (JSON values). An argparse type, so a malformed one is a usage error."""
    if text == "default":
        return text, {}
    pairs = [item.partition("=") for item in text.split(",")]
    if not all(sep and key for key, sep, _ in pairs):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,KEY=VALUE] or default (got {text!r})")
    try:
        return text, {key: json.loads(value) for key, _, value in pairs}
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"values are JSON: true, 64, \"text\" (got {text!r})") from None


def one(fp32: Path, out: Path, backend: str, scheme: str, cfg, data: dict, threads: int | None,
        max_retries: int | None = None, changes: dict | None = None) -> dict:
    from tiercel.quantize.bundle import quantize_bundle
    from tiercel.quantize.guard import GuardError

    settings = quantize_settings(cfg.bundles, backend, scheme)
    if max_retries is not None:
        changes = {**(changes or {}), "max_retries": max_retries}
    if changes:
        from tiercel.quantize.settings import settings as checked

        settings = checked(settings, **changes)
    start = time.perf_counter()
    try:
        section = quantize_bundle(fp32, out, calib=data["train"], root=data["root"], val=data["val"], settings=settings,
                                  overwrite=True, log=print, threads=threads)
        attempts, passed = section.guard.attempts, True
        excluded = section.excluded
    except GuardError as err:
        attempts, passed, excluded = err.attempts, False, None
    keep = ("excluded", "kept", "drop", "drop_bound", "token_agreement")
    return {"passed": passed, "seconds": round(time.perf_counter() - start, 1),
            "attempts": [{k: a.get(k) for k in keep} for a in attempts], "excluded": excluded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", nargs="+", default=["onnxruntime:int8-static", "openvino:int4-weight-only"],
                    help="backend:scheme pairs")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "fidelity", help="the fidelity run's work folder")
    ap.add_argument("--out", type=Path, default=RESULTS / "guard_retries.json")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 0)) or None)
    ap.add_argument("--max-retries", type=int, help="the guard's retries (default: the YAML's; 0: the first attempt only)")
    ap.add_argument("--accuracy-levels", type=int, nargs="+",
                    help="onnxruntime MatMulNBits accuracy levels to run each scheme at, one after the other (tiercel "
                         "uses 4: int8 compute; 0: fp32 compute), to tell weight rounding from activation rounding")
    ap.add_argument("--variants", nargs="+", type=variant, default=[variant("default")],
                    help="quantize settings changed per run: KEY=VALUE[,KEY=VALUE] (JSON values) or default")
    args = ap.parse_args()
    cfg = load_config(HERE / "recipes" / "fidelity.yaml", False)
    data = data_paths(args.work / "data")
    fp32 = args.work / "bundles" / "fp32"
    if not (fp32 / "manifest.json").is_file():
        sys.exit(f"{fp32}: no fp32 bundle; run benchmarks/fidelity.py (or restore its carry) first")
    stages = args.work / "stages"
    sha = commit()
    results = {"command": "python benchmarks/guard_retries.py " + " ".join(sys.argv[1:]), "commit": sha.removesuffix("-dirty"),
               "dirty": sha.endswith("-dirty"), "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "runs": {}}
    import tiercel.quantize.onnx_backend as onnx_backend

    runs = [(pair, level, text, changes) for pair in args.schemes for level in (args.accuracy_levels or [None])
            for text, changes in args.variants]
    for pair, level, text, changes in runs:
        backend, scheme = pair.split(":")
        if level is not None:  # a benchmark knob, not a tiercel setting: the module constant the quantizer reads
            onnx_backend.ACCURACY_LEVEL = level
            pair = f"{pair}@accuracy_level{level}"
        if text != "default":
            pair = f"{pair}@{text}"
        row = one(fp32, HERE / "work" / "guard_retries" / f"{backend}-{scheme}", backend, scheme, cfg, data, args.threads,
                  args.max_retries, changes)
        stage = stages / f"quantize__{backend}__{scheme}.json"
        if stage.is_file() and text == "default" and level in (None, 4):  # the stage's own settings
            guard = json.loads(stage.read_text())["result"]["guard"]
            row["fidelity_run"] = {"passed": guard["passed"], "attempts": guard["attempts"]}
            first, then = row["attempts"][0], guard["attempts"][0]
            row["first_attempt_matches"] = all(first[k] == then[k] for k in ("drop", "drop_bound", "token_agreement"))
        results["runs"][pair] = row
        atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
        print(json.dumps({pair: {k: row[k] for k in ("passed", "seconds")}}), flush=True)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
