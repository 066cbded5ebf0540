"""The synthetic remote-sensing benchmark: procedural top-down scenes with ground truth for all 14 tasks.

    from tiercel.data.synth import generate
    meta = generate("synth/", n=10_000, size=256, seed=0)   # images/, train/val/test.json, meta.json

Scenes (catalog.py: 8 scene classes, 7 object classes, 7 ground types) are laid out (layout.py,
regions.py), drawn (render.py) and described (language.py, truth.py); writer.py schedules and writes.
Difficulty knobs are documented in knobs.py. numpy and PIL only: nothing here imports torch.
"""

from tiercel.data.synth.catalog import OBJECT_CLASSES, REGION_CLASSES, SCENE_CLASSES
from tiercel.data.synth.knobs import Knobs
from tiercel.data.synth.writer import GENERATOR_VERSION, generate, split_sizes

__all__ = ["GENERATOR_VERSION", "Knobs", "OBJECT_CLASSES", "REGION_CLASSES", "SCENE_CLASSES", "generate", "split_sizes"]
