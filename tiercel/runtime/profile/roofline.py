"""Roofline: what a bundle must compute and read per stage, and what this machine can do per second.

Work comes from the manifest alone, without torch: FLOPs analytically from the model shape (matmuls and
convolutions, one multiply-add = 2 FLOPs, the convention of torch's FlopCounterMode that `tiercel info` uses;
norms, softmax and element-wise ops are not counted), bytes from the graph files' sizes on disk (so a quantised
bundle's smaller weights count as they are) plus the KV cache a decoder step reads. Machine peaks are measured
in the same run: memory bandwidth by a multi-threaded numpy read (measure_bandwidth says why not a copy), matmul throughput per precision by one
2048^3 product: fp32 by numpy sgemm, int8 by onnxruntime's MatMulInteger (u8 x s8, the kernel family behind
int8-static, int8-dynamic and int4 at accuracy level 4), bf16 by OpenVINO's MatMul with
INFERENCE_PRECISION_HINT=bf16 where the CPU computes bf16. A precision whose library is missing falls back to
the fp32 peak, and the report says so.

A stage's roofline time is max(bytes / bandwidth, FLOPs / peak at the stage's precision); its fraction of the
bound is that time divided by the measured one (1.0 = running at the roofline) and its ratio the inverse
(measured / bound, "1.3x its bound"). Knows nothing about how stages are timed (timing.py).
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

# KV-cache / activation bytes per value by graph precision: quantised graphs keep fp32 activations on CPU
# backends; fp16 graphs keep fp16.
_ACT_BYTES = {"fp16": 2, "bf16": 2}


# ---- FLOPs from the shape ---------------------------------------------------------------------------------
def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def vision_flops(shape: dict) -> float:
    """FLOPs of one image through DaViT and the projector (Florence-2's patch 7/3/3/3, stride 4/2/2/2, MLP x4)."""
    dims, depths, window = shape["vision_dims"], shape["vision_depths"], shape["window_size"]
    groups = shape["vision_groups"]
    side, c_in, total = shape["image_size"], 3, 0.0
    for stage, (c, depth) in enumerate(zip(dims, depths)):
        k, s, p = (7, 4, 3) if stage == 0 else (3, 2, 1)
        side = _conv_out(side, k, s, p)
        n = side * side
        total += 2.0 * k * k * c_in * c * n  # patch embedding conv
        padded = (math.ceil(side / window) * window) ** 2  # windows are padded to whole windows
        spatial = 2 * (2 * 9 * c * n)  # two depthwise 3x3 convs
        spatial += 2 * padded * c * 3 * c + 2 * padded * c * c  # qkv + proj on the padded windows
        spatial += 4 * padded * window * window * c  # QK^T and AV within each window
        spatial += 2 * n * c * 4 * c * 2  # MLP c -> 4c -> c
        channel = 2 * (2 * 9 * c * n) + 2 * n * c * 3 * c + 2 * n * c * c
        channel += 4 * n * c * (c // groups[stage])  # channel attention: per group (C/G x N) @ (N x C/G), then AV
        channel += 2 * n * c * 4 * c * 2
        total += depth * (spatial + channel)
        c_in = c
    tokens = side * side + 1  # the spatial grid plus one temporal token
    return total + 2.0 * tokens * dims[-1] * shape["d_model"]  # image_projection


def text_encoder_flops(shape: dict, tokens: int) -> float:
    """FLOPs of the BART text encoder over `tokens` (image tokens + prompt) for one sequence."""
    d, f = shape["d_model"], shape["ffn_dim"]
    per_layer = 8 * tokens * d * d + 4 * tokens * tokens * d + 4 * tokens * d * f
    return float(shape["encoder_layers"] * per_layer)


def decoder_step_flops(shape: dict, enc_tokens: int, past: float, rows: int = 1, first: bool = False,
                       cross_rows: int | None = None) -> float:
    """FLOPs of one decoder step for `rows` sequences with `past` earlier tokens; the first step also
    projects the encoder output to cross-attention K/V, once per `cross_rows` (default rows; a per_item
    bundle's beam search: once per item)."""
    d, f, v = shape["d_model"], shape["ffn_dim"], shape["vocab_size"]
    per_row = shape["decoder_layers"] * (2 * 6 * d * d + 4 * d * f + 4 * d * (past + 1 + enc_tokens)) + 2 * d * v
    cross = shape["decoder_layers"] * 2 * 2 * enc_tokens * d * d if first else 0
    return float(rows * per_row + (rows if cross_rows is None else cross_rows) * cross)


# ---- bytes from the files ---------------------------------------------------------------------------------
def graph_files(bundle, backend: str) -> dict[str, dict]:
    """{graph: {"bytes": size of its files on disk, "files": [...], "precision": ...}} for one backend."""
    out = {}
    for name, entry in bundle.entries(backend).items():
        files = [entry.file, *entry.extra_files]
        size = sum((bundle.root / f).stat().st_size for f in files if (bundle.root / f).is_file())
        out[name] = {"bytes": size, "files": files, "precision": entry.precision}
    return out


def act_bytes(precision: str) -> int:
    return _ACT_BYTES.get(str(precision).split("-")[0], 4)


@dataclass
class StageWork:
    """What one stage computes and reads (weights from the graph files, plus KV cache for decoder steps)."""

    flops: float
    bytes: float
    precision: str = "fp32"  # of the graph that runs the stage (decides the compute peak in device estimates)

    def bound_seconds(self, bandwidth: float, flops_per_s: float) -> tuple[float, str]:
        """(roofline time, "memory" or "compute") for a machine with these peaks (bytes/s, FLOP/s)."""
        t_mem, t_cmp = self.bytes / bandwidth, self.flops / flops_per_s
        return (t_mem, "memory") if t_mem >= t_cmp else (t_cmp, "compute")


def bundle_work(bundle, backend: str, enc_tokens: int, new_tokens: int, rows: int = 1) -> dict[str, StageWork]:
    """Work per stage of one generation of a bundle on `backend` (its graph files are the weights read); `rows`
    are its beams, which share one cross-attention K/V when the bundle's cross_kv is per_item."""
    return stage_work(bundle.manifest.model.shape.model_dump(), graph_files(bundle, backend), enc_tokens, new_tokens, rows,
                      1 if bundle.manifest.cross_kv == "per_item" else rows)


def stage_work(shape: dict, files: dict[str, dict], enc_tokens: int, new_tokens: int, rows: int = 1,
               cross_rows: int | None = None) -> dict[str, StageWork]:
    """Work per stage of one generation: vision_encoder, text_encoder, first_token and an average decode_token
    (over `new_tokens` steps of `rows` sequences, e.g. beams; `cross_rows` of them hold a cross-attention K/V
    copy: rows by default, 1 for one prompt's beams on a bundle with cross_kv per_item). `files`: {graph: {"bytes", "precision"}} with
    vision_encoder, encoder_model and the decoder as decoder_model_merged, or decoder_model (first step) plus
    decoder_with_past_model (later steps; decoder_model alone serves both, as a checkpoint's weights do)."""
    d, layers = shape["d_model"], shape["decoder_layers"]
    first_g = files.get("decoder_model_merged") or files["decoder_model"]
    step_g = files.get("decoder_model_merged") or files.get("decoder_with_past_model") or files["decoder_model"]
    kv = act_bytes(step_g["precision"])
    avg_past = (new_tokens - 1) / 2  # earlier tokens on average over the decode steps
    cross_kv = layers * 2 * enc_tokens * d * kv  # cross-attention K/V read each step, per copy
    cross_rows = rows if cross_rows is None else cross_rows
    self_kv = layers * 2 * (avg_past + 1) * d * kv
    return {
        "vision_encoder": StageWork(vision_flops(shape), files["vision_encoder"]["bytes"], files["vision_encoder"]["precision"]),
        "text_encoder": StageWork(text_encoder_flops(shape, enc_tokens), files["encoder_model"]["bytes"],
                                  files["encoder_model"]["precision"]),
        "first_token": StageWork(decoder_step_flops(shape, enc_tokens, 0, rows, first=True, cross_rows=cross_rows),
                                 first_g["bytes"] + cross_rows * cross_kv, first_g["precision"]),
        "decode_token": StageWork(decoder_step_flops(shape, enc_tokens, avg_past, rows),
                                  step_g["bytes"] + cross_rows * cross_kv + rows * self_kv, step_g["precision"]),
    }


# ---- this machine -----------------------------------------------------------------------------------------
@dataclass
class MachinePeaks:
    """Measured peaks of this machine: bytes/s read from memory (measure_bandwidth) and FLOP/s of a matmul per
    precision (None: not measured here, the fp32 peak stands in)."""

    bandwidth: float  # bytes/s
    flops: float  # fp32 FLOP/s
    method: str
    int8_flops: float | None = None
    bf16_flops: float | None = None

    def peak(self, kind: str) -> tuple[float, str]:
        """(FLOP/s, the precision it was measured at) for compute of `kind` (fp32, int8, bf16)."""
        value = {"int8": self.int8_flops, "bf16": self.bf16_flops}.get(kind)
        return (value, kind) if value else (self.flops, "fp32")

    def to_dict(self) -> dict:
        out = {"bandwidth_gbs": self.bandwidth / 1e9, "matmul_gflops": self.flops / 1e9, "method": self.method}
        for kind in ("int8", "bf16"):
            value = getattr(self, f"{kind}_flops")
            out[f"{kind}_matmul_gflops"] = None if value is None else value / 1e9
        return out


def compute_kind(precision: str, backend: str = "", options: dict | None = None) -> str:
    """The arithmetic a graph of `precision` runs its matmuls in on a CPU: int8 for int8 and int4 graphs
    (onnxruntime quantises activations to int8 for MatMulInteger, DynamicQuantizeMatMul and MatMulNBits at
    accuracy level 4), bf16 for bf16 graphs and for OpenVINO asked for INFERENCE_PRECISION_HINT=bf16, else fp32
    (fp16 graphs compute through fp32 on a CPU without fp16 arithmetic)."""
    p = str(precision).lower()
    if p.startswith(("int8", "int4")):
        return "int8"
    hint = str((options or {}).get("INFERENCE_PRECISION_HINT", "")).lower()
    if p.startswith("bf16") or (backend == "openvino" and hint == "bf16"):
        return "bf16"
    return "fp32"


def _best(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth(megabytes: int = 256, repeats: int = 5, threads: int | None = None) -> float:
    """Memory read bandwidth in bytes/s: the best of `repeats` passes over a `megabytes` float32 array split over
    `threads` threads (numpy releases the GIL), each pass either a max-reduction or a matrix-vector product
    (BLAS sgemv: a decode step's access pattern), whichever reads faster.

    A read rate, not a copy's read + write (the STREAM "copy" convention): a decode step reads its weights and KV
    cache and writes almost nothing, and on some CPUs a copy's non-temporal stores make read + write far more
    than one core can read (an AMD EPYC, Zen 3, one thread: copy 28.8 GB/s counted both ways, sgemv reads
    18-19 GB/s; benchmarks/results/decode_profile_avx2_cpu.md). The array is written before it is read: pages
    never written read as the kernel's shared zero page, from cache."""
    threads = threads or os.cpu_count() or 1
    rows = np.ones((megabytes * 2**20 // 4096, 1024), np.float32)
    vector = np.ones(1024, np.float32)
    cuts = np.linspace(0, len(rows), threads + 1).astype(int)

    def each(fn):
        workers = [threading.Thread(target=fn, args=(rows[a:b],)) for a, b in zip(cuts[:-1], cuts[1:])]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    seconds = min(_best(lambda: each(np.max), repeats), _best(lambda: each(lambda part: part @ vector), repeats))
    return rows.nbytes / seconds


def measure_matmul(n: int = 1536, repeats: int = 5) -> float:
    """fp32 matmul throughput in FLOP/s: best of `repeats` n x n products (numpy's BLAS, all its threads)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    return 2.0 * n**3 / _best(lambda: a @ b, repeats)


def measure_int8_matmul(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float | None:
    """int8 matmul throughput in FLOP/s (multiply-add = 2): best of `repeats` onnxruntime MatMulInteger products,
    uint8 [n, n] x int8 [n, n] -> int32, on `threads` intra-op threads, in the session config tiercel's CPU sessions
    use (backends.ORT_CPU_CONFIG); None without onnx and onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "b")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_peak",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    from tiercel.runtime.backends import ORT_CPU_CONFIG

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    for key, value in ORT_CPU_CONFIG.items():  # the int8 path tiercel's sessions take (exact on CPUs without VNNI)
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8)}
    session.run(None, feed)  # first call packs the weight
    return 2.0 * n**3 / _best(lambda: session.run(None, feed), repeats)


def measure_bf16_matmul(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float | None:
    """bf16 matmul throughput in FLOP/s: best of `repeats` OpenVINO MatMul calls compiled with
    INFERENCE_PRECISION_HINT=bf16 (fp32 in and out, bf16 inside); None without OpenVINO or where its CPU plugin
    does not compute bf16 (no AVX512_BF16 or AMX)."""
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return None
    core = ov.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return None
    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32, name="a")
    model = ov.Model([ops.matmul(a, ops.constant(rng.random((n, n), np.float32)), False, False)], [a], "bf16_peak")
    config = {"INFERENCE_PRECISION_HINT": "bf16", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    x = rng.random((n, n), np.float32)
    request.infer({0: x})
    return 2.0 * n**3 / _best(lambda: request.infer({0: x}), repeats)


def measure_machine(threads: int | None = None) -> MachinePeaks:
    """Every peak, in a few seconds. `threads`: the backends' intra-op threads for the int8 and bf16 peaks and
    the read's; numpy's fp32 sgemm uses all of its BLAS threads."""
    read_threads = threads or os.cpu_count() or 1
    int8, bf16 = measure_int8_matmul(threads=threads), measure_bf16_matmul(threads=threads)
    method = (f"numpy read of 256 MiB over {read_threads} threads (max or sgemv, the faster); numpy fp32 matmul 1536^3; "
              f"int8: {'onnxruntime MatMulInteger 2048^3' if int8 else 'not measured (no onnxruntime), fp32 peak used'}; "
              f"bf16: {'OpenVINO MatMul 2048^3 with INFERENCE_PRECISION_HINT=bf16' if bf16 else 'not measured (no OpenVINO, or no bf16 on this CPU), fp32 peak used'}"
              f"{f'; int8/bf16 on {threads} threads' if threads else ''}")
    return MachinePeaks(measure_bandwidth(threads=read_threads), measure_matmul(), method, int8, bf16)


def fractions(measured: dict[str, float], work: dict[str, StageWork], peaks: MachinePeaks, backend: str = "",
              options: dict | None = None) -> dict[str, dict]:
    """{stage: {"bound": "memory"|"compute", "peak": the compute precision of the bound, "bound_ms", "measured_ms",
    "fraction", "ratio"}} for the stages in both; a stage's compute bound uses the peak at its graph's arithmetic
    (compute_kind)."""
    out = {}
    for stage, w in work.items():
        seconds = measured.get(stage)
        if not seconds or not math.isfinite(seconds):
            continue
        flops_per_s, kind = peaks.peak(compute_kind(w.precision, backend, options))
        if kind == "bf16" and act_bytes(w.precision) == 4:
            # an fp32 graph computing in bf16 (OpenVINO's hint, where the CPU has it): the plugin converts the
            # weights to bf16 when it compiles and the runtime keeps the KV cache in bf16, so every byte halves
            w = replace(w, bytes=w.bytes / 2, precision="bf16")
        bound, limit = w.bound_seconds(peaks.bandwidth, flops_per_s)
        out[stage] = {"bound": limit, "peak": kind, "peak_gflops": flops_per_s / 1e9, "bound_ms": bound * 1e3,
                      "measured_ms": seconds * 1e3, "fraction": bound / seconds, "ratio": seconds / bound, **asdict(w)}
    return out
