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

Counters are stored as the cumulative values the process keeps (monotonic across a cache
rebuild, see ``Cache.carry_counters``; they start from zero when the process starts). Each
round records which run of the agent wrote it (``rounds.run``, one per process start), so a
total over a window is the sum of the increases between consecutive rounds of the same run,
plus the first round of a run counted from zero (:func:`agent.roi.increase`). A histogram
is stored as its ``_sum``, ``_count`` and cumulative ``_bucket`` series (labels ``le``), the
labels in :data:`HISTOGRAM_FOLD` summed away. Events (drift detected, rollout decisions,
reloads) are kept in their own table with the same bounds.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import stat
import threading
from collections import defaultdict
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
        "predis_gpu_devices", "process_resident_memory_bytes", "process_cpu_seconds_total",
        "predis_cache_origin_reads_total", "predis_cache_origin_read_bytes_total",
        "predis_cache_control_reads_total", "predis_cache_control_hits_total",
        "predis_cache_prefetch_observed_total", "predis_cache_prefetch_skipped_control_total",
        "predis_drift_score", "predis_drift_checks_total", "predis_drift_detected_total",
        "predis_mlops_retrain_total", "predis_mlops_candidate_hit_ratio", "predis_mlops_champion_hit_ratio",
        "predis_mlops_baseline_hit_ratio", "predis_mlops_serving_version", "predis_mlops_rollout_share_ratio",
        "predis_agent_sink_queue_points", "predis_agent_sink_queue_bytes", "predis_agent_sink_outage_budget_seconds",
        "predis_agent_sink_points_sent_total", "predis_agent_sink_points_failed_total",
        "predis_agent_sink_points_dropped_total", "predis_agent_sink_breaker_state", "predis_agent_sink_spool_paused",
    }
)  # fmt: skip
# Histograms recorded (as _sum, _count and _bucket series), with the labels summed away.
HISTOGRAM_FOLD: dict[str, tuple[str, ...]] = {
    "predis_cache_command_duration_seconds": ("command",),
    "predis_cache_origin_read_duration_seconds": (),
}
KINDS = ("counter", "gauge")
DIR_MODE = 0o700
FILE_MODE = 0o600
# The budget is checked every this many rounds (a size query is cheap, a delete is not).
BUDGET_CHECK_ROUNDS = 16
# Rounds deleted at once while over the budget (the oldest first).
BUDGET_DELETE_ROUNDS = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, run TEXT NOT NULL DEFAULT '', first INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS rounds_ts ON rounds (ts);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS samples (
    round INTEGER NOT NULL REFERENCES rounds (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_name ON samples (name, round);
CREATE INDEX IF NOT EXISTS samples_round ON samples (round);
"""


# This process's run: the rounds of one run share their counters' zero. The first round the
# process records (in whichever history) counts from zero; a history opened later in the
# process (console.history_path changed) starts from its first round, as from any other.
PROCESS_RUN = secrets.token_hex(8)
_process_recorded = False


def _mark_recorded() -> None:
    global _process_recorded
    _process_recorded = True


class HistoryError(AgentError, OSError):
    """The history database cannot be opened or written (the message names the path)."""


@dataclass(frozen=True)
class Point:
    """One stored sample: when, its labels, its value, which run of the agent wrote it and
    whether it is that run's first round (its counters then count from zero)."""

    ts: float
    labels: dict[str, str]
    value: float
    run: str = ""
    first: bool = False


def _label_text(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def history_rows(samples: Iterable[Any]) -> list[tuple[str, str, float]]:
    """``(name, labels as JSON, value)`` rows of the recorded series among ``samples``
    (``agent.telemetry.Metric``): counters and gauges of :data:`HISTORY_SERIES` as they
    are, the histograms of :data:`HISTOGRAM_FOLD` folded into ``_sum``, ``_count`` and
    ``_bucket`` rows."""
    rows: list[tuple[str, str, float]] = []
    folded: dict[tuple[str, str], float] = defaultdict(float)
    for m in samples:
        if m.name in HISTORY_SERIES and m.kind in KINDS:
            rows.append((m.name, _label_text(dict(m.labels)), float(m.value)))
        elif m.kind == "histogram" and m.name in HISTOGRAM_FOLD:
            drop = HISTOGRAM_FOLD[m.name]
            kept = {k: v for k, v in m.labels.items() if k not in drop}
            folded[(f"{m.name}_sum", _label_text(kept))] += float(m.value)
            folded[(f"{m.name}_count", _label_text(kept))] += float(m.count)
            buckets = list(m.buckets)
            if not buckets or buckets[-1][0] != float("inf"):
                buckets.append((float("inf"), float(m.count)))
            for bound, count in buckets:
                le = "+Inf" if bound == float("inf") else repr(float(bound))
                folded[(f"{m.name}_bucket", _label_text({**kept, "le": le}))] += float(count)
    rows.extend((name, labels, value) for (name, labels), value in folded.items())
    return rows


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
        self.run = PROCESS_RUN
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
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(rounds)")}
            if "run" not in columns:
                self._db.execute("ALTER TABLE rounds ADD COLUMN run TEXT NOT NULL DEFAULT ''")
                self._db.execute("ALTER TABLE rounds ADD COLUMN first INTEGER NOT NULL DEFAULT 0")
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
        Returns how many rows were stored. Raises :class:`HistoryError` when the disk refuses."""
        rows = history_rows(samples)
        with self._lock:
            try:
                with self._db:
                    self._db.execute("BEGIN")
                    round_id = self._db.execute(
                        "INSERT INTO rounds (ts, run, first) VALUES (?, ?, ?)", (ts, self.run, int(not _process_recorded))
                    ).lastrowid
                    self._db.executemany(
                        "INSERT INTO samples (round, name, labels, value) VALUES (?, ?, ?, ?)",
                        [(round_id, name, labels, value) for name, labels, value in rows],
                    )
                _mark_recorded()
                if self._rounds % BUDGET_CHECK_ROUNDS == 0:
                    self._enforce_bounds(ts)
                self._rounds += 1
            except sqlite3.Error as exc:
                raise HistoryError(f"console.history_path {self.path}: {exc}") from None
        return len(rows)

    def record_event(self, ts: float, kind: str, detail: dict[str, Any]) -> None:
        """Keep one event (drift detected, a rollout decision, a reload). Raises
        :class:`HistoryError` when the disk refuses."""
        text = json.dumps(detail, sort_keys=True, default=str)
        with self._lock:
            try:
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.execute("INSERT INTO events (ts, kind, detail) VALUES (?, ?, ?)", (ts, kind, text))
            except sqlite3.Error as exc:
                raise HistoryError(f"console.history_path {self.path}: {exc}") from None

    def size_bytes(self) -> int:
        """The database's size in pages in use (the WAL is checkpointed into it)."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._db.execute("PRAGMA page_size").fetchone()[0])

    def _enforce_bounds(self, now: float) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM rounds WHERE ts < ?", (now - self.retention_seconds,))
            self._db.execute("DELETE FROM events WHERE ts < ?", (now - self.retention_seconds,))
        while self.size_bytes() > self.max_bytes and self._count("rounds") > 1:
            with self._db:
                self._db.execute("BEGIN")
                deleted = self._db.execute(
                    "DELETE FROM rounds WHERE id IN (SELECT id FROM rounds ORDER BY id LIMIT ?)", (BUDGET_DELETE_ROUNDS,)
                ).rowcount
                # Events older than the oldest round kept go with the rounds.
                self._db.execute("DELETE FROM events WHERE ts < (SELECT min(ts) FROM rounds)")
            self.dropped_rounds += max(0, deleted)
        self._db.execute("PRAGMA incremental_vacuum")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reading --------------------------------------------------------------------------
    def series(self, name: str, since: float = 0.0) -> list[Point]:
        """Every stored sample of series ``name`` from ``since`` on, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT rounds.ts, samples.labels, samples.value, rounds.run, rounds.first FROM samples "
                "JOIN rounds ON rounds.id = samples.round WHERE samples.name = ? AND rounds.ts >= ? ORDER BY rounds.id",
                (name, since),
            ).fetchall()
        return [Point(float(ts), json.loads(labels), float(value), str(run), bool(first)) for ts, labels, value, run, first in rows]

    def rounds(self, since: float = 0.0) -> list[tuple[float, str, bool]]:
        """``(ts, run, first)`` of every stored round from ``since`` on, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT ts, run, first FROM rounds WHERE ts >= ? ORDER BY id", (since,)).fetchall()
        return [(float(ts), str(run), bool(first)) for ts, run, first in rows]

    def events(self, since: float = 0.0) -> list[tuple[float, str, dict[str, Any]]]:
        """``(ts, kind, detail)`` of every kept event from ``since`` on, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT ts, kind, detail FROM events WHERE ts >= ? ORDER BY id", (since,)).fetchall()
        return [(float(ts), str(kind), json.loads(detail)) for ts, kind, detail in rows]

    def span(self) -> tuple[float, float] | None:
        """The first and last round's time, or None while nothing is stored."""
        with self._lock:
            first, last = self._db.execute("SELECT min(ts), max(ts) FROM rounds").fetchone()
        return None if first is None else (float(first), float(last))

    def close(self) -> None:
        with self._lock:
            self._db.close()
