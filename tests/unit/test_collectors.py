# SPDX-License-Identifier: Apache-2.0
"""The built-in cache, process and GPU collectors: every value equals what was done.

Hermetic: a real Cache behind a real RespServer on 127.0.0.1, the real process, the real
pynvml without a driver (this is the no-GPU path for real) and fake NVML modules injected
through the collector's constructor for the value mapping and the timeout.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy
import pynvml
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from agent.plugins import DEFAULT_PLUGINS, PluginHost
from agent.telemetry import SELF_METRICS, Metric, MetricSpec, Telemetry, sample
from cache_core.cache import Cache
from cache_core.resp.server import LATENCY_BUCKETS_USEC, RespLimits, RespServer
from plugins.collectors import cache as cache_plugin
from plugins.collectors import gpu as gpu_plugin
from plugins.collectors import process as process_plugin
from plugins.collectors.cache import CacheCollector
from plugins.collectors.gpu import GpuCollector, NvmlWorker
from plugins.collectors.process import GcPauseTracker, LoopLagProbe, ProcessCollector
from tests.polling import wait_for, wait_for_async

NAME_RE = re.compile(r"^predis_[a-z][a-z0-9_]*[a-z0-9]$")
# The standard process series keep the names every dashboard expects (no predis_ prefix).
STANDARD_PROCESS_RE = re.compile(r"^process_[a-z][a-z0-9_]*[a-z0-9]$")
# What the cache, process and GPU collectors declare.
COLLECTED_METRICS = cache_plugin.METRICS + process_plugin.METRICS + gpu_plugin.METRICS
LABEL_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
DEADLINE_SECONDS = 10.0


# ----------------------------------------------------------------------------- helpers
class StubConfig:
    """The part of agent.config.Config the collectors use."""

    def __init__(self, sections: dict[str, dict[str, Any]] | None = None) -> None:
        self.sections = sections or {}

    def section(self, path: str) -> dict[str, Any]:
        return dict(self.sections.get(path, {}))


class StubAgent:
    """The agent attributes the collectors read and write."""

    def __init__(self, sections: dict[str, dict[str, Any]] | None = None, cache: Any = None, server: Any = None) -> None:
        self.config = StubConfig(sections)
        self.cache_service = SimpleNamespace(cache=cache, server=server)
        self.component_status: dict[str, dict[str, Any]] = {}
        self.events: list[Any] = []

    def emit(self, event: Any) -> None:
        self.events.append(event)


def by_name(batch: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], Metric]:
    return {(m.name, tuple(sorted(m.labels.items()))): m for m in batch}


def value(batch: list[Metric], metric: str, /, **labels: str) -> float | None:
    found = by_name(batch).get((metric, tuple(sorted(labels.items()))))
    return None if found is None else found.value


def names(batch: list[Metric]) -> set[str]:
    return {m.name for m in batch}


# ----------------------------------------------------------------------------- registry
@pytest.mark.parametrize("spec", COLLECTED_METRICS, ids=[s.name for s in COLLECTED_METRICS])
def test_collected_metric_names_follow_prometheus_conventions(spec: MetricSpec) -> None:
    assert (NAME_RE.fullmatch(spec.name) or STANDARD_PROCESS_RE.fullmatch(spec.name)) and "__" not in spec.name
    assert spec.kind in ("gauge", "counter", "histogram")
    assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
    if spec.unit:
        assert spec.name.endswith(f"_{spec.unit}") or spec.name.endswith(f"_{spec.unit}_total")
    for label in spec.labels:
        assert LABEL_RE.fullmatch(label) and not label.startswith("__")
    assert spec.help.strip()


def test_collected_metric_names_are_unique_and_do_not_reuse_self_metric_names() -> None:
    names_ = [s.name for s in COLLECTED_METRICS]
    assert len(names_) == len(set(names_))
    assert not set(names_) & {s.name for s in SELF_METRICS}


def test_sample_takes_name_kind_and_help_from_the_spec_and_checks_labels() -> None:
    spec = MetricSpec("predis_x_total", "counter", "Things.", ("a",))
    m = sample(spec, 3, {"a": "1"})
    assert (m.name, m.kind, m.help, dict(m.labels), m.value) == ("predis_x_total", "counter", "Things.", {"a": "1"}, 3)
    with pytest.raises(ValueError, match="expected labels"):
        sample(spec, 3)
    with pytest.raises(ValueError, match="expected labels"):
        sample(spec, 3, {"a": "1", "b": "2"})


def test_histogram_samples_are_exposed_with_cumulative_buckets_count_and_sum() -> None:
    spec = MetricSpec("predis_h_seconds", "histogram", "Durations.", ("op",), unit="seconds")
    telemetry = Telemetry("t")
    telemetry.set_batch(
        [
            sample(spec, 0.75, {"op": "a"}, buckets=((0.1, 1.0), (1.0, 3.0)), count=4.0),
            sample(spec, 0.0, {"op": "b"}, buckets=((0.1, 0.0), (1.0, 0.0)), count=0.0),
            Metric("plain", 2.0),
        ]
    )
    get = telemetry.registry.get_sample_value
    assert get("predis_h_seconds_bucket", {"op": "a", "le": "0.1"}) == 1
    assert get("predis_h_seconds_bucket", {"op": "a", "le": "1.0"}) == 3
    assert get("predis_h_seconds_bucket", {"op": "a", "le": "+Inf"}) == 4
    assert get("predis_h_seconds_count", {"op": "a"}) == 4
    assert get("predis_h_seconds_sum", {"op": "a"}) == 0.75
    assert get("predis_h_seconds_count", {"op": "b"}) == 0
    text = generate_latest(telemetry.registry).decode()
    assert "# TYPE predis_h_seconds histogram" in text
    # The OpenMetrics encoding must be valid too: parse it back.
    families = {f.name: f for f in text_string_to_metric_families(generate_openmetrics(telemetry.registry).decode())}
    assert families["predis_h_seconds"].type == "histogram"
    assert families["plain"].type == "gauge"


# ----------------------------------------------------------------------------- cache
def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    return sock


def _encode(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    line = await asyncio.wait_for(reader.readline(), timeout=DEADLINE_SECONDS)
    if line.startswith(b"$") and not line.startswith(b"$-1"):
        line += await asyncio.wait_for(reader.readexactly(int(line[1:-2]) + 2), timeout=DEADLINE_SECONDS)
    return line


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def __call__(self, *args: bytes) -> bytes:
        self.writer.write(_encode(*args))
        await self.writer.drain()
        return await _reply(self.reader)

    async def pipeline(self, commands: list[tuple[bytes, ...]]) -> list[bytes]:
        self.writer.write(b"".join(_encode(*c) for c in commands))
        await self.writer.drain()
        return [await _reply(self.reader) for _ in commands]

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def _connect(server: RespServer) -> Client:
    assert server.address is not None
    return Client(*await asyncio.open_connection(*server.address))


def _cache_agent(server: RespServer, cache: Cache, enabled: bool = True) -> StubAgent:
    return StubAgent({"collectors.cache": {"enabled": enabled}}, cache=cache, server=server)


def test_cache_counters_equal_what_the_clients_did() -> None:
    async def scenario() -> tuple[list[Metric], list[Metric], Cache]:
        cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
        server = RespServer(cache)
        await server.start(_listener())
        collector = CacheCollector(_cache_agent(server, cache))
        try:
            client = await _connect(server)
            assert await client(b"SET", b"a", b"1") == b"+OK\r\n"
            assert await client(b"SET", b"b", b"22") == b"+OK\r\n"
            assert await client(b"GET", b"a") == b"$1\r\n1\r\n"
            assert await client(b"GET", b"b") == b"$2\r\n22\r\n"
            assert await client(b"GET", b"nope") == b"$-1\r\n"
            assert (await client(b"INCR", b"b")).startswith(b":23")
            assert (await client(b"INCR", b"nope-int-a")).startswith(b":1")
            await client(b"SET", b"text", b"abc")
            assert (await client(b"INCR", b"text")).startswith(b"-ERR")
            assert await client(b"DEL", b"a") == b":1\r\n"
            during = await asyncio.get_running_loop().run_in_executor(None, collector.collect)
            # A pipelined run of GETs takes the batch path: 4 more GETs, 1 hit, 3 misses.
            replies = await client.pipeline([(b"GET", b"b"), (b"GET", b"x"), (b"GET", b"y"), (b"GET", b"z")])
            assert replies[0] == b"$2\r\n23\r\n" and replies[1:] == [b"$-1\r\n"] * 3
            after = collector.collect()
            await client.close()
            return during, after, cache
        finally:
            await server.stop()

    during, after, cache = asyncio.run(scenario())
    assert value(during, "predis_cache_hits_total") == 2  # 3 GETs, 2 of them hits
    assert value(during, "predis_cache_misses_total") == 1
    assert value(during, "predis_cache_commands_total", command="get") == 3
    assert value(during, "predis_cache_commands_total", command="set") == 3
    assert value(during, "predis_cache_commands_total", command="incr") == 3
    assert value(during, "predis_cache_command_errors_total", command="incr") == 1
    assert value(during, "predis_cache_command_errors_total", command="get") == 0
    assert value(during, "predis_cache_deletes_total") == 1
    assert value(during, "predis_cache_connected_clients") == 1
    assert value(during, "predis_cache_connections_total") == 1
    stats = cache.snapshot()
    assert value(after, "predis_cache_hits_total") == stats.hits
    assert value(after, "predis_cache_misses_total") == stats.misses
    assert value(after, "predis_cache_sets_total") == stats.sets
    assert value(after, "predis_cache_keys") == stats.keys == 3  # b, nope-int-a, text
    assert value(after, "predis_cache_commands_total", command="get") == 3 + 4
    assert value(after, "predis_cache_memory_bytes", tier="device") == stats.device_bytes > 0
    assert value(after, "predis_cache_memory_bytes", tier="host") == stats.host_bytes > 0
    assert value(after, "predis_cache_value_bytes") == stats.value_bytes
    assert value(after, "predis_cache_charged_bytes") == stats.charged_bytes
    assert value(after, "predis_cache_max_memory_bytes") == 1 << 20
    assert value(after, "predis_cache_max_keys") == stats.max_keys
    histogram = by_name(after)[("predis_cache_command_duration_seconds", (("command", "get"),))]
    assert histogram.kind == "histogram" and histogram.count == 7
    counts = [c for _bound, c in histogram.buckets]
    assert counts == sorted(counts) and counts[-1] <= histogram.count
    assert [b for b, _c in histogram.buckets] == [u / 1_000_000 for u in LATENCY_BUCKETS_USEC]
    # The cache's prefetch counters are always there (zero without a prefetcher); the
    # prefetcher's own figures (threshold, skipped) only when it runs.
    assert value(after, "predis_cache_prefetch_inserted_total") == stats.prefetch_inserted == 0
    assert "predis_cache_prefetch_threshold" not in names(after)


def test_connections_rejections_and_protocol_errors_are_counted() -> None:
    async def scenario() -> tuple[list[Metric], list[Metric]]:
        cache = Cache(numpy, max_keys=16, max_memory_bytes=1 << 16)
        server = RespServer(cache, limits=RespLimits(max_clients=1))
        await server.start(_listener())
        collector = CacheCollector(_cache_agent(server, cache))
        try:
            first = await _connect(server)
            assert await first(b"PING") == b"+PONG\r\n"
            second = await _connect(server)
            assert (await _reply(second.reader)).startswith(b"-ERR max number of clients")
            await second.close()
            await first.close()
            await wait_for_async(lambda: not server.clients, timeout=DEADLINE_SECONDS)
            third = await _connect(server)
            third.writer.write(b"*abc\r\n")
            assert (await _reply(third.reader)).startswith(b"-ERR Protocol error")
            await third.close()
            await wait_for_async(lambda: not server.clients, timeout=DEADLINE_SECONDS)
            return collector.collect(), []
        finally:
            await server.stop()

    batch, _ = asyncio.run(scenario())
    assert value(batch, "predis_cache_connections_total") == 3
    assert value(batch, "predis_cache_rejected_connections_total") == 1
    assert value(batch, "predis_cache_protocol_errors_total") == 1
    assert value(batch, "predis_cache_connected_clients") == 0


def test_record_puts_each_latency_in_its_bucket_and_unknown_names_fold_into_other() -> None:
    cache = Cache(numpy, max_keys=16, max_memory_bytes=1 << 16)
    server = RespServer(cache)
    server.record("get", 10, False)  # le=10 µs is inclusive
    server.record("get", 11, False)
    server.record("get", 20_000_000, True)  # slower than the last bound
    server.record("set", 7, False, calls=5)
    latency = server.stats.command_latency
    assert latency["get"][0] == 1 and latency["get"][1] == 1 and latency["get"][-1] == 1
    assert latency["set"][0] == 5 and sum(latency["set"]) == 5
    assert server.stats.command_calls["get"] == [3, 20_000_021, 1]
    assert server.stats.command_calls["set"] == [5, 35, 0]
    server.record("no-such-command", 3, False)
    server.record("also-unknown", 4, True)
    batch = CacheCollector(_cache_agent(server, cache)).collect()
    assert value(batch, "predis_cache_commands_total", command="other") == 2
    assert value(batch, "predis_cache_command_errors_total", command="other") == 1
    assert not any(m.labels.get("command") in ("no-such-command", "also-unknown") for m in batch)
    histogram = by_name(batch)[("predis_cache_command_duration_seconds", (("command", "get"),))]
    assert histogram.buckets[0] == (10 / 1_000_000, 1.0) and histogram.buckets[-1][1] == 2.0
    assert histogram.count == 3 and histogram.value == pytest.approx(20_000_021 / 1_000_000)
    telemetry = Telemetry("t")
    telemetry.set_batch(batch)
    get = telemetry.registry.get_sample_value
    assert get("predis_cache_command_duration_seconds_bucket", {"command": "get", "le": "+Inf"}) == 3
    assert get("predis_cache_command_duration_seconds_bucket", {"command": "get", "le": "10.0"}) == 2


def test_cache_collector_is_off_when_disabled_and_quiet_without_a_cache() -> None:
    cache = Cache(numpy, max_keys=16, max_memory_bytes=1 << 16)
    server = RespServer(cache)
    assert CacheCollector(_cache_agent(server, cache, enabled=False)).collect() == []
    only_cache = CacheCollector(StubAgent({}, cache=cache, server=None)).collect()
    assert "predis_cache_hits_total" in names(only_cache) and "predis_cache_connections_total" not in names(only_cache)
    assert CacheCollector(StubAgent({})).collect() == []


# ----------------------------------------------------------------------------- process
def _process_collector(tmp_gc: GcPauseTracker | None = None) -> ProcessCollector:
    return ProcessCollector(StubAgent({"collectors.process": {"enabled": True}}), LoopLagProbe(), tmp_gc or GcPauseTracker())


def _cpu(batch: list[Metric]) -> float:
    return value(batch, "process_cpu_seconds_total") or 0.0


def test_cpu_seconds_increase_after_busy_work() -> None:
    collector = _process_collector()
    before = collector.collect()
    start = os.times()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while os.times().user + os.times().system <= start.user + start.system:  # burn CPU until the clock ticks
        assert time.monotonic() < deadline
        sum(i * i for i in range(10_000))
    after = collector.collect()
    assert _cpu(after) > _cpu(before) > 0


def test_open_fds_rise_after_opening_files(tmp_path: Path) -> None:
    collector = _process_collector()
    before = value(collector.collect(), "process_open_fds")
    assert before is not None and before > 0
    handles = [open(tmp_path / f"f{i}", "w") for i in range(5)]
    try:
        after = value(collector.collect(), "process_open_fds")
        assert after is not None and after >= before + 5
    finally:
        for handle in handles:
            handle.close()
    assert value(collector.collect(), "process_max_fds") == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_rss_is_plausible_and_threads_count_os_threads() -> None:
    collector = _process_collector()
    batch = collector.collect()
    rss = value(batch, "process_resident_memory_bytes")
    assert rss is not None and 1 << 20 < rss < 1 << 40
    virtual = value(batch, "process_virtual_memory_bytes")
    assert virtual is not None and virtual >= rss
    started = value(batch, "process_start_time_seconds")
    assert started is not None and time.time() - 3600 * 24 * 365 < started <= time.time()
    threads = value(batch, "predis_process_threads")
    assert threads is not None and threads >= threading.active_count()
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        assert (value(collector.collect(), "predis_process_threads") or 0) >= threads + 1
    finally:
        release.set()
        worker.join()


def test_gc_pauses_are_counted_by_generation() -> None:
    tracker = GcPauseTracker()
    tracker.install()
    try:
        collector = _process_collector(tracker)
        before = value(collector.collect(), "predis_process_gc_collections_total", generation="2") or 0
        gc.collect()
        gc.collect()
        batch = collector.collect()
    finally:
        tracker.uninstall()
    assert (value(batch, "predis_process_gc_collections_total", generation="2") or 0) >= before + 2
    pause = value(batch, "predis_process_gc_pause_seconds_total", generation="2")
    assert pause is not None and pause > 0
    assert tracker._callback not in gc.callbacks


def test_event_loop_lag_reports_a_blocked_loop_while_and_after_it_is_blocked() -> None:
    probe = LoopLagProbe(interval=0.01)
    collector = ProcessCollector(StubAgent({}), probe, GcPauseTracker())
    assert "predis_process_event_loop_lag_seconds" not in names(collector.collect())  # no probe yet: absent
    loop = asyncio.new_event_loop()
    release = threading.Event()
    blocked_for = 0.2
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    try:
        loop.call_soon_threadsafe(probe.start, loop)
        wait_for(lambda: probe.read() is not None, timeout=DEADLINE_SECONDS, what="the first probe")
        loop.call_soon_threadsafe(release.wait)  # the loop is now blocked until released
        # While blocked, the overdue probe already shows the lag.
        lag = wait_for(lambda: (r := probe.read()) is not None and r[0] >= blocked_for and r, timeout=DEADLINE_SECONDS, what="an overdue probe")
        assert lag[1] >= lag[0]
        release.set()
        batch = wait_for(
            lambda: (b := collector.collect()) and (value(b, "predis_process_event_loop_lag_seconds") or 1) < blocked_for and b,
            timeout=DEADLINE_SECONDS,
            what="the lag to fall after the loop is free",
        )
        assert value(batch, "predis_process_event_loop_lag_max_seconds") is not None
    finally:
        release.set()
        loop.call_soon_threadsafe(probe.stop)
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()


def test_process_plugin_hooks_probe_the_agents_loop_and_stop_on_shutdown() -> None:
    agent = StubAgent({"collectors.process": {"enabled": True}})

    async def scenario() -> list[Metric]:
        [collector] = process_plugin.predis_agent_register_collectors(agent=agent)
        process_plugin.predis_agent_startup(agent=agent)
        await wait_for_async(lambda: collector.probe.read() is not None, timeout=DEADLINE_SECONDS)
        batch = collector.collect()
        process_plugin.predis_agent_shutdown(agent=agent)
        assert not collector.probe.running
        return batch

    batch = asyncio.run(scenario())
    assert value(batch, "predis_process_event_loop_lag_seconds") is not None
    disabled = StubAgent({"collectors.process": {"enabled": False}})
    assert process_plugin.ProcessCollector(disabled, LoopLagProbe(), GcPauseTracker()).collect() == []


# ----------------------------------------------------------------------------- gpu
def _gpu_agent(enabled: bool = True, timeout: float = 2.0) -> StubAgent:
    return StubAgent({"collectors.gpu": {"enabled": enabled, "nvml_timeout_seconds": timeout}})


@pytest.fixture
def real_nvml_absent() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return
    pynvml.nvmlShutdown()
    pytest.skip("an NVIDIA driver is present: the no-GPU path cannot be taken for real here")


def test_no_gpu_for_real_reports_up_0_with_the_reason_once(real_nvml_absent: None, caplog: pytest.LogCaptureFixture) -> None:
    agent = _gpu_agent()
    collector = GpuCollector(agent)
    try:
        with caplog.at_level(logging.INFO, logger="plugins.collectors.gpu"):
            for _ in range(3):
                batch = collector.collect()
                assert value(batch, "predis_gpu_up") == 0
                assert names(batch) == {"predis_gpu_up", "predis_gpu_nvml_timeouts_total"}
    finally:
        collector.close()
    status = agent.component_status["gpu"]
    assert status["up"] is False and status["enabled"] is True
    assert "NVML library (libnvidia-ml.so.1) was not found" in status["reason"]
    assert "NVMLError_LibraryNotFound" in status["reason"]
    assert sum("GPU metrics unavailable" in r.getMessage() for r in caplog.records) == 1


def test_a_real_gpu_reports_plausible_values() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no usable NVIDIA driver here ({exc.__class__.__name__}): the real GPU path needs one")
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    agent = _gpu_agent()
    collector = GpuCollector(agent)
    try:
        batch = collector.collect()
    finally:
        collector.close()
    assert value(batch, "predis_gpu_up") == 1 and value(batch, "predis_gpu_devices") == count
    totals = [m.value for m in batch if m.name == "predis_gpu_memory_total_bytes" and m.labels["mig"] == ""]
    assert len(totals) == count and all(t > 1 << 30 for t in totals)
    for m in batch:
        if m.name.endswith("_ratio"):
            assert 0 <= m.value <= 1, m
        if m.name == "predis_gpu_temperature_celsius":
            assert 0 < m.value < 130, m
    assert agent.component_status["gpu"]["driver_version"]


class FakeMemory(SimpleNamespace):
    pass


class FakeNvml:
    """An NVML module double: two GPUs, the first in MIG mode with one instance."""

    NVMLError = pynvml.NVMLError

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.events: list[SimpleNamespace] = []
        self.initialized = 0
        self.lost_clock = False

    def _log(self, name: str) -> None:
        self.calls.append(name)

    @staticmethod
    def _error(code: int) -> pynvml.NVMLError:
        return pynvml.NVMLError(code)

    def nvmlInit(self) -> None:
        self._log("nvmlInit")
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._log("nvmlShutdown")
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        self._log("nvmlDeviceGetCount")
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceGetUUID(self, handle: str) -> bytes | str:
        uuids: dict[str, bytes | str] = {"gpu0": b"GPU-aaaa", "gpu1": "GPU-bbbb", "gpu0/mig0": "MIG-cccc"}  # bytes too: old bindings
        return uuids[handle]

    def nvmlDeviceGetName(self, handle: str) -> str:
        return "NVIDIA H100 80GB HBM3" if handle != "gpu0/mig0" else "NVIDIA H100 MIG 1g.10gb"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:
        if handle == "gpu0/mig0":
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=37, memory=5) if handle == "gpu0" else SimpleNamespace(gpu=100, memory=0xFFFFFFFF)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> FakeMemory:
        return {
            "gpu0": FakeMemory(used=3 << 30, total=80 << 30, free=77 << 30),
            "gpu1": FakeMemory(used=1 << 20, total=80 << 30, free=0),
            "gpu0/mig0": FakeMemory(used=512 << 20, total=10 << 30, free=0),
        }[handle]

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return 61 if handle == "gpu0" else 0xFFFFFFFF  # sentinel: absent

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        if handle == "gpu1":
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 312_500

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: str) -> int:
        return 700_000

    def nvmlDeviceGetClockInfo(self, handle: str, clock: int) -> int:
        if handle == "gpu1" and self.lost_clock:
            raise self._error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return {pynvml.NVML_CLOCK_SM: 1980, pynvml.NVML_CLOCK_MEM: 2619}[clock]

    def nvmlDeviceGetPcieThroughput(self, handle: str, counter: int) -> int:
        return {pynvml.NVML_PCIE_UTIL_RX_BYTES: 1500, pynvml.NVML_PCIE_UTIL_TX_BYTES: 250}[counter]

    def nvmlDeviceGetTotalEccErrors(self, handle: str, error_type: int, counter: int) -> int:
        assert counter == pynvml.NVML_VOLATILE_ECC
        if handle == "gpu1":
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return {pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED: 4, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: 1}[error_type]

    def nvmlDeviceGetSupportedClocksEventReasons(self, handle: str) -> int:
        if handle == "gpu1":
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return (
            pynvml.nvmlClocksThrottleReasonGpuIdle
            | pynvml.nvmlClocksThrottleReasonSwPowerCap
            | pynvml.nvmlClocksThrottleReasonHwThermalSlowdown
        )

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: str) -> int:
        return pynvml.nvmlClocksThrottleReasonSwPowerCap | pynvml.nvmlClocksThrottleReasonSyncBoost

    def nvmlDeviceGetMigMode(self, handle: str) -> list[int]:
        if handle == "gpu1":
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: str) -> int:
        return 2

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: str, index: int) -> str:
        if index == 1:
            raise self._error(pynvml.NVML_ERROR_NOT_FOUND)  # an empty slot
        return f"{handle}/mig{index}"

    def nvmlEventSetCreate(self) -> str:
        self._log("nvmlEventSetCreate")
        return "event-set"

    def nvmlDeviceRegisterEvents(self, handle: str, types: int, event_set: str) -> None:
        assert types == pynvml.nvmlEventTypeXidCriticalError and event_set == "event-set"
        if handle == "gpu1":
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlEventSetWait_v2(self, event_set: str, timeout_ms: int) -> SimpleNamespace:
        assert timeout_ms == 0  # never wait for an event inside a collection round
        if not self.events:
            raise self._error(pynvml.NVML_ERROR_TIMEOUT)
        return self.events.pop(0)

    def nvmlEventSetFree(self, event_set: str) -> None:
        self._log("nvmlEventSetFree")


G0 = {"gpu": "0", "mig": "", "uuid": "GPU-aaaa"}
G1 = {"gpu": "1", "mig": "", "uuid": "GPU-bbbb"}
MIG = {"gpu": "0", "mig": "0", "uuid": "MIG-cccc"}


@pytest.fixture
def fake_gpu() -> Iterator[tuple[FakeNvml, StubAgent, GpuCollector]]:
    fake = FakeNvml()
    agent = _gpu_agent()
    collector = GpuCollector(agent, nvml=fake)
    yield fake, agent, collector
    collector.close()


def test_fake_nvml_values_map_to_base_units(fake_gpu: tuple[FakeNvml, StubAgent, GpuCollector]) -> None:
    fake, agent, collector = fake_gpu
    batch = collector.collect()
    assert value(batch, "predis_gpu_up") == 1 and value(batch, "predis_gpu_devices") == 2
    assert value(batch, "predis_gpu_info", **G0, name="NVIDIA H100 80GB HBM3") == 1
    assert value(batch, "predis_gpu_info", **MIG, name="NVIDIA H100 MIG 1g.10gb") == 1
    assert value(batch, "predis_gpu_utilization_ratio", **G0) == pytest.approx(0.37)
    assert value(batch, "predis_gpu_memory_utilization_ratio", **G0) == pytest.approx(0.05)
    assert value(batch, "predis_gpu_memory_used_bytes", **G0) == 3 << 30
    assert value(batch, "predis_gpu_memory_total_bytes", **G0) == 80 << 30
    assert value(batch, "predis_gpu_temperature_celsius", **G0) == 61
    assert value(batch, "predis_gpu_power_draw_watts", **G0) == pytest.approx(312.5)
    assert value(batch, "predis_gpu_power_limit_watts", **G0) == pytest.approx(700.0)
    assert value(batch, "predis_gpu_sm_clock_hertz", **G0) == 1980e6
    assert value(batch, "predis_gpu_memory_clock_hertz", **G0) == 2619e6
    assert value(batch, "predis_gpu_pcie_rx_bytes_per_second", **G0) == 1500 * 1024
    assert value(batch, "predis_gpu_pcie_tx_bytes_per_second", **G0) == 250 * 1024
    assert value(batch, "predis_gpu_ecc_errors_total", **G0, type="corrected") == 4
    assert value(batch, "predis_gpu_ecc_errors_total", **G0, type="uncorrected") == 1
    throttle = {m.labels["reason"]: m.value for m in batch if m.name == "predis_gpu_throttle_active" and m.labels["gpu"] == "0"}
    assert throttle == {"gpu_idle": 0, "sw_power_cap": 1, "hw_thermal_slowdown": 0}  # sync_boost is not a supported reason
    # MIG instance: its own memory; per-GPU physical readings are not repeated for it.
    assert value(batch, "predis_gpu_memory_used_bytes", **MIG) == 512 << 20
    assert value(batch, "predis_gpu_memory_total_bytes", **MIG) == 10 << 30
    mig_names = {m.name for m in batch if m.labels.get("mig") == "0"}
    assert mig_names == {"predis_gpu_info", "predis_gpu_memory_used_bytes", "predis_gpu_memory_total_bytes"}
    assert not any(m.labels.get("mig") == "1" for m in batch)  # the empty slot
    # GPU 1: "not supported" and sentinel values are absent, not zero.
    g1 = {m.name for m in batch if m.labels.get("uuid") == "GPU-bbbb"}
    assert "predis_gpu_utilization_ratio" in g1 and value(batch, "predis_gpu_utilization_ratio", **G1) == 1.0
    for absent in (
        "predis_gpu_memory_utilization_ratio",
        "predis_gpu_temperature_celsius",
        "predis_gpu_power_draw_watts",
        "predis_gpu_ecc_errors_total",
        "predis_gpu_throttle_active",
        "predis_gpu_xid_events_total",
    ):
        assert absent not in g1, absent
    unlabelled = ("predis_gpu_up", "predis_gpu_devices", "predis_gpu_nvml_timeouts_total")
    assert all(m.labels.keys() >= {"gpu", "mig", "uuid"} for m in batch if m.name not in unlabelled)
    status = agent.component_status["gpu"]
    assert status["up"] is True and status["reason"] is None and status["devices"] == 2
    assert status["driver_version"] == "550.54.15"
    telemetry = Telemetry("t")
    telemetry.set_batch(batch)  # every sample is exposable
    assert telemetry.registry.get_sample_value("predis_gpu_ecc_errors_total", {**G0, "type": "corrected"}) == 4


def test_xid_events_are_counted_and_raised_as_agent_events(fake_gpu: tuple[FakeNvml, StubAgent, GpuCollector]) -> None:
    fake, agent, collector = fake_gpu
    first = collector.collect()
    assert value(first, "predis_gpu_xid_events_total", **G0) == 0
    fake.events = [SimpleNamespace(device="gpu0", eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=79)] * 2
    second = collector.collect()
    assert value(second, "predis_gpu_xid_events_total", **G0) == 2
    assert [(e.kind, e.data) for e in agent.events] == [("gpu_xid", {"gpu": "0", "uuid": "GPU-aaaa", "xid": 79})] * 2
    assert fake.calls.count("nvmlEventSetCreate") == 1  # registered once, polled each round


def test_other_nvml_errors_leave_the_value_out_and_are_logged_once(
    fake_gpu: tuple[FakeNvml, StubAgent, GpuCollector], caplog: pytest.LogCaptureFixture
) -> None:
    fake, agent, collector = fake_gpu
    fake.lost_clock = True
    with caplog.at_level(logging.WARNING, logger="plugins.collectors.gpu"):
        for _ in range(3):
            batch = collector.collect()
    assert value(batch, "predis_gpu_up") == 1
    assert value(batch, "predis_gpu_sm_clock_hertz", **G1) is None
    assert value(batch, "predis_gpu_sm_clock_hertz", **G0) == 1980e6
    assert "GpuIsLost" in agent.component_status["gpu"]["field_errors"]["nvmlDeviceGetClockInfo"]
    assert sum("nvmlDeviceGetClockInfo failed" in r.getMessage() for r in caplog.records) == 1


def test_disabling_shuts_nvml_down_and_says_so(fake_gpu: tuple[FakeNvml, StubAgent, GpuCollector]) -> None:
    fake, agent, collector = fake_gpu
    collector.collect()
    assert fake.initialized == 1
    agent.config.sections["collectors.gpu"]["enabled"] = False
    assert collector.collect() == []
    assert fake.initialized == 0 and "nvmlEventSetFree" in fake.calls
    assert agent.component_status["gpu"]["enabled"] is False
    assert agent.component_status["gpu"]["reason"] == "collectors.gpu.enabled is false"
    agent.config.sections["collectors.gpu"]["enabled"] = True
    assert value(collector.collect(), "predis_gpu_up") == 1 and fake.initialized == 1


class WedgedNvml(FakeNvml):
    """nvmlDeviceGetCount blocks until ``release`` is set, like a wedged driver."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def nvmlDeviceGetCount(self) -> int:
        self._log("nvmlDeviceGetCount")
        self.entered.set()
        self.release.wait()
        return 2


