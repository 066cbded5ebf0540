"""tiercel.models: Florence-2 / Falcon shapes (presets), checkpoint loading in both layouts, tokenizers.

Importing this package is cheap: torch and transformers load only when a function that needs them runs,
so `tiercel.models.tokenizer` (torch-free) can be used on a device that has no torch.
"""

from __future__ import annotations

_LAZY = {
    "PRESETS": "tiercel.models.presets",
    "ModelShape": "tiercel.models.presets",
    "get_preset": "tiercel.models.presets",
    "build": "tiercel.models.zoo",
    "to_config": "tiercel.models.zoo",
    "load_checkpoint": "tiercel.models.checkpoint",
    "save_native": "tiercel.models.checkpoint",
    "Checkpoint": "tiercel.models.checkpoint",
    "TextTokenizer": "tiercel.models.tokenizer",
    "train_bpe": "tiercel.models.tokenizer",
    "model_report": "tiercel.models.report",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tiercel.models' has no attribute {name!r}")
