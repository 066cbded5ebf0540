"""Trace the graphs of graphs.py to ONNX files with the public Florence-2 names and dynamic axes.

The legacy TorchScript exporter (`dynamo=False`) is used: it traces a Florence-2 model in seconds where the
dynamo exporter needs minutes, and the parity check (parity.py) verifies what it produced. DaViT's reshapes
freeze the image size at trace time, so the vision graph has only the batch axis dynamic; the text graphs are
dynamic in batch and sequence. The decoder graphs compute attention scores key-major and reshape to constant
targets (rewrite.py). Files whose weights exceed 2 GB go to external data beside the graph.

Knows nothing about manifests or other backends (bundle.py, openvino.py, tensorrt.py).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

from tiercel.errors import require
from tiercel.export import graphs
from tiercel.export.graphs import DECODER_FIRST, DECODER_MERGED, DECODER_PAST, EMBED, ENCODER, VISION, kv_names
from tiercel.export.rewrite import (
    channel_split_transposes,
    constant_reshapes,
    depthwise_channels_last,
    key_major_scores,
)
from tiercel.progress import track

OPSET = 17
_TWO_GB = 2**31 - 2**24  # protobuf's hard limit, less room for the graph itself


def graph_io(name: str, layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of graph `name` in the public Florence-2 layout."""
    past, present = kv_names("past_key_values", layers), kv_names("present", layers)
    return {
        VISION: (["pixel_values"], ["image_features"]),
        EMBED: (["input_ids"], ["inputs_embeds"]),
        ENCODER: (["inputs_embeds", "attention_mask"], ["last_hidden_state"]),
        DECODER_FIRST: (["inputs_embeds", "encoder_attention_mask", "encoder_hidden_states"], ["logits", *present]),
        DECODER_PAST: (["inputs_embeds", "encoder_attention_mask", *past], ["logits", *kv_names("present", layers, ("decoder",))]),
        DECODER_MERGED: (["inputs_embeds", "encoder_attention_mask", "encoder_hidden_states", *past, "use_cache_branch"], ["logits", *present]),
    }[name]


def _dynamic_axes(names: list[str]) -> dict:
    axes = {}
    for n in names:
        if n in ("pixel_values", "image_features"):
            axes[n] = {0: "batch"}
        elif n in ("input_ids", "attention_mask", "inputs_embeds", "last_hidden_state", "logits"):
            axes[n] = {0: "batch", 1: "sequence"}
        elif n in ("encoder_attention_mask", "encoder_hidden_states"):  # per item: one per `beams` rows
            axes[n] = {0: "items", 1: "encoder_sequence"}
        elif ".encoder." in n:
            axes[n] = {0: "items", 2: "encoder_sequence"}
        elif n.startswith("past_key_values"):
            axes[n] = {0: "batch", 2: "past_sequence"}
        elif n.startswith("present"):
            axes[n] = {0: "batch", 2: "total_sequence"}
    return axes


