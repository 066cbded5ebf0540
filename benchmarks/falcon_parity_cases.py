"""Seeded reference answers in Falcon's grammar and perturbed predictions, for benchmarks/falcon_parity.py.

`cases(tag, seed)` returns one run's samples: {"size": (W, H) of one frame, "crop": [] or [x1, y1, x2, y2] of
that size, "ref": answer text, "pred": answer text, "kind": the perturbation}. Texts are built by hand here
(bins 0..999, `<box>`, `<quad>`, `<poly>..<sep>..</poly>`); this module knows nothing about either scorer.
"""

from __future__ import annotations

import math

import numpy as np

LABELS = (
    "airplane", "ship", "storage tank", "baseball diamond", "tennis court", "harbor", "bridge", "roundabout",
    "ground track field", "soccer ball field", "vehicle", "dense residential", "forest", "river", "beach",
)  # fmt: skip
OOV = ("spaceship", "volcano crater", "unknown", "car park")
VQA_ANSWERS = ("yes", "no", "red", "left side", "two", "rural", "urban", "none")
NOUNS = ("airplane", "building", "road", "tree", "ship", "car", "field", "river", "house", "bridge", "tank", "lake")
ADJECTIVES = ("large", "small", "white", "gray", "green", "long", "parked", "dense", "narrow", "round")
PLACES = ("near the road", "next to a river", "in the center", "on the left", "beside some trees", "at the port")
SIZES = ((512, 512), (800, 600), (1024, 768), (640, 480), (333, 517), (1000, 1000), (257, 911))

LABEL_TASKS = ("IMG_CLS", "REG_CLS_HBB", "REG_CLS_OBB", "PIX_CLS")
CAPTION_TASKS = ("IMG_CAP", "IMG_CAP_DETAILED", "REG_CAP")


def cases(tag: str, seed: int) -> list[dict]:
    """One run of `tag`: 60..200 samples (the number drawn from `seed`)."""
    rng = np.random.default_rng([seed, sum(map(ord, tag))])
    make = _MAKERS[tag]
    out = []
    for _ in range(int(rng.integers(60, 201))):
        size = SIZES[rng.integers(len(SIZES))]
        crop = [] if rng.random() < 0.6 else _crop(rng, size)
        ref, pred, kind = make(rng, tag)
        out.append({"size": size, "crop": crop, "ref": ref, "pred": pred, "kind": kind})
    return out


def _crop(rng, size) -> list[int]:
    x, y = (int(v) for v in rng.integers(0, 300, 2))
    return [x, y, x + size[0], y + size[1]]


def _pick(rng, options):
    return options[rng.integers(len(options))]


def _kind(rng, weights: dict) -> str:
    names = list(weights)
    p = np.array([weights[k] for k in names], float)
    return names[rng.choice(len(names), p=p / p.sum())]


# ---- labels, VQA, counts, captions ----
def _label(rng, tag):
    multi = tag == "IMG_CLS"  # IMG_CLS runs have comma-separated references: Falcon scores them multi-label
    ref_labels = list(rng.choice(LABELS, size=int(rng.integers(1, 4)) if multi else 1, replace=False))
    ref = ", ".join(ref_labels)
    kind = _kind(rng, {"exact": 5, "case": 1, "period": 1, "wrong": 2, "oov": 1, "empty": 0.5, "spaces": 0.5,
                       "swapped": 1 if multi else 0, "extra_label": 1, "dropped_label": 1 if multi else 0})  # fmt: skip
    pred = {
        "exact": ref,
        "case": ref.upper() if rng.random() < 0.5 else ref.title(),
        "period": ref + ".",
        "wrong": _pick(rng, [x for x in LABELS if x not in ref_labels]),
        "oov": _pick(rng, OOV),
        "empty": "",
        "spaces": " " + ref.replace(" ", "  ") + " ",
        "swapped": ", ".join(ref_labels[::-1]),
        "extra_label": ", ".join(ref_labels + [_pick(rng, [x for x in LABELS if x not in ref_labels])]),
        "dropped_label": ", ".join(ref_labels[:-1]) or ref,
    }[kind]
    return ref, pred, kind


