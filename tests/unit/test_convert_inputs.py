"""`tiercel convert` (Florence-2) on bad input: one error line naming the file and field, no traceback, and the input
and any existing output left as they were."""

from __future__ import annotations

import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from tiercel.cli import main  # noqa: E402
from tiercel.errors import CheckpointError  # noqa: E402
from tiercel.models.checkpoint import build_model  # noqa: E402
from tiercel.models.writer import save_native, save_original  # noqa: E402


@pytest.fixture()
def native(tmp_path, tiny_model, tiny_tokenizer):
    return save_native(tiny_model, tiny_tokenizer, tmp_path / "native")


@pytest.fixture()
def original(tmp_path, tiny_model, tiny_tokenizer):
    return save_original(tiny_model, tiny_tokenizer, tmp_path / "original")


def refused(capsys, *args) -> str:
    """The one error line `tiercel convert ARGS` prints (exit 1), without its `error: ` prefix."""
    code = main(["convert", *map(str, args)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("[transformers]")]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0][len("error: "):]


def edit(config_file, section: str, name: str, value) -> None:
    config = json.loads(config_file.read_text())
    config[section][name] = value
    config_file.write_text(json.dumps(config))  # NaN and Infinity as JSON's extension writes them


def files_of(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_above_the_checkpoint_is_not_replaced_by_its_conversion(tmp_path, native, capsys):
    """SRC a folder holding the checkpoint, DST the checkpoint itself: DST is what would be read."""
    student = tmp_path / "w" / "models" / "student"
    shutil.copytree(native, student)
    before = files_of(student)
    message = refused(capsys, tmp_path / "w" / "models", student, "--dtype", "float16", "--overwrite")
    assert message == (f"{student}: is the checkpoint being converted {student}, which the output would replace; "
                       "choose another path")
    assert files_of(student) == before


@pytest.mark.parametrize("layout, section, name, value, message", [
    ("original", "vision_config", "patch_size", [-7, 3, 3, 3],
     "vision_config.patch_size: must be a whole number 1..131072 or a list of at most 16 of them (got [-7, 3, 3, 3])"),
    ("original", "vision_config", "patch_size", [7, 3],
     "vision_config.patch_size: must be a list of 4 entries, one per stage as vision_config.dim_embed has (got [7, 3])"),
    ("original", "vision_config", "patch_stride", [0, 2, 2, 2],
     "vision_config.patch_stride: must be a whole number 1..131072 or a list of at most 16 of them (got [0, 2, 2, 2])"),
    ("original", "vision_config", "patch_prenorm", [0, 1, 1, 1],
     "vision_config.patch_prenorm: must be true or false for each stage (got [0, 1, 1, 1])"),
    ("native", "vision_config", "embed_dim", 64, "vision_config.embed_dim: must be a list with one entry per stage (got 64)"),
    ("native", "vision_config", "num_groups", [1, 3, 2, 4],
     "vision_config.num_groups: 3 does not divide vision_config.embed_dim 32; each attention head gets an equal "
     "share of the width"),
    ("native", "vision_config", "max_temporal_embeddings", -1,
     "vision_config.max_temporal_embeddings: must be a whole number 1..131072 (got -1)"),
    ("original", "text_config", "activation_function", "evil",
     "text_config.activation_function: must be an activation transformers knows (gelu, "),
    ("original", "text_config", "encoder_attention_heads", 3,
     "text_config.encoder_attention_heads: 3 does not divide text_config.d_model 64; each attention head gets an "
     "equal share of the width"),
    ("native", "text_config", "dropout", float("nan"), "text_config.dropout: must be a finite number (got nan)"),
    ("native", "text_config", "dropout", float("inf"), "text_config.dropout: must be a finite number (got inf)"),
    ("native", "text_config", "attention_dropout", 2, "text_config.attention_dropout: must be a number 0..1 (got 2)"),
])
def test_a_config_json_that_cannot_build_the_model_is_one_line(tmp_path, native, original, capsys, layout, section,
                                                               name, value, message):
    src = native if layout == "native" else original
    edit(src / "config.json", section, name, value)
    before = files_of(src)
    assert refused(capsys, src, tmp_path / "out").startswith(f"{src / 'config.json'}: {message}")
    assert files_of(src) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, value", [("eos_token_id", 99999), ("pad_token_id", -5)])
def test_special_token_ids_must_lie_in_the_vocabulary(tmp_path, native, capsys, name, value):
    edit(native / "config.json", "text_config", name, value)
    vocab = json.loads((native / "config.json").read_text())["text_config"]["vocab_size"]
    assert refused(capsys, native, tmp_path / "out") == (
        f"{native / 'config.json'}: text_config.{name}: must be a token id 0..{vocab - 1} (the vocabulary has "
        f"{vocab} tokens) or null (got {value})")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_weights_that_are_not_floating_point_are_refused_by_name(tmp_path, native, capsys, dtype):
    state = load_file(str(native / "model.safetensors"))
    name = "model.language_model.shared.weight"
    state[name] = state[name].to(dtype)
    save_file(state, str(native / "model.safetensors"))
    assert refused(capsys, native, tmp_path / "out") == (
        f"{native}: weight '{name}' is stored as {str(dtype).removeprefix('torch.')}, not floating point; the "
        "checkpoint is damaged or not a model's weights, re-download it")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"])
def test_a_shard_index_naming_a_file_outside_the_checkpoint_is_refused(tmp_path, native, capsys, shard):
    (native / "model.safetensors").rename(tmp_path / "outside.safetensors")
    keys = load_file(str(tmp_path / "outside.safetensors"))
    index = native / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: shard for k in keys}}))
    assert refused(capsys, native, tmp_path / "out") == (
        f"{index}: weight_map names the shard '{shard}', which is not a file in {native}; shard names must be plain "
        "file names, re-download the checkpoint")
    assert not (tmp_path / "out").exists()


