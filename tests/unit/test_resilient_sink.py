# SPDX-License-Identifier: Apache-2.0
"""agent.sinks.ResilientSink: ordering, bounds, retry classes, breaker, dead letters, spool.

The exporter is the boundary (a vendor API), so it is a scripted fake: each send pops the
next planned outcome (an exception to raise, or None for success) and records what it
was given. Everything else — queue, tenacity retry, pybreaker, files — is the real code.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import agent.sinks
from agent.runtime import Event
from agent.sinks import (
    DeltaTracker,
    ExportAuthError,
    InvalidPayloadError,
    Payload,
    PayloadTooLargeError,
    ResilientSink,
    SinkSettings,
    TransientExportError,
)
from agent.telemetry import Telemetry
from tests.polling import wait_for

WAIT = 10.0


class ScriptedExporter:
    """Encodes a batch of ints into one payload per ``per_payload`` items; sends per plan."""

    name = "fake"

    def __init__(self, per_payload: int = 1000, item_bytes: int = 10) -> None:
        self.per_payload = per_payload
        self.item_bytes = item_bytes
        self.plan: list[BaseException | None] = []
        self.delivered: list[list[int]] = []
        self.attempts = 0
        self.attempt_times: list[float] = []
        self.timeouts: list[float] = []
        self.gate = threading.Event()
        self.gate.set()
        self.refreshed = 0
        self.closed = False
        self.lock = threading.Lock()

    def encode(self, batch: list[int]) -> list[Payload]:
        out = []
        for i in range(0, len(batch), self.per_payload):
            items = list(batch[i : i + self.per_payload])
            out.append(Payload(body={"items": items}, points=len(items), nbytes=self.item_bytes * len(items)))
        return out

    def encode_events(self, events: list[Event]) -> list[Payload]:
        return [Payload(body={"items": [e.kind]}, points=1, nbytes=10, kind="event") for e in events]

    def split(self, payload: Payload) -> list[Payload] | None:
        items = payload.body["items"]
        mid = len(items) // 2
        return [Payload(body={"items": part}, points=len(part), nbytes=self.item_bytes * len(part)) for part in (items[:mid], items[mid:])]

    def send(self, payload: Payload, timeout: float) -> None:
        if not self.gate.wait(WAIT):
            raise TimeoutError("test gate never opened")
        with self.lock:
            self.attempts += 1
            self.attempt_times.append(time.monotonic())
            self.timeouts.append(timeout)
            outcome = self.plan.pop(0) if self.plan else None
        if outcome is not None:
            raise outcome
        with self.lock:
            self.delivered.append(list(payload.body["items"]))

    def refresh_credentials(self) -> None:
        self.refreshed += 1

    def close(self) -> None:
        self.closed = True

    def flat(self) -> list[int]:
        with self.lock:
            return [x for items in self.delivered for x in items]


def settings(**kw: Any) -> SinkSettings:
    base: dict[str, Any] = {
        "max_points": 10_000,
        "max_bytes": 10_000_000,
        "max_age_seconds": 60.0,
        "attempt_timeout_seconds": 3.0,
        "retry_initial_seconds": 0.002,
        "retry_max_seconds": 0.01,
        "breaker_fail_max": 100,
        "breaker_reset_timeout_seconds": 0.2,
        "dead_letter_dir": None,
        "dead_letter_max_files": 10,
        "spool_dir": None,
        "interval_seconds": 0.0,
    }
    base.update(kw)
    return SinkSettings(**base)


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry("test")


@pytest.fixture
def made() -> Iterator[list[tuple[ResilientSink, ScriptedExporter]]]:
    out: list[tuple[ResilientSink, ScriptedExporter]] = []
    yield out
    for sink, exporter in out:
        exporter.gate.set()
        exporter.plan.clear()
        sink.close(0.2)


@pytest.fixture
def make(made: list[tuple[ResilientSink, ScriptedExporter]], telemetry: Telemetry) -> Callable[..., tuple[ResilientSink, ScriptedExporter]]:
    def build(exporter: ScriptedExporter | None = None, events: list[tuple[str, dict[str, Any]]] | None = None, **kw: Any) -> tuple[ResilientSink, ScriptedExporter]:
        exp = exporter or ScriptedExporter()
        sink = ResilientSink(
            "fake", exp, settings(**kw), metrics=telemetry, on_event=(lambda k, d: events.append((k, d))) if events is not None else None
        )
        made.append((sink, exp))
        return sink, exp

    return build


def value(telemetry: Telemetry, name: str, **labels: str) -> float:
    got = telemetry.registry.get_sample_value(name, {"sink": "fake", **labels})
    return 0.0 if got is None else got


# ----------------------------------------------------------------------------- delivery and bounds


def test_every_drop_reason_is_exported_at_zero_from_the_start(make: Any, telemetry: Telemetry) -> None:
    from agent.sinks import DROP_REASONS

    make()
    assert {r: telemetry.registry.get_sample_value("predis_agent_sink_points_dropped_total", {"sink": "fake", "reason": r}) for r in DROP_REASONS} == dict.fromkeys(
        DROP_REASONS, 0.0
    )


def test_payloads_are_delivered_in_order_and_counted(make: Any, telemetry: Telemetry) -> None:
    sink, exp = make(ScriptedExporter(per_payload=3))
    for start in range(0, 30, 10):
        sink.submit(list(range(start, start + 10)))
    assert sink.wait_idle(WAIT)
    assert exp.flat() == list(range(30))
    assert value(telemetry, "predis_agent_sink_points_sent_total") == 30
    assert value(telemetry, "predis_agent_sink_queue_points") == 0
    assert value(telemetry, "predis_agent_sink_last_success_timestamp_seconds") > 0
    assert telemetry.registry.get_sample_value("predis_agent_sink_send_duration_seconds_count", {"sink": "fake"}) == len(exp.delivered)
    assert exp.timeouts and set(exp.timeouts) == {3.0}


def test_point_bound_drops_the_oldest_waiting_payload_never_the_one_in_flight(make: Any, telemetry: Telemetry) -> None:
    sink, exp = make(ScriptedExporter(per_payload=10), max_points=30)
    exp.gate.clear()
    sink.submit(list(range(10)))  # taken by the worker, blocked in send
    wait_for(lambda: sink.status()["queued_payloads"] == 1 and sink._in_flight is not None)
    for start in range(10, 60, 10):
        sink.submit(list(range(start, start + 10)))
    status = sink.status()
    assert status["queued_points"] <= 30
    assert status["dropped_points"] == {"queue_full": 30}
    exp.gate.set()
    assert sink.wait_idle(WAIT)
    # The payload on the wire and the newest two survive; 10..39 were the oldest waiting.
    assert exp.flat() == list(range(10)) + list(range(40, 60))
    assert value(telemetry, "predis_agent_sink_points_dropped_total", reason="queue_full") == 30


def test_byte_bound_is_enforced_like_the_point_bound(make: Any) -> None:
    sink, exp = make(ScriptedExporter(per_payload=10, item_bytes=100), max_bytes=2500)
    exp.gate.clear()
    sink.submit(list(range(10)))
    wait_for(lambda: sink._in_flight is not None)
    sink.submit(list(range(10, 40)))
    assert sink.status()["queued_bytes"] <= 2500
    # 4 payloads of 1000 bytes: the two oldest waiting ones go to get under 2500.
    assert sink.status()["dropped_points"]["queue_full"] == 20
    exp.gate.set()
    assert sink.wait_idle(WAIT)
    assert exp.flat() == list(range(10)) + list(range(30, 40))


def test_a_payload_older_than_the_give_up_age_is_dropped_as_expired(make: Any, telemetry: Telemetry) -> None:
    sink, exp = make(max_age_seconds=1.0, retry_initial_seconds=0.05, retry_max_seconds=0.05)
    exp.plan = [TransientExportError("down")] * 10_000
    sink.submit([1, 2, 3])
    wait_for(lambda: sink.status()["dropped_points"].get("expired") == 3)
    assert sink.status()["queued_points"] == 0
    assert value(telemetry, "predis_agent_sink_points_dropped_total", reason="expired") == 3
    assert value(telemetry, "predis_agent_sink_points_failed_total", error="transient") >= 3


class SteppedWallClock:
    """agent.sinks' ``time`` module with a wall clock the test sets (monotonic stays real)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_outage_budget_and_oldest_age_are_reported(make: Any, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SteppedWallClock(1_000_000.0)
    monkeypatch.setattr(agent.sinks, "time", clock)
    sink, exp = make(ScriptedExporter(per_payload=10), max_points=100, max_age_seconds=600)
    exp.gate.clear()
    for _ in range(4):
        sink.submit(list(range(10)))
        clock.now += 1.0  # submissions a second apart give the sink a rate, whatever the machine's speed
    status = sink.status()
    assert status["queued_points"] == 40
    # 60 points of room at a positive rate: the budget is finite and below the age bound.
    assert 0 < status["outage_budget_seconds"] < 600
    assert value(telemetry, "predis_agent_sink_queue_oldest_age_seconds") >= 0
    exp.gate.set()


