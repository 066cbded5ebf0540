"""Falcon_SFT reading and writing: both file layouts, both key styles, streaming, PIX_CHG pairs, crops."""

from __future__ import annotations

import json

import pytest

from tiercel.data.sft import Record, iter_records, record_to_json, write_records
from tiercel.errors import DataError

DET = {
    "conversations": [
        {"role": "user",
         "content": "<image>\n[REG_DET_HBB]\nDetect all ship in the image.\nUse horizontal bounding boxes."},
        {"role": "assistant", "content": "<box><1><2><3><4></box>"},
    ],
    "images": ["Dataset/a.png"],
    "crop": [10, 20, 110, 220],
}
CHG = {  # GeoChat/LLaVA style keys
    "conversations": [
        {"from": "human", "value": "<image>\n[PIX_CHG]\nFind changes in the two images."},
        {"from": "gpt", "value": "<poly><1><1><9><1><9><9></poly>"},
    ],
    "images": ["Dataset/before.png", "Dataset/after.png"],
    "crop": [],
}
NO_ROLE = {"conversations": [{"content": "<image>\n[IMG_CLS]\nClassify the image.\nUse one or a few words."}, {"content": "airport"}],
           "images": ["x.png"], "crop": []}  # fmt: skip


def _check(records):
    det, chg, cls = records
    assert (det.index, det.tag, det.answer) == (0, "REG_DET_HBB", "<box><1><2><3><4></box>")
    assert (det.images, det.crop) == (["Dataset/a.png"], [10, 20, 110, 220])
    assert det.prompt == "Detect all ship in the image.\nUse horizontal bounding boxes."
    assert (chg.tag, chg.images, chg.crop) == ("PIX_CHG", ["Dataset/before.png", "Dataset/after.png"], [])
    assert chg.answer.startswith("<poly>") and chg.prompt == "Find changes in the two images."
    assert (cls.tag, cls.answer) == ("IMG_CLS", "airport")


def test_json_list_with_both_key_styles(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([DET, CHG, NO_ROLE], indent=2))
    _check(list(iter_records(path)))


def test_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (DET, CHG, NO_ROLE)) + "\n\n")
    _check(list(iter_records(path)))


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunks_smaller_than_a_record_give_the_same_records(tmp_path, chunk):
    path = tmp_path / "train.json"
    path.write_text(" \n[ " + " ,\n".join(json.dumps(r) for r in (DET, CHG, NO_ROLE)) + " ]\n")
    assert chunk < len(json.dumps(DET))
    _check(list(iter_records(path, chunk_chars=chunk)))


def test_reader_streams_instead_of_loading_the_whole_file(tmp_path):
    # The first record arrives before the reader gets to the broken tail: json.load would fail first.
    path = tmp_path / "big.json"
    path.write_text("[" + json.dumps(DET) + ", " + json.dumps(CHG) + ", {broken" + " " * 100_000)
    records = iter_records(path, chunk_chars=256)
    assert next(records).tag == "REG_DET_HBB"
    assert next(records).tag == "PIX_CHG"
    with pytest.raises(DataError, match=r"big.json: record 2: invalid JSON"):
        next(records)


def test_malformed_record_raises_or_is_flagged(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([DET, {"images": ["a.png"]}, 3]))
    with pytest.raises(DataError, match=r"bad.json: record 1: missing 'conversations'"):
        list(iter_records(path))
    records = list(iter_records(path, strict=False))
    assert [r.error is None for r in records] == [True, False, False]
    assert "not a JSON object" in records[2].error


def test_not_a_falcon_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('"hello"')
    with pytest.raises(DataError, match="not a Falcon_SFT file"):
        list(iter_records(path))
    with pytest.raises(DataError, match="file not found"):
        list(iter_records(tmp_path / "missing.json"))


def test_write_then_read_round_trip_in_role_content_form(tmp_path):
    src = tmp_path / "src.json"
    src.write_text(json.dumps([DET, CHG, NO_ROLE]))
    out = tmp_path / "out" / "copy.json"
    assert write_records(out, iter_records(src)) == 3
    _check(list(iter_records(out)))
    written = json.loads(out.read_text())
    assert written[1]["conversations"][0] == {"role": "user", "content": CHG["conversations"][0]["value"]}
    assert [p.name for p in out.parent.iterdir()] == ["copy.json"]  # no temp file left behind


def test_write_is_atomic_when_the_records_fail(tmp_path):
    out = tmp_path / "data.json"
    out.write_text("[]\n")

    def records():
        yield Record(0, "IMG_CLS", "Classify the image.", "airport", ["a.png"])
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError):
        write_records(out, records())
    assert out.read_text() == "[]\n"
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_record_to_json_keeps_extra_keys(tmp_path):
    r = Record(0, "IMG_CAP", "Describe the image.", "A harbor.", ["a.png"], [], raw={"id": "x1", "conversations": []})
    obj = record_to_json(r)
    assert obj["id"] == "x1" and obj["conversations"][0]["content"] == "<image>\n[IMG_CAP]\nDescribe the image."
    assert r.image_paths("/data")[0].as_posix() == "/data/a.png"


def test_unreadable_files_give_one_line_errors(tmp_path):
    binary = tmp_path / "x.json"
    binary.write_bytes(b"[\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not UTF-8 text"):
        list(iter_records(binary))
    with pytest.raises(DataError, match="cannot open"):
        list(iter_records(tmp_path))  # a folder
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    assert list(iter_records(empty)) == []
