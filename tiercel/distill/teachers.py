"""Teachers that teach by their answers: adapters around generating models, and the Falcon_SFT file they write.

    adapter = FlorenceAdapter(teacher, tokenizer, image_size=768, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    summary = generate_answers(adapter, iter_records("train.json"), root="data/", out_path="teacher.json")

A teacher adapter is anything with `generate(images, prompt) -> str`: `images` the record's RGB uint8 arrays
(two for PIX_CHG), `prompt` the Falcon user turn without `<image>`: `[TAG]\\nprompt`. An adapter may also have
`convert(text, tag, image_size) -> (answer, warnings)` to rewrite its answers in Falcon's grammar (GeoChat
does). This is sequence-level KD: it works across vocabularies, unlike logit KD, which
`check_same_vocabulary` guards.

torch and transformers are imported only inside the adapters; generate_answers itself needs neither. This
module knows nothing about training, recipes or the student.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from tiercel import tasks
from tiercel.data.images import load_image
from tiercel.data.sft import Record, record_to_json, write_records
from tiercel.distill import geochat
from tiercel.errors import CheckpointError, ConfigError, DataError, TaskError, require

N_EXAMPLES = 5  # skipped records quoted in the summary


@runtime_checkable
class TeacherAdapter(Protocol):
    def generate(self, images: list[np.ndarray], prompt: str) -> str:
        """The teacher's answer to `prompt` (`[TAG]\\nprompt`) about `images` (RGB uint8 arrays)."""
        ...


def _split(prompt: str) -> tuple[str | None, str]:
    return tasks.split_user_turn(prompt)


class FlorenceAdapter:
    """A native transformers Florence-2 / Falcon model answering with transformers' `generate` (greedy).

    Args:
        model: a `Florence2ForConditionalGeneration` (e.g. from tiercel.models.load_checkpoint), in eval mode.
        tokenizer: its tiercel `TextTokenizer` (prompt ids with the `<image>` slots, decoding).
        image_size, mean, std: the preprocessing (tiercel.runtime.preprocess: square resize, rescale, normalise).
        max_new_tokens: answer length limit.
        keep_tag: feed `[TAG]\\nprompt` (Falcon's training format) instead of the bare prompt, which is what
            tiercel.runtime feeds.
        generation: extra `generate` settings (e.g. {"num_beams": 3, "forced_bos_token_id": 0}); the default is
            greedy without no-repeat-n-gram blocking (repeated coordinates are legitimate).
    """

    def __init__(self, model, tokenizer, image_size: int, mean, std, max_new_tokens: int = 256,
                 keep_tag: bool = False, generation: dict | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.keep_tag = keep_tag
        self.generation = {"do_sample": False, "num_beams": 1, "no_repeat_ngram_size": 0,
                           "max_new_tokens": max_new_tokens, **(generation or {})}
        shape = getattr(model, "tiercel_shape", None)
        self._image_tokens = getattr(shape, "image_tokens", None)

    def pixel_values(self, images: list[np.ndarray]) -> np.ndarray:
        """[1, 3, S, S] float32 for one image, or for PIX_CHG's tiled before/after pair."""
        from tiercel.runtime.preprocess import preprocess, to_rgb_array

        rgb = [to_rgb_array(im) for im in images]
        canvas = rgb[0] if len(rgb) == 1 else tasks.tile_change_pair(rgb[0], rgb[1])
        return preprocess(canvas, self.image_size, self.mean, self.std)

    def generate(self, images: list[np.ndarray], prompt: str) -> str:
        torch = require("torch", "train", "a Florence-2 teacher")
        tag, body = _split(prompt)
        text = f"[{tag}]\n{body}" if self.keep_tag and tag else body
        param = next(self.model.parameters())
        pixels = torch.from_numpy(self.pixel_values(images)).to(param.device, param.dtype)
        with torch.no_grad():
            if self._image_tokens is None:
                self._image_tokens = self.model.get_image_features(pixels).pooler_output.shape[1]
            ids = torch.tensor([self.tokenizer.prompt_ids(text, self._image_tokens)], device=param.device)
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                      **self.generation)
        return self.tokenizer.decode(out[0].tolist())


