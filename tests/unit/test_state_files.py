# SPDX-License-Identifier: Apache-2.0
"""State files (issue 21, item 8): spool temp files, the spool's free-space floor, queue
byte accounting against memory really held, and the PID file's owner.

Each test reproduces a finding of the adversarial probe first (it failed before the fix):
stale ``.tmp`` files stayed for ever, the spool filled the disk, a Datadog queue held
about five times the bytes it counted, and an old agent deleted a new agent's PID file.
The exporter is a fake at the vendor boundary; queue, spool and files are the real code.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.pidfile import remove_pid_file, write_pid_file
from agent.sinks import Payload, ResilientSink, SinkSettings, TransientExportError
from agent.telemetry import Metric, Telemetry
from plugins.exporters.datadog import DatadogExporter
from tests.polling import wait_for

WAIT = 10.0
MIB = 1 << 20


def settings(**kw: Any) -> SinkSettings:
    base: dict[str, Any] = {
        "max_points": 10_000_000,
        "max_bytes": 1 << 34,
        "max_age_seconds": 3600.0,
        "attempt_timeout_seconds": 3.0,
        "retry_initial_seconds": 0.002,
        "retry_max_seconds": 0.01,
        "breaker_fail_max": 1_000_000,
        "breaker_reset_timeout_seconds": 0.2,
        "dead_letter_dir": None,
        "dead_letter_max_files": 10,
        "spool_dir": None,
    }
    base.update(kw)
    return SinkSettings(**base)


class Vendor:
    """A fake vendor at the boundary: down (every send fails) until ``up`` is set."""

    name = "fake"

    def __init__(self, item_bytes: int = 1) -> None:
        self.up = False
        self.delivered: list[Any] = []
        self.item_bytes = item_bytes

    def encode(self, batch: list[Any]) -> list[Payload]:
        return [Payload(body={"items": list(batch)}, points=len(batch), nbytes=self.item_bytes * len(batch))]

    def send(self, payload: Payload, timeout: float) -> None:
        if not self.up:
            raise TransientExportError("vendor down")
        self.delivered.extend(payload.body["items"])


class Disk:
    """An injectable statvfs: a 100 GiB filesystem with ``free`` bytes available."""

    BLOCK = 4096
    TOTAL = 100 << 30

    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, path: str) -> Any:
        return SimpleNamespace(f_bavail=self.free // self.BLOCK, f_frsize=self.BLOCK, f_blocks=self.TOTAL // self.BLOCK)


@pytest.fixture
def sinks() -> Iterator[list[tuple[ResilientSink, Any]]]:
    out: list[tuple[ResilientSink, Any]] = []
    yield out
    for sink, vendor in out:
        vendor.up = True
        sink.close(0.2)


def sample(telemetry: Telemetry, name: str) -> float:
    got = telemetry.registry.get_sample_value(name, {"sink": "fake"})
    return 0.0 if got is None else got


def spooled(root: Path) -> list[Path]:
    return sorted(root.glob("*.json"))


# ----------------------------------------------------------------------------- spool temp files


def test_spool_temp_files_left_by_a_crash_are_removed_at_sink_start(tmp_path: Path, sinks: list[Any]) -> None:
    root = tmp_path / "spool" / "fake"
    root.mkdir(parents=True, mode=0o700)
    # What write_private leaves when the agent is killed between create and rename.
    stale = [root / ".00000000000000000001.json.4242.tmp", root / ".00000000000000000002.json.99.tmp"]
    for path in stale:
        path.write_bytes(b'{"half":')
    unrelated = root / "notes.tmp"
    unrelated.write_text("not ours")
    target = tmp_path / "elsewhere"
    target.write_text("kept")
    link = root / ".00000000000000000003.json.7.tmp"
    link.symlink_to(target)
    telemetry = Telemetry("test")
    vendor = Vendor()
    sink = ResilientSink("fake", vendor, settings(spool_dir=str(tmp_path / "spool")), metrics=telemetry)
    sinks.append((sink, vendor))
    assert not any(path.exists() for path in stale)
    assert unrelated.exists() and link.is_symlink() and target.read_text() == "kept"
    assert sink.status()["spool_temp_files_removed"] == 2
    assert sample(telemetry, "predis_agent_sink_spool_temp_files_removed_total") == 2


# ----------------------------------------------------------------------------- spool free-space floor


def test_spool_pauses_below_the_free_space_floor_and_resumes_when_space_returns(
    tmp_path: Path, sinks: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    disk = Disk(free=10 * MIB)
    telemetry = Telemetry("test")
    vendor = Vendor()
    sink = ResilientSink(
        "fake", vendor, settings(spool_dir=str(tmp_path / "spool"), spool_min_free_bytes=8 * MIB, spool_min_free_percent=0),
        metrics=telemetry, statvfs=disk,
    )
    sinks.append((sink, vendor))
    root = tmp_path / "spool" / "fake"
    sink.submit([1])
    assert len(spooled(root)) == 1 and not sink.status()["spool_paused"]

    disk.free = 1 * MIB
    with caplog.at_level(logging.WARNING, logger="agent.sinks"):
        for i in range(2, 12):
            sink.submit([i])
    status = sink.status()
    assert len(spooled(root)) == 1, "nothing may be spooled below the floor"
    assert status["spool_paused"] and "spool_min_free_bytes" in status["spool_reason"]
    assert status["queued_points"] == 11, "the payloads stay queued in memory"
    assert sample(telemetry, "predis_agent_sink_spool_paused") == 1
    pause_lines = [r for r in caplog.records if "spool paused" in r.getMessage()]
    assert len(pause_lines) == 1, "the pause is logged once, not once per payload"

    disk.free = 50 * MIB
    sink.submit([12])
    assert not sink.status()["spool_paused"] and sink.status()["spool_reason"] is None
    assert sample(telemetry, "predis_agent_sink_spool_paused") == 0
    # Everything kept in memory meanwhile is written to the spool once space is back.
    assert len(spooled(root)) == 12
    vendor.up = True
    assert sink.wait_idle(WAIT)
    assert sorted(vendor.delivered) == list(range(1, 13))
    assert spooled(root) == []


def test_percent_floor_alone_pauses_the_spool(tmp_path: Path, sinks: list[Any]) -> None:
    disk = Disk(free=2 << 30)  # 2 % of 100 GiB
    vendor = Vendor()
    sink = ResilientSink(
        "fake", vendor, settings(spool_dir=str(tmp_path / "spool"), spool_min_free_bytes=0, spool_min_free_percent=5), statvfs=disk
    )
    sinks.append((sink, vendor))
    sink.submit([1])
    assert sink.status()["spool_paused"] and "spool_min_free_percent" in sink.status()["spool_reason"]
    assert spooled(tmp_path / "spool" / "fake") == []


def test_schema_defaults_give_the_spool_a_floor() -> None:
    from agent.config import load_config

    section = load_config(None).section("agent.sinks")
    built = SinkSettings.from_config(section)
    assert built.spool_min_free_bytes == section["spool_min_free_bytes"] > 0
    assert built.spool_min_free_percent == section["spool_min_free_percent"] > 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (needs CAP_SYS_ADMIN; skipped where mounting is not allowed)."""
    where = tmp_path / "small"
    where.mkdir()
    if not sys.platform.startswith("linux"):
        pytest.skip("tmpfs needs Linux")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(where)], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def test_a_real_small_filesystem_is_never_filled_by_the_spool(small_fs: Path, sinks: list[Any]) -> None:
    floor = 1 * MIB
    vendor = Vendor()
    sink = ResilientSink(
        "fake", vendor, settings(spool_dir=str(small_fs / "spool"), spool_min_free_bytes=floor, spool_min_free_percent=0)
    )
    sinks.append((sink, vendor))
    root = small_fs / "spool" / "fake"
    item = "x" * 1000
    submitted = 0
    # About 100 KB a payload: without the floor, 20 of them fill the 2 MiB filesystem.
    for _ in range(40):
        sink.submit([item] * 100)
        submitted += 1
    st = os.statvfs(small_fs)
    free = st.f_bavail * st.f_frsize
    status = sink.status()
    assert status["spool_paused"], status
    assert free >= floor - 128 * 1024, f"the spool went past its floor: {free} bytes free"
    assert status["queued_payloads"] == submitted
    written = len(spooled(root))
    assert 0 < written < submitted

    vendor.up = True
    assert sink.wait_idle(WAIT)
    assert len(vendor.delivered) == submitted * 100
    assert spooled(root) == []
    vendor.up = False
    sink.submit([item] * 100)  # space is back: the spool resumes on the next write
    assert not sink.status()["spool_paused"]
    assert len(spooled(root)) == 1


