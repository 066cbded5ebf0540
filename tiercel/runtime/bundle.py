"""Read a bundle directory: the manifest, the graph entries for one backend, and their checksums.

The manifest is the contract between export and runtime (DESIGN.md, "The bundle"). Every file the chosen
backend will open is checked against its sha256 before anything runs. This module knows nothing about how
graphs are executed (backends.py) or what they compute (model.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tiercel.errors import BundleError
from tiercel.fileio import is_leftover, read_json_object, sha256_file, temporary_owner
from tiercel.runtime.generate import MAX_BEAMS, GenerationConfig

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
    manifest = read_json_object(file, BundleError, "re-export the bundle")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{file}: not a tiercel bundle manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{file}: format version {manifest.get('format_version')} is not supported by this tiercel "
                          f"(reads {FORMAT_VERSION}); re-export the bundle or upgrade tiercel")
    if not isinstance(manifest.get("decoder"), str) or manifest["decoder"] not in DECODERS:
        raise BundleError(f"{file}: decoder must be one of {', '.join(DECODERS)} (got {manifest.get('decoder')!r})")
    check_manifest(manifest, file)
    return Bundle(root, manifest)


def check_manifest(manifest: dict, where) -> None:
    """BundleError (one line: the first wrong field) unless the manifest has every part the runtime reads, of the
    right JSON type and range, with every file inside the bundle and every token id inside the vocabulary."""
    from pydantic import ValidationError

    try:
        parsed = _Manifest.model_validate(manifest)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(x) for x in e["loc"]) or "manifest"
        msg = e["msg"].removeprefix("Value error, ")
        raise BundleError(f"{where}: {loc}: {msg}; re-export the bundle") from None
    shape = parsed.model.shape
    if parsed.preprocessing.size != shape.image_size:
        raise BundleError(f"{where}: preprocessing.size: {parsed.preprocessing.size} differs from the model's "
                          f"image_size {shape.image_size}; re-export the bundle")
    for name, token in parsed.generation.model_dump(exclude_none=True).items():
        if name.endswith("token_id") and token >= shape.vocab_size:  # past the logits: an IndexError mid-decode
            raise BundleError(f"{where}: generation.{name}: {token} is not a token of this model's "
                              f"{shape.vocab_size}-token vocabulary; re-export the bundle")


def _inside(rel: str) -> str:
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise ValueError(f"must be a path inside the bundle (got {rel!r})")
    return rel


def _early_stopping(value):
    if isinstance(value, bool) or value == "never":
        return value
    raise ValueError(f"must be true, false or \"never\" (got {value!r})")


# Strict: the runtime reads the manifest's own values, so "3" may not pass for 3 here and fail later.
_InsidePath = Annotated[str, AfterValidator(_inside)]
_Count = Annotated[int, Field(gt=0)]
_TokenId = Annotated[int, Field(ge=0)]
_Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


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
    size: _Count
    mean: list[_Finite] = Field(min_length=1)
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(min_length=1)


def _shape_model() -> type[BaseModel]:
    """ModelShape's fields, each required (a missing one must not fall back to florence2-base's value): counts,
    or lists of counts for the per-stage vision fields."""
    from pydantic import create_model

    from tiercel.models.presets import ModelShape

    return create_model("_Shape", __base__=_Part, **{
        f.name: (list[_Count] if isinstance(f.default, tuple) else _Count, ...) for f in fields(ModelShape)})


class _Model(_Part):
    shape: _shape_model()
    decoder_layers: _Count
    attention_heads: _Count


class _Generation(_Part):
    """GenerationConfig's fields as JSON holds them; a missing one keeps GenerationConfig's default."""

    model_config = ConfigDict(extra="forbid", strict=True)

    decoder_start_token_id: _TokenId = None
    bos_token_id: _TokenId = None
    eos_token_id: _TokenId = None
    pad_token_id: _TokenId = None
    forced_bos_token_id: _TokenId | None = None
    forced_eos_token_id: _TokenId | None = None
    num_beams: Annotated[int, Field(ge=1, le=MAX_BEAMS)] = None
    no_repeat_ngram_size: Annotated[int, Field(ge=0)] = None
    max_new_tokens: _Count = None
    length_penalty: Annotated[float, Field(ge=-10, le=10)] = None  # used 0.5..2; length ** 1e300 overflows
    early_stopping: Annotated[object, AfterValidator(_early_stopping)] = None

    @model_validator(mode="before")
    @classmethod
    def _known(cls, value):
        known = {f.name for f in fields(GenerationConfig)}
        unknown = sorted(set(value) - known) if isinstance(value, dict) else []
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return value


class _Manifest(_Part):
    """The parts of a manifest the runtime reads (export/bundle.py writes them all)."""

    model: _Model
    preprocessing: _Preprocessing
    tokenizer: _Tokenizer
    generation: _Generation
    graphs: list[_Graph] = Field(min_length=1)
