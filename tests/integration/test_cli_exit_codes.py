"""Exit codes a script or a service manager can rely on: 0 only for success, 1 for a user error (one line),
2 for a usage error (one line, no traceback), `aborted` and an end by SIGINT (a shell's 130) for an interrupt,
a silent end by SIGPIPE (141) when what reads the output stopped reading.
test_cli_usage.py walks every command for the usage errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tiercel.cli import main


@pytest.mark.parametrize("args, message", [(["run", "x", "--bogus"], "No such option"), (["run"], "Missing argument")])
def test_a_usage_error_is_one_line_and_exit_2(args, message):
    """The real entry point in a subprocess (test_cli_usage.py calls main() in-process for every command)."""
    done = run_cli(*args)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: {message}") and done.stderr.endswith(" Try 'tiercel run --help' for help.\n")


def test_an_interrupt_in_a_command_exits_130_with_aborted(monkeypatch, capsys):
    import tiercel.data.synth as synth

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "generate", interrupted)
    assert main(["data", "synth", "--out", "unused", "--n", "42"]) == 130
    assert capsys.readouterr().err.strip() == "aborted"


def test_ctrl_c_stops_the_command_and_the_shell_loop_around_it_and_leaves_no_output(tmp_path):
    """Ctrl-C in a terminal reaches the whole foreground process group: here a shell running tiercel in a loop,
    and tiercel. tiercel prints `aborted`, publishes nothing and ends by SIGINT (the shell's $? is 130), so bash
    stops the loop; after a command that exits 130 by itself bash goes on with the next one."""
    loop = 'for i in 1 2; do "$0" -m tiercel data synth --out "$1/synth$i" --n 60000 --size 64 --workers 1; echo "rc $?"; done'
    # SIGINT at its default, as in a terminal: a shell's background job (`make test &`, CI runners) inherits it
    # ignored, and then no Ctrl-C reaches the command at all
    proc = subprocess.Popen(["bash", "-c", loop, sys.executable, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".synth1.tmp-") for p in tmp_path.iterdir()):  # generating by now
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out_text, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT and out_text == "", f"rc {proc.returncode}\nstdout: {out_text}\nstderr: {err}"
    assert err.strip().splitlines()[-1] == "aborted" and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary folder


def test_the_command_ends_by_sigint_or_sigpipe_after_130_or_141_and_exits_with_its_code_otherwise(monkeypatch):
    """entry() (the console script and `python -m tiercel`): main()'s code, except that after a Ctrl-C (130) the
    process ends by SIGINT and after a closed output pipe (141) by SIGPIPE, once every other exit handler has run."""
    import atexit

    import tiercel.cli as cli

    handlers, died = [], []
    monkeypatch.setattr(atexit, "register", handlers.append)  # none reaches the test process's own exit
    monkeypatch.setattr(cli, "_die_of", died.append)
    for code in (0, 1, 3, 143):
        monkeypatch.setattr(cli, "main", lambda code=code: code)
        with pytest.raises(SystemExit) as stop:
            cli.entry()
        assert stop.value.code == code
        handlers[-1]()
        assert died == []
    for code, signum in ((130, signal.SIGINT), (141, signal.SIGPIPE)):
        monkeypatch.setattr(cli, "main", lambda code=code: code)
        with pytest.raises(SystemExit) as stop:
            cli.entry()
        assert stop.value.code == code and died == []  # not before the other exit handlers
        handlers[-1]()
        assert died == [signum]
        died.clear()


@pytest.mark.parametrize("args", [["--help"], ["recipes", "show", "demo"]])
def test_output_into_a_pipe_nobody_reads_ends_by_sigpipe_silently(args):
    """`tiercel ... | head -n 1`: once head has exited, tiercel ends as the shell's other commands do, by SIGPIPE
    (the shell's 141, which `set -o pipefail` reports), with nothing on stderr. Before, Click exited 1 silently,
    the code of a user error without its line. The pipe's read end is closed before tiercel starts, so every
    write fails, whatever the timing."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "tiercel", *args], cwd=ROOT, stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (-signal.SIGPIPE, "")


def test_a_broken_pipe_inside_a_command_returns_141_and_prints_nothing(monkeypatch, capsys):
    import tiercel.data.synth as synth

    def reader_gone(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", sys.stdout)  # main() wraps the streams as Click does; undone after the test
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    monkeypatch.setattr(synth, "generate", reader_gone)
    assert main(["data", "synth", "--out", "unused", "--n", "42"]) == 141
    assert capsys.readouterr() == ("", "")


def test_a_full_disk_is_one_line_and_exit_1(monkeypatch, capsys):
    import errno

    import tiercel.data.synth as synth

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/synth/images/0001.png")

    monkeypatch.setattr(synth, "generate", full)
    assert main(["data", "synth", "--out", "unused", "--n", "42"]) == 1
    assert capsys.readouterr().err == (
        "error: /data/synth/images/0001.png: No space left on device; free space or choose another path\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_output_in_a_folder_without_permission_fails_before_the_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    done = run_cli("data", "synth", "--out", str(locked / "synth"), "--n", "42", "--size", "64")
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_json_naming_a_folder_is_refused_before_the_work(tmp_path):
    done = run_cli("data", "validate", str(tmp_path / "none.json"), "--json", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr == f"error: --json {tmp_path}: is a folder; give a file name, e.g. {tmp_path / 'results.json'}\n"


def test_an_output_folder_never_replaces_a_file(tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    done = run_cli("data", "synth", "--out", str(out), "--n", "42", "--size", "64", "--overwrite")
    assert done.returncode == 1 and done.stderr.startswith(f"error: {out}: ")
    assert out.read_text() == "mine"


@pytest.mark.parametrize("args, message", [  # the wording after the option's name is Click's or Typer's, by version
    (["run", "b", "--image", "i.png", "--task", "IMG_CAP", "--num-beams", "0"], "Invalid value for '--num-beams'"),
    (["run", "b", "--image", "i.png", "--task", "IMG_CAP", "--num-beams", "100000"], "Invalid value for '--num-beams'"),
    (["eval", "b", "--data", "d.json", "--max-new-tokens", "-5"], "Invalid value for '--max-new-tokens'"),
    (["quantize", "b", "--out", "q", "--max-drop", "2"], "--max-drop: Input should be less than or equal to 1"),
    (["data", "synth", "--out", "x", "--size", "100000"], "Invalid value for '--size'"),
    (["engines", "b", "--workspace-gb", "inf"], "Invalid value for '--workspace-gb'"),
    (["compare", "a.json", "b.json", "--bootstrap", "99999999999999999999"], "Invalid value for '--bootstrap'"),
    (["profile", "b", "--runs", "99999999999999999999"], "--runs: must be 1..100000"),
    (["quantize", "b", "--out", "q", "--n", "100000000000000000000"], "--n: Input should be less than or equal to 1000000"),
    (["engines", "b", "--workspace-gb", "nan"], "Invalid value for '--workspace-gb'"),
])
def test_negative_or_absurd_numbers_are_one_line_and_exit_1(args, message):
    done = run_cli(*args)
    assert done.returncode == 1 and done.stderr.startswith(f"error: {message}") and done.stderr.count("\n") == 1


def test_a_region_outside_the_image_names_the_option(bundle, tmp_path):
    from PIL import Image

    Image.new("RGB", (96, 64)).save(tmp_path / "a.png")
    done = run_cli("run", str(bundle), "--image", str(tmp_path / "a.png"), "--task", "REG_CLS_HBB",
                   "--region", "[10, 10, 5000, 20]")
    assert done.returncode == 1
    assert done.stderr == "error: --region: [10, 10, 5000, 20] lies outside the 96x64 image (x must be 0..96, y 0..64)\n"


def _one_line(capsys, args, message):
    """main() in-process: exit 1 and exactly `error: <message>` on stderr (nothing raised, so no traceback)."""
    capsys.readouterr()
    assert main([str(a) for a in args]) == 1, args
    assert capsys.readouterr().err == f"error: {message}\n"


def test_usage_errors_of_an_older_typers_click_are_exit_2(monkeypatch, capsys):
    """Typer < 0.26 raises the standalone package's exceptions (the venv's Typer raises its vendored copy's)."""
    click = pytest.importorskip("click")  # Typer >= 0.26 does not need it; transformers' huggingface_hub does

    import tiercel.cli as cli

    def bogus(**kwargs):
        raise click.exceptions.NoSuchOption("--bogus")

    monkeypatch.setattr(cli, "app", bogus)
    assert main(["run", "x", "--bogus"]) == 2
    err = capsys.readouterr().err  # "No such option: --bogus" or "No such option '--bogus'.", by Click version
    assert err.startswith("error: No such option") and "--bogus" in err and err.count("\n") == 1


@pytest.mark.parametrize("cause, code", [(KeyboardInterrupt, 130), (EOFError, 1)])
def test_an_older_typers_abort_is_130_for_ctrl_c_only(monkeypatch, capsys, cause, code):
    """Typer < 0.26 turns Ctrl-C (and EOF at a prompt) into Abort; only the interrupt is 130."""
    import typer

    import tiercel.cli as cli

    def interrupted(**kwargs):
        try:
            raise cause
        except cause as err:
            raise typer.Abort() from err

    monkeypatch.setattr(cli, "app", interrupted)
    assert main(["data", "synth", "--out", "x"]) == code
    assert capsys.readouterr().err == "aborted\n"


@pytest.mark.parametrize("args, message", [
    (["profile", "b", "--num-beams", "1000000"], "--num-beams: must be 1..32 (got 1000000)"),  # asked for 23 GB
    (["profile", "b", "--image-size", "100000000"], "--image-size: must be 16..16384 (got 100000000)"),
    (["profile", "b", "--threads", "0"], "--threads: must be 1..1024 (got 0)"),
    (["info", "tiny", "--prompt-tokens", "100000000000000"],
     "--prompt-tokens: must be 0..251: tiny has 256 text positions, 5 of them image tokens (got 100000000000000)"),
    (["info", "tiny", "--new-tokens", "100000"], "--new-tokens: must be 1..256, tiny's decoder positions (got 100000)"),
])
def test_absurd_numbers_the_library_checks_are_one_line(capsys, args, message):
    _one_line(capsys, args, message)


def test_beams_past_the_bound_are_refused_by_the_runtime_too(bundle):
    import tiercel.cli
    import tiercel.runtime as rt
    from tests.bundles import image
    from tiercel.errors import ConfigError
    from tiercel.runtime.generate import MAX_BEAMS

    assert tiercel.cli.MAX_BEAMS == MAX_BEAMS  # the CLI's copy (not imported, to keep `tiercel --help` light)
    with pytest.raises(ConfigError, match=r"^num_beams: must be 32 or less \(got 33\)$"):
        rt.load(bundle).run(image(), "IMG_CAP", num_beams=33, max_new_tokens=2)


@pytest.fixture()
def png(tmp_path):
    from PIL import Image

    Image.new("RGB", (96, 64)).save(tmp_path / "a.png")
    return tmp_path / "a.png"


@pytest.mark.parametrize("task, region, message", [
    ("REG_CLS_HBB", "[1, 2, 3]", "--region: must be a box [x1, y1, x2, y2] in pixels (got [1, 2, 3])"),
    ("REG_CLS_HBB", '"abc"', "--region: must be a box [x1, y1, x2, y2] in pixels (got 'abc')"),
    ("REG_CLS_OBB", "[[1, 2], [3, 4], [5, 6]]",
     "--region: must be a quad [[x, y] x 4] in pixels (got [[1, 2], [3, 4], [5, 6]])"),
    ("PIX_CLS", "[[1, 2], [3, 4]]",
     "--region: must be a polygon [[x, y], ...] with >= 3 points in pixels (got [[1, 2], [3, 4]])"),
    ("REG_CLS_HBB", "[0, 0, 1e999, 5]", "--region: [0, 0, inf, 5] lies outside the 96x64 image (x must be 0..96, y 0..64)"),
    ("REG_CLS_HBB", "[10, 10, 5, 20]", "--region: [10, 10, 5, 20] is an empty or inverted box; give [x1, y1, x2, y2] "
                                       "with x2 > x1 and y2 > y1"),
    ("REG_CAP", "[10, 10, 10, 10]", "--region: [10, 10, 10, 10] is an empty or inverted box; give [x1, y1, x2, y2] "
                                    "with x2 > x1 and y2 > y1"),
    ("REG_CAP", "[true, 0, 10, 10]", "--region: must be a box [x1, y1, x2, y2] in pixels, numbers not true/false "
                                     "(got [True, 0, 10, 10])"),
    ("PIX_CLS", "[[1, 2], [3, 4], [500, 6]]",
     "--region: [1, 2, 3, 4, 500, 6] lies outside the 96x64 image (x must be 0..96, y 0..64)"),
    ("IMG_CAP", "[1, 2, 3, 4]", "--region: IMG_CAP takes no region; drop --region or pick a region task such as REG_CAP"),
    ("REG_CLS_HBB", "[" * 100_000, "--region: not valid JSON (got '" + "[" * 57 + "...'); e.g. --region '[10, 20, 110, 90]'"),
])
def test_a_region_of_the_wrong_shape_names_the_option_before_the_model_loads(capsys, png, tmp_path, task, region, message):
    _one_line(capsys, ["run", tmp_path / "no-bundle", "--image", png, "--task", task, "--region", region], message)


def test_all_tasks_check_the_region_too(capsys, png, tmp_path):
    _one_line(capsys, ["run", tmp_path / "no-bundle", "--image", png, "--all", "--region", "[1, 2, 3]"],
              "--region: must be a box [x1, y1, x2, y2] in pixels (got [1, 2, 3])")


def test_a_number_past_pythons_digit_limit_is_one_line(capsys, tmp_path):
    huge = "9" * 5000  # Python refuses to read integers of more than 4300 digits
    (tmp_path / "huge.json").write_text(f"[{huge}]")
    (tmp_path / "huge.jsonl").write_text(f'{{"a": {huge}}}\n')
    (tmp_path / "rows.json").write_text(f'{{"predictions": [], "n": {huge}}}')
    _one_line(capsys, ["data", "validate", tmp_path / "huge.json"],
              f"{tmp_path / 'huge.json'}: record 0: invalid JSON (a number of more than 4300 digits)")
    _one_line(capsys, ["data", "validate", tmp_path / "huge.jsonl"],
              f"{tmp_path / 'huge.jsonl'}: line 1: invalid JSON (a number of more than 4300 digits)")
    _one_line(capsys, ["compare", tmp_path / "rows.json", tmp_path / "rows.json"],
              f"{tmp_path / 'rows.json'}: not valid JSON (a number of more than 4300 digits); give a file written by "
              "`tiercel eval --json`")


def test_a_recipe_that_is_not_text_is_one_line(capsys, tmp_path, png):
    _one_line(capsys, ["distill", png], f"{png}: not a text file (not UTF-8); give the recipe's YAML file")


def test_json_nested_too_deeply_is_one_line(capsys, tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000)
    (tmp_path / "deep.jsonl").write_text('{"a": 1}\n' + "[" * 100_000 + "\n")
    (tmp_path / "deep.yaml").write_text("[" * 100_000)
    _one_line(capsys, ["data", "validate", tmp_path / "deep.json"],
              f"{tmp_path / 'deep.json'}: record 0: invalid JSON (nested too deeply)")
    _one_line(capsys, ["data", "validate", tmp_path / "deep.jsonl"],
              f"{tmp_path / 'deep.jsonl'}: line 2: invalid JSON (nested too deeply)")
    _one_line(capsys, ["distill", tmp_path / "deep.yaml"], f"{tmp_path / 'deep.yaml'}: not valid YAML (nested too deeply)")
    _one_line(capsys, ["distill", tmp_path / "deep.yaml", "--set", "distill.steps=[[["],
              "--set distill.steps=[[[: the value is not valid YAML; e.g. --set distill.steps=100")


@pytest.mark.parametrize("change, message", [
    (lambda m: [m], "must hold a JSON object (got list); re-export the bundle"),
    (lambda m: {k: v for k, v in m.items() if k != "generation"}, "generation: Field required; re-export the bundle"),
    (lambda m: {**m, "preprocessing": {}}, "preprocessing.size: Field required; re-export the bundle"),
])
def test_a_manifest_of_the_wrong_shape_is_one_line_on_the_command_line(bundle, tmp_path, capsys, png, change, message):
    import json
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "manifest.json").write_text(json.dumps(change(json.loads((copy / "manifest.json").read_text()))))
    _one_line(capsys, ["run", copy, "--image", png, "--task", "IMG_CAP"], f"{copy / 'manifest.json'}: {message}")


def test_a_config_json_holding_a_list_is_one_line(tiny_checkpoint, tmp_path, capsys):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    (copy / "config.json").write_text("[1, 2]")
    _one_line(capsys, ["info", copy], f"{copy / 'config.json'}: must hold a JSON object (got list)")


def test_info_on_a_bundle_says_what_info_reads(bundle, capsys):
    _one_line(capsys, ["info", bundle], f"{bundle}: is a bundle; `tiercel info` reads a checkpoint folder or a preset "
              f"name (a bundle's model shape is in its manifest.json; `tiercel profile {bundle}` measures the bundle)")


@pytest.mark.parametrize("args, message", [
    (["demo", "--out", "{file}"], "{file}: is a file, not a folder; choose a folder path for the output"),
    (["eval", "b", "--data", "d.json", "--examples", "{file}"],
     "--examples {file}: is a file, not a folder; choose a folder path for the output"),
    (["profile", "b", "--plot", "{dir}"], "--plot {dir}: is a folder; give a file name, e.g. {dir}/profile.png"),
    (["profile", "b", "--plot", "{dir}/p.jpg"],
     "--plot {dir}/p.jpg: the chart is written as PNG (or SVG or PDF); give a path ending in .png, e.g. {dir}/p.png"),
    (["profile", "b", "--plot", "{dir}/p.png", "--json", "{dir}/p.png"],
     "--plot {dir}/p.png: is the --json file {dir}/p.png, which the output would replace; choose another path"),
    (["eval", "b", "--data", "d.json", "--json", "{dir}/r.json", "--examples", "{dir}/r.json/png"],
     "--examples {dir}/r.json/png: is the --json file {dir}/r.json or lies inside it, which the output would "
     "replace; choose another path"),
    (["eval", "b", "--data", "{dir}", "--json", "{dir}/r.json"],
     "{dir}: is a folder; give the Falcon_SFT JSON file in it (e.g. {dir}/test.json)"),
    (["profile", "{file}"], "{file}: is a file; give a bundle or checkpoint folder"),
    (["data", "validate", "{file}", "--root", "{file}"],
     "{file}: is a file; give the folder the records' image paths are relative to"),
])
def test_an_output_of_the_wrong_kind_is_refused_before_the_work(tmp_path, capsys, args, message):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    fill = {"file": file, "dir": tmp_path}
    _one_line(capsys, [a.format(**fill) for a in args], message.format(**fill))
    assert file.read_text() == "mine"


def test_an_examples_folder_holding_someone_elses_png_of_an_example_name_is_refused(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "png"
    folder.mkdir()
    Image.new("RGB", (4, 4), "blue").save(folder / "08_REG_DET_HBB_3.png")
    before = (folder / "08_REG_DET_HBB_3.png").read_bytes()
    _one_line(capsys, ["eval", "b", "--data", "d.json", "--examples", folder],  # before the bundle or data is read
              f"--examples {folder}: 08_REG_DET_HBB_3.png was not written by tiercel and an example of that name "
              "would replace it; choose another folder or move the file yourself")
    assert (folder / "08_REG_DET_HBB_3.png").read_bytes() == before


def test_an_output_is_never_its_own_input(tiny_checkpoint, tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    before = sorted((p.name, p.stat().st_size) for p in ckpt.iterdir())
    _one_line(capsys, ["export", ckpt, "--out", ckpt, "--overwrite"],
              f"{ckpt}: is the checkpoint being exported {ckpt}, which the output would replace; choose another path")
    _one_line(capsys, ["convert", ckpt, tmp_path, "--overwrite"],
              f"{tmp_path}: is the checkpoint being converted {ckpt} or holds it, which the output would replace; "
              "choose another path")
    assert sorted((p.name, p.stat().st_size) for p in ckpt.iterdir()) == before


def test_an_overwrite_never_replaces_a_folder_whose_marker_is_someone_elses(tiny_checkpoint, tmp_path, capsys):
    web = tmp_path / "web"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "my web app"}')
    (web / "index.html").write_text("<html>")
    _one_line(capsys, ["export", tiny_checkpoint, "--out", web, "--overwrite"],
              f"{web}: holds files tiercel did not write (its manifest.json is not tiercel's), so it is not replaced "
              "even with --overwrite; choose another output path, or empty it yourself")
    assert (web / "index.html").read_text() == "<html>"


def test_an_existing_output_is_refused_before_the_checkpoint_loads(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import tiercel.models.checkpoint as checkpoint

    def never(*args, **kwargs):
        raise AssertionError("loaded the weights before checking the output")

    monkeypatch.setattr(checkpoint, "load_checkpoint", never)
    (tmp_path / "out").mkdir()
    message = f"{tmp_path / 'out'}: already exists; choose another output path or pass --overwrite"
    _one_line(capsys, ["export", tiny_checkpoint, "--out", tmp_path / "out"], message)
    _one_line(capsys, ["convert", tiny_checkpoint, tmp_path / "out"], message)


def test_an_unwritable_output_is_refused_before_the_work(bundle, tmp_path, capsys, monkeypatch):
    """Read-only or no permission (os.access says no; faked, so the test holds when run as root too)."""
    import tiercel.fileio as fileio
    import tiercel.quantize.bundle as qbundle

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(fileio.os, "access", lambda path, mode: Path(path) != locked)
    monkeypatch.setattr(qbundle, "read_bundle", lambda *a: pytest.fail("read the bundle before checking --out"))
    _one_line(capsys, ["quantize", bundle, "--out", locked / "q", "--scheme", "int8-dynamic"],
              f"{locked / 'q'}: no permission to write in {locked}; choose another path")
    _one_line(capsys, ["eval", bundle, "--data", "d.json", "--examples", locked / "png"],
              f"--examples {locked / 'png'}: no permission to write in {locked}; choose another path")
