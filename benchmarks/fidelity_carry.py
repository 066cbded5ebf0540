"""Carry a fidelity run (benchmarks/fidelity.py) from one machine to the next through git.

The full run takes about 12 hours of CPU (fidelity.py's docstring); a working session here lasts 3 hours and may
start on a new machine with an empty benchmarks/work/. `save` copies what the run needs to go on into
benchmarks/carry/fidelity/, small enough to commit; fidelity.py restores it by itself when its work folder holds
no training run and no finished stage (a new machine, a fresh clone), so the run resumes where the last save left
off:

    python benchmarks/fidelity_carry.py save      # while or after the run: newest checkpoint of each training run
    python benchmarks/fidelity_carry.py restore   # what fidelity.py does on start; run by hand to inspect
    python benchmarks/fidelity.py --fresh         # ignores the carry and starts over

What is carried: every finished stage's JSON but the data's (the data is regenerated from its seed: same records,
same stage key); per training run its key, log and either its published student (finished) or its newest
checkpoint (weights, optimizer, scheduler and RNG states: the resume is exact) with a `latest` pointer written
from that checkpoint's name; the bundles. Temporary files of a write in progress are left out. Text files have the
work folder written as $WORK (stage keys do too), so the carry restores into any folder. MANIFEST.json lists every
file with its size and sha256; restore checks them, and that each run's `latest` names a carried checkpoint,
before writing anything.

Restore only ever starts a work folder: it writes nothing when the folder already holds a training run or a
finished stage (it says so), so local work is never mixed with the carry, and a run started over with
`fidelity.py --fresh` is not undone by the carry on its next start. Each file is written under a temporary name
and renamed into place, the `latest` pointers last, so an interrupted restore leaves no run that looks resumable
and half-copied.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from synth_runs import KEY_FILE  # noqa: E402

from tiercel.distill.checkpoints import latest as newest  # noqa: E402  (a run's newest complete checkpoint)
from tiercel.fileio import atomic_path  # noqa: E402
from tiercel.fileio import sha256_file as sha256  # noqa: E402

CARRY = HERE / "carry" / "fidelity"
WORK = HERE / "work" / "fidelity"
MANIFEST = "MANIFEST.json"
TEXT = {".json", ".jsonl", ".yaml", ".txt"}
PLACEHOLDER = "$WORK"


def step_of(checkpoint: Path | None) -> int:
    return int(checkpoint.name.removeprefix("step_")) if checkpoint else -1


def describe(info: dict) -> str:
    return "finished" if info["finished"] else f"step {info['step']}" if info["step"] is not None else "no checkpoint yet"


def _temporary(path: Path) -> bool:
    """A file some writer has not finished (fileio's `.NAME.tmp-PID-*`) or is replacing (`.NAME.old-PID-*`)."""
    return path.name.startswith(".") and (".tmp-" in path.name or ".old-" in path.name)


def _files(folder: Path, work: Path, recursive: bool = True) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return [p.relative_to(work) for p in sorted(found)
            if p.is_file() and not any(_temporary(q) for q in (p, *p.relative_to(folder).parents) if q.name)]


def carried_files(work: Path) -> tuple[list[Path], dict[Path, str], dict]:
    """What of `work` to carry: the files to copy (relative paths), the `latest` pointers to write (relative path ->
    checkpoint name, taken from the checkpoint chosen, never copied: the trainer may move it on meanwhile) and, per
    training run, what of it is carried."""
    files, pointers, runs = [], {}, {}
    stages = work / "stages"
    files += [p.relative_to(work) for p in sorted(stages.glob("*.json")) if p.name != "data.json" and not _temporary(p)]
    for key in sorted(work.rglob(KEY_FILE)):
        run = key.parent
        name = str(run.relative_to(work))
        files += _files(run, work, recursive=False)
        if (run / "student" / "model.safetensors").is_file():
            files += _files(run / "student", work)
            runs[name] = {"finished": True}
        elif (ckpt := newest(run)) is not None:
            files += _files(ckpt, work)
            pointers[(run / "checkpoints" / "latest").relative_to(work)] = ckpt.name
            runs[name] = {"finished": False, "step": step_of(ckpt)}
        else:
            runs[name] = {"finished": False, "step": None}
    for folder in ("bundles", "predictions"):  # predictions: the evaluations' records, for the compare stages
        if (work / folder).is_dir():
            files += _files(work / folder, work)
    return files, pointers, runs


def copy(src: Path, dst: Path, old: str, new: str) -> None:
    """Copy `src` to `dst` through a temporary name, with `old` written as `new` in text files."""
    with atomic_path(dst) as tmp:
        if src.suffix in TEXT:
            tmp.write_text(src.read_text().replace(old, new))
        else:
            shutil.copy2(src, tmp)


def save(work: Path, carry: Path) -> dict:
    """Write the carry of `work` to `carry` (replaced whole, and only if it is a carry); returns its manifest."""
    from image_use import commit

    if not (work / "stages").is_dir():
        sys.exit(f"{work}: no fidelity run here (no stages/); run benchmarks/fidelity.py first")
    if carry.exists() and not (carry / MANIFEST).is_file():
        sys.exit(f"{carry}: exists and is not a carry (no {MANIFEST}); move it away or pass another --carry")
    tmp = carry.with_name(carry.name + ".saving")
    for attempt in range(3):  # the trainer prunes old checkpoints: one may go while it is copied
        shutil.rmtree(tmp, ignore_errors=True)
        files, pointers, runs = carried_files(work)
        try:
            for rel in files:
                copy(work / rel, tmp / rel, str(work), PLACEHOLDER)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    for rel, name in pointers.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(name + "\n")
    files += list(pointers)
    manifest = {"what": "benchmarks/fidelity_carry.py save: a fidelity run to resume on another machine",
                "saved": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": commit(), "runs": runs,
                "files": {str(rel): {"bytes": (tmp / rel).stat().st_size, "sha256": sha256(tmp / rel)} for rel in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if carry.exists():
        old = carry.with_name(carry.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        carry.rename(old)
        tmp.rename(carry)
        shutil.rmtree(old)
    else:
        tmp.rename(carry)
    return manifest


def local_work(work: Path) -> str | None:
    """What in `work` a restore would mix with (a training run or a finished stage), or None."""
    run = next(iter(sorted(work.rglob(KEY_FILE))), None) if work.is_dir() else None
    if run is not None:
        return f"a training run ({run.parent.relative_to(work)})"
    stage = next((p for p in sorted((work / "stages").glob("*.json")) if p.name != "data.json"), None) \
        if (work / "stages").is_dir() else None
    return f"a finished stage ({stage.relative_to(work)})" if stage is not None else None


def restore(carry: Path, work: Path) -> list[str]:
    """Copy the carry into `work` when `work` holds no run yet; returns one line per training run (or why not)."""
    path = carry / MANIFEST
    if not path.is_file():
        return []
    if (there := local_work(work)) is not None:
        return [f"not restored: {work} already holds {there}; the run goes on from it "
                f"(move the folder away to start from the carry)"]
    manifest = json.loads(path.read_text())
    for rel, meta in manifest["files"].items():
        f = carry / rel
        if not f.is_file() or f.stat().st_size != meta["bytes"] or sha256(f) != meta["sha256"]:
            sys.exit(f"{f}: missing or not what {path} lists; check out {carry} again (git checkout -- {carry})")
    pointers = [rel for rel in manifest["files"] if rel.endswith("checkpoints/latest")]
    for rel in pointers:
        ckpt = (carry / rel).parent / (carry / rel).read_text().strip()
        if f"{ckpt.relative_to(carry)}/trainer_state.pt" not in manifest["files"]:
            sys.exit(f"{carry / rel}: names {ckpt.name}, which the carry does not hold; save the carry again")
    for rel in [r for r in manifest["files"] if r not in pointers] + pointers:
        copy(carry / rel, work / rel, PLACEHOLDER, str(work))
    return [f"{run}: {describe(info)} from the carry" for run, info in manifest["runs"].items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["save", "restore"])
    ap.add_argument("--work", type=Path, default=WORK, help=f"the run's work folder (default: {WORK})")
    ap.add_argument("--carry", type=Path, default=CARRY, help=f"the carry folder (default: {CARRY})")
    args = ap.parse_args()
    work, carry = args.work.resolve(), args.carry.resolve()
    if args.action == "save":
        m = save(work, carry)
        size = sum(f["bytes"] for f in m["files"].values())
        print(f"saved {len(m['files'])} files, {size / 1e6:.1f} MB, to {carry}")
        for run, info in m["runs"].items():
            print(f"  {run}: {describe(info)}")
    else:
        if not (carry / MANIFEST).is_file():
            sys.exit(f"{carry}: no carry here ({MANIFEST} missing)")
        for line in restore(carry, work):
            print(line)


if __name__ == "__main__":
    main()
