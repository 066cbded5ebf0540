"""Answer grammar: coordinate bins and the `<box>` / `<quad>` / `<poly>` structures, in two dialects.

A coordinate is an integer bin 0..999 of the image side: bin = clamp(floor(x / (W/1000)), 0, 999), back to
pixels at the bin centre, (bin + 0.5) * W/1000. Falcon writes a bin as `<N>`, Florence-2 as `<loc_N>`; both
dialects wrap values the same way: `<box><x1><y1><x2><y2></box>`, `<quad>` + 8 values + `</quad>`,
`<poly><x><y>...</poly>` with parts split by `<sep>`; several structures are simply concatenated.

The reader never raises on model output. It skips text between and inside structures, closes what is left
open, splits over-long structures, drops incomplete ones, accepts the other dialect's coordinate tokens and
bins up to 1000 (one Falcon prompt holds `<1000>`), and reports every repair as a warning.

This module knows nothing about tasks, prompts, pixels of a particular image (callers pass the side length),
the 2x2 change-detection canvas (tiercel.tasks.change) or metrics. It works on decoded text: whether the
tokenizer holds `<box>` or `<N>` as single tokens does not matter here. Unverified: what, if anything, real
answers put between structures (class names, spaces); the reader copes with either.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tiercel.errors import TaskError

N_BINS = 1000
# Values one structure holds; None: any even count of at least 6 per part (a polygon part is >= 3 points).
STRUCTURES = {"box": 4, "quad": 8, "poly": None}
# Tokens a decoder emits around answers; dropped without a warning.
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>")


@dataclass(frozen=True)
class Dialect:
    """How one model family spells coordinates and structures. `coord` formats one bin."""

    name: str
    coord: str
    wrappers: tuple[tuple[str, str, str], ...] = (
        ("box", "<box>", "</box>"),
        ("quad", "<quad>", "</quad>"),
        ("poly", "<poly>", "</poly>"),
    )
    sep: str = "<sep>"

    def write(self, bin_: int) -> str:
        return self.coord.format(int(bin_))

    def coord_regex(self) -> str:
        return re.escape(self.coord).replace(r"\{\}", r"\d+")


DIALECTS = {
    "falcon": Dialect("falcon", "<{}>"),
    "florence": Dialect("florence", "<loc_{}>"),
}


def get_dialect(name: str) -> Dialect:
    """The dialect called `name`; TaskError listing the valid names otherwise."""
    try:
        return DIALECTS[name]
    except (KeyError, TypeError):
        raise TaskError(f"unknown coordinate dialect {name!r}; valid dialects: {', '.join(DIALECTS)}") from None


def to_bin(x, size: float):
    """Pixel coordinate(s) -> bin(s) 0..999 along a side of `size` pixels. Scalars give int, arrays arrays."""
    values = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(values)):
        raise TaskError(f"coordinates must be finite numbers (got {x!r})")
    if not size > 0:
        raise TaskError(f"image side must be > 0 pixels (got {size!r})")
    bins = np.clip(np.floor(values / (size / N_BINS)), 0, N_BINS - 1).astype(int)
    return int(bins) if bins.ndim == 0 else bins


def from_bin(b, size: float):
    """Bin(s) -> pixel coordinate(s) at the bin centre. Bins past 999 (Falcon writes 1000) clamp to 999."""
    # Rounding to 1e-6 only removes float noise: for an integer side the exact value has <= 4 decimals.
    pixels = np.round((np.clip(np.asarray(b, dtype=float), 0, N_BINS - 1) + 0.5) * (size / N_BINS), 6)
    return float(pixels) if pixels.ndim == 0 else pixels


def write_structure(kind: str, parts, dialect: str = "falcon") -> str:
    """One structure as text, e.g. ("box", [[12, 3, 40, 50]]) -> `<box><12><3><40><50></box>`."""
    d = get_dialect(dialect)
    opening, closing = next((o, c) for k, o, c in d.wrappers if k == kind)
    body = d.sep.join("".join(d.write(b) for b in part) for part in parts)
    return f"{opening}{body}{closing}"


@dataclass
class Structure:
    """One structure as read: its kind and its parts (each a flat list of bins)."""

    kind: str
    parts: list[list[int]] = field(default_factory=lambda: [[]])


@dataclass
class Scan:
    """Everything the scanner found in one answer, in order, plus what it had to repair."""

    structures: list[Structure] = field(default_factory=list)
    loose: list[int] = field(default_factory=list)  # bins outside any structure
    junk: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    foreign_coords: int = 0
    clamped: list[int] = field(default_factory=list)


@functools.cache
def _token_pattern(dialect: str) -> re.Pattern:
    d = get_dialect(dialect)
    opens = "|".join(re.escape(o) for _, o, _ in d.wrappers)
    closes = "|".join(re.escape(c) for _, _, c in d.wrappers)
    coords = "|".join(other.coord_regex() for other in DIALECTS.values())
    specials = "|".join(re.escape(t) for t in SPECIAL_TOKENS)
    return re.compile(
        f"(?P<special>{specials})|(?P<open>{opens})|(?P<close>{closes})|(?P<sep>{re.escape(d.sep)})|(?P<coord>{coords})"
    )


def scan(text: str, dialect: str = "falcon") -> Scan:
    """Read every structure and loose coordinate in `text`, repairing what is broken (see module doc)."""
    d = get_dialect(dialect)
    kinds = {o: k for k, o, _ in d.wrappers} | {c: k for k, _, c in d.wrappers}
    out, current, pos = Scan(), None, 0
    for m in _token_pattern(dialect).finditer(text):
        _note_junk(text[pos : m.start()], out)
        pos = m.end()
        token = m.lastgroup
        if token == "open":
            if current is not None:
                out.warnings.append(f"<{current.kind}> not closed before {m.group()}")
                out.structures.append(current)
            current = Structure(kinds[m.group()])
        elif token == "close":
            _close(current, kinds[m.group()], out)
            current = None
        elif token == "sep":
            _separate(current, out)
        elif token == "coord":
            _add_coord(m.group(), d, current, out)
    _note_junk(text[pos:], out)
    if current is not None:
        out.warnings.append(f"answer ends inside <{current.kind}> (truncated?)")
        out.structures.append(current)
    _summarise(out, d)
    return out


def _note_junk(gap: str, out: Scan) -> None:
    if gap.strip():
        out.junk.append(gap.strip())


def _close(current: Structure | None, kind: str, out: Scan) -> None:
    if current is None:
        out.warnings.append(f"stray </{kind}> ignored")
        return
    if current.kind != kind:
        out.warnings.append(f"<{current.kind}> closed by </{kind}>")
    out.structures.append(current)


def _separate(current: Structure | None, out: Scan) -> None:
    if current is not None and current.kind == "poly":
        current.parts.append([])
    else:
        where = f"inside <{current.kind}>" if current is not None else "outside any structure"
        out.warnings.append(f"<sep> {where} ignored")


def _add_coord(token: str, d: Dialect, current: Structure | None, out: Scan) -> None:
    value = read_digits(re.search(r"\d+", token).group())
    if not re.fullmatch(d.coord_regex(), token):
        out.foreign_coords += 1
    if value > N_BINS:
        out.clamped.append(value)
    value = min(value, N_BINS - 1)
    if current is None:
        out.loose.append(value)
    else:
        current.parts[-1].append(value)


def read_digits(digits: str, limit: int = 10**9) -> int:
    """int of a run of decimal digits, capped at `limit`, so that no run raises (int() refuses > 4300 digits)."""
    digits = digits.lstrip("0") or "0"
    return limit if len(digits) > len(str(limit)) else min(int(digits), limit)


def _summarise(out: Scan, d: Dialect) -> None:
    if out.junk:
        shown = ", ".join(repr(j[:24]) for j in out.junk[:3])
        more = f" (+{len(out.junk) - 3} more)" if len(out.junk) > 3 else ""
        out.warnings.append(f"skipped text: {shown}{more}")
    if out.foreign_coords:
        out.warnings.append(f"read {out.foreign_coords} coordinate(s) of another dialect in a {d.name} answer")
    if out.clamped:
        out.warnings.append(f"coordinate(s) {out.clamped[:3]} past {N_BINS} clamped to {N_BINS - 1}")


def read(text: str, kind: str, dialect: str = "falcon") -> tuple[list, list[str]]:
    """All structures of one kind in an answer, as bins. Never raises on `text`.

    Returns (groups, warnings). For "box" and "quad" a group is a flat list of 4 or 8 bins; for "poly" it is
    one instance: a list of parts, each a flat [x, y, x, y, ...] list of at least 3 points. When the answer
    holds no structure of `kind` at all, coordinates outside structures are read as that kind.
    """
    found = scan(text if isinstance(text, str) else "", dialect)
    warnings = [] if isinstance(text, str) else [f"answer is not text (got {type(text).__name__}); read as empty"]
    warnings += found.warnings
    wanted = [s for s in found.structures if s.kind == kind]
    others = Counter(s.kind for s in found.structures if s.kind != kind)
    for other, n in sorted(others.items()):
        warnings.append(f"ignored {n} <{other}> in an answer of <{kind}>")
    if found.loose and not wanted:
        warnings.append(f"read {len(found.loose)} coordinate(s) outside any structure as <{kind}> values")
        wanted = [Structure(kind, [found.loose])]
    elif found.loose:
        warnings.append(f"ignored {len(found.loose)} coordinate(s) outside any structure")
    groups = []
    for s in wanted:
        groups.extend(_split(s, warnings) if STRUCTURES[kind] else _polygon(s, warnings))
    return groups, warnings


def _split(s: Structure, warnings: list[str]) -> list[list[int]]:
    n = STRUCTURES[s.kind]
    values = [v for part in s.parts for v in part]
    whole, rest = divmod(len(values), n)
    if rest and not whole:
        warnings.append(f"dropped an incomplete <{s.kind}> ({rest} of {n} values)")
    elif rest:
        warnings.append(f"dropped {rest} trailing value(s) of a <{s.kind}> ({len(values)} values, {n} per <{s.kind}>)")
    if whole > 1:
        warnings.append(f"<{s.kind}> holds {len(values)} values; read as {whole} <{s.kind}>")
    return [values[i * n : (i + 1) * n] for i in range(whole)]


def _polygon(s: Structure, warnings: list[str]) -> list[list[list[int]]]:
    parts = []
    for part in s.parts:
        if len(part) % 2:
            warnings.append(f"dropped the odd last value of a <poly> part ({len(part)} values)")
            part = part[:-1]
        if len(part) < 6:
            warnings.append(f"dropped a <poly> part with {len(part) // 2} point(s) (needs 3)")
            continue
        parts.append(part)
    return [parts] if parts else []


QUAD_ORDERS = ("keep", "canonical")
_QUAD = re.compile(r"<quad>((?:<(?:loc_)?\d+>){8})</quad>")
_BIN = re.compile(r"<(loc_)?(\d+)>")


def canonical_quad(values: list[int]) -> list[int]:
    """One quad's 8 bins in a fixed corner order: clockwise on screen (y down), starting from the corner that puts
    the four corners nearest to its horizontal box's top-left, top-right, bottom-right and bottom-left (the rule of
    the DOTA devkit's `get_best_begin_point`). The same rectangle then always reads the same way, whichever corner
    its annotation started from; the polygon, and so every IoU, is unchanged."""
    pts = np.asarray(values, dtype=float).reshape(4, 2)
    x, y = pts.T
    if float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) < 0:  # counter-clockwise on screen
        pts = pts[::-1]
    lo, hi = pts.min(0), pts.max(0)
    ref = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    costs = [float(np.linalg.norm(np.roll(pts, -k, axis=0) - ref, axis=1).sum()) for k in range(4)]
    best = int(np.argmin(costs))  # ties: the first rotation, so the result is deterministic
    return [int(v) for v in np.roll(pts, -best, axis=0).reshape(-1)]


def canonical_quads(text: str) -> str:
    """`text` with every well-formed `<quad>` (8 bins, either dialect) in canonical_quad's corner order; anything
    else, malformed quads included, as it was. For training targets (`data.quad_order: canonical`): where an
    annotation's first corner is arbitrary, the model would otherwise have to learn a guess between four."""

    def rewrite(m: re.Match) -> str:
        tokens = _BIN.findall(m.group(1))
        ordered = canonical_quad([int(b) for _, b in tokens])
        return "<quad>" + "".join(f"<{prefix}{b}>" for (prefix, _), b in zip(tokens, ordered)) + "</quad>"

    return _QUAD.sub(rewrite, text)
