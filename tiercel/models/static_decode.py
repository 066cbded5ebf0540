"""A GPU decode path for PyTorch checkpoints: static KV cache, one CUDA graph per decoder step.

    p = GraphedPredictor(model.half().cuda(), tokenizer)      # or GraphedPredictor.from_checkpoint(path, "cuda")
    p.run(image, task="IMG_CAP")                              # the Model API: run / run_all / generate_ids

Why this exists (issue 9): on an H200 the decoder of Florence-2-base costs 4.2 ms per token in transformers
eager, and onnxruntime's CUDA provider with I/O binding took 0.15 s against eager's 0.22 s end to end and no
less on 14 tasks (benchmarks/results/gpu_nvidia_h200_2026-11-27), while the decoder's bandwidth bound is under
0.1 ms/token (issue 9): a decode step is many small kernels (about 140 by a count of its operations, an
estimate), and launching them is the cost. A CUDA graph launches the whole step at once: measured on H200s,
0.48-0.52 ms/token for Florence-2-base (1.00-1.02 for -large) against eager's 3.3-7.3 (6.0-7.1) in the same runs,
tokens identical (benchmarks/results/gpu_nvidia_h200.json and the runs beside it). Inside a graph every kernel
still costs a few microseconds, so the step launches fewer: q/k/v of the self-attention as one matmul (fused_qkv;
-10% / -17% per token for base / large, measured against three matmuls) and additive masks made once per step
instead of a boolean mask converted in every attention call. Graphs need fixed shapes and addresses, so the
decoder here is written over static buffers:

- self-attention K/V: [layers, rows, heads, T, head_dim], T = max_new_tokens rounded up to a multiple of 64;
  step p writes position p (index_copy_ at a device-side position) and attends over positions <= p (a 0/-inf
  mask built on the device from that position, so nothing in the step reads a host value);
- cross-attention K/V: computed once per call from the encoder output, padded to a multiple of 64 positions
  (masked) so that prompts of different lengths reuse one graph;
- the step's token ids and position are device tensors copied in before each replay.

Graphs are kept per (rows, encoder length, T) and reused across calls: capture costs a few warm-up steps once.
Beam search reorders the written self-attention K/V in place (index_select, outside the graph); rows never leave
the batch (no keep_rows), as in transformers' `generate`. Decoding itself (logits processors, greedy, beams) is
the runtime's generate.py, so the tokens follow the same rules as every other backend; the layers are the
transformers BART decoder layer's operations in its order (post-LayerNorm), with scaled_dot_product_attention.
On a CPU (tests) the same step runs without a graph; the graph capture is exercised on a GPU only (tests/gpu).
"""

from __future__ import annotations

import logging

import numpy as np

from tiercel.models.predict import TorchPredictor
from tiercel.runtime.generate import generate

_log = logging.getLogger(__name__)
PAD = 64  # encoder length and KV length are rounded up to this, so nearby shapes share one graph


