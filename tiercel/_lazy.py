"""Lazy package attributes: `from tiercel.models import build` imports torch only when `build` is first used.

Packages whose modules pull heavy dependencies (torch, onnx, nncf) list their public names in a dict and get
a module-level `__getattr__` from here, so importing the package itself stays cheap.
"""

from __future__ import annotations

import importlib


def lazy_getattr(package: str, names: dict[str, str]):
    """A module `__getattr__` that imports `names[attr]` (a module path) on first access to `attr`."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
