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
    MetricSpec("predis_agent_sink_breaker_state", "gauge", "Circuit breaker of an exporter: 0 closed, 1 half-open, 2 open.", ("sink",)),
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
)

# Labels of every per-GPU sample: NVML index, MIG instance index ("" for the whole GPU), UUID.
GPU_LABELS = ("gpu", "mig", "uuid")

# Samples the built-in collectors (plugins/collectors/) produce each round, declared once
# here; the collectors build them with :func:`sample`.
COLLECTED_METRICS: tuple[MetricSpec, ...] = (
    # cache (plugins/collectors/cache.py)
    MetricSpec("predis_cache_hits_total", "counter", "Key lookups that found a live value."),
    MetricSpec("predis_cache_misses_total", "counter", "Key lookups that found no live value (before any read-through)."),
    MetricSpec("predis_cache_sets_total", "counter", "Values stored by clients."),
    MetricSpec("predis_cache_deletes_total", "counter", "Keys deleted by clients."),
    MetricSpec("predis_cache_evictions_total", "counter", "Keys evicted to make room (policy cache.eviction)."),
    MetricSpec("predis_cache_expirations_total", "counter", "Keys removed because their TTL passed."),
    MetricSpec("predis_cache_origin_loads_total", "counter", "Values read through from the origin on a miss."),
    MetricSpec("predis_cache_origin_errors_total", "counter", "Origin loads that failed."),
    MetricSpec("predis_cache_prefetch_inserted_total", "counter", "Keys the prefetcher loaded from the origin and inserted (prefetches are not requests)."),
    MetricSpec("predis_cache_prefetch_used_total", "counter", "Prefetched entries a demand read hit before they left the cache."),
    MetricSpec("predis_cache_prefetch_wasted_total", "counter", "Prefetched entries evicted, expired, deleted or overwritten before any read."),
    MetricSpec("predis_cache_prefetch_skipped_total", "counter", "Prefetch candidates not loaded, by reason (threshold, cached, bandwidth).", ("reason",)),
    MetricSpec("predis_cache_prefetch_threshold", "gauge", "Confidence a candidate needs to be prefetched (adaptive: follows the measured precision)."),
    MetricSpec("predis_cache_prefetch_dropped_batches_total", "counter", "Access batches the prefetcher's queue dropped because its worker fell behind."),
    MetricSpec("predis_cache_prefetch_observed_total", "counter", "Read keys the prefetch model learned from and predicted after."),
    MetricSpec("predis_cache_prefetch_steps_total", "counter", "Prefetch worker steps (one model call each); observed / steps is the mean batch the model sees."),
    MetricSpec("predis_cache_prefetch_inference_seconds_total", "counter", "CPU time the serving model spent encoding, learning and predicting (in the model process, and shipping its work there and back); divided by observed, the inference cost per access.", unit="seconds"),
    MetricSpec("predis_cache_prefetch_model_process_up", "gauge", "1 while the prefetch models run in their own process (cache.prefetch.model_process); 0 when they run in the prefetch worker thread, by configuration or because the process failed twice in a row."),
    MetricSpec("predis_cache_prefetch_model_process_restarts_total", "counter", "Model processes replaced because one died or did not answer in time (the replacement starts from the models as last loaded)."),
    MetricSpec("predis_cache_prefetch_foresight_named_total", "counter", "Keys the prefetch worker chose to load that were not cached (what its foresight is judged on; cache.prefetch.backoff_below_accuracy)."),
    MetricSpec("predis_cache_prefetch_foresight_read_total", "counter", "Of those, keys read within cache.prefetch.backoff_horizon_reads reads after, whether or not the prefetch came in time; divided by named, the model's foresight."),
    MetricSpec("predis_cache_prefetch_backed_off", "gauge", "1 while the prefetch worker backs off (its model foresaw less than cache.prefetch.backoff_below_accuracy of what it named over the last window: it gathers reads by cache.prefetch.backoff_model_seconds_per_read), 0 otherwise."),
    MetricSpec("predis_cache_prefetch_backoffs_total", "counter", "Times the prefetch worker began to back off."),
    MetricSpec("predis_cache_keys", "gauge", "Live keys in the cache."),
    MetricSpec("predis_cache_max_keys", "gauge", "Key capacity (cache.max_keys)."),
    MetricSpec(
        "predis_cache_memory_bytes",
        "gauge",
        "Memory the cache holds, by tier: device (hash table and value slabs) and host (per-entry metadata).",
        ("tier",),
        unit="bytes",
    ),
    MetricSpec("predis_cache_value_bytes", "gauge", "Bytes of the stored values themselves.", unit="bytes"),
    MetricSpec("predis_cache_charged_bytes", "gauge", "Bytes charged against cache.max_memory_bytes (value chunks).", unit="bytes"),
    MetricSpec("predis_cache_max_memory_bytes", "gauge", "Memory limit for values (cache.max_memory_bytes).", unit="bytes"),
    MetricSpec(
        "predis_cache_commands_total", "counter", "Redis-protocol commands executed, by command (unknown names: other).", ("command",)
    ),
    MetricSpec("predis_cache_command_errors_total", "counter", "Commands that answered an error, by command.", ("command",)),
    MetricSpec(
        "predis_cache_command_duration_seconds",
        "histogram",
        "Execution time of one command, by command; buckets are the RESP server's fixed bounds (10 µs to 10 s).",
        ("command",),
        unit="seconds",
    ),
    MetricSpec("predis_cache_connected_clients", "gauge", "Open Redis-protocol client connections."),
    MetricSpec("predis_cache_connections_total", "counter", "Client connections accepted, including those then rejected."),
    MetricSpec("predis_cache_rejected_connections_total", "counter", "Connections refused because cache.resp.max_clients was reached."),
    MetricSpec("predis_cache_protocol_errors_total", "counter", "Connections closed for a Redis-protocol violation."),
    MetricSpec(
        "predis_cache_client_limit_disconnections_total",
        "counter",
        "Redis-protocol clients closed for a limit, by reason: output_buffer (cache.resp.output_buffer_bytes or the soft limit), "
        "query_buffer (cache.resp.query_buffer_bytes), client_memory (cache.resp.max_client_memory_bytes).",
        ("reason",),
    ),
    MetricSpec("predis_cache_client_buffer_bytes", "gauge", "Memory all Redis-protocol clients' buffers hold together (input, output, sliced commands).", unit="bytes"),
    MetricSpec("predis_cache_auth_failures_total", "counter", "Failed AUTH (or HELLO AUTH) attempts on the Redis-protocol server."),
    MetricSpec(
        "predis_cache_auth_throttled_total", "counter", "AUTH attempts refused unchecked because their source's failure budget was spent."
    ),
    # process (plugins/collectors/process.py)
    MetricSpec(
        "predis_process_cpu_seconds_total", "counter", "CPU time the agent process used, by mode (user, system).", ("mode",), unit="seconds"
    ),
    MetricSpec("predis_process_resident_memory_bytes", "gauge", "Resident set size of the agent process.", unit="bytes"),
    MetricSpec("predis_process_open_fds", "gauge", "Open file descriptors of the agent process."),
    MetricSpec("predis_process_max_fds", "gauge", "Soft limit on open file descriptors (RLIMIT_NOFILE)."),
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
    # gpu (plugins/collectors/gpu.py)
    MetricSpec("predis_gpu_up", "gauge", "1 when NVML answered this round for at least one GPU; 0 otherwise (reason in /status)."),
    MetricSpec("predis_gpu_devices", "gauge", "GPUs NVML reports."),
    MetricSpec("predis_gpu_info", "gauge", "Always 1; labels carry each GPU's and MIG instance's identity.", GPU_LABELS + ("name",)),
    MetricSpec(
        "predis_gpu_utilization_ratio", "gauge", "Fraction of the last sample period a kernel ran on the GPU.", GPU_LABELS, unit="ratio"
    ),
    MetricSpec(
        "predis_gpu_memory_utilization_ratio",
        "gauge",
        "Fraction of the last sample period device memory was read or written.",
        GPU_LABELS,
        unit="ratio",
    ),
    MetricSpec("predis_gpu_memory_used_bytes", "gauge", "Device memory in use.", GPU_LABELS, unit="bytes"),
    MetricSpec("predis_gpu_memory_total_bytes", "gauge", "Device memory installed.", GPU_LABELS, unit="bytes"),
    MetricSpec("predis_gpu_temperature_celsius", "gauge", "GPU core temperature.", GPU_LABELS, unit="celsius"),
    MetricSpec("predis_gpu_power_draw_watts", "gauge", "Power the board draws.", GPU_LABELS, unit="watts"),
    MetricSpec("predis_gpu_power_limit_watts", "gauge", "Power limit the driver enforces.", GPU_LABELS, unit="watts"),
    MetricSpec("predis_gpu_sm_clock_hertz", "gauge", "Current SM clock.", GPU_LABELS, unit="hertz"),
    MetricSpec("predis_gpu_memory_clock_hertz", "gauge", "Current memory clock.", GPU_LABELS, unit="hertz"),
    MetricSpec(
        "predis_gpu_pcie_rx_bytes_per_second", "gauge", "PCIe receive throughput (NVML's 20 ms sample).", GPU_LABELS, unit="bytes_per_second"
    ),
    MetricSpec(
        "predis_gpu_pcie_tx_bytes_per_second", "gauge", "PCIe transmit throughput (NVML's 20 ms sample).", GPU_LABELS, unit="bytes_per_second"
    ),
    MetricSpec(
        "predis_gpu_ecc_errors_total",
        "counter",
        "ECC memory errors since the driver loaded, by type (corrected, uncorrected).",
        GPU_LABELS + ("type",),
    ),
    MetricSpec(
        "predis_gpu_throttle_active",
        "gauge",
        "1 while a clock throttle reason is active, by reason; reasons the GPU does not report are absent.",
        GPU_LABELS + ("reason",),
    ),
    MetricSpec("predis_gpu_xid_events_total", "counter", "XID critical-error events NVML delivered since the agent started.", GPU_LABELS),
    MetricSpec("predis_gpu_nvml_timeouts_total", "counter", "NVML calls that did not return within collectors.gpu.nvml_timeout_seconds."),
)

