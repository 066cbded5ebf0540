"""The recipes that ship with tiercel: the CPU demo and the real distillation jobs.

They are YAML files in this package (package data), read through importlib.resources so that they work from an
installed wheel as well as from a checkout. A shipped recipe is named by its file stem (`demo`,
`falcon-large_to_base`, ...); `tiercel recipes` lists them and copies one out to edit. This module knows their
names and text, nothing about the schema (tiercel.recipe validates them).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from tiercel.errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

SUFFIX = ".yaml"


def names() -> list[str]:
    """The shipped recipes' names, sorted."""
    return sorted(p.name.removesuffix(SUFFIX) for p in files(__name__).iterdir() if p.name.endswith(SUFFIX))


def find(name: str) -> Traversable | None:
    """The shipped recipe `name` (a resource with read_text()), or None when no recipe has that name."""
    return files(__name__) / f"{name}{SUFFIX}" if name in names() else None


def get(name: str) -> Traversable:
    """The shipped recipe `name`; ConfigError listing the names when there is none."""
    found = find(name)
    if found is None:
        raise ConfigError(f"{name}: no shipped recipe has this name; choose one of {', '.join(names())}")
    return found


def summary(name: str) -> str:
    """What the recipe is for: its first comment line."""
    for line in get(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


# the top-level keys of a recipe (tiercel.recipe.Recipe's fields; a test keeps the two the same)
RECIPE_KEYS = frozenset({"name", "out", "seed", "data", "tokenizer", "teacher", "student", "distill", "pipeline",
                         "export", "quantize", "eval", "profile"})


def is_recipe(path: Path) -> bool:
    """Whether `path` holds a recipe (a YAML mapping with a distill or student section): what copy, or a run
    writing its recipe.yaml, may replace."""
    import yaml

    if not path.is_file():  # a FIFO or a device would block or never end
        return False
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return False
    if not isinstance(data, dict) or not {"distill", "student"} & set(data) or not set(data) <= RECIPE_KEYS:
        return False
    return all(isinstance(data[k], dict) or data[k] is None for k in (RECIPE_KEYS - {"name", "out", "seed"}) & set(data))


def copy(name: str, dest: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the shipped recipe `name` to `dest` (default ./NAME.yaml; a folder gets NAME.yaml inside) and return
    that path. An existing file is replaced only with `overwrite`."""
    from tiercel.fileio import atomic_write_text, check_output_file

    text = get(name).read_text()
    folder = dest is not None and str(dest).endswith(("/", os.sep))  # "configs/": a folder, made if missing
    dest = Path(dest) if dest is not None else Path(f"{name}{SUFFIX}")
    if dest.is_dir() or folder:
        dest = dest / f"{name}{SUFFIX}"
    if dest.exists() and not overwrite:
        raise ConfigError(f"{dest}: already exists; choose another path or pass --overwrite")
    check_output_file(dest, "DEST", example=f"{name}{SUFFIX}")
    if dest.exists() and not is_recipe(dest):
        raise ConfigError(f"{dest}: is not a recipe, so it is not replaced even with --overwrite; choose another "
                          "path or remove it yourself")
    return atomic_write_text(dest, text)
