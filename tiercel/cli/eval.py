"""`tiercel eval BUNDLE|CHECKPOINT --data FILE`: per-task metrics, the average of headlines, JSON and example PNGs.

    tiercel eval bundles/base --data synth/test.json --limit 50 --json eval.json --examples eval_png/
    tiercel eval checkpoints/student --data synth/test.json          # PyTorch, same prompts, parsing, metrics

Thin: parse options, call tiercel.evaluate.evaluate (its progress goes to stderr), print the table, write files.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tiercel.cli.app import BACKEND_OPTION, MAX_BEAMS, app
from tiercel.evaluate.core import BATCH_SIZE
from tiercel.runtime.backends import backends_help

SHOWN_METRICS = 4  # non-headline metrics shown per task in the table (all go to --json)
_PREFERRED = ("macro_f1", "label_jaccard", "bleu4", "rouge_l", "mae", "missing", "precision50", "recall50", "mean_iou",
              "dice", "accuracy_yes_no", "ap50_iou_ranked", "iou_pooled", "f1", "acc50", "ap50")


@app.command("eval")
def eval_cmd(
    model: Path = typer.Argument(..., help="A bundle directory (manifest.json) or a checkpoint directory (PyTorch)."),
    data: Path = typer.Option(..., "--data", help="Falcon_SFT file with references (.json list or .jsonl)."),
    root: Path = typer.Option(None, "--root", help="Folder the records' image paths are relative to (default: the file's folder)."),
    task: list[str] = typer.Option(None, "--tasks", help="Task tags to evaluate (comma-separated or repeated; default all 14)."),
    limit: int = typer.Option(None, "--limit", help="At most N records per task."),
    backend: str = typer.Option("onnxruntime", "--backend", help=f"Backend: {backends_help()}."),
    device: str = typer.Option(None, "--device", help="Backend device (cpu/cuda for onnxruntime and checkpoints, CPU/GPU/NPU for openvino)."),
    threads: int = typer.Option(None, "--threads", min=1, max=1024, help="Intra-op threads of the backend (or of torch for a checkpoint)."),
    option: list[str] = BACKEND_OPTION,
    num_beams: int = typer.Option(None, "--num-beams", min=1, max=MAX_BEAMS, help="Beams (default: the model's setting)."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, help="Generated tokens at most (default: the model's setting)."),
    constrained: bool = typer.Option(True, "--constrained/--no-constrained", help="Decode every answer under its task's grammar (docs/runtime.md); --no-constrained decodes freely."),
    batch: bool = typer.Option(True, "--batch/--no-batch", help="Decode consecutive records together, each distinct image through the vision encoder once; --no-batch: one record at a time."),
    batch_size: int = typer.Option(BATCH_SIZE, "--batch-size", min=1, help="Records decoded together with --batch."),
    json_out: Path = typer.Option(None, "--json", help="Write all metrics, counts and every prediction as JSON here."),
    examples: Path = typer.Option(None, "--examples", help="Write qualitative PNGs (one per task) into this folder."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, max=1_000_000, help="Resamples of the records behind each tiercel headline's 95% interval and the average's (0: no intervals)."),
    protocol: str = typer.Option("tiercel", "--protocol", help="How to score: tiercel (default), falcon (as Falcon's published evaluation scores it; needs tiercel[eval] for REG_DET_OBB, PIX_SEG, PIX_CHG) or both, side by side."),
):
    """Score a bundle or a checkpoint on Falcon_SFT records with each task's metrics."""
    from tiercel.evaluate.examples import check_examples_output
    from tiercel.fileio import check_distinct, check_json_output

    check_json_output(json_out)  # before the work, not after it
    check_distinct(examples, "--examples", ("the --json file", json_out), ("the data file", data))

    from rich.console import Console

    from tiercel.cli.profile import split_list
    from tiercel.errors import ConfigError, DataError
    from tiercel.evaluate import check_protocols, check_tasks, evaluate, open_predictor, write_examples
    from tiercel.runtime.backends import parse_options

    tags = check_tasks(split_list(task))  # unknown tags fail here, before a model loads
    check_examples_output(examples, tags)
    check_protocols(protocol, tags)  # so do unknown protocols and Falcon's missing libraries
    if data.is_dir():
        raise DataError(f"{data}: is a folder; give the Falcon_SFT JSON file in it (e.g. {data / 'test.json'})")
    if not data.is_file():
        raise DataError(f"{data}: file not found")
    root = root if root is not None else data.parent
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: must be >= 1 (got {limit})")
    console = Console(highlight=False, width=None if Console().is_terminal else 160)
    predictor = open_predictor(model, backend=backend, device=device, threads=threads,
                               options=parse_options(option))
    generation = {k: v for k, v in {"num_beams": num_beams, "max_new_tokens": max_new_tokens,
                                    "constrained": None if constrained else False}.items() if v is not None}
    report = evaluate(predictor, data, root, tags, limit, generation, examples=1 if examples else 0,
                      batch=batch, keep_predictions=json_out is not None, protocol=protocol,
                      batch_size=batch_size, bootstrap=bootstrap)  # progress: stderr
    console.print(_table(report, model, data))
    console.print(_summary(report), markup=False, soft_wrap=True)
    for line in report.warnings:
        typer.echo(f"warning: {line}", err=True)
    if json_out is not None:
        from tiercel.fileio import write_output_json

        write_output_json(json_out, {"model": str(model), "data": str(data), "backend": getattr(predictor, "backend", None),
                                     "generation": generation, "limit": limit, **report.to_dict()}, "eval")
        console.print(f"wrote {json_out}", markup=False, soft_wrap=True)
    if examples is not None:
        paths = write_examples(report, root, examples)
        console.print(f"wrote {len(paths)} example PNGs to {examples}", markup=False, soft_wrap=True)


