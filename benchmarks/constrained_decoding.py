"""Constrained vs unconstrained decoding, per task: parse-warning rate, headline score, decode steps and time per answer.

Each bundle is evaluated on a Falcon_SFT file (tiercel.evaluate, one record per call so every answer is timed on
its own) in interleaved rounds, unconstrained then constrained, and the medians over rounds are written.

    python benchmarks/constrained_decoding.py BUNDLE [BUNDLE ...] --data DATA/test.json [--limit 10] [--rounds 3]
        [--num-beams 3] [--max-new-tokens 256] [--backend onnxruntime] [--out benchmarks/results/constrained_decoding.json]

Three modes per bundle: "unconstrained", "stepwise" (constrained, one decoder step per token: jump_forward off) and
"constrained" (the default: greedy appends a token the grammar forces without a step of its own, jump-forward;
beam search runs as stepwise). "steps" are the tokens generated per answer (bos and eos included), "decoder_steps"
the decoder calls that made them (steps minus the jump-forward tokens). "fixed" is the share of constrained
row-steps where the grammar allowed exactly one token (not counting an eos that would cut a structure back).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

import tiercel.runtime as rt  # noqa: E402
from tiercel import tasks as T  # noqa: E402
from tiercel.evaluate import evaluate  # noqa: E402
from tiercel.runtime import constrain  # noqa: E402

# the generation overrides of each mode (benchmarks/fidelity.py runs the same three on its bundles)
MODES = {"unconstrained": {"constrained": False}, "stepwise": {"jump_forward": False}, "constrained": {}}


@contextlib.contextmanager
def recorded(model):
    """Within the block, every generate_ids call of `model` appends (task, tokens per answer, seconds) to
    `calls`, and every Constraint made is kept in `grammars` (for its single-token step count)."""
    calls, grammars, inner, made = [], [], model.generate_ids, constrain.Constraint.__init__

    def generate_ids(features, prompts, rows=None, tasks_=None, **kw):
        start, made_before = time.perf_counter(), len(grammars)
        ids = inner(features, prompts, rows, tasks_, **kw)
        jumped = sum(g.jumped for g in grammars[made_before:])
        calls.append((tasks_[0], [len(i) for i in ids], jumped, time.perf_counter() - start))
        return ids

    def init(c, *args, **kwargs):
        made(c, *args, **kwargs)
        grammars.append(c)

    model.generate_ids, constrain.Constraint.__init__ = generate_ids, init
    try:
        yield calls, grammars
    finally:
        del model.generate_ids
        constrain.Constraint.__init__ = made


def one_round(model, data: Path, limit: int, generation: dict, tags: list[str] | None = None) -> dict:
    with recorded(model) as (calls, grammars):
        report = evaluate(model, data, tasks=tags, limit=limit, generation=generation, batch=False, keep_predictions=True)
    per: dict[str, dict] = {}
    for p in report.predictions:
        d = per.setdefault(p["tag"], {"n": 0, "warned": 0, "steps": [], "jumped": 0, "seconds": []})
        d["n"] += 1
        d["warned"] += bool(p["pred"]["warnings"])
    for tag, lengths, jumped, seconds in calls:
        per[tag]["steps"].extend(lengths)
        per[tag]["jumped"] += jumped
        per[tag]["seconds"].append(seconds / len(lengths))
    headlines = report.headlines
    out = {tag: {"warning_rate": d["warned"] / d["n"], "headline": headlines.get(tag),
                 "steps": statistics.mean(d["steps"]), "decoder_steps": statistics.mean(d["steps"]) - d["jumped"] / len(d["steps"]),
                 "ms": 1000 * statistics.median(d["seconds"])}
           for tag, d in per.items()}
    masked, answers = sum(g.masked for g in grammars), sum(len(d["steps"]) for d in per.values())
    steps = statistics.mean(n for d in per.values() for n in d["steps"])
    out["_all"] = {"warning_rate": sum(d["warned"] for d in per.values()) / sum(d["n"] for d in per.values()),
                   "average_headline": report.average_of(), "steps": steps,
                   "decoder_steps": steps - sum(d["jumped"] for d in per.values()) / answers,
                   "fixed_share": sum(g.single for g in grammars) / masked if masked else None}
    return out


def median_of(rounds: list[dict]) -> dict:
    out = {}
    for tag in rounds[0]:
        out[tag] = {k: (statistics.median(r[tag][k] for r in rounds) if rounds[0][tag][k] is not None else None)
                    for k in rounds[0][tag]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=10, help="records per task")
    ap.add_argument("--tasks", help="comma-separated task tags (default: all 14)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--num-beams", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "constrained_decoding.json")
    ap.add_argument("--note", default="", help="what the bundles are, for the JSON")
    args = ap.parse_args()
    base = {k: v for k, v in {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}.items() if v}
    tags = args.tasks.split(",") if args.tasks else None
    results = {}
    for bundle in args.bundles:
        model = rt.load(bundle, backend=args.backend, threads=args.threads)
        rounds = {mode: [] for mode in MODES}
        for _ in range(args.rounds):  # interleaved: drift in the machine hits every mode alike
            for mode, extra in MODES.items():
                rounds[mode].append(one_round(model, args.data, args.limit, {**base, **extra}, tags))
        manifest = (bundle / "manifest.json").read_bytes()
        results[str(bundle)] = {"manifest_sha256": hashlib.sha256(manifest).hexdigest(),
                                **{mode: median_of(r) for mode, r in rounds.items()}}
        print(json.dumps({str(bundle): {m: results[str(bundle)][m]["_all"] for m in rounds}}), flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    doc = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": commit,
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": __import__("os").cpu_count(),
                       "python": platform.python_version()},
           "data": str(args.data), "limit_per_task": args.limit, "rounds": args.rounds, "backend": args.backend,
           "generation": base, "note": args.note, "tasks": tags or list(T.TAGS), "bundles": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
