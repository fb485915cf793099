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
  that cannot be read is moved to ``quarantine/`` and reported.

Exporters that only implement ``send(batch)`` still work: their whole batch is one payload
that is never split and never spooled (its body is not JSON).
"""

from __future__ import annotations

import concurrent.futures
import email.utils
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pybreaker
import tenacity

log = logging.getLogger(__name__)

# How much of a vendor's error answer is kept in logs, /status and dead-letter files.
ANSWER_LIMIT = 4096
# Breaker states as exported by predis_agent_sink_breaker_state.
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
# Threads a sink sends from (see ResilientSink._bounded_send).
SENDER_THREADS = 2


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
@dataclass(eq=False)
class Payload:
    """One request's worth of data, as the exporter's ``encode`` built it.

    ``body`` is what ``send`` needs; it must be JSON-serialisable for the spool. ``nbytes``
    is the exporter's estimate of the request size on the wire (what the vendor limits).
    """

    body: Any
    points: int
    nbytes: int
    kind: str = "metrics"
    created: float = field(default_factory=time.time)
    spool_file: str | None = None


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
        reset = any(values[i] < last_values[i] for i in monotone)  # type: ignore[index]
        deltas = values if reset else tuple(v - p for v, p in zip(values, last_values))  # type: ignore[arg-type]
        return deltas, max(0.0, when - last_when)

    def forget_missing(self, seen: Iterable[Any]) -> None:
        """Drop series that did not appear in the latest batch (bounded memory)."""
        keep = set(seen)
        for key in [k for k in self._last if k not in keep]:
            del self._last[key]


# ----------------------------------------------------------------------------- files
def private_dir(raw: str, what: str) -> Path:
    """An absolute directory for the agent's own files, created 0700; clear errors otherwise."""
    path = Path(os.path.expanduser(str(raw)))
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{what} {raw!r} must be an absolute path without '..' components")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.is_dir():
        raise ValueError(f"{what} {raw!r} is not a directory")
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename), mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Spool:
    """Queued payloads as files: ``<seq>.json`` under the sink's own directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seq = itertools.count(int(time.time() * 1000) * 1000)

    def write(self, payload: Payload) -> None:
        name = f"{next(self._seq):020d}.json"
        record = {"kind": payload.kind, "points": payload.points, "nbytes": payload.nbytes, "created": payload.created, "body": payload.body}
        write_private(self.root / name, json.dumps(record, separators=(",", ":")).encode())
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


class _Stopped(Exception):
    """The sink is stopping; the payload stays queued (and spooled)."""


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
        self._span = span or (lambda name, **attrs: nullcontext())
        self._on_event = on_event
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=settings.breaker_fail_max,
            reset_timeout=settings.breaker_reset_timeout_seconds,
            listeners=[_BreakerListener(self)],
            name=name,
            # The send that trips the breaker raises the exporter's own error, so it is
            # classified and counted like every other failed attempt.
            throw_new_error_on_trip=False,
            # A payload the vendor rejects says nothing about the vendor's health.
            exclude=[PayloadTooLargeError, InvalidPayloadError],
        )
        # Sends run here, so the worker can give up on one at the attempt deadline; two
        # threads, so a send that ignores the abort does not hold up the next attempt.
        self._senders = concurrent.futures.ThreadPoolExecutor(max_workers=SENDER_THREADS, thread_name_prefix=f"sink-{name}-send")
        self._spool: Spool | None = None
        self._open_spool(settings.spool_dir)
        self._set_breaker_gauge(self.breaker.current_state)
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    # -- configuration ---------------------------------------------------------
    def _open_spool(self, spool_dir: str | None) -> None:
        if not spool_dir:
            self._spool = None
            return
        spool = Spool(private_dir(os.path.join(spool_dir, self.name), "agent.sinks.spool_dir"))
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
            if self._spool is not None:
                for payload in queued:
                    if _jsonable(payload.body):
                        self._spool.write(payload)

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
        now = time.time()
        self._update_rates(now, sum(p.points for p in payloads), sum(p.nbytes for p in payloads))
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
                if self._spool is not None and _jsonable(payload.body):
                    try:
                        self._spool.write(payload)
                    except OSError as exc:
                        log.error("sink %s: cannot spool a payload (%s); it is kept in memory only", self.name, exc)
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
        self._queue.append(payload)
        self._points += payload.points
        self._bytes += payload.nbytes

    def _remove(self, payload: Payload) -> bool:
        try:
            self._queue.remove(payload)
        except ValueError:
            return False
        self._points -= payload.points
        self._bytes -= payload.nbytes
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
            self._m("predis_agent_sink_breaker_state").set(BREAKER_STATES.get(state, 0))

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
                self._queue.insert(index + offset, part)
                self._points += part.points
                self._bytes += part.nbytes
                if self._spool is not None and _jsonable(part.body):
                    self._spool.write(part)
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
                "body": payload.body if _jsonable(payload.body) else repr(payload.body)[:ANSWER_LIMIT],
            }
            write_private(path, json.dumps(record, indent=1).encode())
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
                "last_success": self.last_success,
                "last_error": self.last_error,
            }


class _BreakerListener(pybreaker.CircuitBreakerListener):
    def __init__(self, sink: ResilientSink) -> None:
        self.sink = sink

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old = getattr(old_state, "name", str(old_state))
        new = getattr(new_state, "name", str(new_state))
        self.sink._set_breaker_gauge(str(new))
        log.warning("sink %s: circuit breaker %s -> %s", self.sink.name, old, new)
        self.sink._event("breaker_state_changed", {"old": str(old), "new": str(new)})


def _jsonable(body: Any) -> bool:
    return isinstance(body, (dict, list, str, int, float)) and not (isinstance(body, list) and body and not isinstance(body[0], (dict, list, str, int, float)))


def _close(exporter: Any) -> None:
    close = getattr(exporter, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:
            log.warning("exporter close failed: %s", exc)
