# SPDX-License-Identifier: Apache-2.0
"""ResilientSink: one per push exporter — bounded queue, worker, retry, breaker, spool.

The sink belongs to the host, not to the plugin: it survives config reloads, and only the
exporter object inside it is replaced (:meth:`ResilientSink.replace_exporter`), so payloads
queued during a reload are delivered by the new exporter, never dropped.

What happens to a payload:

* ``submit(batch)`` runs the exporter's ``encode`` (limit-aware splitting, counter deltas)
  on the collection thread and queues the payloads it returns. The queue is bounded by
  points, by bytes and by age; past a bound the oldest waiting payload is dropped and its
  points are counted (``predis_agent_sink_points_dropped_total{reason}``).
* The worker thread sends the oldest payload. Each attempt goes through a pybreaker
  breaker and runs under the per-attempt timeout. Failures are classified:

  ==========================  ===================================================
  transient (network, 5xx,    retried by tenacity: exponential backoff with full
  408, 429, open breaker)     jitter, never sooner than the vendor's Retry-After
  too large (413, a vendor    split in half by the exporter and the halves queued
  limit)                      in its place; a payload of one point is dead-lettered
  invalid (400)               written to the dead-letter directory with the
                              vendor's answer, counted, never retried
  auth (401, 403)             the exporter re-reads its secret, the breaker is
                              opened, an event and an error log say so; the
                              payload stays queued for the half-open probe
  ==========================  ===================================================

  A payload is retried until it is older than ``max_age_seconds`` (the give-up age),
  then dropped and counted as ``expired``.
* With a spool directory every queued payload is also a file (written atomically, 0600)
  that is removed once the payload is delivered or dropped; a restarted agent queues
  the spooled payloads again, so a restart during an outage loses nothing. A spool file
  that cannot be read is moved to ``quarantine/`` and reported; temp files of writes a
  crash interrupted are removed when the spool is opened. Below ``spool_min_free_bytes`` /
  ``spool_min_free_percent`` free (or on ENOSPC) spooling pauses: payloads stay queued in
  memory only, and once space returns they are written to the spool after all.
* Queued JSON bodies are kept as compact JSON bytes (:meth:`Payload.pack`), and the byte
  bound counts what a payload really holds, so ``queue_max_bytes`` bounds memory.

Exporters that only implement ``send(batch)`` still work: their whole batch is one payload
that is never split and never spooled (its body is not JSON).

The export layer's exceptions (the agent layer's are in :mod:`agent.errors`); an exporter
raises the one that says what the sink should do::

    ExportError                  base; ``kind`` names the sink's reaction
    ├── TransientExportError     network trouble, 5xx, 408, 429: retried with backoff
    ├── PayloadTooLargeError     413 or a vendor limit: split in half, the halves queued
    ├── InvalidPayloadError      400: dead-lettered, never retried
    ├── ExportAuthError          401/403: secret re-read, breaker opened, payload kept
    └── _Stopped                 internal: the sink is stopping, the payload stays queued
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import errno
import itertools
import json
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.security import private_dir
from cache_core.files import atomic_write, remove_temp_files, temp_name_re

if TYPE_CHECKING:
    import pybreaker
    import tenacity

log = logging.getLogger(__name__)

Statvfs = Callable[[str], Any]

# How much of a vendor's error answer is kept in logs, /status and dead-letter files.
ANSWER_LIMIT = 4096
# The temp files a spool write leaves when a crash interrupts it (cache_core.files).
SPOOL_TEMP_RE = temp_name_re(r"[0-9]{20}\.json")
# At most one "spool paused" log line per this many seconds (the state is in /status and
# predis_agent_sink_spool_paused all the time).
SPOOL_PAUSED_LOG_SECONDS = 60.0
PERCENT = 100.0
# Why a sink drops points: the ``reason`` label of predis_agent_sink_points_dropped_total.
DROP_REASONS = ("encode_error", "shutdown", "expired", "queue_full", "invalid", "too_large")
# Breaker states (pybreaker's names) and the ``state`` label of predis_agent_sink_breaker_state.
BREAKER_STATES = {"closed": "closed", "half-open": "half_open", "open": "open"}
# Threads a sink sends from (see ResilientSink._bounded_send).
SENDER_THREADS = 2
# Memory of a queued payload besides its packed JSON: the Payload object, the bytes
# object's header, its float and the queue slot (measured with tracemalloc, rounded up).
PAYLOAD_OVERHEAD_BYTES = 256


# ----------------------------------------------------------------------------- errors
class ExportError(Exception):
    """A send that failed; the subclass says what the sink should do about it."""

    kind = "transient"

    def __init__(self, message: str, *, status: int | None = None, answer: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.answer = answer[:ANSWER_LIMIT]
        self.retry_after = retry_after


class TransientExportError(ExportError):
    """Network trouble, 5xx, 408, 429, throttling: retry later."""

    kind = "transient"


class PayloadTooLargeError(ExportError):
    """413 or a vendor limit: split the payload and send the halves."""

    kind = "too_large"


class InvalidPayloadError(ExportError):
    """400: the vendor will never accept this payload; dead-letter it."""

    kind = "invalid"


class ExportAuthError(ExportError):
    """401/403: the credentials are wrong or revoked."""

    kind = "auth"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def http_error(status: int, answer: str = "", retry_after: str | None = None, where: str = "") -> ExportError | None:
    """The :class:`ExportError` for an HTTP status, or None for a success (2xx).

    404 is retried (as the Datadog Agent does: a proxy or load balancer in the way
    answers 404 while the vendor is being deployed); other 4xx are invalid payloads.
    """
    if 200 <= status < 300:
        return None
    text = f"{where}HTTP {status}" + (f": {answer[:200]}" if answer else "")
    wait = parse_retry_after(retry_after)
    if status == 413:
        return PayloadTooLargeError(text, status=status, answer=answer)
    if status in (401, 403):
        return ExportAuthError(text, status=status, answer=answer)
    if status in (404, 408, 425, 429) or status >= 500:
        return TransientExportError(text, status=status, answer=answer, retry_after=wait)
    return InvalidPayloadError(text, status=status, answer=answer)


# ----------------------------------------------------------------------------- payloads
class Payload:
    """One request's worth of data, as the exporter's ``encode`` built it.

    ``body`` is what ``send`` needs; it must be JSON-serialisable for the spool. ``nbytes``
    is the exporter's estimate of the request size on the wire (what the vendor limits).

    Why :meth:`pack`: a body of dicts and lists takes several times its JSON size in
    memory (a Datadog series list about five times), so a queue bounded by the request
    size held far more than it counted. The sink packs every JSON body to its compact JSON
    bytes before queueing it; ``body`` decodes them again when an exporter reads it (one
    payload at a time, while it is sent), and :attr:`held_bytes` is what is really held.
    """

    __slots__ = ("_body", "_packed", "points", "nbytes", "kind", "created", "spool_file")

    def __init__(
        self,
        body: Any,
        points: int,
        nbytes: int,
        kind: str = "metrics",
        created: float | None = None,
        spool_file: str | None = None,
    ) -> None:
        self._body = body
        self._packed: bytes | None = None
        self.points = points
        self.nbytes = nbytes
        self.kind = kind
        self.created = time.time() if created is None else created
        self.spool_file = spool_file

    @property
    def body(self) -> Any:
        return json.loads(self._packed) if self._packed is not None else self._body

    @property
    def spoolable(self) -> bool:
        """Whether the body is JSON (packed, or packable), so it can be spooled."""
        return self._packed is not None or _jsonable(self._body)

    def pack(self) -> None:
        """Keep the body as compact JSON bytes only (idempotent; non-JSON bodies stay as they are)."""
        if self._packed is None and _jsonable(self._body):
            self._packed = json.dumps(self._body, separators=(",", ":")).encode()
            self._body = None

    def json_bytes(self) -> bytes:
        """The body as compact JSON (no re-encoding once packed)."""
        return self._packed if self._packed is not None else json.dumps(self._body, separators=(",", ":")).encode()

    @property
    def held_bytes(self) -> int:
        """Bytes counted against ``queue_max_bytes``: the larger of the request estimate and
        the memory the queued payload holds (packed JSON plus its own objects)."""
        if self._packed is None:
            return self.nbytes
        return max(self.nbytes, len(self._packed) + PAYLOAD_OVERHEAD_BYTES)

    def __repr__(self) -> str:
        return f"Payload(kind={self.kind!r}, points={self.points}, nbytes={self.nbytes}, packed={self._packed is not None})"


@dataclass(frozen=True)
class SinkSettings:
    """A sink's bounds and policies (``agent.sinks`` in the config, defaults in the schema)."""

    max_points: int
    max_bytes: int
    max_age_seconds: float
    attempt_timeout_seconds: float
    retry_initial_seconds: float
    retry_max_seconds: float
    breaker_fail_max: int
    breaker_reset_timeout_seconds: float
    dead_letter_dir: str | None = None
    dead_letter_max_files: int = 0
    spool_dir: str | None = None
    interval_seconds: float = 0.0
    spool_min_free_bytes: int = 0
    spool_min_free_percent: float = 0.0

    @classmethod
    def from_config(cls, section: Mapping[str, Any], interval: float = 0.0) -> SinkSettings:
        return cls(
            max_points=int(section["queue_max_points"]),
            max_bytes=int(section["queue_max_bytes"]),
            max_age_seconds=float(section["queue_max_age_seconds"]),
            attempt_timeout_seconds=float(section["attempt_timeout_seconds"]),
            retry_initial_seconds=float(section["retry_initial_seconds"]),
            retry_max_seconds=float(section["retry_max_seconds"]),
            breaker_fail_max=int(section["breaker_fail_max"]),
            breaker_reset_timeout_seconds=float(section["breaker_reset_timeout_seconds"]),
            dead_letter_dir=section.get("dead_letter_dir"),
            dead_letter_max_files=int(section["dead_letter_max_files"]),
            spool_dir=section.get("spool_dir"),
            interval_seconds=float(interval),
            spool_min_free_bytes=int(section["spool_min_free_bytes"]),
            spool_min_free_percent=float(section["spool_min_free_percent"]),
        )


