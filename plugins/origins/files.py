# SPDX-License-Identifier: Apache-2.0
"""The ``files`` origin: a directory with one file per key, read through on a cache miss.

Keys arrive from the network, so every key is treated as a hostile path (requirement
S-05: every path from the network is resolved and confined to its root). A key names
a file by its relative path under ``plugins.files.root``, ``/`` separating directories.

A key is *refused* (it loads as a miss, counts in ``rejected`` and nothing is opened)
when it is not bytes, is empty, is not valid UTF-8, contains a NUL byte or a backslash,
starts with ``/``, or has an empty, ``.`` or ``..`` component. Refusing the
non-canonical spellings too (``a//b``, ``a/./b``, ``a/``) keeps one key for one file,
so two keys can never alias the same value and the counters mean what they say.

A key that passes is opened component by component relative to a descriptor of the
root (``openat`` with ``O_NOFOLLOW``), never through a joined path string. No component
may then be a symbolic link, and as ``..`` never gets this far, nothing outside the root
is reachable even when the tree changes while it is read: a symlink swapped in after
any check is refused by the kernel at open time, not followed.

With ``follow_symlinks: true`` the key is first resolved by
:func:`agent.security.confine` and refused when it resolves outside the root; the
resolved, symlink-free path is then opened in the same no-follow way, so a link changed
between resolution and open is refused rather than followed.

Only regular files are read. Size is checked on the opened descriptor, and reading stops
at ``max_file_bytes + 1`` bytes, so a file that grows after the check is still caught.
One bad key never fails its batch: each outcome is counted (``loads``, ``misses``,
``rejected``, ``oversized``, ``errors``; their sum is the number of keys asked for) and
``bytes`` sums what was returned. Log lines name the key only (never the root or a
path) and come at most once per key.

POSIX only: it relies on ``O_NOFOLLOW`` and ``dir_fd``.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.api import Rule, SecurityError, confine, hookimpl
from plugins.origins.rules import origin_needs

log = logging.getLogger(__name__)

PLUGIN_NAME = "files"
DEFAULT_ROOT = ""
DEFAULT_MAX_FILE_BYTES = 1 << 20
MIN_MAX_FILE_BYTES = 1
MAX_MAX_FILE_BYTES = 1 << 30
DEFAULT_FOLLOW_SYMLINKS = False

# Keys remembered for once-per-key logging; a bound so hostile keys cannot grow memory.
LOGGED_KEYS_LIMIT = 1024
# Longest part of a key written to a log line.
LOG_KEY_BYTES = 128
# Read size once the file is past the size fstat reported (it grew while being read).
READ_CHUNK_BYTES = 1 << 16

# Intermediate directories: O_PATH (where there is one) needs only search permission,
# as an ordinary path lookup does.
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The file itself: O_NONBLOCK so that a FIFO in the tree cannot hang the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENAMETOOLONG})


class Outcome(enum.Enum):
    """What became of one key; each value names the counter it is added to."""

    LOADED = "loads"
    MISS = "misses"
    REJECTED = "rejected"
    OVERSIZED = "oversized"
    ERROR = "errors"


def config_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of ``plugins.files``; the host adds ``enabled``."""
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Origin that reads a directory holding one file per key when the cache misses.",
        "properties": {
            "root": {
                "type": "string",
                "pattern": "^(/.*)?$(?!\\n)",
                "default": DEFAULT_ROOT,
                "description": (
                    "Absolute path of the directory whose files are the values; a key is a relative path "
                    "under it. Empty: the origin is not configured and nothing is registered."
                ),
            },
            "max_file_bytes": {
                "type": "integer",
                "minimum": MIN_MAX_FILE_BYTES,
                "maximum": MAX_MAX_FILE_BYTES,
                "default": DEFAULT_MAX_FILE_BYTES,
                "description": (
                    "Largest file loaded, in bytes; a larger one is a miss, counted and logged once per key. "
                    "Keep it at or below cache.max_value_bytes: the cache refuses to store a larger loaded value."
                ),
            },
            "follow_symlinks": {
                "type": "boolean",
                "default": DEFAULT_FOLLOW_SYMLINKS,
                "description": (
                    "Follow symbolic links that resolve inside root. Off: every symlink is refused. "
                    "A link resolving outside root is refused either way."
                ),
            },
        },
    }


