"""`tiercel profile` and `tiercel eval` end to end on tiny bundles, a tiny checkpoint and the synthetic benchmark."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from tests.bundles import tiny_bundle  # noqa: E402


@pytest.fixture(scope="module")
def bundles(tiny_model, tiny_tokenizer):
    return tiny_bundle(tiny_model, tiny_tokenizer), tiny_bundle(tiny_model, tiny_tokenizer, "merged", ("onnxruntime",))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synth"
    out = run_cli("data", "synth", "--out", str(root), "--n", "60", "--size", "64", "--workers", "1")
    assert out.returncode == 0, out.stderr
    return root


def test_profile_two_bundles_table_json_png(bundles, tmp_path):
    spec = tmp_path / "boards.yaml"
    spec.write_text("name: Test Board 9000\nbandwidth_gbs: 25.6\npeak_tflops: {fp32: 0.5, fp16: 2}\n")
    out = run_cli("profile", str(bundles[0]), str(bundles[1]), "--runs", "2", "--warmup", "0", "--new-tokens", "4",
                  "--image-size", "64", "--tasks", "IMG_CAP,REG_DET_OBB", "--json", str(tmp_path / "p.json"),
                  "--plot", str(tmp_path / "p.png"), "--device-spec", str(spec))
    assert out.returncode == 0, out.stderr
    for needle in ("split", "merged", "vision encoder", "decode, per token", "tokens/s", "REG_DET_OBB end-to-end",
                   "run_all (2 tasks)", "peak RSS", "decoder_model_merged", "roofline", "ESTIMATE", "Test Board 9000",
                   "Jetson Orin Nano 8GB", "max(bytes / (bandwidth"):
        assert needle in out.stdout, needle
    data = json.loads((tmp_path / "p.json").read_text())
    assert [p["decoder"] for p in data["profiles"]] == ["split", "merged"]
    assert data["profiles"][0]["stages"]["decode_token"]["n"] == 2 * 2 * 3
    assert "test-board-9000" in data["profiles"][1]["estimates"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tiercel.fileio import check_json_output, check_plot_output

    check_json_output(tmp_path / "p.json")  # both marked as tiercel's: a second run may replace them
    check_plot_output(tmp_path / "p.png")
    assert data["tiercel"]["output"] == "profile"


def test_profile_checkpoint_on_the_torch_backend(tiny_checkpoint, tmp_path):
    out = run_cli("profile", str(tiny_checkpoint), "--backend", "torch", "--device", "cpu", "--runs", "1", "--warmup", "0",
                  "--new-tokens", "4", "--image-size", "64", "--tasks", "IMG_CAP", "--threads", "1",
                  "--json", str(tmp_path / "c.json"))
    assert out.returncode == 0, out.stderr
    for needle in ("decode, per token", "bundle / weights size", "a checkpoint's bytes are its parameters", "ESTIMATE"):
        assert needle in out.stdout, needle
    assert "eos_token_id" not in out.stderr  # transformers' warning about the forced length is silenced
    p = json.loads((tmp_path / "c.json").read_text())["profiles"][0]
    assert p["backend"] == "torch-graphs" and p["preset"] == "tiny" and p["stages"]["decode_token"]["n"] == 3
    assert set(p["roofline"]) == {"vision_encoder", "text_encoder", "first_token", "decode_token"}


def _one_line_error(capsys, args, message):
    """The real CLI entry point in-process (no new interpreter): exit code 1 and one line on stderr."""
    from tiercel.cli import main

    capsys.readouterr()
    assert main(args) == 1, args
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1, err


def test_profile_errors_are_one_line(bundles, tiny_checkpoint, tmp_path, capsys):
    merged = str(bundles[1])
    _one_line_error(capsys, ["profile", str(tiny_checkpoint), "--option", "PERFORMANCE_HINT=LATENCY"],
                    "is a checkpoint, which takes only dtype=fp32|fp16|bf16")
    _one_line_error(capsys, ["profile", str(tmp_path / "none")], "no such bundle or checkpoint directory")
    _one_line_error(capsys, ["profile", merged, "--backend", "torch"], "--backend torch runs a checkpoint directory")
    _one_line_error(capsys, ["profile", merged, "--backend", "openvino"], "has no graphs for backend 'openvino'")
    _one_line_error(capsys, ["profile", merged, "--tasks", "IMG_FOO"], "unknown task 'IMG_FOO'")
    _one_line_error(capsys, ["profile", merged, "--runs", "0"], "--runs: must be 1..100000 (got 0)")
    _one_line_error(capsys, ["profile", merged, "--device-spec", str(tmp_path / "none.yaml")], "device spec file not found")


@pytest.fixture(scope="module")
def bundle_eval(bundles, synth, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("eval")
    out = run_cli("eval", str(bundles[0]), "--data", str(synth / "test.json"), "--num-beams", "1", "--max-new-tokens", "8",
                  "--json", str(out_dir / "e.json"), "--examples", str(out_dir / "png"), "--protocol", "both")
    assert out.returncode == 0, out.stderr
    return out, out_dir


def test_eval_bundle_prints_the_14_task_table_json_and_pngs(bundle_eval):
    out, out_dir = bundle_eval
    assert "14-task average" in out.stdout and "PIX_CHG" in out.stdout and "cider" in out.stdout
    data = json.loads((out_dir / "e.json").read_text())
    assert len(data["per_task"]) == 14 and data["tasks_averaged"] == 14 and len(data["predictions"]) == 14
    assert data["headline"]["REG_DET_HBB"]["metric"] == "ap50"
    assert len(list((out_dir / "png").glob("*.png"))) == 14
    # --protocol both: tiercel's numbers first, Falcon's beside them, in the table and in the JSON
    assert data["protocol"] == "tiercel" and "tiercel value" in out.stdout and "falcon value" in out.stdout
    falcon = data["protocols"]["falcon"]
    assert len(falcon["per_task"]) == 14 and falcon["headline"]["REG_VG"]["metric"] == "ap50"
    assert data["headline"]["REG_VG"]["metric"] == "acc50"
    # 95% intervals of tiercel's headlines (1,000 resamples by default), in the table and the JSON
    assert "tiercel 95% interval" in out.stdout
    low, high = data["headline"]["REG_VG"]["ci95"]
    assert low <= data["headline"]["REG_VG"]["value"] <= high
    assert "ci95" not in falcon["headline"]["REG_VG"]


def test_eval_checkpoint_predicts_what_its_bundle_predicts(bundle_eval, tiny_checkpoint, synth, tmp_path):
    out = run_cli("eval", str(tiny_checkpoint), "--data", str(synth / "test.json"), "--num-beams", "1", "--max-new-tokens", "8",
                  "--threads", "1", "--json", str(tmp_path / "ckpt.json"))
    assert out.returncode == 0, out.stderr
    ckpt, bundle = (json.loads(f.read_text()) for f in (tmp_path / "ckpt.json", bundle_eval[1] / "e.json"))
    assert ckpt["backend"] == "torch" and len(ckpt["predictions"]) == 14
    assert ckpt["predictions"] == bundle["predictions"]
    out = run_cli("eval", str(tiny_checkpoint), "--data", str(synth / "test.json"), "--num-beams", "1", "--max-new-tokens", "8",
                  "--threads", "1", "--backend", "torch", "--device", "cpu", "--json", str(tmp_path / "graphed.json"))
    assert out.returncode == 0, out.stderr
    graphed = json.loads((tmp_path / "graphed.json").read_text())  # the static-KV decoder (graphs on a GPU only)
    assert graphed["backend"] == "torch-graphs" and graphed["predictions"] == bundle["predictions"]


def test_eval_errors_are_one_line(bundles, synth, tmp_path, capsys):
    bundle, data = str(bundles[0]), str(synth / "test.json")
    _one_line_error(capsys, ["eval", bundle, "--data", str(tmp_path / "missing.json")], "missing.json: file not found")
    _one_line_error(capsys, ["eval", bundle, "--data", data, "--tasks", "IMG_CLS,NOPE"], "unknown task 'NOPE'")
    _one_line_error(capsys, ["eval", str(tmp_path / "nothing"), "--data", data], "no such bundle or checkpoint")
    _one_line_error(capsys, ["eval", bundle, "--data", data, "--backend", "tensorflow"], "unknown backend 'tensorflow'")
    _one_line_error(capsys, ["eval", bundle, "--data", data, "--backend", "torch"], "--backend torch runs a checkpoint directory")
    _one_line_error(capsys, ["eval", bundle, "--data", data, "--limit", "0"], "--limit: must be >= 1 (got 0)")
    _one_line_error(capsys, ["eval", bundle, "--data", data, "--protocol", "coco"],
                    "unknown evaluation protocol 'coco'; valid protocols: tiercel, falcon, both")
