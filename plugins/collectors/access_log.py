# SPDX-License-Identifier: Apache-2.0
"""The production data collector: drains the access-event ring into encrypted segment files.

Why it looks like this:

* **Off the request path.** Producers (the RESP loop, the executor) only pay the ring
  append (``cache_core.access_log``). Draining, Arrow encoding, zstd, AES-GCM, fsync and
  retention run in one thread of this plugin's own, started by ``predis_agent_startup``;
  nothing here ever runs on the asyncio loop.
* **Segments** are written in the format of :mod:`agent.mlops.dataset` (Arrow IPC with
  zstd, then AES-256-GCM over an authenticated header), one every
  ``flush_interval_seconds`` or as soon as ``segment_max_events`` are waiting, through
  :func:`agent.security.atomic_write` (temp file in the same directory, fsync, rename,
  fsync of the directory), so a crash leaves either the whole segment or none of it.
  Unfinished temp files are removed when export (re)starts and are never read.
* **Confined.** ``export_dir`` must be absolute, without ``..``, and must resolve to
  itself: a path that is, or passes through, a symbolic link is refused (fix: name the
  real directory). It is created 0700 (and tightened to 0700 if it is looser), must be
  owned by the agent's user, and every segment path is confined to it.
* **Nothing lost silently.** The ring keeps events until they are written: the cursor
  moves past a segment only once it is on disk. Below ``min_free_bytes`` /
  ``min_free_percent`` export pauses (checked through an injectable ``statvfs``) and
  resumes by itself; a failed write (ENOSPC, EIO ...) is retried with exponential backoff
  up to ``retry_max_seconds``. Events the ring overwrites meanwhile are counted in
  ``predis_access_log_events_dropped_total{reason}``, the reason being what held export
  back (``low_disk``, ``write_failed``, ``export_refused``, ``held``: an AIOps action holds
  it, :meth:`AccessLogExporter.hold`; ``overwritten`` when nothing
  did and the ring was simply too small for the flush interval; ``not_exported`` without
  an ``export_dir``; ``ring_replaced`` for a replaced ring that could not be drained).
  So logged == exported + dropped + pending at every moment.
* **Rings come and go.** The cache service replaces its ring when its size or sampling
  changes; the old ring is drained first, then the new one (each ring is one *stream*
  with its own id in the segment header, as sequence numbers restart).
* **Retention** deletes the oldest segments past ``retention_max_bytes`` (the newest
  segment is always kept) and any older than ``retention_max_age_seconds``.
* **Status and metrics.** The state (``exporting``, ``paused``, ``retrying``,
  ``refused``, ``ring_only``, ``disabled``) and its reason appear in ``/status`` under
  ``components.access_log``; pausing never makes the agent unready, because the cache
  still serves and no event is lost uncounted. The key is never logged or shown; only
  its id (the first 8 bytes of its SHA-256) is.

Every setting is read from ``collectors.access_log`` on each cycle, so a reload applies
without re-registering the plugin; ``plugins.access_log.enabled`` only decides whether
the plugin is loaded at start.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from agent import api
from agent.api import (
    DIR_MODE_SECRET,
    Metric,
    MetricSpec,
    Secret,
    SecurityError,
    atomic_write,
    confine,
    declare_metrics,
    free_space,
    hookimpl,
)
from agent.api import remove_temp_files as remove_temp_matching

if TYPE_CHECKING:
    from agent.api import AccessLog

log = logging.getLogger(__name__)

PLUGIN_NAME = "access_log"
CONFIG_SECTION = "collectors.access_log"
COMPONENT_NAME = "access_log"
# How often the worker looks whether segment_max_events are already waiting.
PENDING_POLL_SECONDS = 0.1
# First retry delay after a failed write; doubled per failure up to retry_max_seconds.
RETRY_BASE_SECONDS = 0.5
# Doubling stops here; the delay is capped by retry_max_seconds long before.
MAX_BACKOFF_EXPONENT = 62
# Used only when the config section lacks a key (it never does after validation).
DEFAULT_FLUSH_INTERVAL_SECONDS = 10.0
DEFAULT_STOP_TIMEOUT_SECONDS = 10.0
NS_PER_SECOND = 1_000_000_000

STATE_DISABLED = "disabled"
STATE_RING_ONLY = "ring_only"
STATE_EXPORTING = "exporting"
STATE_PAUSED = "paused"
STATE_RETRYING = "retrying"
STATE_REFUSED = "refused"
STATE_HELD = "held"
HELD_BACK = {STATE_PAUSED: "low_disk", STATE_RETRYING: "write_failed", STATE_REFUSED: "export_refused", STATE_HELD: "held"}
DROP_OVERWRITTEN, DROP_NOT_EXPORTED, DROP_RING_REPLACED = "overwritten", "not_exported", "ring_replaced"
DELETE_REASONS = ("bytes", "age")

# Why logged events were dropped: every event logged is exported, still waiting in the ring
# (pending) or counted in predis_access_log_events_dropped_total{reason}.
DROP_REASONS = ("overwritten", "low_disk", "write_failed", "export_refused", "held", "not_exported", "ring_replaced")
# Every sample this collector produces, declared once; built from SPECS.
METRICS: tuple[MetricSpec, ...] = declare_metrics(
    __name__,
    (
        MetricSpec("predis_access_log_events_total", "counter", "Access events logged into the ring (after sampling)."),
        MetricSpec("predis_access_log_events_sampled_out_total", "counter", "Access events not logged because their key is not sampled."),
        MetricSpec("predis_access_log_events_exported_total", "counter", "Logged events written to segment files."),
        MetricSpec(
            "predis_access_log_events_dropped_total",
            "counter",
            "Logged events overwritten in the ring before export, by what held export back: "
            + ", ".join(DROP_REASONS)
            + ".",
            ("reason",),
        ),
        MetricSpec("predis_access_log_events_pending", "gauge", "Logged events neither exported nor counted as dropped yet."),
        MetricSpec("predis_access_log_export_lag_seconds", "gauge", "Age of the oldest event waiting for export (0 when none waits).", unit="seconds"),
        MetricSpec(
            "predis_access_log_export_duration_seconds",
            "histogram",
            "Time to encode, encrypt and durably write one segment.",
            unit="seconds",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
        ),
        MetricSpec("predis_access_log_written_bytes_total", "counter", "Bytes of segment files written.", unit="bytes"),
        MetricSpec("predis_access_log_segments_written_total", "counter", "Segment files written."),
        MetricSpec("predis_access_log_segments_deleted_total", "counter", "Segment files deleted by retention, by reason (bytes, age).", ("reason",)),
        MetricSpec("predis_access_log_write_errors_total", "counter", "Segment writes that failed (retried with backoff)."),
        MetricSpec("predis_access_log_export_paused", "gauge", "1 while export is held back (low disk, write errors, refused config); reason in /status."),
    ),
)
SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in METRICS}

Statvfs = Callable[[str], Any]
Writer = Callable[[Path, bytes], None]


@dataclass
class _Stream:
    """One ring being drained, with the sequence number of its next unexported event."""

    ring: AccessLog
    cursor: int
    stream_id: bytes

    def waiting(self) -> int:
        return max(0, self.ring.head - self.cursor)


def prepare_export_dir(raw: Any) -> Path:
    """Create (0700) or check ``raw`` as an export root; raise :class:`SecurityError` when refused."""
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise SecurityError("collectors.access_log.export_dir must be an absolute path")
    if not os.path.isabs(raw) or ".." in PurePosixPath(raw).parts:
        raise SecurityError(f"collectors.access_log.export_dir {raw!r} must be an absolute path without '..' components")
    path = Path(os.path.normpath(raw))
    _refuse_links(raw, path)
    missing = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE_SECRET)
        except FileExistsError:
            pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise SecurityError(f"collectors.access_log.export_dir {raw!r} exists and is not a directory")
    _refuse_links(raw, path)
    if info.st_uid != os.geteuid():
        raise SecurityError(
            f"collectors.access_log.export_dir {raw!r} is owned by uid {info.st_uid}, not by the agent's uid {os.geteuid()}; "
            "give the agent a directory of its own"
        )
    if stat.S_IMODE(info.st_mode) & ~DIR_MODE_SECRET:
        os.chmod(path, DIR_MODE_SECRET)
        log.info("access log: tightened %s to mode 0700", path)
    return path


def _refuse_links(raw: str, path: Path) -> None:
    resolved = path.resolve()
    if resolved != path:
        raise SecurityError(
            f"collectors.access_log.export_dir {raw!r} resolves to {str(resolved)!r} through a symbolic link; "
            "set export_dir to the real directory"
        )


def remove_temp_files(directory: Path) -> int:
    """Delete leftovers of interrupted segment writes; return how many were removed."""
    return remove_temp_matching(directory, api.TEMP_NAME_RE)


def _secret_text(value: Any) -> bytes | str | None:
    """A key setting's material: a secret's exact bytes (a key file of 32 raw bytes, hex or
    base64), or the text given."""
    if value is None:
        return None
    return value.reveal_bytes() if isinstance(value, Secret) else str(value)


def _error_text(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, exc.__class__.__name__)
    return f"{name} ({exc.strerror or exc})"


class AccessLogExporter:
    """Drains rings from ``ring_source`` into segments under ``collectors.access_log.export_dir``.

    ``flush()`` runs one cycle synchronously (tests drive it directly); ``start()``
    runs cycles in a thread of its own. ``statvfs``, ``writer`` and the clocks are
    injectable so that a full disk, a failing disk and time can be simulated.
    """

    def __init__(
        self,
        ring_source: Callable[[], AccessLog | None],
        config_source: Callable[[], Mapping[str, Any]],
        *,
        statvfs: Statvfs = os.statvfs,
        writer: Writer = atomic_write,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._ring_source = ring_source
        self._config_source = config_source
        self._statvfs = statvfs
        self._writer = writer
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._on_status = on_status
        self._cycle_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: _Stream | None = None
        self._old: _Stream | None = None
        # Counters of rings no longer drained, so the totals stay monotonic.
        self._retired_logged = 0
        self._retired_sampled_out = 0
        self.exported = 0
        self.dropped: dict[str, int] = {reason: 0 for reason in DROP_REASONS}
        self.bytes_written = 0
        self.segments_written = 0
        self.segments_deleted: dict[str, int] = {reason: 0 for reason in DELETE_REASONS}
        self.write_errors = 0
        self.temp_files_removed = 0
        self._durations: list[int] = [0] * len(SPECS["predis_access_log_export_duration_seconds"].buckets)
        self._duration_sum = 0.0
        self._duration_count = 0
        self.state = STATE_DISABLED
        self.reason: str | None = None
        self._loss_reason = DROP_OVERWRITTEN
        self._export_raw: Any = None
        self._export_dir: Path | None = None
        self._key: bytes | None = None
        self._failures = 0
        self._retry_at: float | None = None
        self._last_created_ns = 0
        self.last_segment: str | None = None
        self.last_error: str | None = None
        self._free: tuple[int, float] | None = None
        self._held: str | None = None

    # ------------------------------------------------------------------ thread
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="access-log-export", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_SECONDS) -> None:
        """Stop the worker after one last export attempt (no backoff wait)."""
        thread = self._thread
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("access log: export thread still busy after %.1fs; its pending events stay unexported", timeout)
        self._thread = None

    def wake(self) -> None:
        """Run a cycle now (after a reload)."""
        self._wake.set()

    def hold(self, reason: str) -> None:
        """Hold export back (events wait in the ring) until :meth:`release`; from the next cycle."""
        self._held = reason
        self._wake.set()

    def release(self) -> None:
        """Export again after :meth:`hold`."""
        self._held = None
        self._wake.set()

    def _run(self) -> None:
        next_due = self._monotonic()
        while not self._stop.is_set():
            section = self._config_source() or {}
            interval = float(section.get("flush_interval_seconds", DEFAULT_FLUSH_INTERVAL_SECONDS))
            full = self.state == STATE_EXPORTING and self.waiting() >= int(section.get("segment_max_events", 1) or 1)
            if self._monotonic() >= next_due or full:
                self._safe_flush(final=False)
                next_due = self._monotonic() + interval
            self._wake.wait(max(0.0, min(PENDING_POLL_SECONDS, next_due - self._monotonic())))
            if self._wake.is_set():
                self._wake.clear()
                next_due = self._monotonic()
        self._safe_flush(final=True)

    def _safe_flush(self, final: bool) -> None:
        try:
            self.flush(final=final)
        except Exception as exc:  # the exporter must never die; the next cycle tries again
            self.last_error = f"{exc.__class__.__name__}: {exc}"
            log.exception("access log: export cycle failed; it is tried again next interval")

    # ------------------------------------------------------------------ one cycle
    def flush(self, final: bool = False) -> str:
        """Run one export cycle now; return the resulting state. ``final`` ignores the backoff."""
        with self._cycle_lock:
            self._cycle(final)
            self._publish()
            return self.state

    def _cycle(self, final: bool) -> None:
        section = dict(self._config_source() or {})
        self._track_rings()
        streams = self._streams()
        if not streams:
            self._set_state(STATE_DISABLED, None)
            return
        export_dir = section.get("export_dir")
        if not export_dir:
            self._export_raw = self._export_dir = None
            self._set_state(STATE_RING_ONLY, "collectors.access_log.export_dir is not set: events stay in the ring only")
            self._account_losses(DROP_NOT_EXPORTED)
            self._retire_old(DROP_NOT_EXPORTED)
            return
        try:
            directory = self._configure_export(export_dir, section.get("encryption_key"))
        except (SecurityError, api.KeyFormatError, OSError) as exc:
            text = str(exc) if not isinstance(exc, OSError) else f"export_dir {export_dir!r}: {_error_text(exc)}"
            self._export_raw = self._export_dir = None
            self._set_state(STATE_REFUSED, f"export refused: {text}")
            self._account_losses(HELD_BACK[STATE_REFUSED])
            return
        self._export(directory, section, streams, final)
        self._retention(directory, section)

    def _export(self, directory: Path, section: Mapping[str, Any], streams: list[_Stream], final: bool) -> None:
        held = self._held
        if held is not None and not final:
            self._set_state(STATE_HELD, held)
            self._account_losses(HELD_BACK[STATE_HELD])
            return
        if not final and self._retry_at is not None and self._monotonic() < self._retry_at:
            self._account_losses(HELD_BACK[STATE_RETRYING])
            return
        if not self._space_ok(directory, section):
            self._account_losses(HELD_BACK[STATE_PAUSED])
            return
        for stream in streams:
            if not self._drain(stream, directory, section):
                return
        if self._old is not None and self._old.waiting() == 0:
            self._retire_old(DROP_RING_REPLACED)
        self._failures = 0
        self._retry_at = None
        self._loss_reason = DROP_OVERWRITTEN
        self._set_state(STATE_EXPORTING, None)

    def _track_rings(self) -> None:
        ring = self._ring_source()
        current = self._current
        if current is not None and ring is current.ring:
            return
        if current is not None and self._old is not None:
            # A second replacement before the first old ring was drained: give up on it.
            self._retire_old(DROP_RING_REPLACED)
        with self._stats_lock:
            if current is not None:
                self._old = current
            self._current = _Stream(ring, 0, secrets.token_bytes(api.STREAM_ID_BYTES)) if ring is not None else None

    def _streams(self) -> list[_Stream]:
        return [s for s in (self._old, self._current) if s is not None]

    def _retire_old(self, reason: str) -> None:
        old = self._old
        if old is None:
            return
        left = old.waiting()
        with self._stats_lock:
            if left:
                self.dropped[reason] += left
            self._retired_logged += old.ring.head
            self._retired_sampled_out += old.ring.sampled_out
            self._old = None

    def _account_losses(self, reason: str) -> None:
        """Count events the rings overwrote before export and move the cursors past them."""
        for stream in self._streams():
            oldest = max(0, stream.ring.head - stream.ring.capacity)
            if stream.cursor < oldest:
                with self._stats_lock:
                    self.dropped[reason] += oldest - stream.cursor
                    stream.cursor = oldest

    def _configure_export(self, export_dir: Any, key_value: Any) -> Path:
        material = _secret_text(key_value)
        if not material:
            raise api.KeyFormatError("collectors.access_log.encryption_key is not set; it is required with export_dir")
        try:
            key = api.parse_key(material)
        except api.KeyFormatError as exc:
            raise api.KeyFormatError(f"collectors.access_log.encryption_key is {exc}") from None
        directory = prepare_export_dir(export_dir)
        if export_dir != self._export_raw or self._export_dir is None:
            removed = remove_temp_files(directory)
            if removed:
                log.warning("access log: removed %d unfinished segment temp file(s) in %s", removed, directory)
            with self._stats_lock:
                self.temp_files_removed += removed
        self._export_dir = directory
        self._export_raw = export_dir
        if key != self._key:
            if self._key is not None:
                log.info("access log: encryption key changed; new segments use key id %s", api.key_id(key).hex())
            self._key = key
        return directory

    def _space_ok(self, directory: Path, section: Mapping[str, Any]) -> bool:
        try:
            free, percent = free_space(self._statvfs, directory)
        except OSError as exc:
            self._write_failed(section, f"checking free space on {directory} failed: {_error_text(exc)}")
            return False
        self._free = (free, percent)
        min_bytes = int(section.get("min_free_bytes", 0))
        min_percent = float(section.get("min_free_percent", 0))
        if free >= min_bytes and percent >= min_percent:
            return True
        self._set_state(
            STATE_PAUSED,
            f"export paused: {free} bytes ({percent:.2f}%) free on the export filesystem, below "
            f"min_free_bytes {min_bytes} or min_free_percent {min_percent}; events wait in the ring and export resumes by itself",
        )
        return False

    def _drain(self, stream: _Stream, directory: Path, section: Mapping[str, Any]) -> bool:
        """Write every event of ``stream`` logged so far; False when a write failed."""
        assert self._key is not None
        limit = max(1, int(section.get("segment_max_events", 1)))
        target = stream.ring.head
        while stream.cursor < target:
            result = stream.ring.read(stream.cursor, max_events=min(limit, target - stream.cursor))
            count = int(result.events.shape[0])
            with self._stats_lock:
                if result.lost:
                    self.dropped[self._loss_reason] += result.lost
                stream.cursor = result.next_sequence - count
            if count == 0:
                stream.cursor = result.next_sequence
                break
            started = self._monotonic()
            first = result.next_sequence - count
            created = self._next_created_ns(directory, first)
            name = api.segment_name(created, first)
            blob = api.encode_segment(
                result.events, result.keys, first_seq=first, key=self._key, stream_id=stream.stream_id, created_ns=created
            )
            try:
                self._writer(confine(directory, name), blob)
            except OSError as exc:
                self._write_failed(section, f"writing segment {name} failed: {_error_text(exc)}")
                return False
            elapsed = self._monotonic() - started
            with self._stats_lock:
                stream.cursor = result.next_sequence
                self.exported += count
                self.bytes_written += len(blob)
                self.segments_written += 1
                self.last_segment = name
                self._observe(elapsed)
            self._last_created_ns = created
            if self._failures:
                log.info("access log: segment writes recovered after %d failure(s)", self._failures)
                self._failures = 0
                self._retry_at = None
        return True

    def _next_created_ns(self, directory: Path, first: int) -> int:
        """A creation time after the previous segment's, naming no existing file (never overwrite)."""
        created = max(int(self._clock_ns()), self._last_created_ns + 1)
        while os.path.lexists(directory / api.segment_name(created, first)):
            created += 1
        return created

    def _write_failed(self, section: Mapping[str, Any], message: str) -> None:
        self._failures += 1
        limit = float(section.get("retry_max_seconds", RETRY_BASE_SECONDS))
        delay = min(limit, RETRY_BASE_SECONDS * (2 ** min(self._failures - 1, MAX_BACKOFF_EXPONENT)))
        self._retry_at = self._monotonic() + delay
        with self._stats_lock:
            self.write_errors += 1
            self.last_error = message
        level = logging.WARNING if self._failures == 1 or delay >= limit else logging.DEBUG
        log.log(level, "access log: %s; retry %d in %.1fs (events wait in the ring)", message, self._failures, delay)
        self._set_state(STATE_RETRYING, f"{message}; retrying in {delay:.1f}s (attempt {self._failures})")

    def _observe(self, seconds: float) -> None:
        bounds = SPECS["predis_access_log_export_duration_seconds"].buckets
        for index, bound in enumerate(bounds):
            if seconds <= bound:
                self._durations[index] += 1
                break
        self._duration_sum += seconds
        self._duration_count += 1

    def _set_state(self, state: str, reason: str | None) -> None:
        if state != self.state:
            if state in HELD_BACK:
                log.warning("access log: %s", reason)
            elif self.state in HELD_BACK:
                log.info("access log: export %s again", state)
        if state in HELD_BACK:
            self._loss_reason = HELD_BACK[state]
        self.state = state
        self.reason = reason

    # ------------------------------------------------------------------ retention
    def _retention(self, directory: Path, section: Mapping[str, Any]) -> None:
        max_bytes = int(section.get("retention_max_bytes", 0) or 0)
        max_age_ns = int(float(section.get("retention_max_age_seconds", 0) or 0) * NS_PER_SECOND)
        now = int(self._clock_ns())
        kept: list[tuple[str, int]] = []
        for name in api.list_segments(directory):
            parsed = api.parse_segment_name(name)
            assert parsed is not None
            try:
                info = os.lstat(directory / name)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            if max_age_ns and now - parsed[0] > max_age_ns:
                self._delete(directory, name, "age")
            else:
                kept.append((name, info.st_size))
        total = sum(size for _name, size in kept)
        while max_bytes and total > max_bytes and len(kept) > 1:
            name, size = kept.pop(0)
            self._delete(directory, name, "bytes")
            total -= size

    def _delete(self, directory: Path, name: str, reason: str) -> None:
        try:
            os.unlink(confine(directory, name))
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("access log: retention could not delete %s: %s", name, _error_text(exc))
            return
        with self._stats_lock:
            self.segments_deleted[reason] += 1

    # ------------------------------------------------------------------ reporting
    def waiting(self) -> int:
        return sum(s.waiting() for s in self._streams())

    def totals(self) -> dict[str, Any]:
        """Counters for metrics and tests: logged == exported + sum(dropped) + pending."""
        with self._stats_lock:
            streams = self._streams()
            return {
                "logged": self._retired_logged + sum(s.ring.head for s in streams),
                "sampled_out": self._retired_sampled_out + sum(s.ring.sampled_out for s in streams),
                "exported": self.exported,
                "dropped": dict(self.dropped),
                "pending": sum(s.waiting() for s in streams),
            }

    def lag_seconds(self) -> float:
        """Age of the oldest event not yet exported (0 when none waits)."""
        for stream in self._streams():
            if stream.waiting():
                oldest = stream.ring.read(stream.cursor, max_events=1).events
                if oldest.shape[0]:
                    return max(0.0, (int(self._clock_ns()) - int(oldest["ts_ns"][0])) / NS_PER_SECOND)
        return 0.0

    def status(self) -> dict[str, Any]:
        """What ``/status`` shows under ``components.access_log`` (never the key)."""
        totals = self.totals()
        free = self._free
        return {
            "state": self.state,
            "paused": self.state in HELD_BACK,
            "reason": self.reason,
            "export_dir": str(self._export_dir) if self._export_dir else None,
            "key_id": api.key_id(self._key).hex() if self._key is not None and self._export_dir is not None else None,
            "events_logged": totals["logged"],
            "events_exported": totals["exported"],
            "events_pending": totals["pending"],
            "events_dropped": {k: v for k, v in totals["dropped"].items() if v},
            "segments_written": self.segments_written,
            "bytes_written": self.bytes_written,
            "write_errors": self.write_errors,
            "last_segment": self.last_segment,
            "last_error": self.last_error,
            "free_bytes": free[0] if free else None,
            "free_percent": round(free[1], 3) if free else None,
            "temp_files_removed": self.temp_files_removed,
        }

    def _publish(self) -> None:
        if self._on_status is not None:
            self._on_status(self.status())

    def metrics(self) -> list[Metric]:
        totals = self.totals()

        def one(name: str, value: float, labels: Mapping[str, str] | None = None) -> Metric:
            spec = SPECS[name]
            return Metric(spec.name, float(value), spec.kind, dict(labels or {}), spec.help)

        out = [
            one("predis_access_log_events_total", totals["logged"]),
            one("predis_access_log_events_sampled_out_total", totals["sampled_out"]),
            one("predis_access_log_events_exported_total", totals["exported"]),
            one("predis_access_log_events_pending", totals["pending"]),
            one("predis_access_log_export_lag_seconds", self.lag_seconds()),
            one("predis_access_log_written_bytes_total", self.bytes_written),
            one("predis_access_log_segments_written_total", self.segments_written),
            one("predis_access_log_write_errors_total", self.write_errors),
            one("predis_access_log_export_paused", 1 if self.state in HELD_BACK else 0),
        ]
        out.extend(one("predis_access_log_events_dropped_total", n, {"reason": r}) for r, n in totals["dropped"].items())
        out.extend(one("predis_access_log_segments_deleted_total", n, {"reason": r}) for r, n in self.segments_deleted.items())
        spec = SPECS["predis_access_log_export_duration_seconds"]
        with self._stats_lock:
            running = 0
            buckets: list[tuple[float, float]] = []
            for bound, n in zip(spec.buckets, self._durations):
                running += n
                buckets.append((bound, float(running)))
            total, count = self._duration_sum, self._duration_count
        out.append(Metric(spec.name, total, spec.kind, {}, spec.help, buckets=tuple(buckets), count=float(count)))
        return out