def _round_up(n: int, to: int = PAD) -> int:
    return -(-n // to) * to


def capture(fn, warmup: int = 3):
    """(CUDA graph, its output) of `fn()` over static buffers, after warm-up calls on a side stream as
    torch.cuda.graphs asks. The warm-up calls run `fn` for real: callers restore state it writes."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = fn()
    return graph, out


def fused_qkv(model) -> list:
    """Per decoder layer, (weight [3D, D], bias [3D]) of its self-attention's q, k and v projections concatenated:
    a copy, 3 * D * D weights per layer (Florence-2-base in fp16: 21 MB, -large 75 MB)."""
    import torch

    out = []
    with torch.no_grad():
        for layer in model.model.language_model.decoder.layers:
            projections = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
            bias = None if projections[0].bias is None else torch.cat([p.bias for p in projections])
            out.append((torch.cat([p.weight for p in projections]), bias))
    return out


class StaticDecoder:
    """Static buffers and the decoder step of one shape (rows, encoder length, KV length) of one model."""

    def __init__(self, model, rows: int, enc_len: int, max_len: int, graphs: bool, qkv: list | None = None):
        """`qkv`: fused_qkv(model) to project each self-attention's q/k/v as one matmul (shared by the decoders
        of one model: the concatenated weights exist once), None for three."""
        import torch

        self.torch = torch
        self.lm = model.model.language_model.decoder
        self.lm_head = model.lm_head
        layer = self.lm.layers[0].self_attn
        self.heads, self.head_dim = layer.num_heads, layer.head_dim
        p = next(model.parameters())
        dev, dt, n_layers = p.device, p.dtype, len(self.lm.layers)
        self.rows, self.enc_len, self.max_len = rows, enc_len, max_len
        kv = (n_layers, rows, self.heads, max_len, self.head_dim)
        self.k, self.v = torch.zeros(kv, device=dev, dtype=dt), torch.zeros(kv, device=dev, dtype=dt)
        cross = (n_layers, rows, self.heads, enc_len, self.head_dim)
        self.ck, self.cv = torch.zeros(cross, device=dev, dtype=dt), torch.zeros(cross, device=dev, dtype=dt)
        # additive masks (0 / -inf) in the model's dtype, made once per call (encoder) and once per step (self):
        # a boolean mask would be converted inside every layer's attention call, a kernel or two each time
        self.enc_mask = torch.zeros((rows, 1, 1, enc_len), device=dev, dtype=dt)
        self.qkv = qkv
        self.tokens = torch.zeros((rows, 1), device=dev, dtype=torch.long)
        self.pos = torch.zeros((1,), device=dev, dtype=torch.long)
        self.positions = torch.arange(max_len, device=dev)
        self.graph, self.logits, self.graph_error, self.step_index = None, None, None, 0
        self.use_graph = graphs and dev.type == "cuda"

    # ---- per call --------------------------------------------------------------------------------------
    def start(self, enc_hidden, enc_mask, stage) -> None:
        """Load one call's encoder output [rows, S <= enc_len, D] and mask [rows, S]; reset the self-attention KV.
        `stage(name)` times each step as first_token / decode_token (the runtime's profiling names)."""
        torch = self.torch
        s = enc_hidden.shape[1]
        with torch.no_grad():
            for i, layer in enumerate(self.lm.layers):
                self.ck[i, :, :, :s] = self._heads(layer.encoder_attn.k_proj(enc_hidden))
                self.cv[i, :, :, :s] = self._heads(layer.encoder_attn.v_proj(enc_hidden))
            self.ck[:, :, :, s:] = 0
            self.cv[:, :, :, s:] = 0
            self.enc_mask.fill_(float("-inf"))
            self.enc_mask[:, 0, 0, :s].masked_fill_(enc_mask.bool(), 0.0)
            # positions the last call wrote: masked from now on, but an inf there would make 0 * inf = nan
            self.k[:, :, :, : self.step_index] = 0
            self.v[:, :, :, : self.step_index] = 0
        self.step_index, self.stage = 0, stage

    def _step(self, tokens: np.ndarray):
        """Advance one position; the logits [rows, vocab] stay on the device (a graph's output buffer)."""
        with self.stage("first_token" if self.step_index == 0 else "decode_token"):
            return self._advance(tokens)

    def _advance(self, tokens: np.ndarray):
        torch = self.torch
        self.tokens.copy_(torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).view(-1, 1))
        self.pos.fill_(self.step_index)
        if self.use_graph and self.graph is None:
            self._capture()  # on failure use_graph turns False
        if self.use_graph:
            self.graph.replay()
            logits = self.logits
        else:
            with torch.no_grad():
                logits = self._forward()
        self.step_index += 1
        return logits

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Logits [rows, vocab] (float32, host) for the next token of every row."""
        return self._step(tokens).float().cpu().numpy()

    def step_argmax(self, tokens: np.ndarray) -> np.ndarray:
        """The argmax token of every row, taken on the device: greedy without logits processors reads [rows] ids
        instead of [rows, vocab] logits per step (generate.greedy)."""
        return self._step(tokens).argmax(-1).cpu().numpy()

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: row i continues beam rows[i] (self-attention KV only; cross KV is equal across beams).
        Only the positions written so far move: the rest is masked and written before it is read."""
        idx = self.torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.k.device)
        n = self.step_index
        with self.torch.no_grad():
            self.k[:, :, :, :n] = self.k[:, :, :, :n].index_select(1, idx)
            self.v[:, :, :, :n] = self.v[:, :, :, :n].index_select(1, idx)

    # ---- the step ----------------------------------------------------------------------------------------
    def _heads(self, x):
        """[rows, n, d_model] -> [rows, heads, n, head_dim]."""
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _attend(self, att, q, k, v, mask):
        torch = self.torch
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=att.scaling)
        return att.out_proj(out.transpose(1, 2).reshape(self.rows, 1, -1))

    def _self_qkv(self, i: int, att, x):
        """q, k, v of the step's self-attention, [rows, heads, 1, head_dim] each: three projections, or one
        matmul over their concatenated weights (fuse_qkv)."""
        if self.qkv is None:
            return self._heads(att.q_proj(x)), self._heads(att.k_proj(x)), self._heads(att.v_proj(x))
        weight, bias = self.qkv[i]
        return [self._heads(t) for t in self.torch.nn.functional.linear(x, weight, bias).chunk(3, dim=-1)]

    def _forward(self):
        """One decoder step over the static buffers: reads tokens/pos, writes K/V at pos, returns logits [rows, V]."""
        torch, lm = self.torch, self.lm
        x = lm.embed_tokens(self.tokens) + lm.embed_positions.weight[self.pos + lm.embed_positions.offset]
        x = lm.layernorm_embedding(x)
        self_mask = torch.zeros((), dtype=x.dtype, device=x.device).masked_fill(self.positions > self.pos, float("-inf"))
        self_mask = self_mask.view(1, 1, 1, -1)
        for i, layer in enumerate(lm.layers):
            att = layer.self_attn
            q, k, v = self._self_qkv(i, att, x)
            self.k[i].index_copy_(2, self.pos, k)
            self.v[i].index_copy_(2, self.pos, v)
            x = layer.self_attn_layer_norm(x + self._attend(att, q, self.k[i], self.v[i], self_mask))
            cross = layer.encoder_attn
            x = layer.encoder_attn_layer_norm(x + self._attend(cross, self._heads(cross.q_proj(x)), self.ck[i], self.cv[i], self.enc_mask))
            x = layer.final_layer_norm(x + layer.fc2(layer.activation_fn(layer.fc1(x))))
        return self.lm_head(x)[:, 0]

    def _capture(self) -> None:
        """Record one step as a CUDA graph; if capture fails, run without graphs from then on (error kept)."""
        k, v = self.k.clone(), self.v.clone()  # warm-up steps write K/V at pos: put back what was there
        try:
            self.graph, self.logits = capture(self._forward)
        except Exception as exc:  # noqa: BLE001 - an op that cannot be captured must not stop generation
            self.use_graph, self.graph_error = False, f"{type(exc).__name__}: {exc}"
            _log.warning("decoder step not captured as a CUDA graph (%s); running it without", self.graph_error)
        self.k.copy_(k)
        self.v.copy_(v)


