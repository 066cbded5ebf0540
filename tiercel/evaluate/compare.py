"""Two evaluations of the same records, compared task by task with a paired bootstrap: `tiercel compare`.

Both inputs are `tiercel eval --json` files: every row of their `predictions` holds the record (`index`, `tag`),
the parsed prediction, the parsed reference, the image size and the crop, so both can be scored again without
the images. Rows are matched by record; the two files must hold the same records with the same references
(the same `--data`, `--tasks` and `--limit`), else one DataError line says which record differs.

Each task's headline (tiercel's protocol) is scored on both. The interval is paired: each round draws the
task's records with replacement and scores BOTH models on that draw, so records both get right, or both get
wrong, move the two scores together and do not widen the interval of the change, as separate intervals would.
Per task: both headlines, the change (other - base) and the relative change (other / base - 1), each with its
percentile interval, and how many answers differ. The average of the headlines, over the tasks both files
score, gets the same from the same rounds. Each task draws from its own Generator (seeded with the seed and the
task's number), so its interval does not depend on which other tasks the files hold. This is what a quantized
bundle against its fp32 bundle, or one student against another, needs: "is the change resolved, and which
way?". The draws are scored from per-sample statistics (tiercel.tasks.metrics.resample).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tiercel import tasks as T
from tiercel.errors import DataError, TiercelError
from tiercel.fileio import read_json_object

ROW_FIELDS = ("index", "tag", "pred", "truth", "size", "crop")


def read_rows(path: str | Path) -> dict[tuple[int, str], dict]:
    """{(record index, tag): row} of a `tiercel eval --json` file; DataError naming the file and field otherwise."""
    return rows_of(read_json_object(path, DataError, "give a file written by `tiercel eval --json`"), path)


def rows_of(data: dict, path: str | Path) -> dict[tuple[int, str], dict]:
    """read_rows of the object already read from `path` (named in the errors)."""
    rows = data.get("predictions")
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: no 'predictions' rows; write it with `tiercel eval --json` (which keeps them)")
    out = {}
    for i, row in enumerate(rows):
        missing = [f for f in ROW_FIELDS if not isinstance(row, dict) or f not in row]
        if missing:
            raise DataError(f"{path}: predictions[{i}] lacks {', '.join(repr(f) for f in missing)}; "
                            "write it again with this tiercel's `tiercel eval --json`")
        problem = _row_problem(row)
        if problem:
            raise DataError(f"{path}: predictions[{i}]: {problem}; write it again with `tiercel eval --json`")
        key = (row["index"], row["tag"])
        if key in out:
            raise DataError(f"{path}: record {key[0]} ({key[1]}) appears twice in predictions")
        out[key] = row
    return out


def _row_problem(row: dict) -> str | None:
    """What is wrong with the fields of one predictions row that compare reads as they are (None: nothing)."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if not isinstance(row["tag"], str) or row["tag"] not in T.TASKS:
        return f"unknown task {row['tag']!r}"
    if not isinstance(row["index"], int) or isinstance(row["index"], bool):
        return f"'index' must be a whole number (got {row['index']!r})"
    size = row["size"]
    if not isinstance(size, list) or len(size) != 2 or not all(number(v) and v > 0 for v in size):
        return f"'size' must be [width, height] in pixels (got {size!r})"
    if row["crop"] is not None and not (isinstance(row["crop"], list) and all(number(v) for v in row["crop"])):
        return f"'crop' must be a list of numbers or null (got {row['crop']!r})"
    return None


def compare_rows(base: dict, other: dict, rounds: int = 1000, confidence: float = 0.95, seed: int = 0,
                 names: tuple[str, str] = ("base", "other")) -> dict:
    """Paired comparison of two read_rows() results (see the module docstring). `names` label the files in errors."""
    from tiercel.tasks.metrics.resample import scorer, task_rng

    _same_records(base, other, names)
    by_tag: dict[str, list] = {}
    for key in sorted(base, key=lambda k: (T.get(k[1]).number, k[0])):
        by_tag.setdefault(key[1], []).append(key)
    tail = (1 - confidence) / 2
    per_task, drawn = {}, {}
    for tag, keys in by_tag.items():
        spec = T.get(tag)
        refs = [_result(base[k]["truth"], names[0], k, "truth") for k in keys]
        sizes = [tuple(base[k]["size"]) for k in keys]
        crops = [base[k]["crop"] for k in keys]
        preds = {side: [_result(rows[k]["pred"], name, k, "pred") for k in keys]
                 for side, rows, name in (("base", base, names[0]), ("other", other, names[1]))}
        try:
            point = {side: float(spec.metric(p, refs, sizes, crops=crops)[spec.headline]) for side, p in preds.items()}
            draw = {side: scorer(tag, p, refs, sizes) for side, p in preds.items()}
        except (TiercelError, ValueError, TypeError) as err:  # a result that parsed but cannot be scored
            raise _unscorable(spec, keys, refs, preds, sizes, crops, names, err) from None
        drawn[tag] = (draw, len(keys), task_rng(seed, tag))
        changed = sum(base[k]["pred"] != other[k]["pred"] for k in keys)
        per_task[tag] = {"metric": spec.headline, "records": len(keys), "answers_changed": changed,
                         **_summary(point["base"], point["other"])}
    values = {tag: np.full((2, rounds), np.nan) for tag in drawn}
    for r in range(rounds):
        for tag, (draw, n, rng) in drawn.items():
            pick = rng.integers(0, n, n)
            values[tag][:, r] = draw["base"](pick), draw["other"](pick)
    for tag, v in values.items():
        per_task[tag].update(_intervals(v[0], v[1], tail))
    # The average: over the tasks both files score (a nan headline on either side leaves its task out), and per
    # round over the same tasks (a round where one of them draws a nan is left out).
    scored = [t for t, s in per_task.items() if not (math.isnan(s["base"]) or math.isnan(s["other"]))]
    average = {"tasks": len(scored), **_summary(*(sum(per_task[t][side] for t in scored) / len(scored) if scored
                                                  else math.nan for side in ("base", "other")))}
    means = np.stack([values[t] for t in scored]).mean(0) if scored else np.full((2, rounds), np.nan)
    average.update(_intervals(means[0], means[1], tail))
    return {"rounds": rounds, "confidence": confidence, "seed": seed, "per_task": per_task, "average": average}


