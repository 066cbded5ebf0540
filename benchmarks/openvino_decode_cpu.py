"""OpenVINO int8 decode on this CPU: the decoder_with_past graph alone, fp32 vs int8-static vs int8-dynamic.

Usage:
    python benchmarks/openvino_decode_cpu.py [--bundle FP32_BUNDLE] [--runs 15] [--out benchmarks/results/openvino_decode_cpu.json]

Why this exists: benchmarks/quantize_cpu.py measured OpenVINO's int8-static decoder at 1.46x and 1.47x of fp32 (issue
6 asks 1.5x), while a throwaway run of the decoder alone gave 1.95x. This script measures the decoder alone, with the
product's own code on both sides: tiercel.quantize.openvino_backend.quantize_ir makes the int8 IRs from the fp32 IR
(int8-static calibrated on 8 decode-step feeds), and tiercel.runtime.backends opens every IR as `tiercel run` does
(f32 precision hint, shared inputs). Timing: 16 steps with the self-attention cache growing from 32 and a prompt of
the image tokens + 20, all IRs open together and timed in alternation (`--runs` rounds after a warm-up, medians):

    phase "alone"            the three OpenVINO decoders only
    phase "with_onnxruntime" the same three plus the bundle's onnxruntime fp32 decoder in the rotation, which is
                             what quantize_cpu.py does (with vision runs too): whether sharing the two cores' turns
                             with another runtime moves OpenVINO's ratios

Without --bundle the Florence-2-base shape (random weights: speed only) is exported to a temporary folder (~1 min).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from quantize_cpu import decode_steps, decoder_feeds, time_interleaved
from runtime_cpu import machine

from tiercel.fileio import write_json

STEPS, PAST, PROMPT = 16, 32, 20


def calibration_feeds(shape: dict, rng, n: int = 8) -> list[dict]:
    """Decoder-step feeds at growing positions (random values: speed only)."""
    return [decoder_feeds(shape, rng, int(p), PROMPT) for p in np.linspace(1, 2 * PAST, n)]


def export_base(work: Path) -> Path:
    from tiercel.export.bundle import export_model
    from tiercel.models import build
    from tiercel.models.presets import get_preset
    from tiercel.runtime.tokenizer import train_bpe

    tok = train_bpe(["Describe the image.", "Detect all airplane in the image.", "A harbor with ships."] * 50, vocab_size=300)
    model = build("florence2-base", seed=0, image_token_id=tok.image_id, vocab_size=max(get_preset("florence2-base").vocab_size, len(tok)))
    return export_model(model, tok, work / "fp32", backends=("onnxruntime", "openvino"), parity=False, overwrite=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="an fp32 bundle with onnxruntime and openvino graphs (default: export one)")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/openvino_decode_cpu.json"))
    args = ap.parse_args()
    from tiercel.quantize.openvino_backend import quantize_ir
    from tiercel.quantize.schemes import get_scheme
    from tiercel.runtime import read_bundle
    from tiercel.runtime.backends import get_backend

    result = {"command": "python benchmarks/openvino_decode_cpu.py " + " ".join(os.sys.argv[1:]), "machine": machine(),
              "steps": STEPS, "past": PAST, "runs": args.runs}
    with tempfile.TemporaryDirectory(prefix="tiercel-ovdec-") as tmp:
        bundle = read_bundle(args.bundle or export_base(Path(tmp)))
        shape, rng = bundle.manifest.model.model_dump(), np.random.default_rng(0)
        src = bundle.root / bundle.entries("openvino")["decoder_with_past_model"].file
        irs, feeds = {"ov-fp32": src}, calibration_feeds(shape, rng)
        for name, scheme in (("ov-int8-static", "int8-static"), ("ov-int8-dynamic", "int8-dynamic")):
            t = time.perf_counter()
            irs[name] = Path(tmp) / name / "decoder_with_past_model.xml"
            quantize_ir(src, irs[name], get_scheme(scheme), "decoder", feeds if scheme == "int8-static" else None)
            result.setdefault("quantize_s", {})[name] = time.perf_counter() - t
        ov, ort = get_backend("openvino"), get_backend("onnxruntime")
        base = decoder_feeds(shape, rng, PAST, PROMPT)
        timer = lambda session: {"vision": lambda: None, "steps": STEPS, "decode": decode_steps(session, base, STEPS)}  # noqa: E731
        timers = {name: timer(ov.open(ir, ov.devices[0], None)) for name, ir in irs.items()}
        ort_file = bundle.root / bundle.entries("onnxruntime")["decoder_with_past_model"].file
        for phase, extra in (("alone", {}), ("with_onnxruntime", {"ort-fp32": timer(ort.open(ort_file, ort.devices[0], None))})):
            timing = time_interleaved({**timers, **extra}, args.runs)
            ref = timing["ov-fp32"]["decode_ms_per_token"]
            result[phase] = {name: {"decode_ms_per_token": t["decode_ms_per_token"], "speedup_vs_ov_fp32": ref / t["decode_ms_per_token"]}
                             for name, t in timing.items()}
            print(phase + ": " + ", ".join(f"{n} {r['decode_ms_per_token']:.2f} ms ({r['speedup_vs_ov_fp32']:.2f}x)"
                                           for n, r in result[phase].items()), flush=True)
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, result)  # atomic: a crash leaves the previous results file whole
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