def test_a_wedged_nvml_call_times_out_and_no_other_call_starts_while_it_is_stuck() -> None:
    fake = WedgedNvml()
    agent = _gpu_agent(timeout=0.1)
    collector = GpuCollector(agent, nvml=fake)
    try:
        batch = collector.collect()
        # collect() returned while the call is still blocked in the driver: it did not wait for it.
        assert fake.entered.is_set() and not fake.release.is_set() and collector.worker.stuck
        assert value(batch, "predis_gpu_up") == 0
        assert value(batch, "predis_gpu_nvml_timeouts_total") == 1
        reason = agent.component_status["gpu"]["reason"]
        assert reason.startswith("NVML call timed out") and "nvmlDeviceGetCount" in reason
        calls = list(fake.calls)
        again = collector.collect()  # refused at once: the stuck call is not joined by another
        assert value(again, "predis_gpu_up") == 0 and fake.calls == calls
        assert value(again, "predis_gpu_nvml_timeouts_total") == 1
        assert "has not returned" in agent.component_status["gpu"]["reason"]
        fake.release.set()
        recovered = wait_for(lambda: value(b := collector.collect(), "predis_gpu_up") == 1 and b, timeout=DEADLINE_SECONDS, what="NVML to answer again")
        assert value(recovered, "predis_gpu_devices") == 2
        assert agent.component_status["gpu"]["reason"] is None
    finally:
        fake.release.set()
        collector.close()


