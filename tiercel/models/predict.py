"""A PyTorch Florence-2 model behind the runtime's API, so checkpoints and bundles are evaluated the same way.

    p = TorchPredictor.from_checkpoint("ckpt/")          # or TorchPredictor(model, tokenizer) during training
    p.run(image, task="REG_DET_HBB", text="airplane")     # the same call, result and pixels as Model.run
    p.run_all(image, ["IMG_CAP", "IMG_CLS"])

It is a tiercel.runtime Model whose two graph-backed stages are replaced: the vision tower runs in torch, and
generation is transformers' `generate` (from the runtime's prompt ids, with the image features in the
`<image>` slots) with the settings a bundle exported from this model would carry
(tiercel.export.bundle.generation_settings), and the runtime's answer grammar through GrammarProcessor. Everything else (numpy preprocessing, prompts, tokenizer
decoding, parsing, batching in run_all) is the runtime's own code.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from tiercel.errors import require
from tiercel.models.presets import IMAGENET_MEAN, IMAGENET_STD, match_preset
from tiercel.runtime.generate import GenerationConfig, forced_token, process
from tiercel.runtime.manifest import model_entry, preprocessing
from tiercel.runtime.model import Model


def hf_generation_kwargs(cfg: GenerationConfig) -> dict:
    """transformers `generate` keyword arguments equal to the runtime's GenerationConfig (greedy or beams)."""
    return {"do_sample": False, "num_beams": cfg.num_beams, "max_new_tokens": cfg.max_new_tokens,
            "no_repeat_ngram_size": cfg.no_repeat_ngram_size or None, "forced_bos_token_id": cfg.forced_bos_token_id,
            "forced_eos_token_id": cfg.forced_eos_token_id, "decoder_start_token_id": cfg.decoder_start_token_id,
            "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id,
            "length_penalty": cfg.length_penalty, "early_stopping": cfg.early_stopping}


