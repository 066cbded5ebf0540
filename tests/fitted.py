"""A tiny model fitted in a few seconds to answer the 14 task prompts on one image with well-formed answers.

The untrained tiny model's answers do not parse; this one's greedy and beam answers do (what constrained
decoding must then leave token for token as they are). Shared by the constrained-decoding tests and benchmark.
"""

from __future__ import annotations

import copy
import functools

from tests.bundles import TASK_INPUTS, image

# The answer each task is fitted to, as the task writers produce it (pixels of the 96 x 64 image(1)).
ANSWERS = {
    "IMG_CLS": "harbor",
    "IMG_CAP": "A harbor with ships.",
    "IMG_CAP_DETAILED": "A harbor with three ships and a storage tank near the water.",
    "IMG_VQA": "yes",
    "IMG_CT": "3",
    "REG_CLS_HBB": "ship",
    "REG_CLS_OBB": "ship",
    "REG_DET_HBB": "<box><104><125><520><625></box><box><600><93><812><406></box>",
    "REG_DET_OBB": "<quad><104><125><520><156><500><625><83><593></quad>",
    "REG_VG": "<box><313><250><625><750></box>",
    "REG_CAP": "a white ship",
    "PIX_CLS": "storage tank",
    "PIX_SEG": "<poly><104><125><520><156><312><625><sep><600><100><700><100><650><300></poly>",
    "PIX_CHG": "<poly><52><62><260><78><156><312></poly>",
}
STEPS = 150


def prompts() -> dict[str, str]:
    from tiercel import tasks

    img = image(1)
    size = (img.shape[1], img.shape[0])
    return {t: tasks.get(t).prompt(image_size=size, **TASK_INPUTS.get(t, {})) for t in tasks.TAGS}


@functools.cache
def fitted_model(model, tokenizer, steps: int = STEPS):
    """A copy of `model` trained (Adam, teacher forcing, one batch of the 14 prompts) to give ANSWERS."""
    import numpy as np
    import torch

    from tiercel.runtime.preprocess import preprocess

    torch.manual_seed(0)
    fitted = copy.deepcopy(model).train()
    size = model.tiercel_shape.image_size
    pixels = torch.from_numpy(preprocess(image(1), size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    n_img = fitted.model.get_image_features(pixels).pooler_output.shape[1]
    tags = list(ANSWERS)
    ps = prompts()
    enc = [tokenizer.prompt_ids(ps[t], n_img) for t in tags]
    lab = [[tokenizer.bos_id, *tokenizer.encode(ANSWERS[t]), tokenizer.eos_id] for t in tags]
    ids, mask = _pad(enc, tokenizer.pad_id), _pad(enc, 0, fill=1)
    labels = _pad(lab, -100)
    dec = torch.cat([torch.full((len(tags), 1), 2), labels[:, :-1]], dim=1)
    dec[dec == -100] = tokenizer.pad_id
    opt = torch.optim.Adam(fitted.parameters(), lr=3e-3)
    for _ in range(steps):
        embeds = fitted.get_input_embeddings()(ids)
        feats = fitted.model.get_image_features(pixels).pooler_output
        embeds = torch.cat([feats.expand(len(tags), -1, -1), embeds[:, n_img:]], dim=1)
        out = fitted(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=dec, use_cache=False)
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.isfinite(loss.item())
    return fitted.eval()


def _pad(rows, value, fill=None):
    import torch

    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r) if fill is None else fill
    return out
