"""The real `tiercel` command: help, version, info, convert, and one-line errors with exit code 1."""

import json

import pytest

from tests.conftest import run_cli
from tiercel import __version__


def test_help_lists_the_verbs():
    out = run_cli("--help")
    assert out.returncode == 0
    for verb in ("info", "convert"):
        assert verb in out.stdout


def test_help_shows_json_examples_whole():
    """Brackets in help texts are JSON, not Rich markup: `[x1,y1,x2,y2]` used to vanish from `run --help`."""
    out = run_cli("run", "--help", env={"COLUMNS": "200"})
    assert out.returncode == 0 and "[x1,y1,x2,y2], or [[x,y],...]" in out.stdout


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"tiercel {__version__}"


def test_info_florence2_base_json():
    out = run_cli("info", "florence2-base", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert abs(report["params"]["total"] - 231.4e6) / 231.4e6 < 0.005
    assert report["image_tokens"] == 577
    assert set(report["size_bytes"]) == {"fp32", "fp16", "int8", "int4"}
    assert report["size_bytes"]["fp32"] == 4 * report["params"]["total"]
    decoder = report["decoder_bytes_per_token"]["fp32"]
    # decoder reads: 6 decoder layers + the tied 51290 x 768 lm_head, in fp32
    assert decoder["weights"] == 4 * (report["params"]["text_decoder"] + 51290 * 768)
    # int4: 4.5 bits a weight, but the tied lm_head / token table at 8.5 (kept int8, as tiercel quantize does)
    head = 51290 * 768  # the tied lm_head is the token table
    int4 = report["decoder_bytes_per_token"]["int4"]["weights"]
    assert int4 == pytest.approx(4.5 / 8 * report["params"]["text_decoder"] + 8.5 / 8 * head)
    assert report["size_bytes"]["int4"] == pytest.approx(4.5 / 8 * (report["params"]["total"] - head) + 8.5 / 8 * head)
    assert report["vision_gflops"] > 100


def test_info_table_shows_components():
    out = run_cli("info", "florence2-base")
    assert out.returncode == 0
    assert "231.4M parameters" in out.stdout and "text_decoder" in out.stdout


def test_unknown_target_is_one_line_exit_1():
    out = run_cli("info", "florence3")
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0
    assert out.stderr.startswith("error: 'florence3' is neither a preset")


def test_debug_env_shows_traceback():
    out = run_cli("info", "florence3", env={"TIERCEL_DEBUG": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_convert_cli(tmp_path, tiny_model, tiny_tokenizer):
    pytest.importorskip("torch")
    from tiercel.models.writer import save_original

    save_original(tiny_model, tiny_tokenizer, tmp_path / "orig")
    out = run_cli("convert", str(tmp_path / "orig"), str(tmp_path / "native"))
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout and "(tiny," in out.stdout
    assert {"model.safetensors", "config.json", "tokenizer.json", "tiercel.json", "preprocessor_config.json"} <= {
        p.name for p in (tmp_path / "native").iterdir()
    }
    again = run_cli("convert", str(tmp_path / "orig"), str(tmp_path / "native"))
    assert again.returncode == 1 and "already exists" in again.stderr
    info = run_cli("info", str(tmp_path / "native"), "--json")
    assert json.loads(info.stdout)["shape"]["image_size"] == 64
