"""Training data for distillation: Falcon_SFT records -> padded torch batches, sampled per task.

The sampler is a pure function of (seed, step): the same step always draws the same samples, so a resumed
run continues with exactly the data it would have seen, and each of N processes takes a disjoint slice of
the same global batch. Tasks are drawn by weight, then a record uniformly within the task (with replacement).

Records are held in memory (a few hundred bytes each): fine up to a few million; shard bigger corpora
(e.g. Falcon's per-task files) into several runs or recipes. Images are decoded, resized per model input size
and kept as uint8 in an LRU cache. Knows nothing about models or losses.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tiercel import tasks
from tiercel.data.images import load_image
from tiercel.data.sft import Record, iter_records
from tiercel.errors import DataError
from tiercel.runtime.preprocess import normalize, resize_square
from tiercel.tasks.grammar import QUAD_ORDERS, canonical_quads

IGNORE = -100
CUTS = ("tokens", "structures")
CLOSING = ("</box>", "</quad>", "</poly>")


@dataclass(frozen=True)
class ModelInput:
    """What one model needs from a sample: its input size, image-token count and normalisation."""

    image_size: int
    image_tokens: int
    mean: tuple
    std: tuple


def model_input(model, mean=None, std=None) -> ModelInput:
    """The ModelInput of a Florence-2 model (its tiercel_shape), with its normalisation (default ImageNet's)."""
    from tiercel.models.presets import IMAGENET_MEAN, IMAGENET_STD

    s = model.tiercel_shape
    return ModelInput(s.image_size, s.image_tokens, tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD))


class SFTData:
    """Records of one Falcon_SFT file, tokenised on demand, with cached resized images."""

    def __init__(self, path: str | Path, root: str | Path, tokenizer, max_prompt_tokens: int = 96,
                 max_answer_tokens: int = 256, cache_size: int = 1024, quad_order: str = "keep",
                 cut_answers: str = "tokens"):
        self.path, self.root, self.tok = Path(path), Path(root), tokenizer
        self.max_prompt, self.max_answer, self.quad_order = max_prompt_tokens, max_answer_tokens, quad_order
        if cut_answers not in CUTS:
            raise DataError(f"cut_answers must be one of {', '.join(CUTS)} (got {cut_answers!r})")
        self.cut_answers = cut_answers
        # The closing tags a "structures" cut may end at, where the tokenizer holds them whole (tiercel's do).
        ids = [tokenizer.tok.token_to_id(t) for t in CLOSING] if cut_answers == "structures" else []
        self._closing = {i for i in ids if i is not None}
        self.records: list[Record] = [r for r in iter_records(self.path) if r.tag in tasks.TAGS]
        if quad_order == "canonical":  # answers only: prompts stay as users will write them
            self.records = [replace(r, answer=canonical_quads(r.answer)) if "<quad>" in r.answer else r for r in self.records]
        elif quad_order != "keep":
            raise DataError(f"quad_order must be one of {', '.join(QUAD_ORDERS)} (got {quad_order!r})")
        if not self.records:
            raise DataError(f"{self.path}: no records with a known task tag")
        self.by_task: dict[str, list[int]] = {}
        for i, r in enumerate(self.records):
            self.by_task.setdefault(r.tag, []).append(i)
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int, size: int) -> np.ndarray:
        """The sample's image (PIX_CHG: the 2x2 change canvas) resized to size x size, uint8."""
        key = (i, size)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        r = self.records[i]
        paths = r.image_paths(self.root)
        frames = [load_image(p, crop=r.crop or None) for p in paths]
        rgb = tasks.tile_change_pair(*frames[:2]) if tasks.get(r.tag).n_images == 2 else frames[0]
        out = resize_square(rgb, size)
        if self._cache_size:
            self._cache[key] = out
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def prompt_ids(self, i: int, n_image_tokens: int) -> list[int]:
        ids = self.tok.encode(self.records[i].prompt)[: self.max_prompt]
        return [self.tok.image_id] * n_image_tokens + [self.tok.bos_id, *ids, self.tok.eos_id]

    def label_ids(self, i: int) -> list[int]:
        ids = self.tok.encode(self.records[i].answer)
        if len(ids) > self.max_answer:
            ends = [j for j in range(self.max_answer) if ids[j] in self._closing]  # empty unless cut_answers: structures
            ids = ids[: ends[-1] + 1] if ends else ids[: self.max_answer]  # no whole structure fits: cut at the tokens
        return [self.tok.bos_id, *ids, self.tok.eos_id]

    def truncation(self) -> dict[str, dict[str, int]]:
        """Per task: records, and how many answers / prompts are longer than max_answer_tokens /
        max_prompt_tokens, which prompt_ids and label_ids cut."""
        answers = self.tok.lengths([r.answer for r in self.records])
        prompts = self.tok.lengths([r.prompt for r in self.records])
        counts: dict[str, dict[str, int]] = {}
        for r, a, p in zip(self.records, answers, prompts):
            c = counts.setdefault(r.tag, {"records": 0, "answers_cut": 0, "prompts_cut": 0})
            c["records"] += 1
            c["answers_cut"] += a > self.max_answer
            c["prompts_cut"] += p > self.max_prompt
        return counts


