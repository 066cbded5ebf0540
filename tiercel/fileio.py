"""Crash-safe writing: outputs appear complete under their final name, or not at all.

Every output is written under a temporary name next to its destination (`.NAME.tmp-PID-*`), flushed to disk
(fsync) and renamed into place. Replacing an existing output first renames it aside (`.NAME.old-PID-*`) and
removes it only once the new one is in place, so a kill at any moment leaves the old or the new output under
its name, never neither. Leftovers of a killed run are tidied by the next write of the same output: its
temporary folders are removed and an output left aside is put back. Only names of that pattern whose process
is gone are touched. A Ctrl-C that got lost on the way (tiercel.progress.interrupted) stops an output before
its rename. Outputs get the permissions a plain mkdir/open would give under the process's umask.

Knows nothing about what is written; used by every stage that writes a file or a directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

from tiercel.errors import TiercelError
from tiercel.progress import interrupted


@contextlib.contextmanager
def atomic_dir(dst: str | Path, overwrite: bool = False, marker: str | None = None):
    """Yield a temporary directory next to `dst`; on success it replaces `dst` (see replace_into), on error
    it is removed. `marker`: see refuse_existing."""
    dst = refuse_existing(dst, overwrite, marker)
    _check_writable(dst.parent, str(dst))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tidy_leftovers(dst)
    refuse_existing(dst, overwrite, marker)  # a leftover put back may now stand there
    tmp = temp_name(dst)  # named before it exists: a Ctrl-C at any point after its mkdir finds it to remove
    try:
        make_temp(tmp, dst, directory=True)
        os.chmod(tmp, 0o777 & ~umask())
        yield tmp
        interrupted()  # a Ctrl-C that got lost on the way: the output is not complete, do not publish it
        _fsync_tree(tmp, mode=0o666 & ~umask())
        replace_into(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def refuse_existing(dst: str | Path, overwrite: bool = False, marker: str | None = None) -> Path:
    """`dst` as a Path; TiercelError if it exists and `overwrite` is off, or if it is a file (an output folder
    never replaces a file: that file is not tiercel's), or if it holds files but not `marker` (the file every
    output of its kind has, e.g. a bundle's manifest.json): then tiercel did not write it. Checked again by
    atomic_dir."""
    dst = Path(dst)
    if dst.is_symlink() and not dst.exists():
        raise TiercelError(f"{dst}: is a link to {os.readlink(dst)}, which does not exist; choose another output path, "
                           "or remove the link yourself")
    if dst.exists() and not dst.is_dir():
        raise TiercelError(f"{dst}: is a file, not a folder; choose a folder path for the output")
    if dst.exists() and not overwrite:
        raise TiercelError(f"{dst}: already exists; choose another output path or pass --overwrite")
    if marker and dst.is_dir() and any(dst.iterdir()) and not marker_is_ours(dst / marker):
        raise TiercelError(f"{dst}: holds files tiercel did not write ({marker_note(dst / marker)}), so it is not replaced even "
                           "with --overwrite; choose another output path, or empty it yourself")
    return dst


MARKERS = {  # marker file -> what its JSON holds when tiercel wrote it
    "manifest.json": lambda d: d.get("format") == "tiercel-bundle",  # a bundle (runtime.manifest.FORMAT)
    # a checkpoint: tiercel's own (models.writer.tiercel_meta: its shape) or a converted GeoChat (geochat_convert)
    "tiercel.json": lambda d: (isinstance(d.get("format"), int) and not isinstance(d.get("format"), bool)
                               and (isinstance(d.get("shape"), dict) and d.get("family", "florence2") == "florence2"
                                    or d.get("family") == "llava")),
}


def few(names: list[str], shown: int = 3) -> str:
    """The first `shown` of `names` for a one-line message: "a, b, c and 4 more"."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def marker_note(path: Path) -> str:
    """Why the marker file `path` does not make its folder tiercel's: "no NAME" or "its NAME is not tiercel's"."""
    return f"its {path.name} is not tiercel's" if path.exists() else f"no {path.name}"


def marker_is_ours(path: Path) -> bool:
    """Whether the marker file `path` is tiercel's: a file, and for the markers in MARKERS a JSON object they
    accept (a web app's manifest.json is not a bundle's)."""
    if not path.is_file():
        return False
    if path.name not in MARKERS:
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and bool(MARKERS[path.name](data))


def check_output_file(path: str | Path | None, option: str, example: str = "results.json") -> None:
    """Before long work: TiercelError unless `path` (given with `option`) can be written as a file."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise TiercelError(f"{option} {path}: is a folder; give a file name, e.g. {path / example}")
    if path.is_symlink() and not path.exists():
        raise TiercelError(f"{option} {path}: is a link to {os.readlink(path)}, which does not exist; choose another "
                           "path, or remove the link yourself")
    _check_writable(path.parent, f"{option} {path}")


JSON_MARK = "tiercel"  # the first member of every file a command writes with --json: {"version", "output"}


def check_json_output(path: str | Path | None, option: str = "--json", example: str = "results.json") -> None:
    """Before long work: TiercelError unless `path` can be written as a command's JSON output: a new file, or one
    tiercel wrote (a JSON object whose `tiercel` member is an object). Anything else there is not replaced."""
    _check_ours(path, option, example, _ours_json)


def write_output_json(path: str | Path, data: dict, output: str) -> Path:
    """A command's JSON output, written whole: {"tiercel": {"version", "output"}, **data}, NaN and inf as null."""
    from tiercel import __version__

    return write_json(path, finite({JSON_MARK: {"version": __version__, "output": output}, **data}))


PLOT_SUFFIXES = ("", ".png", ".svg", ".pdf")  # what profile --plot writes (no suffix: PNG)
PLOT_SOFTWARE = "tiercel"  # the PNG `Software` text a chart tiercel writes starts with


def check_plot_output(path: str | Path | None, option: str = "--plot", example: str = "profile.png") -> None:
    """Before long work: TiercelError unless `path` can be written as a chart: a PNG (.png or no suffix), new or
    one whose `Software` text says tiercel wrote it (`plot_metadata`); or a new .svg or .pdf (those carry no mark
    tiercel reads back, so an existing one is never replaced). Other suffixes are refused."""
    suffix = Path(path).suffix.lower() if path is not None else ""
    if path is not None and suffix not in PLOT_SUFFIXES and not Path(path).is_dir():
        raise TiercelError(f"{option} {path}: the chart is written as PNG (or SVG or PDF); give a path ending in .png, "
                           f"e.g. {Path(path).with_suffix('.png')}")
    if suffix in (".svg", ".pdf") and Path(path).exists():
        raise TiercelError(f"{option} {path}: exists, and tiercel replaces only its own PNG charts; choose another "
                           "path or remove it yourself")
    _check_ours(path, option, example, is_our_png)


def plot_metadata(fmt: str) -> dict:
    """savefig metadata that marks a PNG as tiercel's (other formats: none; an existing one is never replaced)."""
    from tiercel import __version__

    return {"Software": f"{PLOT_SOFTWARE} {__version__}"} if fmt == "png" else {}


def check_distinct(output: str | Path | None, option: str, *inputs: tuple[str, str | Path | None],
                   whole: bool = False) -> None:
    """Before the work: TiercelError if the output path `output` (given with `option`, "" for none) is one of
    `inputs` ((what it is, its path)) or would replace it. A file output: it is the input or lies inside it (a
    path below a file). With `whole` (an output folder replaced as a whole): it is the input or holds it; a new
    folder inside an input folder replaces nothing; an input that does not exist (a hub id) is skipped."""
    if output is None:
        return
    out = Path(output).resolve()
    for what, path in inputs:
        if path is None or (whole and not Path(path).exists()):
            continue
        other = Path(path).resolve()
        if out == other:
            where = ""
        elif whole and out in other.parents:  # replacing the output folder replaces the input inside it
            where = " or holds it"
        elif not whole and other in out.parents:  # a path below a file input
            where = " or lies inside it"
        else:
            continue
        raise TiercelError(f"{f'{option} ' if option else ''}{output}: is {what} {path}{where}, which the output "
                           "would replace; choose another path")


def _check_ours(path: str | Path | None, option: str, example: str, ours) -> None:
    """check_output_file, then: an existing file is replaced only when `ours(path)` says tiercel wrote it."""
    check_output_file(path, option, example)
    if path is not None and Path(path).exists() and not ours(Path(path)):
        raise TiercelError(f"{option} {path}: exists and was not written by tiercel, so it is not replaced; choose "
                           "another path or remove it yourself")


def is_our_png(path: str | Path) -> bool:
    """Whether `path` is a PNG whose `Software` text says tiercel wrote it (plot_metadata)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and str(image.info.get("Software", "")).startswith(PLOT_SOFTWARE)
    except (OSError, ValueError, Image.DecompressionBombError):  # not an image, unreadable: not ours
        return False


def _ours_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and isinstance(data.get(JSON_MARK), dict)


def _check_writable(folder: Path, what: str) -> None:
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise TiercelError(f"{what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TiercelError(f"{what}: no permission to write in {existing}; choose another path")
    # os.access says yes for root, and on file systems that take no files (/proc): create one to be sure
    probe = temp_name(existing / "tiercel-probe")
    try:
        os.close(make_temp(probe, what))
    finally:
        probe.unlink(missing_ok=True)


def temp_name(target: Path) -> Path:
    """A new name for `target`'s temporary output, next to it: `.NAME.tmp-PID-RANDOM` (tidy_leftovers and
    is_temporary know it). Chosen before anything is created, so that the caller's cleanup, entered before
    make_temp, knows what to remove even when a Ctrl-C lands between the creation and its return (a name from
    tempfile.mkdtemp arrives only after the folder exists)."""
    return target.parent / f".{target.name}.tmp-{os.getpid()}-{os.urandom(6).hex()}"


def make_temp(tmp: Path, what, directory: bool = False) -> int | None:
    """Create `tmp` (temp_name): a folder (mode 0700), or a file (0600) whose open descriptor is returned. An
    OSError is one TiercelError line naming `what` (with 48 random bits, a name that exists already is one of a
    killed tiercel process with the same PID: the caller's cleanup removes it, as tidy_leftovers would)."""
    try:
        if directory:
            os.mkdir(tmp, 0o700)
            return None
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)  # as mkstemp
        return os.open(tmp, flags, 0o600)
    except OSError as err:
        raise TiercelError(f"{what}: cannot create files in {tmp.parent} ({err.strerror}); choose another path") from None


