"""Run directories: which command made a directory, and what ``--overwrite``, ``--resume`` and ``--out`` may do to it.

Every directory catpot creates for a run holds ``.catpot-run`` (JSON: ``kind`` train/eval/experiment, the catpot
version, the creation time). The rules built on it:

* ``--overwrite`` deletes only a directory whose marker says the same kind of run, never ``.``, ``~``, ``/``, an
  empty path, the working directory or one of its ancestors (an empty shell variable must not wipe a project).
* A directory of another kind is refused (``catpot eval --out`` at a training ``output_dir`` would overwrite its
  ``results.json``). A directory without a marker is accepted only if it is empty or an older catpot's run of the
  same kind (recognised by its files), and then gets its marker.
* A command holds ``core.files.DirectoryLock`` on its directory for its whole duration: a second process on the same
  directory fails with one line naming the holder's pid; a killed holder frees the lock.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core import CATPOT_VERSION
from core.files import LOCK_FILE, DirectoryLock, atomic_write_json

MARKER_FILE = ".catpot-run"
KINDS = ("train", "eval", "experiment")
BOOKKEEPING = frozenset({MARKER_FILE, LOCK_FILE})  # what a start that failed before the run began may leave
# What an older catpot's run directory (without a marker) holds, by kind; an experiment's results directory may also
# hold only what the benchmarks that designed it wrote there (benchmarks/*_pilot.py, benchmarks/sft_sizing.py).
LEGACY_SIGNS = {"train": ("recipe.yaml",), "eval": ("records.jsonl",),
                "experiment": ("comparisons.json", "*.records.jsonl.gz", "pilot.json", "sizing.json")}


def read_marker(directory: str | Path) -> dict | None:
    """The marker of ``directory``; None when it has none. An unreadable marker is an error (it may be anything)."""
    path = Path(directory) / MARKER_FILE
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a catpot run marker ({type(error).__name__}); delete it by hand") from None
    if not isinstance(marker, dict) or marker.get("kind") not in KINDS:
        raise ValueError(f"{path} is not a catpot run marker (kind must be one of {KINDS}); delete it by hand")
    return marker


def write_marker(directory: str | Path, kind: str) -> None:
    atomic_write_json(Path(directory) / MARKER_FILE,
                      {"kind": kind, "catpot": CATPOT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def has_content(directory: str | Path) -> bool:
    """True when ``directory`` holds anything besides the marker and the lock file."""
    directory = Path(directory)
    return directory.is_dir() and any(p.name not in BOOKKEEPING for p in directory.iterdir())


def kind_of(directory: str | Path) -> str | None:
    """The kind of run ``directory`` belongs to: its marker's, else the kind an older catpot's files show."""
    marker = read_marker(directory)
    if marker is not None:
        return marker["kind"]
    for kind, patterns in LEGACY_SIGNS.items():
        if any(next(Path(directory).glob(pattern), None) is not None for pattern in patterns):
            return kind
    return None


def check_kind(directory: str | Path, kind: str, what: str) -> None:
    """Refuse a non-empty ``directory`` that is not a ``kind`` run; ``what`` names it in the error (e.g. ``--out``)."""
    if not has_content(directory):
        return
    found = kind_of(directory)
    if found is None:
        raise FileExistsError(f"{what} {str(directory)!r} holds files catpot did not write (no {MARKER_FILE}); "
                              "choose another directory")
    if found != kind:
        raise FileExistsError(f"{what} {str(directory)!r} belongs to a catpot {found} run, not {kind}; "
                              "choose another directory")


def check_deletable(directory: str | Path, kind: str, what: str) -> None:
    """Refuse to delete anything but a ``kind`` run directory that catpot marked (see the module docstring)."""
    text = str(directory)
    if not text.strip():
        raise ValueError(f"{what} is empty; refusing to delete the working directory")
    resolved = Path(text).expanduser().resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if resolved == Path(resolved.anchor) or resolved == home or resolved in (cwd, *cwd.parents):
        raise ValueError(f"{what} {text!r} is {resolved}: refusing to delete the working directory, one of its "
                         "parents, the home directory or a filesystem root")
    marker = read_marker(resolved)
    if marker is None:
        raise FileExistsError(f"{what} {text!r} has no {MARKER_FILE} marker, so catpot did not create it (or an older "
                              "catpot did); --overwrite deletes only catpot's own run directories: delete it yourself")
    if marker["kind"] != kind:
        raise FileExistsError(f"{what} {text!r} belongs to a catpot {marker['kind']} run, not {kind}; "
                              "--overwrite refuses to delete it")


def check_start(directory: str | Path, kind: str, what: str, *, resume: bool, overwrite: bool) -> None:
    """Everything that decides whether a run may start in ``directory``, checked before anything is written."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if not has_content(directory):
        return
    if overwrite:
        check_deletable(directory, kind, what)
    elif resume:
        check_kind(directory, kind, what)
    else:
        raise FileExistsError(f"{what} {str(directory)!r} already exists; pass --resume to continue or --overwrite")


def clear(directory: str | Path) -> None:
    """Delete everything in ``directory`` but the lock file (which the caller holds)."""
    for path in Path(directory).iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def lock(directory: str | Path, what: str) -> DirectoryLock:
    """Take the exclusive lock of ``directory`` (creating it); a live holder is a one-line error naming its pid."""
    try:
        return DirectoryLock(directory, what).acquire()
    except RuntimeError as error:
        raise BlockingIOError(str(error)) from None


@contextmanager
def open_run_dir(directory: str | Path, kind: str, what: str, *, resume: bool = False,
                 overwrite: bool = False) -> Iterator[Path]:
    """Check, lock, (with ``overwrite``) empty and mark ``directory`` for a ``kind`` run; unlock on exit.

    The checks run before the directory is created and again under the lock, since another process may have started
    in between. ``what`` names the directory in errors (``output_dir``, ``--out``, ``--results``).
    """
    directory = Path(directory)
    check_start(directory, kind, what, resume=resume, overwrite=overwrite)
    held = lock(directory, f"catpot {kind}")
    try:
        check_start(directory, kind, what, resume=resume, overwrite=overwrite)
        if overwrite and has_content(directory):
            clear(directory)
        _mark(directory, kind)
        yield directory
    finally:
        held.release()


def claim(directory: str | Path, kind: str, what: str) -> None:
    """Mark ``directory`` for a ``kind`` run after checking it is one (for a caller that already holds a lock above)."""
    check_kind(directory, kind, what)
    Path(directory).mkdir(parents=True, exist_ok=True)
    _mark(directory, kind)


def _mark(directory: Path, kind: str) -> None:
    """Write the marker unless it is there; an empty directory left by a failed start of another kind is re-marked."""
    marker = read_marker(directory)
    if marker is None or (marker["kind"] != kind and not has_content(directory)):
        write_marker(directory, kind)

