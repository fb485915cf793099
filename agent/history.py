# SPDX-License-Identifier: Apache-2.0
"""The agent's own measurements over time, on disk: the history the console draws from.

Each collection round appends the samples of the series in :data:`HISTORY_SERIES` (the
counters and gauges the cache, its prefetching, its origin and the GPU really keep, with
their labels) to an SQLite database (the standard library's ``sqlite3``: an embedded,
crash-safe store that needs no file format of our own).

* **Crash-safe**: write-ahead log (``journal_mode=WAL``, ``synchronous=NORMAL``): a crash or a
  power loss leaves the database consistent, losing at most the last rounds.
* **Bounded**: rows older than ``console.retention_seconds`` are deleted, and while the
  database is larger than ``console.history_max_bytes`` the oldest rounds go first; freed
  pages are given back to the file system (``auto_vacuum=INCREMENTAL``). What was deleted
  for the budget is counted (:attr:`History.dropped_rounds`).
* **Private**: the file, its WAL and shared-memory files are created 0600 in a directory the
  agent creates 0700; a path through a symlink is refused.
* **Survives restarts and reloads**: the same path is opened again; a reload that changes
  only the bounds keeps the open database.

Counters are stored as the cumulative values the cache keeps (monotonic across a cache
rebuild, see ``Cache.carry_counters``), so a rate or a total over any window is a
difference of two stored values.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError

log = logging.getLogger(__name__)

# What a round records: counters and gauges only (a histogram's buckets are not series).
HISTORY_SERIES = frozenset(
    {
        "predis_cache_hits_total", "predis_cache_misses_total", "predis_cache_sets_total",
        "predis_cache_deletes_total", "predis_cache_evictions_total", "predis_cache_expirations_total",
        "predis_cache_origin_loads_total", "predis_cache_origin_errors_total",
        "predis_cache_prefetch_inserted_total", "predis_cache_prefetch_used_total",
        "predis_cache_prefetch_wasted_total", "predis_cache_prefetch_skipped_total",
        "predis_cache_prefetch_threshold", "predis_cache_prefetch_backed_off",
        "predis_cache_prefetch_inference_seconds_total", "predis_cache_commands_total",
        "predis_cache_command_errors_total", "predis_cache_connected_clients", "predis_cache_keys",
        "predis_cache_memory_bytes", "predis_cache_value_bytes", "predis_cache_max_memory_bytes",
        "predis_gpu_utilization_ratio", "predis_gpu_memory_used_bytes", "predis_gpu_memory_total_bytes",
    }
)  # fmt: skip
KINDS = ("counter", "gauge")
DIR_MODE = 0o700
FILE_MODE = 0o600
# The budget is checked every this many rounds (a size query is cheap, a delete is not).
BUDGET_CHECK_ROUNDS = 16
# Rounds deleted at once while over the budget (the oldest first).
BUDGET_DELETE_ROUNDS = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (id INTEGER PRIMARY KEY, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rounds_ts ON rounds (ts);
CREATE TABLE IF NOT EXISTS samples (
    round INTEGER NOT NULL REFERENCES rounds (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_name ON samples (name, round);
CREATE INDEX IF NOT EXISTS samples_round ON samples (round);
"""


class HistoryError(AgentError, OSError):
    """The history database cannot be opened or written (the message names the path)."""


@dataclass(frozen=True)
class Point:
    """One stored sample: when, its labels, its value."""

    ts: float
    labels: dict[str, str]
    value: float