def replace_into(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`. An existing `dst` is renamed aside first and removed only after the swap; if the
    swap fails it is put back."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}-{os.urandom(3).hex()}"
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)
        raise
    fsync_dir(dst.parent)
    if old is not None:
        _remove(old)


def tidy_leftovers(dst: str | Path) -> None:
    """Remove the temporary outputs a killed run left next to `dst`, and put back an output it had renamed
    aside when `dst` itself is gone. Names of another live process are left alone."""
    dst = Path(dst)
    if not dst.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(dst.name)}\.(tmp|old)-(\d+)-")
    found = [(m.group(1), p) for p in dst.parent.iterdir() if (m := pattern.match(p.name)) and not _alive(int(m.group(2)))]
    for kind, path in sorted(found, key=lambda kp: kp[1].stat().st_mtime, reverse=True):
        if kind == "old" and not (dst.exists() or dst.is_symlink()):
            os.replace(path, dst)  # the newest output left aside: the run died before its replacement arrived
        else:
            _remove(path)


def is_leftover(path: str | Path) -> bool:
    """Whether `path` is a temporary output of a run that is gone (killed before it finished)."""
    return is_temporary(path) and not _alive(int(_TEMPORARY.fullmatch(Path(path).resolve().name).group(1)))


def is_temporary(path: str | Path) -> bool:
    """Whether `path` is the temporary output of another process: still being written, or left by a killed run.
    Never a finished output: those are renamed to their final name as the very last step. The writing process
    itself may read its own (e.g. export's parity check loads the bundle it is writing)."""
    m = _TEMPORARY.fullmatch(Path(path).resolve().name)
    return bool(m) and int(m.group(1)) != os.getpid()


_TEMPORARY = re.compile(r"\..+\.tmp-(\d+)-\w+")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary file path next to `path` for the caller to write; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tidy_leftovers(path)
    tmp = temp_name(path)
    try:
        os.close(make_temp(tmp, path))
        yield tmp
        interrupted()
        os.chmod(tmp, 0o666 & ~umask())
        _fsync(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data) -> Path:
    """Atomically write `data` as indented JSON."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def finite(value):
    """`value` (nested dicts, lists, tuples) with each NaN or infinite float replaced by None: JSON has neither."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


TOO_LONG = f"a number of more than {sys.get_int_max_str_digits()} digits"  # json's ValueError for Python's limit


def read_json_object(path: str | Path, error: type[TiercelError] = TiercelError, remedy: str = "") -> dict:
    """A JSON file that must hold an object, or one line of `error`: unreadable, not JSON (nesting too deep
    included), or another JSON type. `remedy` ends the message (what to do)."""
    path = Path(path)
    tail = f"; {remedy}" if remedy else ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: missing{tail}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot be read ({getattr(err, 'strerror', None) or type(err).__name__}){tail}") from None
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err}){tail}") from None
    except ValueError:  # Python's limit on integer digits; JSONDecodeError is caught above
        raise error(f"{path}: not valid JSON ({TOO_LONG}){tail}") from None
    except RecursionError:
        raise error(f"{path}: not valid JSON (nested too deeply){tail}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: must hold a JSON object (got {type(data).__name__}){tail}")
    return data


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def umask() -> int:
    """The process's umask, read without changing it where the OS tells (Linux), else by setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier write of this process that failed: nobody else owns it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a folder, so a rename or a new file in it survives a power cut; a no-op where the file system refuses."""
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsync'ed
        _fsync(path)


def _fsync_tree(root: Path, mode: int | None = None) -> None:
    """fsync every file and folder under `root`; with `mode`, first give every file that mode (some writers,
    safetensors among them, create their files 0600, which other users of a shared model folder cannot read)."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if mode is not None and not path.is_symlink() and (path.stat().st_mode & 0o777) != mode:
                os.chmod(path, mode)
            _fsync(path)
        fsync_dir(Path(folder))


def temporary_owner(path: str | Path) -> int | None:
    """The process id in `path`'s name when it is a temporary output (`.NAME.tmp-PID-*`), else None."""
    m = _TEMPORARY.fullmatch(Path(path).resolve().name)
    return int(m.group(1)) if m else None


def check_output_dir(path: str | Path | None, option: str = "") -> None:
    """Before long work: TiercelError unless files can be written into the folder `path` (given with `option`, if
    an option names it): it is not a file, and it (or the nearest folder above it that exists) is writable."""
    if path is None:
        return
    path = Path(path)
    what = f"{option} {path}" if option else str(path)
    if path.exists() and not path.is_dir():
        raise TiercelError(f"{what}: is a file, not a folder; choose a folder path for the output")
    _check_writable(path, what)


def check_new_output(dst: str | Path, overwrite: bool = False, marker: str | None = None) -> Path:
    """Before long work: the checks atomic_dir(dst, overwrite, marker) will make (not a file, not there unless
    `overwrite`, written by tiercel, its folder writable), so that minutes of work do not end in one of them."""
    dst = refuse_existing(dst, overwrite, marker)
    _check_writable(dst.parent, str(dst))
    return dst