# Samples of the production data collector (plugins/collectors/access_log.py). Every event
# logged is exported, still waiting in the ring (pending) or counted in dropped{reason}.
ACCESS_LOG_DROP_REASONS = ("overwritten", "low_disk", "write_failed", "export_refused", "not_exported", "ring_replaced")
ACCESS_LOG_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("predis_access_log_events_total", "counter", "Access events logged into the ring (after sampling)."),
    MetricSpec("predis_access_log_events_sampled_out_total", "counter", "Access events not logged because their key is not sampled."),
    MetricSpec("predis_access_log_events_exported_total", "counter", "Logged events written to segment files."),
    MetricSpec(
        "predis_access_log_events_dropped_total",
        "counter",
        "Logged events overwritten in the ring before export, by what held export back: "
        + ", ".join(ACCESS_LOG_DROP_REASONS)
        + ".",
        ("reason",),
    ),
    MetricSpec("predis_access_log_events_pending", "gauge", "Logged events neither exported nor counted as dropped yet."),
    MetricSpec("predis_access_log_export_lag_seconds", "gauge", "Age of the oldest event waiting for export (0 when none waits).", unit="seconds"),
    MetricSpec(
        "predis_access_log_export_duration_seconds",
        "histogram",
        "Time to encode, encrypt and durably write one segment.",
        unit="seconds",
        buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
    ),
    MetricSpec("predis_access_log_written_bytes_total", "counter", "Bytes of segment files written.", unit="bytes"),
    MetricSpec("predis_access_log_segments_written_total", "counter", "Segment files written."),
    MetricSpec("predis_access_log_segments_deleted_total", "counter", "Segment files deleted by retention, by reason (bytes, age).", ("reason",)),
    MetricSpec("predis_access_log_write_errors_total", "counter", "Segment writes that failed (retried with backoff)."),
    MetricSpec("predis_access_log_export_paused", "gauge", "1 while export is held back (low disk, write errors, refused config); reason in /status."),
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
        self.metrics["predis_agent_info"].labels(version=version).set(1)
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


