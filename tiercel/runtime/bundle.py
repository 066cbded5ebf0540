"""Read a bundle directory: the manifest, the graph entries for one backend, and their checksums.

The manifest (its schema: manifest.py) is the contract between export and runtime (DESIGN.md, "The bundle").
Every file the chosen backend will open is checked against its sha256 before anything runs. This module knows nothing about how
graphs are executed (backends.py) or what they compute (model.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tiercel.errors import BundleError
from tiercel.fileio import is_leftover, sha256_file, temporary_owner
from tiercel.runtime.manifest import DECODERS, GRAPHS, MANIFEST, GraphEntry, Manifest, read_manifest


@dataclass
class Bundle:
    """A bundle's manifest plus the directory it lives in."""

    root: Path
    manifest: Manifest

    @property
    def where(self) -> str:
        return str(self.root / MANIFEST)

    @property
    def backends(self) -> list[str]:
        return self.manifest.backends

    def graph_names(self) -> tuple[str, ...]:
        return GRAPHS + DECODERS[self.manifest.decoder]

    def entries(self, backend: str) -> dict[str, GraphEntry]:
        """{graph name: manifest entry} for `backend`; BundleError when the bundle has no graphs for it."""
        found = {g.name: g for g in self.manifest.graphs if g.backend == backend}
        if not found:
            raise BundleError(f"{self.where}: has no graphs for backend '{backend}' (it has: {', '.join(self.backends)}); "
                              f"re-export with --backend {backend}")
        missing = [n for n in self.graph_names() if n not in found]
        if missing:
            raise BundleError(f"{self.where}: lists no {backend} graph '{missing[0]}'; re-export the bundle")
        return found

    def verify(self, entries) -> None:
        """Check that every file of `entries` (and the tokenizer) exists and matches its sha256."""
        files = [(self.manifest.tokenizer.file, self.manifest.tokenizer.sha256)]
        for entry in entries:
            files.append((entry.file, entry.sha256))
            files += list(entry.extra_files.items())
        for rel, digest in files:
            path = self.root / rel
            if not path.resolve().is_relative_to(self.root.resolve()):  # a symlink out: the name alone is not enough
                raise BundleError(f"{self.where}: {rel} links to a file outside the bundle; re-export the bundle")
            if not path.is_file():
                raise BundleError(f"{self.where}: {rel} is missing; re-export the bundle")
            if sha256_file(path) != digest:
                raise BundleError(f"{self.where}: sha256 of {rel} does not match; re-export the bundle")


def is_bundle(path) -> bool:
    """Whether `path` is a bundle directory (it holds a manifest); anything else is read as a checkpoint."""
    return (Path(path) / MANIFEST).is_file()


def read_bundle(path: str | Path) -> Bundle:
    """Open the bundle at `path` and check its manifest's format (not yet the checksums). The temporary folder
    of an export or quantize run never opens, except in that run: only the final rename makes a bundle whole
    (its manifest is written before the parity check, and bundles exported without parity keep `parity: {}`)."""
    root = Path(path)
    file = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle directory; create one with `tiercel export CHECKPOINT --out {root}`")
    if not file.is_file():
        raise BundleError(f"{file}: missing; {root} is not a tiercel bundle (create one with `tiercel export`)")
    if is_leftover(root):
        raise BundleError(f"{root}: the temporary folder of an export or quantize run that was killed before it "
                          "finished; use the finished bundle, or export again")
    owner = temporary_owner(root)
    if owner is not None and owner != os.getpid():  # this process reads its own folder for the parity check
        raise BundleError(f"{root}: the temporary folder of an export or quantize run that is still running "
                          f"(process {owner}); wait for the bundle it renames this folder to")
    return Bundle(root, read_manifest(file))
