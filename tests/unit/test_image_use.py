"""The image-use probe: its losses are the training loss, and a model blind to its image shows no gap and no spread."""

import copy

import pytest

torch = pytest.importorskip("torch")

from tiercel.distill.data import SFTData, collate, model_input  # noqa: E402
from tiercel.distill.losses import ce_loss  # noqa: E402
from tiercel.distill.objective import run_model  # noqa: E402
from tiercel.evaluate.image_use import probe, spread  # noqa: E402


@pytest.fixture(scope="module")
def data(synth_dir, tiny_tokenizer):
    return SFTData(synth_dir / "train.json", synth_dir, tiny_tokenizer, max_answer_tokens=40)


def test_true_loss_is_the_training_loss_of_the_same_records(tiny_model, tiny_tokenizer, data):
    result = probe(tiny_model, tiny_tokenizer, data, ["REG_VG"], n=4, batch_size=4)["per_task"]["REG_VG"]
    idx = data.by_task["REG_VG"][:4]
    batch = collate(data, idx, {"m": model_input(tiny_model)}, tiny_tokenizer.eos_id)
    tiny_model.eval()
    with torch.no_grad():
        expected = float(ce_loss(run_model(tiny_model, batch["m"], batch["decoder_input_ids"]).logits, batch["labels"]))
    assert result["records"] == 4 and result["swapped"] == 1.0
    assert result["loss_true"] == pytest.approx(expected, rel=1e-5)
    assert result["coord_loss_tokens"] >= 4 * 4 and result["first_coord_loss_tokens"] == 4  # a box per answer
    assert result["image_spread"]["std"] > 0 and result["image_spread"]["cosine"] > 0


def test_constant_image_features_give_zero_gap_and_zero_spread(tiny_model, tiny_tokenizer, data):
    blind = copy.deepcopy(tiny_model)
    norm = blind.model.multi_modal_projector.image_proj_norm
    with torch.no_grad():
        norm.weight.zero_()  # the projector's LayerNorm now outputs its bias, whatever the image
        norm.bias.copy_(torch.linspace(-1, 1, norm.bias.numel()))
    result = probe(blind, tiny_tokenizer, data, ["REG_VG", "IMG_CLS"], n=8, batch_size=4)
    for numbers in result["per_task"].values():
        assert numbers["loss_gap_permuted"] == pytest.approx(0, abs=1e-6)
        assert numbers["loss_gap_blank"] == pytest.approx(0, abs=1e-6)
        assert numbers["image_spread"]["std"] == pytest.approx(0, abs=1e-6)
        assert numbers["image_spread"]["cosine"] == pytest.approx(0, abs=1e-6)
        assert numbers["vision_spread"]["std"] > 0  # the tower still sees the images; the projector drops them
    assert result["overall"]["records"] == 16


def test_spread_of_identical_records_is_zero_and_of_opposite_records_is_two():
    same = torch.ones(3, 5, 4)
    assert spread(same) == {"std": 0.0, "rel_std": 0.0, "cosine": pytest.approx(0, abs=1e-6)}
    opposite = torch.stack([torch.ones(5, 4), -torch.ones(5, 4)])
    assert spread(opposite)["cosine"] == pytest.approx(2.0)


def test_the_image_check_warns_below_a_hundredth_of_a_nat():
    from tiercel.evaluate.image_use import image_warning

    assert image_warning(0.25, 16) is None and image_warning(0.01, 16) is None and image_warning(float("nan"), 16) is None
    assert image_warning(0.0004, 16) == ("answers barely depend on the image: with the images swapped between records "
                                         "the answer loss rises by +0.0004 nats/token (16 records per task; under 0.01 "
                                         "means the image is ignored)")
