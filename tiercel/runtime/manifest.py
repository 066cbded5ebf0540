"""The bundle manifest (manifest.json), the contract between export, quantize and the runtime (DESIGN.md, "The
bundle"): one typed model, read and written only here, with a format version.

Strict where the runtime reads values: "3" may not pass for 3 here and fail later. Unknown keys are kept (a
newer tiercel or another tool may add some); a newer format_version is refused with what to do.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tiercel.errors import BundleError, ConfigError
from tiercel.fileio import read_json_object, write_json
from tiercel.runtime.generate import MAX_BEAMS, GenerationConfig
from tiercel.runtime.shape import ModelShape

MANIFEST = "manifest.json"
FORMAT = "tiercel-bundle"
FORMAT_VERSION = 1
GRAPHS = ("vision_encoder", "embed_tokens", "encoder_model")
DECODERS = {"merged": ("decoder_model_merged",), "split": ("decoder_model", "decoder_with_past_model")}


def read_manifest(file: Path) -> Manifest:
    """The manifest at `file`, checked; BundleError names the first problem in one line."""
    data = read_json_object(file, BundleError, "re-export the bundle")
    if data.get("format") != FORMAT:
        raise BundleError(f"{file}: not a tiercel bundle manifest (format {data.get('format')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{file}: format version {data.get('format_version')} is not supported by this tiercel "
                          f"(reads {FORMAT_VERSION}); re-export the bundle or upgrade tiercel")
    if not isinstance(data.get("decoder"), str) or data["decoder"] not in DECODERS:
        raise BundleError(f"{file}: decoder must be one of {', '.join(DECODERS)} (got {data.get('decoder')!r})")
    return check_manifest(data, file)


def write_manifest(folder: Path, manifest: Manifest | dict) -> Manifest:
    """Check `manifest` as read_manifest would and write it to folder/manifest.json; returns what was written."""
    data = manifest.model_dump(mode="json", exclude_unset=False) if isinstance(manifest, Manifest) else manifest
    checked = check_manifest(json.loads(json.dumps(data)), folder / MANIFEST)
    write_json(folder / MANIFEST, checked.model_dump(mode="json"))
    return checked


def check_manifest(manifest: dict, where) -> Manifest:
    """The Manifest of `manifest` (parsed JSON); BundleError (one line: the first wrong field) unless it has every
    part, of the right JSON type and range, with every file inside the bundle and every token id inside the
    vocabulary."""
    from pydantic import ValidationError

    try:
        parsed = Manifest.model_validate(manifest)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(x) for x in e["loc"]) or "manifest"
        msg = e["msg"].removeprefix("Value error, ")
        raise BundleError(f"{where}: {loc}: {msg}; re-export the bundle") from None
    shape = parsed.model.shape
    try:  # sizes a model could never have (an image side of 200000) fail here, not in an allocation
        ModelShape(**{k: tuple(v) if isinstance(v, list) else v for k, v in shape.model_dump().items()}).check("model.shape")
    except ConfigError as err:
        raise BundleError(f"{where}: {err}; re-export the bundle") from None
    if parsed.preprocessing.size != shape.image_size:
        raise BundleError(f"{where}: preprocessing.size: {parsed.preprocessing.size} differs from the model's "
                          f"image_size {shape.image_size}; re-export the bundle")
    for name, token in parsed.generation.model_dump(exclude_none=True).items():
        if name.endswith("token_id") and token >= shape.vocab_size:  # past the logits: an IndexError mid-decode
            raise BundleError(f"{where}: generation.{name}: {token} is not a token of this model's "
                              f"{shape.vocab_size}-token vocabulary; re-export the bundle")
    return parsed


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


class EngineInfo(_Part):
    """Where a TensorRT engine was built, and how: an engine runs only on the TensorRT version and GPU that
    built it (tiercel.runtime.tensorrt.check_engines compares these with the machine that loads it)."""

    tensorrt: str
    gpu: str
    compute_capability: str
    max_batch: _Count  # rows of the text graphs' profiles (the vision graph's: vision_batch)
    vision_batch: _Count
    profiles: _Count
    built: str = ""  # ISO date
    parity: dict = {}  # against the ONNX graph it was built from (tiercel.export.tensorrt.engine_parity)


class GraphEntry(_Part):
    name: str
    backend: str
    file: _InsidePath
    sha256: str
    extra_files: dict[_InsidePath, str] = {}
    precision: str = "fp32"  # fp32, fp16, int8-static, int4-weight-only, ... (quantize: the leaf scheme)
    inputs: list[str] = []
    outputs: list[str] = []
    quantization: dict | None = None  # quantize: the leaf scheme, its layers and the ones kept back
    engine: EngineInfo | None = None  # TensorRT engines: where they were built


class TokenizerEntry(_Part):
    file: _InsidePath
    sha256: str
    image_token_id: _TokenId | None = None
    vocab_size: _Count | None = None


class Preprocessing(_Part):
    size: _Count
    resize: str = "bicubic, square, aspect ratio not kept"
    rescale: _Finite = 1 / 255
    mean: list[_Finite] = Field(min_length=3, max_length=3)  # one per RGB channel
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(min_length=3, max_length=3)


def _shape_model() -> type[BaseModel]:
    """ModelShape's fields, each required (a missing one must not fall back to florence2-base's value): counts,
    or lists of counts for the per-stage vision fields."""
    from pydantic import create_model

    from tiercel.runtime.shape import ModelShape

    return create_model("_Shape", __base__=_Part, **{
        f.name: (list[_Count] if isinstance(f.default, tuple) else _Count, ...) for f in fields(ModelShape)})


class ModelEntry(_Part):
    family: str = "florence2"
    preset: str | None = None
    shape: _shape_model()
    image_tokens: _Count
    d_model: _Count
    decoder_layers: _Count
    attention_heads: _Count

    @property
    def max_positions(self) -> int:
        return self.shape.max_text_positions


class Generation(_Part):
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


def _known_task(tag: str) -> str:
    from tiercel.tasks import TAGS

    if tag not in TAGS:
        raise ValueError(f"unknown task {tag!r}; known: {', '.join(TAGS)}")
    return tag


class Manifest(_Part):
    """A bundle's manifest.json. Written by export (fp32 bundles) and quantize (their quantized copies) through
    write_manifest, read by the runtime through read_bundle; nothing else reads the file."""

    format: Literal["tiercel-bundle"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    model: ModelEntry
    tasks: list[Annotated[str, AfterValidator(_known_task)]] = []
    dialect: Literal["falcon", "florence"] = "falcon"
    preprocessing: Preprocessing
    tokenizer: TokenizerEntry
    generation: Generation
    decoder: Literal["split", "merged"]
    cross_kv: Literal["per_row", "per_item"] = Field("per_row", description=(
        "what the decoder graphs' encoder inputs and cross-attention KV (encoder_hidden_states, "
        "encoder_attention_mask, past_key_values.*.encoder.*) hold: one row per decoder row (per_row: every "
        "beam its own copy; bundles written before the field) or one per item, shared by its beams (per_item)"))
    opset: int | None = None
    graphs: list[GraphEntry] = Field(min_length=1)
    parity: dict = {}  # export: per backend, the parity report (export/parity.py); {} after quantization
    quantization: QuantizationSection | None = None
    provenance: dict = {}  # source checkpoint, its sha256, tiercel version, dates

    @property
    def backends(self) -> list[str]:
        return sorted({g.backend for g in self.graphs})

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(**self.generation.model_dump(exclude_unset=True))


class GuardSection(_Part):
    """The accuracy guard's verdict (quantize/guard.py): quantized vs fp32 on the val samples."""

    model_config = ConfigDict(extra="allow", strict=False)

    run: bool
    reason: str | None = None  # why it did not run
    passed: bool | None = None
    max_drop: float | None = None
    min_agreement: float | None = None
    token_agreement: float | None = None
    fp32_average: float | None = None
    quantized_average: float | None = None
    drop: float | None = None
    drop_bound: float | None = None  # the `confidence` quantile of the bootstrapped drop
    confidence: float | None = None
    max_task_drop: float | None = None  # the per-task floor (None: not checked)
    task_misses: list[str] = []  # tasks whose drop was resolved over it
    samples: int | None = None
    per_task: dict = {}  # tag -> fp32, quantized, delta; with the floor also drop and drop_low
    attempts: list[dict] = []  # per attempt: layers kept back and the verdict
    caution: str | None = None


class QuantizationSection(_Part):
    """What quantize did (quantize/bundle.py): the scheme, per-graph precision, sizes, calibration, the guard."""

    model_config = ConfigDict(extra="allow", strict=False)

    scheme: str
    spec: dict
    backend: str
    runs_on: str
    graphs: dict[str, str]
    sizes: dict[str, dict]
    calibration: dict | None = None
    source: dict = {}
    excluded: dict[str, list[str]] = {}
    guard: GuardSection | None = None
    sensitivity: str | None = None


Manifest.model_rebuild()


def model_entry(shape, preset: str | None) -> ModelEntry:
    """The manifest's model part for a ModelShape (tiercel.runtime.shape)."""
    return ModelEntry.model_validate_json(json.dumps({
        "family": "florence2", "preset": preset, "shape": shape.to_dict(), "image_tokens": shape.image_tokens,
        "d_model": shape.d_model, "decoder_layers": shape.decoder_layers, "attention_heads": shape.attention_heads}))


def preprocessing(size: int, mean, std) -> Preprocessing:
    """The manifest's preprocessing part: bicubic square resize to `size`, rescale 1/255, then mean/std."""
    return Preprocessing.model_validate_json(json.dumps({"size": size, "mean": list(mean), "std": list(std)}))