class DeltaTracker:
    """Turns cumulative counters into deltas for vendors that want deltas.

    The first sample of a series only sets the baseline (no delta is known yet). A value
    lower than the previous one is a counter reset (the process restarted): the delta is
    the new value, the count since the reset.
    """

    def __init__(self) -> None:
        self._last: dict[Any, tuple[float, float]] = {}

    def delta(self, key: Any, value: float, when: float) -> tuple[float, float] | None:
        """``(delta, interval seconds)`` since the previous sample of ``key``, or None."""
        prev = self._last.get(key)
        self._last[key] = (value, when)
        if prev is None:
            return None
        last_value, last_when = prev
        delta = value - last_value if value >= last_value else value
        return delta, max(0.0, when - last_when)

    def delta_vector(self, key: Any, values: tuple[float, ...], when: float, monotone: Iterable[int]) -> tuple[tuple[float, ...], float] | None:
        """Deltas of several cumulative values of one series (a histogram's count, sum and
        buckets), reset together: when any of the ``monotone`` components fell, every
        component's delta is its new value (a sum alone may fall: observations can be
        negative). None for the first sample, or when the shape changed."""
        prev = self._last.get(key)
        self._last[key] = (values, when)  # type: ignore[assignment]
        if prev is None or not isinstance(prev[0], tuple) or len(prev[0]) != len(values):
            return None
        last_values, last_when = prev
        reset = any(values[i] < last_values[i] for i in monotone)
        deltas = values if reset else tuple(v - p for v, p in zip(values, last_values))
        return deltas, max(0.0, when - last_when)

    def forget_missing(self, seen: Iterable[Any]) -> None:
        """Drop series that did not appear in the latest batch (bounded memory)."""
        keep = set(seen)
        for key in [k for k in self._last if k not in keep]:
            del self._last[key]


