"""`tiercel export`: a checkpoint (or an in-memory model) -> a bundle directory, checked for parity.

Steps, all inside a temporary directory that is renamed to the output only when everything passed:
ONNX graphs (onnx_export.py) -> backend variants (openvino.py IR, tensorrt.py engines) -> tokenizer.json ->
manifest.json -> parity of every backend against PyTorch (parity.py), recorded in the manifest.

Decoder layout, chosen by measurement (`python benchmarks/decoder_layout_cpu.py`: florence2-base shape,
random weights, onnxruntime 1.32 CPU on this 2-core AVX2 machine, batch 1, 597 encoder tokens, median of
5 x 32 steps; two runs, the second on an idle machine):

    layout   decode step          first step    decoder files   session load
    split    47.9 / 37.4 ms       236 / 235 ms  746 MB          3.1 / 3.2 s
    merged   53.9 / 42.3 ms       201 / 232 ms  388 MB          3.9 / 3.1 s

The merged graph costs 12-13% per generated token (probably because onnxruntime optimises less inside If
branches; not profiled), in the loop that dominates run time; a split decoder can also be quantised graph by graph
(FALCON.md: merged decoders break under quantisation). So "split" is the default and "merged"
(`decoder_model_merged`, public Florence-2 layout, half the decoder bytes) the option when disk/RAM matter
more than speed. The runtime reads either.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import sys
from pathlib import Path

from tiercel import __version__
from tiercel.errors import ConfigError, require
from tiercel.export.onnx_export import OPSET, export_onnx, graph_io
from tiercel.fileio import atomic_dir, check_distinct, check_new_output, sha256_file
from tiercel.progress import track
from tiercel.runtime.backends import bundle_backends
from tiercel.runtime.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    Manifest,
    check_manifest,
    model_entry,
    preprocessing,
    write_manifest,
)

DECODER_LAYOUTS = ("split", "merged")
# Graph precisions export writes. fp16 is for GPUs (onnxruntime CUDA/TensorRT EP, TensorRT engines): weights,
# activations and graph I/O in fp16, norms/softmax/reductions in fp32 (fp16.py). OpenVINO is left out: its IR
# stores weights as it likes, and its CPU plugin computes in fp32 anyway.
PRECISIONS = ("fp32", "fp16")


def generation_settings(model, tokenizer) -> dict:
    """Default decoding for the runtime, from the model's generation config and Florence-2 practice."""
    gc, shape = model.generation_config, model.tiercel_shape
    bos = gc.bos_token_id if gc.bos_token_id is not None else tokenizer.bos_id
    eos = gc.eos_token_id if isinstance(gc.eos_token_id, int) else tokenizer.eos_id
    return {
        "decoder_start_token_id": gc.decoder_start_token_id if gc.decoder_start_token_id is not None else eos,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": gc.pad_token_id if gc.pad_token_id is not None else tokenizer.pad_id,
        # Forcing <s> after the decoder start keeps BART beam search from degenerating (FALCON.md).
        "forced_bos_token_id": gc.forced_bos_token_id if gc.forced_bos_token_id is not None else bos,
        "forced_eos_token_id": gc.forced_eos_token_id if gc.forced_eos_token_id is not None else eos,
        "num_beams": gc.num_beams if gc.num_beams and gc.num_beams > 1 else 3,  # Florence-2's stock setting
        # Falcon's value is unverified; detection repeats coordinates, so nothing is blocked by default.
        "no_repeat_ngram_size": gc.no_repeat_ngram_size or 0,
        "max_new_tokens": min(1024, shape.max_text_positions),
        "length_penalty": float(gc.length_penalty if gc.length_penalty is not None else 1.0),
        "early_stopping": gc.early_stopping if gc.early_stopping is not None else False,
    }


