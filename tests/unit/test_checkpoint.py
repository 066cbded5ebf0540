"""Checkpoint loading: both layouts give identical logits; every bad input is one clear line."""

import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from tests.planted import Planted  # noqa: E402
from tiercel.errors import CheckpointError, TokenizerError  # noqa: E402
from tiercel.models import load_checkpoint  # noqa: E402
from tiercel.models.writer import save_native, save_original  # noqa: E402


def logits(model, tok, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, 64, 64, generator=g)
    ids = torch.tensor([tok.prompt_ids("Describe the image.", 5)] * 2)
    dec = torch.tensor([[2, 0, 7, 9, 11]] * 2)
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels, decoder_input_ids=dec).logits


@pytest.fixture()
def original_dir(tmp_path, tiny_model, tiny_tokenizer):
    return save_original(tiny_model, tiny_tokenizer, tmp_path / "orig")


def test_original_layout_loads_with_identical_logits(original_dir, tiny_model, tiny_tokenizer):
    ckpt = load_checkpoint(original_dir)
    assert ckpt.layout == "original"
    assert (logits(ckpt.model, ckpt.tokenizer) - logits(tiny_model, tiny_tokenizer)).abs().max() < 1e-5
    # the tied embedding stays tied after loading, so fine-tuning updates lm_head and inputs together
    assert ckpt.model.lm_head.weight is ckpt.model.model.language_model.shared.weight


def test_image_projection_is_transposed_in_the_original_file(original_dir, tiny_model):
    stored = load_file(str(original_dir / "model.safetensors"))["image_projection"]
    native = tiny_model.model.multi_modal_projector.image_projection.weight
    assert torch.equal(stored, native.t())


def test_native_round_trip_and_provenance(tmp_path, original_dir, tiny_model, tiny_tokenizer):
    from tiercel.models.convert import convert_checkpoint

    summary = convert_checkpoint(original_dir, tmp_path / "native")
    assert summary["preset"] == "tiny" and summary["layout"] == "original"
    meta = json.loads((tmp_path / "native" / "tiercel.json").read_text())
    assert meta["provenance"]["source_layout"] == "original"
    assert len(meta["provenance"]["source_sha256"]["model.safetensors"]) == 64
    ckpt = load_checkpoint(tmp_path / "native")
    assert ckpt.layout == "native" and ckpt.shape.image_size == 64
    assert torch.equal(logits(ckpt.model, ckpt.tokenizer), logits(tiny_model, tiny_tokenizer))


def test_bin_weights_and_subfolder_are_found(tmp_path, original_dir, tiny_model, tiny_tokenizer):
    nested = tmp_path / "download" / "Falcon-Single-Instruction-Base"
    shutil.copytree(original_dir, nested)
    state = load_file(str(nested / "model.safetensors"))
    (nested / "model.safetensors").unlink()
    torch.save(state, nested / "pytorch_model.bin")
    ckpt = load_checkpoint(tmp_path / "download")
    assert ckpt.path == nested
    assert (logits(ckpt.model, ckpt.tokenizer) - logits(tiny_model, tiny_tokenizer)).abs().max() < 1e-5


