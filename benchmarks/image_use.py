"""Does a checkpoint read its image? The image-use probe (tiercel.evaluate.image_use) on one or more checkpoints.

Per task: teacher-forced answer loss with the true images, with the images rolled by one record within each batch
(`permuted`) and with a blank image (`blank`: every pixel the normalisation mean); the same over coordinate
tokens only and over each answer's first coordinate; and the spread of the image features across records after
the vision tower and after the projector (about 0 when they collapsed to a constant). Records go through the
training code's data path (SFTData, collate, model_input), the first --n of each task in file order.

    python benchmarks/image_use.py CHECKPOINT [CHECKPOINT ...] --data val.json --root DATA_DIR \
        [--tasks REG_VG IMG_CLS] [--n 64] [--out benchmarks/results/image_use.json]

Writes JSON with the command, commit and machine; prints one line per checkpoint and task.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def commit() -> str:
    """The git commit of the source tree (with -dirty when it has uncommitted changes)."""
    run = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=HERE).stdout.strip()  # noqa: E731
    return run("rev-parse", "HEAD") + ("-dirty" if run("status", "--porcelain", "--untracked-files=no") else "")


def write_result(path: Path, result: dict) -> None:
    """Write `result` (with the load average at the end of the run) as indented JSON to `path`."""
    result["machine"]["loadavg_end"] = os.getloadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


def parse_or_table(ap, table, required: tuple[str, ...]):
    """Parse `ap`'s arguments after adding --table JSON; with --table, print table(that JSON) and return None
    (a benchmark's markdown from an earlier run); otherwise the arguments, every option in `required` given."""
    ap.add_argument("--table", type=Path, help="only print an earlier run's JSON as a markdown table")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return None
    missing = [f"--{k.replace('_', '-')}" for k in required if not getattr(args, k)]
    if missing:
        ap.error(f"{', '.join(missing)} required (or --table JSON)")
    return args


def machine() -> dict:
    """CPU model, cores, torch threads, load average and library versions."""
    import torch
    import transformers

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def probe_checkpoint(path, data_file, root, tags, n: int, batch_size: int) -> dict:
    """Load `path` (tiercel.models.load_checkpoint) and probe it on `data_file`; returns the probe's dict."""
    from tiercel.evaluate.image_use import probe_records
    from tiercel.models import load_checkpoint

    ckpt = load_checkpoint(path)
    t0 = time.perf_counter()
    result = probe_records(ckpt, data_file, root, tags, n=n, batch_size=batch_size)
    return {"checkpoint": str(path), "seconds": round(time.perf_counter() - t0, 2), **result}


def line(name: str, tag: str, r: dict) -> str:
    return (
        f"{name} {tag:<16} loss {r['loss_true']:.3f} gap perm {r['loss_gap_permuted']:+.3f} blank "
        f"{r['loss_gap_blank']:+.3f} | first coord {r['first_coord_loss_true']:.3f} gap perm "
        f"{r['first_coord_loss_gap_permuted']:+.3f} | spread cos vision {r['vision_spread']['cosine']:.4f} "
        f"image {r['image_spread']['cosine']:.4f} rel_std {r['image_spread']['rel_std']:.4f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint directories (tiercel.models.load_checkpoint)")
    ap.add_argument("--data", type=Path, required=True, help="Falcon_SFT file (e.g. the val split)")
    ap.add_argument("--root", type=Path, help="image root (default: the data file's folder)")
    ap.add_argument("--tasks", nargs="*", help="tags to probe (default: every task in the file)")
    ap.add_argument("--n", type=int, default=64, help="records per task (the first n in file order)")
    ap.add_argument("--batch-size", type=int, default=8, help="records per batch; permutations stay within a batch")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "image_use.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = {
        "command": "python benchmarks/image_use.py " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "data": str(args.data),
        "n": args.n,
        "batch_size": args.batch_size,
        "checkpoints": [],
    }
    for path in args.checkpoints:
        r = probe_checkpoint(path, args.data, args.root or args.data.parent, args.tasks, args.n, args.batch_size)
        result["checkpoints"].append(r)
        for tag, numbers in r["per_task"].items():
            print(line(path.name, tag, numbers), flush=True)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