def compare_files(base: str | Path, other: str | Path, rounds: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> dict:
    """compare_rows of two `tiercel eval --json` files, with their paths."""
    result = compare_rows(read_rows(base), read_rows(other), rounds, confidence, seed, (str(base), str(other)))
    return {"base": str(base), "other": str(other), **result}


def _same_records(base: dict, other: dict, names: tuple[str, str]) -> None:
    for a, b, name_a, name_b in ((base, other, *names), (other, base, *names[::-1])):
        missing = sorted(set(a) - set(b))
        if missing:
            index, tag = missing[0]
            raise DataError(f"{name_b}: lacks {len(missing)} record(s) of {name_a} (first: record {index}, {tag}); "
                            "compare evaluations of the same records (same --data, --tasks and --limit)")
    for key in sorted(base):
        if base[key]["truth"] != other[key]["truth"] or list(base[key]["size"]) != list(other[key]["size"]):
            raise DataError(f"record {key[0]} ({key[1]}): the reference differs between {names[0]} and {names[1]}; "
                            "they scored different data")


def _result(data, name: str, key: tuple[int, str], field: str) -> T.Result:
    try:
        result = T.from_dict(data)
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{name}: record {key[0]} ({key[1]}): '{field}' is not a result ({err})") from None
    expected = T.get(key[1]).result_type
    if not isinstance(result, expected):
        raise DataError(f"{name}: record {key[0]} ({key[1]}): '{field}' is a {type(result).__name__}, but "
                        f"{key[1]} answers are {expected.__name__}; compare files written by `tiercel eval --json`")
    return result


def _unscorable(spec, keys, refs, preds, sizes, crops, names, err) -> DataError:
    """The DataError for a task whose results cannot be scored: the first record (and file) that fails alone."""
    for i, key in enumerate(keys):
        for side, name in zip(("base", "other"), names, strict=True):
            try:
                spec.metric([preds[side][i]], [refs[i]], [sizes[i]], crops=[crops[i]])
            except (TiercelError, ValueError, TypeError) as one:
                return DataError(f"{name}: record {key[0]} ({key[1]}): cannot be scored ({one}); compare files "
                                 "written by `tiercel eval --json`")
    return DataError(f"{spec.tag}: the records cannot be scored ({err}); compare files written by `tiercel eval --json`")


def change_text(s: dict | None) -> tuple[str, str, bool]:
    """A compared task's (or average's) change, its interval, and whether the interval excludes 0, as text for a
    table: relative (other / base - 1, "+1.2%"), or in points of the headline where base is 0 ("+3.0 pts"); "-"
    for what is missing."""
    def pct(x):
        return "-" if x is None or x != x else f"{x:+.1%}"

    def pts(x):
        return "-" if x is None or x != x else f"{100 * x:+.1f} pts"

    s = s or {}
    change = s.get("change")
    relative = s.get("relative") is not None or change is None or change != change
    value, ci, fmt = (s.get("relative"), s.get("relative_ci"), pct) if relative else (change, s.get("change_ci"), pts)
    if not ci or any(x is None or x != x for x in ci):
        return fmt(value), "-", False
    return fmt(value), f"[{fmt(ci[0])}, {fmt(ci[1])}]", ci[0] > 0 or ci[1] < 0


def change_cell(s: dict | None) -> str:
    """change_text as one table cell: "+1.2% [-0.3%, +2.7%]", bold where the interval excludes 0; "-" where
    nothing was compared."""
    if not s or s.get("change") is None:
        return "-"
    value, span, resolved = change_text(s)
    text = value if span == "-" else f"{value} {span}"
    return f"**{text}**" if resolved else text


def _summary(base: float, other: float) -> dict:
    return {"base": base, "other": other, "change": other - base,
            "relative": other / base - 1 if base and not math.isnan(base) else None}


def _intervals(base: np.ndarray, other: np.ndarray, tail: float) -> dict:
    """Percentile intervals of the change and of the relative change over the rounds (rounds where either side is
    nan are left out; the relative change also leaves out rounds where base is 0)."""
    ok = ~(np.isnan(base) | np.isnan(other))
    change = (other - base)[ok]
    rel_ok = ok & (base != 0)
    relative = other[rel_ok] / base[rel_ok] - 1
    span = lambda x: [float(np.quantile(x, tail)), float(np.quantile(x, 1 - tail))] if len(x) else None  # noqa: E731
    return {"change_ci": span(change), "relative_ci": span(relative)}
