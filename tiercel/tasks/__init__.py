"""tiercel.tasks: the 14 Falcon tasks: prompts, answer grammar, parsers, metrics. numpy only, no torch.

    import tiercel.tasks as T
    spec = T.get("REG_DET_HBB")
    prompt = spec.prompt(text="airplane")
    boxes = spec.parse(answer_text, image_size=(W, H))          # never raises; see boxes.warnings
    scores = spec.metric(preds, refs, image_sizes)              # scores[spec.headline] is the headline
    falcon = spec.metric(preds, refs, image_sizes, protocol="falcon")  # as Falcon's own evaluation scores it

Coordinates in results and regions are pixels; the answer text holds bins 0..999 (`<N>` in the falcon dialect,
`<loc_N>` in the florence one). This package knows nothing about models, tokenizers, image decoding or
generation; tiercel.runtime and tiercel.models build on it, never the other way round.
"""

from tiercel.tasks.change import tile_change_pair
from tiercel.tasks.grammar import DIALECTS, from_bin, to_bin
from tiercel.tasks.results import Boxes, Caption, Count, Label, Polygons, Quads, Result, from_dict
from tiercel.tasks.specs import PROTOCOLS, TAGS, TASKS, TaskSpec, average_headline, check_protocol, get, split_user_turn

__all__ = [
    "DIALECTS",
    "PROTOCOLS",
    "TAGS",
    "TASKS",
    "Boxes",
    "Caption",
    "Count",
    "Label",
    "Polygons",
    "Quads",
    "Result",
    "TaskSpec",
    "average_headline",
    "check_protocol",
    "from_bin",
    "from_dict",
    "get",
    "split_user_turn",
    "tile_change_pair",
    "to_bin",
]
