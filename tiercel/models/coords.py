"""Initial embeddings of the coordinate tokens `<0>`..`<999>` (or Florence's `<loc_0>`..`<loc_999>`) of a new model.

A randomly initialised model sees the 1,000 bins as unrelated tokens: cross-entropy on `<417>` gives no credit to
`<416>`, so a model trained from scratch learns the prior over bins and never reads positions from the image
(docs/fidelity.md). `sinusoid` gives bin k the row [sin(2 pi k / P_j), cos(2 pi k / P_j)] over periods P_j from
2,000 bins down to 8 (geometric), scaled to the embedding table's own standard deviation. Close bins get close rows,
and since the output layer is tied to the embeddings, a hidden state that scores one bin high scores its neighbours
high too: the loss rewards being roughly right from the first step. The rows stay trainable.

Only for models built from a preset (random weights); a pretrained checkpoint keeps its embeddings. Knows nothing
about training or data beyond the tokenizer's vocabulary.
"""

from __future__ import annotations

import math

from tiercel.errors import ConfigError

N_BINS = 1000
COORD_INITS = ("random", "sinusoid")


def sinusoid_codes(n: int, dim: int, std: float):
    """n x dim float32 rows [sin(2 pi k / P_j) ..., cos(2 pi k / P_j) ...], periods P_j from 2n down to 8, with
    `std` as the standard deviation over all entries."""
    import torch

    half = dim // 2
    periods = 2 * n * (8 / (2 * n)) ** (torch.arange(half, dtype=torch.float64) / max(half - 1, 1))
    angles = 2 * math.pi * torch.arange(n, dtype=torch.float64)[:, None] / periods[None, :]
    codes = torch.cat([angles.sin(), angles.cos()], dim=1)
    if dim % 2:
        codes = torch.cat([codes, torch.zeros(n, 1, dtype=torch.float64)], dim=1)
    return (codes * (std / codes.std())).float()


def coordinate_ids(tokenizer) -> list[int]:
    """Token ids of the bins `<0>`..`<999>` (or `<loc_0>`..`<loc_999>`); ConfigError when the vocabulary has neither."""
    for pattern in ("<{}>", "<loc_{}>"):
        ids = [tokenizer.tok.token_to_id(pattern.format(k)) for k in range(N_BINS)]
        if all(i is not None for i in ids):
            return ids
    raise ConfigError(f"{tokenizer.source}: the tokenizer has no coordinate tokens <0>..<999> (or <loc_0>..<loc_999>) "
                      "for coord_init sinusoid; use coord_init random")


def init_coordinates(model, tokenizer, how: str = "sinusoid") -> dict:
    """Set the coordinate tokens' embeddings of a freshly built `model` ("random" leaves them). Returns a report."""
    import torch

    if how not in COORD_INITS:
        raise ConfigError(f"unknown coord_init {how!r}; valid: {', '.join(COORD_INITS)}")
    if how == "random":
        return {"coord_init": "random"}
    ids = torch.tensor(coordinate_ids(tokenizer))
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = sinusoid_codes(N_BINS, weight.shape[1], float(weight.std())).to(weight.dtype)
    return {"coord_init": "sinusoid", "tokens": len(ids)}
