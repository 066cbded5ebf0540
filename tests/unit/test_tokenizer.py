"""Tokenizers: Falcon's grammar as single tokens, the native prompt layout, reading BART vocab files."""

import json

import pytest

from tiercel.errors import TokenizerError
from tiercel.runtime.tokenizer import STRUCTURE_TOKENS, TextTokenizer, coordinate_tokens


def test_grammar_tokens_are_single_and_decode_back(tiny_tokenizer):
    answer = "<box><0><17><999><1000></box><quad><1><2><3><4><5><6><7><8></quad><poly><1><2><sep><3><4></poly>"
    ids = tiny_tokenizer.encode(answer)
    assert len(ids) == 6 + 10 + 7  # box 1+4+1, quad 1+8+1, poly 1+2+1+2+1: every grammar string is one token
    assert tiny_tokenizer.decode(ids) == answer
    report = tiny_tokenizer.grammar_report()
    assert report["coordinates_single"] == 1001 and report["structure_split"] == []


def test_special_ids_follow_bart(tiny_tokenizer):
    assert (tiny_tokenizer.bos_id, tiny_tokenizer.pad_id, tiny_tokenizer.eos_id, tiny_tokenizer.unk_id) == (0, 1, 2, 3)
    assert tiny_tokenizer.image_id == len(tiny_tokenizer) - 1


def test_prompt_layout_matches_the_native_processor(tiny_tokenizer):
    ids = tiny_tokenizer.prompt_ids("Describe the image.", n_image_tokens=5)
    assert ids[:5] == [tiny_tokenizer.image_id] * 5
    assert ids[5] == tiny_tokenizer.bos_id and ids[-1] == tiny_tokenizer.eos_id
    assert tiny_tokenizer.decode(ids) == "Describe the image."


def test_round_trip_through_file(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path)
    again = TextTokenizer.from_dir(tmp_path)
    text = "Detect all ship in the image.\nUse oriented bounding boxes."
    assert again.encode(text) == tiny_tokenizer.encode(text)


def test_vocab_and_merges_are_read_as_bart_bpe(tmp_path):
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4, "b": 5, "ab": 6}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    tok = TextTokenizer.from_dir(tmp_path)
    assert tok.encode("ab") == [6]
    assert tok.ensure_image_token() and tok.image_id == 7


@pytest.mark.parametrize("added, message", [
    ('["<extra>"]', "added_tokens.json: must hold a JSON object (got list)"),
    ("[" * 100_000, "added_tokens.json: not valid JSON (nested too deeply)"),
    ('{"<extra>": "7"}', "added_tokens.json: must map each added token to its id (a whole number)"),
])
def test_an_added_tokens_json_of_the_wrong_shape_is_one_line(tmp_path, added, message):
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4, "b": 5, "ab": 6}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    (tmp_path / "added_tokens.json").write_text(added)
    with pytest.raises(TokenizerError) as err:
        TextTokenizer.from_dir(tmp_path)
    assert str(err.value) == f"{tmp_path}/{message}"


def test_tokenizer_without_bart_specials_is_rejected(tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"hello": 0}, unk_token="hello")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="lacks the special token <s>; it is not a Florence-2/BART tokenizer"):
        TextTokenizer.from_dir(tmp_path)


def test_unreadable_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json: cannot be read as a tokenizer"):
        TextTokenizer.from_dir(tmp_path)


def test_coordinate_token_list():
    toks = coordinate_tokens()
    assert toks[0] == "<0>" and toks[-1] == "<1000>" and len(toks) == 1001
    assert "<sep>" in STRUCTURE_TOKENS