def state_hash(model) -> str:
    """sha256 over the model's tensors in key order: provenance for models that were never files."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _graph_entry(root: Path, name: str, backend: str, files: list[Path], layers: int, precision: str = "fp32") -> dict:
    inputs, outputs = graph_io(name, layers)
    main, *extra = files
    return {
        "name": name,
        "backend": backend,
        "file": main.relative_to(root).as_posix(),
        "sha256": sha256_file(main),
        "extra_files": {f.relative_to(root).as_posix(): sha256_file(f) for f in extra},
        "precision": precision,
        "inputs": inputs,
        "outputs": outputs,
    }


def manifest_for(model, tokenizer, root: Path, graphs: list[dict], decoder: str, mean, std, provenance: dict) -> Manifest:
    shape = model.tiercel_shape
    from tiercel.models.presets import match_preset
    from tiercel.tasks import TAGS

    return check_manifest(json.loads(json.dumps({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model_entry(shape, match_preset(shape)).model_dump(),
        "tasks": list(TAGS),
        "dialect": "falcon",
        "preprocessing": preprocessing(shape.image_size, mean, std).model_dump(),
        "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(root / "tokenizer.json"),
                      "image_token_id": tokenizer.image_id, "vocab_size": len(tokenizer)},
        "generation": generation_settings(model, tokenizer),
        "decoder": decoder,
        "cross_kv": "per_item",  # graphs.DecoderStep: cross-attention K/V per item, shared by its beams
        "opset": OPSET,
        "graphs": graphs,
        "parity": {},
        "provenance": {"tiercel_version": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       **provenance},
    })), root / MANIFEST)


def export_model(model, tokenizer, out: str | Path, backends=("onnxruntime",), decoder: str = "split", mean=None,
                 std=None, provenance: dict | None = None, overwrite: bool = False, parity: bool = True,
                 precision: str = "fp32", max_batch: int | None = None) -> Path:
    """Export a native Florence-2 model to a bundle at `out`. Returns the bundle path.

    Args:
        backends: any of "onnxruntime" (the ONNX graphs; always written), "openvino" (IR beside them),
            "tensorrt" (engines built here; needs tensorrt and an NVIDIA GPU; tiercel.export.tensorrt).
        decoder: "split" (default, faster per token) or "merged" (one decoder_model_merged graph).
        parity: run the parity check (per-graph diffs + greedy generations) and fail loudly on a mismatch.
        precision: "fp32", or "fp16" for GPUs (see PRECISIONS; parity then uses parity.TOLERANCES["fp16"]).
            TensorRT engines take the graphs' precision: fp16 engines need precision "fp16".
        max_batch: rows the TensorRT engines' profiles take (default: 14 tasks x the bundle's num_beams).
    """
    from tiercel.models.presets import IMAGENET_MEAN, IMAGENET_STD

    unknown = [b for b in backends if b not in bundle_backends()]
    if unknown:
        raise ConfigError(f"unknown backend '{unknown[0]}'; choose from: {', '.join(bundle_backends())}")
    if decoder not in DECODER_LAYOUTS:
        raise ConfigError(f"--decoder: must be one of {', '.join(DECODER_LAYOUTS)} (got {decoder})")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: must be one of {', '.join(PRECISIONS)} (got {precision})")
    if precision == "fp16" and "openvino" in backends:
        raise ConfigError("--precision fp16 is for GPU backends (onnxruntime, tensorrt); export OpenVINO bundles in fp32")
    if "tensorrt" in backends:
        from tiercel.export.tensorrt import check_available

        check_available()  # fail before minutes of tracing
        if precision != "fp16":
            print("warning: --backend tensorrt builds engines at the graphs' precision, here fp32; "
                  "add --precision fp16 for fp16 engines", file=sys.stderr)
    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    provenance = provenance or {"source": "<in-memory model>", "source_sha256": {"state_dict": state_hash(model)}}
    layers = model.tiercel_shape.decoder_layers
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite, marker=MANIFEST) as tmp:
        sources = tmp / ".openvino-sources" if "openvino" in backends else None  # graphs before onnxruntime-only rewrites
        onnx_files = export_onnx(model.eval(), tmp, decoder=decoder, fp16=precision == "fp16", openvino_sources=sources)
        graphs = [_graph_entry(tmp, n, "onnxruntime", _with_data(f), layers, precision) for n, f in onnx_files.items()]
        if "openvino" in backends:
            from tiercel.export.openvino import convert_to_ir

            with track("openvino", len(onnx_files), "graphs") as bar:
                for name, file in onnx_files.items():
                    source = sources / file.name if (sources / file.name).is_file() else file
                    graphs.append(_graph_entry(tmp, name, "openvino", convert_to_ir(source, tmp / "openvino"), layers))
                    bar.advance(1, note=name)
            shutil.rmtree(sources, ignore_errors=True)
        tokenizer.save(tmp)
        manifest = manifest_for(model, tokenizer, tmp, graphs, decoder, mean, std, provenance)
        write_manifest(tmp, manifest)
        if parity:
            from tiercel.export.parity import check_bundle

            manifest.parity = check_bundle(model, tokenizer, tmp, [b for b in backends if b != "tensorrt"],
                                              precision=precision)
            write_manifest(tmp, manifest)
        if "tensorrt" in backends:  # on this GPU, checked against the graphs just written
            from tiercel.export.tensorrt import add_engines

            add_engines(tmp, max_batch=max_batch, parity=parity)
    return out


def _with_data(file: Path) -> list[Path]:
    data = file.parent / f"{file.name}.data"
    return [file, data] if data.is_file() else [file]


def export_checkpoint(checkpoint: str | Path, out: str | Path, backends=("onnxruntime",), decoder: str = "split",
                      overwrite: bool = False, parity: bool = True, precision: str = "fp32",
                      max_batch: int | None = None) -> Path:
    """Load a checkpoint directory (native or original layout) and export it to a bundle."""
    require("torch", "train", "exporting a checkpoint")
    from tiercel.models.checkpoint import load_checkpoint, weight_files
    from tiercel.models.writer import provenance_of

    check_distinct(out, "", ("the checkpoint being exported", checkpoint), whole=True)
    check_new_output(out, overwrite, MANIFEST)  # before the weights load, not after
    ckpt = load_checkpoint(checkpoint)
    provenance = provenance_of(ckpt.path, weight_files(ckpt.path), ckpt.layout)
    return export_model(ckpt.model, ckpt.tokenizer, out, backends=backends, decoder=decoder, mean=ckpt.mean, std=ckpt.std,
                        provenance=provenance, overwrite=overwrite, parity=parity, precision=precision,
                        max_batch=max_batch)
