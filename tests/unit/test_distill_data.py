"""Distillation data: deterministic task sampling, disjoint process slices, correct label shifting."""

from collections import Counter

import pytest

torch = pytest.importorskip("torch")

from tiercel.distill.data import IGNORE, ModelInput, SFTData, TaskSampler, collate  # noqa: E402
from tiercel.errors import DataError  # noqa: E402


@pytest.fixture(scope="module")
def data(synth_dir, tiny_tokenizer):
    return SFTData(synth_dir / "train.json", synth_dir, tiny_tokenizer, max_answer_tokens=40)


def test_sampler_is_a_function_of_the_step(data):
    a = TaskSampler(data.by_task, {}, seed=3)
    b = TaskSampler(data.by_task, {}, seed=3)
    assert a.draw(5, 0, 16) == b.draw(5, 0, 16)
    assert a.draw(5, 0, 16) != a.draw(6, 0, 16)
    assert a.draw(5, 0, 16) != a.draw(5, 1, 16)


def test_task_weights_are_respected(data):
    sampler = TaskSampler(data.by_task, {"IMG_CLS": 3.0, "IMG_CAP": 1.0, **{t: 0 for t in data.by_task if t not in ("IMG_CLS", "IMG_CAP")}}, seed=0)
    tags = Counter(data.records[i].tag for s in range(200) for i in sampler.draw(s, 0, 8))
    assert set(tags) == {"IMG_CLS", "IMG_CAP"}
    assert 2.5 < tags["IMG_CLS"] / tags["IMG_CAP"] < 3.5  # 1600 draws, expected ratio 3


def test_ranks_take_disjoint_slices_of_one_global_batch(data):
    sampler = TaskSampler(data.by_task, {}, seed=0)
    global_batch = sampler.draw(0, 0, 8)
    assert global_batch[0::2] + global_batch[1::2] != [] and sorted(global_batch[0::2] + global_batch[1::2]) == sorted(global_batch)


