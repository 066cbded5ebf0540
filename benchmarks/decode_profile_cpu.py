"""Where a decode step's time goes, per precision: onnxruntime's per-node profile against the bandwidth bound.

    OMP_NUM_THREADS=1 python benchmarks/decode_profile_cpu.py [--rounds 5] [--steps 16] [--past 32] [--batches 1,14]
    -> benchmarks/results/decode_profile_cpu.json

The florence2-base shape with random weights is exported (fp32) and quantised with onnxruntime four ways
(int8-static calibrated on a few synthetic images as quantize_cpu.py does, int8-dynamic, int8-weight-only block
128, int4-weight-only block 32)
and with OpenVINO int8-dynamic (NNCF INT8 weights), into benchmarks/work/decode_profile/ (reused when there;
--rebuild makes them again). Each bundle's decoder_with_past graph alone then runs `--steps` steps from a
self-attention past of `--past` (KV fed back, 577 + 20 encoder tokens) on one thread:

- timed: the runtime's own session (tiercel.runtime.backends, 1 thread); rounds interleave the bundles, per round ms per token, medians over rounds;
- profiled: a second session with SessionOptions.enable_profiling; node times are summed per step and per op
  type and per named group (attention projections, FFN, lm_head, KV concat, quantize ops, ...), medians over steps.

Bytes a step must read come from the graph's initializers by their stored dtype (MatMulNBits' packed blocks and
scales, int8 weights and their scales, fp32 for what stays fp32; the position table counts one row) plus the
KV cache (cross-attention over the encoder tokens, the self-attention past, and the present written back).
The bound is bytes / read bandwidth, measured in every timing round by one-thread numpy passes over 256 MiB: the
faster of a max and a matrix-vector product (as tiercel/runtime/profile/roofline.py measures it; median over
rounds). Runs before this file's read bound divided by a numpy copy's read + write; the JSON keeps that bound too
(`bound_copy_ms`, `ratio_copy`). OpenVINO rows are timed only (no per-node profile); their bytes are the IR's .bin
file. `ov-bf16` is the fp32 IR computed in bf16 (`--option INFERENCE_PRECISION_HINT=bf16`, on CPUs with AVX512-BF16
or AMX; the script stops with one line elsewhere): its weights and KV cache count 2 bytes a value, the cache fed in
bf16 as the runtime keeps it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quantize_cpu import decoder_feeds  # noqa: E402
from runtime_cpu import build_and_export, machine  # noqa: E402

WORK = HERE / "work" / "decode_profile"
BUNDLES = {  # name -> (runtime backend, quantize backend, scheme); None: the fp32 bundle itself
    "ort-fp32": ("onnxruntime", None, None),
    "ort-int8-static": ("onnxruntime", "onnxruntime", "int8-static"),
    "ort-int8-dynamic": ("onnxruntime", "onnxruntime", "int8-dynamic"),
    "ort-int8-weight-only": ("onnxruntime", "onnxruntime", "int8-weight-only"),
    "ort-int4": ("onnxruntime", "onnxruntime", "int4-weight-only"),
    "ov-fp32": ("openvino", None, None),
    "ov-int8-dynamic": ("openvino", "openvino", "int8-dynamic"),
    "ov-bf16": ("openvino", None, None),  # the fp32 IR computed in bf16 (HINTS), where the CPU has it
}
HINTS = {"ov-bf16": "bf16"}  # bundle -> OpenVINO INFERENCE_PRECISION_HINT (the runtime's --option); weights and KV at that width


# ---- bundles ----------------------------------------------------------------------------------------------
def build(work: Path, names: list[str], rebuild: bool, log) -> dict[str, Path]:
    """{bundle name: bundle dir}, made under `work` unless already there."""
    from tiercel.data.synth.writer import generate
    from tiercel.quantize import quantize_bundle

    fp32 = work / "fp32"
    if rebuild or not (fp32 / "manifest.json").is_file():
        build_and_export("florence2-base", work, log)
    calib = work / "synth"
    if not (calib / "train.json").is_file():
        generate(calib, n=42, size=64, workers=1)
    out = {}
    for name in names:
        runtime, qbackend, scheme = BUNDLES[name]
        out[name] = fp32 if scheme is None else work / name
        if scheme and (rebuild or not (out[name] / "manifest.json").is_file()):
            t = time.perf_counter()
            quantize_bundle(fp32, out[name], scheme, calib=calib if scheme == "int8-static" else None, n=4, n_val=0,
                            backend=qbackend, max_new_tokens=8, overwrite=True)
            log(f"{name}: quantised in {time.perf_counter() - t:.0f} s")
    return out


def decoder_file(bundle: Path, backend: str) -> tuple[Path, dict]:
    from tiercel.runtime import read_bundle

    b = read_bundle(bundle)
    return b.root / b.entries(backend)["decoder_with_past_model"].file, b.manifest.model.model_dump()


# ---- bytes per step ---------------------------------------------------------------------------------------
def weight_bytes(onnx_file: Path) -> dict:
    """Bytes of the graph's initializers by stored dtype, split into lm_head, position table and the rest."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(onnx_file), load_external_data=False)
    size = {i.name: int(np.prod(i.dims)) * helper.tensor_dtype_to_np_dtype(i.data_type).itemsize
            for i in proto.graph.initializer}
    dtype = {i.name: helper.tensor_dtype_to_np_dtype(i.data_type).name for i in proto.graph.initializer}
    consumer = {x: node for node in proto.graph.node for x in node.input}
    owner = {}
    for node in proto.graph.node:  # an initializer belongs to the layer that reads it (through a DequantizeLinear)
        reader = consumer.get(node.output[0], node) if node.op_type == "DequantizeLinear" else node
        part = "lm_head" if "lm_head" in reader.name else "positions" if reader.op_type == "Gather" else "layers"
        for name in node.input:
            owner.setdefault(name, part)
    parts, by_dtype = defaultdict(int), defaultdict(int)
    for name, n in size.items():
        parts[owner.get(name, "layers")] += n
        by_dtype[dtype[name]] += n
    return {"parts": dict(parts), "by_dtype": dict(by_dtype)}


