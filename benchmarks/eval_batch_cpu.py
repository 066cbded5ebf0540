"""`tiercel eval` records per second: one `run_all` per image (before) vs `run_batch` across images (now).

Until run_batch, evaluate decoded the consecutive records of one image together (`run_all`: 4.4 prompts per call
on the fidelity benchmark's test split) and every image on its own. Now it decodes `--batch-size` consecutive
records together, whatever their images. Small models spend each decoder step on per-call overhead, so the
number of decoding loops is what costs. This scores the same records each way and checks the predictions match:

    OMP_NUM_THREADS=1 python benchmarks/eval_batch_cpu.py MODEL [MODEL ...] --data benchmarks/work/fidelity/data/test.json \\
        --limit 32 --sizes 16,32,64 --rounds 2 --threads 1

MODEL: a checkpoint (PyTorch) or a bundle (onnxruntime). `run_all`: the predictor seen without run_batch, so
evaluate falls back to the same-image grouping it used before. Each round runs every configuration once, the
order rotating by round; medians of records per second. Greedy, `--max-new-tokens` (128, as the fidelity
benchmark evaluates).

Writes benchmarks/results/eval_batch_cpu.json (commit, command, machine); the write-up is eval_batch_cpu.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from image_use import commit, machine, write_result  # noqa: E402


class RunAllOnly:
    """A predictor seen without run_batch: evaluate groups the records of one image through run_all."""

    def __init__(self, predictor):
        self._p = predictor
        self.run, self.run_all = predictor.run, predictor.run_all
        self.tokenizer, self.generation = predictor.tokenizer, predictor.generation


def one(predictor, data: Path, limit: int, generation: dict, config: str) -> dict:
    from tiercel.evaluate import evaluate

    size = None if config == "run_all" else int(config)
    p = RunAllOnly(predictor) if size is None else predictor
    report = evaluate(p, data, limit=limit, generation=generation, keep_predictions=True,
                      **({} if size is None else {"batch_size": size}))
    n = sum(report.counts.values())
    return {"records": n, "seconds": report.seconds, "records_per_s": n / report.seconds, "average": report.average,
            "predictions": report.predictions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=32, help="records per task")
    ap.add_argument("--sizes", default="16,32,64", help="run_batch sizes to time")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=HERE / "results/eval_batch_cpu.json")
    args = ap.parse_args()
    from tiercel.evaluate import open_predictor

    configs = ["run_all", *args.sizes.split(",")]
    generation = {"num_beams": 1, "max_new_tokens": args.max_new_tokens}
    result = {"commit": commit(), "command": " ".join(sys.argv), "machine": machine(), "data": str(args.data),
              "limit": args.limit, "generation": generation, "threads": args.threads, "models": {}}
    for model in args.models:
        predictor = open_predictor(model, threads=args.threads)
        runs = {c: [] for c in configs}
        for r in range(args.rounds):
            for c in configs[r % len(configs):] + configs[:r % len(configs)]:
                runs[c].append(one(predictor, args.data, args.limit, generation, c))
                print(f"{model.name} {c}: {runs[c][-1]['records_per_s']:.1f} records/s", flush=True)
        base = runs["run_all"][0]["predictions"]
        rows = {}
        for c, rs in runs.items():
            rate = statistics.median(x["records_per_s"] for x in rs)
            rows[c] = {"records": rs[0]["records"], "records_per_s": [x["records_per_s"] for x in rs],
                       "median_records_per_s": rate, "average": rs[0]["average"],
                       "x_run_all": None, "predictions_equal_run_all": all(x["predictions"] == base for x in rs)}
        for c in rows:
            rows[c]["x_run_all"] = rows[c]["median_records_per_s"] / rows["run_all"]["median_records_per_s"]
        kind = "bundle" if (model / "manifest.json").is_file() else "checkpoint"
        result["models"][str(model)] = {"kind": kind, "configs": rows}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
