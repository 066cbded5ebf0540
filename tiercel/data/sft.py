"""Falcon_SFT records: stream them from JSON list or JSONL files, write them back atomically.

A Falcon_SFT file holds one record per sample:
`{"conversations": [{"role": "user", "content": "<image>\\n[TAG]\\nprompt"}, {"content": "answer"}],
"images": ["rel/path.png"], "crop": [x1, y1, x2, y2] or []}`; `from`/`value` keys are accepted too.
Real files reach many GB, so reading never loads the whole file: JSON lists are decoded one element at a
time from chunks (`json.JSONDecoder.raw_decode`), JSONL line by line.

This module knows the record layout only. It does not open images, check that answers parse, or judge
whether a tag is known (see tiercel.data.validate); the task tag is split off by tiercel.tasks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tiercel.errors import DataError
from tiercel.fileio import TOO_LONG, atomic_path

CHUNK_CHARS = 1 << 20  # characters read per step; a record larger than this just takes several reads
_USER_ROLES = ("user", "human")


@dataclass
class Record:
    """One Falcon_SFT sample. `images` are as written in the file (usually relative to a data root).

    `error` is set (and the other fields may be empty) when the record is malformed and the reader was
    asked not to raise; `raw` is the record's JSON object as read.
    """

    index: int
    tag: str | None
    prompt: str
    answer: str
    images: list[str] = field(default_factory=list)
    crop: list[float] = field(default_factory=list)
    raw: dict = field(default_factory=dict, repr=False)
    error: str | None = None

    def image_paths(self, root: str | os.PathLike | None = None) -> list[Path]:
        """The images as paths, joined to `root` when given (absolute paths stay as they are)."""
        base = Path(root) if root is not None else Path()
        return [base / p for p in self.images]


def iter_records(
    path: str | os.PathLike, *, strict: bool = True, chunk_chars: int = CHUNK_CHARS
) -> Iterator[Record]:
    """Stream the records of a Falcon_SFT file (JSON list or JSONL, detected from the first character).

    Args:
        path: the .json / .jsonl file.
        strict: raise DataError on the first malformed record; when False, yield it with `error` set.
        chunk_chars: how much text to read at a time from a JSON list (tests use tiny values).
    """
    path = Path(path)
    try:
        f = open(path, encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot open ({err.strerror or err})") from None
    with f:
        try:
            yield from _records(f, path, strict, chunk_chars)
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text; Falcon_SFT files are JSON") from None


def _records(f, path: Path, strict: bool, chunk_chars: int) -> Iterator[Record]:
    first = _first_char(f)
    if first == "[":
        values = _iter_json_list(f, path, chunk_chars)
    elif first == "{":
        values = _iter_jsonl(f, path)
    elif first == "":
        return
    else:
        raise DataError(f"{path}: not a Falcon_SFT file (expected a JSON list '[' or JSONL '{{', got {first!r})")
    for index, value in enumerate(values):
        record = parse_record(index, value)
        if record.error and strict:
            raise DataError(f"{path}: record {index}: {record.error}")
        yield record


def parse_record(index: int, obj) -> Record:
    """Turn one decoded JSON value into a Record; problems go to `Record.error`, never raise."""
    from tiercel.tasks import split_user_turn

    if not isinstance(obj, dict):
        return Record(index, None, "", "", raw={}, error=f"not a JSON object (got {type(obj).__name__})")
    turns = obj.get("conversations", obj.get("conversation"))
    images = obj.get("images", obj.get("image", []))
    images = [images] if isinstance(images, str) else images
    crop = obj.get("crop") or []
    error = _shape_error(turns, images, crop)
    if error:
        return Record(index, None, "", "", raw=obj, error=error)
    user, answer = _user_and_answer(turns)
    if user is None:
        return Record(index, None, "", "", list(images), list(crop), obj, "no user turn with text content")
    tag, prompt = split_user_turn(user)
    return Record(index, tag, prompt, answer or "", list(images), list(crop), obj)


def record_to_json(record: Record) -> dict:
    """The Falcon_SFT object for a record (role/content keys). Extra keys of `raw` are kept."""
    out = {k: v for k, v in record.raw.items() if k not in ("conversations", "conversation", "images", "image", "crop")}
    out["conversations"] = [
        {"role": "user", "content": f"<image>\n[{record.tag}]\n{record.prompt}"},
        {"role": "assistant", "content": record.answer},
    ]
    out["images"] = list(record.images)
    out["crop"] = list(record.crop)
    return out


def write_records(path: str | os.PathLike, records: Iterable[Record | dict]) -> int:
    """Write records as a Falcon_SFT JSON list, one record per line; atomic (temp file + rename).

    Accepts Record objects or ready Falcon_SFT dicts. Returns the number written. The output is
    deterministic: same records, same bytes.
    """
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("[")
        for record in records:
            obj = record_to_json(record) if isinstance(record, Record) else record
            f.write(",\n" if count else "\n")
            f.write(json.dumps(obj, ensure_ascii=False))
            count += 1
        f.write("\n]\n")
    return count


def _shape_error(turns, images, crop) -> str | None:
    if not isinstance(turns, list) or not turns:
        return "missing 'conversations' list"
    if not all(isinstance(t, dict) for t in turns):
        return "'conversations' must be a list of objects"
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        return "'images' must be a list of paths"
    if not isinstance(crop, list):
        return f"'crop' must be [x1, y1, x2, y2] or [] (got {crop!r})"
    return None


def _user_and_answer(turns: list[dict]) -> tuple[str | None, str | None]:
    """The first user turn's text and the text of the turn after it (None where either is not text)."""
    i = _user_turn(turns)
    if i is None:
        return None, None
    reply = _reply(turns, i)
    return _turn(turns[i], i)[1], reply if isinstance(reply, str) else None