# ----------------------------------------------------------------------------- queue byte accounting


def datadog_batch(ts: float, round_: int, series: int) -> list[Metric]:
    return [
        Metric(
            f"predis_cache_probe_{i % 40}",
            float(i * round_),
            "gauge",
            {"tenant": f"tenant-{i % 200}", "shard": str(i % 16), "pod": f"pod-{i}"},
            "",
            timestamp=ts,
        )
        for i in range(series)
    ]


def test_queued_bytes_counted_match_the_memory_held_with_datadog_down(sinks: list[Any]) -> None:
    section = {"api_host": "http://127.0.0.1:9", "api_key": "k", "host": "probe", "tags": ["env:test"], "service_check": False}

    class DatadogDown(DatadogExporter):
        up = False

        def send(self, payload: Payload, timeout: float) -> None:
            raise TransientExportError("datadog unreachable")

    exporter = DatadogDown(None, section)
    sink = ResilientSink("fake", exporter, settings(retry_initial_seconds=3600, retry_max_seconds=3600))
    sinks.append((sink, exporter))
    sink.submit(datadog_batch(1000.0, 1, 2000))  # the first payload is the one in flight
    wait_for(lambda: sink._in_flight is not None)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        counted_before = sink.status()["queued_bytes"]
        for round_ in range(2, 10):
            sink.submit(datadog_batch(1000.0 + round_, round_, 2000))
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    counted = sink.status()["queued_bytes"] - counted_before
    assert counted > 0
    assert held <= 1.5 * counted, f"the queue holds {held} bytes but counts {counted} against queue_max_bytes"
    assert counted <= 1.5 * held, f"the queue counts {counted} bytes but holds only {held}"


