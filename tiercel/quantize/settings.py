"""Quantize settings, declared once: the CLI options, the recipe's `quantize` section and `quantize_bundle`'s
arguments all come from `QuantizeSettings` (one set of defaults; the CLI help is the field descriptions).

Also the registry of quantization targets (what each backend reads and which runtime backend runs its output).
Data paths (calibration file, image root, val file) are inputs, not settings, so they are not here.
No onnx, nncf or torch: the recipe validates against this module before any work starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tiercel.errors import ConfigError, choose
from tiercel.quantize.schemes import BLOCK_SIZES, GRAPH_ROLES, SCHEMES, has_int4, leaves


@dataclass(frozen=True)
class TargetSpec:
    """What a quantization backend reads from the bundle, writes, and which runtime backend runs the result."""

    name: str
    reads: str  # source backend in the fp32 bundle
    runs: str  # tiercel.runtime backend of the output
    schemes: tuple[str, ...]  # schemes it can produce
    help: str


TARGETS: dict[str, TargetSpec] = {
    "onnxruntime": TargetSpec("onnxruntime", "onnxruntime", "onnxruntime",
                              ("int8-static", "int8-dynamic", "int8-weight-only", "int4-weight-only", "mixed"),
                              "onnxruntime.quantization"),
    "openvino": TargetSpec("openvino", "openvino", "openvino",
                           ("int8-static", "int8-dynamic", "int8-weight-only", "int4-weight-only", "mixed"),
                           "NNCF on OpenVINO IR"),
    "tensorrt": TargetSpec("tensorrt", "onnxruntime", "onnxruntime", ("int8-static",),
                           "explicit Q/DQ ONNX (symmetric int8) for TensorRT INT8 engines"),
}


class QuantizeOptions(BaseModel):
    """Every quantize setting but the scheme: the recipe's `quantize` section is these plus a list of schemes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    backend: str = Field("onnxruntime", description="; ".join(f"{t.name}: {t.help}" for t in TARGETS.values()) + ".")
    n: int = Field(128, gt=0, le=1_000_000, description="Calibration samples; decoder steps are thinned to this many feeds per graph.")
    max_drop: float = Field(0.01, ge=0, le=1, description="Largest relative drop of the 14-task average allowed on the val split.")
    max_task_drop: float | None = Field(None, ge=0, le=1, description="Also refuse when some task's relative drop is resolved over this: the low end of its paired-bootstrap interval, "
                                                        "1 - confidence shared over the tasks (default: max_drop's value; 1: no per-task floor).")
    n_val: int = Field(224, ge=0, le=1_000_000, description="Val samples the guard compares on, balanced over tasks (224: 16 per task; 0: no guard).")
    n_val_max: int = Field(0, ge=0, le=1_000_000, description="Grow the guard's val sample, doubling it up to this many, when only the upper bound missed (the point drop was within max drop); "
                                            "each look then takes an equal share of 1 - confidence (0: no growth).")
    min_agreement: float = Field(0.0, ge=0, le=1, description="Also require this greedy token agreement with fp32 (0..1).")
    confidence: float = Field(0.9, ge=0, lt=1, description="The guard holds when this quantile of the paired-bootstrap drop is within max_drop (0: the point drop decides).")
    block_size: int | None = Field(None, description=f"weight-only block size: {', '.join(map(str, BLOCK_SIZES))} (default {SCHEMES['int4-weight-only'].block_size} for int4, {SCHEMES['int8-weight-only'].block_size} for int8).")
    symmetric: bool | None = Field(None, description="int4 blocks symmetric (true) or with zero points (false); default: the scheme's.")
    policy: dict[str, str] | None = Field(None, description="With --scheme mixed: ROLE=SCHEME gives a graph role (vision, encoder, embeddings, decoder) its own "
                                              "leaf scheme; repeatable. Roles not named keep mixed's defaults (vision and encoder "
                                              "int8-static, embeddings int8-dynamic, decoder int4-weight-only).")
    all_layers: bool = Field(False, description="int4-weight-only: the token-embedding table and the lm_head in int4 too. Default: both in int8 blocks on either backend, "
                                                 "as NNCF keeps embeddings and the last layer (docs/quantize.md).")
    ratio: float = Field(1.0, ge=0, le=1, description="OpenVINO int4: share of layers in int4 (the rest int8).")
    max_new_tokens: int = Field(64, gt=0, le=65536, description="Tokens generated per sample when calibrating and guarding.")
    max_retries: int = Field(4, ge=0, le=64, description="Guard attempts that keep more layers in higher precision before giving up.")
    sensitivity: bool = Field(False, description="Write sensitivity.json (per-layer report) into the bundle.")
    engines: bool = Field(False, description="With backend tensorrt: also build INT8 TensorRT engines from the Q/DQ graphs (needs tensorrt and an NVIDIA GPU).")

    @field_validator("backend")
    @classmethod
    def _backend(cls, name):
        return choose("quantization backend", name, TARGETS)

    @field_validator("block_size")
    @classmethod
    def _block(cls, size):
        if size is not None and size not in BLOCK_SIZES:
            raise ValueError(f"must be one of {', '.join(map(str, BLOCK_SIZES))}")
        return size

    @field_validator("policy")
    @classmethod
    def _policy(cls, policy):
        roles = sorted(set(GRAPH_ROLES.values()))
        for role, leaf in (policy or {}).items():
            if role not in roles:
                raise ValueError(f"unknown graph role '{role}'; roles: {', '.join(roles)}")
            if leaf not in SCHEMES or SCHEMES[leaf].kind == "mixed":
                raise ValueError(f"'{leaf}' is not a leaf scheme; choose one of: {', '.join(leaves())}")
        return policy

    @model_validator(mode="after")
    def _engines(self):
        if self.engines and self.backend != "tensorrt":
            raise ValueError(f"{{engines}} builds TensorRT engines, so it needs {{backend}} tensorrt (got {self.backend})")
        return self

    @property
    def task_floor(self) -> float:
        """The per-task floor the guard checks: max_task_drop, or max_drop where it is not set."""
        return self.max_drop if self.max_task_drop is None else self.max_task_drop

    @property
    def target(self) -> TargetSpec:
        return TARGETS[self.backend]

    def check_int4_options(self, schemes: list[str]) -> None:
        """ValueError when all_layers is set and none of `schemes` writes an int4 graph (it would change nothing)."""
        if self.all_layers and not any(has_int4(s, self.policy) for s in schemes):
            raise ValueError(f"{{all_layers}} puts int4's lm_head and embedding table in int4 too; it applies to "
                             f"int4-weight-only or a mixed policy with an int4 role (got {', '.join(schemes)})")

    def check_scheme(self, scheme: str) -> None:
        """ValueError unless this backend can make `scheme` with these options."""
        known_scheme(scheme)
        if scheme not in self.target.schemes:
            raise ValueError(f"{{backend}} {self.backend}: supports {', '.join(self.target.schemes)} (got {{scheme}} {scheme})")
        if self.policy and SCHEMES[scheme].kind != "mixed":
            raise ValueError(f"a per-graph {{policy}} needs {{scheme}} mixed (got {scheme})")