class TaskSampler:
    """Draw sample indices for a step: tasks by weight, then records uniformly within the task."""

    def __init__(self, by_task: dict[str, list[int]], weights: dict[str, float], seed: int):
        self.tags = [t for t in tasks.TAGS if t in by_task and weights.get(t, 1.0) > 0]
        if not self.tags:
            raise DataError("every task with data has sampling weight 0; raise one in data.task_weights")
        w = np.array([weights.get(t, 1.0) for t in self.tags], dtype=np.float64)
        self.probs = w / w.sum()
        self.pools = [np.asarray(by_task[t]) for t in self.tags]
        self.seed = seed

    def draw(self, step: int, micro: int, n: int) -> list[int]:
        """`n` indices for (step, micro-batch); identical on every process and after a resume."""
        rng = np.random.default_rng([self.seed, step, micro])
        picks = rng.choice(len(self.tags), size=n, p=self.probs)
        return [int(self.pools[t][rng.integers(len(self.pools[t]))]) for t in picks]


def collate(data: SFTData, indices: list[int], inputs: dict[str, ModelInput], decoder_start: int, dense=None) -> dict:
    """A batch for every model in `inputs` (e.g. student and teacher, which may differ in image size).

    Returns {"labels", "decoder_input_ids", "indices", name: {"pixel_values", "input_ids", "attention_mask"}}
    as torch tensors; labels are `<s> answer </s>` padded with -100, decoder inputs the labels shifted right.
    With `dense` (tiercel.distill.dense.DenseTargets) also "dense": the targets of distill.dense.
    """
    import torch

    labels = [data.label_ids(i) for i in indices]
    width = max(len(x) for x in labels)
    lab = torch.full((len(indices), width), IGNORE, dtype=torch.long)
    for row, seq in enumerate(labels):
        lab[row, : len(seq)] = torch.tensor(seq)
    dec = torch.cat([torch.full((len(indices), 1), decoder_start, dtype=torch.long), lab[:, :-1]], dim=1)
    dec[dec == IGNORE] = data.tok.pad_id
    batch = {"labels": lab, "decoder_input_ids": dec, "indices": list(indices)}
    if dense is not None:
        batch["dense"] = dense.batch(indices)
    for name, spec in inputs.items():
        prompts = [data.prompt_ids(i, spec.image_tokens) for i in indices]
        plen = max(len(p) for p in prompts)
        ids = torch.full((len(indices), plen), data.tok.pad_id, dtype=torch.long)
        mask = torch.zeros((len(indices), plen), dtype=torch.long)
        for row, seq in enumerate(prompts):
            ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
        images = np.stack([data.image(i, spec.image_size) for i in indices])
        batch[name] = {"pixel_values": torch.from_numpy(normalize(images, spec.mean, spec.std)),
                       "input_ids": ids, "attention_mask": mask}
    return batch


def to_device(batch: dict, device: str) -> dict:
    """Move every tensor of a (nested) batch to `device`; other values stay as they are."""
    return {k: to_device(v, device) if isinstance(v, dict) else (v.to(device) if hasattr(v, "to") else v)
            for k, v in batch.items()}
