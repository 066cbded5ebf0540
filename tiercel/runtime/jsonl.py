"""The results file of `tiercel run --images`: one JSON line per image, appended, resumable.

    {"image": "photos/a.png", "task": "IMG_CAP", "result": {"type": "caption", ...}, "seconds": 0.412}
    {"image": "photos/b.png", "task": "IMG_CAP", "error": "photos/b.png: cannot read image (...)"}

Lines carry "text" after "task" when the task was given one. Each line is one write, flushed at once and
fsync'ed every few seconds and on close, so a crash loses at most the line being written. Opening the file again
reads what is done, cuts a truncated last line (a crash mid-write) and appends after the good lines, which are
never rewritten. A file whose lines are not in this format is refused and left as it is: tiercel appends only
to its own results. An OS lock keeps two runs from appending to one file. With `overwrite` the new lines go to
a temporary file beside it, which replaces it only when the run ends without an exception: an interrupted
`--overwrite` run leaves the old results as they were.

Knows nothing about models or images; tiercel.runtime.folder decides what goes in a line.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tiercel.errors import ConfigError
from tiercel.fileio import check_output_file, finite, fsync_dir, make_temp, temp_name, tidy_leftovers, umask

FSYNC_EVERY = 5.0  # seconds between fsyncs: a power cut loses at most this much; a crash of the process loses nothing
_PREFIX = b'{"image": '  # every line starts so: json.dumps keeps key order, and "image" comes first


def key(line: dict) -> tuple:
    """What identifies one answer: the image, the task and its text. A rerun skips the keys already done."""
    return line["image"], line["task"], line.get("text")


def read_results(path: str | Path, option: str = "--out", overwrite: bool = False) -> tuple[list[dict], int | None]:
    """The lines of a results file (none if it is missing) and the byte offset of a truncated last line to cut
    (None: nothing to cut). ConfigError when the file is not a tiercel results file (`overwrite`: the message says
    it is not replaced, rather than not appended to)."""
    path = Path(path)
    check_output_file(path, option, example="results.jsonl")
    if not path.exists():
        return [], None
    lines, offset = [], 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            line = _parse(raw)
            if line is None and not raw.endswith(b"\n") and (raw.startswith(_PREFIX[: len(raw)]) or not raw.strip(b"\0")):
                return lines, offset  # the last line, cut short by a crash while it was written (or zeros after a power cut)
            if line is None:
                raise ConfigError(f"{option} {path}: line {n} is not a tiercel result "
                                  '({"image": ..., "task": ..., "result" or "error": ...}), so tiercel does not '
                                  f"{'replace it, even with --overwrite' if overwrite else 'append to it'}; "
                                  "choose another path")
            lines.append(line)
            offset += len(raw)
    return lines, None


def _parse(raw: bytes) -> dict | None:
    try:
        line = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    ok = (isinstance(line, dict) and isinstance(line.get("image"), str) and isinstance(line.get("task"), str)
          and ("result" in line or isinstance(line.get("error"), str)))
    return line if ok else None


class ResultsFile:
    """A results file open for appending. Use it as a context manager; `lines` is what it held when opened."""

    def __init__(self, path: str | Path, overwrite: bool = False, option: str = "--out"):
        self.path = Path(path)
        check_output_file(self.path, option, example="results.jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fresh = None  # with overwrite: the temporary file the new lines go to
        self.target = Path(os.path.realpath(self.path))  # what an --overwrite replaces: through a symlink, its target
        self.file = self.lock = _open_locked(self.path, option)
        try:
            self.lines, cut = read_results(self.path, option, overwrite)  # under the lock; refuses a file tiercel did not write
            if overwrite:
                tidy_leftovers(self.target)  # the temporary file of a killed --overwrite run
                self.fresh = temp_name(self.target)  # named first: _discard removes it however far its creation got
                self.lines, cut = [], None
                self.file = os.fdopen(make_temp(self.fresh, f"{option} {self.path}"), "a+b")
            if cut is not None:
                self.file.truncate(cut)
            elif self.lines and _last_byte(self.file) != b"\n":  # a whole last line without its newline (edited)
                self.file.write(b"\n")
            self._synced = time.monotonic()
            self.sync()
        except BaseException:
            self._discard()
            raise

    def append(self, line: dict) -> None:
        """Write `line` (image and task first) as one JSON line, flushed; fsync'ed every FSYNC_EVERY seconds."""
        data = json.dumps(finite(line), ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"
        self.file.write(data)
        self.file.flush()
        if time.monotonic() - self._synced >= FSYNC_EVERY:
            self.sync()

    def sync(self) -> None:
        os.fsync(self.file.fileno())
        self._synced = time.monotonic()

    def close(self) -> None:
        """Sync and close; with overwrite, the new lines replace the old file (under the lock, through a symlink
        to its target). If that fails, the temporary file goes and the old file stays."""
        try:
            if not self.file.closed:
                try:
                    self.sync()
                finally:
                    self.file.close()
            if self.fresh is not None and self.fresh.exists():
                os.chmod(self.fresh, 0o666 & ~umask())
                if os.name == "nt":  # Windows cannot replace a file that is open; it has no flock here anyway
                    self.lock.close()
                os.replace(self.fresh, self.target)
                fsync_dir(self.target.parent)
        finally:
            if self.fresh is not None:
                self.fresh.unlink(missing_ok=True)
            self.lock.close()  # closing releases the lock

    def _discard(self) -> None:
        """Close without publishing: an --overwrite run's new lines are dropped, the old file stays."""
        self.file.close()
        if self.fresh is not None:
            self.fresh.unlink(missing_ok=True)
        self.lock.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        elif self.fresh is not None:
            self._discard()
        else:
            self.close()  # the lines written so far are the run's results: a rerun resumes after them
        return False


def _last_byte(file) -> bytes:
    file.seek(-1, os.SEEK_END)
    return file.read(1)


def _open_locked(path: Path, option: str):
    """`path` opened for appending (nothing in it changes) and locked. An --overwrite run that finishes replaces
    the file by a new one and then lets go of the old one's lock; a run that opened the old file just before
    would get that lock and append to a file no longer in the folder, so the lock counts only when the path
    still names the file it is on: otherwise open again."""
    for _ in range(100):
        file = open(path, "a+b")  # changes nothing in a file that is there, ours or not
        try:
            _lock(file, path, option)
            if _same_file(file, path):
                return file
        except BaseException:
            file.close()
            raise
        file.close()
    raise ConfigError(f"{option} {path}: replaced by another tiercel run again and again; wait for it to finish "
                      "or choose another path")


def _same_file(file, path: Path) -> bool:
    """Whether `path` still names the open `file`: both opened, then compared (on overlayfs and some FUSE file
    systems stat(path) and fstat(fd) of one file can differ; two open descriptors agree)."""
    try:
        with open(path, "rb") as now:
            return os.path.sameopenfile(file.fileno(), now.fileno())
    except FileNotFoundError:
        return False


def _lock(file, path: Path, option: str) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; two runs on one file would append the same images twice
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"{option} {path}: another tiercel run is writing it; wait for it to finish or choose "
                          "another path") from None
