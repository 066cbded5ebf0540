"""Merging per-tile answers into one scene answer: boxes and quads across tile borders, polygons by union.

Each tile's objects arrive in scene pixels with the tile they came from. Two objects of DIFFERENT tiles are one
object when
  - their IoU is at least `iou` (0.5): the same object seen whole in two overlapping tiles, or
  - one of them is cut by its tile's edge (an edge inside the scene, within `edge_tolerance` of it) and their
    intersection over the smaller one's area is at least `ios` (0.5): an object split by a tile border shows up
    as two partial boxes, or a partial box inside a whole one.
Objects of the SAME tile are never merged with each other (the model told them apart), except through a chain
of cross-tile matches. Matches are grouped transitively (union-find: an object at a corner of four tiles comes
as four parts), and a group becomes the union of its members (boxes: the enclosing box; quads: the minimum
rotated rectangle of the union). Falcon gives no confidence, so groups are ordered by how many tile detections
support them, then by where they were first seen (tile order, then generation order) - never by a score.

Polygons (PIX_SEG, PIX_CHG) are merged by union (shapely.unary_union): overlapping or touching instances
become one instance, one part per polygon of the union, holes dropped (the answer grammar has no holes).

Hand-written instead of SAHI's or torchvision's NMS: those suppress duplicates (keep the best-scored box) and
need scores; here there are none, and a cut object must become the union of its parts, not its larger half.
Boxes need numpy only; quads and polygons need shapely (`tiercel[geo]`). Knows nothing about models or files.
"""

from __future__ import annotations

import numpy as np

from tiercel.errors import require

IOU = 0.5
IOS = 0.5


def _shapely(task: str):
    return require("shapely", "geo", f"merging {task} answers across tiles")


def _cut(points: np.ndarray, window, scene: tuple[int, int], tol: float) -> bool:
    """Whether any point [N, 2] lies on an edge of `window` (x, y, w, h) that is inside the scene."""
    x, y, w, h = window
    sw, sh = scene
    xs, ys = points[:, 0], points[:, 1]
    return bool((x > 0 and (xs <= x + tol).any()) or (x + w < sw and (xs >= x + w - tol).any())
                or (y > 0 and (ys <= y + tol).any()) or (y + h < sh and (ys >= y + h - tol).any()))


def tolerance(window) -> float:
    """How near a tile edge counts as on it: two answer bins of the tile (bins are 1/1000 of a side) + 1 px."""
    return 2 * max(window[2], window[3]) / 1000 + 1


