"""Tiny bundles shared by the export, runtime and CLI tests: exported once per test process."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np

# One prompt input per task that needs one (pixels of a 96 x 64 image).
TASK_INPUTS = {
    "IMG_VQA": {"text": "Is there a ship?"},
    "IMG_CT": {"text": "ship"},
    "REG_CLS_HBB": {"region": [10, 8, 50, 40]},
    "REG_CLS_OBB": {"region": [[10, 8], [50, 10], [48, 40], [8, 38]]},
    "REG_DET_HBB": {"text": "airplane"},
    "REG_DET_OBB": {"text": "ship"},
    "REG_VG": {"text": "the white airplane near the runway"},
    "REG_CAP": {"region": [10, 8, 50, 40]},
    "PIX_CLS": {"region": [[10, 8], [50, 10], [30, 40]]},
    "PIX_SEG": {"text": "storage tank"},
}


def image(seed: int = 0, w: int = 96, h: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@functools.cache
def tiny_bundle(model, tokenizer, decoder: str = "split", backends=("onnxruntime", "openvino")) -> Path:
    from tiercel.export.bundle import export_model

    out = Path(tempfile.mkdtemp(prefix="tiercel-bundle-")) / f"{decoder}"
    return export_model(model, tokenizer, out, backends=backends, decoder=decoder)


def hf_generate(model, tokenizer, features, prompt: str, **generation) -> list[int]:
    """transformers `generate` from precomputed image features (one torch vision pass per image)."""
    import torch

    ids = torch.tensor([tokenizer.prompt_ids(prompt, features.shape[1])])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        embeds[:, : features.shape[1]] = torch.from_numpy(features)
        encoded = model.model.language_model.encoder(inputs_embeds=embeds, attention_mask=mask)
        out = model.generate(input_ids=ids, encoder_outputs=encoded, attention_mask=mask, do_sample=False, **generation)
    seq = out[0, 1:].tolist()
    eos = model.generation_config.eos_token_id
    return seq[: seq.index(eos) + 1] if eos in seq else seq


def torch_features(model, pixel_values: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.get_image_features(torch.from_numpy(pixel_values)).pooler_output.numpy()