def answer_problem(record: Record) -> str | None:
    """Why a well-formed record holds no answer to train on (no assistant turn, not text, empty); None if it has one."""
    turns = record.raw.get("conversations", record.raw.get("conversation"))
    i = _user_turn(turns) if isinstance(turns, list) else None
    reply = _reply(turns, i) if i is not None else _NO_TURN
    if reply is _NO_TURN:
        return "no assistant turn after the user turn"
    if not isinstance(reply, str):
        return f"the assistant answer is not text (got {type(reply).__name__})"
    return None if reply.strip() else "the assistant answer is empty"


_NO_TURN = object()  # _reply's "there is no answer turn", apart from a turn whose content is None


def _reply(turns: list[dict], i: int):
    """Content of the answer to user turn `i`: the next turn, unless there is none or it is another user turn
    (whose text would otherwise be trained on as the answer); _NO_TURN then."""
    if i + 1 >= len(turns) or _turn(turns[i + 1], i + 1)[0] in _USER_ROLES:
        return _NO_TURN
    return _turn(turns[i + 1], i + 1)[1]


def _user_turn(turns: list[dict]) -> int | None:
    """Index of the first user turn with text content (role/from; the first turn without a role is the user's)."""
    for i, turn in enumerate(turns):
        role, text = _turn(turn, i)
        if role in _USER_ROLES and isinstance(text, str):
            return i
    return None


def _turn(turn: dict, i: int) -> tuple[str, object]:
    role = str(turn.get("role", turn.get("from", "user" if i == 0 else ""))).lower()
    return role, turn.get("content", turn.get("value"))


def _first_char(f) -> str:
    """Consume leading whitespace and return the first significant character (put back via seek)."""
    while True:
        pos = f.tell()
        ch = f.read(1)
        if not ch or not ch.isspace():
            f.seek(pos)
            return ch


def _iter_jsonl(f, path: Path) -> Iterator:
    for lineno, line in enumerate(f, start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {lineno}: invalid JSON ({err.msg})") from None
            except ValueError:  # Python's limit on integer digits
                raise DataError(f"{path}: line {lineno}: invalid JSON ({TOO_LONG})") from None
            except RecursionError:  # json's decoder gives up on about 1000 nested [ or {
                raise DataError(f"{path}: line {lineno}: invalid JSON (nested too deeply)") from None


def _iter_json_list(f, path: Path, chunk_chars: int) -> Iterator:
    """Decode the elements of a top-level JSON list one by one, holding about one record in memory."""
    decoder = json.JSONDecoder()
    buf, pos, eof, index = f.read(chunk_chars)[1:], 0, False, 0  # [1:] drops the '['
    expect_value = True
    while True:
        pos = _skip_ws(buf, pos)
        if pos >= len(buf) and not eof:
            buf, pos, eof = _refill(f, buf, pos, chunk_chars)
            continue
        ch = buf[pos] if pos < len(buf) else ""
        if ch == "]" and (expect_value is False or index == 0):
            return
        if not expect_value:
            if ch != ",":
                raise DataError(f"{path}: after record {index - 1}: expected ',' or ']' (got {ch or 'end of file'!r})")
            pos, expect_value = pos + 1, True
            continue
        try:
            value, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as err:
            if eof:
                raise DataError(f"{path}: record {index}: invalid JSON ({err.msg})") from None
            # Most likely the record runs past the buffer: read more (doubling, so huge records stay linear).
            buf, pos, eof = _refill(f, buf, pos, max(chunk_chars, len(buf) - pos))
            continue
        except ValueError:  # Python's limit on integer digits (JSONDecodeError is caught above)
            raise DataError(f"{path}: record {index}: invalid JSON ({TOO_LONG})") from None
        except RecursionError:
            raise DataError(f"{path}: record {index}: invalid JSON (nested too deeply)") from None
        if end == len(buf) and not eof:  # a bare number cut at the chunk edge would decode short
            buf, pos, eof = _refill(f, buf, pos, chunk_chars)
            continue
        yield value
        pos, index, expect_value = end, index + 1, False


def _refill(f, buf: str, pos: int, size: int) -> tuple[str, int, bool]:
    more = f.read(size)
    return buf[pos:] + more, 0, not more


def _skip_ws(buf: str, pos: int) -> int:
    n = len(buf)
    while pos < n and buf[pos] in " \t\r\n":
        pos += 1
    return pos


def truncation_lines(counts: dict[str, dict[str, int]], max_answer: int, max_prompt: int, share: float = 0.01,
                     answers: str = "data.max_answer_tokens", prompts: str = "data.max_prompt_tokens") -> list[str]:
    """One warning line per task whose answers (or prompts) are cut more often than `share`, in task order;
    `answers`/`prompts` name the settings that cut them."""
    lines = []
    from tiercel.tasks import TAGS

    for tag in TAGS:
        c = counts.get(tag)
        if not c:
            continue
        for key, what, limit, setting in (("answers_cut", "answers", max_answer, answers),
                                          ("prompts_cut", "prompts", max_prompt, prompts)):
            if c.get(key, 0) > share * c["records"]:
                lines.append(f"{tag}: {c[key]} of {c['records']} {what} ({c[key] / c['records']:.0%}) are longer than "
                             f"{setting} ({limit} tokens) and are cut; raise it or expect the model to learn cut {what}")
    return lines
