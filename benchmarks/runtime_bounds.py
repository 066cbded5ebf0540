"""Matrix-multiply peaks of this CPU and the compute bounds benchmarks/runtime_cpu.py compares its paths with.

Peaks: a 2048^3 torch matmul at each precision, on torch's current thread count (runtime_cpu.py sets it to the
benchmark's): fp32 `a @ b`, bf16 `a @ b` on bfloat16 tensors, and int8 `torch._int_mm` (int8 x int8 -> int32,
exact); one warm-up, then the median of `repeats` timings. Bounds: a stage's FLOPs (tiercel.runtime.profile.roofline,
one multiply-add = 2 FLOPs) divided by the peak of the precision it runs at (runtime_paths.PRECISION). A bound is
optimistic where not every FLOP runs at that precision (an int8 bundle's attention matmuls, activation x
activation, stay fp32). Knows nothing about bundles, runtimes or how the stages are timed.
"""

from __future__ import annotations

import statistics
import time

from tiercel.runtime.profile.roofline import text_encoder_flops, vision_flops

SIZE = 2048
OPS = {"fp32": "torch.matmul, float32", "bf16": "torch.matmul, bfloat16",
       "int8": "torch._int_mm, int8 x int8 -> int32"}


def _matmuls(size: int) -> dict:
    """{precision: a callable doing one size^3 matmul} on random operands."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    ia, ib = (torch.randint(-128, 128, (size, size), generator=g, dtype=torch.int8) for _ in range(2))
    a16, b16 = a.bfloat16(), b.bfloat16()
    return {"fp32": lambda: a @ b, "bf16": lambda: a16 @ b16, "int8": lambda: torch._int_mm(ia, ib)}


def matmul_peaks(precisions, size: int = SIZE, repeats: int = 5) -> dict:
    """{precision: {"gflops", "gflops_per_repeat", "op", "size"}} for each of `precisions`; a precision whose
    op raises gets {"error": "Type: message"} instead (no peak, so no bound at that precision)."""
    import torch

    calls, flops, out = _matmuls(size), 2.0 * size**3, {}
    for p in precisions:
        try:
            calls[p]()  # warm-up: oneDNN/MKL pick and cache the kernel
            rates = []
            for _ in range(repeats):
                t = time.perf_counter()
                calls[p]()
                rates.append(flops / (time.perf_counter() - t) / 1e9)
        except RuntimeError as exc:
            out[p] = {"op": OPS[p], "error": f"{type(exc).__name__}: {exc}"}
            continue
        out[p] = {"gflops": statistics.median(rates), "gflops_per_repeat": rates, "op": OPS[p], "size": size,
                  "threads": torch.get_num_threads()}
    if "int8" in precisions:
        _int8_from_onnxruntime(out, size, repeats, torch.get_num_threads())
    return out


def _int8_from_onnxruntime(out: dict, size: int, repeats: int, threads: int) -> None:
    """The int8 peak is the faster of torch._int_mm and onnxruntime's MatMulInteger (u8 x s8, the kernel family
    of the int8 bundles; tiercel.runtime.profile.roofline.measure_int8_matmul): on a CPU without VNNI, such as an
    AVX2-only AMD EPYC (Zen 3), torch._int_mm ran at 1 GFLOP/s, far below the int8 bundles' own matmuls."""
    from tiercel.runtime.profile.roofline import measure_int8_matmul

    ort = measure_int8_matmul(n=size, repeats=repeats, threads=threads)
    if ort is None:
        return
    torch_peak = out.get("int8", {}).get("gflops")
    out.setdefault("int8", {})["onnxruntime_gflops"] = ort / 1e9
    if torch_peak is None or ort / 1e9 > torch_peak:
        out["int8"].update(gflops=ort / 1e9, op="onnxruntime MatMulInteger, uint8 x int8 -> int32 (best of "
                           f"{repeats}; faster than torch._int_mm here)", torch_int_mm_gflops=torch_peak)
        out["int8"].pop("error", None)


def peak_gflops(peaks: dict, precision: str) -> float | None:
    return peaks.get(precision, {}).get("gflops")


def vision_bound(shape: dict, precision: str, peaks: dict) -> dict:
    """One image through the vision encoder at `precision`'s peak: {"gflops", "peak_gflops", "bound_ms"}
    (bound_ms None when that peak was not measured)."""
    flops, peak = vision_flops(shape), peak_gflops(peaks, precision)
    return {"precision": precision, "gflops": flops / 1e9, "peak_gflops": peak,
            "bound_ms": 1000 * flops / (peak * 1e9) if peak else None}


def all_tasks_bound(shape: dict, encoder_tokens: list[int], images: int, batched: bool, precision: str,
                    peaks: dict) -> dict:
    """The compute bound of the 14 tasks' vision and text-encoder work at `precision`'s peak.

    Args:
        encoder_tokens: each task's text-encoder sequence (image tokens + prompt).
        images: vision passes (run_all: 2, the image and PIX_CHG's pair; 14 separate calls: 14).
        batched: the prompts go through the encoder as one batch right-padded to the longest (run_all), else
            each at its own length."""
    longest = max(encoder_tokens)
    enc = sum(text_encoder_flops(shape, longest if batched else t) for t in encoder_tokens)
    vis, peak = images * vision_flops(shape), peak_gflops(peaks, precision)
    ms = lambda f: 1000 * f / (peak * 1e9) if peak else None  # noqa: E731
    return {"precision": precision, "vision_gflops": vis / 1e9, "text_encoder_gflops": enc / 1e9,
            "vision_bound_ms": ms(vis), "text_encoder_bound_ms": ms(enc), "bound_ms": ms(vis + enc)}


def encoder_tokens(m, size: tuple[int, int], texts: dict, regions: dict) -> list[int]:
    """Each task's text-encoder sequence length (image tokens + prompt) on an image of `size` (w, h), as the
    Model `m` (its tokenizer and dialect) builds the prompts, in tiercel.tasks.TAGS order."""
    from tiercel import tasks

    prompts = [tasks.get(t).prompt(text=texts.get(t), region=regions.get(t), image_size=size, dialect=m.dialect)
               for t in tasks.TAGS]
    return [len(m.tokenizer.prompt_ids(p, m.shape.image_tokens)) for p in prompts]


def add_bounds(result: dict, shape: dict, peaks: dict, tokens: list[int]) -> dict:
    """Per path of runtime_cpu's `result`, the compute bounds at its precision: of one image through the vision
    encoder (with the measured stage over it), and of the 14 tasks' vision and text-encoder work (with the
    measured parts over them; eager paths make one call per task, tiercel paths one run_all)."""
    from runtime_paths import EAGER, PRECISION

    out = {}
    for name, p in result["paths"].items():
        eager, precision = name in EAGER, PRECISION[name]
        vision = vision_bound(shape, precision, peaks)
        vision["measured_over_bound"] = p["stages_ms"]["vision"] / vision["bound_ms"] if vision["bound_ms"] else None
        every = all_tasks_bound(shape, tokens, len(tokens) if eager else 2, not eager, precision, peaks)
        if name in result["all_tasks"] and every["bound_ms"]:
            ms = result["all_tasks"][name]["time_goes"]["ms"]
            every["measured_over_bound"] = {"vision": ms["vision"] / every["vision_bound_ms"],
                                            "text_encoder": ms["text_encoder"] / every["text_encoder_bound_ms"]}
        out[name] = {"vision": vision, "all_tasks": every}
    return out
