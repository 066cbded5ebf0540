"""Train, score and size models for the synthetic-benchmark studies (distill_synth.py, fidelity.py).

`train` runs tiercel's trainer on a recipe dict and picks up where an earlier call left off; `score` runs
tiercel.evaluate on a checkpoint or a bundle; `params` counts a checkpoint's parameters. Knows nothing about
which models a study trains or how it reports them.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

KEY_FILE = "bench_key.json"  # what the run in a folder was trained from (see `train`)


def train(recipe: dict, key: str | None = None) -> dict:
    """Train `recipe` (a dict for tiercel.recipe.parse_recipe) into recipe["out"].

    `key` says what the run depends on (default: the recipe itself). A finished run with the same key is taken as
    it is; a killed run with the same key resumes from its newest checkpoint; a folder with anything else in it is
    emptied first. Returns where the student is, the wall time of this call, the last samples/s of the trainer
    (counted from this call's first step), the mean loss of the last 5 logged steps and the training's wall time
    over every resume (the trainer's train_seconds; None for a run logged before the trainer recorded it).
    """
    from tiercel.distill.checkpoints import latest
    from tiercel.distill.trainer import distill
    from tiercel.recipe import parse_recipe

    parsed = parse_recipe(recipe)  # a bad recipe fails before anything on disk changes
    out, key = Path(recipe["out"]), key or json.dumps(recipe, sort_keys=True, default=str)
    stored = out / KEY_FILE
    if not (stored.is_file() and stored.read_text() == key):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        stored.write_text(key)
    t0 = time.perf_counter()
    student = out / "student"
    if not (student / "model.safetensors").is_file():
        student = distill(parsed, resume=latest(out) is not None, progress=False).student
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [x["samples_per_s"] for x in lines if "samples_per_s" in x]
    losses = [x["loss"] for x in lines if "loss" in x]
    spent = [x["train_seconds"] for x in lines if "train_seconds" in x]
    return {"student": str(student), "seconds": time.perf_counter() - t0, "samples_per_s": rates[-1] if rates else None,
            "final_loss": statistics.mean(losses[-5:]) if losses else None,
            "train_seconds": spent[-1] if spent and len(spent) == len(rates) else None}


def score(model: str | Path, test: Path, root: Path, limit: int | None, max_new_tokens: int, backend: str = "onnxruntime",
          protocol: str = "tiercel", num_beams: int = 1, threads: int | None = None, batch_size: int | None = None,
          predictions: Path | None = None) -> dict:
    """Score a checkpoint (PyTorch, whatever `backend`) or a bundle (on `backend`) on `test`, task by task.

    Returns headline per task, their average, every metric per task, record counts, seconds and warnings
    (tiercel.evaluate.EvalReport), and with protocol "both" the Falcon protocol's headlines and average too.
    With `predictions`, every record's row (as `tiercel eval --json` keeps them: index, tag, parsed prediction and
    reference, size, crop) is written there as gzipped JSON, for read_predictions and tiercel.evaluate.compare.
    """
    from tiercel.evaluate import evaluate, open_predictor

    predictor = open_predictor(model, backend=backend, threads=threads)
    report = evaluate(predictor, test, root, limit=limit, protocol=protocol,
                      generation={"num_beams": num_beams, "max_new_tokens": max_new_tokens},
                      keep_predictions=predictions is not None,
                      **({} if batch_size is None else {"batch_size": batch_size}))
    if predictions is not None:
        import gzip

        from tiercel.fileio import atomic_path, finite

        with atomic_path(predictions) as tmp:
            tmp.write_bytes(gzip.compress(json.dumps({"model": str(model), "backend": backend,
                                                      "predictions": finite(report.predictions)}).encode(), mtime=0))
    out = {"per_task": report.per_task, "headline": report.headlines, "average": report.average, "counts": report.counts,
           "seconds": report.seconds, "warnings": report.warnings}
    for name in report.protocols:
        if name != report.protocol:
            out[name] = {"headline": report.headlines_of(name), "average": report.average_of(name)}
    return out


def read_predictions(path: Path) -> dict:
    """{(record index, tag): row} of a file score(predictions=...) wrote; DataError naming it otherwise."""
    import gzip

    from tiercel.errors import DataError
    from tiercel.evaluate.compare import rows_of

    try:
        data = json.loads(gzip.decompress(Path(path).read_bytes()))
    except (OSError, EOFError, ValueError) as err:
        raise DataError(f"{path}: unreadable ({err}); delete the evaluation stage that wrote it to score again") from None
    return rows_of(data, path)


def params(path: str | Path) -> int:
    """Parameters of the checkpoint at `path`."""
    from tiercel.models import load_checkpoint

    return sum(p.numel() for p in load_checkpoint(path).model.parameters())