def parse_key(key: Any) -> tuple[str, ...] | None:
    """The path components a key names under the root, or None when it is refused."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        return None
    raw = bytes(key)
    if not raw or b"\x00" in raw or b"\\" in raw or raw.startswith(b"/"):
        return None
    try:
        text = raw.decode("utf-8")  # strict: invalid, overlong and surrogate forms fail
    except UnicodeDecodeError:
        return None
    parts = tuple(text.split("/"))
    if any(part in ("", ".", "..") for part in parts):
        return None
    return parts


class FilesOrigin:
    """Loads values from files under one root; refuses every key that could leave it."""

    name = PLUGIN_NAME

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        follow_symlinks: bool = DEFAULT_FOLLOW_SYMLINKS,
    ) -> None:
        raw_root = os.fspath(root)
        if not raw_root or "\x00" in raw_root or not os.path.isabs(raw_root):
            raise ValueError(f"plugins.files.root must be an absolute directory path, found {raw_root!r}")
        if isinstance(max_file_bytes, bool) or not MIN_MAX_FILE_BYTES <= int(max_file_bytes) <= MAX_MAX_FILE_BYTES:
            raise ValueError(
                f"plugins.files.max_file_bytes must be {MIN_MAX_FILE_BYTES} … {MAX_MAX_FILE_BYTES}, found {max_file_bytes!r}"
            )
        # Resolved once: the confinement boundary must not move with later symlink changes.
        self.root = Path(raw_root).resolve()
        self.max_file_bytes = int(max_file_bytes)
        self.follow_symlinks = bool(follow_symlinks)
        self.loads = 0
        self.misses = 0
        self.rejected = 0
        self.oversized = 0
        self.errors = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._logged: set[tuple[Outcome, bytes]] = set()
        self._log_limit_noted = False
        self._root_ok = True

    # ------------------------------------------------------------------ public
    def load_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values for ``keys`` in order (None for a miss); a key named twice is read once."""
        if not keys:
            return []
        try:
            root_fd = os.open(self.root, _ROOT_FLAGS)
        except OSError as exc:
            self._root_unavailable(exc, len(keys))
            return [None] * len(keys)
        self._root_ok = True
        results: dict[bytes, tuple[Outcome, bytes | None]] = {}
        out: list[bytes | None] = []
        tally = dict.fromkeys(Outcome, 0)
        returned = 0
        try:
            for key in keys:
                memo_key = bytes(key) if isinstance(key, (bytes, bytearray, memoryview)) else None
                if memo_key is not None and memo_key in results:
                    outcome, value = results[memo_key]
                else:
                    outcome, value = self._load_one(root_fd, key)
                    if memo_key is not None:
                        results[memo_key] = (outcome, value)
                tally[outcome] += 1
                if value is not None:
                    returned += len(value)
                out.append(value)
        finally:
            os.close(root_fd)
        with self._lock:
            for outcome, count in tally.items():
                setattr(self, outcome.value, getattr(self, outcome.value) + count)
            self.bytes += returned
        return out

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters, for status pages and collectors."""
        with self._lock:
            return {
                "loads": self.loads,
                "misses": self.misses,
                "rejected": self.rejected,
                "oversized": self.oversized,
                "errors": self.errors,
                "bytes": self.bytes,
            }

    # ------------------------------------------------------------------ one key
    def _load_one(self, root_fd: int, key: Any) -> tuple[Outcome, bytes | None]:
        parts = parse_key(key)
        if parts is None:
            log.debug("files origin: refused key %r", _short(key))
            return Outcome.REJECTED, None
        if self.follow_symlinks:
            resolved = self._resolve(parts)
            if resolved is None:
                log.debug("files origin: refused key %r (resolves outside the root)", _short(key))
                return Outcome.REJECTED, None
            if not resolved:
                return Outcome.MISS, None  # the root itself: a directory
            parts = resolved
        fd, outcome = self._open_beneath(root_fd, parts)
        if fd is None:
            if outcome is Outcome.ERROR:
                self._note(outcome, key, "cannot be opened")
            return outcome, None
        try:
            return self._read(fd, key)
        finally:
            os.close(fd)

    def _resolve(self, parts: tuple[str, ...]) -> tuple[str, ...] | None:
        """Symlink-free components under the root, or None when the key leaves it."""
        try:
            resolved = confine(self.root, "/".join(parts))
            return resolved.relative_to(self.root).parts
        except (SecurityError, ValueError, OSError, RuntimeError):  # outside, or a symlink loop
            return None

    def _open_beneath(self, root_fd: int, parts: tuple[str, ...]) -> tuple[int | None, Outcome]:
        """Open ``parts`` under ``root_fd`` without following any symlink."""
        parent = root_fd
        opened: list[int] = []
        try:
            for index, name in enumerate(parts):
                last = index == len(parts) - 1
                try:
                    fd = os.open(name, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=parent)
                except OSError as exc:
                    return None, _classify_open_error(exc, parent, name)
                if last:
                    return fd, Outcome.LOADED
                opened.append(fd)
                parent = fd
        finally:
            for fd in opened:
                os.close(fd)
        return None, Outcome.MISS

    def _read(self, fd: int, key: Any) -> tuple[Outcome, bytes | None]:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return Outcome.MISS, None  # a directory, FIFO or device is not a value
            if st.st_size > self.max_file_bytes:
                self._note(Outcome.OVERSIZED, key, f"is {st.st_size} bytes, over plugins.files.max_file_bytes")
                return Outcome.OVERSIZED, None
            value = _read_bounded(fd, self.max_file_bytes, st.st_size)
        except OSError as exc:
            self._note(Outcome.ERROR, key, f"cannot be read ({errno.errorcode.get(exc.errno or 0, 'error')})")
            return Outcome.ERROR, None
        if value is None:
            self._note(Outcome.OVERSIZED, key, "grew over plugins.files.max_file_bytes while being read")
            return Outcome.OVERSIZED, None
        return Outcome.LOADED, value

    # ------------------------------------------------------------------ logging
    def _note(self, outcome: Outcome, key: Any, what: str) -> None:
        """Log a key's problem once; the key is the only detail (no root, no path)."""
        ident = (outcome, bytes(key) if isinstance(key, (bytes, bytearray, memoryview)) else repr(key).encode())
        with self._lock:
            if ident in self._logged:
                return
            if len(self._logged) >= LOGGED_KEYS_LIMIT:
                if self._log_limit_noted:
                    return
                self._log_limit_noted = True
                log.warning("files origin: %d keys logged; further problem keys are only counted", LOGGED_KEYS_LIMIT)
                return
            self._logged.add(ident)
        log.warning("files origin: the value of key %r %s; loaded as a miss", _short(key), what)

    def _root_unavailable(self, exc: OSError, count: int) -> None:
        with self._lock:
            self.errors += count
            first = self._root_ok
            self._root_ok = False
        if first:
            log.error(
                "files origin: plugins.files.root cannot be opened (%s); every key is a miss until it can",
                errno.errorcode.get(exc.errno or 0, exc.__class__.__name__),
            )


