"""Graph rewrites applied to the traced graphs before they are saved.

key_major_scores (decoders): attention scores as (K @ Q^T)^T instead of Q @ K^T.
constant_reshapes (decoders): Reshape targets assembled from Shape/Gather/Concat at run time become constants.
channel_split_transposes (vision encoder): the channel attention's rank-5 Transpose as a rank-3 move.

The exporter writes each attention's scores as `MatMul(Q, Transpose(K, perm=[0, 1, 3, 2]))` (in the first
step, where K is computed in the graph, the head split and the transpose are one Transpose, [0, 2, 3, 1]). In the decoder,
Q is one token and K is the whole cache (577+ encoder tokens for cross-attention), so that is a batch of
matrix-vector products whose matrix is the *transposed* K. onnxruntime fuses the Transpose into the MatMul
(FusedMatMul, transB) and then packs the transposed K on every call, and OpenVINO materialises the transpose:
either way every decode step rewrites the encoder KV cache before reading it. `MatMul(K, Transpose(Q))`
reads K as it is stored; a second Transpose puts the [B, H, T, Lq] result back as [B, H, Lq, T], which for
one query token moves no data. The two forms are the same sums in a different order (fp32 differences of
~1e-6 on florence2-base; export's parity check still compares every output with PyTorch).

Measured (benchmarks/decoder_scores_cpu.py -> benchmarks/results/decoder_scores_cpu.json; florence2-base
decoder_with_past, 597 encoder tokens, idle 2-core EPYC): decode step onnxruntime 13.75 -> 12.60 ms at batch 1
(1.09x) and 39.7 -> 34.7 ms at the 14 rows `run_all` decodes (1.14x); OpenVINO 19.5 ms either way at batch 1,
110.1 -> 92.6 ms at batch 14 (1.19x).

Written here because onnxruntime's transformer optimizer has no pass for it (its attention fusions did not
match these graphs) and the rewrite is a few lines of onnx.helper.

constant_reshapes: the traced `x.view(b, t, heads, d // heads)` and `out.reshape(b, t, h * hd)` compute their
targets from the tensor's own shape (Shape -> Gather -> Unsqueeze -> Concat, ~9 nodes per reshape, 36 reshapes in
a 6-layer decoder step). Where a target dimension is provably the data's own dimension at that position (read
from the same tensor, or through a Transpose whose perm is followed) it becomes 0 (ONNX: copy the input
dimension), constants stay, and one remaining computed dimension becomes -1; the shape chains then have no
readers and are dropped. The outputs are bit-identical. In a decode step each of those nodes costs a few
microseconds of dispatch whatever the precision, which the quantised decoders feel most
(benchmarks/results/decode_profile_cpu.md).

channel_split_transposes: DaViT's channel attention splits q, k, v with `reshape(B, N, 3, h, d).permute(2, 0, 3, 4,
1)`. onnxruntime's optimizer splits that Transpose into one per q, k, v ([1, N, 1, h, d], a unit axis in the
way), which its Transpose kernel then runs on a generic path: 7.9 ms each on [1, 2304, 1, 16, 32], 285 ms of the
int8 Florence-2-base vision call. OpenVINO's kernel for the rank-5 perm is as slow. Written as a reshape to
[B, N, 3hd], a [0, 2, 1] move (a fast path in both backends; tiercel/export/openvino.py makes it a reorder in
OpenVINO), a reshape to [B, 3, h, d, N] and a block transpose (no data moves at B = 1), the values and their
order are the same: outputs bit-identical. Measured in benchmarks/results/vision_ops_cpu.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tiercel.errors import require

_SWAP_LAST = [0, 1, 3, 2]
_MARK = "/KeyQueryT"


def key_major_scores(proto) -> int:
    """Rewrite in place every MatMul of `proto` whose second operand is a 4-d Transpose contracting over its
    source's innermost axis (`MatMul(Q, Transpose(K, [0, 1, 3, 2]))`, [0, 2, 3, 1]); returns how many."""
    onnx = require("onnx", "onnx", "rewriting ONNX graphs")
    helper = onnx.helper
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    taken = {out for node in graph.node for out in node.output} | {i.name for i in graph.input}
    nodes, dropped, count = [], set(), 0
    for node in graph.node:
        # the MatMul this rewrite writes has the same shape (K @ Transpose(Q)): its name marks it as done
        mine = node.name.endswith(_MARK)
        transpose = producer.get(node.input[1]) if node.op_type == "MatMul" and not mine else None
        perm = _perm(transpose) if transpose is not None and transpose.op_type == "Transpose" else None
        if perm is None or len(perm) != 4 or perm[2] != 3:  # not K^T: the contracted axis is not X's innermost
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        q_t, scores_t, key = f"{base}/query_T", f"{base}/scores_T", f"{base}/key"
        if taken & {q_t, scores_t, key}:
            raise ValueError(f"key_major_scores: tensor name {q_t!r} already exists in the graph")
        key_perm = perm[:2] + [perm[3], perm[2]]  # K itself: the operand with its last two axes swapped back
        if key_perm == [0, 1, 2, 3]:
            key = transpose.input[0]
        else:  # e.g. the first step's K^T = Transpose(K_heads, [0, 2, 3, 1]): K = Transpose(K_heads, [0, 2, 1, 3])
            nodes.append(helper.make_node("Transpose", [transpose.input[0]], [key], name=f"{base}/Key", perm=key_perm))
        nodes += [
            helper.make_node("Transpose", [node.input[0]], [q_t], name=f"{base}/QueryT", perm=_SWAP_LAST),
            helper.make_node("MatMul", [key, q_t], [scores_t], name=f"{base}{_MARK}"),
            helper.make_node("Transpose", [scores_t], [node.output[0]], name=f"{base}/ScoresT", perm=_SWAP_LAST),
        ]
        if readers[transpose.output[0]] == 1:
            dropped.add(transpose.output[0])
        count += 1
    _set_nodes(graph, [n for n in nodes if not (n.op_type == "Transpose" and n.output[0] in dropped)])
    return count


