"""Schemes as data: names, the mixed policy per graph, and one-line errors for bad choices."""

from __future__ import annotations

import pytest

from tiercel.errors import ConfigError
from tiercel.quantize.schemes import SCHEMES, as_written, get_scheme, has_int4, plan

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


def test_int8_weight_only_is_symmetric_and_refuses_asymmetric():
    with pytest.raises(ConfigError, match=r"^--asymmetric: int8-weight-only blocks are symmetric \(255 levels, no zero "
                                          r"points to store\); it applies to int4-weight-only$"):
        get_scheme("int8-weight-only", symmetric=False)
    # a mixed policy with an int8 and an int4 leaf: --asymmetric is for the int4 one
    leaves = plan(get_scheme("mixed", policy={"encoder": "int8-weight-only"}), GRAPHS, symmetric=False)
    assert leaves["encoder_model"].symmetric and not leaves["decoder_model"].symmetric


def test_openvino_records_int8_weight_only_per_channel_and_refuses_a_block_size():
    leaves = plan(get_scheme("int8-weight-only"), GRAPHS)
    assert {leaf.block_size for leaf in leaves.values()} == {128}  # onnxruntime: MatMulNBits blocks
    written = as_written(leaves, "openvino", None)
    assert {(leaf.per_channel, leaf.block_size) for leaf in written.values()} == {(True, None)}
    assert as_written(leaves, "onnxruntime", None) == leaves
    with pytest.raises(ConfigError, match=r"^--block-size: OpenVINO compresses int8-weight-only per output channel"):
        as_written(plan(get_scheme("int8-weight-only", block_size=64), GRAPHS, block_size=64), "openvino", 64)
    mixed = plan(get_scheme("mixed", policy={"encoder": "int8-weight-only"}), GRAPHS, block_size=64)
    assert as_written(mixed, "openvino", 64)["decoder_model"].block_size == 64  # for the int4 leaf


def test_all_layers_reaches_int4_leaves_only_and_is_refused_where_nothing_is_int4():
    from tiercel.quantize.settings import settings

    leaves = plan(get_scheme("mixed", all_layers=True), GRAPHS, all_layers=True)
    assert {g: leaf.all_layers for g, leaf in leaves.items() if leaf.int4} == {"decoder_model": True,
                                                                               "decoder_with_past_model": True}
    assert not any(leaf.all_layers for leaf in leaves.values() if not leaf.int4)
    assert "all_layers" not in leaves["vision_encoder"].to_dict() and leaves["decoder_model"].to_dict()["all_layers"]
    assert has_int4("int4-weight-only") and has_int4("mixed") and not has_int4("int8-static")
    assert not has_int4("mixed", {"decoder": "int8-weight-only"})
    with pytest.raises(ConfigError, match=r"^--all-layers puts int4's lm_head and embedding table in int4 too; it "
                                          r"applies to int4-weight-only or a mixed policy with an int4 role \(got mixed\)$"):
        settings(option=lambda f: f"--{f.replace('_', '-')}", scheme="mixed", all_layers=True,
                 policy={"decoder": "int8-weight-only"})
