"""`tiercel convert --from geochat`: a tiny checkpoint in GeoChat's own LLaVA-1.5 layout becomes a transformers
LLaVA that computes what GeoChat computes, with CLIP's position grid interpolated as GeoChat does (2x2 -> 3x3 for
28 -> 42 px here, GeoChat's 24x24 -> 36x36 for 336 -> 504 px scaled down)."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tiercel import tasks  # noqa: E402
from tiercel.cli import main  # noqa: E402
from tiercel.distill.teachers import GeoChatAdapter  # noqa: E402
from tiercel.errors import CheckpointError, ConfigError, TiercelError  # noqa: E402
from tiercel.models.convert import convert  # noqa: E402

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
VOCAB = 300
CLIP_NAME = "openai/clip-vit-large-patch14-336"


def geochat_config() -> dict:
    """config.json as GeoChat's LLaVA-1.5 training writes it (GeoChatLlamaForCausalLM, Llama keys + mm_* keys)."""
    return {"architectures": ["GeoChatLlamaForCausalLM"], "model_type": "geochat", **SMALL, "num_key_value_heads": 2,
            "vocab_size": VOCAB, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
            "torch_dtype": "float16", "transformers_version": "4.31.0", "use_cache": True,
            "mm_vision_tower": CLIP_NAME, "mm_hidden_size": 32, "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu", "image_aspect_ratio": "pad",
            "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "use_mm_proj": True,
            "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False}


def write_tokenizer(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    corpus = ["A chat between a curious human. USER: [refer] Give me the location of <p> roof </p> {<10><20>|<0>}"]
    tok.train_from_iterator(corpus * 5, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                                             show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    assert len(fast) <= VOCAB


@pytest.fixture(scope="module")
def geochat(tmp_path_factory):
    """GeoChat's layout: two pytorch_model-*.bin shards with an index, projector as model.mm_projector.0/.2, rotary
    inv_freq buffers as transformers 4.31 saved them, no CLIP weights; plus a tiny CLIP (a whole CLIPModel, as
    openai publishes it) in its own directory. Returns (root, parts) with the original modules in parts."""
    root = tmp_path_factory.mktemp("geochat")
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **SMALL, num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256, rms_norm_eps=1e-6,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    projector = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.Linear(32, 32)).eval()
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        text_config={**SMALL, "vocab_size": 99, "max_position_embeddings": 16},
        vision_config={**SMALL, "image_size": 28, "patch_size": 14}, projection_dim=32)).eval()
    clip.save_pretrained(root / "clip")
    src = root / "src"
    src.mkdir()
    first = {k: v.clone() for k, v in llama.state_dict().items()}
    first.update({f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(8) for i in range(2)})
    second = {f"model.mm_projector.{k}": v.clone() for k, v in projector.state_dict().items()}
    shards = {"pytorch_model-00001-of-00002.bin": first, "pytorch_model-00002-of-00002.bin": second}
    for name, part in shards.items():
        torch.save(part, src / name)
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (src / "config.json").write_text(json.dumps(geochat_config()))
    write_tokenizer(src)
    return root, {"llama": llama, "projector": projector, "clip": clip}


