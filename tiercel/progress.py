"""Progress of long work on stderr: a rich bar on a terminal, a plain line every so often elsewhere, or nothing.

Library code opens a bar around its loop and advances it; whether anything shows is the caller's choice. The
`tiercel` command turns progress on for the command it runs (`shown()`); used as a library, tiercel stays
silent. The switch is ambient (a context variable), not an argument, so that deep call chains (quantize ->
calibration -> runtime generation) need not thread a flag through modules that do not care about it.

    with progress.track("distill", total=400, unit="steps") as bar:
        for step in range(400):
            ...
            bar.advance(1, note=f"loss {loss:.3f}")

On a terminal: description, bar, done/total, rate and ETA, redrawn in place. Elsewhere (a log file, CI, `make
demo | tee`): `[distill] 120/400 steps, 6.8 steps/s, ETA 41 s, loss 2.103` at most every `interval` seconds
(TIERCEL_PROGRESS_INTERVAL, default 15), and one final line when the bar closes. Everything goes to stderr,
never stdout, where commands print JSON. `scope("teacher")` prefixes labels (`[teacher/distill] ...`).

Knows nothing about torch or the stages; rich is imported only when a terminal shows a bar, and no thread is
started (the synthetic benchmark forks workers while its bar is up).

Every bar update is also where a Ctrl-C that got lost is delivered again (`catching_ctrl_c`, `interrupted`):
Python raises KeyboardInterrupt from its signal handler wherever the main thread is, and one raised inside a
__del__, a weakref callback or another finalizer is printed and dropped, so the command would go on and exit 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TextIO

DEFAULT_INTERVAL = 15.0  # seconds between plain lines
_REDRAW = 0.1  # seconds between terminal redraws: a bar advanced 10,000 times a second costs little


@dataclass
class _Display:
    """Where bars go; shared by every scope of one `shown()`."""

    stream: TextIO
    tty: bool
    interval: float
    clock: Callable[[], float]
    live: object = None  # the rich Progress while a terminal bar is open
    open_bars: int = 0
    drawn: float = float("-inf")


@dataclass(frozen=True)
class _State:
    display: _Display
    scope: tuple[str, ...] = field(default=())


_state: ContextVar[_State | None] = ContextVar("tiercel_progress", default=None)


class _Flag:
    """A Ctrl-C flag a signal handler can set: a plain attribute write (threading.Event.set takes a lock, which
    the interrupted main thread may hold at that moment)."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def clear(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value


_ctrl_c = _Flag()  # set by catching_ctrl_c's handler, cleared when its block ends


@contextlib.contextmanager
def catching_ctrl_c():
    """While the block runs, Ctrl-C raises KeyboardInterrupt as Python's own handler does and also sets a flag that
    stays set until the block ends: yields it (is_set() reads it). Bars then raise KeyboardInterrupt again at their
    next update if the first one was lost (module docstring), and the `tiercel` command does not exit 0 once it is
    set. Where SIGINT is not Python's default handler (ignored, as in a shell's background job) or off the main
    thread, nothing changes and the flag never sets."""
    _ctrl_c.clear()
    previous = signal.getsignal(signal.SIGINT)
    installed = False
    if previous is signal.default_int_handler and threading.current_thread() is threading.main_thread():
        def on_ctrl_c(signum, frame):
            _ctrl_c.set()
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_ctrl_c)
        installed = True
    try:
        yield _ctrl_c
    finally:
        _ctrl_c.clear()
        if installed:
            signal.signal(signal.SIGINT, previous)


def interrupted() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came (catching_ctrl_c) and none is on its way up now: called by every
    bar update, so long work stops at its next unit even when the first KeyboardInterrupt was dropped. During
    the unwinding of an exception (cleanup that updates a bar) and off the main thread it does nothing."""
    if _ctrl_c.is_set() and sys.exc_info()[0] is None and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt


@contextlib.contextmanager
def shown(enabled: bool = True, stream: TextIO | None = None, interval: float | None = None,
          clock: Callable[[], float] | None = None, tty: bool | None = None):
    """Show the bars opened inside this block (or none, with `enabled=False`: a command's --quiet).

    Args:
        stream: where they go (default sys.stderr).
        interval: seconds between plain lines (default TIERCEL_PROGRESS_INTERVAL or 15).
        clock: seconds, monotonic (default time.perf_counter); tests pass a fake one.
        tty: draw a rich bar (default: whether `stream` is a terminal).
    """
    state = None
    if enabled:
        stream = stream or sys.stderr
        tty = _isatty(stream) if tty is None else tty
        state = _State(_Display(stream, tty, _interval() if interval is None else interval, clock or time.perf_counter))
    token = _state.set(state)
    try:
        yield
    finally:
        _state.reset(token)


@contextlib.contextmanager
def scope(name: str):
    """Prefix the labels of the bars opened inside this block with `name` (a pipeline stage)."""
    state = _state.get()
    token = _state.set(replace(state, scope=state.scope + (name,)) if state else None)
    try:
        yield
    finally:
        _state.reset(token)


def active() -> bool:
    """Whether bars show here: worth a little work to learn a total (counting records) only then."""
    return _state.get() is not None


def track(label: str, total: int | None = None, unit: str = "items", completed: int = 0, enabled: bool = True):
    """A bar over `total` `unit` (None: unknown, no ETA), starting at `completed` (a resumed run).

    Use it as a context manager; a bar left by an exception writes no final line. Nothing shows unless a
    caller turned progress on (`shown`) and `enabled` (False: a process other than rank 0, say).
    """
    state = _state.get()
    if state is None or not enabled:
        return _Silent()
    label = "/".join(state.scope if label in state.scope else state.scope + (label,))  # [eval/student], not [eval/student/eval]
    return (_TerminalBar if state.display.tty else _PlainBar)(state.display, label, total, unit, completed)


class _Silent:
    """The bar when progress is off: every call does nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n: int = 1, note: str | None = None) -> None:
        interrupted()

    def update(self, completed: int | None = None, total: int | None = None, note: str | None = None) -> None:
        interrupted()

    def close(self, ok: bool = True) -> None:
        pass