def _table(report, model: Path, data: Path):
    from rich.table import Table

    from tiercel import tasks as T

    names = [report.protocol] + [p for p in report.protocols if p != report.protocol]
    title = f"tiercel eval {model.name} on {data.name}"
    table = Table(title=title if names == ["tiercel"] else f"{title} ({', '.join(names)} protocol)", title_justify="left")
    spread = [("95% interval" if len(names) == 1 else "tiercel 95% interval")] if report.intervals else []
    for col in ("#", "task", "n", *[c for name in names for c in _headline_columns(name, len(names))], *spread,
                "other metrics"):
        table.add_column(col, justify="right" if col in ("#", "n") or col.endswith("value") else "left")
    for tag in T.TAGS:
        if tag not in report.per_task:
            continue
        scores, spec = report.per_task[tag], T.get(tag)
        headline = spec.headline_of(report.protocol)
        others = [k for k in _PREFERRED if k in scores and k != headline][:SHOWN_METRICS]
        cells = [c for name in names for c in (spec.headline_of(name), _num(report.headlines_of(name).get(tag)))]
        interval = [_span(report.intervals.get(tag))] if spread else []
        table.add_row(str(spec.number), tag, str(report.counts[tag]), *cells, *interval,
                      ", ".join(f"{k} {_num(scores[k])}" for k in others))
    if report.per_task:
        label = "14-task average" if len(report.per_task) == len(T.TAGS) else f"average over {len(report.per_task)} tasks"
        table.add_section()
        cells = [c for name in names for c in ("headlines", _num(report.average_of(name)))]
        interval = [_span(report.average_interval)] if spread else []
        table.add_row("", label, str(sum(report.counts.values())), *cells, *interval, "")
    return table


def _headline_columns(protocol: str, shown: int) -> tuple[str, str]:
    return ("headline", "value") if shown == 1 else (f"{protocol} headline", f"{protocol} value")


def _summary(report) -> str:
    skipped = ", ".join(f"{v} ({k})" for k, v in report.skipped.items())
    text = f"{sum(report.counts.values())} records in {report.seconds:.1f} s; headlines are fractions (CIDEr as " \
           f"coco-caption gives it): Falcon's radar chart / 100"
    return text + (f"; skipped: {skipped}" if skipped else "")


def _span(interval) -> str:
    """'[0.553, 0.689]': a 95% interval of tiercel's headline (the first protocol's column when it is tiercel)."""
    return "-" if not interval or any(x is None or x != x for x in interval) else f"[{_num(interval[0])}, {_num(interval[1])}]"


def _num(x) -> str:
    return "-" if x is None or x != x else f"{x:.3f}"
