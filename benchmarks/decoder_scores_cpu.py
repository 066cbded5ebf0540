"""Attention scores as traced (Q @ K^T) vs key-major ((K @ Q^T)^T, tiercel/export/rewrite.py): decode step time.

    python benchmarks/decoder_scores_cpu.py [--preset florence2-base] [--rounds 5] [--steps 32]
    -> benchmarks/results/decoder_scores_cpu.json

The decoder_with_past graph of the preset (random weights) is traced once, saved as traced and with the rewrite,
and both run on onnxruntime and OpenVINO (which reads the ONNX files) with 577 + 20 encoder tokens: a greedy
decode of --steps steps whose self-attention cache grows from 1, at batch 1 (one task) and batch 14 (run_all's
14 prompts). Rounds interleave the two graphs; per round the median step, over rounds the median of those.
Same run, same machine: both sides see the same load (recorded). Parity: max |logits difference| and whether
the argmax agrees on every row, on the same feeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from runtime_cpu import machine  # noqa: E402


def trace(preset: str, work: Path) -> tuple[dict, dict]:
    """{variant: onnx file} for the traced and the rewritten decoder_with_past graph, and the model shape."""
    from tiercel.export import onnx_export as ox
    from tiercel.export.graphs import DECODER_PAST
    from tiercel.export.rewrite import key_major_scores
    from tiercel.models import build

    model = build(preset, seed=0)
    shape = model.tiercel_shape
    proto = ox.trace_graph(ox.modules(model)[DECODER_PAST], ox.sample_inputs(model, batch=1)[DECODER_PAST],
                           DECODER_PAST, shape.decoder_layers, work / "trace")
    files = {"traced": work / "traced.onnx", "key_major": work / "key_major.onnx"}
    ox.save_onnx(proto, files["traced"])
    rewritten = key_major_scores(proto)
    ox.save_onnx(proto, files["key_major"])
    info = {"d_model": shape.d_model, "heads": shape.attention_heads, "layers": shape.decoder_layers,
            "image_tokens": shape.image_tokens, "rewritten_matmuls": rewritten}
    return files, info


def sessions(files: dict) -> dict:
    """{(backend, variant): callable(feeds) -> {output name: array}}."""
    import onnxruntime as ort
    import openvino as ov

    out, core = {}, ov.Core()
    for variant, file in files.items():
        sess = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        out[("onnxruntime", variant)] = lambda feeds, s=sess, n=names: dict(zip(n, s.run(None, feeds)))
        compiled = core.compile_model(str(file), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        out[("openvino", variant)] = _ov_runner(compiled)
    return out


def _ov_runner(compiled):
    request = compiled.create_infer_request()
    ports = [(sorted(p.get_names())[0], p) for p in compiled.outputs]

    def run(feeds: dict) -> dict:
        result = request.infer(feeds)  # inputs copied, as OpenVinoSession.run did when the JSON was measured
        return {name: np.array(result[port]) for name, port in ports}

    return run


def decode(run, info: dict, batch: int, steps: int, seed: int = 0) -> tuple[list[float], np.ndarray]:
    """Per-step seconds of a `steps`-step decode from a 1-token past, and the last logits."""
    rng = np.random.default_rng(seed)
    heads, layers, d = info["heads"], info["layers"], info["d_model"]
    enc = info["image_tokens"] + 20
    kv = lambda n: rng.standard_normal((batch, heads, n, d // heads), dtype=np.float32)  # noqa: E731
    fixed = {f"past_key_values.{i}.encoder.{w}": kv(enc) for i in range(layers) for w in ("key", "value")}
    past = {f"past_key_values.{i}.decoder.{w}": kv(1) for i in range(layers) for w in ("key", "value")}
    mask = np.ones((batch, enc), np.int64)
    times, logits = [], None
    for _ in range(steps):
        embeds = rng.standard_normal((batch, 1, d), dtype=np.float32)
        t = time.perf_counter()
        out = run({"inputs_embeds": embeds, "encoder_attention_mask": mask, **fixed, **past})
        times.append(time.perf_counter() - t)
        past = {f"past_key_values.{k[len('present.'):]}": v for k, v in out.items() if k.startswith("present.")}
        logits = out["logits"]
    return times, logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="florence2-base")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batches", default="1,14")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "decoder_scores_cpu.json")
    args = ap.parse_args()
    started = time.perf_counter()
    result = {"command": "python benchmarks/decoder_scores_cpu.py " + " ".join(sys.argv[1:]), "machine": machine(),
              "preset": args.preset, "rounds": args.rounds, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        files, info = trace(args.preset, Path(tmp))
        result["graph"] = info
        runs = sessions(files)
        rows = {}
        for batch in [int(b) for b in args.batches.split(",")]:
            for backend in ("onnxruntime", "openvino"):
                per = {v: [] for v in files}
                last = {v: decode(runs[(backend, v)], info, batch, 4)[1] for v in files}  # warm-up; same seed: same feeds
                for r in range(args.rounds):
                    for v in files:
                        per[v].append(statistics.median(decode(runs[(backend, v)], info, batch, args.steps)[0]))
                ms = {v: 1000 * statistics.median(x) for v, x in per.items()}
                rows[f"{backend}, batch {batch}"] = {
                    "step_ms": ms, "step_ms_per_round": {v: [1000 * x for x in xs] for v, xs in per.items()},
                    "speedup": ms["traced"] / ms["key_major"],
                    "max_abs_logits_diff": float(np.abs(last["traced"] - last["key_major"]).max()),
                    "argmax_equal": bool((last["traced"].argmax(-1) == last["key_major"].argmax(-1)).all())}
                print(f"{backend}, batch {batch}: traced {ms['traced']:.2f} ms, key-major {ms['key_major']:.2f} ms "
                      f"({rows[f'{backend}, batch {batch}']['speedup']:.2f}x)", flush=True)
    result["results"] = rows
    result["machine"]["load_avg_end"] = list(os.getloadavg())
    result["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1) + "\n")
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
