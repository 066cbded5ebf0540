"""Crash-safe writing: outputs appear complete under their final name, or not at all.

Knows nothing about what is written; used by every stage that writes a file or a directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tiercel.errors import TiercelError


@contextlib.contextmanager
def atomic_dir(dst: str | Path, overwrite: bool = False):
    """Yield a temporary directory next to `dst`; on success it is renamed to `dst`, on error removed."""
    dst = refuse_existing(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def refuse_existing(dst: str | Path, overwrite: bool = False) -> Path:
    """`dst` as a Path; TiercelError if it exists and `overwrite` is off (checked again by atomic_dir)."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise TiercelError(f"{dst}: already exists; choose another output path or pass --overwrite")
    return dst


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | Path, data) -> Path:
    """Atomically write `data` as indented JSON."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
