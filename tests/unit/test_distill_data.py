"""Distillation data: deterministic task sampling, disjoint process slices, correct label shifting."""

from collections import Counter

import pytest

torch = pytest.importorskip("torch")

from tiercel.distill.data import IGNORE, ModelInput, SFTData, TaskSampler, collate  # noqa: E402


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