def _vqa(rng, tag):
    ref = _pick(rng, VQA_ANSWERS)
    kind = _kind(rng, {"exact": 5, "case": 1, "period": 1, "wrong": 2, "sentence": 1, "empty": 0.5})
    pred = {"exact": ref, "case": ref.capitalize(), "period": ref + ".", "empty": "",
            "wrong": _pick(rng, [a for a in VQA_ANSWERS if a != ref]), "sentence": f"{ref}, it is"}[kind]  # fmt: skip
    return ref, pred, kind


def _count(rng, tag):
    n = int(rng.integers(0, 31))
    ref = str(n)
    kind = _kind(rng, {"exact": 5, "off_by_one": 2, "decimal": 1, "trailing_period": 1, "word": 1, "empty": 0.5,
                       "space": 0.5, "dotted_ref": 0.5, "sentence": 0.5})  # fmt: skip
    if kind == "dotted_ref":  # "2.5" against "25": Falcon removes every "." before comparing
        ref = str(10 * (n % 9 + 1) + 5)
        return ref, f"{ref[0]}.{ref[1]}", kind
    words = "zero one two three four five six seven eight nine ten".split()
    pred = {"exact": ref, "off_by_one": str(n + 1), "decimal": f"{n}.5", "trailing_period": f"{n}.",
            "word": words[min(n, 10)], "empty": "", "space": f" {n}", "sentence": f"There are {n}."}[kind]  # fmt: skip
    return ref, pred, kind


def _sentence(rng) -> str:
    return f"{_pick(rng, ('a', 'the', 'some'))} {_pick(rng, ADJECTIVES)} {_pick(rng, NOUNS)} {_pick(rng, PLACES)}"


def _caption(rng, tag):
    n_sentences = {"IMG_CAP": 1, "IMG_CAP_DETAILED": 3, "REG_CAP": 1}[tag]
    sentences = [_sentence(rng) for _ in range(n_sentences)]
    if tag == "REG_CAP":
        sentences = [" ".join(sentences[0].split()[:3])]
    ref = ". ".join(s.capitalize() for s in sentences) + ("." if tag != "REG_CAP" else "")
    kind = _kind(rng, {"exact": 3, "word_changed": 3, "words_dropped": 2, "lower": 1, "other": 2, "empty": 0.5})
    words = ref.split()
    if kind == "word_changed":
        words[rng.integers(len(words))] = _pick(rng, NOUNS + ADJECTIVES)
    elif kind == "words_dropped" and len(words) > 2:
        words = [w for i, w in enumerate(words) if i == 0 or rng.random() > 0.3]
    pred = {"lower": ref.lower(), "other": ". ".join(_sentence(rng) for _ in range(n_sentences)), "empty": ""}.get(
        kind, " ".join(words)
    )
    return ref, pred, kind


# ---- geometry: bins 0..999 ----
def _jitter(rng, values, step):
    return [int(np.clip(v + rng.integers(-step, step + 1), 0, 999)) for v in values]


def _box(rng):
    x, y = (int(v) for v in rng.integers(0, 960, 2))
    w, h = (int(v) for v in rng.integers(10, 300, 2))
    return [x, y, min(x + w, 999), min(y + h, 999)]


def _quad(rng):
    cx, cy = (int(v) for v in rng.integers(80, 920, 2))
    hw, hh, a = int(rng.integers(8, 100)), int(rng.integers(8, 100)), rng.uniform(0, math.pi)
    c, s = math.cos(a), math.sin(a)
    corners = ((-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh))
    return [int(np.clip(round(v), 0, 999)) for dx, dy in corners for v in (cx + c * dx - s * dy, cy + s * dx + c * dy)]


