"""Generated-answer teachers: the resumable Falcon_SFT writer, the Florence-2 and GeoChat adapters, vocabularies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tiercel import tasks
from tiercel.data import iter_records
from tiercel.distill.teachers import (
    FlorenceAdapter,
    GeoChatAdapter,
    TeacherAdapter,
    check_same_vocabulary,
    generate_answers,
    partial_path,
)
from tiercel.errors import ConfigError, DataError

SIZE = (80, 40)  # W, H of every test image


def make_dataset(tmp_path) -> tuple:
    """Six records over five tasks (one PIX_CHG pair); returns (json path, image root)."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)).save(root / name)
    rows = [
        ("IMG_CAP", tasks.get("IMG_CAP").prompt(), "a field", ["a.png"]),
        ("REG_DET_HBB", tasks.get("REG_DET_HBB").prompt(text="ship"), "", ["b.png"]),
        ("REG_VG", tasks.get("REG_VG").prompt(text="the red roof"), "", ["a.png"]),
        ("IMG_CT", tasks.get("IMG_CT").prompt(text="car"), "2", ["c.png"]),
        ("PIX_CHG", tasks.get("PIX_CHG").prompt(), "", ["a.png", "b.png"]),
        ("IMG_CLS", tasks.get("IMG_CLS").prompt(), "farmland", ["c.png"]),
    ]
    data = [{"conversations": [{"role": "user", "content": f"<image>\n[{tag}]\n{prompt}"}, {"role": "assistant", "content": answer}],
             "images": images, "crop": [], "source": f"s{i}"} for i, (tag, prompt, answer, images) in enumerate(rows)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    return path, root


class ScriptedTeacher:
    """Answers in Falcon grammar from a table keyed by tag; can crash after `fail_after` calls."""

    ANSWERS = {
        "IMG_CAP": "a green field",
        "REG_DET_HBB": "<box><10><20><30><40></box><box><50><60><70><80></box>",
        "REG_VG": "<box><1><2></box>",  # incomplete: does not parse cleanly -> skipped
        "IMG_CT": "3",
        "PIX_CHG": "<poly><10><10><200><10><200><200></poly>",
        "IMG_CLS": "",  # empty -> skipped
    }

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after, self.seen = 0, fail_after, []

    def generate(self, images, prompt):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        self.calls += 1
        tag, _ = tasks.split_user_turn(prompt)
        self.seen.append((tag, [im.shape for im in images]))
        return self.ANSWERS[tag]


def test_scripted_teacher_answers_replace_the_dataset_answers(tmp_path):
    path, root = make_dataset(tmp_path)
    teacher = ScriptedTeacher()
    assert isinstance(teacher, TeacherAdapter)
    ticks = []
    summary = generate_answers(teacher, iter_records(path), root, tmp_path / "out.json", progress=ticks.append)
    assert summary["records"] == 6 and summary["written"] == 4 and summary["skipped"] == 2
    assert summary["skipped_by_task"] == {"REG_VG": 1, "IMG_CLS": 1}
    assert summary["skipped_by_reason"] == {"unparseable": 2}
    assert len(ticks) == 6 and summary["generated"] == 6 and summary["resumed"] == 0
    assert ("PIX_CHG", [(40, 80, 3), (40, 80, 3)]) in teacher.seen  # both frames reach the teacher
    out = list(iter_records(tmp_path / "out.json"))
    assert [(r.tag, r.answer) for r in out] == [(t, ScriptedTeacher.ANSWERS[t]) for t in ("IMG_CAP", "REG_DET_HBB", "IMG_CT", "PIX_CHG")]
    original = {r.raw["source"]: r for r in iter_records(path)}
    for r in out:  # prompts, images and extra keys survive
        assert (r.prompt, r.images, r.raw["source"]) == (original[r.raw["source"]].prompt, original[r.raw["source"]].images, r.raw["source"])
    assert not partial_path(tmp_path / "out.json").exists()


def test_an_interrupted_run_continues_where_it_stopped(tmp_path):
    path, root = make_dataset(tmp_path)
    out = tmp_path / "out.json"
    generate_answers(ScriptedTeacher(), iter_records(path), root, tmp_path / "reference.json")
    with pytest.raises(KeyboardInterrupt):
        generate_answers(ScriptedTeacher(fail_after=3), iter_records(path), root, out)
    assert not out.exists()
    assert len(partial_path(out).read_text().splitlines()) == 3
    with open(partial_path(out), "a") as f:
        f.write('{"position": 3, "key": "tor')  # a line cut by the crash
    teacher = ScriptedTeacher()
    summary = generate_answers(teacher, iter_records(path), root, out)
    assert teacher.calls == 3 and summary["resumed"] == 3 and summary["generated"] == 3
    assert out.read_bytes() == (tmp_path / "reference.json").read_bytes()


def test_resuming_on_changed_input_is_refused(tmp_path):
    path, root = make_dataset(tmp_path)
    out = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt):
        generate_answers(ScriptedTeacher(fail_after=2), iter_records(path), root, out)
    records = list(iter_records(path))[::-1]
    with pytest.raises(DataError, match="input changed"):
        generate_answers(ScriptedTeacher(), records, root, out)
    summary = generate_answers(ScriptedTeacher(), records, root, out, resume=False)
    assert summary["resumed"] == 0 and summary["records"] == 6