class _Bar(_Silent):
    def __init__(self, display: _Display, label: str, total: int | None, unit: str, completed: int):
        self.display, self.label, self.total, self.unit = display, label, total, unit
        self.completed = self.start = completed
        self.note = None
        self.t0 = display.clock()
        self.closed = False

    def __exit__(self, exc_type, *exc):
        self.close(ok=exc_type is None)
        return False

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """`n` more done; `note` says what is under way (shown until the next note, not in the final line)."""
        self.update(self.completed + n, note=note)

    def update(self, completed: int | None = None, total: int | None = None, note: str | None = None) -> None:
        interrupted()
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        self._changed()

    def rate(self, now: float) -> float | None:
        """Units per second since the bar opened (a resumed run's earlier units do not count)."""
        elapsed, done = now - self.t0, self.completed - self.start
        return done / elapsed if elapsed > 0 and done > 0 else None

    def stats(self, now: float) -> list[str]:
        """`6.8 steps/s`, `ETA 41 s` (once there is a rate; the ETA once the total is known)."""
        rate = self.rate(now)
        if not rate:
            return []
        eta = self.total is not None and self.total > self.completed
        return [_rate(rate, self.unit)] + ([f"ETA {duration((self.total - self.completed) / rate)}"] if eta else [])

    def _changed(self) -> None:
        raise NotImplementedError


class _PlainBar(_Bar):
    """`[label] done/total unit, rate, ETA, note` lines, at most one per `interval` seconds."""

    def __init__(self, *args):
        super().__init__(*args)
        self.written = self.t0

    def _changed(self) -> None:
        now = self.display.clock()
        finished = self.total is not None and self.completed >= self.total  # the final line says it
        if now - self.written >= self.display.interval and not finished:
            self.written = now
            self._write(self.line(now))

    def line(self, now: float) -> str:
        head = f"[{self.label}] {_count(self.completed, self.total)} {self.unit}"
        return ", ".join([head] + self.stats(now) + ([self.note] if self.note else []))

    def final(self, now: float) -> str:
        """The closing line: counts, time and rate; no note (it says what was under way, which is over)."""
        rate = self.rate(now)
        text = f"[{self.label}] {_count(self.completed, self.total)} {self.unit} in {duration(now - self.t0)}"
        return ", ".join([text] + ([_rate(rate, self.unit)] if rate else []))

    def close(self, ok: bool = True) -> None:
        if not self.closed and ok:
            self._write(self.final(self.display.clock()))
        self.closed = True

    def _write(self, text: str) -> None:
        self.display.stream.write(text + "\n")
        self.display.stream.flush()


class _TerminalBar(_Bar):
    """One task of the display's rich Progress, which lives while any bar is open (bars may nest)."""

    def __init__(self, *args):
        super().__init__(*args)
        d = self.display
        if d.live is None:
            d.live = _rich_progress(d)
            d.live.start()
        d.open_bars += 1
        self.task = d.live.add_task(self.label, total=self.total, completed=self.completed, stats="")
        self._draw(force=True)

    def _changed(self) -> None:
        stats = self.stats(self.display.clock()) + ([self.note] if self.note else [])
        self.display.live.update(self.task, completed=self.completed, total=self.total, stats=", ".join(stats))
        self._draw()

    def _draw(self, force: bool = False) -> None:
        d = self.display
        now = d.clock()
        if force or now - d.drawn >= _REDRAW:
            d.drawn = now
            d.live.refresh()

    def close(self, ok: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        d = self.display
        self._draw(force=True)
        d.open_bars -= 1
        if d.open_bars == 0:  # the finished bars stay on screen as a record of the run
            d.live.stop()
            d.live = None


def _rich_progress(d: _Display):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(file=d.stream, force_terminal=True, highlight=False)
    # no refresh thread (auto_refresh=False): bars redraw when they advance; stdout is left alone (JSON goes there).
    # Rate and ETA are the bar's own (stats), the same numbers the plain lines show.
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                    console=console, auto_refresh=False, redirect_stdout=False, get_time=d.clock)


def duration(seconds: float) -> str:
    """`41 s`, `12 min`, `2.5 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _rate(rate: float, unit: str) -> str:
    """`6.8 steps/s`, or for slow work `12.5 s/step`."""
    if rate >= 1:
        return f"{rate:.0f} {unit}/s" if rate >= 100 else f"{rate:.1f} {unit}/s"
    return f"{1 / rate:.1f} s/{unit[:-1] if unit.endswith('s') else unit}"


def _count(done: int, total: int | None) -> str:
    return f"{done}" if total is None else f"{done}/{total}"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("TIERCEL_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False