def test_the_byte_cap_bounds_memory_held(sinks: list[Any]) -> None:
    vendor = Vendor(item_bytes=0)  # an exporter that underestimates its requests
    sink = ResilientSink("fake", vendor, settings(max_bytes=64 * 1024, retry_initial_seconds=3600, retry_max_seconds=3600))
    sinks.append((sink, vendor))
    for i in range(100):
        sink.submit([f"value-{i}-{'y' * 64}"] * 50)
    status = sink.status()
    assert status["queued_bytes"] <= 64 * 1024
    assert status["dropped_points"].get("queue_full", 0) > 0


def test_a_packed_payload_reads_back_the_same_body() -> None:
    body = {"series": [{"metric": "a.b", "points": [[1, 2.5]], "tags": ["x:y"]}]}
    payload = Payload(body=body, points=1, nbytes=10)
    payload.pack()
    assert payload.body == body and payload.spoolable
    assert payload.json_bytes() == b'{"series":[{"metric":"a.b","points":[[1,2.5]],"tags":["x:y"]}]}'
    assert payload.held_bytes >= len(payload.json_bytes())


# ----------------------------------------------------------------------------- PID file


def test_an_old_agent_shutting_down_keeps_the_new_agents_pid_file(tmp_path: Path) -> None:
    path = tmp_path / "run" / "predis-agent.pid"
    write_pid_file(str(path))
    assert path.read_text() == f"{os.getpid()}\n"
    # A new agent started (or was restarted) and wrote its own PID.
    new = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        path.write_text(f"{new.pid}\n")
        assert remove_pid_file(str(path)) is False
        assert path.read_text() == f"{new.pid}\n"
    finally:
        assert new.stdin is not None
        new.stdin.close()
        new.wait(WAIT)


def test_the_owner_removes_its_pid_file(tmp_path: Path) -> None:
    path = tmp_path / "predis-agent.pid"
    write_pid_file(str(path))
    assert remove_pid_file(str(path)) is True
    assert not path.exists()
    assert remove_pid_file(str(path)) is False  # already gone: nothing to do, no error


def test_the_pid_file_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "predis-agent.pid"
    path.write_text("garbage that is longer than a pid\n")
    write_pid_file(str(path))
    assert path.read_text() == f"{os.getpid()}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predis-agent.pid"], "no temp file is left"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
