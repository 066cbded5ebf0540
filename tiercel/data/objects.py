"""The objects file (recipe `data.objects`): labelled shapes per image, for distill.dense's object-cover loss.

    {"format": "tiercel-objects/1", "channels": [name, ...],
     "images": {"images/x.png": [[[channel, ...], [[x, y], ...]], ...]}}

Image keys are the records' image paths as written in the data file; points are in the image's [0, 1] frame
(x / width, y / height); each shape names the channels (classes, attributes) it belongs to. `tiercel data synth`
writes one (objects.json); for real data, write it from your annotations (docs/distill.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from tiercel.errors import DataError

OBJECTS_FORMAT = "tiercel-objects/1"


class ObjectsFile:
    """A per-image file of labelled shapes (data.objects), read once; nothing in it is executed.

    {"format": "tiercel-objects/1", "channels": [name, ...],
     "images": {"images/x.png": [[[channel, ...], [[x, y], ...]], ...]}}

    Image keys are the records' image paths as written in the data file; points are in the image's [0, 1]
    frame (x / width, y / height).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except OSError as e:
            raise DataError(f"{self.path}: cannot read the objects file ({e.strerror}); fix data.objects") from None
        except ValueError as e:
            raise DataError(f"{self.path}: not valid JSON ({e}); write it as docs/distill.md describes") from None
        if not isinstance(doc, dict) or doc.get("format") != OBJECTS_FORMAT:
            raise DataError(f"{self.path}: field 'format' must be '{OBJECTS_FORMAT}'; write it as docs/distill.md describes")
        channels, images = doc.get("channels"), doc.get("images")
        if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
            raise DataError(f"{self.path}: field 'channels' must be a non-empty list of names")
        if not isinstance(images, dict):
            raise DataError(f"{self.path}: field 'images' must map image paths to lists of shapes")
        self.channels, self.images = channels, images
        for name, shapes in images.items():
            self._check(name, shapes)

    def _check(self, name: str, shapes) -> None:
        where = f"{self.path}: images['{name}']"
        if not isinstance(shapes, list):
            raise DataError(f"{where} must be a list of [channels, polygon]")
        for k, shape in enumerate(shapes):
            ok = isinstance(shape, list) and len(shape) == 2 and isinstance(shape[0], list) and isinstance(shape[1], list)
            if not ok or not all(isinstance(c, int) and 0 <= c < len(self.channels) for c in shape[0]):
                raise DataError(f"{where}[{k}]: expected [[channel ids < {len(self.channels)}], [[x, y], ...]]")
            if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in shape[1]):
                raise DataError(f"{where}[{k}]: the polygon must be a list of [x, y] numbers in the image's [0, 1] frame")

    def shapes(self, image: str) -> list | None:
        """The image's labelled shapes, or None when the file does not list it."""
        return self.images.get(image)