class GrammarProcessor:
    """A transformers LogitsProcessor that applies the runtime's grammar mask (tiercel.runtime.constrain) and
    no-repeat n-gram ban, as generate.process does, so the torch path decodes under the same grammar as a bundle.

    transformers runs a processor passed to `generate` after its own, forced bos/eos included; this one does
    nothing at those forced steps, which gives the scores generate.process gives (n-gram, grammar, then forced).
    Rows are item-major (row // num_beams is the item), as in the runtime's beam search.
    """

    def __init__(self, constraint, cfg: GenerationConfig):
        self.constraint, self.cfg = constraint, cfg
        self.plain = replace(cfg, forced_bos_token_id=None, forced_eos_token_id=None)

    def __call__(self, input_ids, scores):
        import torch

        seqs = input_ids.detach().cpu().numpy()
        if forced_token(seqs.shape[1], self.cfg) is not None:
            self.constraint.states(seqs, np.arange(len(seqs)) // self.cfg.num_beams)  # keep the row states going
            return scores
        items = np.arange(len(seqs)) // self.cfg.num_beams
        out = process(scores.detach().float().cpu().numpy().copy(), seqs, self.plain, self.constraint, items)
        return torch.from_numpy(out).to(device=scores.device, dtype=scores.dtype)


def _until_eos(seq: list[int], eos: int) -> list[int]:
    return seq[: seq.index(eos) + 1] if eos in seq else seq


@contextlib.contextmanager
def _quiet_if_forced(cfg: GenerationConfig):
    """eos -1 forces the length (the profiler, benchmarks): transformers would warn at every call that generation
    will not stop; its logging is set to errors for the call and restored after."""
    if cfg.eos_token_id >= 0:
        yield
        return
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def device_clock(device: str):
    """perf_counter, synchronising the GPU first on a cuda device: a stage timed with it holds the GPU work it
    queued (torch returns before its kernels finish)."""
    if not str(device).startswith("cuda"):
        return time.perf_counter
    import torch

    def synced() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    return synced


class TorchPredictor(Model):
    """A native transformers Florence2ForConditionalGeneration with Model.run / run_all / generate_ids."""

    def __init__(self, model, tokenizer, mean=IMAGENET_MEAN, std=IMAGENET_STD, generation: dict | None = None,
                 dialect: str = "falcon"):
        """Wrap `model` (eval mode is set; the caller's train mode is not restored) and its TextTokenizer.

        Args:
            generation: decoding defaults; None takes what `tiercel export` would write into the bundle.
        """
        self.torch = require("torch", "train", "running a PyTorch checkpoint")
        from tiercel.export.bundle import generation_settings

        shape = model.tiercel_shape
        self.model = model.eval()
        self.bundle, self.sessions, self.tokenizer = None, {}, tokenizer
        param = next(model.parameters())
        self.backend, self.device, self._dtype = "torch", str(param.device), param.dtype
        self.shape = model_entry(shape, match_preset(shape))  # what a bundle's manifest would say
        self.pre = preprocessing(shape.image_size, mean, std)
        self.dialect = dialect
        self.generation = GenerationConfig(**(generation or generation_settings(model, tokenizer)))
        self.merged = False
        self.device_preprocess = self.device.startswith("cuda")  # resize + normalise on the GPU (Pillow's bytes)
        self._device_pre = None

    def preprocess_images(self, images: list[np.ndarray]):
        """pixel_values of RGB uint8 arrays: on a GPU (device_preprocess) a float32 device tensor made there by
        tiercel.models.device_preprocess (the runtime's values bit for bit), else the runtime's numpy array."""
        if not self.device_preprocess:
            return super().preprocess_images(images)
        if self._device_pre is None:
            from tiercel.models.device_preprocess import DevicePreprocessor

            self._device_pre = DevicePreprocessor(self.device, self.pre.size, self.pre.mean, self.pre.std)
        return self._device_pre(images)

    @property
    def stage_clock(self):
        """The clock for the profiler's stage timer (`device_clock` of this model's device)."""
        return device_clock(self.device)

    @contextlib.contextmanager
    def _timed_steps(self):
        """With a timer attached, each forward call of transformers `generate` is recorded as first_token or
        decode_token (the stages a bundle's decoder reports), on the timer's clock; without one, nothing is hooked."""
        if self.timer is None:
            yield
            return
        timer, open_steps = self.timer, []

        def pre(module, args, kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5 passes `cache`
            first = cache is None or cache.get_seq_length() == 0
            open_steps.append(("first_token" if first else "decode_token", timer.clock()))

        def post(module, args, kwargs, output):
            name, start = open_steps.pop()
            timer.record(name, timer.clock() - start)

        hooks = [self.model.register_forward_pre_hook(pre, with_kwargs=True),
                 self.model.register_forward_hook(post, with_kwargs=True)]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def weight_graphs(self) -> dict[str, dict]:
        """What each stage reads, in the profiler's graph-file form {name: {"bytes", "precision", "files"}}: the
        vision tower with its projector, the token embeddings, the text encoder, and the decoder with lm_head
        (read at every step, whether or not it is tied to the embeddings)."""
        inner, lm = self.model.model, self.model.model.language_model
        shared = {id(p) for p in lm.shared.parameters()}

        def size(*modules, with_shared: bool = False) -> int:
            params = {id(p): p for m in modules for p in m.parameters() if with_shared or id(p) not in shared}
            return sum(p.numel() * p.element_size() for p in params.values())

        precision = {"float16": "fp16", "bfloat16": "bf16"}.get(str(self._dtype).removeprefix("torch."), "fp32")
        parts = {"vision_encoder": size(inner.vision_tower, inner.multi_modal_projector),
                 "embed_tokens": size(lm.shared, with_shared=True), "encoder_model": size(lm.encoder),
                 "decoder_model": size(lm.decoder) + size(self.model.lm_head, with_shared=True)}
        return {name: {"bytes": n, "precision": precision, "files": []} for name, n in parts.items()}

    def weight_bytes(self) -> int:
        """Bytes of the model's parameters, each tensor once (a tied lm_head is the embedding)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: str = "float32") -> TorchPredictor:
        """Load a checkpoint directory (native or original layout) with tiercel.models.load_checkpoint."""
        from tiercel.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, dtype=dtype)
        return cls(ckpt.model, ckpt.tokenizer, ckpt.mean, ckpt.std)

    def _on_device(self, array, dtype=None):
        """A numpy array or tensor as a tensor on the model's device in `dtype` (default: the model's)."""
        torch = self.torch
        x = array if torch.is_tensor(array) else torch.from_numpy(array)
        return x.to(self.device, dtype or self._dtype)

    def image_features(self, pixel_values):
        """[B, N, D] image features: numpy float32 for numpy pixels; for a device tensor (device_preprocess) a
        device tensor in the model's dtype, which generate_ids takes without a copy through the host."""
        torch = self.torch
        with self._stage("vision_encoder"), torch.no_grad():
            out = self.model.get_image_features(self._on_device(pixel_values)).pooler_output
            return out if torch.is_tensor(pixel_values) else out.float().cpu().numpy()

    def concat_features(self, chunks: list):
        """image_features of several calls as one batch: numpy arrays or device tensors (device_preprocess)."""
        if len(chunks) == 1 or not self.torch.is_tensor(chunks[0]):
            return super().concat_features(chunks)
        return self.torch.cat(chunks)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.model.get_input_embeddings()(self.torch.from_numpy(ids).to(self.device)).float().cpu().numpy()

    def _prompt_batch(self, features: np.ndarray, prompts: list[str]):
        """Prompt ids and mask [B, T] on the model's device, right-padded as the runtime's encode does."""
        torch, n_img = self.torch, features.shape[1]
        rows = [self.tokenizer.prompt_ids(p, n_img) for p in prompts]
        self.check_prompt_lengths(n_img, rows)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return ids.to(self.device), mask.to(self.device)

    def _encode(self, features, ids, mask, rows: list[int] | None = None):
        """Token embeddings with the image features in the `<image>` slots, through the text encoder. `rows`: the
        row of `features` each prompt reads, gathered on the device (only the distinct images are copied there)."""
        torch = self.torch
        with self._stage("embed_tokens"):
            embeds = self.model.get_input_embeddings()(ids)
            image = self._on_device(features, embeds.dtype)
            embeds[:, : features.shape[1]] = image if rows is None else image[torch.tensor(rows, device=self.device)]
        with self._stage("text_encoder"):
            return self.model.model.language_model.encoder(inputs_embeds=embeds, attention_mask=mask)

    def generate_ids(self, features: np.ndarray, prompts: list[str], rows: list[int] | None = None,
                     tasks_: list[str] | None = None, constrained: bool = True, **overrides) -> list[list[int]]:
        """Generated ids per prompt (after the decoder start, up to and including eos), via transformers; with
        `tasks_` and `constrained` each answer follows its task's grammar (GrammarProcessor, the runtime's mask)."""
        torch, cfg = self.torch, self.generation.with_overrides(**overrides)
        self.check_new_tokens(cfg)
        ids, mask = self._prompt_batch(features, prompts)
        kwargs = hf_generation_kwargs(cfg)
        constraint = self.constraint(tasks_, cfg, constrained)
        if constraint is not None:
            from transformers import LogitsProcessorList

            # the processor bans repeated n-grams itself: it lifts the ban where the grammar would be left nothing
            kwargs.update(no_repeat_ngram_size=None, logits_processor=LogitsProcessorList([GrammarProcessor(constraint, cfg)]))
        with torch.no_grad():
            encoded = self._encode(features, ids, mask, rows)
            with self._stage("generate"), self._timed_steps(), _quiet_if_forced(cfg):
                out = self.model.generate(input_ids=ids, attention_mask=mask, encoder_outputs=encoded, **kwargs)
        answers = [_until_eos(seq[1:], cfg.eos_token_id) for seq in out.tolist()]
        return answers if constraint is None else constraint.rollback(answers)
