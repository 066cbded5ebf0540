"""What the synthetic benchmark's caption answers get right, fact by fact, per model.

    python benchmarks/caption_facts.py [--work benchmarks/work/fidelity] [--run NAME=PREDICTIONS.json.gz ...] \
        [--bundles] --out benchmarks/results/caption_facts.json

CIDEr scores n-grams against the reference, so it cannot say whether a student's caption loses to the teacher's
by its wording or by what it says about the image. The benchmark's captions are templates over the scene's layout
(tiercel.data.synth.language): every fact sits in a fixed phrase, and the wording varies only between templates.
This reads each fact back from the reference and from the answer, with the generator's own vocabulary (its
classes, colours, number words and 3x3 cell names), and counts per model and task:

- **scene**: the scene class named (IMG_CAP, IMG_CAP_DETAILED).
- **classes**: of the object classes the reference lists, the share the answer lists (recall); of those the
  answer lists, the share the reference lists (precision) (IMG_CAP, IMG_CAP_DETAILED).
- **counts**: of the classes both list, the share with the same number.
- **ground**: the ground cover named first (IMG_CAP_DETAILED); **largest**: the largest object's colour and
  class (IMG_CAP_DETAILED).
- **object**, **colour**, **size**, **place** of REG_CAP's one object; size and place only where both state one
  (the generator leaves them out of some references).

Every fact counts where the reference states it; an answer that does not parse states nothing and is wrong.
The predictions are the `predictions/*.json.gz` files a fidelity run keeps (one per evaluation stage, b8c59f2)
and those of benchmarks/student_pilot.py's runs (`--run name=path`). Written by hand: the phrases are the
generator's own templates, which no parser library knows; a test reads back every fact of generated scenes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from tiercel.data.synth.catalog import OBJECTS, SCENES  # noqa: E402
from tiercel.data.synth.language import GROUND_WORDS, NUMBERS  # noqa: E402

TASKS = ("IMG_CAP", "IMG_CAP_DETAILED", "REG_CAP")
COLORS = sorted({c for spec in OBJECTS.values() for c in spec.colors})
SIZES = ("small", "medium-sized", "large")
_CLASS = "|".join(sorted(map(re.escape, OBJECTS), key=len, reverse=True))
_COLOR = "|".join(COLORS)
_NUMBER = "|".join(["a", "an", r"\d+", *NUMBERS])
# "three vehicles", "a swimming pool", "There is a cyan swimming pool": a number, an optional colour, a class
_MENTION = re.compile(rf"\b(?P<n>{_NUMBER})\s+(?:(?P<color>{_COLOR})\s+)?(?P<cls>{_CLASS})s?\b", re.IGNORECASE)
_PLACE = re.compile(r"\b(top left|top right|bottom left|bottom right|center|middle|top|bottom|left|right)\b")
_SCENE = re.compile("|".join(sorted(map(re.escape, SCENES), key=len, reverse=True)))
_GROUND = re.compile(r"the ground is mostly (" + "|".join(map(re.escape, GROUND_WORDS.values())) + ")")


def number(word: str) -> int:
    word = word.lower()
    return 1 if word in ("a", "an") else int(word) if word.isdigit() else NUMBERS.index(word)


def place(text: str) -> str | None:
    """The 3x3 cell a phrase names ('near the center of the image' -> center), or None."""
    m = _PLACE.search(text.lower())
    return None if m is None else {"middle": "center"}.get(m.group(1), m.group(1))


def scene(text: str) -> str | None:
    m = _SCENE.search(text.lower())
    return None if m is None else m.group(0)


def objects(text: str) -> dict[str, int]:
    """{class: count} of the classes a caption lists, leaving out the largest-object sentence."""
    out: dict[str, int] = {}
    for sentence in re.split(r"(?<=\.)\s+", text):
        if sentence.lower().startswith("the largest object"):
            continue
        for m in _MENTION.finditer(sentence):
            out.setdefault(m.group("cls").lower(), number(m.group("n")))
    return out


def largest(text: str) -> tuple[str, str] | None:
    """(colour, class) of the detailed caption's largest object, or None."""
    m = re.search(rf"the largest object is an? ({_COLOR}) ({_CLASS})", text, re.IGNORECASE)
    return None if m is None else (m.group(1).lower(), m.group(2).lower())


def ground(text: str) -> str | None:
    m = _GROUND.search(text.lower())
    return None if m is None else m.group(1)


def region(text: str) -> dict:
    """REG_CAP's facts: class, colour, size word and cell (each None where not stated)."""
    low = text.lower()
    m = re.search(rf"\b(?:(small|medium-sized|large)\s+)?({_COLOR})\s+({_CLASS})\b", low)
    if m is None:
        return {"object": None, "colour": None, "size": None, "place": None}
    return {"object": m.group(3), "colour": m.group(2), "size": m.group(1), "place": place(low[m.end():])}


