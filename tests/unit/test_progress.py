"""tiercel.progress: plain lines off a terminal with counts, rate and ETA from the clock; nothing when off."""

from __future__ import annotations

import io

import pytest

from tiercel import progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_interval_with_rate_and_eta_then_a_final_line():
    out, clock = io.StringIO(), FakeClock()
    with progress.shown(stream=out, interval=10, clock=clock):
        with progress.track("distill", total=400, unit="steps") as bar:
            for _ in range(40):  # 40 steps over 8 s: no line yet
                clock.now += 0.2
                bar.advance(1)
            assert out.getvalue() == ""
            for _ in range(80):  # passes 10 s at step 50, and 20 s at step 100
                clock.now += 0.2
                bar.advance(1, note="loss 2.103")
    lines = out.getvalue().splitlines()
    assert lines == [
        "[distill] 50/400 steps, 5.0 steps/s, ETA 70 s, loss 2.103",
        "[distill] 100/400 steps, 5.0 steps/s, ETA 60 s, loss 2.103",
        "[distill] 120/400 steps in 24 s, 5.0 steps/s",
    ]


def test_resumed_bar_rates_only_its_own_steps_and_slow_work_reads_seconds_per_unit():
    out, clock = io.StringIO(), FakeClock()
    with progress.shown(stream=out, interval=30, clock=clock):
        with progress.track("distill", total=10, unit="steps", completed=6) as bar:
            clock.now += 40
            bar.advance(1)  # 1 step in 40 s since the resume, 3 to go
            clock.now += 40
            bar.advance(3)
    assert out.getvalue().splitlines() == ["[distill] 7/10 steps, 40.0 s/step, ETA 2 min",
                                           "[distill] 10/10 steps in 80 s, 20.0 s/step"]


def test_unknown_total_has_no_eta_and_scope_prefixes_the_label():
    out, clock = io.StringIO(), FakeClock()
    with progress.shown(stream=out, interval=5, clock=clock), progress.scope("teacher"):
        with progress.track("eval", unit="records") as bar:
            clock.now += 5
            bar.update(completed=30)
        with progress.track("teacher", total=2) as bar:  # a bar named like its scope is not named twice
            bar.advance(2)
    assert out.getvalue().splitlines() == ["[teacher/eval] 30 records, 6.0 records/s",
                                           "[teacher/eval] 30 records in 5 s, 6.0 records/s",
                                           "[teacher] 2/2 items in 0 s"]


def test_quiet_and_library_use_write_nothing(capsys):
    out, clock = io.StringIO(), FakeClock()
    with progress.track("synth", total=3) as bar:  # nobody turned progress on: a library call
        bar.advance(3)
    with progress.shown(False, stream=out, clock=clock):  # --quiet
        assert not progress.active()
        with progress.track("synth", total=3) as bar:
            clock.now += 60
            bar.advance(3)
    with progress.shown(stream=out, interval=0, clock=clock), progress.track("x", total=3, enabled=False) as bar:
        bar.advance(3)  # a rank other than 0
    assert out.getvalue() == ""
    assert capsys.readouterr() == ("", "")


def test_a_bar_left_by_an_error_writes_no_final_line():
    out = io.StringIO()
    with pytest.raises(RuntimeError), progress.shown(stream=out, clock=FakeClock()):
        with progress.track("export", total=4, unit="graphs") as bar:
            bar.advance(1)
            raise RuntimeError("boom")
    assert out.getvalue() == ""


def test_terminal_bar_draws_on_the_stream_only(capsys):
    out, clock = io.StringIO(), FakeClock()
    with progress.shown(stream=out, clock=clock, tty=True):
        with progress.track("calibrate", total=4, unit="samples") as outer:
            with progress.track("guard", total=2, unit="samples") as inner:  # bars may nest
                clock.now += 1
                inner.advance(2)
            clock.now += 1
            outer.advance(4)
    text = out.getvalue()
    assert "calibrate" in text and "guard" in text and "4/4" in text and "samples/s" in text
    assert capsys.readouterr().out == ""


def test_synth_cli_keeps_progress_on_stderr_and_stdout_for_results(tmp_path):
    from tests.conftest import run_cli

    done = run_cli("data", "synth", "--out", str(tmp_path / "s"), "--n", "42", "--size", "64", "--workers", "1",
                   env={"TIERCEL_PROGRESS_INTERVAL": "0"})
    assert done.returncode == 0, done.stderr
    assert "[synth] " in done.stderr and "42/42 records in" in done.stderr
    assert "[synth]" not in done.stdout and "wrote" in done.stdout



@pytest.fixture
def python_sigint():
    """SIGINT at Python's own handler for the test, as in a terminal: a shell's background job (a CI runner started
    with `&`) inherits it ignored, and catching_ctrl_c then rightly leaves it alone."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _dropped_ctrl_c() -> None:
    """Ctrl-C as Python delivers it inside a finalizer: the handler raises, and the exception is lost."""
    import signal

    try:
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
    except KeyboardInterrupt:
        pass


def test_a_dropped_ctrl_c_stops_the_work_at_the_next_bar_update(python_sigint):
    with progress.catching_ctrl_c() as flag:
        bar = progress.track("render", 10)  # progress off: a silent bar checks too
        bar.advance()
        _dropped_ctrl_c()
        assert flag.is_set()
        with pytest.raises(KeyboardInterrupt):
            bar.advance()
        try:  # cleanup that updates a bar while the interrupt unwinds does not raise a second one
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.update(completed=3)
    assert not flag.is_set()  # cleared when the block ends: the next command starts clean
    bar.advance()


def test_a_dropped_ctrl_c_after_the_last_bar_update_publishes_no_output(tmp_path, python_sigint):
    from tiercel.fileio import atomic_dir, write_json

    with progress.catching_ctrl_c():
        _dropped_ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            write_json(tmp_path / "result.json", {"complete": False})
        with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "bundle") as tmp:
            (tmp / "model.onnx").write_bytes(b"half")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temporary left behind
    write_json(tmp_path / "result.json", {"complete": True})  # outside the block: written as usual
    assert (tmp_path / "result.json").is_file()


def test_a_command_that_swallowed_ctrl_c_exits_130_not_0(monkeypatch, capsys, python_sigint):
    import tiercel.data.synth as synth
    from tiercel.cli import main

    def generate(*args, **kwargs):  # finishes as if nothing happened
        _dropped_ctrl_c()
        return {"counts": {"train": {"IMG_CLS": 1}}, "images": {"train": 1}}

    monkeypatch.setattr(synth, "generate", generate)
    assert main(["data", "synth", "--out", "unused", "--n", "42"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "aborted"
    monkeypatch.setattr(synth, "generate", lambda *a, **k: {"counts": {}, "images": {}})
    assert main(["data", "synth", "--out", "unused", "--n", "42"]) == 0  # the next command starts clean
