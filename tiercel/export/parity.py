"""Parity: does a bundle compute what the PyTorch model computes? Used by export, tests and profiling.

Two checks per backend: every graph on random inputs (max abs diff per output against the traced torch
module; for fp16 bundles relative to the output's scale, see TOLERANCES), and greedy generation through the
real runtime (tiercel.runtime) against transformers' `generate` on a few prompts, which must be token-identical. `check_bundle` raises BundleError on any failure and returns
the numbers that export records in the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tiercel.errors import BundleError, require
from tiercel.export.graphs import DECODER_MERGED, kv_names
from tiercel.export.onnx_export import modules, sample_inputs
from tiercel.progress import track

PROMPTS = ("Describe the image.", "Detect all airplane in the image.\nUse horizontal bounding boxes.",
           "Classify the region of <box><100><200><300><400></box>.\nUse one or a few words.")


def sample_image(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 test image (smooth gradients plus noise), not square on purpose."""
    rng = np.random.default_rng(seed)
    h, w = size, size + size // 2
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], -1)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def _torch_outputs(module, args) -> list[np.ndarray]:
    torch = require("torch", "train", "parity checks")
    with torch.no_grad():
        out = module(*args)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


# Parity tolerance per bundle precision. fp32: max abs diff. fp16: max abs diff relative to the output's scale,
# max(1, max |reference|): fp16 keeps ~3 significant digits, so errors grow with magnitude (logits, hidden
# states); 1% leaves room for the error that accumulates over layers (the tiny model measured ~1e-3).
TOLERANCES = {"fp32": ("max_abs_diff", 1e-3), "fp16": ("max_rel_diff", 1e-2)}


def _diff(got: np.ndarray, ref: np.ndarray, relative: bool) -> float:
    diff = float(np.abs(got.astype(np.float32) - ref).max())
    return diff / max(1.0, float(np.abs(ref).max())) if relative else diff


def graph_diffs(model, sessions: dict, seed: int = 1, relative: bool = False) -> dict[str, dict[str, float]]:
    """{graph: {output: max abs diff}} of runtime `sessions` against the torch modules on random inputs.

    relative: divide each output's diff by max(1, max |reference|) (the fp16 measure, see TOLERANCES).
    """
    layers = model.tiercel_shape.decoder_layers
    inputs, mods, diffs = sample_inputs(model, batch=2, prompt=5, past=4, seed=seed), modules(model), {}
    for name, session in sessions.items():
        if name == DECODER_MERGED:
            diffs[name] = _merged_diffs(session, inputs, mods, layers, relative)
            continue
        args = inputs[name]
        ref = _torch_outputs(mods[name], args)
        got = session.run({n: a.numpy() for n, a in zip(session.input_names_ordered, args)})
        diffs[name] = {n: _diff(got[n], r, relative) for n, r in zip(session.output_order, ref)}
    return diffs


def _merged_diffs(session, inputs, mods, layers, relative: bool = False) -> dict[str, float]:
    """Both branches of decoder_model_merged: first step (empty past) and with past."""
    first, past = inputs["decoder_model"], inputs["decoder_with_past_model"]
    embeds, mask, hidden = (a.numpy() for a in first)
    empty = {n: np.zeros((*a.shape[:2], 0, a.shape[3]), np.float32)  # rows (self) or items (cross) of them
             for n, a in zip(kv_names("past_key_values", layers), past[2:])}
    got = session.run({"inputs_embeds": embeds, "encoder_attention_mask": mask, "encoder_hidden_states": hidden,
                       "use_cache_branch": np.array([False]), **empty})
    ref = _torch_outputs(mods["decoder_model"], first)
    out = {f"first/{n}": _diff(got[n], r, relative) for n, r in zip(["logits", *kv_names("present", layers)], ref)}
    feeds = dict(zip(kv_names("past_key_values", layers), (a.numpy() for a in past[2:])))
    got = session.run({"inputs_embeds": past[0].numpy(), "encoder_attention_mask": past[1].numpy(),
                       "encoder_hidden_states": hidden, "use_cache_branch": np.array([True]), **feeds})
    ref = _torch_outputs(mods["decoder_with_past_model"], past)
    names = ["logits", *kv_names("present", layers, ("decoder",))]
    out.update({f"with_past/{n}": _diff(got[n], r, relative) for n, r in zip(names, ref)})
    return out