# ----------------------------------------------------------------------------- retry and breaker


def test_transient_failures_are_retried_until_delivered(make: Any, telemetry: Telemetry) -> None:
    sink, exp = make()
    exp.plan = [TransientExportError("503"), ConnectionError("reset"), None]
    sink.submit([7])
    assert sink.wait_idle(WAIT)
    assert exp.flat() == [7] and exp.attempts == 3
    assert value(telemetry, "predis_agent_sink_points_failed_total", error="transient") == 2
    assert sink.status()["dropped_points"] == {}


def test_retry_after_from_the_vendor_is_honoured(make: Any) -> None:
    sink, exp = make(retry_initial_seconds=0.001, retry_max_seconds=0.001)
    exp.plan = [TransientExportError("429", status=429, retry_after=0.3), None]
    sink.submit([1])
    assert sink.wait_idle(WAIT)
    gap = exp.attempt_times[1] - exp.attempt_times[0]
    assert gap >= 0.3  # the backoff alone would have waited at most 1 ms


def test_backoff_is_full_jitter_under_a_doubling_ceiling(make: Any) -> None:
    sink, _exp = make(retry_initial_seconds=1.0, retry_max_seconds=8.0)

    class State:
        def __init__(self, n: int) -> None:
            self.attempt_number = n
            self.outcome = None

    for n, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        waits = [sink._wait(State(n)) for _ in range(400)]  # type: ignore[arg-type]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.75 and min(waits) < ceiling * 0.25  # spread over the whole range


