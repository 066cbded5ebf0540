"""Teacher top-k logit cache: run the teacher once, train many students without it in memory.

`tiercel distill cache-teacher RECIPE` runs the teacher teacher-forced on every training record's answer
and stores, per answer token, the k largest logits (float16) and their token ids (int32), in shards of
SHARD records: shard_00012.npz holds records 12*SHARD .. 13*SHARD-1 as flat arrays plus offsets. Shards are
written atomically and skipped when present, so an interrupted run resumes; under torchrun, process r
writes shards r, r+N, ... The cache's manifest.json pins what the logits depend on (training file, record
count, tokenizer, top_k, max_answer_tokens); a student run refuses a cache that does not match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from tiercel.errors import ConfigError
from tiercel.fileio import read_json_object, write_json
from tiercel.progress import track

SHARD = 256
_REBUILD = "rebuild the cache with cache-teacher into an empty directory"


def _fingerprint(data, tokenizer, top_k: int, max_answer: int) -> dict:
    vocab = json.dumps(sorted(tokenizer.tok.get_vocab(with_added_tokens=True).items())).encode()
    return {
        "train_file": str(Path(data.path).resolve()),
        "records": len(data),
        "tokenizer_sha256": hashlib.sha256(vocab).hexdigest(),
        "top_k": top_k,
        "max_answer_tokens": max_answer,
        "shard_size": SHARD,
        **({"quad_order": data.quad_order} if data.quad_order != "keep" else {}),  # absent: caches made before it
        **({"cut_answers": data.cut_answers} if data.cut_answers != "tokens" else {}),
    }


def _shard_path(cache: Path, shard: int) -> Path:
    return cache / f"shard_{shard:05d}.npz"


def cache_teacher(recipe, progress: bool = True) -> dict:
    """Write the top-k cache for `recipe` (teacher.kind cached); returns a summary.

    progress: False hides the records bar even where the caller turned progress on (tiercel.progress.shown).
    """
    import torch

    from tiercel.distill.data import SFTData, collate, model_input, to_device
    from tiercel.distill.dist import barrier, setup, teardown
    from tiercel.distill.objective import run_model
    from tiercel.models import load_checkpoint

    if recipe.teacher.kind != "cached" or recipe.teacher.path is None:
        raise ConfigError("cache-teacher needs teacher.kind cached with teacher.path (the model) and teacher.cache (the output)")
    dist = setup()
    try:
        cache = Path(recipe.teacher.cache)
        teacher = load_checkpoint(recipe.teacher.path)
        model = teacher.model.to(dist.device).eval().requires_grad_(False)
        d = recipe.data
        data = SFTData(d.train, d.root, teacher.tokenizer, d.max_prompt_tokens, d.max_answer_tokens, cache_size=0, quad_order=d.quad_order,
                      cut_answers=d.cut_answers)
        meta = _fingerprint(data, teacher.tokenizer, recipe.teacher.top_k, d.max_answer_tokens)
        if dist.main:
            cache.mkdir(parents=True, exist_ok=True)
            _check_manifest(cache, meta, allow_missing=True)
            write_json(cache / "manifest.json", {**meta, "teacher": str(teacher.path)})
            teacher.tokenizer.save(cache)
        barrier(dist)
        n_shards = (len(data) + SHARD - 1) // SHARD
        mine = [s for s in range(dist.rank, n_shards, dist.world) if not _shard_path(cache, s).is_file()]
        inputs = {"teacher": model_input(model, teacher.mean, teacher.std)}
        records = sum(len(_shard_records(s, len(data))) for s in mine)  # rank 0's share: the others' is alike
        with track("cache-teacher", records, "records", enabled=progress and dist.main) as bar:
            for shard in mine:
                idx = _shard_records(shard, len(data))
                rows = []
                for start in range(0, len(idx), recipe.distill.batch_size):
                    part = idx[start : start + recipe.distill.batch_size]
                    batch = to_device(collate(data, part, inputs, teacher.tokenizer.eos_id), dist.device)
                    with torch.no_grad():
                        logits = run_model(model, batch["teacher"], batch["decoder_input_ids"]).logits.float()
                    values, ids = logits.topk(recipe.teacher.top_k, dim=-1)
                    for row, i_rec in enumerate(part):
                        n = len(data.label_ids(i_rec))
                        rows.append((values[row, :n].cpu().numpy(), ids[row, :n].cpu().numpy()))
                    bar.advance(len(part), note=f"shard {shard}")
                _write_shard(cache, shard, rows)
        barrier(dist)
        return {"cache": str(cache), "shards": n_shards, "written_here": len(mine), **meta}
    finally:
        teardown(dist)


def _shard_records(shard: int, records: int) -> list[int]:
    return list(range(shard * SHARD, min(records, (shard + 1) * SHARD)))


def _write_shard(cache: Path, shard: int, rows: list) -> None:
    from tiercel.fileio import atomic_path

    offsets = np.cumsum([0] + [len(v) for v, _ in rows])
    values = np.concatenate([v for v, _ in rows]).astype(np.float16)
    ids = np.concatenate([i for _, i in rows]).astype(np.int32)
    with atomic_path(_shard_path(cache, shard)) as tmp, open(tmp, "wb") as f:
        np.savez(f, values=values, indices=ids, offsets=offsets)


def _check_manifest(cache: Path, meta: dict, allow_missing: bool = False) -> None:
    file = cache / "manifest.json"
    if not file.is_file():
        if allow_missing:
            return
        raise ConfigError(f"{cache}: no teacher cache here; run `tiercel distill cache-teacher RECIPE` first")
    have = read_json_object(file, ConfigError, _REBUILD)
    for key, want in meta.items():
        if have.get(key) != want:
            raise ConfigError(f"{file}: {key} is {have.get(key)!r} but this run needs {want!r}; {_REBUILD}")


def read_shard(path: Path) -> dict[str, np.ndarray]:
    """One shard's arrays, read without unpickling (an object array, which could run code, is refused); a shard
    that cannot be read is one ConfigError line."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ("values", "indices", "offsets")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        why = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: not a shard cache-teacher wrote ({why}); delete it and run "
                          "`tiercel distill cache-teacher RECIPE` again, which rewrites missing shards") from None