def test_collate_shifts_labels_and_scatters_image_tokens(data, tiny_tokenizer):
    spec = ModelInput(64, 5, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    batch = collate(data, [0, 1, 2], {"student": spec}, decoder_start=tiny_tokenizer.eos_id)
    labels, dec = batch["labels"], batch["decoder_input_ids"]
    assert (dec[:, 0] == tiny_tokenizer.eos_id).all()  # BART: the decoder starts from </s>
    assert (labels[:, 0] == tiny_tokenizer.bos_id).all()
    for row in range(3):
        n = int((labels[row] != IGNORE).sum())
        assert labels[row, n - 1] == tiny_tokenizer.eos_id
        assert torch.equal(dec[row, 1:n], labels[row, : n - 1])
        assert tiny_tokenizer.decode(labels[row, :n].tolist()) == data.records[row].answer[: len(tiny_tokenizer.decode(labels[row, :n].tolist()))]
    s = batch["student"]
    assert s["pixel_values"].shape == (3, 3, 64, 64)
    assert (s["input_ids"][:, :5] == tiny_tokenizer.image_id).all()
    assert s["attention_mask"].sum(1).tolist() == [len(data.prompt_ids(i, 5)) for i in range(3)]


def test_change_detection_sample_is_the_tiled_pair(data):
    i = data.by_task["PIX_CHG"][0]
    img = data.image(i, 64)
    assert img.shape == (64, 64, 3)
    # the 2H x 2W canvas keeps zeros off the diagonal: top-right quadrant is black after resizing (bar the seam)
    assert img[2:28, 36:62].max() == 0


def test_truncation_counts_answers_and_prompts_per_task_and_warns_past_one_percent(tmp_path, tiny_tokenizer):
    import json

    from tiercel.data.sft import truncation_lines

    long_answer = "<box><1><2><3><4></box>" * 4  # 24 tokens: 6 per box (grammar tokens are single tokens)
    assert len(tiny_tokenizer.encode(long_answer)) == 24
    records = [{"image": "a.png", "conversations": [{"from": "human", "value": f"[{tag}] " + prompt},
                                                   {"from": "gpt", "value": answer}]}
               for tag, prompt, answer in [("REG_DET_HBB", "Detect all plane in the image.", long_answer),
                                           ("REG_DET_HBB", "Detect all ship in the image.", "<box><1><2><3><4></box>"),
                                           ("IMG_CLS", "Classify the image. " * 20, "airport")]]
    (tmp_path / "d.json").write_text(json.dumps(records))
    data = SFTData(tmp_path / "d.json", tmp_path, tiny_tokenizer, max_prompt_tokens=30, max_answer_tokens=12)
    counts = data.truncation()
    assert counts["REG_DET_HBB"] == {"records": 2, "answers_cut": 1, "prompts_cut": 0}
    assert counts["IMG_CLS"]["prompts_cut"] == 1 and counts["IMG_CLS"]["answers_cut"] == 0
    lines = truncation_lines(counts, 12, 30)
    assert lines == [  # in task order
        "IMG_CLS: 1 of 1 prompts (100%) are longer than data.max_prompt_tokens (30 tokens) and are cut; raise it or "
        "expect the model to learn cut prompts",
        "REG_DET_HBB: 1 of 2 answers (50%) are longer than data.max_answer_tokens (12 tokens) and are cut; raise it "
        "or expect the model to learn cut answers",
    ]
    assert truncation_lines({"IMG_CAP": {"records": 200, "answers_cut": 2, "prompts_cut": 0}}, 48, 96) == []  # 1%: quiet


def test_quad_order_canonical_rewrites_training_answers_only(tmp_path, tiny_tokenizer):
    import json

    from tiercel.errors import DataError

    quad = "<quad><50><40><10><40><10><20><50><20></quad>"  # bottom-right first, clockwise
    records = [{"image": "a.png", "conversations": [{"from": "human", "value": "[REG_DET_OBB] Detect all ship in the image."},
                                                   {"from": "gpt", "value": quad}]},
               {"image": "a.png", "conversations": [{"from": "human", "value": f"[REG_CLS_OBB] Classify the region of {quad}."},
                                                   {"from": "gpt", "value": "ship"}]}]
    (tmp_path / "d.json").write_text(json.dumps(records))
    kept = SFTData(tmp_path / "d.json", tmp_path, tiny_tokenizer)
    canonical = SFTData(tmp_path / "d.json", tmp_path, tiny_tokenizer, quad_order="canonical")
    assert kept.records[0].answer == quad
    assert canonical.records[0].answer == "<quad><10><20><50><20><50><40><10><40></quad>"
    assert canonical.records[1].prompt == kept.records[1].prompt and quad in canonical.records[1].prompt
    assert canonical.label_ids(0) != kept.label_ids(0)
    with pytest.raises(DataError, match="quad_order must be one of keep, canonical"):
        SFTData(tmp_path / "d.json", tmp_path, tiny_tokenizer, quad_order="sorted")


def test_cut_answers_structures_ends_a_long_answer_after_its_last_whole_structure(tmp_path, tiny_tokenizer):
    import json

    box = "<box><1><2><3><4></box>"  # 6 tokens (grammar tokens are single tokens)
    poly = "<poly>" + "<5><6>" * 8 + "</poly>"  # 18 tokens: no whole structure fits in 14
    records = [{"image": "a.png", "conversations": [{"from": "human", "value": f"[{tag}] {prompt}"}, {"from": "gpt", "value": a}]}
               for tag, prompt, a in [("REG_DET_HBB", "Detect all ship in the image.", box * 3),
                                      ("PIX_SEG", "Segment out ship in the image.", poly),
                                      ("REG_DET_HBB", "Detect all plane in the image.", box * 2)]]
    (tmp_path / "d.json").write_text(json.dumps(records))
    tok = tiny_tokenizer
    by_tokens = SFTData(tmp_path / "d.json", tmp_path, tok, max_answer_tokens=14)
    by_structures = SFTData(tmp_path / "d.json", tmp_path, tok, max_answer_tokens=14, cut_answers="structures")
    wrap = lambda ids: [tok.bos_id, *ids, tok.eos_id]  # noqa: E731
    assert by_tokens.label_ids(0) == wrap(tok.encode(box * 3)[:14])  # ends inside the third box
    assert by_structures.label_ids(0) == wrap(tok.encode(box * 2))  # two whole boxes, then eos
    assert by_structures.label_ids(1) == by_tokens.label_ids(1) == wrap(tok.encode(poly)[:14])
    assert by_structures.label_ids(2) == by_tokens.label_ids(2) == wrap(tok.encode(box * 2))  # fits: untouched
    with pytest.raises(DataError, match="cut_answers must be one of tokens, structures"):
        SFTData(tmp_path / "d.json", tmp_path, tok, cut_answers="words")
