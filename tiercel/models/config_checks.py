"""Checks of the numbers in a checkpoint's config files, before a model is built from them.

A config.json or preprocessor_config.json is read as data from a downloaded folder, so every size, rate, token id
and activation name in it is checked here with a one-line CheckpointError naming the file and the field, instead
of a traceback from deep inside torch or transformers (or an allocation that never ends). Written by hand:
transformers checks some of these fields only when a model is built, with messages that do not name the file.
Used by tiercel.models.checkpoint (Florence-2) and tiercel.models.geochat_convert (GeoChat / LLaVA).
"""

from __future__ import annotations

import math
from pathlib import Path

from tiercel.errors import CheckpointError
from tiercel.runtime.shape import size_limit


def check_size(value, name: str, label: str, where: Path) -> None:
    """CheckpointError `WHERE: LABEL: ...` unless `value` is a whole number in 1..size_limit(name), or a list of at
    most 16 of them."""
    limit = size_limit(name)
    items = value if isinstance(value, list) and value else [value]
    if not all(is_whole(v) and 0 < v <= limit for v in items) or len(items) > 16:
        raise CheckpointError(f"{where}: {label}: must be a whole number 1..{limit}"
                              f"{' or a list of at most 16 of them' if isinstance(value, list) else ''} "
                              f"(got {short(value)})")


def is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float (JSON's NaN and Infinity are not numbers a model can use; nor are true and false)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_that(ok: bool, where: Path, label: str, need: str, value) -> None:
    """CheckpointError `WHERE: LABEL: must be NEED (got VALUE)` unless `ok`."""
    if not ok:
        raise CheckpointError(f"{where}: {label}: must be {need} (got {short(value)})")


def check_divides(widths: list, heads: list, where: Path, width_label: str, heads_label: str) -> None:
    """Each width a whole multiple of its head (or group) count: attention splits the width evenly."""
    for width, count in zip(widths, heads):
        if is_whole(width) and is_whole(count) and count > 0 and width % count:
            raise CheckpointError(f"{where}: {heads_label}: {count} does not divide {width_label} {width}; each "
                                  "attention head gets an equal share of the width")


def check_activation(section: dict, name: str, where: Path, prefix: str = "") -> None:
    """An activation transformers knows (ACT2FN), when `section` names one."""
    from transformers.activations import ACT2FN

    if name in section:
        value = section[name]
        check_that(isinstance(value, str) and value in ACT2FN, where, prefix + name,
                   f"an activation transformers knows ({', '.join(sorted(ACT2FN))})", value)


def check_fractions(section: dict, names, where: Path, prefix: str = "") -> None:
    """Dropout-like rates: numbers 0..1, where given (null means none)."""
    for name in (n for n in names if section.get(n) is not None):
        check_that(is_number(section[name]) and 0 <= section[name] <= 1, where, prefix + name, "a number 0..1",
                   section[name])


def check_token_ids(section: dict, names, vocab, where: Path, prefix: str = "") -> None:
    """Special token ids inside the vocabulary (null: none; a list: each of them)."""
    if not is_whole(vocab):
        return  # the size check names it
    for name in (n for n in names if section.get(n) is not None):
        value = section[name]
        items = value if isinstance(value, list) and value else [value]
        check_that(all(is_whole(v) and 0 <= v < vocab for v in items), where, prefix + name,
                   f"a token id 0..{vocab - 1} (the vocabulary has {vocab} tokens) or null", value)


def check_finite(data, where: Path, label: str = "") -> None:
    """CheckpointError naming the first NaN or infinite number anywhere in `data` (JSON files may hold NaN and
    Infinity; a model built from them computes NaN, and writing them out would copy them on)."""
    if isinstance(data, float) and not math.isfinite(data):
        raise CheckpointError(f"{where}: {label or 'value'}: must be a finite number (got {data})")
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        check_finite(value, where, f"{label}[{key}]" if isinstance(key, int) else f"{label}.{key}".lstrip("."))


def build_model(make, where: Path):
    """`make()`: a model, or its transformers config, built from the config file `where`. What transformers raises
    for values the explicit checks do not cover becomes one CheckpointError line naming that file."""
    try:
        return make()
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, ZeroDivisionError, *strict_errors()) as err:
        raise CheckpointError(f"{where}: cannot build a model from it ({first_line(err)}); fix the file or "
                              "re-download the checkpoint") from err


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def strict_errors() -> tuple[type[Exception], ...]:
    # transformers >= 5 checks config fields with huggingface_hub's strict dataclasses, whose errors are neither
    # TypeError nor ValueError.
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


def check_normalisation(name: str, value, where: Path) -> tuple[float, float, float]:
    """`value` of image_mean or image_std (`name`) as three floats; CheckpointError naming `where` and the field
    unless it is three finite numbers (std: each > 0)."""
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(is_number(v) for v in value)
    if not ok or (name == "image_std" and min(value) <= 0):
        raise CheckpointError(f"{where}: {name}: must be three finite numbers{' > 0' if name == 'image_std' else ''} "
                              f"(got {short(value)})")
    return tuple(float(v) for v in value)


def check_floating(tensor, ref, name: str, folder: Path) -> None:
    """CheckpointError unless a weight the model holds as floating point is stored as floating point: integers or
    booleans there are not a model's weights (and torch refuses them as parameters with a long traceback)."""
    if ref.is_floating_point() and not tensor.is_floating_point():
        raise CheckpointError(f"{folder}: weight '{name}' is stored as {str(tensor.dtype).removeprefix('torch.')}, not "
                              "floating point; the checkpoint is damaged or not a model's weights, re-download it")
