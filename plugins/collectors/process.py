# SPDX-License-Identifier: Apache-2.0
"""The ``process_metrics`` collector: how the agent process itself is doing.

A cache that answers slowly is often a host process that is starved, leaking or stalled,
so this reports what lets an operator tell those apart. The standard ``process_*`` series
every dashboard expects (CPU seconds, resident and virtual memory, start time, open file
descriptors and their limit) come from prometheus_client's own ``ProcessCollector`` (read
from ``/proc``), under their standard names, so they are pushed to every exporter as well as
scraped. Our extras keep the ``predis_process_`` prefix: OS threads
(``/proc/self/status``), the lag of the asyncio event loop that serves RESP and HTTP, and the
time Python's garbage collector paused the process.

Event-loop lag is measured on the agent's own loop: the plugin's startup hook schedules a
probe timer (``loop.call_later``) every :data:`PROBE_INTERVAL_SECONDS`; each firing
records how late it ran. A probe that is overdue while the collector reads counts with its
lateness so far, so a loop blocked for longer than the collection interval still shows.
GC pauses come from ``gc.callbacks`` (time from ``start`` to ``stop`` per generation),
installed once per process.

Values that cannot be read on this platform are absent, never estimated. The collector
reads ``collectors.process.enabled`` on every round, so a reload turns it on or off.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import weakref
from typing import Any

from prometheus_client import ProcessCollector as StandardProcessCollector

from agent.api import Metric, MetricSpec, declare_metrics, hookimpl, sample

PLUGIN_NAME = "process_metrics"
CONFIG_SECTION = "collectors.process"
# The collectors.process section: its schema, declared through predis_agent_config_sections.
SECTION_SCHEMA: dict[str, Any] = {
    "description": "The agent process: CPU, memory, file descriptors, threads, event-loop lag, GC pauses.",
    "properties": {"enabled": {"type": "boolean", "default": True, "description": "Collect process metrics."}},
}
PROBE_INTERVAL_SECONDS = 0.5
PROC_SELF = "/proc/self"
PROC_ROOT = "/proc"
THREADS_PREFIX = "Threads:"

# Every sample this collector produces, declared once; built with :func:`sample`.
METRICS: tuple[MetricSpec, ...] = declare_metrics(
    __name__,
    (
        MetricSpec("process_cpu_seconds_total", "counter", "Total user and system CPU time the agent process spent.", unit="seconds"),
        MetricSpec("process_resident_memory_bytes", "gauge", "Resident memory size of the agent process.", unit="bytes"),
        MetricSpec("process_virtual_memory_bytes", "gauge", "Virtual memory size of the agent process.", unit="bytes"),
        MetricSpec("process_start_time_seconds", "gauge", "Start time of the agent process since the Unix epoch.", unit="seconds"),
        MetricSpec("process_open_fds", "gauge", "Open file descriptors of the agent process."),
        MetricSpec("process_max_fds", "gauge", "Soft limit on open file descriptors (RLIMIT_NOFILE)."),
        MetricSpec("predis_process_threads", "gauge", "Operating-system threads of the agent process."),
        MetricSpec("predis_process_event_loop_lag_seconds", "gauge", "How late the latest event-loop probe ran.", unit="seconds"),
        MetricSpec(
            "predis_process_event_loop_lag_max_seconds",
            "gauge",
            "Largest event-loop probe lag since the previous collection round.",
            unit="seconds",
        ),
        MetricSpec("predis_process_gc_collections_total", "counter", "Python garbage collections, by generation.", ("generation",)),
        MetricSpec(
            "predis_process_gc_pause_seconds_total",
            "counter",
            "Time spent in Python garbage collection, by generation.",
            ("generation",),
            unit="seconds",
        ),
    ),
)
SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in METRICS}


class LoopLagProbe:
    """A timer on an asyncio loop that records how late each firing ran."""

    def __init__(self, interval: float = PROBE_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due: float | None = None
        self._last: float | None = None
        self._window_max = 0.0
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin probing ``loop``; call from the loop's own thread."""
        self.stop()
        self._loop = loop
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._due = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval
        self._handle = self._loop.call_later(self.interval, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None and self._due is not None
        lag = max(0.0, self._loop.time() - self._due)
        with self._lock:
            self._last = lag
            self._window_max = max(self._window_max, lag)
        self._schedule()

    def read(self) -> tuple[float, float] | None:
        """(latest lag, largest lag since the previous read), or None before the first firing.

        Safe from any thread; the loop's clock is ``time.monotonic``.
        """
        loop, due = self._loop, self._due
        overdue = max(0.0, loop.time() - due) if loop is not None and due is not None else 0.0
        with self._lock:
            last, window = self._last, self._window_max
            self._window_max = 0.0
        if last is None and overdue == 0.0:
            return None
        latest = overdue if overdue > 0.0 else (last or 0.0)
        return latest, max(window, overdue, latest)


class GcPauseTracker:
    """Cumulative collections and pause seconds per generation, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self._started: float | None = None
        self.collections: dict[int, int] = {}
        self.pause_seconds: dict[int, float] = {}

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector with the GIL held; collections never overlap.
        if phase == "start":
            self._started = time.perf_counter()
            return
        started, self._started = self._started, None
        if phase != "stop" or started is None:
            return
        generation = int(info.get("generation", -1))
        self.collections[generation] = self.collections.get(generation, 0) + 1
        self.pause_seconds[generation] = self.pause_seconds.get(generation, 0.0) + (time.perf_counter() - started)

    def snapshot(self) -> list[tuple[int, int, float]]:
        """(generation, collections, pause seconds), by generation."""
        collections = dict(self.collections)
        pauses = dict(self.pause_seconds)
        return [(gen, collections[gen], pauses.get(gen, 0.0)) for gen in sorted(collections)]


def _threads(proc: str) -> int:
    try:
        with open(os.path.join(proc, "status"), encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(THREADS_PREFIX):
                    return int(line[len(THREADS_PREFIX) :].strip())
    except (OSError, ValueError):
        pass
    return threading.active_count()


class ProcessCollector:
    """Samples this process; ``probe`` and ``gc_tracker`` are fed by the loop and the GC."""

    name = "process"

    def __init__(self, agent: Any, probe: LoopLagProbe, gc_tracker: GcPauseTracker, proc: str = PROC_SELF) -> None:
        self.agent = agent
        self.probe = probe
        self.gc_tracker = gc_tracker
        self.proc = proc
        # Not registered anywhere: read each round and turned into samples, so the push
        # exporters get the standard series too.
        self.standard = StandardProcessCollector(registry=None, pid=lambda: "self", proc=PROC_ROOT)

    def enabled(self) -> bool:
        return bool(self.agent.config.section(CONFIG_SECTION).get("enabled", True))

    def collect(self) -> list[Metric]:
        if not self.enabled():
            return []
        out = [sample(SPECS["predis_process_threads"], _threads(self.proc))]
        for family in self.standard.collect():
            for s in family.samples:
                spec = SPECS.get(s.name)
                if spec is not None:
                    out.append(sample(spec, s.value))
        lag = self.probe.read()
        if lag is not None:
            out.append(sample(SPECS["predis_process_event_loop_lag_seconds"], lag[0]))
            out.append(sample(SPECS["predis_process_event_loop_lag_max_seconds"], lag[1]))
        for generation, collections, pause in self.gc_tracker.snapshot():
            labels = {"generation": str(generation)}
            out.append(sample(SPECS["predis_process_gc_collections_total"], collections, labels))
            out.append(sample(SPECS["predis_process_gc_pause_seconds_total"], pause, labels))
        return out


# One GC tracker per process (gc.callbacks is process-wide); one probe per agent.
GC_TRACKER = GcPauseTracker()
_PROBES: weakref.WeakKeyDictionary[Any, LoopLagProbe] = weakref.WeakKeyDictionary()


def probe_for(agent: Any) -> LoopLagProbe:
    probe = _PROBES.get(agent)
    if probe is None:
        probe = _PROBES[agent] = LoopLagProbe()
    return probe


@hookimpl
def predis_agent_config_sections() -> dict[str, dict[str, Any]]:
    return {CONFIG_SECTION: SECTION_SCHEMA}


@hookimpl
def predis_agent_config_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Loads the process collector; whether it runs is collectors.process.enabled.",
        "properties": {},
    }


@hookimpl
def predis_agent_register_collectors(agent: Any) -> list[ProcessCollector]:
    GC_TRACKER.install()
    return [ProcessCollector(agent, probe_for(agent), GC_TRACKER)]


@hookimpl
def predis_agent_startup(agent: Any) -> None:
    probe_for(agent).start(asyncio.get_running_loop())


@hookimpl
def predis_agent_shutdown(agent: Any) -> None:
    probe_for(agent).stop()
