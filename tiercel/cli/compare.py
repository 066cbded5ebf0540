"""`tiercel compare BASE.json OTHER.json`: two `tiercel eval --json` files of the same records, task by task,
with paired 95% intervals of the change (tiercel.evaluate.compare).

    tiercel eval bundles/fp32 --data test.json --json fp32.json
    tiercel eval bundles/int4 --data test.json --json int4.json
    tiercel compare fp32.json int4.json [--bootstrap 1000] [--json change.json]

Thin: parse options, call compare_files, print the table, write the JSON.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tiercel.cli.app import app


@app.command("compare")
def compare_cmd(
    base: Path = typer.Argument(..., help="The reference evaluation (`tiercel eval --json`), e.g. the fp32 bundle's."),
    other: Path = typer.Argument(..., help="The evaluation to compare with it, on the same records."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=1, max=1_000_000, help="Paired resamples of the records behind the intervals."),
    confidence: float = typer.Option(0.95, "--confidence", min=0.5, max=0.999, help="Coverage of the intervals."),
    json_out: Path = typer.Option(None, "--json", help="Write every task's numbers as JSON here."),
):
    """Compare two evaluations of the same records per task: change, paired interval, answers changed."""
    from tiercel.fileio import check_distinct, check_json_output

    check_distinct(json_out, "--json", ("the base file", base), ("the other file", other))
    check_json_output(json_out)
    from rich.console import Console

    from tiercel.evaluate.compare import compare_files

    result = compare_files(base, other, rounds=bootstrap, confidence=confidence)
    console = Console(highlight=False, width=None if Console().is_terminal else 160)
    console.print(_table(result))
    level = f"{confidence:.0%}"
    console.print(f"change = other / base - 1 per task headline (tiercel protocol; in points where base is 0); {level} "
                  f"interval from {bootstrap} paired resamples of the records: an interval clear of 0 is a resolved "
                  "change", markup=False, soft_wrap=True)
    if json_out is not None:
        from tiercel.fileio import write_output_json

        write_output_json(json_out, result, "compare")
        console.print(f"wrote {json_out}", markup=False, soft_wrap=True)


def _table(result: dict):
    from rich.table import Table

    from tiercel import tasks as T

    level = f"{result['confidence']:.0%}"
    table = Table(title=f"tiercel compare {Path(result['base']).name} -> {Path(result['other']).name}",
                  title_justify="left")
    for col in ("#", "task", "n", "headline", "base", "other", "change", f"{level} interval", "answers changed"):
        table.add_column(col, justify="left" if col in ("task", "headline") else "right")
    for tag, s in result["per_task"].items():
        table.add_row(str(T.get(tag).number), tag, str(s["records"]), s["metric"], _num(s["base"]), _num(s["other"]),
                      *_change(s), str(s["answers_changed"]))
    a = result["average"]
    table.add_section()
    table.add_row("", f"average over {a['tasks']} tasks", str(sum(s["records"] for s in result["per_task"].values())),
                  "headlines", _num(a["base"]), _num(a["other"]), *_change(a),
                  str(sum(s["answers_changed"] for s in result["per_task"].values())))
    return table


def _change(s: dict) -> tuple[str, str]:
    from tiercel.evaluate.compare import change_text

    return change_text(s)[:2]


def _num(x) -> str:
    return "-" if x is None or x != x else f"{x:.3f}"