# ----------------------------------------------------------------------------- files
def free_space(statvfs: Statvfs, directory: Path) -> tuple[int, float]:
    """(bytes available to the agent, percent of the filesystem they are)."""
    st = statvfs(str(directory))
    free = int(st.f_bavail) * int(st.f_frsize)
    total = int(st.f_blocks) * int(st.f_frsize)
    return free, (PERCENT * free / total) if total > 0 else 0.0


class Spool:
    """Queued payloads as files: ``<seq>.json`` under the sink's own directory."""

    def __init__(self, root: Path, statvfs: Statvfs = os.statvfs) -> None:
        self.root = root
        self.statvfs = statvfs
        self._seq = itertools.count(int(time.time() * 1000) * 1000)

    def remove_temp_files(self) -> int:
        """Delete the temp files of spool writes a crash interrupted; return how many.

        Only names :func:`cache_core.files.atomic_write` gives its temp files are touched, and only
        regular files (never a link); they are never read: the rename that would have
        made one a spool file did not happen, so its payload was not acknowledged as spooled.
        """
        return remove_temp_files(self.root, SPOOL_TEMP_RE)

    def free(self) -> tuple[int, float]:
        """Free bytes and percent of the spool's filesystem."""
        return free_space(self.statvfs, self.root)

    def write(self, payload: Payload) -> None:
        name = f"{next(self._seq):020d}.json"
        head = {"kind": payload.kind, "points": payload.points, "nbytes": payload.nbytes, "created": payload.created}
        record = json.dumps(head, separators=(",", ":")).encode()[:-1] + b',"body":' + payload.json_bytes() + b"}"
        atomic_write(self.root / name, record)
        payload.spool_file = name

    def remove(self, payload: Payload) -> None:
        if payload.spool_file:
            try:
                os.unlink(self.root / payload.spool_file)
            except FileNotFoundError:
                pass
            payload.spool_file = None

    def load(self) -> tuple[list[Payload], list[str]]:
        """Every spooled payload, oldest first, and the names of files quarantined."""
        payloads: list[Payload] = []
        bad: list[str] = []
        for path in sorted(self.root.glob("*.json")):
            try:
                record = json.loads(path.read_bytes())
                payload = Payload(
                    body=record["body"],
                    points=int(record["points"]),
                    nbytes=int(record["nbytes"]),
                    kind=str(record["kind"]),
                    created=float(record["created"]),
                    spool_file=path.name,
                )
                payload.pack()
            except (OSError, ValueError, KeyError, TypeError):
                quarantine = self.root / "quarantine"
                quarantine.mkdir(mode=0o700, exist_ok=True)
                os.replace(path, quarantine / path.name)
                bad.append(path.name)
                continue
            payloads.append(payload)
        return payloads, bad