def test_breaker_opens_probes_half_open_and_closes(make: Any, telemetry: Telemetry) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    # The breaker stays open for the reset timeout only: long enough that a loaded machine
    # cannot let the probe close it before the test has looked.
    sink, exp = make(events=events, breaker_fail_max=3, breaker_reset_timeout_seconds=3.0)
    exp.plan = [TransientExportError("500")] * 3
    sink.submit([1])
    wait_for(lambda: sink.breaker.current_state == "open")
    # One series per state, 1 for the state the breaker is in.
    assert [value(telemetry, "predis_agent_sink_breaker_state", state=s) for s in ("closed", "half_open", "open")] == [0, 0, 1]
    attempts_when_open = exp.attempts
    assert attempts_when_open == 3  # the open breaker refuses calls instead of hammering the vendor
    assert sink.wait_idle(WAIT)  # after the reset timeout one probe goes through and succeeds
    assert exp.flat() == [1] and exp.attempts == 4
    assert sink.breaker.current_state == "closed"
    changes = [(d["old"], d["new"]) for k, d in events if k == "breaker_state_changed"]
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    assert [value(telemetry, "predis_agent_sink_breaker_state", state=s) for s in ("closed", "half_open", "open")] == [1, 0, 0]


def test_a_failed_half_open_probe_reopens_the_breaker(make: Any) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    sink, exp = make(events=events, breaker_fail_max=2, breaker_reset_timeout_seconds=0.2)
    exp.plan = [TransientExportError("500")] * 3 + [None]
    sink.submit([1])
    assert sink.wait_idle(WAIT)
    changes = [(d["old"], d["new"]) for k, d in events if k == "breaker_state_changed"]
    assert changes[:3] == [("closed", "open"), ("open", "half-open"), ("half-open", "open")]
    assert exp.flat() == [1]


