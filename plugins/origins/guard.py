# SPDX-License-Identifier: Apache-2.0
"""What the network origins (``s3``, ``redis``) share: retry, breaker, counters, logging.

A network origin can be slow, down or refusing us, and the cache must keep serving hits
and answer misses quickly while it is. :class:`OriginGuard` wraps every backend call:

* **Timeout**: each call is bounded by the client's own timeouts (botocore's
  ``connect_timeout``/``read_timeout``, redis-py's socket timeouts), which the origins
  set from their ``timeout_seconds``; the client's own retries are turned off, so the
  retry budget below is the only one.
* **Retry**: an error the origin calls *transient* (connection refused or reset, a
  timeout, a 5xx, throttling) is tried again up to ``retry_attempts`` more times, waiting
  a full-jitter exponential backoff (uniform in ``[0, min(retry_max_seconds,
  retry_initial_seconds * 2^(n-1))]``). Other errors are not retried.
* **Breaker**: every attempt's outcome feeds a pybreaker ``CircuitBreaker``
  (``breaker_fail_max`` consecutive failed attempts open it for
  ``breaker_reset_timeout_seconds``). While it is open no backend call is made: the keys
  load as misses at once and count in ``skipped_breaker_open``. Once the reset timeout
  has passed the breaker is *half-open*: the next batch sends its first chunk alone as
  the probe; success closes the breaker, failure opens it again.

  pybreaker holds its lock for the whole guarded call, which would serialise the S3
  origin's parallel fetches; so the backend call runs outside the breaker and its outcome
  is then fed to the breaker (a no-op call, or one that re-raises the error), which keeps
  pybreaker's own state machine, counters and listeners.

:meth:`OriginGuard.load_many` is the whole ``load_many`` of an origin: it refuses bad keys
(``rejected``), de-duplicates, cuts the rest into chunks, runs the chunks (serially or on
the origin's executor) through :meth:`OriginGuard.call`, and counts every key asked for in
exactly one of ``loads``, ``misses``, ``rejected``, ``oversized``, ``errors`` and
``skipped_breaker_open``; ``bytes`` sums what was returned. It never raises: a failed
chunk is a miss for each of its keys, counted in ``errors``, so one outage never fails
the cache's command. Log lines name a key at most once (bounded), and a backend error is
logged once per kind until the origin answers again.
"""

from __future__ import annotations

import concurrent.futures
import enum
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pybreaker
    import tenacity

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_RETRY_ATTEMPTS = 2
MIN_RETRY_ATTEMPTS = 0
MAX_RETRY_ATTEMPTS = 10
DEFAULT_RETRY_INITIAL_SECONDS = 0.05
MIN_RETRY_SECONDS = 0.001
MAX_RETRY_INITIAL_SECONDS = 10.0
DEFAULT_RETRY_MAX_SECONDS = 1.0
MAX_RETRY_MAX_SECONDS = 60.0
DEFAULT_BREAKER_FAIL_MAX = 5
MIN_BREAKER_FAIL_MAX = 1
MAX_BREAKER_FAIL_MAX = 1000
DEFAULT_BREAKER_RESET_TIMEOUT_SECONDS = 10.0
MIN_BREAKER_RESET_TIMEOUT_SECONDS = 0.01
MAX_BREAKER_RESET_TIMEOUT_SECONDS = 3600.0

# Keys remembered for once-per-key logging; a bound so hostile keys cannot grow memory.
LOGGED_KEYS_LIMIT = 1024
# Longest part of a key written to a log line.
LOG_KEY_BYTES = 128
# Longest error text kept for status and logs.
ERROR_TEXT_LIMIT = 300

STATE_CLOSED = "closed"
STATE_OPEN = "open"
STATE_HALF_OPEN = "half-open"
BREAKER_STATES = (STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN)


class Outcome(enum.Enum):
    """What became of one key; each value names the counter it is added to."""

    LOADED = "loads"
    MISS = "misses"
    REJECTED = "rejected"
    OVERSIZED = "oversized"
    ERROR = "errors"
    SKIPPED = "skipped_breaker_open"


COUNTERS: tuple[str, ...] = tuple(outcome.value for outcome in Outcome)


class BreakerOpenError(Exception):
    """The breaker is open: no backend call was made."""


