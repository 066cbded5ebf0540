"""Dense auxiliary targets on the image-token grid: `distill.dense` (docs/distill.md, "Dense losses").

A model trained from scratch on a few thousand records learns the answer's text prior and stops reading its
image (docs/fidelity.md). Two per-cell targets give the image tokens a direct reason to hold where things are:

- `answer`: where the record's own answer geometry lies (boxes, quads, polygons of REG_VG, REG_DET_HBB,
  REG_DET_OBB, PIX_SEG, PIX_CHG), predicted from the text encoder's output at the image slots, after it has
  read the prompt: the encoder has to find what the prompt names. Needs nothing but the records.
- `objects`: where each class lies, predicted from the projected image tokens, from a per-image file of
  labelled shapes (`data.objects`; `tiercel data synth` writes objects.json). It teaches the vision tower what
  the prompts name before the decoder can use it.

Each image token covers `cells` x `cells` cells of a grid `image_grid * cells` cells a side; a target is the
share of each cell that the shapes cover, in [0, 1], sampled at 8 x 8 points per cell. The point-in-polygon
test is written here in numpy (a dozen lines): shapely is an optional extra (eval) the trainer should not need,
and PIL's polygon fill counts a pixel an edge only touches, which shifts a box by a sample.
"""

from __future__ import annotations

import numpy as np

from tiercel import tasks
from tiercel.data.objects import ObjectsFile
from tiercel.tasks import answers

GEOMETRY_KINDS = {"box": answers.read_boxes, "quad": answers.read_quads, "poly": answers.read_polygons}
SUPERSAMPLE = 8


def cover(shapes: list[tuple[list[int], list]], n: int, channels: int = 1) -> np.ndarray:
    """(n, n, channels) share of each cell covered by `shapes`: (channel ids, polygon [[x, y], ...] in the
    image's [0, 1] frame). A cell's share is that of its SUPERSAMPLE x SUPERSAMPLE sample points (centres of
    sub-cells) inside the polygon; a shape holding no sample point marks the one at its centre; overlapping
    shapes of one channel count once."""
    side = n * SUPERSAMPLE
    centres = (np.arange(side) + 0.5) / side
    out = np.zeros((n, n, channels), dtype=np.float32)
    masks: dict[int, np.ndarray] = {}
    for chans, polygon in shapes:
        poly = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if len(poly) < 3:
            continue
        # only the sample points inside the shape's bounding box can be inside it
        lo = np.clip(np.floor(poly.min(0) * side - 0.5).astype(int), 0, side)
        hi = np.clip(np.ceil(poly.max(0) * side - 0.5).astype(int) + 1, 0, side)
        if (hi <= lo).any():
            continue
        window = _inside(centres[lo[0] : hi[0]], centres[lo[1] : hi[1]], poly)
        if not window.any():  # smaller than a sample's spacing: it still marks the sample at its centre
            (cx, cy), window = np.clip((poly.mean(0) * side).astype(int), 0, side - 1), np.ones((1, 1), dtype=bool)
            lo, hi = np.array([cx, cy]), np.array([cx + 1, cy + 1])
        for c in chans:
            masks.setdefault(c, np.zeros((side, side), dtype=bool))[lo[1] : hi[1], lo[0] : hi[0]] |= window
    for c, mask in masks.items():
        out[:, :, c] = mask.reshape(n, SUPERSAMPLE, n, SUPERSAMPLE).mean(axis=(1, 3))
    return out


def _inside(xs: np.ndarray, ys: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(len(ys), len(xs)) bool: which points (xs[j], ys[i]) lie inside the polygon, by the even-odd rule."""
    y, x = ys[:, None], xs[None, :]
    inside = np.zeros((len(ys), len(xs)), dtype=bool)
    for (x1, y1), (x2, y2) in zip(polygon, np.roll(polygon, -1, axis=0)):
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)  # the edge spans this row
        inside ^= crosses & (x < x1 + (y - y1) * (x2 - x1) / (y2 - y1))
    return inside


def per_token(grid: np.ndarray, side: int, cells: int) -> np.ndarray:
    """(side * cells, side * cells, C) -> (side * side, cells * cells * C): each image token's own block of
    cells, tokens row-major as Florence-2 orders them."""
    c = grid.shape[-1]
    blocks = grid.reshape(side, cells, side, cells, c).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(side * side, cells * cells * c)


def answer_shapes(tag: str, answer: str) -> list[list] | None:
    """The answer's geometry as polygons in the [0, 1] frame of the model's input (bins / 1000; for PIX_CHG the
    2x2 canvas the model sees), or None for a task whose answer is not geometry."""
    read = GEOMETRY_KINDS.get(tasks.get(tag).answer)
    if read is None:
        return None
    result = read(answer, (1.0, 1.0))
    if hasattr(result, "boxes"):
        return [[[x1, y1], [x2, y1], [x2, y2], [x1, y2]] for x1, y1, x2, y2 in result.boxes]
    if hasattr(result, "quads"):
        return list(result.quads)
    return [part for instance in result.polygons for part in instance]


class DenseTargets:
    """Per record, the targets of distill.dense on a model's image-token grid, cached by record index."""

    def __init__(self, data, side: int, cells: int, objects: ObjectsFile | None = None):
        self.data, self.side, self.cells, self.objects = data, side, cells, objects
        self._cache: dict[int, tuple] = {}

    @property
    def channels(self) -> int:
        return len(self.objects.channels) if self.objects else 0

    def record(self, i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(answer target or None, objects target or None) of record i, each (side * side, cells * cells * C)."""
        if i not in self._cache:
            self._cache[i] = (self._answer(i), self._objects(i))
        return self._cache[i]

    def _answer(self, i: int):
        r = self.data.records[i]
        shapes = answer_shapes(r.tag, r.answer)
        if not shapes:
            return None
        n = self.side * self.cells
        return per_token(cover([([0], s) for s in shapes], n), self.side, self.cells)

    def _objects(self, i: int):
        r = self.data.records[i]
        if self.objects is None or r.crop or tasks.get(r.tag).n_images != 1:  # the file's frame is the whole image
            return None
        shapes = self.objects.shapes(r.images[0])
        if shapes is None:
            return None
        n = self.side * self.cells
        return per_token(cover(shapes, n, self.channels), self.side, self.cells)

    def batch(self, indices) -> dict:
        """{"answer": (B, tokens, cells^2), "answer_mask": (B,), "objects": (B, tokens, cells^2 * C),
        "objects_mask": (B,)} as torch tensors; rows without a target are zeros with mask 0."""
        import torch

        tokens = self.side * self.side
        width = {"answer": self.cells * self.cells, "objects": self.cells * self.cells * max(self.channels, 1)}
        out = {}
        for k, key in enumerate(("answer", "objects")):
            rows = [self.record(i)[k] for i in indices]
            target = np.zeros((len(indices), tokens, width[key]), dtype=np.float32)
            mask = np.zeros(len(indices), dtype=np.float32)
            for row, t in enumerate(rows):
                if t is not None:
                    target[row], mask[row] = t, 1.0
            out[key], out[f"{key}_mask"] = torch.from_numpy(target), torch.from_numpy(mask)
        return out
