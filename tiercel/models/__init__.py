"""tiercel.models: Florence-2 / Falcon shapes (presets), checkpoint loading in both layouts, tokenizers.

Importing this package is cheap: torch and transformers load only when a function that needs them runs,
so `tiercel.runtime.tokenizer` (torch-free) can be used on a device that has no torch.
"""

from __future__ import annotations

from tiercel._lazy import lazy_getattr

_LAZY = {
    "PRESETS": "tiercel.models.presets",
    "ModelShape": "tiercel.models.presets",
    "get_preset": "tiercel.models.presets",
    "build": "tiercel.models.zoo",
    "to_config": "tiercel.models.zoo",
    "load_checkpoint": "tiercel.models.checkpoint",
    "save_native": "tiercel.models.checkpoint",
    "Checkpoint": "tiercel.models.checkpoint",
    "TextTokenizer": "tiercel.runtime.tokenizer",
    "train_bpe": "tiercel.runtime.tokenizer",
    "model_report": "tiercel.models.report",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