# ----------------------------------------------------------------------------- the sink
class _Plain:
    """Adapter for exporters that only implement ``send(batch)``."""

    def __init__(self, exporter: Any) -> None:
        self.exporter = exporter

    def encode(self, batch: list[Any]) -> list[Payload]:
        return [Payload(body=batch, points=len(batch), nbytes=sum(64 + len(getattr(m, "name", "")) for m in batch))]

    def send(self, payload: Payload, timeout: float) -> None:
        self.exporter.send(payload.body)

    def abort(self) -> None:
        abort = getattr(self.exporter, "abort", None)
        if callable(abort):
            abort()


def _wrap(exporter: Any) -> Any:
    return exporter if callable(getattr(exporter, "encode", None)) else _Plain(exporter)


class _Stopped(ExportError):
    """The sink is stopping; the payload stays queued (and spooled)."""

    kind = "stopped"

    def __init__(self) -> None:
        super().__init__("the sink is stopping")


class ResilientSink:
    """Delivers one exporter's payloads from its own thread; see the module docstring."""

    def __init__(
        self,
        name: str,
        exporter: Any,
        settings: SinkSettings,
        *,
        metrics: Any = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        span: Callable[..., AbstractContextManager[Any]] | None = None,
        statvfs: Statvfs = os.statvfs,
    ) -> None:
        self.name = name
        self.settings = settings
        self._exporter = _wrap(exporter)
        self._raw_exporter = exporter
        self._queue: deque[Payload] = deque()
        self._points = 0
        self._bytes = 0
        self._in_flight: Payload | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._next_due = 0.0
        self._rate_points = 0.0  # points submitted per second (EWMA), for the outage budget
        self._rate_bytes = 0.0
        self._last_submit: float | None = None
        self.sent_points = 0
        self.sent_payloads = 0
        self.failed_attempts = 0
        self.dropped: dict[str, int] = {}
        self.splits = 0
        self.dead_letters = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._metrics = metrics
        if metrics is not None:
            # Every reason's series exists from the start at 0, so that an alert on its
            # increase sees the first drop (a series born at 5 has no increase to show).
            for reason in DROP_REASONS:
                self._m("predis_agent_sink_points_dropped_total", reason=reason).inc(0)
        self._span = span or (lambda name, **attrs: nullcontext())
        self._on_event = on_event
        self.breaker = _make_breaker(self)
        # Sends run here, so the worker can give up on one at the attempt deadline; two
        # threads, so a send that ignores the abort does not hold up the next attempt.
        self._senders = concurrent.futures.ThreadPoolExecutor(max_workers=SENDER_THREADS, thread_name_prefix=f"sink-{name}-send")
        self._spool: Spool | None = None
        self._statvfs = statvfs
        # Spool below its free-space floor: payloads stay queued in memory only.
        self.spool_paused = False
        self.spool_reason: str | None = None
        self.spool_temp_files_removed = 0
        self._spool_memory_only = 0  # payloads not spooled since the last pause log line
        self._spool_logged_at: float | None = None
        self._open_spool(settings.spool_dir)
        self._set_breaker_gauge(self.breaker.current_state)
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    # -- configuration ---------------------------------------------------------
    def _open_spool(self, spool_dir: str | None) -> None:
        if not spool_dir:
            self._spool = None
            return
        spool = Spool(private_dir(os.path.join(spool_dir, self.name), "agent.sinks.spool_dir"), self._statvfs)
        removed = spool.remove_temp_files()
        if removed:
            log.warning("sink %s: removed %d unfinished spool temp file(s) in %s (a crash interrupted their writes)", self.name, removed, spool.root)
            self.spool_temp_files_removed += removed
            if self._metrics is not None:
                self._m("predis_agent_sink_spool_temp_files_removed_total").inc(removed)
        payloads, bad = spool.load()
        for name in bad:
            log.error("sink %s: spool file %s could not be read; moved to quarantine/", self.name, name)
            self._event("sink_spool_quarantined", {"file": name})
        with self._cond:
            self._spool = spool
            for payload in payloads:
                self._append(payload)
            self._enforce_bounds(time.time())
            self._gauges()
            self._cond.notify_all()
        if payloads:
            log.info("sink %s: %d payload(s) (%d points) queued again from the spool", self.name, len(payloads), sum(p.points for p in payloads))

    def replace_exporter(self, exporter: Any) -> None:
        """Swap the exporter (after a reload); the queue is kept as it is."""
        with self._cond:
            old = self._raw_exporter
            self._raw_exporter = exporter
            self._exporter = _wrap(exporter)
            self._cond.notify_all()
        if old is not exporter:
            _close(old)

    def tune(self, settings: SinkSettings) -> None:
        """Apply new bounds and policies in place; the queue is kept (and trimmed to the bounds)."""
        with self._cond:
            spool_changed = settings.spool_dir != self.settings.spool_dir
            self.settings = settings
            self._enforce_bounds(time.time())
            self._gauges()
            self._cond.notify_all()
        self.breaker.fail_max = settings.breaker_fail_max
        self.breaker.reset_timeout = settings.breaker_reset_timeout_seconds
        if spool_changed:
            with self._cond:
                old = self._spool
                queued = list(self._queue)
            if old is not None:
                for payload in queued:
                    old.remove(payload)
            self._open_spool(settings.spool_dir)
            with self._cond:
                for payload in queued:
                    if payload in self._queue:
                        self._spool_write(payload)

    # -- producing -----------------------------------------------------------
    def due(self, now: float, collect_interval: float) -> bool:
        """Whether a batch collected at ``now`` is this sink's to send (``interval_seconds``)."""
        interval = self.settings.interval_seconds
        if interval <= 0:
            return True
        # Collection rounds jitter: accept a round up to half a collection interval early.
        if now + collect_interval / 2 >= self._next_due:
            self._next_due = max(self._next_due + interval, now + interval - collect_interval / 2 - 1e-9) if self._next_due else now + interval
            return True
        return False

    def submit(self, batch: list[Any]) -> None:
        """Encode one collected batch and queue its payloads (called by the collection thread)."""
        try:
            payloads = self._exporter.encode(batch)
        except Exception as exc:
            log.error("sink %s: encoding the batch failed: %s: %s", self.name, exc.__class__.__name__, exc)
            self._count_drop("encode_error", len(batch))
            return
        for payload in payloads:
            payload.pack()
        now = time.time()
        self._update_rates(now, sum(p.points for p in payloads), sum(p.held_bytes for p in payloads))
        self._queue_payloads(payloads, now)

    def submit_events(self, events: list[Any]) -> None:
        """Queue agent events for exporters that send them (``encode_events``)."""
        encode = getattr(self._exporter, "encode_events", None)
        if not callable(encode):
            return
        try:
            payloads = encode(events)
        except Exception as exc:
            log.error("sink %s: encoding events failed: %s: %s", self.name, exc.__class__.__name__, exc)
            self._count_drop("encode_error", len(events))
            return
        self._queue_payloads(payloads, time.time())

    def _queue_payloads(self, payloads: list[Payload], now: float) -> None:
        if not payloads:
            return
        with self._cond:
            if self._stop:
                self._count_drop("shutdown", sum(p.points for p in payloads))
                return
            for payload in payloads:
                payload.pack()
                self._spool_write(payload)
                self._append(payload)
            self._enforce_bounds(now)
            self._gauges()
            self._cond.notify_all()

    def _update_rates(self, now: float, points: int, nbytes: int) -> None:
        last = self._last_submit
        self._last_submit = now
        if last is None or now <= last:
            return
        dt = now - last
        # Weight of the newest observation: about the last ten submissions.
        alpha = 0.2
        self._rate_points = (1 - alpha) * self._rate_points + alpha * points / dt
        self._rate_bytes = (1 - alpha) * self._rate_bytes + alpha * nbytes / dt

    def _append(self, payload: Payload) -> None:
        payload.pack()
        self._queue.append(payload)
        self._points += payload.points
        self._bytes += payload.held_bytes

    # -- spool ---------------------------------------------------------------
    def _spool_write(self, payload: Payload) -> bool:
        """Spool ``payload`` (called with the lock held) unless the spool's filesystem is
        below its free-space floor; then the payload stays in memory only, the spool is
        paused (log line, /status, predis_agent_sink_spool_paused) and it resumes by itself."""
        spool = self._spool
        if spool is None or payload.spool_file or not payload.spoolable:
            return False
        s = self.settings
        try:
            free, percent = spool.free()
        except OSError as exc:
            self._spool_pause(f"checking free space on {spool.root} failed: {exc}")
            return False
        if free < s.spool_min_free_bytes or percent < s.spool_min_free_percent:
            self._spool_pause(
                f"{free} bytes ({percent:.2f}%) free on the spool filesystem, below agent.sinks.spool_min_free_bytes "
                f"{s.spool_min_free_bytes} or agent.sinks.spool_min_free_percent {s.spool_min_free_percent:g}"
            )
            return False
        try:
            spool.write(payload)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._spool_pause(f"writing to {spool.root} failed: {exc.strerror or exc}")
            else:
                log.error("sink %s: cannot spool a payload (%s); it is kept in memory only", self.name, exc)
            return False
        if self.spool_paused:
            self._spool_resume(free)
        return True

    def _spool_pause(self, reason: str) -> None:
        self._spool_memory_only += 1
        first = not self.spool_paused
        self.spool_paused = True
        self.spool_reason = f"spool paused: {reason}; payloads are kept in memory only and spooling resumes by itself"
        now = time.monotonic()
        if self._spool_logged_at is None or now - self._spool_logged_at >= SPOOL_PAUSED_LOG_SECONDS:
            log.warning("sink %s: %s (%d payload(s) not spooled%s)", self.name, self.spool_reason, self._spool_memory_only, "" if first else " since the last line")
            self._spool_logged_at = now
            self._spool_memory_only = 0

    def _spool_resume(self, free: int) -> None:
        """Space is back: spool what was kept in memory only meanwhile (lock held)."""
        self.spool_paused = False
        self.spool_reason = None
        backfilled = sum(1 for p in list(self._queue) if not p.spool_file and p.spoolable and self._spool_write(p))
        log.info("sink %s: spool resumed (%d bytes free); %d queued payload(s) written to it", self.name, free, backfilled)

    def _remove(self, payload: Payload) -> bool:
        try:
            self._queue.remove(payload)
        except ValueError:
            return False
        self._points -= payload.points
        self._bytes -= payload.held_bytes
        if self._spool is not None:
            self._spool.remove(payload)
        return True

    def _enforce_bounds(self, now: float) -> None:
        """Drop the oldest waiting payloads past the age, point and byte bounds."""
        s = self.settings
        for payload in [p for p in self._queue if now - p.created > s.max_age_seconds and p is not self._in_flight]:
            self._remove(payload)
            self._count_drop("expired", payload.points)
        while self._points > s.max_points or self._bytes > s.max_bytes:
            victim = next((p for p in self._queue if p is not self._in_flight), None)
            if victim is None:
                break
            self._remove(victim)
            self._count_drop("queue_full", victim.points)

    # -- metrics ------------------------------------------------------------------
    def _m(self, name: str, **labels: str) -> Any:
        return self._metrics[name].labels(sink=self.name, **labels)

    def _count_drop(self, reason: str, points: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + points
        if self._metrics is not None and points:
            self._m("predis_agent_sink_points_dropped_total", reason=reason).inc(points)
        if points:
            log.warning("sink %s: dropped %d point(s): %s", self.name, points, reason)

    def _gauges(self) -> None:
        if self._metrics is None:
            return
        self._m("predis_agent_sink_queue_points").set(self._points)
        self._m("predis_agent_sink_queue_bytes").set(self._bytes)
        self._m("predis_agent_sink_spool_paused").set(1 if self.spool_paused else 0)
        self._m("predis_agent_sink_queue_oldest_age_seconds").set(self._oldest_age(time.time()))
        self._m("predis_agent_sink_outage_budget_seconds").set(self._outage_budget(time.time()))

    def _oldest_age(self, now: float) -> float:
        return max(0.0, now - self._queue[0].created) if self._queue else 0.0

    def _outage_budget(self, now: float) -> float:
        """Seconds of outage the queue can absorb before the first point is dropped."""
        s = self.settings
        budget = s.max_age_seconds - self._oldest_age(now)
        if self._rate_points > 0:
            budget = min(budget, max(0.0, s.max_points - self._points) / self._rate_points)
        if self._rate_bytes > 0:
            budget = min(budget, max(0.0, s.max_bytes - self._bytes) / self._rate_bytes)
        return max(0.0, budget)

    def _set_breaker_gauge(self, state: str) -> None:
        if self._metrics is not None:
            current = BREAKER_STATES.get(state, "closed")
            for label in BREAKER_STATES.values():
                self._m("predis_agent_sink_breaker_state", state=label).set(1 if label == current else 0)

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, {"sink": self.name, **data})
            except Exception:
                log.exception("sink %s: event listener failed", self.name)

    # -- worker ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._queue:
                    self._cond.wait()
                if self._stop:
                    return
                payload = self._queue[0]
                self._in_flight = payload
            try:
                self._deliver(payload)
            except _Stopped:
                pass
            except Exception:
                log.exception("sink %s: unexpected error while delivering", self.name)
            finally:
                with self._cond:
                    self._in_flight = None
                    self._enforce_bounds(time.time())
                    self._gauges()
                    self._cond.notify_all()

    def _deliver(self, payload: Payload) -> None:
        import tenacity

        s = self.settings
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: not isinstance(e, (PayloadTooLargeError, InvalidPayloadError, _Stopped))),
            wait=self._wait,
            stop=lambda state: self._stop or time.time() - payload.created > self.settings.max_age_seconds or payload not in self._queue,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            retrying(self._attempt, payload)
        except PayloadTooLargeError as exc:
            self._split(payload, exc)
            return
        except InvalidPayloadError as exc:
            self._dead_letter(payload, exc, "invalid")
            return
        except _Stopped:
            raise
        except Exception as exc:
            with self._cond:
                if self._stop:
                    raise _Stopped() from None
                gone = self._remove(payload)
            if gone:
                self._count_drop("expired", payload.points)
                log.error("sink %s: gave up on a payload of %d point(s) after %.0fs: %s", self.name, payload.points, s.max_age_seconds, exc)
            return
        with self._cond:
            self._remove(payload)
        self.sent_points += payload.points
        self.sent_payloads += 1
        self.last_success = time.time()
        if self._metrics is not None:
            self._m("predis_agent_sink_points_sent_total").inc(payload.points)
            self._m("predis_agent_sink_last_success_timestamp_seconds").set(self.last_success)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        import pybreaker

        s = self.settings
        # Full jitter: uniform in [0, min(max, initial * 2^(n-1))].
        ceiling = min(s.retry_max_seconds, s.retry_initial_seconds * 2 ** max(0, state.attempt_number - 1))
        wait = random.uniform(0, ceiling)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, pybreaker.CircuitBreakerError):
            wait = max(wait, self._breaker_remaining())
        vendor = getattr(exc, "retry_after", None)
        if vendor is not None:
            # The vendor's word wins over our backoff, bounded by the give-up age.
            wait = max(wait, min(float(vendor), s.max_age_seconds))
        return wait

    def _breaker_remaining(self) -> float:
        opened = getattr(self.breaker._state_storage, "opened_at", None)
        if opened is None:
            return self.settings.breaker_reset_timeout_seconds
        elapsed = time.time() - opened.timestamp()
        return max(0.0, self.settings.breaker_reset_timeout_seconds - elapsed)

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._stop, timeout=seconds)
            if self._stop:
                raise _Stopped()

    def _bounded_send(self, exporter: Any, payload: Payload, timeout: float) -> None:
        """``exporter.send`` under a deadline for the whole attempt.

        Client libraries' timeouts bound each socket operation, not the request: a peer
        that trickles a byte now and then would hold an attempt for ever. The send runs in
        a helper thread; past the deadline the exporter's ``abort()`` (if any) closes its
        connections, which unblocks that thread, and the attempt fails as transient.
        """
        future = self._senders.submit(exporter.send, payload, timeout)
        try:
            future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            abort = getattr(exporter, "abort", None) or getattr(self._raw_exporter, "abort", None)
            if callable(abort):
                try:
                    abort()
                except Exception as exc:
                    log.warning("sink %s: aborting the stuck send failed: %s", self.name, exc)
            raise TransientExportError(f"send attempt exceeded agent.sinks.attempt_timeout_seconds ({timeout:g}s)") from None

    def _attempt(self, payload: Payload) -> None:
        import pybreaker

        with self._cond:
            exporter = self._exporter
        started = time.monotonic()
        try:
            with self._span("export", sink=self.name, points=payload.points):
                self.breaker.call(self._bounded_send, exporter, payload, self.settings.attempt_timeout_seconds)
        except pybreaker.CircuitBreakerError:
            raise
        except ExportAuthError as exc:
            self._count_failure(exc, payload)
            self._auth_failed(exc)
            raise
        except Exception as exc:
            self._count_failure(exc, payload)
            raise
        finally:
            if self._metrics is not None:
                self._m("predis_agent_sink_send_duration_seconds").observe(time.monotonic() - started)

    def _count_failure(self, exc: BaseException, payload: Payload) -> None:
        kind = getattr(exc, "kind", "transient")
        self.failed_attempts += 1
        self.last_error = f"{exc.__class__.__name__}: {exc}"
        if self._metrics is not None:
            self._m("predis_agent_sink_points_failed_total", error=kind).inc(payload.points)
        log.warning("sink %s: send failed (%s): %s", self.name, kind, self.last_error)

    def _auth_failed(self, exc: ExportAuthError) -> None:
        refresh = getattr(self._raw_exporter, "refresh_credentials", None)
        refreshed = False
        if callable(refresh):
            try:
                refresh()
                refreshed = True
            except Exception as err:
                log.error("sink %s: re-reading the credentials failed: %s", self.name, err)
        self.breaker.open()
        log.error(
            "sink %s: the vendor refused the credentials (%s); breaker opened, %s; payloads stay queued",
            self.name,
            f"HTTP {exc.status}" if exc.status else exc.__class__.__name__,
            "the secret was re-read for the next probe" if refreshed else "check the configured key",
        )
        self._event("sink_auth_failed", {"status": exc.status, "refreshed": refreshed})

    def _split(self, payload: Payload, exc: PayloadTooLargeError) -> None:
        split = getattr(self._exporter, "split", None)
        parts = split(payload) if callable(split) and payload.points > 1 else None
        if not parts:
            self._dead_letter(payload, exc, "too_large")
            return
        with self._cond:
            try:
                index = self._queue.index(payload)
            except ValueError:
                return
            self._remove(payload)
            for offset, part in enumerate(parts):
                part.created = payload.created
                part.pack()
                self._queue.insert(index + offset, part)
                self._points += part.points
                self._bytes += part.held_bytes
                self._spool_write(part)
        self.splits += 1
        if self._metrics is not None:
            self._m("predis_agent_sink_splits_total").inc()
        log.warning("sink %s: payload of %d point(s) too large (%s); split into %d", self.name, payload.points, exc, len(parts))

    def _dead_letter(self, payload: Payload, exc: ExportError, reason: str) -> None:
        with self._cond:
            self._remove(payload)
        self._count_drop(reason, payload.points)
        where = self._write_dead_letter(payload, exc)
        log.error(
            "sink %s: the vendor rejected a payload of %d point(s) (%s); %s",
            self.name,
            payload.points,
            exc,
            f"written to {where}" if where else "not kept (no dead_letter_dir, or it is full)",
        )
        self._event("sink_payload_rejected", {"points": payload.points, "status": exc.status, "reason": reason, "file": where})

    def _write_dead_letter(self, payload: Payload, exc: ExportError) -> str | None:
        s = self.settings
        if not s.dead_letter_dir:
            return None
        try:
            root = private_dir(os.path.join(s.dead_letter_dir, self.name), "agent.sinks.dead_letter_dir")
            if sum(1 for _ in root.glob("*.json")) >= s.dead_letter_max_files:
                return None
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            path = root / f"{stamp}-{self.dead_letters:06d}-{os.getpid()}.json"
            record = {
                "sink": self.name,
                "failed_at": time.time(),
                "created": payload.created,
                "points": payload.points,
                "status": exc.status,
                "error": str(exc),
                "answer": exc.answer,
                "body": payload.body if payload.spoolable else repr(payload.body)[:ANSWER_LIMIT],
            }
            atomic_write(path, json.dumps(record, indent=1).encode())
        except (OSError, ValueError) as err:
            log.error("sink %s: cannot write a dead letter: %s", self.name, err)
            return None
        self.dead_letters += 1
        if self._metrics is not None:
            self._m("predis_agent_sink_dead_letters_total").inc()
        return str(path)

    # -- lifecycle / status ------------------------------------------------------
    def wait_idle(self, timeout: float) -> bool:
        """Wait until the queue is empty (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=min(left, 0.05))
        return True

    def close(self, timeout: float) -> None:
        """Flush for up to ``timeout`` seconds, then stop; report (and spool) what was left."""
        self.wait_idle(timeout)
        with self._cond:
            self._stop = True
            left = self._points
            spooled = self._spool is not None and all(p.spool_file for p in self._queue)
            self._cond.notify_all()
        self._thread.join(timeout=max(0.1, timeout))
        self._senders.shutdown(wait=False, cancel_futures=True)
        if left:
            if spooled:
                log.warning("sink %s stopped with %d point(s) undelivered; they are in the spool for the next start", self.name, left)
            else:
                log.warning("sink %s stopped with %d point(s) undelivered and dropped", self.name, left)
                self._count_drop("shutdown", left)
        _close(self._raw_exporter)

    def status(self) -> dict[str, Any]:
        now = time.time()
        with self._cond:
            return {
                "queued_points": self._points,
                "queued_bytes": self._bytes,
                "queued_payloads": len(self._queue),
                "oldest_age_seconds": round(self._oldest_age(now), 3),
                "outage_budget_seconds": round(self._outage_budget(now), 1),
                "sent_points": self.sent_points,
                "sent_payloads": self.sent_payloads,
                "failed_attempts": self.failed_attempts,
                "dropped_points": dict(self.dropped),
                "splits": self.splits,
                "dead_letters": self.dead_letters,
                "breaker": self.breaker.current_state,
                "spool": str(self._spool.root) if self._spool else None,
                "spool_paused": self.spool_paused,
                "spool_reason": self.spool_reason,
                "spool_temp_files_removed": self.spool_temp_files_removed,
                "last_success": self.last_success,
                "last_error": self.last_error,
            }


def _make_breaker(sink: ResilientSink) -> pybreaker.CircuitBreaker:
    """The sink's circuit breaker. pybreaker is imported here, when a sink is built, not
    with this module: it imports redis (and OpenTelemetry), a quarter of a second that
    loading the exporter plugins (``predis-agent config validate``) need not pay."""
    import pybreaker

    class Listener(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
            old = getattr(old_state, "name", str(old_state))
            new = getattr(new_state, "name", str(new_state))
            sink._set_breaker_gauge(str(new))
            log.warning("sink %s: circuit breaker %s -> %s", sink.name, old, new)
            sink._event("breaker_state_changed", {"old": str(old), "new": str(new)})

    settings = sink.settings
    return pybreaker.CircuitBreaker(
        fail_max=settings.breaker_fail_max,
        reset_timeout=settings.breaker_reset_timeout_seconds,
        listeners=[Listener()],
        name=sink.name,
        # The send that trips the breaker raises the exporter's own error, so it is
        # classified and counted like every other failed attempt.
        throw_new_error_on_trip=False,
        # A payload the vendor rejects says nothing about the vendor's health.
        exclude=[PayloadTooLargeError, InvalidPayloadError],
    )


def _jsonable(body: Any) -> bool:
    return isinstance(body, (dict, list, str, int, float)) and not (isinstance(body, list) and body and not isinstance(body[0], (dict, list, str, int, float)))


def _close(exporter: Any) -> None:
    close = getattr(exporter, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:
            log.warning("exporter close failed: %s", exc)
