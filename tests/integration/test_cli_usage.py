"""Usage errors on every command: an unknown option, or a required argument left out, is one line on stderr, nothing
on stdout, and exit 2. The commands are discovered from the Typer app, so a new verb is covered when it is added.

main() is called in-process: the console script's entry point (tiercel.cli:entry) calls it, and the real process is
checked once in test_cli_exit_codes.py. Typer builds the same Click command tree for both.
"""

from __future__ import annotations

import pytest
import typer.main

from tiercel.cli import app, main


def _walk(command, path: tuple[str, ...] = ()):
    """(argv prefix, Click command) for the app and every group and command below it."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


COMMANDS = dict(_walk(typer.main.get_command(app)))
REQUIRED = [path for path, command in COMMANDS.items() if any(p.required for p in command.params)]


def _name(path):
    return " ".join(("tiercel", *path))


def _one_usage_line(capsys, path, argv, says):
    """Click's wording varies by version (`No such option: --bogus`, `No such option '--bogus'.`): the test pins
    the shape, one line that names the problem and the command's --help."""
    assert main(argv) == 2, argv
    out, err = capsys.readouterr()
    assert out == "", argv
    assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
    assert err.endswith(f" Try '{_name(path)} --help' for help.\n"), err


def test_the_walk_finds_every_verb_and_sub_command():
    assert {("run",), ("demo",), ("data", "synth"), ("distill", "train"), ("recipes", "copy")} <= set(COMMANDS)
    assert {("run",), ("data", "validate"), ("distill", "cache-teacher"), ("recipes", "show")} <= set(REQUIRED)


@pytest.mark.parametrize("path", list(COMMANDS), ids=_name)
def test_an_unknown_option_is_one_line_and_exit_2(capsys, path):
    _one_usage_line(capsys, path, [*path, "--bogus"], "--bogus")


@pytest.mark.parametrize("path", REQUIRED, ids=_name)
def test_a_missing_argument_is_one_line_and_exit_2(capsys, path):
    _one_usage_line(capsys, path, list(path), "Missing")
