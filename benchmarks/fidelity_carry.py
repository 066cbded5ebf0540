"""Carry a fidelity run (benchmarks/fidelity.py) from one machine to the next through git.

The full run takes about 12 hours of CPU (fidelity.py's docstring); a working session here lasts 3 hours and may
start on a new machine with an empty benchmarks/work/. `save` copies what the run needs to go on into
benchmarks/carry/fidelity/, small enough to commit; fidelity.py restores it by itself when its work folder holds
no finished stage, so a fresh clone resumes where the last save left off:

    python benchmarks/fidelity_carry.py save      # while or after the run: newest checkpoint of each training run
    python benchmarks/fidelity_carry.py restore   # what fidelity.py does on start; run by hand to inspect
    python benchmarks/fidelity.py --fresh         # ignores the carry and starts over

What is carried: every finished stage's JSON but the data's (the data is regenerated from its seed: same records,
same stage key); per training run its key, log and either its published student (finished) or its newest
checkpoint (weights, optimizer, scheduler and RNG states: the resume is exact); the bundles. Text files have the
work folder written as $WORK (stage keys do too), so the carry restores into any folder. MANIFEST.json lists every
file with its size and sha256; restore checks them before writing anything, and never replaces newer local work:
a stage JSON, a run's key or log that exists locally stays, and a carried checkpoint becomes a run's `latest` only
when it is newer than the local one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from synth_runs import KEY_FILE  # noqa: E402

from tiercel.distill.checkpoints import latest as newest  # noqa: E402  (a run's newest complete checkpoint)

CARRY = HERE / "carry" / "fidelity"
WORK = HERE / "work" / "fidelity"
MANIFEST = "MANIFEST.json"
TEXT = {".json", ".jsonl", ".yaml", ".txt"}
PLACEHOLDER = "$WORK"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def step_of(checkpoint: Path | None) -> int:
    return int(checkpoint.name.removeprefix("step_")) if checkpoint else -1


def describe(info: dict) -> str:
    return "finished" if info["finished"] else f"step {info['step']}" if info["step"] is not None else "no checkpoint yet"


def carried_files(work: Path) -> tuple[list[Path], dict]:
    """The files of `work` to carry (relative paths) and, per training run, what of it is carried."""
    files, runs = [], {}
    stages = work / "stages"
    files += [p.relative_to(work) for p in sorted(stages.glob("*.json")) if p.name != "data.json"]
    for key in sorted(work.rglob(KEY_FILE)):
        run = key.parent
        files += [p.relative_to(work) for p in sorted(run.iterdir()) if p.is_file()]
        if (run / "student" / "model.safetensors").is_file():
            files += [p.relative_to(work) for p in sorted((run / "student").rglob("*")) if p.is_file()]
            runs[str(run.relative_to(work))] = {"finished": True}
        elif (ckpt := newest(run)) is not None:
            files += [p.relative_to(work) for p in sorted(ckpt.rglob("*")) if p.is_file()]
            files.append((run / "checkpoints" / "latest").relative_to(work))
            runs[str(run.relative_to(work))] = {"finished": False, "step": step_of(ckpt)}
        else:
            runs[str(run.relative_to(work))] = {"finished": False, "step": None}
    if (work / "bundles").is_dir():
        files += [p.relative_to(work) for p in sorted((work / "bundles").rglob("*")) if p.is_file()]
    return files, runs


def copy(src: Path, dst: Path, old: str, new: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix in TEXT:
        dst.write_text(src.read_text().replace(old, new))
    else:
        shutil.copy2(src, dst)


def save(work: Path, carry: Path) -> dict:
    """Write the carry of `work` to `carry` (replaced whole, and only if it is a carry); returns its manifest."""
    from image_use import commit

    if not (work / "stages").is_dir():
        sys.exit(f"{work}: no fidelity run here (no stages/); run benchmarks/fidelity.py first")
    if carry.exists() and not (carry / MANIFEST).is_file():
        sys.exit(f"{carry}: exists and is not a carry (no {MANIFEST}); move it away or pass another --carry")
    files, runs = carried_files(work)
    tmp = carry.with_name(carry.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in files:
        copy(work / rel, tmp / rel, str(work), PLACEHOLDER)
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


def restore(carry: Path, work: Path) -> list[str]:
    """Copy the carry into `work` without replacing newer local work; returns one line per training run."""
    path = carry / MANIFEST
    if not path.is_file():
        return []
    manifest = json.loads(path.read_text())
    for rel, meta in manifest["files"].items():
        f = carry / rel
        if not f.is_file() or f.stat().st_size != meta["bytes"] or sha256(f) != meta["sha256"]:
            sys.exit(f"{f}: missing or not what {path} lists; check out {carry} again (git checkout -- {carry})")
    lines, skip = [], set()
    for run, info in manifest["runs"].items():
        local, there = work / run, step_of(newest(work / run))
        if (local / "student" / "model.safetensors").is_file() or (not info["finished"] and (info["step"] or -1) <= there):
            skip.add(run)
            lines.append(f"{run}: kept the local run (step {there if there >= 0 else 'finished'})")
        elif (local / KEY_FILE).is_file() and (local / KEY_FILE).read_text() != \
                (carry / run / KEY_FILE).read_text().replace(PLACEHOLDER, str(work)):
            skip.add(run)
            lines.append(f"{run}: kept the local run (trained from other settings than the carried one)")
        else:
            lines.append(f"{run}: {describe(info)} from the carry")
    for rel in manifest["files"]:
        run = next((r for r in manifest["runs"] if rel.startswith(r + "/")), None)
        dst = work / rel
        if run in skip or (dst.exists() and not rel.endswith("checkpoints/latest")):
            continue
        copy(carry / rel, dst, PLACEHOLDER, str(work))
    return lines


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