def constant_reshapes(proto) -> int:
    """Replace in place every Reshape target of `proto` that can be written as a constant (0 = the data's own
    dimension, -1 = the one left over) and drop the nodes that computed it; returns how many."""
    numpy_helper = require("onnx", "onnx", "rewriting ONNX graphs").numpy_helper
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(a.t) for n in graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    count = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] in consts or _attr(node, "allowzero", 0):
            continue
        concat = producer.get(node.input[1])
        if concat is None or concat.op_type != "Concat":
            continue
        target = _target([_dim(x, producer, consts) for x in concat.input], _dims_of(node.input[0], producer))
        if target is None:
            continue
        name = f"{node.name or node.output[0]}/shape"
        graph.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
        node.input[1] = name
        count += 1
    if count:
        _drop_dead(graph)
    return count


def _attr(node, name: str, default=None):
    return next((a.i for a in node.attribute if a.name == name), default)


def _dim(name: str, producer: dict, consts: dict):
    """One Concat part of a reshape target: ("const", n), ("dim", tensor, axis) for Unsqueeze(Gather(Shape(tensor),
    axis)) (through Casts), or None when it is computed otherwise."""
    if name in consts:
        value = consts[name].reshape(-1)
        return ("const", int(value[0])) if value.size == 1 else None
    node = producer.get(name)
    while node is not None and node.op_type in ("Unsqueeze", "Cast"):
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Gather" or node.input[1] not in consts:
        return None
    shape = producer.get(node.input[0])
    if shape is None or shape.op_type != "Shape" or any(a.name in ("start", "end") for a in shape.attribute):
        return None
    return ("dim", shape.input[0], int(consts[node.input[1]].reshape(-1)[0]))


def _dims_of(name: str, producer: dict) -> Callable[[int], tuple[str, int]]:
    """axis k of tensor `name` -> (tensor, axis) it is known to equal, following Transposes back."""
    perms = []
    node = producer.get(name)
    while node is not None and node.op_type == "Transpose" and _perm(node) is not None:
        perms.append(_perm(node))
        name = node.input[0]
        node = producer.get(name)

    def source(k: int) -> tuple[str, int]:
        for perm in perms:
            k = perm[k] if k < len(perm) else -1
        return name, k

    return source


def _target(parts: list, source) -> list[int] | None:
    """The constant target for `parts`, or None when more than one dimension stays unknown."""
    target, unknown = [], 0
    for k, part in enumerate(parts):
        if part is None:
            target.append(-1)
            unknown += 1
        elif part[0] == "const":
            if part[1] in (0, -1):  # 0 and -1 already have their special meaning: leave such a target alone
                return None
            target.append(part[1])
        else:
            tensor, axis = part[1], part[2]
            negative = axis < 0  # Gather(Shape(x), -1): only matched when counted from the front
            if not negative and source(k) == (tensor, axis):
                target.append(0)
            else:
                target.append(-1)
                unknown += 1
    return target if unknown <= 1 else None


