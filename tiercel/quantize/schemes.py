"""Quantisation schemes as data: one small spec per scheme, a registry, and the per-graph plan they imply.

A leaf scheme says how ONE graph is quantised (`int8-static`, `int8-dynamic`, `int4-weight-only`, `fp32`);
`mixed` is a policy that gives each graph of a bundle its own leaf. What a leaf means for the token-embedding
graph (a single Gather) is spelt out here too: int8 schemes store the table as int8 rows, int4 as blocks of
the same size the decoder's lm_head uses, so the tied matrix gets the same grid in both graphs. Under int4 both
the table and the lm_head are int8 blocks unless `all_layers` is set, as NNCF keeps embeddings and the last layer
in int8: on the fidelity student the int4 lm_head alone took the guard's first-attempt val drop from 5.05% to
12.95% (benchmarks/results/guard_retries.md).

This module knows no onnx or nncf; the backends (onnx_backend.py, openvino_backend.py) read these specs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from tiercel.errors import ConfigError

BLOCK_SIZES = (32, 64, 128)
GRAPH_ROLES = {  # graph name -> role; the mixed policy is written per role
    "vision_encoder": "vision", "embed_tokens": "embeddings", "encoder_model": "encoder",
    "decoder_model": "decoder", "decoder_with_past_model": "decoder", "decoder_model_merged": "decoder",
}  # fmt: skip


@dataclass(frozen=True)
class SchemeSpec:
    """How one graph is quantised.

    kind: "static" (weights and activations int8, activation ranges calibrated), "dynamic" (int8 weights,
    activations quantised at run time), "weight-only" (int4 blocks, fp32 compute or int8 compute where the
    kernel allows), "keep" (fp32, untouched) or "mixed" (a policy of leaf scheme names per graph role).
    """

    name: str
    kind: str
    bits: int = 8
    per_channel: bool = True
    symmetric: bool = True
    block_size: int | None = None
    calibrated: bool = False  # needs calibration data (activation ranges, or AWQ / scale estimation)
    policy: dict = field(default_factory=dict)  # mixed only: role -> leaf scheme name
    all_layers: bool = False  # int4 only: the embedding table and the lm_head in int4 too (else int8 blocks)
    help: str = ""

    @property
    def int4(self) -> bool:
        return self.kind == "weight-only" and self.bits == 4

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if k != "help" and v not in ({}, None) and (k != "all_layers" or self.int4)}


SCHEMES: dict[str, SchemeSpec] = {
    "int8-static": SchemeSpec("int8-static", "static", calibrated=True,
                              help="QDQ int8: per-channel symmetric weights, activation ranges from calibration"),
    "int8-dynamic": SchemeSpec("int8-dynamic", "dynamic", help="int8 weights per channel, activations quantised per call"),
    "int4-weight-only": SchemeSpec("int4-weight-only", "weight-only", bits=4, per_channel=False, block_size=32,
                                   calibrated=True,
                                   help="MatMulNBits int4 blocks (32/64/128), symmetric or not; fp32 activations; "
                                        "with --calib GPTQ (onnxruntime) or AWQ + scale estimation (NNCF)"),
    "int8-weight-only": SchemeSpec("int8-weight-only", "weight-only", bits=8, per_channel=False, block_size=128,
                                   help="int8 weights in blocks (onnxruntime MatMulNBits, activations int8 per row at "
                                        "run time; OpenVINO: NNCF INT8 weights); no calibration; the fastest int8 "
                                        "decoder at one row"),
    "mixed": SchemeSpec("mixed", "mixed", calibrated=True,
                        policy={"vision": "int8-static", "encoder": "int8-static", "embeddings": "int8-dynamic",
                                "decoder": "int4-weight-only"},
                        help="per graph: vision and text encoder int8-static, embeddings int8, decoder int4"),
    "fp32": SchemeSpec("fp32", "keep", bits=32, per_channel=False, help="leave the graph as it is"),
}


def get_scheme(name: str, block_size: int | None = None, symmetric: bool | None = None,
               policy: dict | None = None, all_layers: bool | None = None) -> SchemeSpec:
    """The spec of `name`, with the int4 block size / symmetry / all_layers and the mixed policy overridden when
    given."""
    if name not in SCHEMES:
        raise ConfigError(f"unknown quantization scheme '{name}'; choose one of: {', '.join(SCHEMES)}")
    spec = SCHEMES[name]
    if block_size is not None:
        if block_size not in BLOCK_SIZES:
            raise ConfigError(f"--block-size: must be one of {', '.join(map(str, BLOCK_SIZES))} (got {block_size})")
        if spec.kind == "weight-only":
            spec = replace(spec, block_size=block_size)
    if symmetric is not None and spec.kind == "weight-only":
        if spec.bits == 8 and not symmetric:
            raise ConfigError("--asymmetric: int8-weight-only blocks are symmetric (255 levels, no zero points to "
                              "store); it applies to int4-weight-only")
        spec = replace(spec, symmetric=symmetric)
    if all_layers is not None and spec.int4:
        spec = replace(spec, all_layers=all_layers)
    if policy:
        if spec.kind != "mixed":
            raise ConfigError(f"a per-graph policy needs --scheme mixed (got {name})")
        bad = sorted(set(policy) - set(GRAPH_ROLES.values()))
        if bad:
            raise ConfigError(f"policy: unknown graph role '{bad[0]}'; roles: {', '.join(sorted(set(GRAPH_ROLES.values())))}")
        spec = replace(spec, policy={**spec.policy, **policy})
    return spec


def plan(spec: SchemeSpec, graphs, block_size: int | None = None, symmetric: bool | None = None,
         all_layers: bool | None = None) -> dict[str, SchemeSpec]:
    """{graph name: leaf spec} for the graphs of a bundle under `spec` (mixed expands its policy)."""
    out = {}
    for graph in graphs:
        if spec.kind != "mixed":
            out[graph] = spec
            continue
        leaf = spec.policy.get(GRAPH_ROLES.get(graph, ""), "fp32")
        if SCHEMES.get(leaf) is None or SCHEMES[leaf].kind == "mixed":
            raise ConfigError(f"policy: '{leaf}' is not a leaf scheme; choose one of: "
                              f"{', '.join(leaves())}")
        out[graph] = get_scheme(leaf, block_size=block_size, symmetric=symmetric if SCHEMES[leaf].bits == 4 else None,
                                all_layers=all_layers)
    return out


def as_written(leaves: dict[str, SchemeSpec], target: str, block_size: int | None) -> dict[str, SchemeSpec]:
    """The leaves as `target` writes them: NNCF compresses int8 weights per output channel (it has no int8
    groups), so OpenVINO's int8-weight-only records per-channel, and a --block-size for it is refused rather than
    ignored."""
    if target != "openvino":
        return leaves
    int8 = {g for g, leaf in leaves.items() if leaf.kind == "weight-only" and leaf.bits == 8}
    if int8 and block_size is not None and not any(leaf.bits == 4 for leaf in leaves.values()):
        raise ConfigError("--block-size: OpenVINO compresses int8-weight-only per output channel (NNCF has no int8 "
                          "blocks); leave it out, or quantize with --backend onnxruntime for blocks")
    return {g: replace(leaf, per_channel=True, block_size=None) if g in int8 else leaf for g, leaf in leaves.items()}


def has_int4(name: str, policy: dict | None = None) -> bool:
    """Whether scheme `name` (a mixed one with `policy` over its defaults) writes any int4-weight-only graph."""
    spec = SCHEMES.get(name)
    if spec is None or spec.kind != "mixed":
        return spec is not None and spec.int4
    return any(SCHEMES[leaf].int4 for leaf in {**spec.policy, **(policy or {})}.values() if leaf in SCHEMES)


def leaves() -> list[str]:
    """The leaf schemes: those a mixed policy may give a graph."""
    return [n for n, s in SCHEMES.items() if s.kind != "mixed"]


def needs_calibration(leaves: dict[str, SchemeSpec]) -> bool:
    return any(s.calibrated for s in leaves.values())
