"""Schemes as data: names, the mixed policy per graph, and one-line errors for bad choices."""

from __future__ import annotations

import pytest

from tiercel.errors import ConfigError
from tiercel.quantize.schemes import SCHEMES, get_scheme, plan

GRAPHS = ("vision_encoder", "embed_tokens", "encoder_model", "decoder_model", "decoder_with_past_model")


def test_unknown_scheme_lists_the_valid_names_in_one_line():
    with pytest.raises(ConfigError) as err:
        get_scheme("int3-magic")
    msg = str(err.value)
    assert "\n" not in msg and "int3-magic" in msg
    assert all(name in msg for name in ("int8-static", "int8-dynamic", "int4-weight-only", "mixed"))


def test_mixed_policy_gives_each_graph_its_leaf_scheme():
    leaves = plan(get_scheme("mixed"), GRAPHS)
    assert {g: s.name for g, s in leaves.items()} == {
        "vision_encoder": "int8-static", "embed_tokens": "int8-dynamic", "encoder_model": "int8-static",
        "decoder_model": "int4-weight-only", "decoder_with_past_model": "int4-weight-only"}
    leaves = plan(get_scheme("mixed", policy={"decoder": "int8-dynamic", "embeddings": "fp32"}), GRAPHS, block_size=64)
    assert leaves["decoder_model"].name == "int8-dynamic" and leaves["embed_tokens"].kind == "keep"


def test_int4_block_size_and_symmetry_are_part_of_the_spec():
    spec = get_scheme("int4-weight-only", block_size=128, symmetric=False)
    assert (spec.bits, spec.block_size, spec.symmetric) == (4, 128, False)
    assert SCHEMES["int4-weight-only"].block_size == 32  # the registry itself is not changed
    with pytest.raises(ConfigError, match="must be one of 32, 64, 128"):
        get_scheme("int4-weight-only", block_size=48)
    with pytest.raises(ConfigError, match="unknown graph role"):
        get_scheme("mixed", policy={"lm_head": "int8-static"})
