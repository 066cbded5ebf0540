"""Merge the first-step and with-past decoders into `decoder_model_merged`: one If on `use_cache_branch`.

The two traced graphs hold the same weights under different names (the exporter names folded tensors
`onnx::MatMul_N`), so weights are matched by content and stored once in the outer graph, where both
branches read them. Each branch's intermediate values get a prefix so the model stays in SSA form across
scopes. The with-past branch passes the cross-attention KV through (Identity), so both branches return
logits and every present.* tensor, in the same order.

Knows nothing about torch; works on onnx ModelProtos.
"""

from __future__ import annotations

import hashlib

from tiercel.errors import require
from tiercel.export.graphs import kv_names


def _content_key(tensor) -> tuple:
    from onnx import numpy_helper

    array = numpy_helper.to_array(tensor)
    return tensor.data_type, tuple(tensor.dims), hashlib.sha1(array.tobytes()).hexdigest()


def _branch(graph, prefix: str, rename_weights: dict, extra_outputs=()):
    """Turn `graph` into an If branch: no inputs, shared weights outside, intermediate names prefixed."""
    onnx = require("onnx", "onnx", "merging decoders")
    local = {o for node in graph.node for o in node.output}

    def name(n: str) -> str:
        if n in rename_weights:
            return rename_weights[n]
        return f"{prefix}{n}" if n in local else n

    nodes = []
    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = f"{prefix}{node.name}"
        new.input[:] = [name(i) if i else i for i in node.input]
        new.output[:] = [name(o) for o in node.output]
        nodes.append(new)
    outputs = []
    for out in graph.output:
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(out)
        vi.name = name(out.name)
        outputs.append(vi)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in graph.input}  # fp32, or fp16 after --precision fp16
    for src, dst in extra_outputs:  # with-past branch: pass the cross-attention KV through
        nodes.append(onnx.helper.make_node("Identity", [src], [f"{prefix}{dst}"], name=f"{prefix}Identity_{dst}"))
        outputs.append(onnx.helper.make_tensor_value_info(f"{prefix}{dst}", types.get(src, onnx.TensorProto.FLOAT), None))
    return onnx.helper.make_graph(nodes, f"{prefix.strip('/')}", inputs=[], outputs=outputs)


def _collect_weights(graph, weights: dict, by_content: dict) -> dict:
    """Move `graph`'s initializers into `weights` (deduplicated by content); returns old name -> shared name."""
    rename = {}
    for init in graph.initializer:
        key, original = _content_key(init), init.name
        if key not in by_content:
            shared = original if original not in weights else f"{original}_{len(weights)}"
            init.name = shared
            weights[shared] = init
            by_content[key] = shared
        rename[original] = by_content[key]
    return rename


def merge_decoders(first, with_past, layers: int):
    """decoder_model + decoder_with_past_model ModelProtos -> decoder_model_merged ModelProto."""
    onnx = require("onnx", "onnx", "merging decoders")
    weights, by_content = {}, {}
    rename_first = _collect_weights(first.graph, weights, by_content)
    rename_past = _collect_weights(with_past.graph, weights, by_content)
    inputs = {vi.name: vi for vi in first.graph.input}
    inputs.update({vi.name: vi for vi in with_past.graph.input})
    passthrough = [(f"past_key_values.{i}.encoder.{kv}", f"present.{i}.encoder.{kv}") for i in range(layers) for kv in ("key", "value")]
    then_graph = _branch(with_past.graph, "with_past/", rename_past, passthrough)
    else_graph = _branch(first.graph, "first/", rename_first)
    order = ["logits", *kv_names("present", layers)]
    for g, prefix in ((then_graph, "with_past/"), (else_graph, "first/")):  # same output order in both branches
        by_name = {o.name[len(prefix):] if o.name.startswith(prefix) else o.name: o for o in g.output}
        outs = [by_name[n] for n in order]
        del g.output[:]
        g.output.extend(outs)
    cond = onnx.helper.make_tensor_value_info("use_cache_branch", onnx.TensorProto.BOOL, [1])
    graph_inputs = [inputs[n] for n in ("inputs_embeds", "encoder_attention_mask", "encoder_hidden_states")]
    graph_inputs += [inputs[n] for n in kv_names("past_key_values", layers)] + [cond]
    first_out = {o.name: o for o in first.graph.output}
    node = onnx.helper.make_node("If", ["use_cache_branch"], order, name="use_cache_branch_If",
                                 then_branch=then_graph, else_branch=else_graph)
    graph = onnx.helper.make_graph([node], "decoder_model_merged", graph_inputs, [first_out[n] for n in order],
                                   initializer=list(weights.values()))
    merged = onnx.helper.make_model(graph, opset_imports=list(first.opset_import), producer_name="tiercel")
    merged.ir_version = first.ir_version
    onnx.checker.check_model(merged, full_check=False)
    return merged