def test_too_large_splits_in_half_and_delivers_everything(make: Any, telemetry: Telemetry) -> None:
    sink, exp = make(ScriptedExporter(per_payload=100))
    exp.plan = [PayloadTooLargeError("413", status=413), PayloadTooLargeError("413", status=413)]
    sink.submit(list(range(8)))
    assert sink.wait_idle(WAIT)
    assert exp.flat() == list(range(8))
    assert [len(d) for d in exp.delivered] == [2, 2, 4]
    assert sink.status()["splits"] == 2
    assert value(telemetry, "predis_agent_sink_splits_total") == 2
    assert sink.breaker.current_state == "closed" and sink.breaker.fail_counter == 0


def test_a_single_point_too_large_is_dead_lettered(make: Any, tmp_path: Path) -> None:
    sink, exp = make(dead_letter_dir=str(tmp_path / "dl"))
    exp.plan = [PayloadTooLargeError("413", status=413, answer="request entity too large")]
    sink.submit([42])
    wait_for(lambda: sink.status()["dead_letters"] == 1)
    assert sink.status()["dropped_points"] == {"too_large": 1}
    files = list((tmp_path / "dl" / "fake").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["answer"] == "request entity too large"


def test_invalid_payload_goes_to_the_dead_letter_file_with_the_vendor_answer(make: Any, tmp_path: Path, telemetry: Telemetry) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    sink, exp = make(events=events, dead_letter_dir=str(tmp_path / "dl"))
    exp.plan = [InvalidPayloadError("HTTP 400", status=400, answer='{"errors": ["bad points"]}')]
    sink.submit([1, 2])
    sink.submit([3])
    assert sink.wait_idle(WAIT)
    assert exp.flat() == [3]  # the bad payload is not retried; the next one is sent
    assert exp.attempts == 2
    root = tmp_path / "dl" / "fake"
    files = list(root.glob("*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["status"] == 400 and "bad points" in record["answer"] and record["body"] == {"items": [1, 2]}
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600 and stat.S_IMODE(root.stat().st_mode) == 0o700
    assert value(telemetry, "predis_agent_sink_points_dropped_total", reason="invalid") == 2
    assert value(telemetry, "predis_agent_sink_dead_letters_total") == 1
    assert [k for k, _ in events] == ["sink_payload_rejected"]
    assert sink.breaker.fail_counter == 0  # a rejected payload says nothing about the vendor's health


def test_dead_letter_directory_is_capped(make: Any, tmp_path: Path) -> None:
    sink, exp = make(dead_letter_dir=str(tmp_path / "dl"), dead_letter_max_files=2)
    exp.plan = [InvalidPayloadError("400", status=400)] * 4
    for i in range(4):
        sink.submit([i])
    assert sink.wait_idle(WAIT)
    assert len(list((tmp_path / "dl" / "fake").glob("*.json"))) == 2
    assert sink.status()["dropped_points"] == {"invalid": 4}


def test_auth_failure_rereads_the_secret_opens_the_breaker_and_keeps_the_payload(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    sink, exp = make(events=events, breaker_reset_timeout_seconds=0.3)
    exp.plan = [ExportAuthError("HTTP 403", status=403)]
    with caplog.at_level(logging.ERROR, logger="agent.sinks"):
        sink.submit([5])
        wait_for(lambda: exp.refreshed == 1)
        wait_for(lambda: any(k == "sink_auth_failed" for k, _ in events))
        assert sink.wait_idle(WAIT)
    assert exp.flat() == [5] and sink.status()["dropped_points"] == {}
    kinds = [k for k, _ in events]
    assert kinds.index("sink_auth_failed") > kinds.index("breaker_state_changed")
    assert any("refused the credentials" in r.getMessage() for r in caplog.records)
    opened = [d for k, d in events if k == "breaker_state_changed" and d["new"] == "open"]
    assert opened, "an auth failure opens the breaker at once"


# ----------------------------------------------------------------------------- spool


def test_spool_survives_a_restart_during_an_outage(tmp_path: Path, telemetry: Telemetry) -> None:
    spool = tmp_path / "spool"
    down = ScriptedExporter(per_payload=2)
    down.plan = [TransientExportError("down")] * 10_000
    first = ResilientSink("fake", down, settings(spool_dir=str(spool), retry_initial_seconds=0.01), metrics=telemetry)
    first.submit([1, 2, 3])
    wait_for(lambda: down.attempts >= 1)
    files = sorted((spool / "fake").glob("*.json"))
    assert len(files) == 2
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    first.close(0.1)
    assert first.status()["dropped_points"] == {}  # kept on disk, not dropped
    up = ScriptedExporter()
    second = ResilientSink("fake", up, settings(spool_dir=str(spool)), metrics=telemetry)
    try:
        assert second.wait_idle(WAIT)
        assert up.flat() == [1, 2, 3]
        assert list((spool / "fake").glob("*.json")) == []
    finally:
        second.close(0.1)


def test_a_corrupt_spool_file_is_quarantined_and_the_rest_delivered(tmp_path: Path) -> None:
    root = tmp_path / "spool" / "fake"
    root.mkdir(parents=True, mode=0o700)
    good = {"kind": "metrics", "points": 1, "nbytes": 10, "created": time.time(), "body": {"items": [9]}}
    (root / "00000000000000000001.json").write_text(json.dumps(good))
    (root / "00000000000000000002.json").write_text("{not json")
    events: list[tuple[str, dict[str, Any]]] = []
    exp = ScriptedExporter()
    sink = ResilientSink("fake", exp, settings(spool_dir=str(tmp_path / "spool")), on_event=lambda k, d: events.append((k, d)))
    try:
        assert sink.wait_idle(WAIT)
        assert exp.flat() == [9]
        assert (root / "quarantine" / "00000000000000000002.json").exists()
        assert ("sink_spool_quarantined", {"sink": "fake", "file": "00000000000000000002.json"}) in events
    finally:
        sink.close(0.1)


def test_spooled_payloads_past_the_give_up_age_are_dropped_on_load(tmp_path: Path) -> None:
    root = tmp_path / "spool" / "fake"
    root.mkdir(parents=True, mode=0o700)
    old = {"kind": "metrics", "points": 4, "nbytes": 10, "created": time.time() - 3600, "body": {"items": [1, 2, 3, 4]}}
    (root / "00000000000000000001.json").write_text(json.dumps(old))
    exp = ScriptedExporter()
    sink = ResilientSink("fake", exp, settings(spool_dir=str(tmp_path / "spool"), max_age_seconds=60))
    try:
        assert sink.wait_idle(WAIT)
        assert exp.flat() == [] and sink.status()["dropped_points"] == {"expired": 4}
        assert list(root.glob("*.json")) == []
    finally:
        sink.close(0.1)


# ----------------------------------------------------------------------------- lifecycle


def test_replace_exporter_keeps_the_queue(make: Any) -> None:
    sink, old = make()
    old.plan = [TransientExportError("down")] * 10_000
    sink.submit([1, 2])
    wait_for(lambda: old.attempts >= 1)
    new = ScriptedExporter()
    sink.replace_exporter(new)
    assert sink.wait_idle(WAIT)
    assert new.flat() == [1, 2] and old.closed


def test_tune_applies_new_bounds_to_what_is_queued(make: Any) -> None:
    sink, exp = make(ScriptedExporter(per_payload=10))
    exp.gate.clear()
    sink.submit(list(range(10)))
    wait_for(lambda: sink._in_flight is not None)
    sink.submit(list(range(10, 40)))
    sink.tune(settings(max_points=20))
    assert sink.status()["queued_points"] == 20
    assert sink.status()["dropped_points"] == {"queue_full": 20}
    exp.gate.set()
    assert sink.wait_idle(WAIT)


def test_close_counts_what_is_left_without_a_spool(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    sink, exp = make()
    exp.plan = [TransientExportError("down")] * 10_000
    sink.submit([1, 2, 3])
    wait_for(lambda: exp.attempts >= 1)
    with caplog.at_level(logging.WARNING, logger="agent.sinks"):
        sink.close(0.1)
    assert sink.status()["dropped_points"] == {"shutdown": 3}
    assert any("undelivered and dropped" in r.getMessage() for r in caplog.records)
    assert exp.closed


def test_events_are_queued_for_exporters_that_send_them(make: Any) -> None:
    sink, exp = make()
    sink.submit_events([Event("config_reloaded", {"generation": 2})])
    assert sink.wait_idle(WAIT)
    assert exp.flat() == ["config_reloaded"]  # type: ignore[comparison-overlap]


def test_an_exporter_with_only_send_batch_still_works(telemetry: Telemetry) -> None:
    class Plain:
        name = "plain"

        def __init__(self) -> None:
            self.batches: list[Any] = []

        def send(self, batch: Any) -> None:
            self.batches.append(batch)

    exp = Plain()
    sink = ResilientSink("plain", exp, settings(spool_dir=None), metrics=telemetry)
    try:
        sink.submit(["a", "b"])
        sink.submit_events([Event("x")])  # no encode_events: ignored
        assert sink.wait_idle(WAIT)
        assert exp.batches == [["a", "b"]]
    finally:
        sink.close(0.1)


def test_an_encoder_that_raises_costs_that_batch_only(make: Any) -> None:
    class Broken(ScriptedExporter):
        def encode(self, batch: list[int]) -> list[Payload]:
            if batch == [0]:
                raise ValueError("cannot encode")
            return super().encode(batch)

    sink, exp = make(Broken())
    sink.submit([0])
    sink.submit([1])
    assert sink.wait_idle(WAIT)
    assert exp.flat() == [1] and sink.status()["dropped_points"] == {"encode_error": 1}


def test_due_follows_the_export_interval_with_jittery_rounds(make: Any) -> None:
    sink, _ = make(interval_seconds=10.0)
    rounds = [0.0, 2.0, 4.1, 5.9, 8.0, 9.95, 12.0, 14.0, 16.0, 18.0, 20.1, 22.0]
    taken = [t for t in rounds if sink.due(1000.0 + t, 2.0)]
    assert taken == [0.0, 9.95, 20.1]


def test_delta_tracker_handles_baseline_and_reset() -> None:
    d = DeltaTracker()
    assert d.delta("k", 10, 100.0) is None
    assert d.delta("k", 15, 110.0) == (5, 10.0)
    assert d.delta("k", 3, 120.0) == (3, 10.0)  # the process restarted: 3 since the reset
    d.forget_missing([])
    assert d.delta("k", 4, 130.0) is None


def test_spool_and_dead_letter_dirs_must_be_absolute(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absolute"):
        ResilientSink("fake", ScriptedExporter(), settings(spool_dir="relative/spool"))
    assert not os.path.exists("relative")


def test_a_send_that_never_finishes_is_cut_off_at_the_attempt_deadline(make: Any, telemetry: Telemetry) -> None:
    class Stuck(ScriptedExporter):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()
            self.aborts = 0
            self.calls = 0

        def send(self, payload: Payload, timeout: float) -> None:
            self.calls += 1
            if self.calls == 1:
                self.release.wait(WAIT)  # a peer trickling bytes: only abort() ends it
                raise ConnectionError("connection closed by abort")
            super().send(payload, timeout)

        def abort(self) -> None:
            self.aborts += 1
            self.release.set()

    sink, exp = make(Stuck(), attempt_timeout_seconds=0.2)
    sink.submit([1])
    assert sink.wait_idle(WAIT)
    assert exp.flat() == [1] and exp.aborts == 1
    assert value(telemetry, "predis_agent_sink_points_failed_total", error="transient") == 1
    assert "attempt_timeout_seconds" in (sink.status()["last_error"] or "")
