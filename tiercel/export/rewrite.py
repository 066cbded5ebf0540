"""Graph rewrites applied to the traced decoder graphs before they are saved.

key_major_scores: attention scores as (K @ Q^T)^T instead of Q @ K^T.

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
"""

from __future__ import annotations

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
    kept = []
    for n in nodes:
        if not (n.op_type == "Transpose" and n.output[0] in dropped):
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            kept.append(copy)
    del graph.node[:]
    graph.node.extend(kept)
    return count


def _perm(node) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