class GraphedPredictor(TorchPredictor):
    """TorchPredictor whose generation runs StaticDecoder (CUDA graphs on a GPU) under the runtime's generate.py.

    Vision tower, embeddings and text encoder run as in TorchPredictor; only the decoder loop differs. Graphs
    are cached per shape on the predictor (`graphs=False` runs the same static step without them).
    """

    def __init__(self, model, tokenizer, *args, graphs: bool = True, fuse_qkv: bool = True, **kwargs):
        super().__init__(model, tokenizer, *args, **kwargs)
        self.backend, self.graphs, self._decoders, self._vision = "torch-graphs", graphs, {}, {}
        self.fuse_qkv, self._qkv = fuse_qkv, None  # self-attention q/k/v as one matmul (see fused_qkv)
        self.use_graphs = graphs and self.device.startswith("cuda")

    def graph_status(self) -> dict:
        """What runs as CUDA graphs: {"vision": {batch: True or the capture error}, "decoder": {shape: ...}}."""
        return {"vision": {b: g.get("error") or True for b, g in self._vision.items()},
                "decoder": {str(k): d.graph_error or (d.graph is not None) for k, d in self._decoders.items()}}

    def image_features(self, pixel_values):
        """The vision tower + projector; on cuda replayed as one CUDA graph per batch size. Numpy pixels give
        numpy features, a device tensor a device tensor (a clone: the graph's output buffer is reused)."""
        entry = self._vision_graph(pixel_values) if self.use_graphs else None
        if entry is None or "error" in entry:
            return super().image_features(pixel_values)
        torch = self.torch
        with self._stage("vision_encoder"), torch.no_grad():
            entry["pixels"].copy_(pixel_values if torch.is_tensor(pixel_values) else torch.from_numpy(pixel_values))
            entry["graph"].replay()
            return entry["out"].clone() if torch.is_tensor(pixel_values) else entry["out"].float().cpu().numpy()

    def _vision_graph(self, pixel_values) -> dict:
        """{"pixels", "graph", "out"} for this batch size, captured on first use; {"error": ...} if capture failed."""
        batch = pixel_values.shape[0]
        if batch not in self._vision:
            pixels = self._on_device(pixel_values).clone()
            try:
                graph, out = capture(lambda: self.model.get_image_features(pixels).pooler_output)
                self._vision[batch] = {"pixels": pixels, "graph": graph, "out": out}
            except Exception as exc:  # noqa: BLE001 - the tower then runs eagerly
                self._vision[batch] = {"error": f"{type(exc).__name__}: {exc}"}
                _log.warning("vision tower not captured as a CUDA graph (%s); running it without", self._vision[batch]["error"])
        return self._vision[batch]

    @classmethod
    def from_checkpoint(cls, path, device: str = "cuda", dtype: str = "float16", graphs: bool = True) -> GraphedPredictor:
        """Load a checkpoint directory with tiercel.models.load_checkpoint onto `device` in `dtype`."""
        from tiercel.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, dtype=dtype)
        return cls(ckpt.model.to(device), ckpt.tokenizer, ckpt.mean, ckpt.std, graphs=graphs)

    def decoder(self, rows: int, enc_len: int, max_new_tokens: int) -> StaticDecoder:
        key = (rows, _round_up(enc_len), _round_up(max_new_tokens))
        if key not in self._decoders:
            if self.fuse_qkv and self._qkv is None:
                self._qkv = fused_qkv(self.model)
            self._decoders[key] = StaticDecoder(self.model, *key, graphs=self.graphs, qkv=self._qkv if self.fuse_qkv else None)
        return self._decoders[key]

    def generate_ids(self, features: np.ndarray, prompts: list[str], rows: list[int] | None = None,
                     tasks_: list[str] | None = None, constrained: bool = True, **overrides) -> list[list[int]]:
        """Generated ids per prompt (after the decoder start, up to and including eos), static-KV decoder; with
        `tasks_` and `constrained` each answer follows its task's grammar (tiercel.runtime.constrain)."""
        torch, cfg = self.torch, self.generation.with_overrides(**overrides)
        constraint = self.constraint(tasks_, cfg, constrained)
        self.check_new_tokens(cfg)  # before the text encoder runs, in the words of every other backend
        ids, mask = self._prompt_batch(features, prompts)
        with torch.no_grad():
            hidden = self._encode(features, ids, mask, rows).last_hidden_state
        if cfg.num_beams > 1:
            hidden, mask = hidden.repeat_interleave(cfg.num_beams, 0), mask.repeat_interleave(cfg.num_beams, 0)
        decoder = self.decoder(hidden.shape[0], hidden.shape[1], cfg.max_new_tokens)
        decoder.start(hidden, mask, self._stage)
        with self._stage("generate"):
            return generate(decoder, len(prompts), cfg, constraint)


def load_graphed(path, device: str | None = None, dtype: str | None = None) -> GraphedPredictor:
    """A checkpoint directory as a GraphedPredictor: fp16 with CUDA graphs on "cuda" (the default when torch
    sees a GPU), fp32 without graphs on "cpu"; `dtype` ("float32", "float16", "bfloat16") overrides either."""
    import torch

    from tiercel.errors import ConfigError

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device: the torch backend runs on cpu or cuda (got {device})")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA GPU here; use --device cpu or a CUDA build of torch")
    return GraphedPredictor.from_checkpoint(path, device, dtype or ("float16" if device == "cuda" else "float32"))