def _drop_dead(graph) -> None:
    """Remove nodes none of whose outputs is read (by a node or as a graph output), repeatedly."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
            for a in node.attribute:  # If/Loop branches read outer values by name
                if a.HasField("g"):
                    needed.update(_subgraph_inputs(a.g))
    kept.reverse()
    used = {i for node in kept for i in node.input}
    live = [i for i in graph.initializer if i.name in used or i.name in needed]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(live)


def _subgraph_inputs(g) -> set[str]:
    names = set()
    for node in g.node:
        names.update(node.input)
        for a in node.attribute:
            if a.HasField("g"):
                names.update(_subgraph_inputs(a.g))
    return names


def _set_nodes(graph, nodes) -> None:
    """Make `nodes` (some of them graph.node's own entries) the graph's node list, copying each first: clearing
    graph.node would otherwise clear the entries still to be added."""
    onnx = require("onnx", "onnx", "rewriting ONNX graphs")
    kept = []
    for n in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        kept.append(copy)
    del graph.node[:]
    graph.node.extend(kept)


def _perm(node) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


_SPLIT_PERM = [2, 0, 3, 4, 1]


def channel_split_transposes(proto) -> int:
    """Rewrite in place every rank-5 `Transpose(x, perm=[2, 0, 3, 4, 1])` of `proto` ([B, N, a, b, c] ->
    [a, B, b, c, N], DaViT's channel-attention split of q, k, v) as Reshape [B, N, a*b*c] -> Transpose [0, 2, 1] ->
    Reshape [B, a, b, c, N] -> Transpose [1, 0, 2, 3, 4]; returns how many. The same values in the same order.
    a, b, c are read from x's shape at run time (the traced reshape before it computes them), a few tiny nodes."""
    onnx = require("onnx", "onnx", "rewriting ONNX graphs")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    graph = proto.graph
    consts = {"flat": [0, 0, -1], "zero": [0], "minus_one": [-1], "from": [2], "to": [5], "axis": [0]}
    names = {k: f"/channel_split/{k}" for k in consts}
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "Transpose" or _perm(node) != _SPLIT_PERM:
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        t = {k: f"{base}/{k}" for k in ("flat", "moved", "shape", "inner", "target", "split")}
        nodes += [helper.make_node("Reshape", [node.input[0], names["flat"]], [t["flat"]], name=f"{base}/Flatten"),
                  helper.make_node("Transpose", [t["flat"]], [t["moved"]], name=f"{base}/Move", perm=[0, 2, 1]),
                  helper.make_node("Shape", [node.input[0]], [t["shape"]], name=f"{base}/Shape"),
                  helper.make_node("Slice", [t["shape"], names["from"], names["to"], names["axis"]], [t["inner"]],
                                   name=f"{base}/Inner"),
                  helper.make_node("Concat", [names["zero"], t["inner"], names["minus_one"]], [t["target"]],
                                   name=f"{base}/Target", axis=0),
                  helper.make_node("Reshape", [t["moved"], t["target"]], [t["split"]], name=f"{base}/Unflatten"),
                  helper.make_node("Transpose", [t["split"]], [node.output[0]], name=f"{base}/Blocks", perm=[1, 0, 2, 3, 4])]
        count += 1
    if count:
        have = {i.name for i in graph.initializer}
        graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), names[k])
                                 for k, v in consts.items() if names[k] not in have)
        _set_nodes(graph, nodes)
    return count