def test_missing_image_token_is_added(tmp_path, original_dir):
    tok = json.loads((original_dir / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<image>"]
    (original_dir / "tokenizer.json").write_text(json.dumps(tok))
    ckpt = load_checkpoint(original_dir)
    assert ckpt.tokenizer.image_id == ckpt.model.config.image_token_id
    assert any("added <image>" in note for note in ckpt.notes)


def test_hub_id_says_download_first():
    with pytest.raises(CheckpointError, match=r"^TianHuiLab/Falcon-Single-Instruction-Large: not a local directory; tiercel never downloads"):
        load_checkpoint("TianHuiLab/Falcon-Single-Instruction-Large")


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"no such file or directory$"):
        load_checkpoint(tmp_path / "nothing")


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no config.json next to weights"):
        load_checkpoint(tmp_path)


def test_unknown_model_type(original_dir):
    cfg = json.loads((original_dir / "config.json").read_text())
    cfg["model_type"] = "llava"
    (original_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type 'llava' is not a Florence-2 model"):
        load_checkpoint(original_dir)


def test_shape_mismatch_names_key_and_both_shapes(original_dir):
    state = load_file(str(original_dir / "model.safetensors"))
    state["language_model.model.encoder.layers.0.fc1.weight"] = torch.zeros(64, 64)
    save_file(state, str(original_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"weight 'language_model.model.encoder.layers.0.fc1.weight' has shape \[64, 64\] but the config needs \[128, 64\]"):
        load_checkpoint(original_dir)


def test_missing_and_unexpected_weights(original_dir):
    state = load_file(str(original_dir / "model.safetensors"))
    state["vision_tower.norms.weight"] = torch.ones(64)  # unused DaViT head norm: ignored, as in the published files
    state["language_model.model.encoder.extra.weight"] = torch.ones(3)
    save_file(state, str(original_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected weight 'language_model.model.encoder.extra.weight' \(1 in all\)"):
        load_checkpoint(original_dir)
    del state["language_model.model.encoder.extra.weight"], state["vision_tower.convs.0.proj.weight"]
    save_file(state, str(original_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"weight 'vision_tower.convs.0.proj.weight' is missing"):
        load_checkpoint(original_dir)


def test_truncated_weights_say_redownload(original_dir):
    data = (original_dir / "model.safetensors").read_bytes()
    (original_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read weights .* re-download it"):
        load_checkpoint(original_dir)


def test_tokenizer_missing(original_dir):
    (original_dir / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_checkpoint(original_dir)


def test_a_checkpoint_folder_is_itself_whatever_its_subfolders_hold(tmp_path, original_dir):
    import stat

    from tiercel.errors import TiercelError
    from tiercel.models.checkpoint import find_checkpoint_dir
    from tiercel.models.convert import convert_checkpoint

    shutil.copytree(original_dir, original_dir / "older")  # e.g. a copy kept inside
    assert find_checkpoint_dir(original_dir) == original_dir  # not "holds several checkpoints"
    shutil.copytree(original_dir / "older", tmp_path / "a" / "b" / "c" / "three")  # 3 levels down: found
    assert find_checkpoint_dir(tmp_path / "a") == tmp_path / "a" / "b" / "c" / "three"
    (tmp_path / "a" / "b" / "c" / "three").rename(tmp_path / "four")
    shutil.move(tmp_path / "four", tmp_path / "a" / "b" / "c" / "d" / "four")  # 4 levels down: not looked at
    with pytest.raises(CheckpointError, match="no config.json next to weights"):
        find_checkpoint_dir(tmp_path / "a")
    for dst, message in ((original_dir, "is the checkpoint being converted"),
                         (tmp_path, "is the checkpoint being converted .* or holds it")):
        with pytest.raises(TiercelError, match=message):
            convert_checkpoint(original_dir, dst, overwrite=True)
    assert find_checkpoint_dir(original_dir) == original_dir and (original_dir / "model.safetensors").is_file()
    old = os.umask(0o022)
    try:
        convert_checkpoint(original_dir, tmp_path / "native")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "native" / "model.safetensors").stat().st_mode) == 0o644  # safetensors: 0600


def test_save_refuses_to_overwrite(tmp_path, tiny_model, tiny_tokenizer):
    from tiercel.errors import TiercelError

    (tmp_path / "out").mkdir()
    with pytest.raises(TiercelError, match="already exists; choose another output path or pass --overwrite"):
        save_native(tiny_model, tiny_tokenizer, tmp_path / "out")


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "config.json: must hold a JSON object (got list)"),
    ("[" * 100_000, "config.json: not valid JSON (nested too deeply)"),
    ("{", "config.json: not valid JSON (Expecting property name"),
])
def test_a_config_json_of_the_wrong_shape_is_one_line(tmp_path, original_dir, text, message):
    broken = tmp_path / "ckpt"
    shutil.copytree(original_dir, broken)
    (broken / "config.json").write_text(text)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(broken)
    assert message in str(err.value) and "\n" not in str(err.value)


def _plain_pickle(path, marker):
    import pickle

    path.write_bytes(pickle.dumps({"w": Planted(marker)}))


def _cut_short(path, marker):
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])


@pytest.mark.parametrize("write, why", [
    (lambda path, marker: torch.save({"w": Planted(marker)}, path),
     "it holds Python objects whose loading could run code: builtins.exec"),
    (_plain_pickle, "empty, cut short, or not written by torch.save"),
    (_cut_short, "empty, cut short, or not written by torch.save"),
    (lambda path, marker: path.write_bytes(b""), "empty, cut short, or not written by torch.save"),
])
def test_torch_files_load_weights_only_and_a_refusal_is_one_line(tmp_path, write, why):
    from tiercel.models.checkpoint import torch_load

    marker, path = tmp_path / "code_ran", tmp_path / "state.pt"
    write(path, marker)
    with pytest.raises(CheckpointError) as err:
        torch_load(path, "not a state tiercel can read safely", "write it again")
    assert str(err.value) == f"{path}: not a state tiercel can read safely ({why}); write it again"
    assert not marker.exists()
    torch.save({"w": torch.ones(2), "step": 3, "names": ["a"]}, path)
    assert torch_load(path, "", "")["step"] == 3


def _set_field(section, name, value):
    def change(config):
        config[section][name] = value
        return config
    return change


@pytest.mark.parametrize("layout", ["original", "native"])
@pytest.mark.parametrize("change, message", [
    (lambda c: {**c, "vision_config": 5}, "needs both vision_config and text_config sections (JSON objects)"),
    (lambda c: {**c, "text_config": [1]}, "needs both vision_config and text_config sections (JSON objects)"),
    (_set_field("text_config", "encoder_ffn_dim", -4),
     "text_config.encoder_ffn_dim: must be a whole number 1..131072 (got -4)"),
    (_set_field("text_config", "decoder_layers", "2"), "text_config.decoder_layers: must be a whole number 1..1024 (got '2')"),
    (_set_field("text_config", "decoder_layers", 10**30),  # built on the meta device, it never finished
     "text_config.decoder_layers: must be a whole number 1..1024 (got 1000000000000000000000000000000)"),
    (_set_field("vision_config", "depths", [1, 0, 1, 1]),
     "vision_config.depths: must be a whole number 1..1024 or a list of at most 16 of them (got [1, 0, 1, 1])"),
])
def test_a_config_json_field_of_the_wrong_shape_is_one_line(tmp_path, original_dir, tiny_model, tiny_tokenizer,
                                                            layout, change, message):
    broken = tmp_path / "ckpt"
    if layout == "original":
        shutil.copytree(original_dir, broken)
    else:
        save_native(tiny_model, tiny_tokenizer, broken)
    config = broken / "config.json"
    config.write_text(json.dumps(change(json.loads(config.read_text()))))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(broken)
    assert str(err.value) == f"{config}: {message}"


def test_a_config_field_transformers_refuses_is_one_line(tmp_path, tiny_model, tiny_tokenizer):
    broken = save_native(tiny_model, tiny_tokenizer, tmp_path / "ckpt")
    config = broken / "config.json"
    config.write_text(json.dumps(_set_field("text_config", "init_std", "x")(json.loads(config.read_text()))))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(broken)
    assert str(err.value).startswith(f"{config}: Validation error for field 'init_std': ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("field, value, message", [
    ("image_size", -5, "image_size: must be a whole number 32..8192 (got -5)"),
    ("image_size", "abc", "image_size: must be a whole number 32..8192 (got 'abc')"),
    ("image_size", 10**12, "image_size: must be a whole number 32..8192 (got 1000000000000)"),
    ("image_mean", 5, "image_mean: must be three finite numbers (got 5)"),
    ("image_std", [0.2, 0.0, 0.2], "image_std: must be three finite numbers > 0 (got [0.2, 0.0, 0.2])"),
])
def test_a_tiercel_json_preprocessing_field_of_the_wrong_shape_is_one_line(tmp_path, tiny_model, tiny_tokenizer,
                                                                            field, value, message):
    broken = save_native(tiny_model, tiny_tokenizer, tmp_path / "ckpt")
    meta = broken / "tiercel.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), field: value}))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(broken)
    assert str(err.value) == f"{meta}: {message}"
