# SPDX-License-Identifier: Apache-2.0
"""The metric model and the registry of every metric the agent itself defines.

Each self-metric is declared once in ``SELF_METRICS`` (name, type, help, labels) and
materialised as a prometheus_client object in the agent's own ``CollectorRegistry``
(never the global default one, so tests and embedded agents stay independent).
Plugins declare the metrics they produce with :func:`declare_metrics` (through
``agent.api``), which adds them to ``SPECS_BY_NAME``, the process-wide registry the
cardinality guard and the exporters read. Collectors hand the host plain :class:`Metric`
samples; exporters turn them into their vendor's shape.
"""

from __future__ import annotations

import math
import platform
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# `_created` series are noise for every consumer we export to.
prometheus_client.disable_created_metrics()

METRIC_NAME_RE = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"

# Label sets one family may export per collected batch unless its spec says otherwise.
# Past the cap, new label sets are folded (dropped and counted), so one plugin that puts
# an unbounded value in a label cannot blow up every scraper's and vendor's storage.
DEFAULT_MAX_SERIES = 1000


@dataclass(frozen=True)
class MetricSpec:
    """One metric declared once: what it is called, measures and is labelled by.

    ``max_series`` caps the label sets of the family in a collected batch (see
    :class:`CardinalityGuard`).
    """

    name: str
    kind: str  # gauge | counter | histogram | summary
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    buckets: tuple[float, ...] = ()
    max_series: int = DEFAULT_MAX_SERIES


