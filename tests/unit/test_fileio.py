"""Crash-safe outputs: the old or the new output under its name at every moment, leftovers of a killed run
tidied by the next run, fsync before rename, and permissions that follow the umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tiercel import fileio
from tiercel.errors import TiercelError
from tiercel.fileio import atomic_dir, atomic_write_text


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write(dst, text, overwrite=True):
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        (tmp / "model.onnx").write_text(text)


@pytest.mark.parametrize("mask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600), (0o002, 0o775, 0o664)])
def test_outputs_follow_the_umask(tmp_path, mask, dir_mode, file_mode):
    old = os.umask(mask)
    try:
        _write(tmp_path / "bundle", "graph")
        atomic_write_text(tmp_path / "manifest.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "bundle" / "model.onnx").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == file_mode


def test_a_failed_swap_puts_the_old_output_back(tmp_path, monkeypatch):
    dst = tmp_path / "bundle"
    _write(dst, "old")
    real, calls = os.replace, []

    def second_rename_fails(src, to):
        calls.append(1)
        if len(calls) == 2:  # old -> aside worked; new -> dst dies
            raise OSError("disk full")
        return real(src, to)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="disk full"):
        _write(dst, "new")
    monkeypatch.undo()
    assert (dst / "model.onnx").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_the_next_run_puts_back_an_output_a_killed_run_left_aside(tmp_path):
    dst = tmp_path / "bundle"
    pid = _dead_pid()
    aside = tmp_path / f".bundle.old-{pid}-abc123"  # killed between its two renames
    aside.mkdir()
    (aside / "model.onnx").write_text("old")
    (tmp_path / f".bundle.tmp-{pid}-xyz").mkdir()  # its new output, unfinished
    with pytest.raises(TiercelError, match="bundle: already exists"):
        _write(dst, "new", overwrite=False)
    assert (dst / "model.onnx").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_only_leftovers_of_dead_runs_of_the_same_output_are_removed(tmp_path):
    dead = _dead_pid()
    keep = [f".bundle.tmp-{os.getppid()}-a", f".other.tmp-{dead}-b", f".bundle.tmpx-{dead}-c", "notes.txt", f"bundle.tmp-{dead}-d"]
    for name in keep:
        (tmp_path / name).mkdir()
    (tmp_path / f".bundle.tmp-{dead}-e").mkdir()
    (tmp_path / f".bundle.old-{dead}-f").mkdir()  # an older output left aside while the newer one is in place
    _write(tmp_path / "bundle", "new")
    _write(tmp_path / "bundle", "newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["bundle"])
    assert (tmp_path / "bundle" / "model.onnx").read_text() == "newer"


def test_files_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("rename") or real_replace(a, b))
    atomic_write_text(tmp_path / "a.json", "{}")
    assert events[:2] == ["fsync", "rename"]
    events.clear()
    _write(tmp_path / "bundle", "graph")
    assert events.index("rename") > events.index("fsync")


def test_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert fileio.umask() == 0o027 and fileio.umask() == 0o027
    finally:
        os.umask(old)


def test_a_temporary_output_of_another_process_is_never_a_finished_one(tmp_path):
    killed, running = tmp_path / f".bundle.tmp-{_dead_pid()}-ab12_x", tmp_path / f".bundle.tmp-{os.getppid()}-ab12"
    assert fileio.is_temporary(killed) and fileio.is_leftover(killed)
    assert fileio.is_temporary(running) and not fileio.is_leftover(running)  # still being written: not yet a bundle
    assert not fileio.is_temporary(tmp_path / f".bundle.tmp-{os.getpid()}-ab12")  # export's parity check reads its own
    assert not fileio.is_temporary(tmp_path / "bundle") and not fileio.is_temporary(tmp_path / f".bundle.old-{_dead_pid()}-ab")


def test_the_temporary_folder_is_hidden_and_removed_when_the_work_fails(tmp_path):
    seen = []
    with pytest.raises(RuntimeError, match="parity failed"), atomic_dir(tmp_path / "bundle") as tmp:
        seen.append(tmp)
        (tmp / "manifest.json").write_text("{}")
        assert fileio.is_temporary(tmp) is False and tmp.name.startswith(".bundle.tmp-")
        raise RuntimeError("parity failed")
    assert list(tmp_path.iterdir()) == []


def test_the_synthetic_benchmark_reaches_the_disk_before_its_rename(tmp_path, monkeypatch):
    from tiercel.data.synth import generate

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("names the fsynced files through /proc")
    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        if not renamed:
            synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        if os.path.basename(dst) == "bench":
            renamed.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    generate(tmp_path / "bench", n=42, size=64, workers=1)
    written = [p.name for p in (tmp_path / "bench").rglob("*") if p.is_file()]
    assert renamed and len(written) > 10 and set(written) <= set(synced)  # every image and list, before the rename


def test_an_optimizer_shard_is_written_through_the_shared_helper(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from tiercel.distill.checkpoints import save_optimizer_shard

    old = os.umask(0o022)
    events = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    try:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        save_optimizer_shard(tmp_path, 1, optimizer)
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["optimizer.rank1.pt"] and events
    assert stat.S_IMODE((tmp_path / "optimizer.rank1.pt").stat().st_mode) == 0o644
    assert torch.load(tmp_path / "optimizer.rank1.pt", weights_only=True)["param_groups"][0]["lr"] == 0.1


def test_overwrite_replaces_only_an_output_that_carries_its_marker(tmp_path):
    def bundle(dst):
        with atomic_dir(dst, overwrite=True, marker="manifest.json") as tmp:
            (tmp / "manifest.json").write_text('{"format": "tiercel-bundle"}')

    bundle(tmp_path / "empty")  # a missing or empty folder is fine, and so is tiercel's own output
    (tmp_path / "made").mkdir()
    bundle(tmp_path / "made")
    bundle(tmp_path / "made")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(TiercelError, match=r"theirs: holds files tiercel did not write \(no manifest.json\), so it"):
        bundle(tmp_path / "theirs")
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "mine"
    (tmp_path / "web").mkdir()  # a web app's manifest.json is not a bundle's
    (tmp_path / "web" / "manifest.json").write_text('{"name": "my web app"}')
    (tmp_path / "web" / "index.html").write_text("<html>")
    with pytest.raises(TiercelError, match=r"web: holds files tiercel did not write \(its manifest.json is not tiercel's\)"):
        bundle(tmp_path / "web")
    assert (tmp_path / "web" / "index.html").read_text() == "<html>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "made", "theirs", "web"]


def test_finite_json_writes_null_for_nan_and_infinity(tmp_path):
    from tiercel.fileio import finite, write_json

    path = write_json(tmp_path / "r.json", finite({"mae": float("nan"), "per": [float("inf"), 0.5], "t": (1.0, -float("inf")), "n": 3}))

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"mae": None, "per": [None, 0.5], "t": [1.0, None], "n": 3}


def test_a_json_output_replaces_only_what_tiercel_wrote(tmp_path):
    import json

    from tiercel.fileio import check_json_output, write_output_json

    out = tmp_path / "eval.json"
    check_json_output(out)  # new: fine
    write_output_json(out, {"average": float("nan")}, "eval")
    data = json.loads(out.read_text())
    assert list(data)[0] == "tiercel" and data["tiercel"]["output"] == "eval" and data["average"] is None
    check_json_output(out)  # tiercel's own output: may be replaced
    for text in ("my notes", '{"average": 0.5}', "[1, 2]", '{"tiercel": "a string"}'):
        theirs = tmp_path / "theirs.json"
        theirs.write_text(text)
        with pytest.raises(TiercelError, match=r"--json .*theirs\.json: exists and was not written by tiercel, so it "
                                               r"is not replaced; choose another path or remove it yourself"):
            check_json_output(theirs)
        assert theirs.read_text() == text


def test_a_chart_replaces_only_a_png_tiercel_wrote(tmp_path):
    import numpy as np
    from PIL import Image

    from tiercel.fileio import check_plot_output, plot_metadata

    check_plot_output(tmp_path / "new.png")
    ours, theirs = tmp_path / "ours.png", tmp_path / "theirs.png"
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    fig.savefig(ours, format="png", metadata=plot_metadata("png"))
    plt.close(fig)
    check_plot_output(ours)  # tiercel's own chart: may be replaced
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(theirs)  # a PNG of someone else's
    before = theirs.read_bytes()
    with pytest.raises(TiercelError, match=r"--plot .*: exists and was not written by tiercel"):
        check_plot_output(theirs)
    assert theirs.read_bytes() == before
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(TiercelError, match=r"--plot .*notes\.txt: the chart is written as PNG \(or SVG or PDF\); give a"):
        check_plot_output(notes)  # not a chart format, whoever wrote it
    assert notes.read_text() == "my notes"
    check_plot_output(tmp_path / "chart")  # no suffix: a PNG
    check_plot_output(tmp_path / "new.svg")  # a new SVG or PDF is fine ...
    (tmp_path / "old.svg").write_text("<svg/>")
    with pytest.raises(TiercelError, match=r"old\.svg: exists, and tiercel replaces only its own PNG charts"):
        check_plot_output(tmp_path / "old.svg")  # ... an existing one carries no mark tiercel reads: never replaced


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_takes_no_files_is_refused_before_the_work(tmp_path):
    from tiercel.fileio import check_output_file

    with pytest.raises(TiercelError) as err:  # os.access says /proc is writable for root; creating a file fails
        check_output_file("/proc/out.geojson", "--geojson")
    assert str(err.value).startswith("--geojson /proc/out.geojson: cannot create files in /proc (")
    check_output_file(tmp_path / "out.geojson", "--geojson")  # an ordinary folder: fine, and no probe file left
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_link_to_nowhere_is_never_replaced_by_an_output(tmp_path, overwrite):
    link = tmp_path / "out"
    os.symlink("nowhere", link)
    with pytest.raises(TiercelError) as err:
        with atomic_dir(link, overwrite=overwrite):
            pass
    assert str(err.value) == f"{link}: is a link to nowhere, which does not exist; choose another output path, or remove the link yourself"
    with pytest.raises(TiercelError, match=r"^--json .*out: is a link to nowhere, which does not exist"):
        fileio.check_output_file(link, "--json")
    assert os.readlink(link) == "nowhere"


def test_a_checkpoint_marker_needs_a_shape_or_a_family_tiercel_writes(tmp_path):
    marker = tmp_path / "tiercel.json"
    for content, ours in [({"format": 3, "family": "my own"}, False), ({"format": 1, "shape": "x"}, False),
                          ({"format": True, "shape": {}}, False), ({"format": 1, "shape": {}, "family": "mine"}, False),
                          ({"format": 1, "shape": {"d_model": 8}}, True), ({"format": 1, "family": "llava"}, True)]:
        marker.write_text(json.dumps(content))
        assert fileio.marker_is_ours(marker) is ours, content


@pytest.mark.parametrize("kind", ["folder", "file", "probe", "results"])
def test_a_ctrl_c_just_after_the_temporary_is_created_leaves_nothing(tmp_path, monkeypatch, kind):
    """A Ctrl-C lands between the mkdir/open of the temporary output and the line that receives its name (seen on
    `data synth`: its .synth.tmp-* folder stayed). The name is chosen first, so the cleanup finds it."""
    from tiercel.fileio import atomic_path, check_output_file
    from tiercel.runtime.jsonl import ResultsFile

    (tmp_path / "results.jsonl").write_text("")
    mkdir, open_ = os.mkdir, os.open

    def then_ctrl_c(create):
        def created(path, *args, **kwargs):
            create(path, *args, **kwargs)  # the folder or file exists now; its descriptor is lost with the interrupt
            raise KeyboardInterrupt
        return created

    monkeypatch.setattr(fileio.os, "mkdir", then_ctrl_c(mkdir))
    monkeypatch.setattr(fileio.os, "open", then_ctrl_c(open_))
    work = {
        "folder": lambda: atomic_dir(tmp_path / "out").__enter__(),
        "file": lambda: atomic_path(tmp_path / "out.json").__enter__(),
        "probe": lambda: check_output_file(tmp_path / "new" / "out.geojson", "--geojson"),
        "results": lambda: ResultsFile(tmp_path / "results.jsonl", overwrite=True),
    }[kind]
    if kind == "probe":
        monkeypatch.setattr(fileio.os, "mkdir", mkdir)
    with pytest.raises(KeyboardInterrupt):
        work()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]