def copy_source(root, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in (root / "src").iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    return src


@pytest.fixture(scope="module")
def converted(geochat, tmp_path_factory):
    root, _ = geochat
    dst = tmp_path_factory.mktemp("out") / "geochat-llava"
    result = convert("geochat", root / "src", dst, dtype="float32", vision_tower=root / "clip", image_size=42)
    return dst, result


@pytest.fixture(scope="module")
def adapter(converted):
    return GeoChatAdapter.from_dir(converted[0], dtype="float32")


def positions(model):
    return model.state_dict()["model.vision_tower.embeddings.position_embedding.weight"]


def test_position_embeddings_are_interpolated_as_geochat_does(geochat, converted, adapter):
    _, parts = geochat
    _, result = converted
    original = parts["clip"].vision_model.embeddings.position_embedding.weight.detach()  # [1 + 2*2, 32]
    got = positions(adapter.model)
    assert got.shape == (1 + 3 * 3, 32)
    torch.testing.assert_close(got[0], original[0], rtol=0, atol=0)  # the class position is kept
    want = torch.nn.functional.interpolate(original[1:].t().reshape(1, 32, 2, 2), size=3, mode="bicubic",
                                           align_corners=True).reshape(32, 9).t()
    torch.testing.assert_close(got[1:], want, rtol=0, atol=0)
    # by hand: with align_corners the corners stay, and from a 2x2 grid bicubic's midpoints are plain means
    a, b, c, d = original[1:]
    by_hand = [a, (a + b) / 2, b, (a + c) / 2, (a + b + c + d) / 4, (b + d) / 2, c, (c + d) / 2, d]
    torch.testing.assert_close(got[1:], torch.stack(by_hand), rtol=0, atol=1e-6)
    assert "CLIP position embeddings interpolated from 2x2 to 3x3 (bicubic)" in result["notes"]


def test_config_and_processor_say_the_new_image_size(converted):
    dst, result = converted
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "llava" and config["vision_config"]["image_size"] == 42
    assert (config["vision_feature_layer"], config["vision_feature_select_strategy"]) == (-2, "default")
    assert config["text_config"]["vocab_size"] == VOCAB + 1 and config["image_token_index"] == VOCAB
    assert (result["image_size"], result["image_tokens"]) == (42, 9)
    processor = transformers.AutoProcessor.from_pretrained(dst)
    inputs = processor(images=[Image.new("RGB", (80, 40))], text="USER: <image>\nhi", return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 42, 42)
    assert int((inputs["input_ids"] == VOCAB).sum()) == 9
    assert json.loads((dst / "tiercel.json").read_text())["converted_from"] == "geochat"


def test_converted_logits_equal_geochats_forward(geochat, adapter):
    """GeoChat's forward by hand: CLIP at 42 px with the hand-interpolated grid, layer -2 without the class token,
    the mm_projector, its features spliced into the Llama embeddings in place of <image>."""
    _, parts = geochat
    image = np.random.default_rng(0).integers(0, 255, (40, 80, 3), dtype=np.uint8)
    prompt = "[REG_VG]\n" + tasks.get("REG_VG").prompt(text="roof")
    inputs = adapter.processor(images=[Image.fromarray(image)], text=adapter.request([image], prompt), return_tensors="pt")
    with torch.no_grad():
        got = adapter.model(**inputs).logits[..., :VOCAB]

        clip = parts["clip"].vision_model
        vision = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**SMALL, image_size=42, patch_size=14)).eval()
        weights = {k: v for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
        pos = weights.pop("embeddings.position_embedding.weight")
        grid = torch.nn.functional.interpolate(pos[1:].t().reshape(1, 32, 2, 2), size=3, mode="bicubic", align_corners=True)
        weights["embeddings.position_embedding.weight"] = torch.cat([pos[:1], grid.reshape(32, 9).t()])
        vision.load_state_dict(weights, strict=True)
        features = parts["projector"](vision(inputs["pixel_values"], output_hidden_states=True).hidden_states[-2][:, 1:])
        ids = inputs["input_ids"][0]
        at = int((ids == VOCAB).nonzero()[0])
        embed = parts["llama"].model.embed_tokens
        spliced = torch.cat([embed(ids[:at]), features[0], embed(ids[at + 9:])])[None]
        want = parts["llama"](inputs_embeds=spliced).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_cli_converts_and_says_what_it_wrote(geochat, tmp_path, capsys):
    root, _ = geochat
    code = main(["convert", "--from", "geochat", str(root / "src"), str(tmp_path / "out"),
                 "--vision-tower", str(root / "clip"), "--image-size", "42"])
    out = capsys.readouterr().out
    assert code == 0 and "wrote" in out and "(LLaVA, 42 px, 9 image tokens" in out
    assert "CLIP weights from" in out and "vocabulary grown from 300 to 301 for <image>" in out
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(tmp_path / "out" / "model.safetensors")).values()} == {torch.float16}


