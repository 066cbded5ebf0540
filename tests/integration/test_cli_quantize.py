"""The real CLI: `tiercel quantize` a tiny bundle on the synthetic benchmark, run the result, and one-line errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from tests.bundles import tiny_bundle
from tests.conftest import run_cli
from tests.quantize_data import synth_folder

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def test_quantize_then_run(tiny_model, tiny_tokenizer, tmp_path):
    bundle = tiny_bundle(tiny_model, tiny_tokenizer)
    out = run_cli("quantize", str(bundle), "--out", str(tmp_path / "q"), "--scheme", "int4-weight-only",
                  "--calib", str(synth_folder()), "--n", "3", "--n-val", "3", "--max-new-tokens", "6",
                  "--block-size", "64", "--sensitivity")
    assert out.returncode == 0, out.stderr
    assert "guard: token agreement" in out.stdout and "layer sensitivity" in out.stdout and "wrote" in out.stdout
    assert re.search(r"attempt\(s\), \d+ layers kept in (fp32|int8)", out.stdout)
    # 3 val samples: no task has the 8 the per-task floor needs, and the line says so rather than "none resolved"
    assert "guard per task: no task checked (each needs 8 val samples and an fp32 score above 0)" in out.stdout
    # every long step reports on stderr, the sensitivity ranking included (one line per bar when not a terminal)
    for bar in ("calibrate", "guard", "sensitivity"):
        assert re.search(rf"^\[{bar}\] \d+/\d+ \w+ in \d+ s", out.stderr, re.M), (bar, out.stderr)
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["quantization"]["spec"]["block_size"] == 64
    assert (tmp_path / "q" / "sensitivity.json").is_file()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    run = run_cli("run", str(tmp_path / "q"), "--image", str(tmp_path / "a.png"), "--task", "IMG_CAP", "--max-new-tokens", "4")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["type"] == "caption"


@pytest.mark.parametrize("args, message", [
    (["--scheme", "int3-magic"], "unknown quantization scheme 'int3-magic'; choose one of: int8-static, int8-dynamic"),
    (["--scheme", "int8-static"], "needs calibration data; pass --calib FILE"),
    (["--scheme", "int4-weight-only", "--backend", "tensorrt"], "--backend tensorrt: supports int8-static"),
    (["--scheme", "int4-weight-only", "--block-size", "48"], "--block-size: must be one of 32, 64, 128"),
    (["--scheme", "int4-weight-only", "--confidence", "1.5"], "--confidence: Input should be less than 1 (got 1.5)"),
    (["--scheme", "int8-static", "--engines"], "--engines builds TensorRT engines, so it needs --backend tensorrt"),
    (["--scheme", "mixed", "--policy", "decoder=int3"], "--policy: 'int3' is not a leaf scheme; choose one of: int8-static"),
    (["--scheme", "mixed", "--policy", "head=int8-static"], "--policy: unknown graph role 'head'; roles: decoder, embeddings"),
    (["--scheme", "int8-dynamic", "--policy", "decoder=int8-static"], "a per-graph --policy needs --scheme mixed"),
])
def test_bad_choices_are_one_line_errors(tiny_model, tiny_tokenizer, tmp_path, args, message):
    out = run_cli("quantize", str(tiny_bundle(tiny_model, tiny_tokenizer)), "--out", str(tmp_path / "q"), *args)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and message in out.stderr, out.stderr


def test_mixed_policy_gives_the_decoders_int8_weight_only(tiny_model, tiny_tokenizer, tmp_path):
    out = run_cli("quantize", str(tiny_bundle(tiny_model, tiny_tokenizer)), "--out", str(tmp_path / "q"), "--scheme", "mixed",
                  "--policy", "decoder=int8-weight-only", "--calib", str(synth_folder()), "--n", "3", "--n-val", "0")
    assert out.returncode == 0, out.stderr
    graphs = json.loads((tmp_path / "q" / "manifest.json").read_text())["quantization"]["graphs"]
    assert graphs == {"vision_encoder": "int8-static", "embed_tokens": "int8-dynamic", "encoder_model": "int8-static",
                      "decoder_model": "int8-weight-only", "decoder_with_past_model": "int8-weight-only"}
    bad = run_cli("quantize", str(tmp_path / "q"), "--out", str(tmp_path / "r"), "--scheme", "mixed", "--policy", "decoder")
    assert bad.returncode == 1 and bad.stderr == ("error: Invalid value for --policy: expected ROLE=SCHEME, e.g. "
                                                  "decoder=int8-weight-only (got 'decoder')\n")