SELF_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "predis_agent_build_info",
        "gauge",
        "Always 1; labels carry the agent's version, the Python it runs on and the serving core's BLAKE2b lanes.",
        ("version", "python_version", "native"),
    ),
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
    MetricSpec("predis_agent_sink_queue_points", "gauge", "Points waiting in an exporter's queue (including the payload being sent).", ("sink",)),
    MetricSpec(
        "predis_agent_sink_queue_bytes",
        "gauge",
        "Bytes waiting in an exporter's queue, counted against agent.sinks.queue_max_bytes: per payload the larger of its request size and the memory it holds (compact JSON).",
        ("sink",),
        unit="bytes",
    ),
    MetricSpec("predis_agent_sink_queue_oldest_age_seconds", "gauge", "Age of the oldest queued payload.", ("sink",), unit="seconds"),
    MetricSpec(
        "predis_agent_sink_outage_budget_seconds",
        "gauge",
        "Estimated seconds of vendor outage the queue can absorb before it drops points (age, point and byte bounds at the current rate).",
        ("sink",),
        unit="seconds",
    ),
    MetricSpec("predis_agent_sink_points_sent_total", "counter", "Points an exporter delivered.", ("sink",)),
    MetricSpec("predis_agent_sink_points_failed_total", "counter", "Points in send attempts that failed, by error class (transient, too_large, invalid, auth).", ("sink", "error")),
    MetricSpec(
        "predis_agent_sink_points_dropped_total",
        "counter",
        "Points given up, by reason (queue_full, expired, invalid, too_large, shutdown, encode_error).",
        ("sink", "reason"),
    ),
    MetricSpec("predis_agent_sink_splits_total", "counter", "Payloads split in half after a too-large answer.", ("sink",)),
    MetricSpec("predis_agent_sink_dead_letters_total", "counter", "Rejected payloads written to the dead-letter directory.", ("sink",)),
    MetricSpec(
        "predis_agent_sink_breaker_state",
        "gauge",
        "Circuit breaker of an exporter: 1 for the state it is in (closed, half_open, open), 0 for the others.",
        ("sink", "state"),
    ),
    MetricSpec("predis_agent_sink_last_success_timestamp_seconds", "gauge", "Unix time of an exporter's last delivered payload.", ("sink",), unit="seconds"),
    MetricSpec(
        "predis_agent_sink_spool_paused",
        "gauge",
        "1 while an exporter's spool is paused (its filesystem below agent.sinks.spool_min_free_bytes / spool_min_free_percent, or full): payloads are queued in memory only.",
        ("sink",),
    ),
    MetricSpec("predis_agent_sink_spool_temp_files_removed_total", "counter", "Spool temp files of interrupted writes removed when the spool was opened.", ("sink",)),
    MetricSpec(
        "predis_agent_sink_send_duration_seconds",
        "histogram",
        "Wall time of one send attempt.",
        ("sink",),
        unit="seconds",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    ),
    MetricSpec("predis_agent_http_requests_total", "counter", "HTTP API requests by route and status code.", ("route", "code")),
    MetricSpec("predis_agent_http_auth_failures_total", "counter", "Requests refused for a missing or invalid token."),
    MetricSpec("predis_agent_http_connections", "gauge", "HTTP connections open now on the agent's HTTP listeners (TLS handshakes in progress included)."),
    MetricSpec(
        "predis_agent_http_connections_refused_total",
        "counter",
        "HTTP connections refused at accept (answered 503 on plain HTTP) and closed at once, by reason (max_connections: agent.http.max_connections open; descriptors: agent.reserved_descriptors + agent.http.extra_reserved_descriptors reached).",
        ("reason",),
    ),
    MetricSpec(
        "predis_agent_http_timeouts_total",
        "counter",
        "HTTP connections closed for a read deadline, by phase (idle: no request within agent.http.header_timeout_seconds; header: headers incomplete by then; body: body incomplete after agent.http.body_timeout_seconds; handshake: TLS handshake not done by the header timeout).",
        ("phase",),
    ),
    MetricSpec(
        "predis_agent_accept_errors_total",
        "counter",
        "Failed accept() calls on the agent's listeners, by errno (EMFILE, ENFILE, ENOBUFS, ENOMEM, other); logged once per agent.log.rate_limit_seconds.",
        ("errno",),
    ),
    MetricSpec(
        "predis_agent_metric_series_folded_total",
        "counter",
        "Collected samples not exported because their family already had its cap of label sets this round, by family.",
        ("family",),
    ),
    MetricSpec(
        "predis_aiops_eta_seconds",
        "gauge",
        "Forecast seconds until a resource runs out at its current trend (gpu_memory, memory_budget, spool, dead_letter, outage_buffer); absent while it does not shrink.",
        ("resource",),
        unit="seconds",
    ),
    MetricSpec("predis_aiops_anomaly", "gauge", "1 while a watched signal is anomalous (hit_ratio, latency_p50, latency_p99, origin_error_rate, ops_per_second, breaker_transitions).", ("signal",)),
    MetricSpec("predis_aiops_anomaly_score", "gauge", "Latest robust score of a signal: (value - rolling median) / floored MAD scale; breaker_transitions: transitions in the flap window.", ("signal",)),
    MetricSpec("predis_aiops_anomalies_total", "counter", "Anomalies raised, by signal.", ("signal",)),
    MetricSpec(
        "predis_aiops_actions_total",
        "counter",
        "Remediation action records, by action and outcome (dry_run, applied, failed, unavailable, rate_limited, reverted, revert_failed).",
        ("action", "outcome"),
    ),
    MetricSpec("predis_aiops_step_cpu_seconds_total", "counter", "CPU time the AIOps step of the collection rounds used (forecasts, anomaly detection, remediation).", unit="seconds"),
)


# Samples of the drift checks (agent/mlops/drift_policy.py). Labels are bounded: detector
# and feature names come from the built-in detectors and features, never from data.
DRIFT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("predis_drift_score", "gauge", "Latest score (or statistic) of each drift test, by detector and feature.", ("detector", "feature")),
    MetricSpec("predis_drift_checks_total", "counter", "Drift checks run, by outcome: drift, no_drift, insufficient_data.", ("status",)),
    MetricSpec("predis_drift_detected_total", "counter", "Drift checks in which a detector found drift, by detector.", ("detector",)),
    MetricSpec("predis_drift_check_duration_seconds", "summary", "Wall time of the detectors in one drift check.", unit="seconds"),
)

