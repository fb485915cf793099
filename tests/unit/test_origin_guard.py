# SPDX-License-Identifier: Apache-2.0
"""plugins.origins.guard: retry, circuit breaker, half-open probe and counters of the network origins.

Hermetic: the backend is a scripted fake fetch function that records every call, so
"no backend call while the breaker is open" is asserted, not assumed. Backoff sleeps are
recorded instead of slept; the only real wait is for a 0.2 s breaker reset timeout, and
it is observed by polling the breaker state against a deadline.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from plugins.origins.guard import (
    COUNTERS,
    STATE_CLOSED,
    STATE_HALF_OPEN,
    STATE_OPEN,
    GuardSettings,
    OriginGuard,
    Outcome,
    guard_schema_properties,
)
from tests.polling import wait_for

RESET_SECONDS = 0.2
DEADLINE_SECONDS = 10.0


class Transient(Exception):
    """A backend error the guard may retry."""


class Hard(Exception):
    """A backend error the guard must not retry."""


class Backend:
    """A scripted fetch: each call takes the next step ("ok", "transient" or "hard").

    With the script used up it keeps doing ``default``. "ok" answers a value for every
    request; ``per_key`` can override the outcome of single requests.
    """

    def __init__(self, script: list[str] | None = None, default: str = "ok") -> None:
        self.script = list(script or [])
        self.default = default
        self.calls: list[list[Any]] = []
        self.per_key: dict[Any, tuple[Outcome, bytes | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, requests: list[Any]) -> list[tuple[Outcome, bytes | None]]:
        with self._lock:
            self.calls.append(list(requests))
            step = self.script.pop(0) if self.script else self.default
        if step == "transient":
            raise Transient("connection refused")
        if step == "hard":
            raise Hard("access denied")
        return [self.per_key.get(r, (Outcome.LOADED, b"v:" + bytes(r))) for r in requests]

    @property
    def keys_sent(self) -> list[Any]:
        return [key for call in self.calls for key in call]


def make_guard(sleeps: list[float] | None = None, **settings: Any) -> OriginGuard:
    recorded = sleeps if sleeps is not None else []
    return OriginGuard(
        "test",
        GuardSettings(**settings),
        transient=lambda exc: isinstance(exc, Transient),
        sleep=recorded.append,
    )


def total(guard: OriginGuard) -> int:
    stats = guard.stats()
    return sum(stats[name] for name in COUNTERS)


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    yield pool
    pool.shutdown(wait=True)


# ----------------------------------------------------------------------------- retry


def test_a_transient_error_is_retried_then_the_value_loads() -> None:
    sleeps: list[float] = []
    guard = make_guard(sleeps, retry_attempts=2, retry_initial_seconds=0.05)
    backend = Backend(["transient"])
    assert guard.load_many([b"a"], backend) == [b"v:a"]
    assert len(backend.calls) == 2
    stats = guard.stats()
    assert stats["loads"] == 1 and stats["errors"] == 0 and stats["retries"] == 1 and stats["bytes"] == 3
    assert len(sleeps) == 1 and 0.0 <= sleeps[0] <= 0.05  # full jitter: uniform in [0, initial]
    assert guard.state == STATE_CLOSED and guard.breaker.fail_counter == 0  # the success reset the count


def test_the_retry_budget_is_small_and_its_backoff_ceiling_doubles_up_to_the_maximum() -> None:
    sleeps: list[float] = []
    guard = make_guard(sleeps, retry_attempts=3, retry_initial_seconds=0.05, retry_max_seconds=0.08, breaker_fail_max=10)
    backend = Backend(default="transient")
    assert guard.load_many([b"a"], backend) == [None]
    assert len(backend.calls) == 4  # the first attempt and three retries
    assert len(sleeps) == 3 and sleeps[0] <= 0.05 and all(0.0 <= s <= 0.08 for s in sleeps)
    assert guard.stats()["errors"] == 1 and guard.stats()["retries"] == 3
    assert guard.status()["last_error"] == "Transient: connection refused"


def test_an_error_that_is_not_transient_is_not_retried() -> None:
    sleeps: list[float] = []
    guard = make_guard(sleeps, retry_attempts=5)
    backend = Backend(["hard"])
    assert guard.load_many([b"a"], backend) == [None]
    assert len(backend.calls) == 1 and sleeps == []
    assert guard.stats()["errors"] == 1 and guard.breaker.fail_counter == 1  # it still counts towards the breaker


# ----------------------------------------------------------------------------- breaker


def test_the_breaker_opens_after_fail_max_failures_and_then_the_backend_is_not_called() -> None:
    guard = make_guard(retry_attempts=0, breaker_fail_max=3, breaker_reset_timeout_seconds=60)
    backend = Backend(default="transient")
    keys = [b"k1", b"k2", b"k3", b"k4", b"k5"]
    assert guard.load_many(keys, backend) == [None] * 5
    assert len(backend.calls) == 3  # the third failure opened it; k4 and k5 were not sent
    assert guard.state == STATE_OPEN
    stats = guard.stats()
    assert stats["errors"] == 3 and stats["skipped_breaker_open"] == 2

    assert guard.load_many([b"x", b"y"], backend) == [None, None]
    assert len(backend.calls) == 3, "an open breaker must not call the backend"
    assert guard.stats()["skipped_breaker_open"] == 4
    assert guard.status()["breaker"] == STATE_OPEN and guard.status()["breaker_failures"] == 3


def test_retries_stop_when_the_breaker_opens_in_between() -> None:
    guard = make_guard(retry_attempts=5, breaker_fail_max=2, breaker_reset_timeout_seconds=60)
    backend = Backend(default="transient")
    assert guard.load_many([b"a"], backend) == [None]
    assert len(backend.calls) == 2  # the second attempt opened the breaker; no third attempt
    assert guard.stats()["skipped_breaker_open"] == 1 and guard.stats()["errors"] == 0


def test_after_the_reset_timeout_one_probe_goes_first_and_a_failed_probe_opens_the_breaker_again() -> None:
    guard = make_guard(retry_attempts=0, breaker_fail_max=1, breaker_reset_timeout_seconds=RESET_SECONDS)
    backend = Backend(default="transient")
    guard.load_many([b"a"], backend)
    assert guard.state == STATE_OPEN
    wait_for(lambda: guard.state == STATE_HALF_OPEN, timeout=DEADLINE_SECONDS, interval=0.02, what="the breaker to turn half-open")

    sent_before = len(backend.calls)
    assert guard.load_many([b"p1", b"p2", b"p3"], backend) == [None, None, None]
    assert len(backend.calls) == sent_before + 1, "only the probe may reach a backend that is still down"
    assert guard.state == STATE_OPEN
    assert guard.stats()["skipped_breaker_open"] == 2


def test_a_successful_probe_closes_the_breaker_and_the_rest_of_the_batch_loads(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    guard = make_guard(retry_attempts=0, breaker_fail_max=2, breaker_reset_timeout_seconds=RESET_SECONDS)
    backend = Backend(["transient", "transient"])
    guard.load_many([b"a", b"b"], backend)
    assert guard.state == STATE_OPEN
    wait_for(lambda: guard.state == STATE_HALF_OPEN, timeout=DEADLINE_SECONDS, interval=0.02, what="the breaker to turn half-open")

    keys = [b"c", b"d", b"e", b"f"]
    assert guard.load_many(keys, backend, executor=executor) == [b"v:" + k for k in keys]
    assert backend.calls[2] == [b"c"], "the probe is the first key, sent alone"
    assert sorted(backend.keys_sent[3:]) == [b"d", b"e", b"f"]
    assert guard.state == STATE_CLOSED and guard.breaker.fail_counter == 0


def test_parallel_chunks_really_run_at_the_same_time(executor: concurrent.futures.ThreadPoolExecutor) -> None:
    # pybreaker holds its lock during a guarded call; the guard must not run fetches under it.
    barrier = threading.Barrier(4, timeout=DEADLINE_SECONDS)

    def fetch(requests: list[bytes]) -> list[tuple[Outcome, bytes | None]]:
        barrier.wait()  # breaks (BrokenBarrierError) unless four fetches are in flight together
        return [(Outcome.LOADED, r) for r in requests]

    guard = make_guard(retry_attempts=0)
    keys = [b"a", b"b", b"c", b"d"]
    assert guard.load_many(keys, fetch, executor=executor) == keys
    assert guard.stats()["errors"] == 0


def test_breaker_failures_from_parallel_chunks_open_it_once(executor: concurrent.futures.ThreadPoolExecutor) -> None:
    guard = make_guard(retry_attempts=0, breaker_fail_max=3, breaker_reset_timeout_seconds=60)
    backend = Backend(default="hard")
    keys = [b"k%d" % i for i in range(40)]
    assert guard.load_many(keys, backend, executor=executor) == [None] * 40
    assert guard.state == STATE_OPEN
    stats = guard.stats()
    assert stats["errors"] == len(backend.calls) and stats["errors"] + stats["skipped_breaker_open"] == 40
    assert len(backend.calls) < 40


# ----------------------------------------------------------------------------- counters


def test_every_key_asked_for_is_counted_exactly_once_whatever_happened_to_it() -> None:
    guard = make_guard(retry_attempts=0, breaker_fail_max=2, breaker_reset_timeout_seconds=60)
    backend = Backend(["ok", "hard"])
    backend.per_key = {b"gone": (Outcome.MISS, None), b"huge": (Outcome.OVERSIZED, None), b"odd": (Outcome.ERROR, None)}

    def prepare(key: bytes) -> bytes | None:
        return None if key.startswith(b"bad") else key

    keys: list[Any] = [b"a", b"gone", b"huge", b"odd", b"a", b"bad1", "not bytes", b"bad1", b"x", b"y", b"z", b"z"]
    out = guard.load_many(keys, backend, prepare=prepare, chunk_size=4)
    # Chunks of unique valid keys: [a, gone, huge, odd] ok, [x, y, z] hard.
    assert out == [b"v:a", None, None, None, b"v:a", None, None, None, None, None, None, None]
    stats = guard.stats()
    assert stats["loads"] == 2 and stats["misses"] == 1 and stats["oversized"] == 1
    assert stats["rejected"] == 3 and stats["errors"] == 1 + 4  # odd, and x, y, z, z
    assert stats["bytes"] == 6
    assert total(guard) == len(keys)

    backend.script = ["hard"]
    more = [b"m", b"bad2", b"n"]
    guard.load_many(more, backend, prepare=prepare)
    assert total(guard) == len(keys) + len(more)
    assert guard.state == STATE_OPEN
    guard.load_many(more, backend, prepare=prepare)
    assert total(guard) == len(keys) + 2 * len(more)
    assert guard.stats()["skipped_breaker_open"] >= 2


def test_a_key_named_twice_is_fetched_once_and_counted_twice() -> None:
    guard = make_guard()
    backend = Backend()
    assert guard.load_many([b"a", b"a", b"b", b"a"], backend, chunk_size=10) == [b"v:a", b"v:a", b"v:b", b"v:a"]
    assert backend.keys_sent == [b"a", b"b"]
    assert guard.stats()["loads"] == 4


def test_a_fetch_that_answers_the_wrong_number_of_values_is_an_error_not_a_crash() -> None:
    guard = make_guard(retry_attempts=0)
    assert guard.load_many([b"a", b"b"], lambda requests: [(Outcome.LOADED, b"x")], chunk_size=2) == [None, None]
    assert guard.stats()["errors"] == 2


def test_a_failing_key_check_refuses_the_key_only() -> None:
    guard = make_guard()

    def prepare(key: bytes) -> bytes:
        if key == b"boom":
            raise UnicodeError("bad")
        return key

    assert guard.load_many([b"boom", b"ok"], Backend(), prepare=prepare) == [None, b"v:ok"]
    assert guard.stats()["rejected"] == 1 and guard.stats()["loads"] == 1


def test_an_empty_batch_calls_nothing() -> None:
    backend = Backend()
    guard = make_guard()
    assert guard.load_many([], backend) == []
    assert backend.calls == [] and total(guard) == 0


def test_problem_keys_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    guard = make_guard()
    backend = Backend()
    backend.per_key = {b"huge": (Outcome.OVERSIZED, None)}
    for _ in range(3):
        guard.load_many([b"huge"], backend)
    lines = [r for r in caplog.records if "huge" in r.getMessage()]
    assert len(lines) == 1


def test_a_backend_error_is_logged_once_per_kind_until_the_backend_answers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugins.origins.guard")
    guard = make_guard(retry_attempts=0, breaker_fail_max=100)
    backend = Backend(["transient", "transient", "ok", "transient"])
    for key in (b"a", b"b", b"c", b"d"):
        guard.load_many([key], backend)
    failures = [r for r in caplog.records if "backend call failed" in r.getMessage()]
    assert len(failures) == 2  # once for the first outage, once after recovery for the second
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_status_changes_are_published() -> None:
    seen: list[str] = []
    guard = OriginGuard(
        "pub",
        GuardSettings(retry_attempts=0, breaker_fail_max=1, breaker_reset_timeout_seconds=60),
        transient=lambda exc: False,
        on_change=lambda: seen.append(guard.state),
    )
    guard.load_many([b"a"], Backend(["hard"]))
    assert STATE_OPEN in seen  # from the breaker's state change and after the batch
    assert set(guard.status()) >= {*COUNTERS, "bytes", "retries", "breaker", "breaker_failures", "last_error"}


# ----------------------------------------------------------------------------- settings


def test_every_guard_key_has_a_default_and_a_range() -> None:
    props = guard_schema_properties()
    assert set(props) == {
        "retry_attempts",
        "retry_initial_seconds",
        "retry_max_seconds",
        "breaker_fail_max",
        "breaker_reset_timeout_seconds",
    }
    defaults = GuardSettings()
    for name, prop in props.items():
        jsonschema.Draft202012Validator.check_schema(prop)
        assert "minimum" in prop and "maximum" in prop and "description" in prop, name
        assert prop["default"] == getattr(defaults, name), name
        jsonschema.Draft202012Validator(prop).validate(prop["default"])
    assert GuardSettings.from_config({}) == defaults
    assert (defaults.retry_attempts, defaults.retry_initial_seconds) == (2, 0.05)
    assert (defaults.breaker_fail_max, defaults.breaker_reset_timeout_seconds) == (5, 10.0)


@pytest.mark.parametrize(
    "bad",
    [{"retry_attempts": -1}, {"retry_attempts": 11}, {"breaker_fail_max": 0}, {"breaker_reset_timeout_seconds": 0.0}],
)
def test_settings_out_of_range_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        OriginGuard("x", GuardSettings(**bad))