class AccessLogCollector:
    """Hands the exporter's self-metrics to the agent's collection round."""

    name = "access_log"

    def __init__(self, exporter: AccessLogExporter) -> None:
        self.exporter = exporter

    def collect(self) -> list[Metric]:
        return self.exporter.metrics()


# ---------------------------------------------------------------------------- plugin hooks

_EXPORTERS: WeakKeyDictionary[Any, AccessLogExporter] = WeakKeyDictionary()
_EXPORTERS_LOCK = threading.Lock()


def exporter_for(agent: Any) -> AccessLogExporter:
    """The one exporter of ``agent`` (created on first use)."""
    with _EXPORTERS_LOCK:
        exporter = _EXPORTERS.get(agent)
        if exporter is None:
            statuses = getattr(agent, "component_status", None)

            def publish(status: dict[str, Any]) -> None:
                if isinstance(statuses, dict):
                    statuses[COMPONENT_NAME] = status

            exporter = AccessLogExporter(
                lambda: getattr(agent.cache_service, "access_log", None),
                lambda: agent.config.section(CONFIG_SECTION),
                on_status=publish,
            )
            _EXPORTERS[agent] = exporter
        return exporter


@hookimpl
def predis_agent_config_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Loads the production data collector; its settings are collectors.access_log.",
        "properties": {},
    }


@hookimpl
def predis_agent_register_collectors(agent: Any) -> list[AccessLogCollector]:
    return [AccessLogCollector(exporter_for(agent))]


@hookimpl
def predis_agent_startup(agent: Any) -> None:
    exporter_for(agent).start()


@hookimpl
def predis_agent_event(agent: Any, event: Any) -> None:
    if getattr(event, "kind", None) == "config_reloaded":
        exporter_for(agent).wake()


@hookimpl
def predis_agent_shutdown(agent: Any) -> None:
    timeout = float(agent.config.get("agent.shutdown_timeout_seconds", DEFAULT_STOP_TIMEOUT_SECONDS))
    exporter_for(agent).stop(timeout)