MLOPS_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "predis_mlops_retrain_total",
        "counter",
        "Retraining runs, by result: promoted (first model, now champion), registered (challenger), rejected (not better than the champion), no_data, timeout, error.",
        ("result",),
    ),
    MetricSpec("predis_mlops_retrain_duration_seconds", "summary", "Wall time of one retraining run (data, training, evaluation, registration).", unit="seconds"),
    MetricSpec("predis_mlops_candidate_hit_ratio", "gauge", "Hit ratio of the last retrained candidate on its held-out slice (replay).", unit="ratio"),
    MetricSpec("predis_mlops_champion_hit_ratio", "gauge", "Hit ratio of the champion on the same held-out slice (replay) in the last retrain.", unit="ratio"),
    MetricSpec("predis_mlops_baseline_hit_ratio", "gauge", "Hit ratio without prefetching on the same held-out slice in the last retrain.", unit="ratio"),
    MetricSpec("predis_mlops_serving_version", "gauge", "Registry version of the model the prefetcher serves (0: a fresh model, not from the registry).", ("tenant",)),
    MetricSpec("predis_mlops_rollout_share_ratio", "gauge", "Share of prefetch decisions the challenger makes in the running canary (0: none running).", ("tenant",), unit="ratio"),
    MetricSpec(
        "predis_mlops_rollout_arm_hit_ratio",
        "gauge",
        "Demand hit ratio of each canary arm's keys in the current step.",
        ("tenant", "arm"),
        unit="ratio",
    ),
    MetricSpec("predis_mlops_rollout_decisions_total", "counter", "Canary decisions, by decision: advance, promote, rollback.", ("decision",)),
    MetricSpec("predis_mlops_federated_rounds_total", "counter", "Federated rounds this host trained and answered (mlops.federated)."),
    MetricSpec("predis_mlops_federated_runs_total", "counter", "Federated runs joined, by result: ok (the server ran its rounds to the end), error (unreachable, TLS or protocol failure).", ("result",)),
    MetricSpec("predis_mlops_federated_epsilon", "gauge", "Privacy budget ε this host has spent on noised federated updates, at mlops.federated.delta (absent without noise)."),
)


@dataclass(frozen=True)
class Metric:
    """One sample produced by a collector.

    A summary sample (``kind="summary"``) carries its observations' sum in ``value`` and
    their number in ``count`` (no quantiles: they cannot be aggregated or turned into
    deltas). A histogram sample (``kind="histogram"``) carries its observations' sum in ``value``,
    their number in ``count`` and ``buckets`` as ``(upper bound, cumulative count)``
    pairs in increasing order; the ``+Inf`` bucket is ``count`` and may be left out.
    """

    name: str
    value: float
    kind: str = "gauge"  # gauge | counter | histogram | summary
    labels: Mapping[str, str] = field(default_factory=dict)
    help: str = ""
    timestamp: float = field(default_factory=time.time)
    buckets: tuple[tuple[float, float], ...] = ()
    count: float = 0.0


def sample(
    spec: MetricSpec,
    value: float,
    labels: Mapping[str, str] | None = None,
    *,
    buckets: tuple[tuple[float, float], ...] = (),
    count: float = 0.0,
) -> Metric:
    """A :class:`Metric` named, typed and described by ``spec``; its label keys must be the spec's."""
    given = dict(labels or {})
    if set(given) != set(spec.labels):
        raise ValueError(f"{spec.name}: expected labels {sorted(spec.labels)}, got {sorted(given)}")
    return Metric(spec.name, value, spec.kind, given, spec.help, buckets=buckets, count=count)


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
                cls = _FAMILIES.get(m.kind, GaugeMetricFamily)
                fam = cls(m.name, m.help or m.name)
                families[m.name] = fam
            # Each sample keeps its own label names: samples of one family may carry
            # different label keys, and pairing values with the first sample's keys
            # would export them under the wrong labels.
            labels = {str(k): str(v) for k, v in m.labels.items()}
            if fam.type == "histogram":
                if m.kind == "histogram":
                    fam.samples.extend(_histogram_samples(fam.name, labels, m))
                continue
            if fam.type == "summary":
                if m.kind == "summary" and math.isfinite(m.count):
                    fam.samples.extend([Sample(f"{fam.name}_count", labels, m.count), Sample(f"{fam.name}_sum", labels, m.value)])
                continue
            sample_name = f"{fam.name}_total" if fam.type == "counter" else fam.name
            fam.samples.append(Sample(sample_name, labels, m.value))
        return list(families.values())


