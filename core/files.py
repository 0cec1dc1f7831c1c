"""File safety shared by every catpot command: atomic rewrites, exclusive directory locks, content hashes.

* ``atomic_write_text`` / ``atomic_write_bytes`` / ``atomic_write_json``: the new content goes to a temporary file in
  the same directory, is fsync'ed, then renamed over the target (``os.replace`` is atomic on POSIX). A kill at any
  moment leaves either the old file or the new one, never a truncated mix.
* ``DirectoryLock``: an exclusive ``fcntl.flock`` on ``<dir>/.catpot.lock``, which also records the holder's pid and
  command. The kernel drops the lock when its process dies, so a lock left by a killed run is stale by construction
  and the next run takes it; a live holder makes the second run fail with one line naming its pid.
* ``file_sha256`` / ``tree_sha256``: content hashes (of a file, or of every file under a directory by relative path),
  used where identity must follow the bytes, not the path.
* ``deterministic_tar_gz`` / ``tar_gz_members``: archives (of directories, of named contents) whose bytes follow the
  content only, so a rerun leaves a committed file as it was.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

LOCK_FILE = ".catpot.lock"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (temp file in the same directory, fsync, rename, fsync the dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a results file should be readable like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def remove_stale_temporaries(path: str | Path) -> int:
    """Delete the temporary files a killed ``atomic_write_*`` of ``path`` left behind; returns how many.

    Call it only while holding the lock of the directory, so that no live writer's temporary file is taken.
    """
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp"))
    for temporary in stale:
        temporary.unlink(missing_ok=True)
    return len(stale)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json_object(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or None when the file is missing, torn (a kill mid-write) or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


class DirectoryLock:
    """Exclusive lock on a run directory for the lifetime of a ``with`` block (or until ``release``).

    ``what`` names the command in the error another process gets, e.g. ``"catpot train"``.
    """

    def __init__(self, directory: str | Path, what: str = "catpot"):
        self.directory, self.what = Path(directory), what
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(self.path).read_text().strip() or "another process"
            os.close(fd)
            raise RuntimeError(f"{self.directory} is in use by {holder}; wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({self.what}: {' '.join(sys.argv[:3])})\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(directory: str | Path, names: tuple[str, ...] | None = None) -> str:
    """sha256 over (relative path, content) of every regular file below ``directory`` (or only those ``names``)."""
    root = Path(directory)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if names is None else [root / n for n in names]
    for path in files:
        if path.name == LOCK_FILE:
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(file_sha256(path).encode() + b"\0")
    return digest.hexdigest()


def deterministic_tar_gz(directories: list[Path], arcroot: str) -> bytes:
    """A .tar.gz of ``directories`` under ``arcroot/<name>/``, symbolic links left out (W&B links its core log into a
    temporary directory); bytes as in ``tar_gz_members``."""
    members: dict[str, bytes | None] = {}
    for directory in sorted(directories, key=lambda d: d.name):
        for path in [directory, *sorted(directory.rglob("*"), key=lambda p: p.relative_to(directory).as_posix())]:
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                continue
            name = f"{arcroot}/{directory.name}"
            if path != directory:
                name += f"/{path.relative_to(directory).as_posix()}"
            members[name] = None if path.is_dir() else path.read_bytes()
    return tar_gz_members(members)


def tar_gz_members(members: dict[str, bytes | None]) -> bytes:
    """A .tar.gz of ``{name: content}`` (None: a directory) in the given order: times and owners zero, modes 644/755,
    gzip header without time or name, so the same members give the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
