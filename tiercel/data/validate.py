"""Check a Falcon_SFT file before training on it: every bad record, with the reason, plus counts per task.

Reasons: malformed record, unknown tag, no answer (missing, or not text), wrong image count, image outside
the root (absolute, or climbing out with `..`), missing image, unreadable image (not an image, or larger than
tiercel decodes), bad crop (not 4 numbers, empty, or outside the image) and unparsable answer (the task's parser
produced warnings). A record may have several. Built for millions of records: each distinct image is opened
once, header only (cached per path), never decoded. A file without records is an error, not a clean report.

This module does not decode pixels, judge whether answers are correct, or change the file.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tiercel.data.images import check_pixels, crop_problem, image_size
from tiercel.data.sft import Record, answer_problem, iter_records
from tiercel.errors import DataError

MALFORMED = "malformed record"
UNKNOWN_TAG = "unknown tag"
IMAGE_COUNT = "wrong image count"
MISSING_IMAGE = "missing image"
BAD_CROP = "bad crop"
UNPARSABLE = "unparsable answer"
NO_ANSWER = "no answer"
OUTSIDE_ROOT = "image outside root"
BAD_IMAGE = "unreadable image"
REASONS = (MALFORMED, UNKNOWN_TAG, NO_ANSWER, IMAGE_COUNT, OUTSIDE_ROOT, MISSING_IMAGE, BAD_IMAGE, BAD_CROP, UNPARSABLE)

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
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: is a file; give the folder the records' image paths are relative to")
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
    if report.n_records == 0:
        raise DataError(f"{path}: holds no records; a Falcon_SFT file is a JSON list or JSONL of records")
    return report


class _Checker:
    """Checks one record at a time; caches image existence and sizes across records."""

    def __init__(self, root: Path):
        import tiercel.tasks as T

        self.root = root
        self.tasks = T
        self.tags = set(T.TAGS)
        self._images: dict[str, tuple[str, str] | tuple[int, int]] = {}  # path -> (reason, detail) or (W, H)

    def check(self, r: Record) -> list[Problem]:
        if r.error:
            return [Problem(r.index, MALFORMED, r.error)]
        out = []
        no_answer = answer_problem(r)
        if no_answer:
            out.append(Problem(r.index, NO_ANSWER, no_answer))
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
        found = [self._image(p) for p in r.images]
        bad = [p for p, f in zip(r.images, found) if isinstance(f[0], str)]
        out += [Problem(r.index, *f) for f in found if isinstance(f[0], str)]
        size = NOMINAL_SIZE
        if r.crop:
            crop_error, size = self._crop(r, bad)
            if crop_error:
                out.append(Problem(r.index, BAD_CROP, crop_error))
        if spec is not None and not no_answer:
            warnings = spec.parse(r.answer, image_size=size).warnings
            if warnings:
                out.append(Problem(r.index, UNPARSABLE, f"{r.answer[:60]!r}: {'; '.join(warnings)}"))
        return out

    def _crop(self, r: Record, bad: list[str]) -> tuple[str | None, tuple[int, int]]:
        """(problem or None, the frame size answers refer to) for a record with a non-empty crop."""
        problem = crop_problem(r.crop, (float("inf"), float("inf")))
        if problem or not r.images or r.images[0] in bad:
            return problem, NOMINAL_SIZE
        size = self._image(r.images[0])
        problem = crop_problem(r.crop, size)
        if problem:
            return problem, NOMINAL_SIZE
        x1, y1, x2, y2 = (float(v) for v in r.crop)
        return None, (max(1, round(x2 - x1)), max(1, round(y2 - y1)))

    def _image(self, rel) -> tuple[str, str] | tuple[int, int]:
        """(reason, detail) of what is wrong with image `rel`, or its (W, H); one header read per path."""
        if rel not in self._images:
            if len(self._images) > 2_000_000:  # bound memory on huge files; a header read again is cheap
                self._images.clear()
            self._images[rel] = self._look_at(rel)
        return self._images[rel]

    def _look_at(self, rel) -> tuple[str, str] | tuple[int, int]:
        if not isinstance(rel, str) or os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == "..":
            return OUTSIDE_ROOT, f"{rel!r} is not a path inside {self.root}; image paths are relative to --root"
        path = self.root / rel
        try:
            if not path.is_file():
                return MISSING_IMAGE, str(path)
        except OSError as err:  # a name too long for the file system, a loop of links: not a readable image
            shown = str(path) if len(str(path)) <= 120 else f"{str(path)[:100]}...({len(str(path))} characters)"
            return MISSING_IMAGE, f"{shown} ({err.strerror or err})"
        try:
            size = image_size(path)
            check_pixels(path, size)
        except DataError as err:
            return BAD_IMAGE, str(err)
        return size