def facts(tag: str, truth: str, pred: str) -> dict[str, tuple[int, int]]:
    """{fact: (right, stated in the reference)} for one record."""
    out: dict[str, tuple[int, int]] = {}
    if tag in ("IMG_CAP", "IMG_CAP_DETAILED"):
        t, p = objects(truth), objects(pred)
        out["scene"] = (int(scene(truth) == scene(pred)), 1)
        out["class recall"] = (sum(c in p for c in t), len(t))
        out["class precision"] = (sum(c in t for c in p), len(p))
        both = [c for c in t if c in p]
        out["count"] = (sum(t[c] == p[c] for c in both), len(both))
    if tag == "IMG_CAP_DETAILED":
        out["ground"] = (int(ground(truth) == ground(pred)), 1)
        if largest(truth) is not None:
            out["largest"] = (int(largest(truth) == largest(pred)), 1)
    if tag == "REG_CAP":
        t, p = region(truth), region(pred)
        for key in ("object", "colour"):
            out[key] = (int(t[key] == p[key]), 1)
        for key in ("size", "place"):  # only where both state one: the reference leaves them out of some records
            if t[key] is not None and p[key] is not None:
                out[key] = (int(t[key] == p[key]), 1)
    return out


def tally(rows: list[dict]) -> dict:
    """{task: {fact: {"right", "of", "rate"}}} over one model's prediction rows."""
    acc: dict[str, Counter] = {}
    for row in rows:
        if row["tag"] not in TASKS:
            continue
        got = facts(row["tag"], row["truth"].get("text") or row["truth"].get("raw", ""),
                    (row["pred"] or {}).get("text") or "")
        c = acc.setdefault(row["tag"], Counter())
        for fact, (right, of) in got.items():
            c[fact, "right"] += right
            c[fact, "of"] += of
    return {tag: {fact: {"right": c[fact, "right"], "of": c[fact, "of"],
                         "rate": c[fact, "right"] / c[fact, "of"] if c[fact, "of"] else None}
                  for fact in dict.fromkeys(f for f, _ in c)} for tag, c in acc.items()}


def read(path: Path) -> list[dict]:
    return json.loads(gzip.decompress(path.read_bytes()))["predictions"]


def label(name: str) -> str:
    """A column's name: kd_hidden__seed0 -> kd_hidden s0, bundle__onnxruntime__int8-static -> ORT int8-static."""
    parts = name.split("__")
    if parts[0] == "bundle" and len(parts) == 3:
        return f"{ {'onnxruntime': 'ORT', 'openvino': 'OV'}.get(parts[1], parts[1])} {parts[2]}"
    if len(parts) == 2 and parts[1].startswith("seed"):
        return f"{parts[0]} s{parts[1][4:]}"
    return name


def order(name: str) -> tuple:
    """The teacher, the table's students, other runs, then the bundles."""
    return (name != "teacher", name.startswith("bundle__"), "__seed" not in name)


def render(result: dict) -> str:
    names = sorted(result["models"], key=order)
    lines = ["# Caption facts: what each model's captions get right",
             "", "Written by `benchmarks/caption_facts.py` from its JSON next to this file; not edited by hand.", "",
             f"- command: `{result['command']}`; commit {result['commit']}",
             "- each cell: the share of the facts the references state that the answer states the same "
             "(precision: of the classes the answer lists, the share the reference lists)", "",
             "| task | fact | " + " | ".join(map(label, names)) + " |", "|---|---|" + "---|" * len(names)]
    for tag in TASKS:
        facts_ = dict.fromkeys(f for m in names for f in result["models"][m].get(tag, {}))
        for fact in facts_:
            cells = []
            for m in names:
                cell = result["models"][m].get(tag, {}).get(fact)
                cells.append("-" if cell is None or cell["rate"] is None else f"{cell['rate']:.3f}")
            lines.append(f"| {tag} | {fact} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from image_use import commit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "work" / "fidelity", help="a fidelity run's work folder")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=PATH",
                    help="another model's predictions (e.g. a student_pilot.py run's predictions.json.gz)")
    ap.add_argument("--bundles", action="store_true", help="the bundles' evaluations too (default: PyTorch models)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "caption_facts.json")
    args = ap.parse_args()
    files = {}
    for path in sorted((args.work / "predictions").glob("eval__*.json.gz")):
        name = path.name[len("eval__"):-len(".json.gz")]
        if args.bundles or not name.startswith("bundle__"):
            files[name] = path
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep or not name:
            ap.error(f"--run {item!r}: expected NAME=PATH")
        files[name] = Path(path)
    if not files:
        sys.exit(f"{args.work / 'predictions'}: no eval__*.json.gz predictions; run benchmarks/fidelity.py first")
    models = {}
    for name, path in files.items():
        try:
            models[name] = tally(read(path))
        except (OSError, ValueError, KeyError) as err:
            sys.exit(f"{path}: not a predictions file ({type(err).__name__}: {err})")
        print(f"{name}: " + ", ".join(f"{t} {f} {v['rate']:.3f}" for t, fs in models[name].items()
                                      for f, v in fs.items() if f in ("class recall", "count", "object")), flush=True)
    result = {"what": "benchmarks/caption_facts.py: caption facts right per model", "commit": commit(),
              "command": "python benchmarks/caption_facts.py " + " ".join(sys.argv[1:]),
              "files": {k: str(v) for k, v in files.items()}, "models": models}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