def sample_inputs(model, batch: int = 2, prompt: int = 7, past: int = 3, seed: int = 0, beams: int = 2) -> dict:
    """Random tensors of every graph's inputs (a few padded positions included), keyed by graph name. The
    decoders get `batch` items of `beams` rows each: encoder inputs and encoder KV per item, the rest per row."""
    torch = require("torch", "train", "exporting")
    gen = torch.Generator().manual_seed(seed)
    shape = model.tiercel_shape
    d, heads, layers = shape.d_model, shape.attention_heads, shape.decoder_layers
    seq, rows = shape.image_tokens + prompt, batch * beams
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[-1, -2:] = 0
    hidden = torch.randn(batch, seq, d, generator=gen)
    kv = lambda b, n: torch.randn(b, heads, n, d // heads, generator=gen)  # noqa: E731
    past_kv = [kv(rows, past) if ".decoder." in n else kv(batch, seq) for n in kv_names("past_key_values", layers)]
    return {
        VISION: (torch.randn(batch, 3, shape.image_size, shape.image_size, generator=gen),),
        EMBED: (torch.randint(0, shape.vocab_size, (batch, seq), generator=gen),),
        ENCODER: (hidden, mask),
        DECODER_FIRST: (torch.randn(rows, 1, d, generator=gen), mask, hidden),
        DECODER_PAST: (torch.randn(rows, 1, d, generator=gen), mask, *past_kv),
    }


def modules(model) -> dict:
    return {
        VISION: graphs.VisionEncoder(model),
        EMBED: graphs.EmbedTokens(model),
        ENCODER: graphs.TextEncoder(model),
        DECODER_FIRST: graphs.DecoderStep(model, with_past=False),
        DECODER_PAST: graphs.DecoderStep(model, with_past=True),
    }


def export_onnx(model, out_dir: str | Path, decoder: str = "merged", opset: int = OPSET, fp16: bool = False,
                openvino_sources: Path | None = None) -> dict[str, Path]:
    """Write the graphs of `model` into `out_dir`. Returns {graph name: file}.

    Args:
        decoder: "merged" (one decoder_model_merged.onnx with a use_cache_branch If) or "split"
            (decoder_model.onnx for the first step, decoder_with_past_model.onnx for the rest).
        fp16: convert every graph to fp16 (fp16.py) before the decoders are merged: onnxruntime's
            converter does not rewire values an If branch reads from the outer graph.
        openvino_sources: a folder to save, before the rewrites that only onnxruntime gains from
            (depthwise_channels_last: OpenVINO's vision call was 8% slower with it), the graphs they change, for
            the OpenVINO IR to be converted from.
    """
    require("torch", "train", "exporting to ONNX")
    require("onnx", "onnx", "exporting to ONNX")
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (got {opset})")
    out_dir = Path(out_dir)
    layers = model.tiercel_shape.decoder_layers
    if decoder not in ("merged", "split"):
        raise ValueError(f"decoder must be 'merged' or 'split' (got {decoder!r})")
    inputs, protos, mods = sample_inputs(model), {}, modules(model)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".trace-") as scratch, track("export", len(mods), "graphs") as bar:
        for name, module in mods.items():
            protos[name] = trace_graph(module, inputs[name], name, layers, Path(scratch), opset)
            if name in (DECODER_FIRST, DECODER_PAST):  # one query token against a long cache: see rewrite.py
                key_major_scores(protos[name])
                constant_reshapes(protos[name])
            if name == VISION:  # the channel attention's rank-5 split: a slow Transpose in both backends (rewrite.py)
                channel_split_transposes(protos[name])
                if openvino_sources is not None:
                    openvino_sources.mkdir(parents=True, exist_ok=True)
                    source = type(protos[name])()
                    source.CopyFrom(protos[name])  # saving with external data rewrites the proto it is given
                    save_onnx(source, openvino_sources / f"{name}.onnx")
                depthwise_channels_last(protos[name])  # onnxruntime's NCHWc convs take the transposes (rewrite.py)
            bar.advance(1, note=name)
    if fp16:
        from tiercel.export.fp16 import convert_proto

        protos = {name: convert_proto(proto) for name, proto in protos.items()}
    if decoder == "merged":
        from tiercel.export.merge import merge_decoders

        protos[DECODER_MERGED] = merge_decoders(protos.pop(DECODER_FIRST), protos.pop(DECODER_PAST), layers)
    return {name: save_onnx(proto, out_dir / f"{name}.onnx")[0] for name, proto in protos.items()}


def trace_graph(module, example: tuple, name: str, layers: int, scratch: Path, opset: int = OPSET):
    """Trace one graph module (see `modules`) on `example` inputs into an ONNX proto with the public names and
    dynamic axes; `scratch` holds the file while it is traced (in its own folder: big weights spill beside it)."""
    torch = require("torch", "train", "exporting to ONNX")
    in_names, out_names = graph_io(name, layers)
    traced = scratch / name / f"{name}.onnx"
    traced.parent.mkdir(parents=True)
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(traced), input_names=in_names, output_names=out_names,
                          dynamic_axes=_dynamic_axes(in_names + out_names), opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    return load_onnx(traced)


def load_onnx(file: Path):
    onnx = require("onnx", "onnx", "reading ONNX graphs")
    return onnx.load(str(file), load_external_data=True)


def save_onnx(proto, file: Path) -> list[Path]:
    """Save `proto` at `file`, moving weights to `<file>.data` when the graph would exceed 2 GB."""
    onnx = require("onnx", "onnx", "writing ONNX graphs")
    file = Path(file)
    big = sum(t.ByteSize() for t in proto.graph.initializer) > _TWO_GB
    for stale in file.parent.glob(f"{file.name}.data"):
        stale.unlink()
    onnx.save_model(proto, str(file), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=f"{file.name}.data", size_threshold=1024)
    return [file] + ([file.parent / f"{file.name}.data"] if big else [])
