"""Typed user errors. Each one renders as a single line that says what is wrong and what to do.

The CLI catches TiercelError, prints `str(err)` and exits 1; TIERCEL_DEBUG=1 shows the traceback instead.
Anything else that escapes is a bug in tiercel and keeps its traceback.
"""

from __future__ import annotations


class TiercelError(Exception):
    """A mistake the user can fix. The message is one line, naming the file/field and the remedy."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(TiercelError):
    """A recipe, preset or command-line value is invalid."""


class CheckpointError(TiercelError):
    """A checkpoint directory is missing, incomplete or does not match the model it claims to be."""


class TokenizerError(TiercelError):
    """A tokenizer file is missing or lacks tokens tiercel needs."""


class DataError(TiercelError):
    """A dataset file or image cannot be read or does not follow the Falcon_SFT format."""


class BundleError(TiercelError):
    """A bundle is missing a file, fails its checksum, or does not fit the requested backend."""


class TaskError(TiercelError):
    """A task tag is unknown or the fields a task needs are missing."""


class MissingDependency(TiercelError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str, purpose: str):
        super().__init__(f"{purpose} needs the '{module}' package; install it with: pip install 'tiercel[{extra}]'")


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or raise MissingDependency with the pip command that fixes it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependency(module.split(".")[0], extra, purpose) from err


def choose(what: str, value, choices) -> str:
    """`value` when it is one of `choices`, else ValueError naming them (a pydantic validator turns it into the
    field's error line)."""
    if value not in choices:
        raise ValueError(f"unknown {what} '{value}'; choose one of: {', '.join(choices)}")
    return value


class Terminated(Exception):
    """SIGTERM stopped a run at a safe point after saving what it had (training: a checkpoint of the last step).
    Not a user error: the CLI prints the line and exits TERMINATED (143), never 0."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(" ".join(str(message).split()))
        self.step = step

