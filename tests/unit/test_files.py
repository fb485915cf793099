# SPDX-License-Identifier: Apache-2.0
"""cache_core.files: the one atomic, private file write (temp file, fsync, rename, dir fsync)."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from cache_core import files
from cache_core.files import atomic_file, atomic_write, remove_temp_files, temp_name_re

WRITERS = 8
WRITES_EACH = 10
PAYLOAD_BYTES = 256 * 1024


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_content_and_private_mode_by_default(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert mode_of(target) == 0o600
    assert os.listdir(tmp_path) == ["state.json"]


def test_the_requested_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "agent.pid"
    old = os.umask(0o077)
    try:
        atomic_write(target, b"42\n", mode=0o644)
    finally:
        os.umask(old)
    assert mode_of(target) == 0o644


def test_missing_directories_are_created_private_or_refused(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file"
    atomic_write(target, b"x")
    assert target.read_bytes() == b"x" and mode_of(tmp_path / "a" / "b") == 0o700
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "absent" / "file", b"x", dir_mode=None)
    assert not (tmp_path / "absent").exists()


def test_a_symlinked_target_is_refused_and_left_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(OSError) as info:
        atomic_write(link, b"overwrite")
    assert info.value.errno == errno.ELOOP
    assert victim.read_bytes() == b"keep" and link.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["link", "victim"]


def test_a_failing_write_removes_its_temp_file_and_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "model.npz"
    atomic_write(target, b"old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic_file(target) as handle:
        handle.write(b"half of the new")
        assert len(os.listdir(tmp_path)) == 2  # the temp file exists while writing
        raise Boom
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.npz"]


def test_a_failing_rename_removes_its_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "dir-in-the-way"
    target.mkdir()
    (target / "occupant").write_bytes(b"")
    with pytest.raises(OSError):
        atomic_write(target, b"data")  # os.replace onto a non-empty directory fails
    assert sorted(os.listdir(tmp_path)) == ["dir-in-the-way"]


def test_the_file_and_then_its_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", spy)
    target = tmp_path / "tokens.json"
    atomic_write(target, b"{}")
    assert synced == [("file", os.stat(target).st_ino), ("dir", os.stat(tmp_path).st_ino)]


def test_concurrent_writers_leave_one_complete_file(tmp_path: Path) -> None:
    target = tmp_path / "shared"
    payloads = [bytes([n]) * PAYLOAD_BYTES for n in range(WRITERS)]
    errors: list[OSError] = []
    start = threading.Barrier(WRITERS)

    def writer(n: int) -> None:
        try:
            start.wait()
            for _ in range(WRITES_EACH):
                atomic_write(target, payloads[n])
        except OSError as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_bytes() in payloads
    assert os.listdir(tmp_path) == ["shared"]


def test_temp_name_re_matches_this_modules_and_the_earlier_writers_temp_names() -> None:
    pattern = temp_name_re(r"[0-9]{20}\.json")
    name = "00000000000000000001.json"
    assert pattern.fullmatch(f".{name}.0123456789abcdef.tmp")  # cache_core.files
    assert pattern.fullmatch(f".{name}.4242.tmp")  # the spool's former ".<name>.<pid>.tmp"
    assert pattern.fullmatch(f".{name}.k2_x9qaz")  # the former mkstemp names
    assert not pattern.fullmatch(name)
    assert not pattern.fullmatch(".notes.json.1.tmp")


def test_remove_temp_files_removes_interrupted_writes_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def die(*_args: object) -> None:
        raise KeyboardInterrupt

    name = "00000000000000000001.json"
    with monkeypatch.context() as patch:
        patch.setattr(files.os, "unlink", lambda *_a: None)  # a killed process cleans nothing up
        patch.setattr(files.os, "replace", die)
        with pytest.raises(KeyboardInterrupt):
            atomic_write(tmp_path / name, b"half")
    leftovers = os.listdir(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(f".{name}.")
    (tmp_path / "notes.tmp").write_bytes(b"not ours")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"kept")
    (tmp_path / f".{name}.7.tmp").symlink_to(elsewhere)
    assert remove_temp_files(tmp_path, temp_name_re(r"[0-9]{20}\.json")) == 1
    assert sorted(os.listdir(tmp_path)) == sorted([".00000000000000000001.json.7.tmp", "elsewhere", "notes.tmp"])