class TopKCache:
    """Read access to a complete cache: top-k logits per record, padded into batch tensors."""

    def __init__(self, cache: str | Path, data, tokenizer, top_k: int):
        self.dir = Path(cache)
        if not (self.dir / "manifest.json").is_file():
            raise ConfigError(f"{self.dir}: no teacher cache here; run `tiercel distill cache-teacher RECIPE` first")
        self.k = top_k  # a cache of another k is refused by the fingerprint, never silently used
        _check_manifest(self.dir, _fingerprint(data, tokenizer, self.k, data.max_answer))
        n_shards = (len(data) + SHARD - 1) // SHARD
        missing = [s for s in range(n_shards) if not _shard_path(self.dir, s).is_file()]
        if missing:
            raise ConfigError(f"{_shard_path(self.dir, missing[0])}: missing ({len(missing)} of {n_shards} shards); finish it with `tiercel distill cache-teacher RECIPE`")
        self._shards: dict[int, dict] = {}

    def record(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(values [T, k] float16, ids [T, k] int32) of one record's answer tokens."""
        shard, row = divmod(index, SHARD)
        if shard not in self._shards:
            self._shards[shard] = read_shard(_shard_path(self.dir, shard))
        s = self._shards[shard]
        a, b = s["offsets"][row], s["offsets"][row + 1]
        return s["values"][a:b], s["indices"][a:b]

    def lookup(self, indices: list[int], labels, device: str):
        """Batch tensors (values [B, T, k] float32, ids [B, T, k] long) aligned with `labels` [B, T]."""
        import torch

        b, t = labels.shape
        values = torch.zeros(b, t, self.k)
        ids = torch.zeros(b, t, self.k, dtype=torch.long)
        for row, i in enumerate(indices):
            v, ix = self.record(i)
            n = min(len(v), t)
            values[row, :n] = torch.from_numpy(v[:n].astype(np.float32))
            ids[row, :n] = torch.from_numpy(ix[:n].astype(np.int64))
        return values.to(device), ids.to(device)