def _groups(n: int, pairs) -> list[list[int]]:
    """Connected components of `pairs` over n items (union-find), each sorted, ordered by first member."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def _neighbour_tiles(windows: list) -> list[tuple[int, int]]:
    """Pairs of tile indices whose windows overlap (sorted by x: only windows starting within a tile width)."""
    order = sorted(range(len(windows)), key=lambda i: windows[i][0])
    pairs = []
    for k, a in enumerate(order):
        ax, ay, aw, ah = windows[a]
        for b in order[k + 1:]:
            bx, by, bw, bh = windows[b]
            if bx >= ax + aw:
                break
            if by < ay + ah and ay < by + bh:
                pairs.append((min(a, b), max(a, b)))
    return pairs


def _box_pairs(boxes: np.ndarray, cut: np.ndarray, a: np.ndarray, b: np.ndarray, iou: float, ios: float):
    """Index pairs (into boxes) of a x b that are one object."""
    p, q = boxes[a][:, None], boxes[b][None]
    iw = np.clip(np.minimum(p[..., 2], q[..., 2]) - np.maximum(p[..., 0], q[..., 0]), 0, None)
    ih = np.clip(np.minimum(p[..., 3], q[..., 3]) - np.maximum(p[..., 1], q[..., 1]), 0, None)
    inter = iw * ih
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    area_q = (q[..., 2] - q[..., 0]) * (q[..., 3] - q[..., 1])
    union, smaller = area_p + area_q - inter, np.minimum(area_p, area_q)
    same = inter / np.maximum(union, 1e-9) >= iou
    either_cut = cut[a][:, None] | cut[b][None]
    same |= either_cut & (inter / np.maximum(smaller, 1e-9) >= ios) & (inter > 0)
    return [(int(a[i]), int(b[j])) for i, j in zip(*np.nonzero(same))]


def _cross_tile_pairs(tile_of: np.ndarray, windows: list, match) -> list[tuple[int, int]]:
    """All object pairs from overlapping tiles that `match(idx_a, idx_b)` calls one object."""
    pairs = []
    for ta, tb in _neighbour_tiles(windows):
        a, b = np.flatnonzero(tile_of == ta), np.flatnonzero(tile_of == tb)
        if len(a) and len(b):
            pairs += match(a, b)
    return pairs


def _ordered(groups: list[list[int]]) -> list[list[int]]:
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def merge_boxes(boxes: list, tile_of: list[int], windows: list, scene: tuple[int, int], iou: float = IOU,
                ios: float = IOS) -> tuple[list[list[float]], list[list[int]]]:
    """Boxes [x1, y1, x2, y2] in scene pixels, each from tile `tile_of[i]` (an index into windows (x, y, w, h))
    -> (merged boxes, member indices of each), ordered by support."""
    if not boxes:
        return [], []
    arr, tiles = np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(tile_of)
    cut = np.array([_cut(b.reshape(2, 2), windows[t], scene, tolerance(windows[t])) for b, t in zip(arr, tiles)])
    pairs = _cross_tile_pairs(tiles, windows, lambda a, b: _box_pairs(arr, cut, a, b, iou, ios))
    groups = _ordered(_groups(len(arr), pairs))
    merged = [[float(arr[g, 0].min()), float(arr[g, 1].min()), float(arr[g, 2].max()), float(arr[g, 3].max())]
              for g in groups]
    return merged, groups


def merge_quads(quads: list, tile_of: list[int], windows: list, scene: tuple[int, int], iou: float = IOU,
                ios: float = IOS) -> tuple[list, list[list[int]]]:
    """Quads [[x, y] x 4] in scene pixels -> (merged quads, member indices), as merge_boxes with polygon areas."""
    if not quads:
        return [], []
    shapely = _shapely("REG_DET_OBB")
    polys = [shapely.make_valid(shapely.Polygon(q)) for q in quads]
    tiles = np.asarray(tile_of)
    cut = [_cut(np.asarray(q, dtype=float), windows[t], scene, tolerance(windows[t])) for q, t in zip(quads, tiles)]

    def match(a, b):
        out = []
        for i in a:
            for j in b:
                inter = polys[i].intersection(polys[j]).area
                if inter <= 0:
                    continue
                union, smaller = polys[i].area + polys[j].area - inter, min(polys[i].area, polys[j].area)
                if inter / max(union, 1e-9) >= iou or ((cut[i] or cut[j]) and inter / max(smaller, 1e-9) >= ios):
                    out.append((int(i), int(j)))
        return out

    groups = _ordered(_groups(len(quads), _cross_tile_pairs(tiles, windows, match)))
    merged = []
    for g in groups:
        if len(g) == 1:
            merged.append([list(map(float, p)) for p in quads[g[0]]])
            continue
        rect = shapely.minimum_rotated_rectangle(shapely.unary_union([polys[i] for i in g]))
        merged.append([[float(x), float(y)] for x, y in list(rect.exterior.coords)[:4]])
    return merged, groups


def merge_polygons(instances: list, tile_of: list[int]) -> tuple[list, list[list[int]]]:
    """Polygon instances (parts -> [x, y]) in scene pixels -> (the union's instances, indices of the input
    instances each one overlaps), largest first."""
    if not instances:
        return [], []
    shapely = _shapely("PIX_SEG / PIX_CHG")
    shapes = []
    for inst in instances:
        parts = [shapely.make_valid(shapely.Polygon(p)) for p in inst if len(p) >= 3]
        shapes.append(shapely.unary_union(parts) if parts else shapely.Polygon())
    union = shapely.unary_union(shapes)
    pieces = [g for g in shapely.get_parts(union) if g.geom_type == "Polygon" and g.area > 0]
    pieces.sort(key=lambda g: (-g.area, g.bounds[1], g.bounds[0]))
    tree = shapely.STRtree(shapes)
    merged, members = [], []
    for piece in pieces:
        merged.append([[[float(x), float(y)] for x, y in list(piece.exterior.coords)[:-1]]])
        members.append(sorted(int(i) for i in tree.query(piece, predicate="intersects")))
    return merged, members