class CannedGeoChat(GeoChatAdapter):
    """GeoChatAdapter's prompt and conversion with canned GeoChat answers instead of a 7B model."""

    ANSWERS = {
        "IMG_CAP": "A <p>field</p> {<0><0><50><50>|<0>} next to a road .",
        "REG_DET_HBB": "<p>ships</p> {<10><20><30><40>|<0>}{<50><50><60><70>|<30>}",
        "REG_VG": "{<25><25><75><75>|<0>}",
        "IMG_CT": "There are 3 cars.",
        "IMG_CLS": "Farmland.",
    }

    def __init__(self):
        super().__init__(model=None, processor=None)
        self.requests = []

    def generate(self, images, prompt):
        self.requests.append(self.request(images, prompt))  # raises TaskError for PIX_CHG
        return self.ANSWERS[tasks.split_user_turn(prompt)[0]]


def test_geochat_answers_are_converted_to_falcon_grammar(tmp_path):
    path, root = make_dataset(tmp_path)
    teacher = CannedGeoChat()
    summary = generate_answers(teacher, iter_records(path), root, tmp_path / "out.json")
    assert summary["skipped_by_reason"] == {"refused": 1} and summary["skipped_by_task"] == {"PIX_CHG": 1}
    got = {r.tag: r.answer for r in iter_records(tmp_path / "out.json")}
    # 80 x 40 image: x bins are 0.08 px wide, y bins 0.04 px; 25% -> 20 px -> bin 250
    assert got["REG_VG"] == "<box><250><250><750><750></box>"
    assert got["REG_DET_HBB"].startswith("<box><100><200><300><400></box><box>")
    assert (got["IMG_CAP"], got["IMG_CT"], got["IMG_CLS"]) == ("A field next to a road.", "3", "Farmland")
    assert teacher.requests[2] == (GeoChatAdapter.SYSTEM + " USER: <image>\n"
                                   "[refer] Give me the location of <p> the red roof </p> ASSISTANT:")


def test_check_same_vocabulary(tiny_tokenizer):
    from tiercel.runtime.tokenizer import train_bpe

    check_same_vocabulary(tiny_tokenizer, tiny_tokenizer)
    other = train_bpe(["a small other corpus"] * 5, vocab_size=300)
    with pytest.raises(ConfigError, match=r"teacher and student tokenizers differ \(teacher has \d+ tokens, student \d+\); "
                                          "logit distillation needs a shared vocabulary — set teacher.kind: generated"):
        check_same_vocabulary(tiny_tokenizer, other)
    with pytest.raises(ConfigError, match="token 'a' is id 0 in the teacher and 1 in the student"):
        check_same_vocabulary({"a": 0, "b": 1}, {"b": 0, "a": 1})


def test_florence_adapter_matches_a_hand_written_greedy_loop(tiny_model, tiny_tokenizer):
    torch = pytest.importorskip("torch")
    from tiercel.models.presets import IMAGENET_MEAN, IMAGENET_STD

    adapter = FlorenceAdapter(tiny_model.eval(), tiny_tokenizer, 64, IMAGENET_MEAN, IMAGENET_STD, max_new_tokens=6)
    image = np.random.default_rng(1).integers(0, 255, (40, 80, 3), dtype=np.uint8)
    prompt = tasks.get("IMG_CAP").prompt()
    got = adapter.generate([image], f"[IMG_CAP]\n{prompt}")

    pixels = torch.from_numpy(adapter.pixel_values([image]))
    ids = torch.tensor([tiny_tokenizer.prompt_ids(prompt, tiny_model.tiercel_shape.image_tokens)])
    seq = [2]  # BART decoders start from </s>
    with torch.no_grad():
        for _ in range(5):  # the 6th token allowed is forced to </s>
            logits = tiny_model(input_ids=ids, pixel_values=pixels, decoder_input_ids=torch.tensor([seq])).logits
            seq.append(int(logits[0, -1].argmax()))
            if seq[-1] == 2:
                break
    assert got == tiny_tokenizer.decode(seq)
    pair = adapter.pixel_values([image, image])
    from tiercel.runtime.preprocess import preprocess

    np.testing.assert_array_equal(pair, preprocess(tasks.tile_change_pair(image, image), 64, IMAGENET_MEAN, IMAGENET_STD))


def test_geochat_adapter_loads_a_local_llava_and_generates(tmp_path):
    """The transformers wiring on a tiny random LLaVA saved to disk (no 7B weights here)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(["[refer] Give me the location of <p> roof </p> {<10><20>|<0>}"] * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<image>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", pad_token="<pad>")
    processor = transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=fast, patch_size=14, vision_feature_select_strategy="default", image_token="<image>",
        num_additional_image_tokens=1)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**small, image_size=28, patch_size=14, projection_dim=32),
        text_config=transformers.LlamaConfig(**small, num_key_value_heads=2, vocab_size=len(fast),
                                             max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=4),
        image_token_id=3, vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    transformers.LlavaForConditionalGeneration(config).save_pretrained(tmp_path / "geochat")
    processor.save_pretrained(tmp_path / "geochat")

    adapter = GeoChatAdapter.from_dir(tmp_path / "geochat", dtype="float32", max_new_tokens=4)
    image = np.zeros((40, 80, 3), np.uint8)
    prompt = "[REG_VG]\n" + tasks.get("REG_VG").prompt(text="roof")
    got = adapter.generate([image], prompt)
    inputs = adapter.processor(images=[Image.fromarray(image)], text=adapter.request([image], prompt), return_tensors="pt")
    assert int((inputs["input_ids"] == 3).sum()) == 4  # 2 x 2 patches: the image placeholder was expanded
    want = adapter.model.generate(**inputs, do_sample=False, max_new_tokens=4)[:, inputs["input_ids"].shape[1]:]
    assert got == fast.decode(want[0], skip_special_tokens=True).strip()
    with pytest.raises(Exception, match="no config.json"):
        GeoChatAdapter.from_dir(tmp_path / "missing")