def ov_weight_bytes(xml: Path, hint: str | None = None) -> dict:
    """An OpenVINO IR's weights: its .bin file, all counted as read (the position table in full: ~3 MB); at a
    16-bit `hint` (bf16, f16) half of an fp32 IR's, since the CPU plugin converts the weights when it compiles."""
    n = xml.with_suffix(".bin").stat().st_size // (2 if hint else 1)
    return {"parts": {"layers": n}, "by_dtype": {f"ir_bin_as_{hint}" if hint else "ir_bin": n}}


def step_bytes(weights: dict, shape: dict, past: int, prompt: int, batch: int, kv_bytes: int = 4) -> dict:
    """Bytes one decoder_with_past step reads and writes: weights once, the KV cache per row."""
    d, layers = shape["d_model"], shape["decoder_layers"]
    enc = shape["image_tokens"] + prompt
    pos_row = weights["parts"].get("positions", 0) / (shape.get("max_position_embeddings", 1024) + 2)
    kv_cross = batch * layers * 2 * enc * d * kv_bytes
    kv_self = batch * layers * 2 * (2 * past + 1) * d * kv_bytes  # past read, present (past + 1) written
    rows = {"lm_head": weights["parts"].get("lm_head", 0), "layers": weights["parts"].get("layers", 0),
            "positions_row": pos_row, "kv_cross": kv_cross, "kv_self": kv_self}
    return {**rows, "total": sum(rows.values())}