# Every metric the agent and its built-in plugins define. docs/metrics.md is generated
# from this; a test checks that no module-level spec tuple is left out.
METRIC_REGISTRY: tuple[MetricSpec, ...] = SELF_METRICS + COLLECTED_METRICS + ACCESS_LOG_METRICS + DRIFT_METRICS + MLOPS_METRICS
SPECS_BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in METRIC_REGISTRY}

# Which code emits a metric, by name prefix; the first matching prefix wins.
EMITTERS: tuple[tuple[str, str], ...] = (
    ("predis_agent_sink_", "agent/sinks.py"),
    ("predis_agent_http_", "agent/http.py"),
    ("predis_agent_accept_", "agent/fdlimits.py"),
    ("predis_agent_metric_", "agent/telemetry.py"),
    ("predis_agent_", "agent/runtime.py"),
    ("predis_cache_", "plugins/collectors/cache.py"),
    ("predis_process_", "plugins/collectors/process.py"),
    ("predis_gpu_", "plugins/collectors/gpu.py"),
    ("predis_access_log_", "plugins/collectors/access_log.py"),
    ("predis_drift_", "agent/mlops/drift_policy.py"),
    ("predis_mlops_retrain_", "agent/mlops/retrain.py"),
    ("predis_mlops_candidate_", "agent/mlops/retrain.py"),
    ("predis_mlops_champion_", "agent/mlops/retrain.py"),
    ("predis_mlops_baseline_", "agent/mlops/retrain.py"),
    ("predis_mlops_", "agent/mlops/service.py"),
)


def emitter_of(spec: MetricSpec) -> str:
    """The module that emits ``spec``; raises for a name no prefix claims."""
    for prefix, module in EMITTERS:
        if spec.name.startswith(prefix):
            return module
    raise LookupError(f"{spec.name}: no emitter in EMITTERS claims it")


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
