# SPDX-License-Identifier: Apache-2.0
"""The metric model and the registry of every metric the agent itself defines.

Each self-metric is declared once in ``SELF_METRICS`` (name, type, help, labels) and
materialised as a prometheus_client object in the agent's own ``CollectorRegistry``
(never the global default one, so tests and embedded agents stay independent).
Collectors hand the host plain :class:`Metric` samples; exporters turn them into
their vendor's shape.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

# `_created` series are noise for every consumer we export to.
prometheus_client.disable_created_metrics()

METRIC_NAME_RE = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # gauge | counter | histogram
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    buckets: tuple[float, ...] = ()


SELF_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("predis_agent_info", "gauge", "Always 1; labels carry the agent version.", ("version",)),
    MetricSpec("predis_agent_config_generation", "gauge", "Generation of the active config; +1 on every applied reload."),
    MetricSpec("predis_agent_config_last_reload_success", "gauge", "1 if the last reload attempt was applied, 0 if it was rejected."),
    MetricSpec("predis_agent_config_last_reload_timestamp_seconds", "gauge", "Unix time of the last reload attempt.", unit="seconds"),
    MetricSpec("predis_agent_config_reload_failures_total", "counter", "Reload attempts rejected (the previous config kept running)."),
    MetricSpec("predis_agent_plugin_errors_total", "counter", "Exceptions raised by plugins, by plugin and hook.", ("plugin", "hook")),
    MetricSpec("predis_agent_ready", "gauge", "1 when the last readiness check passed."),
    MetricSpec("predis_agent_collection_runs_total", "counter", "Collection rounds run by the scheduler."),
    MetricSpec(
        "predis_agent_collection_duration_seconds",
        "histogram",
        "Wall time of one collection round.",
        unit="seconds",
        buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
    ),
    MetricSpec("predis_agent_sink_queue_batches", "gauge", "Batches waiting in an exporter's queue.", ("sink",)),
    MetricSpec("predis_agent_sink_batches_sent_total", "counter", "Batches an exporter delivered.", ("sink",)),
    MetricSpec("predis_agent_sink_batches_failed_total", "counter", "Send attempts that raised.", ("sink",)),
    MetricSpec("predis_agent_sink_batches_dropped_total", "counter", "Batches dropped because the queue was full.", ("sink",)),
    MetricSpec("predis_agent_sink_breaker_open", "gauge", "1 while an exporter's circuit breaker is open.", ("sink",)),
    MetricSpec("predis_agent_http_requests_total", "counter", "HTTP API requests by route and status code.", ("route", "code")),
    MetricSpec("predis_agent_http_auth_failures_total", "counter", "Requests refused for a missing or invalid token."),
)


@dataclass(frozen=True)
class Metric:
    """One sample produced by a collector."""

    name: str
    value: float
    kind: str = "gauge"  # gauge | counter
    labels: Mapping[str, str] = field(default_factory=dict)
    help: str = ""
    timestamp: float = field(default_factory=time.time)


class _BatchCollector(Collector):
    """Exposes the latest collected batch through prometheus_client."""

    def __init__(self) -> None:
        self.batch: list[Metric] = []

    def collect(self) -> Iterable[Any]:
        families: dict[str, Any] = {}
        for m in self.batch:
            if not math.isfinite(m.value):
                continue
            fam = families.get(m.name)
            if fam is None:
                cls = CounterMetricFamily if m.kind == "counter" else GaugeMetricFamily
                fam = cls(m.name, m.help or m.name)
                families[m.name] = fam
            # Each sample keeps its own label names: samples of one family may carry
            # different label keys, and pairing values with the first sample's keys
            # would export them under the wrong labels.
            sample_name = f"{fam.name}_total" if fam.type == "counter" else fam.name
            labels = {str(k): str(v) for k, v in m.labels.items()}
            fam.samples.append(Sample(sample_name, labels, m.value))
        return list(families.values())


class Telemetry:
    """The agent's own metrics, in a registry of its own."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics: dict[str, Any] = {}
        for spec in SELF_METRICS:
            self.metrics[spec.name] = self._make(spec)
        self.metrics["predis_agent_info"].labels(version=version).set(1)
        self.batch_collector = _BatchCollector()
        self.registry.register(self.batch_collector)

    def _make(self, spec: MetricSpec) -> Any:
        name = spec.name[: -len("_total")] if spec.kind == "counter" else spec.name
        kwargs: dict[str, Any] = {"labelnames": spec.labels, "registry": self.registry}
        if spec.kind == "gauge":
            return Gauge(name, spec.help, **kwargs)
        if spec.kind == "counter":
            return Counter(name, spec.help, **kwargs)
        return Histogram(name, spec.help, buckets=spec.buckets, **kwargs)

    def __getitem__(self, name: str) -> Any:
        return self.metrics[name]

    def set_batch(self, batch: list[Metric]) -> None:
        self.batch_collector.batch = list(batch)
