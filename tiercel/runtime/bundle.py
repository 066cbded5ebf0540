"""Read a bundle directory: the manifest, the graph entries for one backend, and their checksums.

The manifest is the contract between export and runtime (DESIGN.md, "The bundle"). Every file the chosen
backend will open is checked against its sha256 before anything runs. This module knows nothing about how
graphs are executed (backends.py) or what they compute (model.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from tiercel.errors import BundleError
from tiercel.fileio import is_leftover, read_json_object, sha256_file

MANIFEST = "manifest.json"
FORMAT = "tiercel-bundle"
FORMAT_VERSION = 1
GRAPHS = ("vision_encoder", "embed_tokens", "encoder_model")
DECODERS = {"merged": ("decoder_model_merged",), "split": ("decoder_model", "decoder_with_past_model")}


@dataclass
class Bundle:
    """A bundle's manifest plus the directory it lives in."""

    root: Path
    manifest: dict

    @property
    def where(self) -> str:
        return str(self.root / MANIFEST)

    @property
    def backends(self) -> list[str]:
        return sorted({g["backend"] for g in self.manifest["graphs"]})

    def graph_names(self) -> tuple[str, ...]:
        return GRAPHS + DECODERS[self.manifest["decoder"]]

    def entries(self, backend: str) -> dict[str, dict]:
        """{graph name: manifest entry} for `backend`; BundleError when the bundle has no graphs for it."""
        found = {g["name"]: g for g in self.manifest["graphs"] if g["backend"] == backend}
        if not found:
            raise BundleError(f"{self.where}: has no graphs for backend '{backend}' (it has: {', '.join(self.backends)}); "
                              f"re-export with --backend {backend}")
        missing = [n for n in self.graph_names() if n not in found]
        if missing:
            raise BundleError(f"{self.where}: lists no {backend} graph '{missing[0]}'; re-export the bundle")
        return found

    def verify(self, entries) -> None:
        """Check that every file of `entries` (and the tokenizer) exists and matches its sha256."""
        files = [(self.manifest["tokenizer"]["file"], self.manifest["tokenizer"]["sha256"])]
        for entry in entries:
            files.append((entry["file"], entry["sha256"]))
            files += list(entry.get("extra_files", {}).items())
        for rel, digest in files:
            path = self.root / rel
            if not path.is_file():
                raise BundleError(f"{self.where}: {rel} is missing; re-export the bundle")
            if sha256_file(path) != digest:
                raise BundleError(f"{self.where}: sha256 of {rel} does not match; re-export the bundle")


def is_bundle(path) -> bool:
    """Whether `path` is a bundle directory (it holds a manifest); anything else is read as a checkpoint."""
    return (Path(path) / MANIFEST).is_file()


def read_bundle(path: str | Path) -> Bundle:
    """Open the bundle at `path` and check its manifest's format (not yet the checksums)."""
    root = Path(path)
    file = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle directory; create one with `tiercel export CHECKPOINT --out {root}`")
    if not file.is_file():
        raise BundleError(f"{file}: missing; {root} is not a tiercel bundle (create one with `tiercel export`)")
    if is_leftover(root):
        raise BundleError(f"{root}: the temporary folder of an export or quantize run that was killed before it "
                          "finished; use the finished bundle, or export again")
    manifest = read_json_object(file, BundleError, "re-export the bundle")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{file}: not a tiercel bundle manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{file}: format version {manifest.get('format_version')} is not supported by this tiercel "
                          f"(reads {FORMAT_VERSION}); re-export the bundle or upgrade tiercel")
    if manifest.get("decoder") not in DECODERS:
        raise BundleError(f"{file}: decoder must be one of {', '.join(DECODERS)} (got {manifest.get('decoder')!r})")
    check_manifest(manifest, file)
    return Bundle(root, manifest)


def check_manifest(manifest: dict, where) -> None:
    """BundleError (one line: the first wrong field) unless the manifest has every part the runtime reads, of the
    right shape, with every file inside the bundle."""
    from pydantic import ValidationError

    try:
        _Manifest.model_validate(manifest)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(x) for x in e["loc"]) or "manifest"
        msg = e["msg"].removeprefix("Value error, ")
        raise BundleError(f"{where}: {loc}: {msg}; re-export the bundle") from None


def _inside(rel: str) -> str:
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise ValueError(f"must be a path inside the bundle (got {rel!r})")
    return rel


_InsidePath = Annotated[str, AfterValidator(_inside)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Graph(_Part):
    name: str
    backend: str
    file: _InsidePath
    sha256: str
    extra_files: dict[_InsidePath, str] = {}


class _Tokenizer(_Part):
    file: _InsidePath
    sha256: str


class _Preprocessing(_Part):
    size: int = Field(gt=0)
    mean: list[float] = Field(min_length=1)
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)


class _Model(_Part):
    shape: dict


class _Manifest(_Part):
    """The parts of a manifest the runtime reads (export/bundle.py writes them all)."""

    model: _Model
    preprocessing: _Preprocessing
    tokenizer: _Tokenizer
    generation: dict
    graphs: list[_Graph] = Field(min_length=1)

    @field_validator("generation")
    @classmethod
    def _settings(cls, value):
        from dataclasses import fields

        from tiercel.runtime.generate import GenerationConfig

        known = {f.name for f in fields(GenerationConfig)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return value
