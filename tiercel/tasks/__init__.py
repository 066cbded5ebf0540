"""tiercel.tasks: the 14 Falcon tasks (prompts, answer grammar, parsers, metrics). numpy only, no torch."""

from tiercel.tasks.results import Boxes, Caption, Count, Label, Polygons, Quads, Result, from_dict  # noqa: F401
