"""`tiercel data`: check Falcon_SFT files and write the synthetic benchmark.

    tiercel data validate train.json --root DATA/ [--limit N] [--json report.json]
    tiercel data synth --out synth/ --n 10000 --size 256 --seed 0

Thin: parse options, call tiercel.data, print. A file with bad records exits 1 with a one-line summary.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from tiercel.cli.app import app
from tiercel.errors import DataError

data_app = typer.Typer(help="Falcon_SFT data: validate files, generate the synthetic benchmark.", no_args_is_help=True)
app.add_typer(data_app, name="data")

SHOWN = 50  # bad records printed before "... and N more"


@data_app.command("validate")
def validate_cmd(
    file: Path = typer.Argument(..., help="Falcon_SFT file (.json list or .jsonl)."),
    root: Path = typer.Option(
        None, "--root", help="Folder the records' image paths are relative to (default: the file's folder)."
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="Check only the first N records."),
    json_out: Path = typer.Option(None, "--json", help="Also write the full report (every problem) as JSON here."),
):
    """Check every record: task tag, image count, images exist, crop, answer parses. Exit 1 if any is bad."""
    from tiercel.fileio import check_json_output

    check_json_output(json_out)  # before the work, not after it

    from rich.console import Console

    from tiercel.data.validate import validate

    console = Console(stderr=False, highlight=False)
    with console.status("checking records...") as status:
        report = validate(file, root, limit=limit, progress=lambda n: status.update(f"checked {n:,} records..."))
    for problem in report.problems[:SHOWN]:
        console.print(str(problem), markup=False, soft_wrap=True)
    if len(report.problems) > SHOWN:
        console.print(f"... and {len(report.problems) - SHOWN} more problems", markup=False, soft_wrap=True)
    console.print(_counts_table(report))
    if json_out is not None:
        from tiercel.fileio import write_output_json

        write_output_json(json_out, report.to_dict(), "data validate")
    if not report.ok:
        raise DataError(report.summary())
    console.print(report.summary(), markup=False, soft_wrap=True)


def _counts_table(report):
    from rich.table import Table

    import tiercel.tasks as T

    table = Table(title=f"{report.n_records} records", title_justify="left")
    table.add_column("task")
    table.add_column("records", justify="right")
    table.add_column("bad", justify="right")
    for tag in list(T.TAGS) + ["?"]:
        if report.counts.get(tag) or tag != "?":
            name = tag if tag != "?" else "(no known tag)"
            table.add_row(name, str(report.counts.get(tag, 0)), str(report.bad.get(tag, 0)))
    return table


@data_app.command("synth")
def synth_cmd(
    out: Path = typer.Option(..., "--out", help="Output folder (images/, train.json, val.json, test.json, meta.json)."),
    n: int = typer.Option(10_000, "--n", min=42, max=10_000_000, help="Number of records over all splits (80/10/10; at least 42)."),
    size: int = typer.Option(256, "--size", min=64, max=4096, help="Image side in pixels (64 to 4096)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; the same seed writes the same bytes."),
    workers: int = typer.Option(None, "--workers", min=1, help="Processes to render with (default: up to 2)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it already holds files."),
):
    """Write the synthetic remote-sensing benchmark with ground truth for all 14 Falcon tasks."""
    from rich.console import Console

    from tiercel.data.synth import generate

    console = Console(highlight=False)
    start = time.perf_counter()
    meta = generate(out, n=n, size=size, seed=seed, workers=workers, overwrite=overwrite)  # its bar: stderr
    seconds = time.perf_counter() - start
    splits = ", ".join(f"{s} {sum(c.values())}" for s, c in meta["counts"].items())
    console.print(f"wrote {out}: {n} records ({splits}), {sum(meta['images'].values())} images "
                  f"of {size}x{size} px in {seconds:.1f} s", markup=False, soft_wrap=True)
