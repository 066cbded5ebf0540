"""The `tiercel` command. One module per verb; each parses, validates and calls one library function.

Errors: a TiercelError prints as one line on stderr and exits 1. TIERCEL_DEBUG=1 re-raises it so the
traceback shows. Verb modules import heavy libraries (torch, onnx) inside their commands, so
`tiercel --help` stays fast. Progress of long stages shows on stderr for every command (tiercel.progress);
results go to stdout.
"""

from __future__ import annotations

import errno
import os
import sys

import typer

from tiercel.cli.app import BACKEND_OPTION, MAX_BEAMS, app  # noqa: F401  (the app; shared options)
from tiercel.errors import Terminated, TiercelError


def _register():
    # Each verb module adds its commands to `app` (or a sub-app) on import.
    from tiercel.cli import (  # noqa: F401
        compare,
        convert,
        data,
        distill,
        engines,
        eval,
        export,
        info,
        pipeline,
        profile,
        quantize,
        recipes,
        run,
    )


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the Typer app. A TiercelError or a value out of range prints one line and exits 1, a usage
    error one line and 2, an interrupt `aborted` and 130, a SIGTERM a training run stopped for one line and 143
    (never 0: a killed job did not succeed), an output pipe closed by its reader nothing and 141."""
    from tiercel import progress

    with progress.catching_ctrl_c() as ctrl_c:
        code = _run(argv)
        lost = ctrl_c.is_set() and code == 0
    if lost:  # a Ctrl-C that Python dropped on the way (tiercel.progress): not a success
        print("aborted", file=sys.stderr)
        return INTERRUPTED
    return code


def _run(argv: list[str] | None) -> int:
    from tiercel import progress

    try:
        with progress.shown():  # long stages show bars on stderr; a command's --quiet turns them off
            code = app(args=argv, prog_name="tiercel", standalone_mode=False)  # the command's value or Typer's exit code
    except TiercelError as err:
        if os.environ.get("TIERCEL_DEBUG") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except SystemExit as stop:  # Click's answer to a closed output pipe: exit(1), its streams silenced
        if not _broken_pipe(stop.__context__):
            raise
        return BROKEN_PIPE
    except OSError as err:  # a full disk or a read-only folder is the user's to fix, not a tiercel bug
        if _broken_pipe(err):  # closed while Click was not around the work (its streams' last flush, say)
            _silence_streams()
            return BROKEN_PIPE
        if err.errno not in _USER_OS_ERRORS or os.environ.get("TIERCEL_DEBUG") == "1":
            raise
        where = f"{err.filename}: " if err.filename else ""
        remedy = "free space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "check its permissions"
        print(f"error: {where}{err.strerror}; {remedy} or choose another path", file=sys.stderr)
        return 1
    except typer.Exit as exc:
        code = exc.exit_code
    except Terminated as stop:  # SIGTERM, handled where work can stop safely (training: after a checkpoint)
        print(f"stopped: {stop}", file=sys.stderr)
        return TERMINATED
    except KeyboardInterrupt:
        code = INTERRUPTED
    except typer.Abort as exc:  # older Click turns Ctrl-C into Abort; EOF at a prompt too
        print("aborted", file=sys.stderr)
        return INTERRUPTED if isinstance(exc.__context__, KeyboardInterrupt) else 1
    except _click_errors("ClickException") as exc:
        return _click_error(exc)
    code = code if isinstance(code, int) else 0
    if code == INTERRUPTED:
        print("aborted", file=sys.stderr)
    return code


def entry() -> None:
    """The `tiercel` command (its console script and `python -m tiercel`): main(), then exit with its code. After
    a Ctrl-C (main() returned 130, `aborted` printed) the process ends by SIGINT itself, as Python does after an
    uncaught KeyboardInterrupt: a shell reports 130 either way, but a shell script that runs tiercel in a loop
    stops only when its command died of SIGINT; an exit(130) of its own tells bash the command handled the
    Ctrl-C, and the loop goes on to the next file. It also makes the exit the same every time: Python ends a
    `python -m` process by SIGINT anyway when the KeyboardInterrupt had passed through an exec() of a string
    (a dataclass being built, say) before tiercel caught it. After its output's reader went away (main() returned
    141: `tiercel run ... | head`) it ends by SIGPIPE, silently, as the shell's other commands do."""
    import atexit
    import signal

    ending = []
    atexit.register(lambda: ending and _die_of(ending[0]))  # registered first, so it runs after the others
    code = main()
    if code in (INTERRUPTED, BROKEN_PIPE):
        ending.append({INTERRUPTED: signal.SIGINT, BROKEN_PIPE: signal.SIGPIPE}[code])
    sys.exit(code)


def _die_of(signum: int) -> None:
    import signal

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
TERMINATED = 143  # 128 + SIGTERM
BROKEN_PIPE = 141  # 128 + SIGPIPE: what reads stdout (or stderr) stopped reading
_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _broken_pipe(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EPIPE


def _silence_streams() -> None:
    """What Click does on a broken pipe: later flushes of stdout and stderr (Python's own at exit) drop what they
    cannot write instead of printing a BrokenPipeError."""
    try:
        from typer._click.utils import PacifyFlushWrapper  # Typer >= 0.26 vendors its Click
    except ImportError:
        from click.utils import PacifyFlushWrapper

    sys.stdout, sys.stderr = PacifyFlushWrapper(sys.stdout), PacifyFlushWrapper(sys.stderr)


def _click_error(exc: Exception) -> int:
    """Click's error as one line on stderr and its exit code. A value out of its range is a user error (1); an
    unknown option, a missing argument or an extra one is a usage error (2) that names the command's --help."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # Click >= 8.2: a group called bare; its help is the answer
        exc.show()
        return exc.exit_code
    message = " ".join(exc.format_message().split())
    if isinstance(exc, _click_errors("BadParameter")) and not isinstance(exc, _click_errors("MissingParameter")):
        print(f"error: {message}", file=sys.stderr)
        return 1
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += ("" if message.endswith((".", "?", "!")) else ".") + f" Try '{ctx.command_path} --help' for help."
    print(f"error: {message}", file=sys.stderr)
    return exc.exit_code


def _click_errors(name: str) -> tuple[type[Exception], ...]:
    """Click's exception class `name` from every Click this Typer may use: Typer >= 0.26 vendors its own
    (typer._click), older ones use the standalone package."""
    import importlib

    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


if __name__ == "__main__":
    sys.exit(main())