class GeoChatAdapter:
    """GeoChat-7B (LLaVA-1.5) through transformers' `LlavaForConditionalGeneration`, loaded from a local directory.

    The Falcon prompt is rewritten as GeoChat's (geochat.geochat_prompt), wrapped in GeoChat's llava_v1
    conversation, answered greedily; `convert` turns the answer into Falcon's grammar (geochat.to_falcon).
    PIX_SEG and PIX_CHG are refused (TaskError): GeoChat gives no polygons.

    GeoChat is published in LLaVA-1.5's own layout; `tiercel convert --from geochat` writes the transformers
    LLaVA layout this loads (CLIP interpolated to 504 px, GeoChat's evaluation preprocessing). Tested on tiny
    checkpoints written in GeoChat's layout, not on the real 7B weights. Never uses trust_remote_code.
    """

    SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the human's questions.")

    def __init__(self, model, processor, max_new_tokens: int = 256, clockwise: bool = False):
        self.model, self.processor = model, processor
        self.max_new_tokens, self.clockwise = max_new_tokens, clockwise

    @classmethod
    def from_dir(cls, path: str | os.PathLike, dtype: str = "float16", device: str | None = None,
                 **kwargs) -> GeoChatAdapter:
        """Load a converted GeoChat (config.json, weights, processor files) from `path`; nothing is downloaded."""
        from tiercel.models.checkpoint import read_json

        transformers = require("transformers", "train", "the GeoChat teacher")
        torch = require("torch", "train", "the GeoChat teacher")
        path = Path(path)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: no config.json; point to a GeoChat directory in transformers' LLaVA layout")
        if "mm_vision_tower" in read_json(path / "config.json"):
            raise CheckpointError(f"{path}: is GeoChat in LLaVA's own layout; convert it first: tiercel convert "
                                  f"--from geochat {path} DST --vision-tower CLIP_DIR, and point teacher.path at DST")
        processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
        model = transformers.LlavaForConditionalGeneration.from_pretrained(
            path, local_files_only=True, dtype=getattr(torch, dtype))
        if device is not None:
            model = model.to(device)
        return cls(model.eval(), processor, **kwargs)

    def request(self, images: list[np.ndarray], prompt: str) -> str:
        """GeoChat's full prompt text for a Falcon user turn `[TAG]\\nprompt` about `images`."""
        tag, body = _split(prompt)
        if tag is None:
            raise TaskError(f"GeoChat needs the Falcon task tag to choose its prompt; got {prompt[:60]!r}")
        size = (images[0].shape[1], images[0].shape[0])
        fields = tasks.get(tag).read_prompt(body, size)
        question = geochat.geochat_prompt(tag, fields, size, self.clockwise)
        return f"{self.SYSTEM} USER: <image>\n{question} ASSISTANT:"

    def generate(self, images: list[np.ndarray], prompt: str) -> str:
        torch = require("torch", "train", "the GeoChat teacher")
        from PIL import Image

        if len(images) != 1:
            raise TaskError(f"GeoChat reads one image (got {len(images)})")
        inputs = self.processor(images=[Image.fromarray(images[0])], text=self.request(images, prompt),
                                return_tensors="pt")
        param = next(self.model.parameters())
        inputs = {k: v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device)
                  for k, v in inputs.items()}
        with torch.no_grad():
            out = self.model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0].strip()

    def convert(self, text: str, tag: str, image_size) -> tuple[str, list[str]]:
        """GeoChat's answer in Falcon's grammar, with what could not be converted."""
        warnings: list[str] = []
        return geochat.to_falcon(text, tag, image_size, warnings, self.clockwise), warnings


def check_same_vocabulary(teacher_tok, student_tok) -> None:
    """Raise ConfigError unless both tokenizers map the same tokens to the same ids (logit KD needs that).

    Accepts tiercel TextTokenizers, `tokenizers.Tokenizer`s, transformers tokenizers or plain {token: id} dicts.
    """
    teacher, student = _vocab(teacher_tok), _vocab(student_tok)
    if teacher == student:
        return
    if len(teacher) != len(student):
        detail = f"teacher has {len(teacher)} tokens, student {len(student)}"
    else:
        token = next(t for t in sorted(teacher, key=teacher.get) if student.get(t) != teacher[t])
        detail = f"token {token!r} is id {teacher[token]} in the teacher and {student.get(token)} in the student"
    raise ConfigError(f"teacher and student tokenizers differ ({detail}); logit distillation needs a shared "
                      "vocabulary — set teacher.kind: generated to distill from generated answers")


def _vocab(tok) -> dict[str, int]:
    if isinstance(tok, dict):
        return tok
    tok = getattr(tok, "tok", tok)  # a tiercel TextTokenizer wraps a tokenizers.Tokenizer
    try:
        return tok.get_vocab(with_added_tokens=True)
    except TypeError:  # transformers tokenizers take no argument and include added tokens
        return tok.get_vocab()


# ---- writing a Falcon_SFT file of teacher answers ---------------------------------------------------------


