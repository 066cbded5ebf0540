"""Device estimates: the formula on hand-made numbers, the presets as data, and --device-spec files."""

from __future__ import annotations

import json

import pytest

from tiercel.errors import ConfigError
from tiercel.runtime.profile.devices import DEVICES, DeviceSpec, estimate, load_device_specs, stage_seconds
from tiercel.runtime.profile.roofline import StageWork

BOARD = DeviceSpec("board", bandwidth_gbs=100.0, peak_tflops={"fp32": 1.0, "fp16": 10.0, "int8": 20.0},
                   mem_efficiency=0.5, compute_efficiency=0.25)


def test_stage_estimate_is_the_larger_of_memory_and_compute_time():
    # 100 MB at 100 GB/s x 0.5 = 2 ms; 1 GFLOP at 10 TFLOPS x 0.25 = 0.4 ms -> memory bound, 2 ms
    assert stage_seconds(1e9, 100e6, BOARD, "fp16") == pytest.approx(2e-3)
    # 100 GFLOP in fp32: 1 TFLOPS x 0.25 -> 0.4 s; int8 graphs use the int8 peak, int4 weight-only computes in fp16
    assert stage_seconds(100e9, 1e6, BOARD, "fp32") == pytest.approx(0.4)
    assert stage_seconds(100e9, 1e6, BOARD, "int8-static") == pytest.approx(100e9 / (20e12 * 0.25))
    assert stage_seconds(100e9, 1e6, BOARD, "int4-weight-only") == pytest.approx(100e9 / (10e12 * 0.25))


def test_estimate_of_a_whole_generation():
    work = {"vision_encoder": StageWork(100e9, 1e6, "fp16"), "text_encoder": StageWork(10e9, 1e6, "fp16"),
            "first_token": StageWork(1e9, 100e6, "fp16"), "decode_token": StageWork(1e6, 50e6, "fp16")}
    e = estimate(work, BOARD, new_tokens=11)
    assert e["estimate"] is True
    assert e["per_image_ms"] == pytest.approx(40 + 4 + 2)  # 100 GFLOP/2.5 TFLOPS, 10/2.5, 100 MB/50 GB/s
    assert e["per_token_ms"] == pytest.approx(1.0)  # 50 MB / 50 GB/s
    assert e["task_ms"] == pytest.approx(46 + 10 * 1.0)
    assert e["tokens_per_s"] == pytest.approx(1000)


def test_jetson_presets_carry_the_published_bandwidths():
    bw = {k: d.bandwidth_gbs for k, d in DEVICES.items()}
    assert bw == {"orin-nano-8gb": 68.0, "orin-nano-8gb-super": 102.0, "orin-nx-16gb": 102.4, "agx-orin-64gb": 204.8}
    assert all(d.peak_tflops["fp16"] > d.peak_tflops["fp32"] for d in DEVICES.values())
    assert all(d.unverified for d in DEVICES.values())  # derived compute peaks are marked


def test_device_spec_files_yaml_json_and_lists(tmp_path):
    (tmp_path / "one.yaml").write_text("name: My Board\nbandwidth_gbs: 51.2\npeak_tflops: {fp16: 4}\nmem_efficiency: 0.8\n")
    specs = load_device_specs(tmp_path / "one.yaml")
    assert list(specs) == ["my-board"] and specs["my-board"].mem_efficiency == 0.8
    many = {"a": {"name": "A", "bandwidth_gbs": 10, "peak_tflops": {"fp32": 1}},
            "b": {"name": "B", "bandwidth_gbs": 20, "peak_tflops": {"int8": 2}}}
    (tmp_path / "many.json").write_text(json.dumps(many))
    assert sorted(load_device_specs(tmp_path / "many.json")) == ["a", "b"]
    (tmp_path / "list.yaml").write_text("- {name: C, bandwidth_gbs: 5, peak_tflops: {fp16: 1}}\n")
    assert list(load_device_specs(tmp_path / "list.yaml")) == ["c"]


@pytest.mark.parametrize("text, message", [
    ("name: X\nbandwidth_gbs: -1\npeak_tflops: {fp16: 1}\n", "bandwidth_gbs: must be a number > 0 (got -1)"),
    ("name: X\nbandwidth_gbs: 5\npeak_tflops: {fp64: 1}\n", "unknown precision 'fp64'"),
    ("name: X\nbandwidth_gbs: 5\npeak_tflops: {fp16: 1}\ncompute_efficiency: 2\n", "compute_efficiency: must be a number in (0, 1]"),
    ("name: X\nbandwith_gbs: 5\n", "unknown field 'bandwith_gbs'"),
    ("[unclosed\n", "not valid YAML"),
])
def test_device_spec_errors_are_one_line(tmp_path, text, message):
    f = tmp_path / "dev.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_device_specs(f)
    assert message in str(err.value) and "\n" not in str(err.value)