_NHWC, _NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def depthwise_channels_last(proto) -> int:
    """Rewrite in place DaViT's convolutional position encoding, returns how many: from tokens x [B, N, C],

        Transpose [0, 2, 1] -> Reshape [B, C, H, W] = r;  y = Transpose(Reshape(Conv(r) + r, [B, C, N]), [0, 2, 1])

    becomes y = x + Reshape(Transpose(Conv(Transpose(Reshape(x, [B, H, W, C]), [0, 3, 1, 2])), [0, 2, 3, 1]),
    [B, N, C]): the residual added in token order (the same sums: outputs bit-identical) and the conv between an
    NHWC -> NCHW and an NCHW -> NHWC transpose, which onnxruntime folds into its NCHWc conv's input and output
    reorders (channels_last) instead of moving the data twice. Readers of r's or the sum's shape get the same
    values from x's. Instances whose tensors have other readers are left alone."""
    onnx = require("onnx", "onnx", "rewriting ONNX graphs")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    names = {"nhwc": "/channels_last/nhwc", "nchw": "/channels_last/nchw"}
    replaced: dict[int, list] = {}  # id(old node) -> the nodes that take its place (empty: removed)
    count = 0

    def shape_reader(node) -> bool:
        return node.op_type == "Shape" and not any(a.name in ("start", "end") for a in node.attribute)

    for conv in list(graph.node):
        if conv.op_type != "Conv" or id(conv) in replaced:
            continue
        r = producer.get(conv.input[0])
        t1 = producer.get(r.input[0]) if r is not None and r.op_type == "Reshape" else None
        if t1 is None or t1.op_type != "Transpose" or _perm(t1) != [0, 2, 1] or readers[t1.output[0]] != [r]:
            continue
        conv_readers = readers.get(conv.output[0], [])
        add = conv_readers[0] if len(conv_readers) == 1 else None
        if add is None or add.op_type != "Add" or sorted(add.input) != sorted([conv.output[0], r.output[0]]):
            continue
        if any(n is not conv and n is not add and not shape_reader(n) for n in readers[r.output[0]]):
            continue
        flat = [n for n in readers.get(add.output[0], []) if not shape_reader(n)]
        if len(flat) != 1 or flat[0].op_type != "Reshape" or len(readers.get(flat[0].output[0], [])) != 1:
            continue
        t2 = readers[flat[0].output[0]][0]
        if t2.op_type != "Transpose" or _perm(t2) != [0, 2, 1] or {r.output[0], add.output[0], flat[0].output[0]} & outputs:
            continue
        if not _no_copied_dims(r.input[1], producer, consts):
            continue
        x, base = t1.input[0], conv.name or conv.output[0]
        t = {k: f"{base}/cl_{k}" for k in ("hwc", "xh", "xn", "y", "yt", "xshape", "yf", "hshape")}
        shapes = [n for n in (*readers[r.output[0]], *readers[add.output[0]]) if shape_reader(n)]
        new = [helper.make_node("Gather", [r.input[1], names["nhwc"]], [t["hwc"]], name=f"{base}/cl_target", axis=0),
               helper.make_node("Reshape", [x, t["hwc"]], [t["xh"]], name=f"{base}/cl_unflatten"),
               helper.make_node("Transpose", [t["xh"]], [t["xn"]], name=f"{base}/cl_to_nchw", perm=_NCHW)]
        moved = onnx.NodeProto()
        moved.CopyFrom(conv)
        moved.input[0] = t["xn"]
        new += [moved,
                helper.make_node("Transpose", [conv.output[0]], [t["yt"]], name=f"{base}/cl_to_nhwc", perm=_NHWC),
                helper.make_node("Shape", [x], [t["xshape"]], name=f"{base}/cl_tokens"),
                helper.make_node("Reshape", [t["yt"], t["xshape"]], [t["yf"]], name=f"{base}/cl_flatten"),
                helper.make_node("Add", [t["yf"], x] if add.input[0] == conv.output[0] else [x, t["yf"]],
                                 [t2.output[0]], name=f"{base}/cl_residual")]
        if shapes:
            new.append(helper.make_node("Shape", [t["xh"]], [t["hshape"]], name=f"{base}/cl_shape"))
            new += [helper.make_node("Gather", [t["hshape"], names["nchw"]], [s.output[0]], name=f"{s.name}/cl", axis=0)
                    for s in shapes]
        replaced[id(conv)] = new
        for old in (add, flat[0], t2, *shapes):
            replaced[id(old)] = []
        count += 1
    if count:
        have = {i.name for i in graph.initializer}
        graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), names[k])
                                 for k, v in (("nhwc", _NHWC), ("nchw", _NCHW)) if names[k] not in have)
        _set_nodes(graph, _toposort([m for n in graph.node for m in replaced.get(id(n), [n])], graph))
        _drop_dead(graph)
    return count


def _no_copied_dims(target: str, producer: dict, consts: dict) -> bool:
    """Whether a 4-d reshape target is known to hold no 0 (copy the input's dimension) at axes 1-3: moved to other
    axes, such a 0 would copy the wrong dimension. Constants are read; of a Concat, its constant parts are (any 0
    but a leading scalar one fails), its computed parts are dimensions read from shapes, never 0."""
    if target in consts:
        value = consts[target].reshape(-1)
        return value.size == 4 and not (value[1:] == 0).any()
    concat = producer.get(target)
    if concat is None or concat.op_type != "Concat":
        return False
    parts = [consts[p].reshape(-1) if p in consts else None for p in concat.input]
    if parts and parts[0] is not None and parts[0].size == 1:  # a 0 for the batch stays at axis 0
        parts = parts[1:]
    return not any(p is not None and (p == 0).any() for p in parts)


def _toposort(nodes: list, graph) -> list:
    """`nodes` in an order where every node comes after the producers of its inputs, otherwise as given."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    made = {out: k for k, node in enumerate(nodes) for out in node.output}
    done, order, visiting = set(), [], set()

    def visit(k: int) -> None:
        if k in done:
            return
        stack = [(k, iter(nodes[k].input))]
        visiting.add(k)
        while stack:
            j, inputs = stack[-1]
            for name in inputs:
                p = made.get(name)
                if name in ready or p is None or p in done:
                    continue
                if p in visiting:
                    raise ValueError(f"rewrite made a cycle through {name}")
                visiting.add(p)
                stack.append((p, iter(nodes[p].input)))
                break
            else:
                stack.pop()
                visiting.discard(j)
                done.add(j)
                order.append(nodes[j])

    for k in range(len(nodes)):
        visit(k)
    return order
