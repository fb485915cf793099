# SPDX-License-Identifier: Apache-2.0
"""Atomic, private file writes: the one implementation every writer of the project uses.

It lives in ``cache_core`` because the cache core writes model files and never imports the
agent; the agent's writers (token store, PID file, spool, dead letters, model registry,
access-log segments) use it too.

A write never leaves a partial file under the target's name, never writes through a link
and never leaves its temp file behind on an error:

1. a link at the target is refused (``OSError`` ``ELOOP``); the parent directories are
   created with ``dir_mode`` when they do not exist (with ``dir_mode=None`` a missing
   directory is an error);
2. the data goes to a new temp file in the target's own directory, named
   ``.<target name>.<16 hex digits>.tmp`` and opened ``O_CREAT | O_EXCL | O_NOFOLLOW``,
   so it is never an existing file or a link, with exactly ``mode`` (the umask is not
   applied);
3. the temp file is fsync'd and renamed over the target (``os.replace``: a reader sees the
   old file or the new one), then the directory is fsync'd so the rename survives a crash;
4. on any error before the rename the temp file is removed and the error is raised.

A process killed between 2 and 3 leaves its temp file; :func:`remove_temp_files` with
:func:`temp_name_re` removes such leftovers when their owner starts again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
TEMP_SUFFIX = ".tmp"
TEMP_TOKEN_BYTES = 8
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def temp_name_re(name_pattern: str) -> re.Pattern[str]:
    """The names of the temp files a write to a file matching ``name_pattern`` leaves when
    it is interrupted (for :func:`remove_temp_files`, matched whole).

    Besides this module's ``.<name>.<hex>.tmp`` it matches the names the writers it
    replaced used (``.<name>.<random>`` and ``.<name>.<pid>.tmp``), so that the leftovers
    of an agent of an earlier version are removed too.
    """
    return re.compile(rf"\.(?:{name_pattern})\.[A-Za-z0-9_]+(?:{re.escape(TEMP_SUFFIX)})?")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync the directory ``path``: makes the renames and creations in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_link(target: Path) -> None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "refusing to write through a symbolic link", str(target))


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], mode: int = PRIVATE_FILE_MODE, dir_mode: int | None = PRIVATE_DIR_MODE
) -> Iterator[BinaryIO]:
    """A binary file to write the new content of ``path`` to; it replaces ``path`` when the
    ``with`` block ends without an error (see the module docstring for every step)."""
    target = Path(path)
    _refuse_link(target)
    if dir_mode is not None:
        target.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(TEMP_TOKEN_BYTES)}{TEMP_SUFFIX}")
    fd = os.open(tmp, _TEMP_FLAGS, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write(
    path: str | os.PathLike[str], data: bytes, mode: int = PRIVATE_FILE_MODE, dir_mode: int | None = PRIVATE_DIR_MODE
) -> None:
    """Replace ``path`` with ``data`` atomically, with exactly ``mode`` (default 0600)."""
    with atomic_file(path, mode, dir_mode) as handle:
        handle.write(data)


def remove_temp_files(directory: str | os.PathLike[str], pattern: re.Pattern[str]) -> int:
    """Delete the regular files (never a link) in ``directory`` whose names match
    ``pattern`` whole: the temp files of writes a crash interrupted. Return how many."""
    removed = 0
    for name in os.listdir(directory):
        if not pattern.fullmatch(name):
            continue
        path = os.path.join(directory, name)
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed
