"""Check a Falcon_SFT file before training on it: every bad record, with the reason, plus counts per task.

Reasons: malformed record, unknown tag, wrong image count, missing image, bad crop (not 4 numbers,
empty, or outside the image) and unparsable answer (the task's parser produced warnings). A record may
have several. Built for millions of records: images are only stat'ed (cached per path); a file is opened,
header only, when a crop has to be checked against its size.

This module does not decode pixels, judge whether answers are correct, or change the file.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tiercel.data.images import crop_problem, image_size
from tiercel.data.sft import Record, iter_records
from tiercel.errors import DataError

MALFORMED = "malformed record"
UNKNOWN_TAG = "unknown tag"
IMAGE_COUNT = "wrong image count"
MISSING_IMAGE = "missing image"
BAD_CROP = "bad crop"
UNPARSABLE = "unparsable answer"
REASONS = (MALFORMED, UNKNOWN_TAG, IMAGE_COUNT, MISSING_IMAGE, BAD_CROP, UNPARSABLE)

# Answers are parsed in a 1000x1000 frame when the image size is not needed otherwise: the Falcon
# grammar's bins do not depend on it, so reading millions of image headers would buy nothing.
NOMINAL_SIZE = (1000, 1000)


@dataclass
class Problem:
    """One reason one record is bad."""

    index: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"record {self.index}: {self.reason}: {self.detail}"


@dataclass
class Report:
    """What `validate` found. `counts` and `bad` are per task tag ('?' for records without a known tag)."""

    path: str
    root: str
    n_records: int = 0
    problems: list[Problem] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    bad: Counter = field(default_factory=Counter)

    @property
    def n_bad(self) -> int:
        return len({p.index for p in self.problems})

    @property
    def ok(self) -> bool:
        return not self.problems

    def reasons(self) -> Counter:
        """How many problems of each reason."""
        return Counter(p.reason for p in self.problems)

    def summary(self) -> str:
        """One line: how many records are bad and why."""
        if self.ok:
            return f"{self.path}: all {self.n_records} records are valid"
        why = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.reasons().items()))
        return f"{self.path}: {self.n_bad} of {self.n_records} records are bad ({why})"

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "root": self.root,
            "n_records": self.n_records,
            "n_bad": self.n_bad,
            "reasons": dict(self.reasons()),
            "counts": dict(self.counts),
            "bad_per_task": dict(self.bad),
            "problems": [asdict(p) for p in self.problems],
        }


def validate(path: str | os.PathLike, root: str | os.PathLike | None = None, limit: int | None = None,
             progress: Callable[[int], None] | None = None) -> Report:
    """Check every record of a Falcon_SFT file (or the first `limit`); images are resolved under `root`.

    `root` defaults to the file's folder. `progress(n)` is called every 10,000 records.
    Raises DataError only when the file itself cannot be read as JSON; bad records go in the report.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    if not root.is_dir():
        raise DataError(f"{root}: image root folder not found")
    report = Report(str(path), str(root))
    checker = _Checker(root)
    for record in iter_records(path, strict=False):
        if limit is not None and record.index >= limit:
            break
        found = checker.check(record)
        known = record.tag if record.tag in checker.tags else "?"
        report.n_records += 1
        report.counts[known] += 1
        if found:
            report.bad[known] += 1
            report.problems.extend(found)
        if progress and report.n_records % 10_000 == 0:
            progress(report.n_records)
    return report


class _Checker:
    """Checks one record at a time; caches image existence and sizes across records."""

    def __init__(self, root: Path):
        import tiercel.tasks as T

        self.root = root
        self.tasks = T
        self.tags = set(T.TAGS)
        self._exists: dict[str, bool] = {}
        self._sizes: dict[str, tuple[int, int] | None] = {}

    def check(self, r: Record) -> list[Problem]:
        if r.error:
            return [Problem(r.index, MALFORMED, r.error)]
        out = []
        if r.tag not in self.tags:
            first = r.prompt.splitlines()[0] if r.prompt else ""
            shown = f"[{r.tag}]" if r.tag else first[:40] if first.startswith("[") else "no [TAG] line in the user turn"
            out.append(Problem(r.index, UNKNOWN_TAG, f"{shown}; known tags: {', '.join(self.tasks.TAGS)}"))
            spec = None
        else:
            spec = self.tasks.get(r.tag)
            if len(r.images) != spec.n_images:
                detail = f"{r.tag} needs {spec.n_images} image(s), got {len(r.images)}"
                out.append(Problem(r.index, IMAGE_COUNT, detail))
        missing = [p for p in r.images if not self._exists_at(p)]
        out += [Problem(r.index, MISSING_IMAGE, str(self.root / p)) for p in missing]
        size = NOMINAL_SIZE
        if r.crop:
            crop_error, size = self._crop(r, missing)
            if crop_error:
                out.append(Problem(r.index, BAD_CROP, crop_error))
        if spec is not None:
            warnings = spec.parse(r.answer, image_size=size).warnings
            if warnings:
                out.append(Problem(r.index, UNPARSABLE, f"{r.answer[:60]!r}: {'; '.join(warnings)}"))
        return out

    def _crop(self, r: Record, missing: list[str]) -> tuple[str | None, tuple[int, int]]:
        """(problem or None, the frame size answers refer to) for a record with a non-empty crop."""
        problem = crop_problem(r.crop, (float("inf"), float("inf")))
        if problem or not r.images or r.images[0] in missing:
            return problem, NOMINAL_SIZE
        size = self._size_of(r.images[0])
        if size is None:
            return f"{self.root / r.images[0]}: cannot read the image size", NOMINAL_SIZE
        problem = crop_problem(r.crop, size)
        if problem:
            return problem, NOMINAL_SIZE
        x1, y1, x2, y2 = (float(v) for v in r.crop)
        return None, (max(1, round(x2 - x1)), max(1, round(y2 - y1)))

    def _exists_at(self, rel: str) -> bool:
        hit = self._exists.get(rel)
        if hit is None:
            if len(self._exists) > 2_000_000:  # bound memory on huge files; re-stat is cheap
                self._exists.clear()
            hit = self._exists[rel] = os.path.isfile(self.root / rel)
        return hit

    def _size_of(self, rel: str) -> tuple[int, int] | None:
        if rel not in self._sizes:
            if len(self._sizes) > 200_000:
                self._sizes.clear()
            try:
                self._sizes[rel] = image_size(self.root / rel)
            except DataError:
                self._sizes[rel] = None
        return self._sizes[rel]