def test_worker_passes_results_and_errors_through_and_refuses_work_while_stuck() -> None:
    worker = NvmlWorker()
    release = threading.Event()
    try:
        assert worker.call(1.0, lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(pynvml.NVMLError_NotSupported):
            worker.call(1.0, lambda: (_ for _ in ()).throw(pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)))
        with pytest.raises(gpu_plugin.NvmlCallTimedOut):
            worker.call(0.05, release.wait)
        assert worker.stuck
        with pytest.raises(gpu_plugin.NvmlStuck, match="release|wait"):
            worker.call(1.0, int)
        release.set()
        wait_for(lambda: not worker.stuck, timeout=DEADLINE_SECONDS, what="the stuck call to return")
        assert worker.call(1.0, int, "7") == 7
    finally:
        release.set()
        worker.close()


def test_nvml_init_errors_name_the_cause() -> None:
    class NoPermission(FakeNvml):
        def nvmlInit(self) -> None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)

    class NoGpus(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:
            return 0

    for fake, expected in ((NoPermission(), "no permission to use NVML"), (NoGpus(), "NVML found no GPU")):
        agent = _gpu_agent()
        collector = GpuCollector(agent, nvml=fake)
        try:
            assert value(collector.collect(), "predis_gpu_up") == 0
            assert expected in agent.component_status["gpu"]["reason"]
        finally:
            collector.close()


def test_gpu_plugin_releases_the_previous_collector_on_reregistration_and_shutdown() -> None:
    agent = _gpu_agent(enabled=False)
    [first] = gpu_plugin.predis_agent_register_collectors(agent=agent)
    [second] = gpu_plugin.predis_agent_register_collectors(agent=agent)
    assert first is not second and gpu_plugin._COLLECTORS[agent] is second
    gpu_plugin.predis_agent_shutdown(agent=agent)
    assert agent not in gpu_plugin._COLLECTORS


# ----------------------------------------------------------------------------- built-ins
def test_the_collectors_are_built_in_plugins_with_distinct_names() -> None:
    builtins = dict(DEFAULT_PLUGINS)
    assert builtins["cache_metrics"] == "plugins.collectors.cache"
    assert builtins["process_metrics"] == "plugins.collectors.process"
    assert builtins["gpu_metrics"] == "plugins.collectors.gpu"
    assert len(builtins) == len(DEFAULT_PLUGINS)
    host = PluginHost(load_entrypoints=False)
    for name in ("cache_metrics", "process_metrics", "gpu_metrics"):
        assert host.plugins[name].state == "loaded", host.plugins[name].error
    assert cache_plugin.PLUGIN_NAME == "cache_metrics" and gpu_plugin.PLUGIN_NAME == "gpu_metrics"