def reference_generate(model, tokenizer, pixel_values: np.ndarray, prompt: str, generation: dict, features=None) -> list[int]:
    """transformers `generate` on one prompt with the bundle's settings; ids after the decoder start up to eos.

    `features` (the torch vision output for `pixel_values`) saves the vision pass when given; the text
    encoder and decoder still run through transformers.
    """
    torch = require("torch", "train", "parity checks")
    ids = torch.tensor([tokenizer.prompt_ids(prompt, model.tiercel_shape.image_tokens)])
    mask = torch.ones_like(ids)
    g = dict(generation)
    with torch.no_grad():
        if features is None:
            kwargs = {"pixel_values": torch.from_numpy(pixel_values)}
        else:
            embeds = model.get_input_embeddings()(ids)
            embeds[:, : features.shape[1]] = features
            kwargs = {"encoder_outputs": model.model.language_model.encoder(inputs_embeds=embeds, attention_mask=mask)}
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs, do_sample=False, num_beams=g["num_beams"], max_new_tokens=g["max_new_tokens"],
                             no_repeat_ngram_size=g["no_repeat_ngram_size"] or None,
                             forced_bos_token_id=g["forced_bos_token_id"], forced_eos_token_id=g["forced_eos_token_id"],
                             decoder_start_token_id=g["decoder_start_token_id"], eos_token_id=g["eos_token_id"],
                             pad_token_id=g["pad_token_id"], bos_token_id=g["bos_token_id"],
                             length_penalty=g["length_penalty"], early_stopping=g["early_stopping"])
    seq = out[0, 1:].tolist()
    return seq[: seq.index(g["eos_token_id"]) + 1] if g["eos_token_id"] in seq else seq


def check_bundle(model, tokenizer, root: str | Path, backends, tol: float | None = None, prompts=PROMPTS,
                 max_new_tokens: int = 12, precision: str = "fp32") -> dict:
    """Compare the bundle at `root` with `model` on every backend; raise BundleError on a mismatch.

    precision: the bundle's ("fp32" or "fp16"); picks the measure and default `tol` from TOLERANCES.
    """
    import tiercel.runtime as rt

    torch = require("torch", "train", "parity checks")
    measure, default_tol = TOLERANCES[precision]
    tol = default_tol if tol is None else tol
    report, reference = {}, {}
    with track("parity", len(backends) * (1 + len(prompts)), "checks") as bar:  # per backend: graphs, then prompts
        for backend in backends:
            m = rt.load(root, backend=backend)
            _annotate(m.sessions, m.bundle.entries(backend))
            diffs = graph_diffs(model, m.sessions, relative=measure == "max_rel_diff")
            worst = max((d, f"{g}:{o}") for g, outs in diffs.items() for o, d in outs.items())
            if not worst[0] <= tol:
                what = "by" if measure == "max_abs_diff" else "relative to its scale by"
                raise BundleError(f"{root}: {backend} parity failed: {worst[1]} differs from PyTorch {what} {worst[0]:.3g} (> {tol:g})")
            bar.advance(1, note=f"{backend} graphs")
            pixels = m.pixel_values(sample_image(model.tiercel_shape.image_size))
            features = m.image_features(pixels)
            greedy = dict(m.generation.to_dict(), num_beams=1, max_new_tokens=max_new_tokens)
            if not reference:  # transformers' answers do not depend on the backend: compute them once
                with torch.no_grad():
                    torch_features = model.get_image_features(torch.from_numpy(pixels)).pooler_output
                reference.update({p: reference_generate(model, tokenizer, pixels, p, greedy, torch_features) for p in prompts})
            identical = 0
            for prompt in prompts:
                got = m.generate_ids(features, [prompt], num_beams=1, max_new_tokens=max_new_tokens)[0]
                want = reference[prompt]
                if got != want:
                    raise BundleError(f"{root}: {backend} greedy generation differs from transformers on prompt {prompt!r}: "
                                      f"{got[:12]} vs {want[:12]}")
                identical += 1
                bar.advance(1, note=f"{backend} greedy generations")
            report[backend] = {measure: diffs, "worst": worst[0], "measure": measure, "tolerance": tol,
                               "greedy_identical": f"{identical}/{len(prompts)}", "max_new_tokens": max_new_tokens}
    return report


def _annotate(sessions: dict, entries: dict) -> None:
    """Give each session the manifest's input/output order (positional torch args map onto it)."""
    for name, session in sessions.items():
        session.input_names_ordered = entries[name].inputs
        session.output_order = entries[name].outputs