def _classify_open_error(exc: OSError, parent: int, name: str) -> Outcome:
    """Map a failed no-follow open to an outcome: a symlink is refused, absence is a miss."""
    if exc.errno == errno.ELOOP:
        return Outcome.REJECTED  # O_NOFOLLOW met a symlink as the last component
    if exc.errno in _MISSING_ERRNOS:
        return Outcome.MISS
    if exc.errno == errno.ENOTDIR:
        # A directory component that is a symlink (refused) or a plain file (a miss).
        try:
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        except OSError:
            return Outcome.MISS
        return Outcome.REJECTED if is_link else Outcome.MISS
    return Outcome.ERROR


def _read_bounded(fd: int, limit: int, size_hint: int) -> bytes | None:
    """Read to EOF, or return None as soon as more than ``limit`` bytes have come."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        want = min(limit + 1 - total, max(size_hint + 1 - total, READ_CHUNK_BYTES))
        chunk = os.read(fd, want)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    return None


def _short(key: Any) -> Any:
    """A key cut to a loggable length (keys are bounded, but logs should not carry 512 bytes)."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
        return raw if len(raw) <= LOG_KEY_BYTES else raw[:LOG_KEY_BYTES] + b"..."
    return type(key).__name__


@hookimpl
def predis_agent_config_schema() -> dict[str, Any]:
    return config_schema()


@hookimpl
def predis_agent_register_origins(config: dict[str, Any]) -> list[FilesOrigin]:
    """One :class:`FilesOrigin` when ``root`` is set; none while it is empty."""
    root = str(config.get("root", DEFAULT_ROOT))
    if not root:
        return []
    return [
        FilesOrigin(
            root,
            max_file_bytes=int(config.get("max_file_bytes", DEFAULT_MAX_FILE_BYTES)),
            follow_symlinks=bool(config.get("follow_symlinks", DEFAULT_FOLLOW_SYMLINKS)),
        )
    ]


@hookimpl
def predis_agent_config_rules() -> list[Rule]:
    return [origin_needs(PLUGIN_NAME, PLUGIN_NAME, "root", "the directory the origin reads files from")]