def _part(rng, cx, cy, radius, hi=999):
    k = int(rng.integers(3, 11))
    angles = np.sort(rng.uniform(0, 2 * math.pi, k))
    radii = rng.uniform(0.5, 1.0, k) * radius
    return [int(np.clip(round(v), 0, hi)) for a, r in zip(angles, radii) for v in (cx + r * math.cos(a), cy + r * math.sin(a))]  # fmt: skip


def _instance(rng, change: bool):
    if change and rng.random() < 0.2:  # crosses the border of the top-left quadrant of the 2W x 2H canvas
        cx, cy, radius = rng.integers(440, 520), rng.integers(100, 520), rng.integers(40, 90)
    elif change:
        cx, cy, radius = rng.integers(60, 440), rng.integers(60, 440), rng.integers(10, 60)
    else:
        cx, cy, radius = rng.integers(60, 940), rng.integers(60, 940), rng.integers(10, 120)
    parts = [_part(rng, cx, cy, radius)]
    if rng.random() < 0.3:
        parts.append(_part(rng, cx + radius * 1.5, cy, radius * 0.5))
    return parts


def _bins(values) -> str:
    return "".join(f"<{v}>" for v in values)


def _write(tag, items) -> str:
    if tag in ("PIX_SEG", "PIX_CHG"):
        return "".join("<poly>" + "<sep>".join(_bins(p) for p in inst) + "</poly>" for inst in items)
    wrap = "quad" if tag == "REG_DET_OBB" else "box"
    return "".join(f"<{wrap}>{_bins(b)}</{wrap}>" for b in items)


def _geometry(rng, tag):
    new = {"REG_DET_HBB": lambda: _box(rng), "REG_VG": lambda: _box(rng), "REG_DET_OBB": lambda: _quad(rng),
           "PIX_SEG": lambda: _instance(rng, False), "PIX_CHG": lambda: _instance(rng, True)}[tag]  # fmt: skip
    refs = [new() for _ in range(1 if tag == "REG_VG" else int(rng.integers(1, 6)))]
    weights = {"exact": 3, "jitter": 4, "dropped": 2, "extra": 2, "duplicate": 1, "empty": 0.5, "wrong": 1}
    weights.update({"space_in_box": 0.5, "swapped_corners": 0.5} if tag in ("REG_DET_HBB", "REG_VG") else {})
    weights.update({"self_intersecting": 1} if tag == "REG_DET_OBB" else {})
    kind = _kind(rng, weights)
    jit = lambda item: (
        _jitter(rng, item, int(_pick(rng, (1, 3, 10, 30))))
        if tag[:3] == "REG"
        else [  # noqa: E731
            _jitter(rng, p, int(_pick(rng, (1, 3, 10)))) for p in item
        ]
    )
    preds = {
        "exact": lambda: refs,
        "jitter": lambda: [jit(r) for r in refs],
        "dropped": lambda: refs[:-1],
        "extra": lambda: refs + [new()],
        "duplicate": lambda: refs + [refs[int(rng.integers(len(refs)))]],
        "empty": lambda: [],
        "wrong": lambda: [new() for _ in refs],
        "swapped_corners": lambda: [[b[2], b[1], b[0], b[3]] for b in refs],
        "self_intersecting": lambda: [[*q[0:2], *q[4:6], *q[2:4], *q[6:8]] for q in refs],
        "space_in_box": lambda: refs,
    }[kind]()
    pred = _write(tag, preds)
    if kind == "space_in_box":  # Falcon's box regex needs 4 adjacent <N>: the first box is dropped
        pred = pred.replace("><", "> <", 1)
    return _write(tag, refs), pred, kind


_MAKERS = {
    **{t: _label for t in LABEL_TASKS},
    **{t: _caption for t in CAPTION_TASKS},
    "IMG_VQA": _vqa,
    "IMG_CT": _count,
    **{t: _geometry for t in ("REG_DET_HBB", "REG_DET_OBB", "REG_VG", "PIX_SEG", "PIX_CHG")},
}