class QuantizeSettings(QuantizeOptions):
    """How one quantized bundle is made. Every default here is the default everywhere."""

    scheme: str = Field("int8-static", description=", ".join(n for n in SCHEMES if n != "fp32") + " (tiercel.quantize.SCHEMES).")

    @field_validator("scheme")
    @classmethod
    def _known(cls, name):
        return known_scheme(name)

    @model_validator(mode="after")
    def _scheme(self):
        self.check_scheme(self.scheme)
        self.check_int4_options([self.scheme])
        return self


def known_scheme(name: str) -> str:
    if name not in SCHEMES or name == "fp32":
        raise ValueError(f"unknown quantization scheme '{name}'; choose one of: "
                         f"{', '.join(n for n in SCHEMES if n != 'fp32')}")
    return name


def named(message: str, name=lambda field: field) -> str:
    """A validator's message with each {field} written as `name(field)`: "--max-drop" on the CLI,
    "quantize.max_drop" in a recipe."""
    return re.sub(r"\{(\w+)\}", lambda m: name(m.group(1)), message)


def settings(base: QuantizeSettings | None = None, option=lambda name: name, **changes) -> QuantizeSettings:
    """`base` (default: the defaults) with `changes` applied and checked; ConfigError (one line, the field named
    by `option(field)`, e.g. "--max-drop" on the CLI) when a value is wrong."""
    data = {**(base.model_dump() if base else {}), **{k: v for k, v in changes.items() if v is not None}}
    try:
        return QuantizeSettings.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a rule between fields: the message names them
            raise ConfigError(named(msg, option)) from None
        got = e.get("input")
        shown = "" if e["type"] == "extra_forbidden" or isinstance(got, dict) or f"'{got}'" in msg else f" (got {got!r})"
        raise ConfigError(f"{option(str(e['loc'][0]))}: {msg}{shown}") from None