_FAMILIES: dict[str, Any] = {
    "counter": CounterMetricFamily,
    "gauge": GaugeMetricFamily,
    "histogram": HistogramMetricFamily,
    "summary": SummaryMetricFamily,
}


def _histogram_samples(name: str, labels: dict[str, str], m: Metric) -> list[Sample]:
    """Cumulative ``_bucket`` samples ending in ``+Inf``, then ``_count`` and ``_sum``."""
    out = [Sample(f"{name}_bucket", {**labels, "le": floatToGoString(bound)}, cumulative) for bound, cumulative in m.buckets]
    if not m.buckets or math.isfinite(m.buckets[-1][0]):
        out.append(Sample(f"{name}_bucket", {**labels, "le": "+Inf"}, m.count))
    out.append(Sample(f"{name}_count", labels, m.count))
    out.append(Sample(f"{name}_sum", labels, m.value))
    return out


def _histograms_from_samples(spec: MetricSpec, samples: Iterable[Sample], now: float) -> list[Metric]:
    """Regroup prometheus_client's ``_bucket``/``_count``/``_sum`` samples into Metrics."""
    groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in samples:
        labels = {k: v for k, v in s.labels.items() if k != "le"}
        g = groups.setdefault(tuple(sorted(labels.items())), {"labels": labels, "buckets": [], "count": 0.0, "sum": 0.0})
        if s.name.endswith("_bucket"):
            bound = float(s.labels["le"])
            if math.isfinite(bound):
                g["buckets"].append((bound, float(s.value)))
        elif s.name.endswith("_count"):
            g["count"] = float(s.value)
        elif s.name.endswith("_sum"):
            g["sum"] = float(s.value)
    return [
        Metric(spec.name, g["sum"], "histogram", g["labels"], spec.help, timestamp=now, buckets=tuple(sorted(g["buckets"])), count=g["count"])
        for g in groups.values()
    ]


def _summaries_from_samples(spec: MetricSpec, samples: Iterable[Sample], now: float) -> list[Metric]:
    groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in samples:
        g = groups.setdefault(tuple(sorted(s.labels.items())), {"labels": dict(s.labels), "count": 0.0, "sum": 0.0})
        if s.name.endswith("_count"):
            g["count"] = float(s.value)
        elif s.name.endswith("_sum"):
            g["sum"] = float(s.value)
    return [Metric(spec.name, g["sum"], "summary", g["labels"], spec.help, timestamp=now, count=g["count"]) for g in groups.values()]