def guard_schema_properties() -> dict[str, Any]:
    """The retry and breaker keys every network origin's config section has."""
    return {
        "retry_attempts": {
            "type": "integer",
            "minimum": MIN_RETRY_ATTEMPTS,
            "maximum": MAX_RETRY_ATTEMPTS,
            "default": DEFAULT_RETRY_ATTEMPTS,
            "description": (
                "Further attempts after a transient error (connection refused or reset, a timeout; for S3 also 5xx and throttling); "
                "0: no retry. Other errors are never retried."
            ),
        },
        "retry_initial_seconds": {
            "type": "number",
            "minimum": MIN_RETRY_SECONDS,
            "maximum": MAX_RETRY_INITIAL_SECONDS,
            "default": DEFAULT_RETRY_INITIAL_SECONDS,
            "description": "First backoff ceiling before a retry; doubles per attempt, the wait is uniform in [0, ceiling] (full jitter).",
        },
        "retry_max_seconds": {
            "type": "number",
            "minimum": MIN_RETRY_SECONDS,
            "maximum": MAX_RETRY_MAX_SECONDS,
            "default": DEFAULT_RETRY_MAX_SECONDS,
            "description": "Largest backoff ceiling between two attempts.",
        },
        "breaker_fail_max": {
            "type": "integer",
            "minimum": MIN_BREAKER_FAIL_MAX,
            "maximum": MAX_BREAKER_FAIL_MAX,
            "default": DEFAULT_BREAKER_FAIL_MAX,
            "description": (
                "Consecutive failed attempts that open the circuit breaker; while it is open, misses are not "
                "looked up in the origin (they are misses at once, counted in skipped_breaker_open)."
            ),
        },
        "breaker_reset_timeout_seconds": {
            "type": "number",
            "minimum": MIN_BREAKER_RESET_TIMEOUT_SECONDS,
            "maximum": MAX_BREAKER_RESET_TIMEOUT_SECONDS,
            "default": DEFAULT_BREAKER_RESET_TIMEOUT_SECONDS,
            "description": "How long the breaker stays open before one probe batch is let through (half-open).",
        },
    }


@dataclass(frozen=True)
class GuardSettings:
    """The retry and breaker settings of one origin (its config section's guard keys)."""

    retry_attempts: int = DEFAULT_RETRY_ATTEMPTS
    retry_initial_seconds: float = DEFAULT_RETRY_INITIAL_SECONDS
    retry_max_seconds: float = DEFAULT_RETRY_MAX_SECONDS
    breaker_fail_max: int = DEFAULT_BREAKER_FAIL_MAX
    breaker_reset_timeout_seconds: float = DEFAULT_BREAKER_RESET_TIMEOUT_SECONDS

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> GuardSettings:
        return cls(
            retry_attempts=int(section.get("retry_attempts", DEFAULT_RETRY_ATTEMPTS)),
            retry_initial_seconds=float(section.get("retry_initial_seconds", DEFAULT_RETRY_INITIAL_SECONDS)),
            retry_max_seconds=float(section.get("retry_max_seconds", DEFAULT_RETRY_MAX_SECONDS)),
            breaker_fail_max=int(section.get("breaker_fail_max", DEFAULT_BREAKER_FAIL_MAX)),
            breaker_reset_timeout_seconds=float(
                section.get("breaker_reset_timeout_seconds", DEFAULT_BREAKER_RESET_TIMEOUT_SECONDS)
            ),
        )

    def check(self, where: str) -> None:
        """Raise ValueError for a setting out of its schema range (objects built outside the config)."""
        bounds: tuple[tuple[str, float, float, float], ...] = (
            ("retry_attempts", self.retry_attempts, MIN_RETRY_ATTEMPTS, MAX_RETRY_ATTEMPTS),
            ("retry_initial_seconds", self.retry_initial_seconds, MIN_RETRY_SECONDS, MAX_RETRY_INITIAL_SECONDS),
            ("retry_max_seconds", self.retry_max_seconds, MIN_RETRY_SECONDS, MAX_RETRY_MAX_SECONDS),
            ("breaker_fail_max", self.breaker_fail_max, MIN_BREAKER_FAIL_MAX, MAX_BREAKER_FAIL_MAX),
            (
                "breaker_reset_timeout_seconds",
                self.breaker_reset_timeout_seconds,
                MIN_BREAKER_RESET_TIMEOUT_SECONDS,
                MAX_BREAKER_RESET_TIMEOUT_SECONDS,
            ),
        )
        for key, value, low, high in bounds:
            if not low <= value <= high:
                raise ValueError(f"{where}.{key} must be {low:g} … {high:g}, found {value!r}")


# A chunk fetcher: the prepared requests of one chunk → one (outcome, value) per request.
Fetch = Callable[[list[Any]], Sequence[tuple[Outcome, bytes | None]]]
# A key check: a prepared request for the key, or None when the key is refused.
Prepare = Callable[[bytes], Any]


