"""Exit codes a script or a service manager can rely on: 0 only for success, 1 for a user error (one line),
2 for a usage error (Click's short message, no traceback), 130 with `aborted` for an interrupt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_cli
from tiercel.cli import main


@pytest.mark.parametrize("args, message", [
    (["run", "x", "--bogus"], "No such option: --bogus"),
    (["run"], "Missing argument"),
])
def test_a_usage_error_is_a_short_message_and_exit_2(args, message):
    done = run_cli(*args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert "Try 'tiercel run --help' for help." in done.stderr


def test_an_interrupt_in_a_command_exits_130_with_aborted(monkeypatch, capsys):
    import tiercel.data.synth as synth

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "generate", interrupted)
    assert main(["data", "synth", "--out", "unused", "--n", "42"]) == 130
    assert capsys.readouterr().err.strip() == "aborted"


def test_ctrl_c_on_a_running_command_exits_130_and_leaves_no_output(tmp_path):
    out = tmp_path / "synth"
    cmd = [sys.executable, "-m", "tiercel", "data", "synth", "--out", str(out), "--n", "60000", "--size", "64",
           "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".synth.tmp-") for p in tmp_path.iterdir()):  # generating by now
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "aborted" and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary folder
