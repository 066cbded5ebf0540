"""coord_init sinusoid: the bins' embeddings are a smooth code of the bin, seen by the tied output layer too."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tiercel.errors import ConfigError  # noqa: E402
from tiercel.models import build  # noqa: E402
from tiercel.models.coords import coordinate_ids, init_coordinates, sinusoid_codes  # noqa: E402


def new_model(tokenizer):
    return build("tiny", seed=0, vocab_size=len(tokenizer), image_token_id=tokenizer.image_id)


def test_neighbouring_bins_get_close_rows_and_far_bins_do_not():
    codes = sinusoid_codes(1000, 64, std=0.02)
    assert codes.shape == (1000, 64) and float(codes.std()) == pytest.approx(0.02, rel=1e-5)
    cos = torch.nn.functional.cosine_similarity
    near = float(cos(codes[500], codes[501], dim=0))
    far = float(cos(codes[500], codes[900], dim=0))
    assert near > 0.95 and far < 0.5  # a one-bin step barely moves the row; 400 bins move it a lot


def test_sinusoid_sets_the_bins_and_the_tied_output_layer_sees_them(tiny_tokenizer):
    model = new_model(tiny_tokenizer)
    before = model.get_input_embeddings().weight.detach().clone()
    report = init_coordinates(model, tiny_tokenizer, "sinusoid")
    ids = coordinate_ids(tiny_tokenizer)
    after = model.get_input_embeddings().weight.detach()
    assert report == {"coord_init": "sinusoid", "tokens": 1000}
    assert torch.equal(after[ids], sinusoid_codes(1000, after.shape[1], float(before.std())))
    others = [i for i in range(len(tiny_tokenizer)) if i not in set(ids)]
    assert torch.equal(after[others], before[others])  # text tokens keep their random rows
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_random_leaves_the_model_as_built(tiny_tokenizer):
    model = new_model(tiny_tokenizer)
    before = model.get_input_embeddings().weight.detach().clone()
    assert init_coordinates(model, tiny_tokenizer, "random") == {"coord_init": "random"}
    assert torch.equal(model.get_input_embeddings().weight, before)


def test_a_vocabulary_without_bins_is_one_line():
    from tokenizers import Tokenizer, models

    from tiercel.runtime.tokenizer import TextTokenizer

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<image>", "a"])}
    plain = TextTokenizer(Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), "plain/tokenizer.json")
    with pytest.raises(ConfigError, match=r"^plain/tokenizer.json: the tokenizer has no coordinate tokens .* use coord_init random$"):
        coordinate_ids(plain)