class OriginGuard:
    """Retry, breaker, counters and logging around one network origin's backend calls."""

    def __init__(
        self,
        name: str,
        settings: GuardSettings | None = None,
        *,
        transient: Callable[[BaseException], bool] = lambda exc: False,
        on_change: Callable[[], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.settings = settings or GuardSettings()
        self.settings.check(f"origin {name}")
        self.transient = transient
        self.on_change = on_change
        self._sleep = sleep
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.bytes = 0
        self.retries = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_success_at: float | None = None
        self._lock = threading.Lock()
        self._logged: set[tuple[Outcome, bytes]] = set()
        self._log_limit_noted = False
        self._error_kinds_logged: set[str] = set()
        # pybreaker and tenacity load with the first guard, not with the plugin (config
        # validate loads every plugin and never builds an origin).
        import pybreaker

        self.breaker = pybreaker.CircuitBreaker(
            fail_max=self.settings.breaker_fail_max,
            reset_timeout=self.settings.breaker_reset_timeout_seconds,
            listeners=[_listener_class()(self)],
            name=f"origin-{name}",
            throw_new_error_on_trip=False,
        )

    # ------------------------------------------------------------------ breaker
    @property
    def state(self) -> str:
        """The breaker's state as it acts now: ``open`` turns ``half-open`` once its timeout passed.

        pybreaker moves to half-open only on the next call; reporting the effective state
        lets status pages (and tests) see that the next batch will probe the origin.
        """
        state = str(self.breaker.current_state)
        if state == STATE_OPEN and self._reset_elapsed():
            return STATE_HALF_OPEN
        return state

    def _reset_elapsed(self) -> bool:
        opened_at = self.breaker._state_storage.opened_at  # pybreaker keeps it only there
        if opened_at is None:
            return True
        return datetime.now(UTC) >= opened_at + timedelta(seconds=self.breaker.reset_timeout)

    def allows_call(self) -> bool:
        """False while the breaker is open and its reset timeout has not passed."""
        return self.state != STATE_OPEN

    def _feed(self, exc: BaseException | None) -> None:
        """Tell the breaker how one attempt went (the attempt itself ran outside its lock)."""
        import pybreaker

        try:
            if exc is None:
                self.breaker.call(_succeed)
            else:
                self.breaker.call(_fail, exc)
        except pybreaker.CircuitBreakerError:
            # Another attempt opened the breaker meanwhile: this outcome changes nothing.
            return
        except Exception as raised:
            if raised is not exc:
                raise

    # ------------------------------------------------------------------ calls
    def call(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` with transient errors retried and every attempt fed to the breaker.

        Raises :class:`BreakerOpenError` when the breaker does not allow an attempt, or the
        last attempt's error.
        """
        import tenacity

        s = self.settings
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(1 + s.retry_attempts),
            wait=tenacity.wait_random_exponential(multiplier=s.retry_initial_seconds, max=s.retry_max_seconds),
            retry=tenacity.retry_if_exception(lambda exc: not isinstance(exc, BreakerOpenError) and self.transient(exc)),
            before_sleep=self._count_retry,
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(self._attempt, func, *args)

    def _attempt(self, func: Callable[..., T], *args: Any) -> T:
        if not self.allows_call():
            raise BreakerOpenError(f"origin {self.name}: circuit breaker open")
        try:
            result = func(*args)
        except Exception as exc:
            self._feed(exc)
            raise
        self._feed(None)
        return result

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        with self._lock:
            self.retries += 1

    # ------------------------------------------------------------------ load_many
    def load_many(
        self,
        keys: Sequence[bytes],
        fetch: Fetch,
        *,
        prepare: Prepare = lambda key: key,
        chunk_size: int = 1,
        executor: concurrent.futures.Executor | None = None,
    ) -> list[bytes | None]:
        """Values for ``keys`` in order (None for a miss); never raises, counts every key."""
        if not keys:
            return []
        outcomes: dict[bytes, tuple[Outcome, bytes | None]] = {}
        pending: list[tuple[bytes, Any]] = []
        for key in keys:
            raw = bytes(key) if isinstance(key, (bytes, bytearray, memoryview)) else None
            if raw is None or raw in outcomes:
                continue
            try:
                request = prepare(raw)
            except Exception as exc:
                log.debug("origin %s: refused key %r (%s)", self.name, _short(raw), exc.__class__.__name__)
                request = None
            if request is None:
                log.debug("origin %s: refused key %r", self.name, _short(raw))
                outcomes[raw] = (Outcome.REJECTED, None)
            else:
                outcomes[raw] = (Outcome.MISS, None)  # placeholder until its chunk has run
                pending.append((raw, request))
        if pending:
            if not self.allows_call():
                for raw, _request in pending:
                    outcomes[raw] = (Outcome.SKIPPED, None)
            else:
                size = max(1, int(chunk_size))
                chunks = [pending[i : i + size] for i in range(0, len(pending), size)]
                if self.state == STATE_HALF_OPEN:
                    # One probe before the rest: an origin still down costs one chunk, not all.
                    outcomes.update(self._run_chunk(fetch, chunks.pop(0)))
                if executor is not None and len(chunks) > 1:
                    for part in executor.map(lambda chunk: self._run_chunk(fetch, chunk), chunks):
                        outcomes.update(part)
                else:
                    for chunk in chunks:
                        outcomes.update(self._run_chunk(fetch, chunk))
        out: list[bytes | None] = []
        tally = dict.fromkeys(Outcome, 0)
        returned = 0
        for key in keys:
            raw = bytes(key) if isinstance(key, (bytes, bytearray, memoryview)) else None
            outcome, value = outcomes.get(raw, (Outcome.REJECTED, None)) if raw is not None else (Outcome.REJECTED, None)
            tally[outcome] += 1
            if value is not None:
                returned += len(value)
            out.append(value)
        with self._lock:
            for outcome, count in tally.items():
                self.counts[outcome.value] += count
            self.bytes += returned
        self._changed()
        return out

    def _run_chunk(self, fetch: Fetch, chunk: list[tuple[bytes, Any]]) -> dict[bytes, tuple[Outcome, bytes | None]]:
        raws = [raw for raw, _request in chunk]
        try:
            results = list(self.call(fetch, [request for _raw, request in chunk]))
            if len(results) != len(chunk):
                raise RuntimeError(f"expected {len(chunk)} results, got {len(results)}")
        except BreakerOpenError:
            return {raw: (Outcome.SKIPPED, None) for raw in raws}
        except Exception as exc:
            self._backend_error(exc)
            return {raw: (Outcome.ERROR, None) for raw in raws}
        self._backend_ok()
        done: dict[bytes, tuple[Outcome, bytes | None]] = {}
        for raw, (outcome, value) in zip(raws, results):
            if outcome is Outcome.LOADED and not isinstance(value, bytes):
                outcome, value = Outcome.ERROR, None
            elif outcome is not Outcome.LOADED:
                value = None
            if outcome in (Outcome.OVERSIZED, Outcome.ERROR):
                self.note(outcome, raw)
            done[raw] = (outcome, value)
        return done

    # ------------------------------------------------------------------ status
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters."""
        with self._lock:
            return {**self.counts, "bytes": self.bytes, "retries": self.retries}

    def status(self) -> dict[str, Any]:
        """Counters, breaker state and the last backend error, JSON-ready."""
        stats = self.stats()
        return {
            **stats,
            "breaker": self.state,
            "breaker_failures": int(self.breaker.fail_counter),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_success_at": self.last_success_at,
        }

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # publishing status must never fail a load
                log.exception("origin %s: publishing its status failed", self.name)

    # ------------------------------------------------------------------ logging
    def _backend_error(self, exc: BaseException) -> None:
        kind = exc.__class__.__name__
        text = f"{kind}: {exc}"[:ERROR_TEXT_LIMIT]
        with self._lock:
            self.last_error = text
            self.last_error_at = time.time()
            first = kind not in self._error_kinds_logged
            self._error_kinds_logged.add(kind)
        if first:
            log.warning("origin %s: backend call failed (%s); its keys load as misses", self.name, text)

    def _backend_ok(self) -> None:
        with self._lock:
            self.last_success_at = time.time()
            recovered = bool(self._error_kinds_logged)
            self._error_kinds_logged.clear()
        if recovered:
            log.info("origin %s: backend answers again", self.name)

    def note(self, outcome: Outcome, key: bytes) -> None:
        """Log a key's problem once; the key is the only detail."""
        ident = (outcome, key)
        with self._lock:
            if ident in self._logged:
                return
            if len(self._logged) >= LOGGED_KEYS_LIMIT:
                if self._log_limit_noted:
                    return
                self._log_limit_noted = True
                log.warning("origin %s: %d keys logged; further problem keys are only counted", self.name, LOGGED_KEYS_LIMIT)
                return
            self._logged.add(ident)
        what = "is over the origin's size limit" if outcome is Outcome.OVERSIZED else "cannot be read"
        log.warning("origin %s: the value of key %r %s; loaded as a miss", self.name, _short(key), what)


@functools.cache
def _listener_class() -> Callable[[OriginGuard], pybreaker.CircuitBreakerListener]:
    """The breaker listener class (defined once pybreaker is loaded)."""
    import pybreaker

    class BreakerListener(pybreaker.CircuitBreakerListener):
        def __init__(self, guard: OriginGuard) -> None:
            self.guard = guard

        def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
            old = getattr(old_state, "name", str(old_state))
            new = getattr(new_state, "name", str(new_state))
            level = logging.WARNING if new == STATE_OPEN else logging.INFO
            log.log(level, "origin %s: circuit breaker %s -> %s", self.guard.name, old, new)
            self.guard._changed()

    return BreakerListener


def _succeed() -> None:
    return None


def _fail(exc: BaseException) -> None:
    raise exc


def _short(key: bytes) -> bytes:
    """A key cut to a loggable length."""
    return key if len(key) <= LOG_KEY_BYTES else key[:LOG_KEY_BYTES] + b"..."