class Telemetry:
    """The agent's own metrics, in a registry of its own.

    The exposition of the registry is rendered at most once per collection round and
    per format, and kept until the next round (:meth:`exposition`): a scrape only ever
    copies cached bytes, so scrapers cannot make the agent work harder by scraping more.
    """

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics: dict[str, Any] = {}
        for spec in SELF_METRICS:
            self.metrics[spec.name] = self._make(spec)
        self.metrics["predis_agent_build_info"].labels(version=version, python_version=platform.python_version(), native=_native_lanes()).set(1)
        self.batch_collector = _BatchCollector()
        self.registry.register(self.batch_collector)
        self.guard = CardinalityGuard(SPECS_BY_NAME)
        self.renders = 0
        self._rendered: dict[str, bytes] = {}
        self._render_lock = threading.Lock()

    def _make(self, spec: MetricSpec) -> Any:
        name = spec.name[: -len("_total")] if spec.kind == "counter" else spec.name
        kwargs: dict[str, Any] = {"labelnames": spec.labels, "registry": self.registry}
        if spec.kind == "gauge":
            return Gauge(name, spec.help, **kwargs)
        if spec.kind == "counter":
            return Counter(name, spec.help, **kwargs)
        if spec.kind == "summary":
            return Summary(name, spec.help, **kwargs)
        return Histogram(name, spec.help, buckets=spec.buckets, **kwargs)

    def __getitem__(self, name: str) -> Any:
        return self.metrics[name]

    def set_batch(self, batch: list[Metric]) -> list[Metric]:
        """Expose ``batch`` (after the cardinality guard) and return what is exported."""
        kept, folded = self.guard.apply(batch)
        for family, n in folded.items():
            self.metrics["predis_agent_metric_series_folded_total"].labels(family=family).inc(n)
        self.batch_collector.batch = kept
        self.end_round()
        return kept

    def self_samples(self) -> list[Metric]:
        """The agent's own metrics as :class:`Metric` samples, for the push exporters
        (the Prometheus exposition reads them from the registry directly)."""
        out: list[Metric] = []
        now = time.time()
        for spec in SELF_METRICS:
            for family in self.metrics[spec.name].collect():
                if spec.kind == "histogram":
                    out.extend(_histograms_from_samples(spec, family.samples, now))
                    continue
                if spec.kind == "summary":
                    out.extend(_summaries_from_samples(spec, family.samples, now))
                    continue
                for s in family.samples:
                    if spec.kind == "counter" and not s.name.endswith("_total"):
                        continue
                    out.append(Metric(spec.name, float(s.value), spec.kind, dict(s.labels), spec.help, timestamp=now))
        return out

    def end_round(self) -> None:
        """Drop the cached exposition: the next scrape renders the round just finished."""
        with self._render_lock:
            self._rendered = {}

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry rendered in the format ``accept`` asks for (text 0.0.4 or
        OpenMetrics), and its content type; rendered on the first call of a round only."""
        encoder, content_type = choose_encoder(accept)
        with self._render_lock:
            body = self._rendered.get(content_type)
            if body is None:
                body = encoder(self.registry)
                self.renders += 1
                self._rendered[content_type] = body
        return body, content_type


# The metrics the agent itself defines; plugins declare theirs with :func:`declare_metrics`.
CORE_METRICS: tuple[MetricSpec, ...] = SELF_METRICS + DRIFT_METRICS + MLOPS_METRICS

# Every metric declared in this process, by name: the agent's own, then each plugin's from
# the moment its module declares them. The cardinality guard reads the series caps from it
# and the push exporters the units and types.
SPECS_BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CORE_METRICS}
_DECLARED: dict[str, tuple[MetricSpec, ...]] = {}  # declaring module -> its specs
_DECLARED_BY: dict[str, str] = {}  # metric name -> declaring module
_DECLARE_LOCK = threading.Lock()
METRIC_KINDS = ("gauge", "counter", "histogram", "summary")


def declare_metrics(module: str, specs: Iterable[MetricSpec]) -> tuple[MetricSpec, ...]:
    """Declare the metrics the plugin module ``module`` (its ``__name__``) produces; returns them.

    A plugin calls this once, at import, and builds its samples from the returned specs with
    :func:`sample`. A module imported again replaces its own declaration. Raises ValueError
    for an invalid name or type, a name given twice, a name of the agent's own metrics or a
    name another module declared.
    """
    declared = tuple(specs)
    names = [spec.name for spec in declared]
    for spec in declared:
        if not re.fullmatch(METRIC_NAME_RE, spec.name):
            raise ValueError(f"{module}: metric name {spec.name!r} does not match {METRIC_NAME_RE}")
        if spec.kind not in METRIC_KINDS:
            raise ValueError(f"{module}: metric {spec.name} has type {spec.kind!r}, expected one of {', '.join(METRIC_KINDS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{module}: metrics declared twice: {sorted({n for n in names if names.count(n) > 1})}")
    with _DECLARE_LOCK:
        for name in names:
            owner = _DECLARED_BY.get(name)
            if owner is None and name in SPECS_BY_NAME:
                raise ValueError(f"{module}: metric {name} is one of the agent's own")
            if owner is not None and owner != module:
                raise ValueError(f"{module}: metric {name} is already declared by {owner}")
        for spec in _DECLARED.pop(module, ()):
            del SPECS_BY_NAME[spec.name], _DECLARED_BY[spec.name]
        for spec in declared:
            SPECS_BY_NAME[spec.name] = spec
            _DECLARED_BY[spec.name] = module
        _DECLARED[module] = declared
    return declared


def declared_metrics(module: str) -> tuple[MetricSpec, ...]:
    """The specs ``module`` declared (empty when it declared none or is not imported)."""
    return _DECLARED.get(module, ())


# Which code emits an agent metric, by name prefix; the first matching prefix wins.
EMITTERS: tuple[tuple[str, str], ...] = (
    ("predis_agent_sink_", "agent/sinks.py"),
    ("predis_agent_http_", "agent/http.py"),
    ("predis_agent_accept_", "agent/fdlimits.py"),
    ("predis_agent_metric_", "agent/telemetry.py"),
    ("predis_agent_", "agent/runtime.py"),
    ("predis_aiops_", "agent/aiops/service.py"),
    ("predis_drift_", "agent/mlops/drift_policy.py"),
    ("predis_mlops_retrain_", "agent/mlops/retrain.py"),
    ("predis_mlops_candidate_", "agent/mlops/retrain.py"),
    ("predis_mlops_champion_", "agent/mlops/retrain.py"),
    ("predis_mlops_baseline_", "agent/mlops/retrain.py"),
    ("predis_mlops_", "agent/mlops/service.py"),
)


def emitter_of(spec: MetricSpec) -> str:
    """The file that emits ``spec``: its declaring module's for a plugin metric, else the
    one EMITTERS names; raises for a name neither claims."""
    owner = _DECLARED_BY.get(spec.name)
    if owner is not None:
        return owner.replace(".", "/") + ".py"
    for prefix, module in EMITTERS:
        if spec.name.startswith(prefix):
            return module
    raise LookupError(f"{spec.name}: no plugin declared it and no emitter in EMITTERS claims it")


def _native_lanes() -> str:
    """Which BLAKE2b build the compiled serving core picked (``avx512f``, ``avx2``, ...)."""
    from cache_core import _native

    return str(_native.blake2b_lanes())


class CardinalityGuard:
    """Caps the label sets each family exports per collected batch.

    A family's label sets that were exported in the previous batch keep their place;
    new ones are admitted while the family is under its cap (``MetricSpec.max_series``,
    or ``default_cap`` for names no spec declares, e.g. a third-party plugin's) and
    folded after. Only the previous batch's admitted sets are remembered, so memory
    stays bounded by the caps and a family whose old label values went away can admit
    new ones again.
    """

    def __init__(self, specs: Mapping[str, MetricSpec], default_cap: int = DEFAULT_MAX_SERIES) -> None:
        self.specs = specs
        self.default_cap = default_cap
        self._admitted: dict[str, set[tuple[tuple[str, str], ...]]] = {}

    def cap(self, family: str) -> int:
        spec = self.specs.get(family)
        return spec.max_series if spec is not None else self.default_cap

    def apply(self, batch: Iterable[Metric]) -> tuple[list[Metric], dict[str, int]]:
        """(samples to export in batch order, {family: samples folded})."""
        items = [(m, tuple(sorted((str(k), str(v)) for k, v in m.labels.items()))) for m in batch]
        admitted: dict[str, set[tuple[tuple[str, str], ...]]] = {}
        for m, key in items:
            if key in self._admitted.get(m.name, ()):
                admitted.setdefault(m.name, set()).add(key)
        folded: dict[str, int] = {}
        kept: list[Metric] = []
        for m, key in items:
            family = admitted.setdefault(m.name, set())
            if key not in family:
                if len(family) >= self.cap(m.name):
                    folded[m.name] = folded.get(m.name, 0) + 1
                    continue
                family.add(key)
            kept.append(m)
        self._admitted = admitted
        return kept, folded