def bandwidth(mib: int = 256, repeats: int = 7) -> dict:
    """One-thread bandwidth in GB/s, medians: a numpy copy (read + write counted) and two read-only passes, a max
    and a matrix-vector product (BLAS sgemv, a decode step's access pattern); `read_gbs` is the faster of the two.
    Both arrays are written first (an untouched page reads as the shared zero page)."""
    src = np.ones(mib * 2**20 // 4, np.float32)
    dst = np.ones_like(src)
    rows, vector = src.reshape(-1, 1024), np.ones(1024, np.float32)

    def median(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    out = {"copy_gbs": 2 * src.nbytes / median(lambda: np.copyto(dst, src)) / 1e9,
           "max_gbs": src.nbytes / median(lambda: src.max()) / 1e9,
           "sgemv_gbs": src.nbytes / median(lambda: rows @ vector) / 1e9,
           "method": f"numpy, 1 thread, {mib} MiB, median of {repeats}"}
    return out | {"read_gbs": max(out["max_gbs"], out["sgemv_gbs"])}


# ---- sessions ---------------------------------------------------------------------------------------------
def ort_session(file: Path, profile_dir: Path | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_dir / file.parent.name)
    sess = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return sess, lambda feeds: dict(zip(names, sess.run(names, feeds)))


def product_session(file: Path, backend: str, hint: str | None = None, name: str = ""):
    """The runtime's own session for `backend` on one thread (OpenVINO: f32 inference precision, as it sets, or
    `hint`), and a function giving a step's feeds in the types it takes: the KV cache in the session's own
    precision, converted once here as the runtime's decoder feeds back the cache it was given."""
    from tiercel.runtime.backends import bf16_bits, get_backend

    spec = get_backend(backend)
    sess = spec.open(file, spec.devices[0], 1, {"INFERENCE_PRECISION_HINT": hint} if hint else None)
    kv = getattr(sess, "kv", None)
    if hint and kv != hint:
        sys.exit(f"{name or file}: this CPU does not compute in {hint} on OpenVINO (OPTIMIZATION_CAPABILITIES); "
                 "leave that bundle out of --bundles")
    cast = {"bf16": bf16_bits, "f16": lambda v: v.astype(np.float16)}.get(kv)

    def prepare(feeds: dict) -> dict:
        return {k: cast(v) if cast and k.startswith("past_key_values.") else v for k, v in feeds.items()}

    return sess.run, prepare


def batched(feeds: dict, batch: int) -> dict:
    return {k: np.repeat(v, batch, axis=0) for k, v in feeds.items()}


def decode(run, base: dict, steps: int) -> None:
    feeds = dict(base)
    for _ in range(steps):
        out = run(feeds)
        feeds.update({f"past_key_values.{k[len('present.'):]}": v for k, v in out.items() if k.startswith("present.")})


# ---- the profile ------------------------------------------------------------------------------------------
OP_GROUPS = {  # op type -> group, whatever the node is called
    "DynamicQuantizeLinear": "DynamicQuantizeLinear", "QuantizeLinear": "QuantizeLinear/DequantizeLinear",
    "DequantizeLinear": "QuantizeLinear/DequantizeLinear", "Cast": "cast", "LayerNormalization": "layernorm",
    "SkipLayerNormalization": "layernorm", "Softmax": "softmax", "Gelu": "ffn", "BiasGelu": "ffn", "Erf": "ffn",
    "Shape": "shape_ops", "Unsqueeze": "shape_ops", "Squeeze": "shape_ops", "Range": "shape_ops", "Identity": "shape_ops",
}


def group_of(op: str, node: str, output_bytes: int) -> str:
    """The named group of one profiled node. The exporter names nodes by module without the layer
    (/q_proj_3/MatMul, /MatMul_5): per layer, self-attention comes before cross-attention, so an even index
    (q_proj, out_proj; MatMul pairs) is self-attention and an odd one cross-attention."""
    if op in OP_GROUPS:
        return OP_GROUPS[op]
    if op == "Concat":  # the self-attention KV concat writes the cache; the rest assemble shapes
        return "kv_concat" if output_bytes > 4096 else "shape_ops"
    if op in ("Gather", "Reshape", "Transpose") and output_bytes <= 4096:
        return "shape_ops"
    if "lm_head" in node:
        return "lm_head"
    if re.search(r"/fc[12](_\d+)?/", node):
        return "ffn"
    m = re.search(r"/(q|k|v|out)_proj(?:_(\d+))?/", node)
    if m:
        return "self_attn_proj" if m[1] in "kv" or int(m[2] or 0) % 2 == 0 else "cross_attn_proj"
    m = re.search(r"/MatMul(?:_(\d+))?(/|$)", node)
    if m:
        return "self_attn_scores_av" if int(m[1] or 0) // 2 % 2 == 0 else "cross_attn_scores_av"
    return "other"


def profile_rows(trace: list[dict]) -> list[dict]:
    """Per run of the session: {"run_us", "nodes": [(node, op, output bytes, us)]} from onnxruntime's profile events."""
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    out = [{"run_us": r["dur"], "start": r["ts"], "end": r["ts"] + r["dur"], "nodes": []} for r in runs]
    for e in nodes:
        for r in out:
            if r["start"] <= e["ts"] <= r["end"]:
                args = e["args"]
                r["nodes"].append((e["name"][: -len("_kernel_time")], args["op_name"], int(args.get("output_size", 0)), e["dur"]))
                break
    return out


def summarise(rows: list[dict]) -> dict:
    """Medians over profiled steps: ms per op type, per group and for the 12 slowest nodes."""
    by_op, by_group, by_node = defaultdict(list), defaultdict(list), defaultdict(list)
    for r in rows:
        ops, groups, nodes = defaultdict(float), defaultdict(float), {}
        for node, op, size, us in r["nodes"]:
            ops[op] += us / 1e3
            groups[group_of(op, node, size)] += us / 1e3
            nodes[node] = (op, nodes.get(node, (op, 0.0))[1] + us / 1e3)
        for table, values in ((by_op, ops), (by_group, groups)):
            for k in set(table) | set(values):
                table[k].append(values.get(k, 0.0))
        for k, v in nodes.items():
            by_node[k].append(v)
    med = lambda t: {k: statistics.median(v) for k, v in sorted(t.items(), key=lambda kv: -statistics.median(kv[1]))}  # noqa: E731
    nodes_sum = statistics.median([sum(us for *_, us in r["nodes"]) / 1e3 for r in rows])
    run_ms = statistics.median([r["run_us"] / 1e3 for r in rows])
    top = sorted(((statistics.median(t for _, t in v), k, v[0][0]) for k, v in by_node.items()), reverse=True)[:12]
    ops, groups = med(by_op), med(by_group)
    return {"run_ms": run_ms, "nodes_ms": nodes_sum, "nodes": len(rows[0]["nodes"]) if rows else 0,
            "by_op": {k: {"ms": v, "share": v / nodes_sum} for k, v in ops.items()},
            "by_group": {k: {"ms": v, "share": v / nodes_sum} for k, v in groups.items()},
            "top_nodes": [{"node": k, "op": op, "ms": t} for t, k, op in top]}


def run_profile(files: dict, feeds: dict, steps: int, rounds: int, log) -> dict:
    """{(name, batch): summary} from one profiled session per bundle, `rounds` decodes at each batch."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="tiercel-decprof-") as tmp:
        for name, (file, backend) in files.items():
            if backend != "onnxruntime":
                continue
            sess, run = ort_session(file, Path(tmp))
            marks = []
            for batch, base in feeds.items():
                decode(run, base, 2)  # warm-up
                marks.append(batch)
                for _ in range(rounds):
                    decode(run, base, steps)
            trace = json.loads(Path(sess.end_profiling()).read_text())
            rows = profile_rows(trace)
            per = 2 + rounds * steps
            for i, batch in enumerate(marks):
                out[(name, batch)] = summarise(rows[i * per + 2 : (i + 1) * per])
                log(f"profile {name} batch {batch}: {out[(name, batch)]['run_ms']:.2f} ms/step")
    return out


def run_timed(files: dict, feeds: dict, steps: int, rounds: int) -> tuple[dict, list]:
    """{(name, batch): ms per token in each round}: bundles interleaved in rounds, one warm-up each; and the
    bandwidth measured once per round among them (the bound moves with the machine's load as the steps do).
    Each round starts one bundle later. In a fixed order, the bundles listed (opened and timed) first ran 4-19%
    slower than the same graphs listed second, in both orders (results/decode_profile_cpu_ab*.json): compare a
    change with its baseline both ways round."""
    runs = {name: product_session(file, backend, HINTS.get(name.removesuffix("-baseline")), name)
            for name, (file, backend) in files.items()}
    out, gbs = {}, []
    for batch, base in feeds.items():
        given = {name: prepare(base) for name, (_, prepare) in runs.items()}
        for name, (run, _) in runs.items():
            decode(run, given[name], 2)
        times = defaultdict(list)
        names = list(runs)
        for r in range(rounds):
            gbs.append(bandwidth(repeats=3))
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotated: see run_timed's docstring
                run = runs[name][0]
                t = time.perf_counter()
                decode(run, given[name], steps)
                times[name].append((time.perf_counter() - t) * 1e3 / steps)
        out.update({(name, batch): v for name, v in times.items()})
    return out, gbs


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=HERE).stdout.strip()
    return head + ("-dirty" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--past", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=20)
    ap.add_argument("--batches", default="1,14")
    ap.add_argument("--bundles", default=",".join(b for b in BUNDLES if b not in HINTS),
                    help=f"comma-separated subset of {', '.join(BUNDLES)} (default: all but {', '.join(HINTS)}, "
                    "which needs a CPU computing in that precision)")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--baseline", type=Path, help="a --work folder built by an earlier commit: its bundles are timed "
                    "and profiled in the same rounds as '<name>-baseline' (before/after a graph change)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "decode_profile_cpu.json")
    args = ap.parse_args()
    log = lambda m: print(m, flush=True)  # noqa: E731
    from tiercel.fileio import write_json

    result = {"command": "python benchmarks/decode_profile_cpu.py " + " ".join(sys.argv[1:]), "commit": commit(),
              "machine": machine(), "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "intra_op": 1}}
    names = args.bundles.split(",")
    bundles = build(args.work, names, args.rebuild, log)
    if args.baseline:
        bundles.update({f"{n}-baseline": args.baseline / b.name for n, b in bundles.items()})
    files, shapes = {}, {}
    for name, bundle in bundles.items():
        backend = BUNDLES[name.removesuffix("-baseline")][0]
        file, shape = decoder_file(bundle, backend)
        files[name], shapes[name] = (file, backend), shape
    shape = next(iter(shapes.values()))
    base = decoder_feeds(shape, np.random.default_rng(0), args.past, args.prompt)
    feeds = {b: batched(base, b) for b in map(int, args.batches.split(","))}
    timed, bw = run_timed(files, feeds, args.steps, args.rounds)
    profiled = run_profile(files, feeds, args.steps, args.rounds, log)
    gbs = statistics.median(b["read_gbs"] for b in bw)  # the bound: a step reads (tiercel.runtime.profile.roofline)
    copy_gbs = statistics.median(b["copy_gbs"] for b in bw)
    log(f"bandwidth: read {gbs:.1f} GB/s, copy {copy_gbs:.1f} GB/s counted both ways (medians of {len(bw)} rounds)")
    rows = {}
    for name, (file, backend) in files.items():
        hint = HINTS.get(name.removesuffix("-baseline"))
        weights = weight_bytes(file) if file.suffix == ".onnx" else ov_weight_bytes(file, hint)
        for batch in feeds:
            row = {"backend": backend, "scheme": BUNDLES[name.removesuffix("-baseline")][2] or hint or "fp32",
                   "batch": batch, "step_ms": statistics.median(timed[(name, batch)]), "step_ms_rounds": timed[(name, batch)]}
            need = step_bytes(weights, shape, args.past, args.prompt, batch, kv_bytes=2 if hint else 4)
            bound = need["total"] / (gbs * 1e9) * 1e3
            copy_bound = need["total"] / (copy_gbs * 1e9) * 1e3  # the bound of the runs before the read bound
            row.update(weights=weights, bytes=need, bound_ms=bound, ratio=row["step_ms"] / bound,
                       bound_copy_ms=copy_bound, ratio_copy=row["step_ms"] / copy_bound)
            base_times = timed.get((f"{name}-baseline", batch))
            if base_times:  # paired by round: both ran within the same round, under the same load
                row["vs_baseline"] = statistics.median(a / b for a, b in zip(timed[(name, batch)], base_times))
            if (name, batch) in profiled:
                row["profile"] = profiled[(name, batch)]
            rows[f"{name}@{batch}"] = row
            log(f"{name} batch {batch}: {row['step_ms']:.2f} ms/token" +
                f", bound {row['bound_ms']:.2f} ms, ratio {row['ratio']:.2f}")
    result.update(settings=vars(args) | {"work": str(args.work), "out": str(args.out), "baseline": str(args.baseline)},
                  bandwidth={"rounds": bw, "read_gbs_used": gbs, "copy_gbs": copy_gbs}, rows=rows)
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, result)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
