"""core.files: atomic rewrites keep the old content on failure, the directory lock excludes a live holder only."""

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from core.files import DirectoryLock, atomic_write_json, atomic_write_text, file_sha256, tree_sha256


def test_atomic_write_replaces_content_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")
    atomic_write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "records.jsonl"
    target.write_text("40016 records")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "")
    assert target.read_text() == "40016 records"
    assert [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]


def test_a_kill_during_a_rewrite_leaves_old_or_new_never_a_truncation(tmp_path):
    target = tmp_path / "big.txt"
    old, new = "o" * 5_000_000, "n" * 5_000_000
    target.write_text(old)
    code = (f"from core.files import atomic_write_text\n"
            f"while True: atomic_write_text({str(target)!r}, {new[:1]!r} * 5_000_000)")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()})
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_text() in (old, new)


def test_written_files_follow_the_umask_not_mkstemp_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def _hold_lock(directory):
    code = (f"import time\nfrom core.files import DirectoryLock\n"
            f"DirectoryLock({str(directory)!r}, 'holder').acquire()\nprint('held', flush=True)\ntime.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_excludes_a_second_lock_and_is_named(tmp_path):
    proc = _hold_lock(tmp_path)
    try:
        with pytest.raises(RuntimeError, match=f"in use by pid {proc.pid}"):
            DirectoryLock(tmp_path, "catpot train").acquire()
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_process_is_stale_and_taken(tmp_path):
    proc = _hold_lock(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with DirectoryLock(tmp_path, "catpot train"):
        assert f"pid {os.getpid()}" in (tmp_path / ".catpot.lock").read_text()


def test_tree_hash_follows_content_not_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"weights")
    assert tree_sha256(a) == tree_sha256(b)
    (b / "adapter_model.safetensors").write_bytes(b"retrained")
    assert tree_sha256(a) != tree_sha256(b)
    assert file_sha256(a / "adapter_model.safetensors") != file_sha256(b / "adapter_model.safetensors")