def _private_dir(path: Path) -> None:
    if path.parent.is_symlink():
        raise HistoryError(f"console.history_path: {path.parent} is a symlink; give a real directory")
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 if it is missing; refuse a symlink or anything but a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise HistoryError(f"console.history_path {path}: {exc.strerror or exc} (a symlink is refused)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise HistoryError(f"console.history_path {path} is not a regular file")
        if stat.S_IMODE(info.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


class History:
    """The on-disk series of one agent. Thread-safe (collection rounds run in a pool)."""

    def __init__(self, path: str | os.PathLike[str], retention_seconds: float, max_bytes: int) -> None:
        self.path = Path(path).expanduser()
        self.retention_seconds = float(retention_seconds)
        self.max_bytes = int(max_bytes)
        self.dropped_rounds = 0
        self._rounds = 0
        self._lock = threading.Lock()
        _private_dir(self.path)
        for suffix in ("", "-wal", "-shm"):
            _private_file(self.path.with_name(self.path.name + suffix))
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA foreign_keys = ON")
            if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2 and self._count("rounds", missing_ok=True) == 0:
                self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self._db.execute("VACUUM")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"console.history_path {self.path}: {exc}; move the file away to start a new history") from None

    def _count(self, table: str, *, missing_ok: bool = False) -> int:
        try:
            return int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        except sqlite3.OperationalError:
            if missing_ok:
                return 0
            raise

    def retune(self, retention_seconds: float, max_bytes: int) -> None:
        with self._lock:
            self.retention_seconds = float(retention_seconds)
            self.max_bytes = int(max_bytes)
            self._rounds = 0  # check the bounds on the next round

    # -- writing --------------------------------------------------------------------------
    def record(self, ts: float, samples: Iterable[Any]) -> int:
        """Append one round: the samples (``agent.telemetry.Metric``) of the recorded series.
        Returns how many were stored. Raises :class:`HistoryError` when the disk refuses."""
        rows = [
            (m.name, json.dumps(dict(m.labels), sort_keys=True, separators=(",", ":")), float(m.value))
            for m in samples
            if m.name in HISTORY_SERIES and m.kind in KINDS
        ]
        with self._lock:
            try:
                with self._db:
                    self._db.execute("BEGIN")
                    round_id = self._db.execute("INSERT INTO rounds (ts) VALUES (?)", (ts,)).lastrowid
                    self._db.executemany(
                        "INSERT INTO samples (round, name, labels, value) VALUES (?, ?, ?, ?)",
                        [(round_id, name, labels, value) for name, labels, value in rows],
                    )
                if self._rounds % BUDGET_CHECK_ROUNDS == 0:
                    self._enforce_bounds(ts)
                self._rounds += 1
            except sqlite3.Error as exc:
                raise HistoryError(f"console.history_path {self.path}: {exc}") from None
        return len(rows)

    def size_bytes(self) -> int:
        """The database's size in pages in use (the WAL is checkpointed into it)."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._db.execute("PRAGMA page_size").fetchone()[0])

    def _enforce_bounds(self, now: float) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM rounds WHERE ts < ?", (now - self.retention_seconds,))
        while self.size_bytes() > self.max_bytes and self._count("rounds") > 1:
            with self._db:
                self._db.execute("BEGIN")
                deleted = self._db.execute(
                    "DELETE FROM rounds WHERE id IN (SELECT id FROM rounds ORDER BY id LIMIT ?)", (BUDGET_DELETE_ROUNDS,)
                ).rowcount
            self.dropped_rounds += max(0, deleted)
        self._db.execute("PRAGMA incremental_vacuum")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reading --------------------------------------------------------------------------
    def series(self, name: str, since: float = 0.0) -> list[Point]:
        """Every stored sample of series ``name`` from ``since`` on, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT rounds.ts, samples.labels, samples.value FROM samples JOIN rounds ON rounds.id = samples.round "
                "WHERE samples.name = ? AND rounds.ts >= ? ORDER BY rounds.id",
                (name, since),
            ).fetchall()
        return [Point(float(ts), json.loads(labels), float(value)) for ts, labels, value in rows]

    def span(self) -> tuple[float, float] | None:
        """The first and last round's time, or None while nothing is stored."""
        with self._lock:
            first, last = self._db.execute("SELECT min(ts), max(ts) FROM rounds").fetchone()
        return None if first is None else (float(first), float(last))

    def close(self) -> None:
        with self._lock:
            self._db.close()
