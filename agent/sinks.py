# SPDX-License-Identifier: Apache-2.0
"""Sink: one per push exporter — a bounded queue, a worker thread and a circuit breaker.

The sink belongs to the host, not to the plugin: it survives config reloads, and only
the exporter object inside it is replaced (:meth:`Sink.replace_exporter`), so batches
that are queued during a reload are delivered by the new exporter, never dropped.
When the queue is full the oldest batch is dropped and counted. A slow or dead vendor
only ever blocks its own worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pybreaker

log = logging.getLogger(__name__)


class Sink:
    """Delivers batches to one exporter from its own thread."""

    def __init__(
        self,
        name: str,
        exporter: Any,
        *,
        max_batches: int,
        fail_max: int,
        reset_timeout: float,
        retry_interval: float,
        on_state_change: Callable[[str, str, str], None] | None = None,
        metrics: Any = None,
        span: Callable[..., AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.name = name
        self._exporter = exporter
        self._queue: deque[Any] = deque()
        self._max = max_batches
        self._retry_interval = retry_interval
        self._cond = threading.Condition()
        self._stop = False
        self._in_flight = 0
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._recorded: BaseException | None = None  # the failure the breaker listener counted
        self._metrics = metrics
        self._span = span or (lambda name, **attrs: nullcontext())
        self._on_state_change = on_state_change
        # throw_new_error_on_trip=False: the send that trips (or re-opens) the breaker
        # raises the exporter's own error, so it is counted and logged like any other
        # failed attempt; only calls refused by an open breaker raise CircuitBreakerError.
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            listeners=[_BreakerListener(self)],
            name=name,
            throw_new_error_on_trip=False,
        )
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    # -- configuration ---------------------------------------------------------
    def replace_exporter(self, exporter: Any) -> None:
        """Swap the exporter (after a reload); the queue is kept as it is."""
        with self._cond:
            old = self._exporter
            self._exporter = exporter
            self._cond.notify_all()
        _close(old)

    def tune(self, *, max_batches: int, fail_max: int, reset_timeout: float, retry_interval: float) -> None:
        with self._cond:
            self._max = max_batches
            self._retry_interval = retry_interval
            while len(self._queue) > self._max:
                self._queue.popleft()
                self._dropped(1)
            self._gauge()
        self.breaker.fail_max = fail_max
        self.breaker.reset_timeout = reset_timeout

    # -- producing -----------------------------------------------------------
    def submit(self, batch: Any) -> None:
        with self._cond:
            if self._stop:
                self._dropped(1)
                return
            self._queue.append(batch)
            while len(self._queue) > self._max:
                self._queue.popleft()
                self._dropped(1)
            self._gauge()
            self._cond.notify_all()

    def _dropped(self, n: int) -> None:
        self.dropped += n
        if self._metrics is not None:
            self._metrics["predis_agent_sink_batches_dropped_total"].labels(sink=self.name).inc(n)

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics["predis_agent_sink_queue_batches"].labels(sink=self.name).set(len(self._queue) + self._in_flight)

    # -- worker ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if not self._queue:
                    return
                # The batch leaves the queue while it is sent, so an overflow meanwhile
                # drops the oldest *waiting* batch, never the one on the wire.
                batch = self._queue.popleft()
                exporter = self._exporter
                self._in_flight = 1
            ok = self._send(exporter, batch)
            with self._cond:
                self._in_flight = 0
                if not ok:
                    self._queue.appendleft(batch)
                    while len(self._queue) > self._max:
                        self._queue.popleft()
                        self._dropped(1)
                self._gauge()
                self._cond.notify_all()
                if not ok:
                    if self._stop:
                        return
                    # An open breaker fails fast; wait instead of spinning on it.
                    self._cond.wait(timeout=self._retry_interval)

    def _send(self, exporter: Any, batch: Any) -> bool:
        self._recorded = None
        try:
            with self._span("export", sink=self.name):
                self.breaker.call(exporter.send, batch)
        except pybreaker.CircuitBreakerError:
            return False
        except Exception as exc:
            if exc is not self._recorded:  # raised outside the breaker, e.g. by the span
                self._record_failure(exc)
            return False
        finally:
            self._recorded = None
        self.sent += 1
        self.last_success = time.time()
        if self._metrics is not None:
            self._metrics["predis_agent_sink_batches_sent_total"].labels(sink=self.name).inc()
        return True

    def _record_failure(self, exc: BaseException) -> None:
        """Count one failed attempt.

        The breaker listener calls this before the breaker changes state, so a reader
        who sees the breaker open also sees the attempt that opened it counted.
        """
        self._recorded = exc
        self.failed += 1
        self.last_error = f"{exc.__class__.__name__}: {exc}"
        if self._metrics is not None:
            self._metrics["predis_agent_sink_batches_failed_total"].labels(sink=self.name).inc()
        log.warning("sink %s: send failed: %s", self.name, self.last_error)

    # -- lifecycle / status ------------------------------------------------------
    def wait_idle(self, timeout: float) -> bool:
        """Wait until the queue is empty (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=left)
        return True

    def close(self, timeout: float) -> None:
        """Flush for up to ``timeout`` seconds, then stop; report what was left."""
        self.wait_idle(timeout)
        with self._cond:
            self._stop = True
            left = len(self._queue) + self._in_flight
            self._cond.notify_all()
        self._thread.join(timeout=max(0.1, timeout))
        if left:
            log.warning("sink %s stopped with %d batch(es) undelivered", self.name, left)
        _close(self._exporter)

    def status(self) -> dict[str, Any]:
        with self._cond:
            queued = len(self._queue) + self._in_flight
        return {
            "queued_batches": queued,
            "sent_batches": self.sent,
            "failed_attempts": self.failed,
            "dropped_batches": self.dropped,
            "breaker": self.breaker.current_state,
            "last_success": self.last_success,
            "last_error": self.last_error,
        }


class _BreakerListener(pybreaker.CircuitBreakerListener):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self.sink._record_failure(exc)

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old = getattr(old_state, "name", str(old_state))
        new = getattr(new_state, "name", str(new_state))
        if self.sink._metrics is not None:
            self.sink._metrics["predis_agent_sink_breaker_open"].labels(sink=self.sink.name).set(1 if new == "open" else 0)
        log.warning("sink %s: circuit breaker %s -> %s", self.sink.name, old, new)
        if self.sink._on_state_change is not None:
            try:
                self.sink._on_state_change(self.sink.name, str(old), str(new))
            except Exception:
                log.exception("breaker state listener failed")


def _close(exporter: Any) -> None:
    close = getattr(exporter, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:
            log.warning("exporter close failed: %s", exc)
