"""`--option` on onnxruntime: session config keys pass through, SessionOptions attributes are typed, the rest is refused."""

from __future__ import annotations

import pytest

ort = pytest.importorskip("onnxruntime")

from tiercel.errors import ConfigError  # noqa: E402
from tiercel.runtime.backends import _ort_options  # noqa: E402


def test_config_keys_and_attributes_reach_the_session_options():
    opts = ort.SessionOptions()
    _ort_options(ort, opts, {"session.intra_op.allow_spinning": "0", "graph_optimization_level": "disable_all",
                             "execution_mode": "ORT_PARALLEL", "enable_mem_pattern": "false",
                             "inter_op_num_threads": "3"})
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert opts.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert opts.enable_mem_pattern is False and opts.inter_op_num_threads == 3


@pytest.mark.parametrize("options, message", [
    ({"foo": "bar"}, "--option foo: onnxruntime has no such setting; give a session config key"),
    ({"enable_mem_pattern": "maybe"}, "--option enable_mem_pattern=maybe: expected 1, 0, true or false"),
    ({"inter_op_num_threads": "-2"}, "--option inter_op_num_threads=-2: expected a whole number >= 0"),
    ({"execution_order": "fastest"}, "--option execution_order=fastest: expected one of DEFAULT, PRIORITY_BASED"),
])
def test_a_setting_onnxruntime_would_ignore_is_refused(options, message):
    with pytest.raises(ConfigError) as err:
        _ort_options(ort, ort.SessionOptions(), options)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("machine, flags, saturates", [
    ("x86_64", {"sse4_1", "avx2", "fma"}, True),                   # AVX2 only (Zen 3): u8 x s8 adds in 16 bits
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, True),              # AVX512 without VNNI (Skylake-SP)
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, False),          # Zen 4, Cascade Lake
    ("x86_64", {"avx2", "avx_vnni"}, False),                        # Alder Lake
    ("x86_64", {"avx512_vnni", "amx_int8", "amx_tile"}, False),     # Sapphire Rapids
    ("AMD64", {"avx_vnni"}, False), ("AMD64", {"avx2"}, True),     # Windows names x86-64 so
    ("x86_64", None, True),                                         # flags unread: the exact path
    ("aarch64", None, False), ("arm64", {"asimd"}, False),          # Jetson, Apple
])
def test_exact_int8_products_only_where_u8_times_s8_saturates(machine, flags, saturates):
    from tiercel.runtime.backends import saturating_int8

    assert saturating_int8(machine, None if flags is None else frozenset(flags)) is saturates


def test_cpu_flags_are_read_from_the_flags_line(tmp_path):
    from tiercel.runtime.backends import cpu_flags, numpy_cpu_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 avx512_vnni amx_int8\nbugs\t: spectre\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512_vnni", "amx_int8"}
    info.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # ARM's /proc/cpuinfo has no flags line
    assert cpu_flags(str(info)) == numpy_cpu_flags()  # numpy's table stands in (no x86 flag on an ARM CPU)
    assert cpu_flags(str(tmp_path / "missing")) == numpy_cpu_flags()  # Windows, macOS


@pytest.mark.parametrize("features, flags, saturates", [
    ({"AVX2": True, "AVX512F": True, "AVX512VNNI": True, "AVX512BF16": False}, {"avx2", "avx512f", "avx512_vnni"},
     False),                                                         # a Windows laptop with Ice Lake
    ({"AVX2": True, "AVX512F": False, "AVX512VNNI": False}, {"avx2"}, True),  # Haswell: the exact path
    ({"NEON": True, "ASIMD": True}, None, True),                    # no x86 name at all: unknown, exact on x86
])
def test_numpy_features_stand_in_where_there_is_no_cpuinfo(features, flags, saturates):
    from tiercel.runtime.backends import numpy_cpu_flags, saturating_int8

    got = numpy_cpu_flags(features)
    assert got == (None if flags is None else frozenset(flags))
    assert saturating_int8("AMD64", got) is saturates


def test_numpy_features_are_read_from_this_numpy():
    from numpy._core._multiarray_umath import __cpu_features__

    from tiercel.runtime.backends import numpy_cpu_flags

    assert numpy_cpu_flags() == numpy_cpu_flags(dict(__cpu_features__))


def test_cpu_sessions_ask_for_exact_int8_products_unless_told_otherwise(tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    from tiercel.runtime.backends import OrtSession

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "g.onnx")

    def entry(options=None):  # the key's value in the session's options; "" where it is not set
        got = OrtSession(tmp_path / "g.onnx", options=options).session.get_session_options()
        try:
            return got.get_session_config_entry("session.x64quantprecision")
        except RuntimeError:  # onnxruntime: "does not have configuration with key"
            return ""

    from tiercel.runtime import backends

    monkeypatch.setattr(backends, "ORT_CPU_CONFIG", {"session.x64quantprecision": "1"})  # a CPU where u8 x s8 saturates
    assert entry() == "1"
    assert entry({"session.x64quantprecision": "0"}) == "0"  # --option turns it off
    monkeypatch.setattr(backends, "ORT_CPU_CONFIG", {})  # VNNI or AMX: the key would only slow int8 down
    assert entry() == ""
    assert entry({"session.x64quantprecision": "1"}) == "1"  # --option still turns it on
