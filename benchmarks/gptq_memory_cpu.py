"""Peak memory and time of `tiercel quantize --scheme int4-weight-only --calib` (GPTQ) at a real model's shape.

Usage:
    python benchmarks/gptq_memory_cpu.py --bundle FP32_BUNDLE --calib SYNTH_DIR [--n 8] [--baseline REV]
                                         [--out benchmarks/results/gptq_memory_cpu.json]

Runs the real CLI in a child process (`tiercel quantize BUNDLE --out Q --scheme int4-weight-only --calib SYNTH
--n N --n-val 0`: no guard) and samples the child's resident memory (RSS, psutil) every 0.1 s, recording the peak,
the time and the RSS when each line of its log appeared. With --baseline the same command runs first on that
git revision (a temporary `git worktree`, put first on PYTHONPATH), so both sides are measured in one run on the
same machine; the two bundles' GPTQ reports (per layer: method, held-out output errors) are compared.

Also written: the Hessians' size per graph, counted from the ONNX files (2 halves x K^2 per distinct MatMul input
of width K), in float64 and float32, since GPTQ keeps them for the accuracy guard's retries.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from runtime_cpu import machine

from tiercel.fileio import write_json

REPO = Path(__file__).resolve().parent.parent


def hessian_bytes(bundle: Path) -> dict:
    """{graph: {"tensors", "k_max", "float64_mib", "float32_mib"}} for every onnxruntime graph GPTQ would round."""
    import onnx

    out = {}
    for file in sorted(bundle.glob("*.onnx")):
        proto = onnx.load(str(file), load_external_data=False)
        dims = {i.name: list(i.dims) for i in proto.graph.initializer}
        widths = {n.input[0]: dims[n.input[1]][0] for n in proto.graph.node
                  if n.op_type == "MatMul" and len(dims.get(n.input[1], [])) == 2}
        if widths:
            squares = sum(k * k for k in widths.values()) * 2  # two halves (fit / check)
            out[file.stem] = {"tensors": len(widths), "k_max": max(widths.values()),
                              "float64_mib": squares * 8 / 2**20, "float32_mib": squares * 4 / 2**20}
    return out


def run_quantize(code: Path, bundle: Path, calib: Path, n: int, out: Path) -> dict:
    """One `tiercel quantize` child with `code` first on PYTHONPATH: peak RSS, wall time, timestamped log."""
    import psutil

    cmd = [sys.executable, "-m", "tiercel", "quantize", str(bundle), "--out", str(out), "--scheme", "int4-weight-only",
           "--calib", str(calib), "--n", str(n), "--n-val", "0"]
    env = {**os.environ, "PYTHONPATH": str(code), "COLUMNS": "200"}
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=code)
    proc, rss, log, timeline = psutil.Process(child.pid), {"now": 0, "peak": 0, "at": 0.0}, [], []

    def sample():
        while child.poll() is None:
            try:
                now = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
            except psutil.Error:
                break
            rss["now"], t = now, time.perf_counter() - start
            if now > rss["peak"]:
                rss["peak"], rss["at"] = now, t
            if not timeline or t - timeline[-1][0] >= 2.0:  # every 2 s: where in the run memory rises and falls
                timeline.append((round(t, 1), round(now / 2**20)))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in child.stdout:
        if line.strip():
            log.append({"s": round(time.perf_counter() - start, 1), "rss_mib": round(rss["now"] / 2**20), "line": line.rstrip()})
    child.wait()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"tiercel quantize failed on {code}: " + (log[-1]["line"] if log else "no output"))
    manifest = json.loads((out / "manifest.json").read_text())
    where = subprocess.run([sys.executable, "-c", "import tiercel; print(tiercel.__file__)"], env=env, cwd=code,
                           capture_output=True, text=True).stdout.strip()
    return {"code": where, "wall_s": time.perf_counter() - start, "peak_rss_mib": rss["peak"] / 2**20,
            "peak_at_s": rss["at"], "bundle_bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
            "rounding": rounding_rows(manifest), "log": log, "rss_timeline_s_mib": timeline}


def rounding_rows(manifest: dict) -> dict:
    """{graph: {node: {method, error_rtn, error_gptq}}}: the manifest's GPTQ rows (gptq.choose) per int4 graph."""
    out = {}
    for g in manifest["graphs"]:
        rows = [r for r in g.get("quantization", {}).get("rounding", []) if "error_rtn" in r]
        if rows:
            out[g["name"]] = {r["node"]: {k: v for k, v in r.items() if k != "node"} for r in rows}
    return out


def compare(base: dict, new: dict) -> dict:
    """Per graph: layers, how many chose another method, and the summed held-out GPTQ errors on both sides."""
    out = {}
    for graph, rows in new.items():
        old = base.get(graph, {})
        common = [n for n in rows if n in old]
        out[graph] = {"layers": len(rows), "method_differs": sum(rows[n]["method"] != old[n]["method"] for n in common),
                      "sum_error_gptq": {"baseline": sum(old[n].get("error_gptq", 0.0) for n in common),
                                         "this": sum(rows[n].get("error_gptq", 0.0) for n in common)}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True, help="an fp32 bundle (onnxruntime graphs)")
    ap.add_argument("--calib", type=Path, required=True, help="a `tiercel data synth` folder or Falcon_SFT file")
    ap.add_argument("--n", type=int, default=8, help="calibration samples")
    ap.add_argument("--baseline", help="git revision to measure first, the same way")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gptq_memory_cpu.json"))
    args = ap.parse_args()
    result = {"command": "python benchmarks/gptq_memory_cpu.py " + " ".join(sys.argv[1:]), "machine": machine(),
              "bundle": str(args.bundle), "n": args.n, "hessians": hessian_bytes(args.bundle), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="tiercel-gptqmem-") as tmp:
        sides = {}
        if args.baseline:
            rev = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.strip()
            subprocess.run(["git", "worktree", "add", "--detach", f"{tmp}/baseline", rev], cwd=REPO, check=True,
                           capture_output=True)
            sides[f"baseline {rev}"] = Path(tmp) / "baseline"
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout
        sides[f"this {head}{' + uncommitted changes' if dirty.strip() else ''}"] = REPO
        try:
            for label, code in sides.items():
                run = run_quantize(code, args.bundle.resolve(), args.calib.resolve(), args.n, Path(tmp) / f"out-{label.split()[0]}")
                result["runs"][label] = run
                print(f"{label}: peak RSS {run['peak_rss_mib']:.0f} MiB at {run['peak_at_s']:.0f} s, {run['wall_s']:.0f} s", flush=True)
        finally:
            if args.baseline:
                subprocess.run(["git", "worktree", "remove", "--force", f"{tmp}/baseline"], cwd=REPO, capture_output=True)
    runs = list(result["runs"].values())
    if len(runs) == 2:
        result["peak_rss_ratio"] = runs[1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
        result["rounding_compared"] = compare(runs[0]["rounding"], runs[1]["rounding"])
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, result)  # atomic: a crash leaves the previous results file whole
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
