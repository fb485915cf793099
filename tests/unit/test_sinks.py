# SPDX-License-Identifier: Apache-2.0
"""agent.sinks.Sink: ordered delivery, bounded queue, circuit breaker, exporter swap, close.

The exporter is the boundary (a vendor API), so it is replaced by a fake that records
batches and can be told to fail (``broken``) or to block (``gate`` cleared).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agent.sinks import Sink
from agent.telemetry import Telemetry

WAIT = 5.0


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the deadline")
        time.sleep(0.002)


class FakeExporter:
    name = "fake"

    def __init__(self) -> None:
        self.batches: list[Any] = []
        self.attempts = 0
        self.entered = threading.Event()
        self.broken = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.closed = threading.Event()

    def send(self, batch: Any) -> None:
        self.attempts += 1
        self.entered.set()
        if not self.gate.wait(WAIT):
            raise TimeoutError("test gate never opened")
        if self.broken.is_set():
            raise ConnectionError("vendor unreachable")
        self.batches.append(batch)

    def close(self) -> None:
        self.closed.set()


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry("test")


@pytest.fixture
def sinks() -> Iterator[list[tuple[Sink, list[FakeExporter]]]]:
    """Every sink made by a test is unblocked and closed at the end."""
    made: list[tuple[Sink, list[FakeExporter]]] = []
    yield made
    for sink, exporters in made:
        for exporter in exporters:
            exporter.gate.set()
        sink.close(0.05)


@pytest.fixture
def make_sink(sinks: list[tuple[Sink, list[FakeExporter]]], telemetry: Telemetry) -> Callable[..., Sink]:
    def make(exporter: FakeExporter, *also: FakeExporter, metrics: Any = telemetry, **kw: Any) -> Sink:
        args: dict[str, Any] = {"max_batches": 100, "fail_max": 3, "reset_timeout": 30.0, "retry_interval": 0.005}
        args.update(kw)
        sink = Sink("fake", exporter, metrics=metrics, **args)
        sinks.append((sink, [exporter, *also]))
        return sink

    return make


def sample(telemetry: Telemetry, name: str) -> float | None:
    return telemetry.registry.get_sample_value(name, {"sink": "fake"})


# ----------------------------------------------------------------------------- delivery


def test_batches_are_delivered_in_order(make_sink: Callable[..., Sink], telemetry: Telemetry) -> None:
    exporter = FakeExporter()
    sink = make_sink(exporter)
    for i in range(50):
        sink.submit([i])
    assert sink.wait_idle(WAIT)
    assert exporter.batches == [[i] for i in range(50)]
    status = sink.status()
    assert status["sent_batches"] == 50 and status["queued_batches"] == 0 and status["dropped_batches"] == 0
    assert status["breaker"] == "closed" and status["last_success"] is not None and status["last_error"] is None
    assert sample(telemetry, "predis_agent_sink_batches_sent_total") == 50
    assert sample(telemetry, "predis_agent_sink_queue_batches") == 0


def test_full_queue_drops_the_oldest_waiting_batch(make_sink: Callable[..., Sink], telemetry: Telemetry) -> None:
    exporter = FakeExporter()
    exporter.gate.clear()
    sink = make_sink(exporter, max_batches=3)
    sink.submit("b0")
    assert exporter.entered.wait(WAIT)  # b0 is on the wire
    for i in range(1, 9):
        sink.submit(f"b{i}")
    assert sink.dropped == 5
    assert sink.status()["queued_batches"] == 4  # three waiting plus the one in flight
    assert sample(telemetry, "predis_agent_sink_queue_batches") == 4
    assert sample(telemetry, "predis_agent_sink_batches_dropped_total") == 5
    exporter.gate.set()
    assert sink.wait_idle(WAIT)
    assert exporter.batches == ["b0", "b6", "b7", "b8"]
    assert sink.status()["sent_batches"] == 4


def test_wait_idle_times_out_while_the_exporter_blocks(make_sink: Callable[..., Sink]) -> None:
    exporter = FakeExporter()
    exporter.gate.clear()
    sink = make_sink(exporter)
    sink.submit(1)
    assert exporter.entered.wait(WAIT)
    assert sink.wait_idle(0.05) is False
    exporter.gate.set()
    assert sink.wait_idle(WAIT) is True


def test_each_send_runs_inside_an_export_span(make_sink: Callable[..., Sink]) -> None:
    spans: list[tuple[str, dict[str, Any]]] = []

    @contextmanager
    def span(name: str, **attrs: Any) -> Iterator[None]:
        spans.append((name, attrs))
        yield

    exporter = FakeExporter()
    sink = make_sink(exporter, span=span)
    sink.submit(1)
    sink.submit(2)
    assert sink.wait_idle(WAIT)
    assert spans == [("export", {"sink": "fake"}), ("export", {"sink": "fake"})]


# ----------------------------------------------------------------------------- circuit breaker


def test_failures_open_the_breaker_and_batches_are_kept(make_sink: Callable[..., Sink], telemetry: Telemetry) -> None:
    changes: list[tuple[str, str, str]] = []
    exporter = FakeExporter()
    exporter.broken.set()
    sink = make_sink(exporter, fail_max=3, on_state_change=lambda *a: changes.append(a))
    for i in range(4):
        sink.submit(i)
    wait_for(lambda: sink.status()["breaker"] == "open")
    assert exporter.attempts == 3  # an open breaker does not call the vendor
    status = sink.status()
    assert status["queued_batches"] == 4 and status["sent_batches"] == 0 and status["dropped_batches"] == 0
    assert status["last_error"] == "ConnectionError: vendor unreachable"
    assert exporter.batches == []
    assert sample(telemetry, "predis_agent_sink_breaker_open") == 1
    assert changes == [("fake", "closed", "open")]


def test_every_failed_send_is_counted_including_the_one_that_trips_the_breaker(
    make_sink: Callable[..., Sink], telemetry: Telemetry
) -> None:
    exporter = FakeExporter()
    exporter.broken.set()
    sink = make_sink(exporter, fail_max=3)
    sink.submit("x")
    wait_for(lambda: sink.status()["breaker"] == "open")
    assert exporter.attempts == 3
    assert sink.status()["failed_attempts"] == 3
    assert sink.status()["last_error"] == "ConnectionError: vendor unreachable"  # the vendor's error, not the breaker's
    assert sample(telemetry, "predis_agent_sink_batches_failed_total") == 3


def test_breaker_half_opens_after_the_timeout_and_closes_on_success(
    make_sink: Callable[..., Sink], telemetry: Telemetry
) -> None:
    changes: list[tuple[str, str]] = []
    exporter = FakeExporter()
    exporter.broken.set()
    sink = make_sink(exporter, fail_max=2, reset_timeout=0.2, on_state_change=lambda n, old, new: changes.append((old, new)))
    for i in range(5):
        sink.submit(i)
    wait_for(lambda: sink.status()["breaker"] == "open")
    # While still broken, each probe after reset_timeout fails and re-opens the breaker.
    wait_for(lambda: ("half-open", "open") in changes)
    assert exporter.batches == [] and sink.status()["queued_batches"] == 5
    exporter.broken.clear()
    wait_for(lambda: sink.status()["breaker"] == "closed")
    assert sink.wait_idle(WAIT)
    assert exporter.batches == [0, 1, 2, 3, 4]  # the backlog, in order, nothing lost
    assert changes[0] == ("closed", "open") and changes[-1] == ("half-open", "closed")
    assert sample(telemetry, "predis_agent_sink_breaker_open") == 0
    assert sink.dropped == 0


def test_a_raising_state_listener_does_not_stop_the_sink(make_sink: Callable[..., Sink]) -> None:
    def listener(*_: Any) -> None:
        raise RuntimeError("listener bug")

    exporter = FakeExporter()
    exporter.broken.set()
    sink = make_sink(exporter, fail_max=1, reset_timeout=0.1, on_state_change=listener)
    sink.submit("a")
    wait_for(lambda: sink.status()["breaker"] == "open")
    exporter.broken.clear()
    assert sink.wait_idle(WAIT)
    assert exporter.batches == ["a"]


# ----------------------------------------------------------------------------- reconfiguration


def test_replace_exporter_keeps_the_queue_and_wakes_the_worker(make_sink: Callable[..., Sink]) -> None:
    old, new = FakeExporter(), FakeExporter()
    old.broken.set()
    # A long retry pause: only replace_exporter's wake-up can make delivery quick.
    sink = make_sink(old, new, fail_max=100, retry_interval=30.0)
    for i in range(3):
        sink.submit(i)
    wait_for(lambda: old.attempts >= 1)
    sink.replace_exporter(new)
    assert old.closed.is_set()
    assert sink.wait_idle(WAIT)
    assert new.batches == [0, 1, 2]
    assert old.batches == [] and sink.dropped == 0
    sink.submit(3)
    assert sink.wait_idle(WAIT)
    assert new.batches == [0, 1, 2, 3] and old.attempts == 1


def test_tune_shrinks_the_queue_dropping_the_oldest(make_sink: Callable[..., Sink], telemetry: Telemetry) -> None:
    exporter = FakeExporter()
    exporter.gate.clear()
    sink = make_sink(exporter, max_batches=10)
    sink.submit(0)
    assert exporter.entered.wait(WAIT)
    for i in range(1, 6):
        sink.submit(i)
    sink.tune(max_batches=2, fail_max=7, reset_timeout=12.0, retry_interval=0.01)
    assert sink.dropped == 3
    assert sample(telemetry, "predis_agent_sink_batches_dropped_total") == 3
    assert sink.breaker.fail_max == 7 and sink.breaker.reset_timeout == 12.0
    sink.submit(6)  # the new limit applies to new batches too
    assert sink.dropped == 4
    exporter.gate.set()
    assert sink.wait_idle(WAIT)
    assert exporter.batches == [0, 5, 6]


def test_tune_updates_the_queue_gauge(make_sink: Callable[..., Sink], telemetry: Telemetry) -> None:
    exporter = FakeExporter()
    exporter.gate.clear()
    sink = make_sink(exporter, max_batches=10)
    sink.submit(0)
    assert exporter.entered.wait(WAIT)
    for i in range(1, 6):
        sink.submit(i)
    assert sample(telemetry, "predis_agent_sink_queue_batches") == 6
    sink.tune(max_batches=2, fail_max=3, reset_timeout=30.0, retry_interval=0.01)
    assert sink.status()["queued_batches"] == 3
    assert sample(telemetry, "predis_agent_sink_queue_batches") == 3


# ----------------------------------------------------------------------------- close


def test_close_flushes_pending_batches_and_closes_the_exporter(make_sink: Callable[..., Sink], caplog: pytest.LogCaptureFixture) -> None:
    exporter = FakeExporter()
    exporter.gate.clear()
    sink = make_sink(exporter)
    for i in range(5):
        sink.submit(i)
    assert exporter.entered.wait(WAIT)
    releaser = threading.Timer(0.05, exporter.gate.set)  # the vendor answers while close() waits
    releaser.start()
    try:
        with caplog.at_level(logging.WARNING, logger="agent.sinks"):
            sink.close(WAIT)
    finally:
        releaser.join()
    assert exporter.batches == [0, 1, 2, 3, 4]
    assert exporter.closed.is_set()
    assert not any("undelivered" in r.getMessage() for r in caplog.records)
    wait_for(lambda: not sink._thread.is_alive())


def test_close_gives_up_after_the_timeout_and_reports_what_was_left(
    make_sink: Callable[..., Sink], caplog: pytest.LogCaptureFixture, telemetry: Telemetry
) -> None:
    exporter = FakeExporter()
    exporter.broken.set()
    sink = make_sink(exporter, fail_max=2)
    for i in range(3):
        sink.submit(i)
    wait_for(lambda: sink.status()["breaker"] == "open")
    with caplog.at_level(logging.WARNING, logger="agent.sinks"):
        sink.close(0.1)
    assert any(r.getMessage() == "sink fake stopped with 3 batch(es) undelivered" for r in caplog.records)
    assert exporter.closed.is_set()
    wait_for(lambda: not sink._thread.is_alive())
    sink.submit("late")  # after close: dropped and counted, never queued
    assert sink.dropped == 1 and sample(telemetry, "predis_agent_sink_batches_dropped_total") == 1


def test_sink_without_metrics_still_counts(make_sink: Callable[..., Sink]) -> None:
    exporter = FakeExporter()
    exporter.gate.clear()
    sink = make_sink(exporter, metrics=None, max_batches=1)
    sink.submit(0)
    assert exporter.entered.wait(WAIT)
    sink.submit(1)
    sink.submit(2)
    exporter.gate.set()
    assert sink.wait_idle(WAIT)
    assert exporter.batches == [0, 2] and sink.dropped == 1


def test_metrics_follow_sends_failures_and_breaker(make_sink: Callable[..., Sink], telemetry: Telemetry) -> None:
    exporter = FakeExporter()
    sink = make_sink(exporter, fail_max=50)
    sink.submit("ok")
    assert sink.wait_idle(WAIT)
    exporter.broken.set()
    sink.submit("retry-me")
    wait_for(lambda: (sample(telemetry, "predis_agent_sink_batches_failed_total") or 0) >= 2)
    assert sample(telemetry, "predis_agent_sink_queue_batches") == 1
    exporter.broken.clear()
    assert sink.wait_idle(WAIT)
    assert sample(telemetry, "predis_agent_sink_batches_sent_total") == 2
    assert sample(telemetry, "predis_agent_sink_queue_batches") == 0
    assert sink.status()["failed_attempts"] == sample(telemetry, "predis_agent_sink_batches_failed_total")
    assert exporter.batches == ["ok", "retry-me"]
