"""The wheel is the whole product: built from the tree, installed into a fresh venv away from the source, the CLI
finds its shipped recipes and writes the synthetic benchmark.

Offline: the wheel builds with this environment's setuptools (no build isolation, no index), and the fresh venv
sees this environment's third-party packages through a .pth line. .pth files inside that folder are not run, so an
editable tiercel installed here (its finder or path hook) cannot shadow the wheel; the test checks that tiercel
is imported from the venv anyway.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tiercel import recipes


def _run(cmd: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the tree (the build writes build/ and *.egg-info, which stay out of the checkout)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "tiercel", src / "tiercel", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp / "dist", src], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("tiercel-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp).stdout.strip()
    Path(purelib, "_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # numpy, typer, ... from here
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp)
    return venv


@pytest.mark.slow  # a wheel build, a venv and seven commands: about 4 s
def test_the_installed_wheel_runs_the_cli_with_its_recipes_outside_the_tree(tmp_path):
    wheel = _build_wheel(tmp_path)
    assert {f"tiercel/recipes/{name}.yaml" for name in recipes.names()} <= set(zipfile.ZipFile(wheel).namelist())
    venv = _fresh_venv(tmp_path, wheel)
    tiercel = venv / "bin" / "tiercel"  # the console script pip wrote from [project.scripts]
    work = tmp_path / "work"
    work.mkdir()

    where = _run([venv / "bin" / "python", "-c", "import tiercel; print(tiercel.__file__)"], cwd=work).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT), where
    assert "Usage: tiercel demo" in _run([tiercel, "demo", "--help"], cwd=work).stdout
    listed = _run([tiercel, "recipes"], cwd=work).stdout.splitlines()
    assert [line.split()[0] for line in listed] == recipes.names()
    assert _run([tiercel, "recipes", "show", "demo"], cwd=work).stdout == recipes.get("demo").read_text()

    done = _run([tiercel, "data", "synth", "--out", "synth", "--n", "42", "--size", "64", "--workers", "1"], cwd=work)
    assert done.stdout.strip().startswith("wrote synth: 42 records")
    assert sorted(p.name for p in (work / "synth").iterdir()) == ["images", "meta.json", "objects.json", "test.json",
                                                                  "train.json", "val.json"]
    assert any((work / "synth" / "images").iterdir())