def partial_path(out_path: str | os.PathLike) -> Path:
    """Where generate_answers keeps its progress (one JSON line per record done) until the output is complete."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".partial.jsonl")


def generate_answers(adapter: TeacherAdapter, records: Iterable[Record], root: str | os.PathLike | None,
                     out_path: str | os.PathLike, convert: Callable | None = None,
                     progress: Callable[[int], object] | None = None, resume: bool = True,
                     dialect: str = "falcon") -> dict:
    """Answer every record with the teacher and write them as a Falcon_SFT file at `out_path`.

    Each record's answer is replaced by the teacher's, converted by `convert(text, tag, image_size)` (returning
    the answer, or (answer, warnings)); by default `adapter.convert` when the adapter has one, else the text as
    it is. Records are skipped and counted, never written, when they are malformed, have no task tag, their
    images cannot be read, the adapter refuses it (TaskError, e.g. GeoChat on PIX_CHG), conversion warns, or the answer does not
    parse cleanly (`spec.parse` warnings).

    Progress goes to `<out_path>.partial.jsonl`, one line per record, flushed as it is written: a run that
    stops (crash, Ctrl-C) continues where it stopped when called again with the same records and resume=True.
    The output appears at once (temp file + rename) when every record is done; then the partial file is
    removed. `progress(1)` is called after each record (tqdm's `update` fits).

    Returns a summary: records, written, skipped (with reasons and tasks), resumed, generated, examples.
    """
    out_path, partial = Path(out_path), partial_path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not resume:
        partial.unlink(missing_ok=True)
    done = _load_partial(partial)
    resumed = len(done)
    convert = convert if convert is not None else getattr(adapter, "convert", None)
    seen = 0
    with open(partial, "a", encoding="utf-8") as log:
        for position, record in enumerate(records):
            seen = position + 1
            key = _record_key(record)
            if position in done:
                if done[position]["key"] != key:
                    raise DataError(f"{partial}: record {position} is not the one answered before (the input "
                                    "changed); delete this file or pass resume=False")
            else:
                entry = {"position": position, "key": key, **_teach(adapter, record, root, convert, dialect)}
                log.write(json.dumps(entry, ensure_ascii=False) + "\n")
                log.flush()
                os.fsync(log.fileno())
                done[position] = entry
            if progress is not None:
                progress(1)
    if len(done) > seen:
        raise DataError(f"{partial}: holds {len(done)} records but the input has {seen}; the input changed — "
                        "delete this file or pass resume=False")
    entries = [done[i] for i in range(seen)]
    write_records(out_path, (e["record"] for e in entries if e["ok"]))
    partial.unlink(missing_ok=True)
    return _summary(entries, out_path, resumed)


def _teach(adapter, record: Record, root, convert, dialect: str) -> dict:
    """One record through the teacher: {"ok": True, "record": ...} or {"ok": False, "reason": ..., "why": ...}."""
    def skip(reason: str, why: str, raw: str | None = None) -> dict:
        return {"ok": False, "tag": record.tag, "reason": reason, "why": why, "raw": raw}

    if record.error:
        return skip("malformed", record.error)
    if record.tag is None:
        return skip("no_tag", "the user turn names no [TAG]")
    try:
        spec = tasks.get(record.tag)
        images = [load_image(p, record.crop) for p in record.image_paths(root)]
    except (TaskError, DataError) as err:
        return skip("unknown_task" if isinstance(err, TaskError) else "image", str(err))
    if len(images) != spec.n_images:
        return skip("image", f"{spec.tag} takes {spec.n_images} image(s), the record has {len(images)}")
    size = (images[0].shape[1], images[0].shape[0])
    raw = None
    try:
        raw = adapter.generate(images, f"[{spec.tag}]\n{record.prompt}")
        answer, notes = _convert(convert, raw, spec.tag, size)
    except TaskError as err:
        return skip("refused", str(err), raw)
    if notes:
        return skip("conversion", notes[0], raw)
    parsed = spec.parse(answer, size, dialect)
    if parsed.warnings:
        return skip("unparseable", parsed.warnings[0], raw)
    new = dataclasses.replace(record, tag=spec.tag, answer=answer)
    return {"ok": True, "tag": spec.tag, "raw": raw, "record": record_to_json(new)}


def _convert(convert, text, tag: str, size) -> tuple[str, list[str]]:
    if convert is None:
        return text, []
    out = convert(text, tag, size)
    return (out[0], list(out[1])) if isinstance(out, tuple) else (out, [])


def _record_key(record: Record) -> str:
    """A short fingerprint of what the teacher sees, to notice a changed input on resume."""
    seen = json.dumps([record.tag, record.prompt, record.images, record.crop], ensure_ascii=False)
    return hashlib.sha1(seen.encode()).hexdigest()[:16]


def _load_partial(partial: Path) -> dict[int, dict]:
    """Entries of a previous run by position; a line torn by a crash is dropped and the file cut before it."""
    if not partial.exists():
        return {}
    done, good_bytes = {}, 0
    with open(partial, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # the write of this line never finished
            try:
                entry = json.loads(line)
                done[int(entry["position"])] = entry
            except (ValueError, KeyError, TypeError):
                break
            good_bytes += len(line)
    with open(partial, "r+b") as f:
        f.truncate(good_bytes)
    return done


def _summary(entries: list[dict], out_path: Path, resumed: int) -> dict:
    skipped = [e for e in entries if not e["ok"]]
    return {
        "out": str(out_path),
        "records": len(entries),
        "written": len(entries) - len(skipped),
        "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(e["reason"] for e in skipped)),
        "skipped_by_task": dict(Counter(e["tag"] or "none" for e in skipped)),
        "resumed": resumed,
        "generated": len(entries) - resumed,
        "examples": [f"record {e['position']} ({e['tag']}): {e['reason']}: {e['why']}" for e in skipped[:N_EXAMPLES]],
    }