def test_missing_clip_weights_say_to_pass_the_vision_tower(geochat, tmp_path, capsys):
    root, _ = geochat
    code = main(["convert", "--from", "geochat", str(root / "src"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err == (f"error: {root / 'src'}: holds no CLIP vision tower weights (GeoChat loads them by "
                                 f"name from {CLIP_NAME}); download that model and pass its directory with --vision-tower\n")
    assert not (tmp_path / "out").exists()


def test_clip_weights_inside_the_checkpoint_are_used_without_a_vision_tower(geochat, adapter, tmp_path, monkeypatch):
    """A checkpoint saved with its CLIP (model.vision_tower.vision_tower.*) needs no --vision-tower."""
    from tiercel.models import geochat_convert

    root, parts = geochat
    src = copy_source(root, tmp_path)
    shard = torch.load(src / "pytorch_model-00002-of-00002.bin", weights_only=True)
    clip = {f"model.vision_tower.vision_tower.{k}": v.clone() for k, v in parts["clip"].state_dict().items()
            if k.startswith("vision_model.")}
    shard.update(clip)
    torch.save(shard, src / "pytorch_model-00002-of-00002.bin")
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    index["weight_map"].update({k: "pytorch_model-00002-of-00002.bin" for k in clip})
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    monkeypatch.setitem(geochat_convert.VISION_CONFIGS, CLIP_NAME, {**SMALL, "image_size": 28, "patch_size": 14})
    result = convert("geochat", src, tmp_path / "out", dtype="float32", image_size=42)
    assert "CLIP weights from the checkpoint itself" in result["notes"]
    mine = GeoChatAdapter.from_dir(tmp_path / "out", dtype="float32").model.state_dict()
    for key, value in adapter.model.state_dict().items():  # the same model as from a separate CLIP directory
        torch.testing.assert_close(mine[key], value, rtol=0, atol=0)


def test_a_clip_vision_model_directory_serves_as_the_vision_tower(geochat, adapter, tmp_path):
    """transformers 5 saves a lone CLIPVisionModel without the vision_model. prefix a whole CLIPModel has."""
    root, parts = geochat
    vision = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**SMALL, image_size=28, patch_size=14))
    vision.load_state_dict({k[len("vision_model."):]: v for k, v in parts["clip"].state_dict().items()
                            if k.startswith("vision_model.") and not k.endswith("position_ids")})
    vision.save_pretrained(tmp_path / "clip-vision")
    convert("geochat", root / "src", tmp_path / "out", dtype="float32", vision_tower=tmp_path / "clip-vision",
            image_size=42)
    mine = GeoChatAdapter.from_dir(tmp_path / "out", dtype="float32").model.state_dict()
    for key, value in adapter.model.state_dict().items():
        torch.testing.assert_close(mine[key], value, rtol=0, atol=0)


class Payload:
    """Unpickling this runs `touch marker`, unless the reader refuses to execute code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_program_in_a_shard_is_refused_not_run(geochat, tmp_path):
    root, _ = geochat
    src = copy_source(root, tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model.mm_projector.0.weight": Payload(marker)}, protocol=2)
    (src / "pytorch_model-00002-of-00002.bin").write_bytes(payload)
    with pytest.raises(CheckpointError, match=r"pytorch_model-00002-of-00002.bin: cannot read weights"):
        convert("geochat", src, tmp_path / "out", vision_tower=root / "clip", image_size=42)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_unconverted_geochat_is_refused_by_the_adapter(geochat):
    root, _ = geochat
    with pytest.raises(CheckpointError, match=r"is GeoChat in LLaVA's own layout; convert it first: tiercel convert "
                                              r"--from geochat"):
        GeoChatAdapter.from_dir(root / "src")


def test_the_adapter_honours_data_max_answer_tokens(converted, adapter, tmp_path):
    """make_adapter used to leave GeoChat at 256 new tokens whatever data.max_answer_tokens said."""
    from tiercel.distill.answers import make_adapter
    from tiercel.recipe import parse_recipe

    recipe = parse_recipe({"name": "t", "data": {"train": str(tmp_path / "train.json"), "max_answer_tokens": 2},
                           "tokenizer": {"source": "train"},
                           "teacher": {"kind": "generated", "adapter": "geochat", "path": str(converted[0])}})
    teacher = make_adapter(recipe, "cpu")
    assert teacher.max_new_tokens == 2
    image = np.random.default_rng(1).integers(0, 255, (42, 42, 3), dtype=np.uint8)
    prompt = "[IMG_CAP]\n" + tasks.get("IMG_CAP").prompt()
    inputs = adapter.processor(images=[Image.fromarray(image)], text=adapter.request([image], prompt), return_tensors="pt")
    longer = adapter.model.generate(**inputs, do_sample=False, max_new_tokens=6)[0, inputs["input_ids"].shape[1]:]
    assert len(longer) == 6  # the tiny model does not stop by itself within 6 tokens
    assert teacher.generate([image], prompt) == adapter.processor.decode(longer[:2], skip_special_tokens=True).strip()


def test_options_are_checked_before_any_weight_is_read(geochat, tmp_path):
    root, _ = geochat
    with pytest.raises(ConfigError, match=r"^--from: must be one of florence, geochat \(got llava\)$"):
        convert("llava", root / "src", tmp_path / "out")
    with pytest.raises(ConfigError, match=r"^--vision-tower: only for --from geochat$"):
        convert("florence", root / "src", tmp_path / "out", vision_tower=root / "clip")
    with pytest.raises(ConfigError, match=r"^--image-size: must be a positive multiple of the CLIP patch size 14 \(got 40\)$"):
        convert("geochat", root / "src", tmp_path / "out", vision_tower=root / "clip", image_size=40)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(TiercelError, match="out: already exists; choose another output path or pass --overwrite"):
        convert("geochat", root / "src", tmp_path / "out", vision_tower=root / "clip", image_size=42)
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


def files_of(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_output_is_never_the_checkpoint_or_its_vision_tower(geochat, tmp_path):
    root, _ = geochat
    src = copy_source(root, tmp_path)
    before = files_of(src)
    for dst, what in ((src, f"the checkpoint being converted {src}"), (tmp_path, f"the checkpoint being converted {src} "
                                                                                 "or holds it")):
        with pytest.raises(TiercelError) as err:
            convert("geochat", src, dst, overwrite=True, vision_tower=root / "clip", image_size=42)
        assert str(err.value) == f"{dst}: is {what}, which the output would replace; choose another path"
    clip = root / "clip"
    with pytest.raises(TiercelError, match=rf"^{clip}: is the vision tower {clip}, which the output would replace"):
        convert("geochat", src, clip, overwrite=True, vision_tower=clip, image_size=42)
    assert files_of(src) == before and (clip / "model.safetensors").is_file()


def _set(config, name, value):
    keys = name.split(".")
    for key in keys[:-1]:
        config = config[key]
    config[keys[-1]] = value


@pytest.mark.parametrize("name, value, message", [
    ("num_hidden_layers", 10**9, "num_hidden_layers: must be a whole number 1..1024 (got 1000000000)"),
    ("hidden_size", "32", "hidden_size: must be a whole number 1..131072 (got '32')"),
    ("vocab_size", 2**40, "vocab_size: must be a whole number 1..4194304 (got 1099511627776)"),
    ("num_attention_heads", 3, "num_attention_heads: 3 does not divide hidden_size 32; each attention head gets an "
                               "equal share of the width"),
    ("hidden_act", "evil", "hidden_act: must be an activation transformers knows (gelu, "),
    ("rope_scaling", {"type": "evil"}, "rope_scaling: must be null or an object whose type is one of default, linear"),
    ("rope_scaling", {"type": "linear"}, "cannot build a model from it (\"Missing required keys in `rope_parameters` "
                                         "for 'rope_type'='linear': {'factor'}\"); fix the file or re-download the checkpoint"),
    ("attention_dropout", float("nan"), "attention_dropout: must be a finite number (got nan)"),
    ("eos_token_id", 99999, "eos_token_id: must be a token id 0..299 (the vocabulary has 300 tokens) or null (got 99999)"),
    ("mm_vision_select_layer", "x", "mm_vision_select_layer: must be a whole number (got 'x')"),
    ("mm_vision_select_layer", -9, "mm_vision_select_layer: must be a layer index of the vision tower (2 layers: -3..2) "
                                   "(got -9)"),
    ("mm_vision_select_feature", ["x"], "mm_vision_select_feature ['x'] must be one of patch, cls_patch"),
    ("mm_hidden_size", "32", "mm_hidden_size: must be a whole number (got '32')"),
    ("mm_vision_tower", ["x"], "mm_vision_tower: must be a model name (got ['x'])"),
])
def test_a_geochat_config_json_that_cannot_build_the_model_is_one_line(geochat, tmp_path, capsys, name, value, message):
    root, _ = geochat
    src = copy_source(root, tmp_path)
    config = json.loads((src / "config.json").read_text())
    _set(config, name, value)
    (src / "config.json").write_text(json.dumps(config))
    code = main(["convert", "--from", "geochat", str(src), str(tmp_path / "out"), "--vision-tower", str(root / "clip"),
                 "--image-size", "42"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith(f"error: {src / 'config.json'}: {message}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("file, name, value, message", [
    ("config.json", "vision_config.patch_size", 0, "vision_config.patch_size: must be a whole number 1..131072 (got 0)"),
    ("config.json", "vision_config.patch_size", "14", "vision_config.patch_size: must be a whole number 1..131072 (got '14')"),
    ("config.json", "vision_config.patch_size", -14, "vision_config.patch_size: must be a whole number 1..131072 (got -14)"),
    ("config.json", "vision_config.hidden_size", 32.0, "vision_config.hidden_size: must be a whole number 1..131072 (got 32.0)"),
    ("config.json", "vision_config.num_hidden_layers", 10**9,
     "vision_config.num_hidden_layers: must be a whole number 1..1024 (got 1000000000)"),
    ("config.json", "vision_config", 5, "vision_config: must be a JSON object (got 5)"),
    ("preprocessor_config.json", "image_mean", 5, "image_mean: must be three finite numbers (got 5)"),
    ("preprocessor_config.json", "image_std", [0.2, 0, 0.2], "image_std: must be three finite numbers > 0 (got [0.2, 0, 0.2])"),
])
def test_a_vision_tower_file_that_cannot_build_the_model_is_one_line(geochat, tmp_path, file, name, value, message):
    root, _ = geochat
    clip = tmp_path / "clip"
    shutil.copytree(root / "clip", clip)
    path = clip / file
    data = json.loads(path.read_text()) if path.is_file() else {}
    _set(data, name, value)
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as err:
        convert("geochat", root / "src", tmp_path / "out", vision_tower=clip, image_size=42)
    assert str(err.value) == f"{path}: {message}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weight_map, message", [
    (5, "weight_map must map tensor names to shard files"),
    ({"model.embed_tokens.weight": "../../outside.bin"}, "weight_map names the shard '../../outside.bin', which is not "
                                                         "a file in {src}; shard names must be plain file names"),
    ({"model.embed_tokens.weight": "/etc/passwd"}, "weight_map names the shard '/etc/passwd', which is not a file in "
                                                   "{src}; shard names must be plain file names"),
])
def test_a_shard_index_that_names_files_outside_the_checkpoint_is_refused(geochat, tmp_path, weight_map, message):
    root, _ = geochat
    src = copy_source(root, tmp_path)
    index = src / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(CheckpointError) as err:
        convert("geochat", src, tmp_path / "out", vision_tower=root / "clip", image_size=42)
    assert str(err.value).startswith(f"{index}: {message.format(src=src)}")
    assert not (tmp_path / "out").exists()


def test_a_weight_that_is_not_floating_point_is_refused_by_name(geochat, tmp_path):
    root, _ = geochat
    src = copy_source(root, tmp_path)
    shard = src / "pytorch_model-00002-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    state["model.mm_projector.0.bias"] = state["model.mm_projector.0.bias"].to(torch.int32)
    torch.save(state, shard)
    with pytest.raises(CheckpointError) as err:
        convert("geochat", src, tmp_path / "out", vision_tower=root / "clip", image_size=42)
    assert str(err.value) == (f"{src}: weight 'model.multi_modal_projector.linear_1.bias' is stored as int32, not "
                              "floating point; the checkpoint is damaged or not a model's weights, re-download it")
    assert not (tmp_path / "out").exists()


def test_a_pad_token_id_of_minus_one_is_no_padding_token_and_converts(geochat, tmp_path, capsys):
    root, _ = geochat
    src = copy_source(root, tmp_path)
    config = json.loads((src / "config.json").read_text())
    config["pad_token_id"] = -1  # what some LLaMA conversions write for "none"
    (src / "config.json").write_text(json.dumps(config))
    code = main(["convert", "--from", "geochat", str(src), str(tmp_path / "out"), "--vision-tower", str(root / "clip"),
                 "--image-size", "42"])
    assert code == 0, capsys.readouterr().err