def test_an_empty_dtype_is_refused_naming_the_choices(tmp_path, native, capsys):
    message = refused(capsys, native, tmp_path / "out", "--dtype", "")
    assert message.startswith("Invalid value for '--dtype'") and "'float32', 'float16', 'bfloat16'" in message
    assert not (tmp_path / "out").exists()


def test_a_dangling_link_as_the_output_is_not_replaced(tmp_path, native, capsys):
    link = tmp_path / "dangling"
    os.symlink("nowhere", link)
    assert refused(capsys, native, link, "--overwrite").startswith(f"{link}: is a link to nowhere, which does not exist")
    assert link.is_symlink() and os.readlink(link) == "nowhere"


def test_a_folder_with_a_tiercel_json_of_a_family_tiercel_does_not_write_is_not_replaced(tmp_path, native, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    (mine / "tiercel.json").write_text(json.dumps({"format": 3, "family": "my own"}))
    before = files_of(mine)
    assert refused(capsys, native, mine, "--overwrite").startswith(
        f"{mine}: holds files tiercel did not write (its tiercel.json is not tiercel's)")
    assert files_of(mine) == before


def test_a_converted_checkpoint_is_replaced_with_overwrite(tmp_path, native):
    assert main(["convert", str(native), str(tmp_path / "out")]) == 0
    assert main(["convert", str(native), str(tmp_path / "out"), "--dtype", "float16", "--overwrite"]) == 0
    assert {t.dtype for t in load_file(str(tmp_path / "out" / "model.safetensors")).values()} == {torch.float16}


def test_what_transformers_raises_building_a_model_is_one_line_naming_the_config(tmp_path):
    """The last line of defence, for config values no explicit check covers."""
    where = tmp_path / "config.json"
    with pytest.raises(CheckpointError) as err:
        build_model(lambda: {}["evil"], where)
    assert str(err.value) == (f"{where}: cannot build a model from it ('evil'); fix the file or re-download the "
                              "checkpoint")


@pytest.mark.parametrize("layout", ["native", "original"])
def test_stage_fields_a_config_leaves_out_take_transformers_defaults(request, tmp_path, layout):
    from tiercel.models.checkpoint import read_config

    folder = request.getfixturevalue(layout)
    config = json.loads((folder / "config.json").read_text())
    for name in ("patch_size", "patch_stride", "patch_padding", "patch_prenorm"):
        config["vision_config"].pop(name, None)
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["convert", str(folder), str(tmp_path / "out")]) == 0
    assert read_config(tmp_path / "out").config.vision_config.patch_size in ([7, 3, 3, 3], (7, 3, 3, 3))
