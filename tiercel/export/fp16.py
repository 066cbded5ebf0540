"""fp32 ONNX graphs -> fp16 ONNX graphs for GPUs (`tiercel export --precision fp16`).

onnxruntime's own converter (onnxruntime.transformers.float16, shipped with onnxruntime) rewrites weights and
activations to fp16 and inserts casts around the ops kept in fp32: LayerNormalization, Softmax and the
reductions (FP32_OPS; fp16 LayerNorm drifts, FALCON.md) plus the converter's default block list. Graph inputs
and outputs become fp16 too (keep_io_types=False): the KV cache, the largest tensor a decode step reads
besides the weights, moves at half the bytes, and the runtime casts its float32 feeds to each input's
declared dtype (runtime/backends.py). Integer inputs (ids, masks) and use_cache_branch are untouched.

Constants beyond fp16's range are clipped to +-65504: the additive attention masks use float32's min, which
becomes -65504; scores plus that may round to -inf, which softmax (kept fp32) turns into the same zero weight.
Knows nothing about manifests (bundle.py records the precision) or parity tolerances (parity.py).
"""

from __future__ import annotations

import heapq
import warnings

from tiercel.errors import require

FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceMax")


def op_block_list() -> list[str]:
    """Op types kept in fp32: FP32_OPS plus onnxruntime's default block list (ops without fp16 kernels)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))


def convert_proto(proto):
    """A new fp16 ModelProto from an fp32 one (subgraphs of the merged decoder's If included)."""
    require("onnxruntime", "onnx", "converting graphs to fp16")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one per constant clipped to fp16's range (the mask minimum)
        out = convert_float_to_float16(proto, keep_io_types=False, op_block_list=op_block_list(),
                                       disable_shape_infer=_large(proto))
    unique_nodes(out.graph)
    sort_nodes(out.graph)
    return out


def unique_nodes(graph) -> None:
    """Drop exact duplicate nodes (and value_info entries) and rename other nodes that share a name.

    onnxruntime's converter up to 1.31 inserts one identical `<tensor>_cast_to_fp32_node` per fp32 consumer of an
    fp16 tensor, and onnxruntime 1.31 then refuses the graph ("two nodes with same node name"); 1.32's converter
    shares one Cast. Seen on an H200 with onnxruntime-gpu 1.31.1; harmless where there is nothing to drop.
    """
    infos, kept_infos = set(), []
    for info in graph.value_info:
        if info.name not in infos:
            infos.add(info.name)
            kept_infos.append(info)
    if len(kept_infos) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(kept_infos)
    seen, keep = {}, []
    for node in graph.node:
        key = node.SerializeToString()
        if node.name in seen and key in seen[node.name]:
            continue
        if node.name in seen and node.name:  # empty names may repeat in ONNX
            base, n = node.name, len(seen[node.name])
            seen[base].add(key)
            node.name = f"{base}_{n}"
        seen.setdefault(node.name, set()).add(key)
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def sort_nodes(graph) -> None:
    """Order `graph`'s nodes topologically, keeping the original order where it is free to.

    The converter appends its Cast nodes at the end; onnxruntime sorts a main graph itself, but the checker
    (and merge.py, which makes these graphs If branches) requires sorted nodes.
    """
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    needs = [{producer[x] for x in node.input if x in producer} for node in nodes]
    users = [[] for _ in nodes]
    for i, deps in enumerate(needs):
        for j in deps:
            users[j].append(i)
    waiting = [len(d) for d in needs]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError(f"graph {graph.name} has a cycle; cannot order its nodes")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def _large(proto) -> bool:
    # onnx.shape_inference refuses protos over 2 GB (florence2-large's fp32 graphs can be); the converter
    # then works from the graph's declared types, which the exporter writes for every input and output
    return proto.ByteSize() > 2**31 - 2**24
