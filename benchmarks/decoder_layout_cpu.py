"""Merged vs split decoder: per-step latency on onnxruntime CPU (florence2-base shape, random weights).

Usage: python benchmarks/decoder_layout_cpu.py [PRESET]   -> JSON on stdout. Numbers are in tiercel/export/bundle.py.
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tiercel.export import onnx_export as ox
from tiercel.export.graphs import kv_names
from tiercel.export.merge import merge_decoders
from tiercel.models import build

preset = sys.argv[1] if len(sys.argv) > 1 else "florence2-base"
m = build(preset, seed=0)
L = m.tiercel_shape.decoder_layers; H = m.tiercel_shape.attention_heads; D = m.tiercel_shape.d_model
d = Path(tempfile.mkdtemp())
ins = ox.sample_inputs(m, batch=1)
mods = ox.modules(m)
protos = {}
for name in ("decoder_model", "decoder_with_past_model"):
    protos[name] = ox.trace_graph(mods[name], ins[name], name, L, d / "trace")
    ox.save_onnx(protos[name], d/f"{name}.onnx")
ox.save_onnx(merge_decoders(protos["decoder_model"], protos["decoder_with_past_model"], L), d/"decoder_model_merged.onnx")
opts = ort.SessionOptions()
S = m.tiercel_shape.image_tokens + 20
rng = np.random.default_rng(0)
enc = rng.standard_normal((1, S, D), dtype=np.float32); mask = np.ones((1, S), np.int64)
emb = rng.standard_normal((1, 1, D), dtype=np.float32)
def sess(n):
    t = time.perf_counter(); s = ort.InferenceSession(str(d/f"{n}.onnx"), opts, providers=["CPUExecutionProvider"]); return s, time.perf_counter() - t
res = {}
first, t_first = sess("decoder_model"); past, t_past = sess("decoder_with_past_model"); merged, t_merged = sess("decoder_model_merged")
res["load_s"] = {"split": t_first + t_past, "merged": t_merged}
res["file_mb"] = {"split": sum((d/f"{n}.onnx").stat().st_size for n in ("decoder_model","decoder_with_past_model"))/1e6, "merged": (d/"decoder_model_merged.onnx").stat().st_size/1e6}
names_p = kv_names("past_key_values", L); names_dec = kv_names("present", L)
def run_split(steps):
    out = first.run(None, {"inputs_embeds": emb, "encoder_attention_mask": mask, "encoder_hidden_states": enc})
    kv = dict(zip(names_dec, out[1:])); times = []
    for _ in range(steps):
        feed = {"inputs_embeds": emb, "encoder_attention_mask": mask, **{p: kv[p.replace("past_key_values", "present")] for p in names_p}}
        t = time.perf_counter(); o = past.run(None, feed); times.append(time.perf_counter() - t)
        for n, v in zip(kv_names("present", L, ("decoder",)), o[1:]): kv[n] = v
    return times
def run_merged(steps):
    empty = np.zeros((1, H, 0, D // H), np.float32)
    feed = {"inputs_embeds": emb, "encoder_attention_mask": mask, "encoder_hidden_states": enc, "use_cache_branch": np.array([False]), **{p: empty for p in names_p}}
    out = merged.run(None, feed); kv = dict(zip(names_dec, out[1:])); times = []
    for _ in range(steps):
        feed = {"inputs_embeds": emb, "encoder_attention_mask": mask, "encoder_hidden_states": enc, "use_cache_branch": np.array([True]), **{p: kv[p.replace("past_key_values", "present")] for p in names_p}}
        t = time.perf_counter(); o = merged.run(None, feed); times.append(time.perf_counter() - t)
        kv = dict(zip(names_dec, o[1:]))
    return times
def first_step(kind):
    t = time.perf_counter()
    if kind == "split": first.run(None, {"inputs_embeds": emb, "encoder_attention_mask": mask, "encoder_hidden_states": enc})
    else:
        empty = np.zeros((1, H, 0, D // H), np.float32)
        merged.run(None, {"inputs_embeds": emb, "encoder_attention_mask": mask, "encoder_hidden_states": enc, "use_cache_branch": np.array([False]), **{p: empty for p in names_p}})
    return time.perf_counter() - t
run_split(3); run_merged(3)
fs = {"split": [], "merged": []}; st = {"split": [], "merged": []}
for r in range(5):
    for k, f in (("split", run_split), ("merged", run_merged)):
        fs[k].append(first_step(k)); st[k].append(float(np.median(f(32))))
res["first_step_ms"] = {k: 1e3 * float(np.median(v)) for k, v in fs.items()}
res["decode_step_ms_median"] = {k: 1e3 * float(np.median(v)) for k, v in st.items()}
res["preset"] = preset; res["encoder_tokens"] = S; res["ort"] = ort.__version__
print(json.dumps(res, indent=1))
