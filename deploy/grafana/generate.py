# SPDX-License-Identifier: Apache-2.0
"""Generate the Predis Agent Grafana dashboards (``deploy/grafana/*.json``) from code.

The dashboards are built with Grafana's own typed builders (PyPI ``grafana-foundation-sdk``)
and written as sorted, indented JSON so that a change shows as a readable diff. Run it from
the repository root after changing a panel::

    python3 deploy/grafana/generate.py            # rewrite the JSON files
    python3 deploy/grafana/generate.py --check    # exit 1 if a committed file differs

Every query selects the agent's series with the ``$job`` and ``$instance`` template variables
(both from ``predis_agent_build_info``) and reads the Prometheus data source chosen in
``$datasource``. Counters are shown as rates over Grafana's ``$__rate_interval``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as gcommon
from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cmodel
from grafana_foundation_sdk.models import dashboard as model

OUT_DIR = Path(__file__).resolve().parent
TAG = "predis"
SELECTOR = 'job=~"$job", instance=~"$instance"'
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
GRID_WIDTH = 24
HALF = GRID_WIDTH // 2
THIRD = GRID_WIDTH // 3
QUARTER = GRID_WIDTH // 4
PANEL_HEIGHT = 8
STAT_HEIGHT = 4
DEFAULT_RANGE = ("now-6h", "now")
REFRESH = "30s"
JSON_INDENT = 2
QUANTILES = (0.5, 0.95, 0.99)
REF_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def sel(metric: str, **labels: str) -> str:
    """``metric{job=~"$job", instance=~"$instance", label="value", ...}``."""
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{SELECTOR}{extra}}}"


def rate(metric: str, **labels: str) -> str:
    return f"rate({sel(metric, **labels)}[$__rate_interval])"


def increase(metric: str, **labels: str) -> str:
    return f"increase({sel(metric, **labels)}[$__rate_interval])"


def quantile(q: float, histogram: str, by: str = "") -> str:
    """The ``q`` quantile of a Prometheus histogram's rate, per ``by`` label (if any)."""
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) ({rate(histogram + '_bucket')}))"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    """One panel: a time series (``kind="timeseries"``) or a single value (``"stat"``)."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = HALF
    min_value: float | None = None
    max_value: float | None = None


def q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


def ts(title: str, description: str, *queries: Query, unit: str = "short", width: int = HALF, min_value: float | None = None, max_value: float | None = None) -> PanelSpec:
    return PanelSpec(title, description, tuple(queries), unit, "timeseries", width, min_value, max_value)


def stat(title: str, description: str, *queries: Query, unit: str = "short", width: int = QUARTER) -> PanelSpec:
    return PanelSpec(title, description, tuple(queries), unit, "stat", width)


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[PanelSpec, ...]


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]


# ----------------------------------------------------------------------------- (a) the cache
HITS = f"sum({rate('predis_cache_hits_total')})"
MISSES = f"sum({rate('predis_cache_misses_total')})"
HIT_RATIO = f"{HITS} / ({HITS} + {MISSES})"

CACHE = DashboardSpec(
    "predis-cache",
    "Predis Agent / Cache",
    "The GPU key-value cache behind the Redis protocol: hits and misses, commands, latency, memory, keys, evictions, clients and the origin.",
    (
        Row(
            "Overview",
            (
                stat("Hit ratio", "Hits over lookups (before any read-through).", q(HIT_RATIO, "hit ratio"), unit="percentunit"),
                stat("Operations per second", "Redis-protocol commands executed per second.", q(f"sum({rate('predis_cache_commands_total')})", "ops/s"), unit="ops"),
                stat("Live keys", "Keys in the cache now.", q(f"sum({sel('predis_cache_keys')})", "keys")),
                stat("Connected clients", "Open Redis-protocol connections.", q(f"sum({sel('predis_cache_connected_clients')})", "clients")),
            ),
        ),
        Row(
            "Hits and misses",
            (
                ts("Hits and misses per second", "Key lookups that found a live value, and those that did not.", q(HITS, "hits"), q(MISSES, "misses"), unit="ops"),
                ts("Hit ratio over time", "Hits over lookups.", q(HIT_RATIO, "{{instance}}"), unit="percentunit", min_value=0, max_value=1),
            ),
        ),
        Row(
            "Commands",
            (
                ts("Operations per second by command", "Redis-protocol commands executed, by command (unknown names: other).", q(f"sum by (command) ({rate('predis_cache_commands_total')})", "{{command}}"), unit="ops"),
                ts("Command errors per second", "Commands that answered an error, by command.", q(f"sum by (command) ({rate('predis_cache_command_errors_total')})", "{{command}}"), unit="ops"),
                ts(
                    "Command latency quantiles",
                    "Execution time of one command over all commands, from predis_cache_command_duration_seconds_bucket.",
                    *(q(quantile(p, "predis_cache_command_duration_seconds"), f"p{round(p * 100)}") for p in QUANTILES),
                    unit="s",
                ),
                ts(
                    "p99 latency by command",
                    "99th percentile execution time, by command.",
                    q(quantile(0.99, "predis_cache_command_duration_seconds", "command"), "{{command}}"),
                    unit="s",
                ),
            ),
        ),
        Row(
            "Memory and keys",
            (
                ts(
                    "Memory",
                    "Memory the cache holds by tier, the bytes charged against the limit, the stored values and the limit.",
                    q(f"sum by (tier) ({sel('predis_cache_memory_bytes')})", "{{tier}}"),
                    q(f"sum({sel('predis_cache_charged_bytes')})", "charged"),
                    q(f"sum({sel('predis_cache_value_bytes')})", "values"),
                    q(f"sum({sel('predis_cache_max_memory_bytes')})", "limit"),
                    unit="bytes",
                ),
                ts("Keys", "Live keys and the key capacity (cache.max_keys).", q(f"sum({sel('predis_cache_keys')})", "keys"), q(f"sum({sel('predis_cache_max_keys')})", "capacity")),
                ts(
                    "Evictions and expirations per second",
                    "Keys evicted to make room, and keys whose TTL passed.",
                    q(f"sum({rate('predis_cache_evictions_total')})", "evicted"),
                    q(f"sum({rate('predis_cache_expirations_total')})", "expired"),
                    q(f"sum({rate('predis_cache_deletes_total')})", "deleted"),
                    unit="ops",
                ),
                ts("Sets per second", "Values stored by clients.", q(f"sum({rate('predis_cache_sets_total')})", "sets"), unit="ops"),
            ),
        ),
        Row(
            "Clients",
            (
                ts(
                    "Clients",
                    "Open connections, and connections accepted and refused (cache.resp.max_clients) per second.",
                    q(f"sum({sel('predis_cache_connected_clients')})", "connected"),
                    q(f"sum({rate('predis_cache_connections_total')})", "accepted/s"),
                    q(f"sum({rate('predis_cache_rejected_connections_total')})", "rejected/s"),
                ),
                ts("Client buffers", "Memory all clients' buffers hold together.", q(f"sum({sel('predis_cache_client_buffer_bytes')})", "buffers"), unit="bytes"),
                ts(
                    "Client disconnections and protocol errors per second",
                    "Clients closed for a limit (by reason) or for a protocol violation, and failed AUTH attempts.",
                    q(f"sum by (reason) ({rate('predis_cache_client_limit_disconnections_total')})", "limit: {{reason}}"),
                    q(f"sum({rate('predis_cache_protocol_errors_total')})", "protocol errors"),
                    q(f"sum({rate('predis_cache_auth_failures_total')})", "auth failures"),
                    unit="ops",
                ),
            ),
        ),
        Row(
            "Origin",
            (
                ts("Origin reads per second by caller", "Keys asked of the origin: demand (a miss read through) or prefetch.", q(f"sum by (by) ({rate('predis_cache_origin_reads_total')})", "{{by}}"), unit="ops"),
                ts("Origin bytes per second by caller", "Bytes the origin returned.", q(f"sum by (by) ({rate('predis_cache_origin_read_bytes_total')})", "{{by}}"), unit="Bps"),
                ts("Origin call p99 by caller", "99th percentile duration of one origin call.", q(quantile(0.99, "predis_cache_origin_read_duration_seconds", "by"), "{{by}}"), unit="s"),
                ts(
                    "Origin loads and errors per second",
                    "Values read through on a miss, and loads that failed.",
                    q(f"sum({rate('predis_cache_origin_loads_total')})", "loads"),
                    q(f"sum({rate('predis_cache_origin_errors_total')})", "errors"),
                    unit="ops",
                ),
            ),
        ),
    ),
)

# ----------------------------------------------------------------------------- (b) prefetching and models
INSERTED = f"sum({rate('predis_cache_prefetch_inserted_total')})"
USED = f"sum({rate('predis_cache_prefetch_used_total')})"
CONTROL_RATIO = f"sum by (group) ({rate('predis_cache_control_hits_total')}) / sum by (group) ({rate('predis_cache_control_reads_total')})"

PREFETCH = DashboardSpec(
    "predis-prefetch",
    "Predis Agent / Prefetching and models",
    "What the prefetcher loads and what it is worth (control share), its model, the canary rollout and drift.",
    (
        Row(
            "Prefetching",
            (
                ts(
                    "Prefetched keys per second",
                    "Keys the prefetcher inserted, prefetched entries a read then hit (used), and those that left unread (wasted).",
                    q(INSERTED, "inserted"),
                    q(USED, "used"),
                    q(f"sum({rate('predis_cache_prefetch_wasted_total')})", "wasted"),
                    unit="ops",
                ),
                ts("Precision", "Used over inserted prefetches.", q(f"{USED} / {INSERTED}", "precision"), unit="percentunit", min_value=0, max_value=1),
                ts("Threshold", "Confidence a candidate needs to be prefetched (adaptive: follows the precision).", q(f"max({sel('predis_cache_prefetch_threshold')})", "threshold"), unit="percentunit"),
                ts(
                    "Skipped candidates per second",
                    "Prefetch candidates not loaded, by reason, and those in the control share.",
                    q(f"sum by (reason) ({rate('predis_cache_prefetch_skipped_total')})", "{{reason}}"),
                    q(f"sum({rate('predis_cache_prefetch_skipped_control_total')})", "control share"),
                    unit="ops",
                ),
                ts(
                    "Back-off",
                    "1 while the worker backs off (its model foresaw too little of what it named), the back-offs begun, and the foresight.",
                    q(f"max({sel('predis_cache_prefetch_backed_off')})", "backed off"),
                    q(f"sum({increase('predis_cache_prefetch_backoffs_total')})", "back-offs begun"),
                    q(f"sum({rate('predis_cache_prefetch_foresight_read_total')}) / sum({rate('predis_cache_prefetch_foresight_named_total')})", "foresight"),
                ),
                ts(
                    "Hit ratio: control share and treated keys",
                    "Hits over reads in the control share (never prefetched: the hit ratio without prefetching) and in the rest (treated).",
                    q(CONTROL_RATIO, "{{group}}"),
                    unit="percentunit",
                    min_value=0,
                    max_value=1,
                ),
                ts(
                    "Worker",
                    "Keys observed per second, dropped access batches, and the model's CPU seconds per observed key.",
                    q(f"sum({rate('predis_cache_prefetch_observed_total')})", "observed/s"),
                    q(f"sum({rate('predis_cache_prefetch_dropped_batches_total')})", "dropped batches/s"),
                    q(f"sum({rate('predis_cache_prefetch_inference_seconds_total')}) / sum({rate('predis_cache_prefetch_observed_total')})", "inference s/key"),
                ),
                ts(
                    "Model process",
                    "1 while the models run in their own process; restarts of that process.",
                    q(f"max({sel('predis_cache_prefetch_model_process_up')})", "up"),
                    q(f"sum({increase('predis_cache_prefetch_model_process_restarts_total')})", "restarts"),
                ),
            ),
        ),
        Row(
            "Model and rollout",
            (
                ts("Serving model version", "Registry version of the model the prefetcher serves (0: a fresh model, not from the registry).", q(f"max by (tenant) ({sel('predis_mlops_serving_version')})", "{{tenant}}")),
                ts("Rollout share", "Share of prefetch decisions the challenger makes in the running canary (0: none running).", q(f"max by (tenant) ({sel('predis_mlops_rollout_share_ratio')})", "{{tenant}}"), unit="percentunit", min_value=0, max_value=1),
                ts(
                    "Canary arms' hit ratio",
                    "Demand hit ratio of each canary arm's keys in the current step (only while a canary runs).",
                    q(f"max by (tenant, arm) ({sel('predis_mlops_rollout_arm_hit_ratio')})", "{{tenant}} {{arm}}"),
                    unit="percentunit",
                    min_value=0,
                    max_value=1,
                ),
                ts("Canary decisions", "Canary decisions in the interval: advance, promote, rollback.", q(f"sum by (decision) ({increase('predis_mlops_rollout_decisions_total')})", "{{decision}}")),
                ts("Retraining runs", "Retraining runs in the interval, by result.", q(f"sum by (result) ({increase('predis_mlops_retrain_total')})", "{{result}}")),
                ts(
                    "Retrain evaluation",
                    "Hit ratios on the last retrain's held-out slice (replay): the candidate, the champion, and no prefetching.",
                    q(f"max({sel('predis_mlops_candidate_hit_ratio')})", "candidate"),
                    q(f"max({sel('predis_mlops_champion_hit_ratio')})", "champion"),
                    q(f"max({sel('predis_mlops_baseline_hit_ratio')})", "no prefetching"),
                    unit="percentunit",
                ),
            ),
        ),
        Row(
            "Drift",
            (
                ts("Drift score", "Latest score (or statistic) of each drift test, by detector and feature.", q(f"max by (detector, feature) ({sel('predis_drift_score')})", "{{detector}} {{feature}}")),
                ts("Drift detections", "Drift checks in the interval in which a detector found drift, by detector.", q(f"sum by (detector) ({increase('predis_drift_detected_total')})", "{{detector}}")),
                ts("Drift checks per second", "Drift checks run, by outcome.", q(f"sum by (status) ({rate('predis_drift_checks_total')})", "{{status}}"), unit="ops"),
            ),
        ),
    ),
)

# ----------------------------------------------------------------------------- (c) exporters
EXPORTERS = DashboardSpec(
    "predis-exporters",
    "Predis Agent / Exporters",
    "Every push exporter (sink): its queue, what it sent, failed and dropped, its circuit breaker, its outage budget and its spool.",
    (
        Row(
            "Delivery",
            (
                ts("Points sent per second", "Points each exporter delivered.", q(f"sum by (sink) ({rate('predis_agent_sink_points_sent_total')})", "{{sink}}"), unit="ops"),
                ts("Points failed per second", "Points in failed send attempts, by error class.", q(f"sum by (sink, error) ({rate('predis_agent_sink_points_failed_total')})", "{{sink}} {{error}}"), unit="ops"),
                ts("Points dropped per second", "Points given up, by reason.", q(f"sum by (sink, reason) ({rate('predis_agent_sink_points_dropped_total')})", "{{sink}} {{reason}}"), unit="ops"),
                ts(
                    "Since the last delivery",
                    "Seconds since each exporter last delivered a payload.",
                    q(f"time() - max by (sink) ({sel('predis_agent_sink_last_success_timestamp_seconds')})", "{{sink}}"),
                    unit="s",
                ),
                ts("Send attempt p99", "99th percentile wall time of one send attempt.", q(quantile(0.99, "predis_agent_sink_send_duration_seconds", "sink"), "{{sink}}"), unit="s"),
                ts(
                    "Splits and dead letters",
                    "Payloads split after a too-large answer, and rejected payloads written to the dead-letter directory, in the interval.",
                    q(f"sum by (sink) ({increase('predis_agent_sink_splits_total')})", "{{sink}} splits"),
                    q(f"sum by (sink) ({increase('predis_agent_sink_dead_letters_total')})", "{{sink}} dead letters"),
                ),
            ),
        ),
        Row(
            "Queue, breaker and spool",
            (
                ts("Queued points", "Points waiting in each exporter's queue (the payload being sent included).", q(f"sum by (sink) ({sel('predis_agent_sink_queue_points')})", "{{sink}}")),
                ts("Queued bytes", "Bytes waiting in each exporter's queue.", q(f"sum by (sink) ({sel('predis_agent_sink_queue_bytes')})", "{{sink}}"), unit="bytes"),
                ts("Oldest queued payload", "Age of each exporter's oldest queued payload.", q(f"max by (sink) ({sel('predis_agent_sink_queue_oldest_age_seconds')})", "{{sink}}"), unit="s"),
                ts(
                    "Circuit breaker",
                    "The state each exporter's breaker is in: one 0/1 series per state (closed, half_open, open).",
                    q(f"max by (sink, state) ({sel('predis_agent_sink_breaker_state')})", "{{sink}} {{state}}"),
                    min_value=0,
                    max_value=1,
                ),
                ts(
                    "Outage budget",
                    "Seconds of vendor outage each exporter's queue can absorb before it drops points, at the current rate.",
                    q(f"min by (sink) ({sel('predis_agent_sink_outage_budget_seconds')})", "{{sink}}"),
                    unit="s",
                ),
                ts("Spool paused", "1 while an exporter's spool is paused (low disk or full): payloads are queued in memory only.", q(f"max by (sink) ({sel('predis_agent_sink_spool_paused')})", "{{sink}}"), min_value=0, max_value=1),
            ),
        ),
    ),
)

# ----------------------------------------------------------------------------- (d) host and GPU
GPU = 'gpu="{{gpu}}" {{mig}}'

HOST = DashboardSpec(
    "predis-host",
    "Predis Agent / Host and GPU",
    "The agent process (standard process_* series, event loop, GC), its health and the GPUs NVML reports.",
    (
        Row(
            "Agent",
            (
                stat("Targets up", "Agent targets Prometheus scrapes successfully.", q(f"sum(up{{{SELECTOR}}})", "up")),
                stat("Ready", "Agents whose last readiness check passed.", q(f"sum({sel('predis_agent_ready')})", "ready")),
                stat("Uptime", "Time since the agent process started.", q(f"min(time() - {sel('process_start_time_seconds')})", "uptime"), unit="s"),
                stat("Config generation", "Generation of the active config (+1 per applied reload).", q(f"max({sel('predis_agent_config_generation')})", "generation")),
                ts("Build", "The agent's version, Python and native core (labels of predis_agent_build_info).", q(f"max by (instance, version, python_version, native) ({sel('predis_agent_build_info')})", "{{instance}} {{version}} py{{python_version}} {{native}}"), width=GRID_WIDTH),
            ),
        ),
        Row(
            "Process",
            (
                ts("CPU", "CPU seconds per second the agent process spends (user and system).", q(f"sum by (instance) ({rate('process_cpu_seconds_total')})", "{{instance}}"), unit="percentunit"),
                ts(
                    "Memory",
                    "Resident and virtual memory of the agent process.",
                    q(f"sum by (instance) ({sel('process_resident_memory_bytes')})", "{{instance}} resident"),
                    q(f"sum by (instance) ({sel('process_virtual_memory_bytes')})", "{{instance}} virtual"),
                    unit="bytes",
                ),
                ts(
                    "File descriptors",
                    "Open descriptors and the soft limit (RLIMIT_NOFILE).",
                    q(f"sum by (instance) ({sel('process_open_fds')})", "{{instance}} open"),
                    q(f"sum by (instance) ({sel('process_max_fds')})", "{{instance}} limit"),
                ),
                ts("Threads", "Operating-system threads of the agent process.", q(f"sum by (instance) ({sel('predis_process_threads')})", "{{instance}}")),
                ts(
                    "Event-loop lag",
                    "How late the latest event-loop probe ran, and the largest lag since the previous collection round.",
                    q(f"max by (instance) ({sel('predis_process_event_loop_lag_seconds')})", "{{instance}} latest"),
                    q(f"max by (instance) ({sel('predis_process_event_loop_lag_max_seconds')})", "{{instance}} max"),
                    unit="s",
                ),
                ts("GC collections per second", "Python garbage collections, by generation.", q(f"sum by (generation) ({rate('predis_process_gc_collections_total')})", "gen {{generation}}"), unit="ops"),
                ts("GC pause", "Seconds per second spent in Python garbage collection, by generation.", q(f"sum by (generation) ({rate('predis_process_gc_pause_seconds_total')})", "gen {{generation}}"), unit="percentunit"),
                ts("Collection round p99", "99th percentile wall time of one collection round.", q(quantile(0.99, "predis_agent_collection_duration_seconds"), "p99"), unit="s"),
                ts("HTTP requests per second", "HTTP API requests by route and status code.", q(f"sum by (route, code) ({rate('predis_agent_http_requests_total')})", "{{route}} {{code}}"), unit="reqps"),
                ts("Plugin errors", "Exceptions plugins raised in the interval, by plugin and hook.", q(f"sum by (plugin, hook) ({increase('predis_agent_plugin_errors_total')})", "{{plugin}} {{hook}}")),
            ),
        ),
        Row(
            "GPU",
            (
                ts("NVML", "1 when NVML answered this round; the GPUs it reports; NVML calls that timed out in the interval.", q(f"max({sel('predis_gpu_up')})", "up"), q(f"max({sel('predis_gpu_devices')})", "devices"), q(f"sum({increase('predis_gpu_nvml_timeouts_total')})", "timeouts")),
                ts("GPU utilisation", "Fraction of the sample period a kernel ran.", q(f"max by (gpu, mig) ({sel('predis_gpu_utilization_ratio')})", GPU), unit="percentunit", min_value=0, max_value=1),
                ts("GPU memory utilisation", "Fraction of the sample period device memory was read or written.", q(f"max by (gpu, mig) ({sel('predis_gpu_memory_utilization_ratio')})", GPU), unit="percentunit", min_value=0, max_value=1),
                ts(
                    "GPU memory",
                    "Device memory in use and installed.",
                    q(f"max by (gpu, mig) ({sel('predis_gpu_memory_used_bytes')})", f"{GPU} used"),
                    q(f"max by (gpu, mig) ({sel('predis_gpu_memory_total_bytes')})", f"{GPU} total"),
                    unit="bytes",
                ),
                ts("GPU temperature", "GPU core temperature.", q(f"max by (gpu, mig) ({sel('predis_gpu_temperature_celsius')})", GPU), unit="celsius"),
                ts(
                    "GPU power",
                    "Power the board draws, and the limit the driver enforces.",
                    q(f"max by (gpu, mig) ({sel('predis_gpu_power_draw_watts')})", f"{GPU} draw"),
                    q(f"max by (gpu, mig) ({sel('predis_gpu_power_limit_watts')})", f"{GPU} limit"),
                    unit="watt",
                ),
                ts(
                    "GPU clocks",
                    "Current SM and memory clocks.",
                    q(f"max by (gpu, mig) ({sel('predis_gpu_sm_clock_hertz')})", f"{GPU} SM"),
                    q(f"max by (gpu, mig) ({sel('predis_gpu_memory_clock_hertz')})", f"{GPU} memory"),
                    unit="hertz",
                ),
                ts(
                    "PCIe throughput",
                    "PCIe receive and transmit throughput (NVML's 20 ms sample).",
                    q(f"max by (gpu, mig) ({sel('predis_gpu_pcie_rx_bytes_per_second')})", f"{GPU} rx"),
                    q(f"max by (gpu, mig) ({sel('predis_gpu_pcie_tx_bytes_per_second')})", f"{GPU} tx"),
                    unit="Bps",
                ),
                ts("ECC errors", "ECC memory errors in the interval, by type (corrected, uncorrected).", q(f"sum by (gpu, mig, type) ({increase('predis_gpu_ecc_errors_total')})", f"{GPU} {{{{type}}}}")),
                ts("XID events", "XID critical-error events NVML delivered in the interval.", q(f"sum by (gpu, mig) ({increase('predis_gpu_xid_events_total')})", GPU)),
                ts("Throttle reasons", "1 while a clock throttle reason is active, by reason.", q(f"max by (gpu, mig, reason) ({sel('predis_gpu_throttle_active')})", f"{GPU} {{{{reason}}}}"), min_value=0, max_value=1),
            ),
        ),
    ),
)

DASHBOARDS: tuple[DashboardSpec, ...] = (CACHE, PREFETCH, EXPORTERS, HOST)


# ----------------------------------------------------------------------------- building
def _target(query: Query, ref_id: str) -> gprom.Dataquery:
    return gprom.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref_id).range()


PanelBuilder = gts.Panel | gstat.Panel


def _panel(spec: PanelSpec, panel_id: int) -> PanelBuilder:
    builder: PanelBuilder
    if spec.kind == "stat":
        builder = (
            gstat.Panel()
            .height(STAT_HEIGHT)
            .reduce_options(gcommon.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .graph_mode(cmodel.BigValueGraphMode.AREA)
            .color_mode(cmodel.BigValueColorMode.VALUE)
        )
    else:
        builder = (
            gts.Panel()
            .height(PANEL_HEIGHT)
            .legend(gcommon.VizLegendOptions().display_mode(cmodel.LegendDisplayMode.LIST).placement(cmodel.LegendPlacement.BOTTOM).show_legend(True))
            .tooltip(gcommon.VizTooltipOptions().mode(cmodel.TooltipDisplayMode.MULTI).sort(cmodel.SortOrder.DESCENDING))
        )
        if spec.min_value is not None:
            builder = builder.min(spec.min_value)
        if spec.max_value is not None:
            builder = builder.max(spec.max_value)
    builder = builder.id(panel_id).title(spec.title).description(spec.description).datasource(DATASOURCE).unit(spec.unit).span(spec.width)
    for query, ref_id in zip(spec.queries, REF_IDS):
        builder = builder.with_target(_target(query, ref_id))
    return builder


def _variables() -> list[gdash.DatasourceVariable | gdash.QueryVariable]:
    job = (
        gdash.QueryVariable("job")
        .label("Job")
        .datasource(DATASOURCE)
        .query("label_values(predis_agent_build_info, job)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
    )
    instance = (
        gdash.QueryVariable("instance")
        .label("Instance")
        .datasource(DATASOURCE)
        .query('label_values(predis_agent_build_info{job=~"$job"}, instance)')
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
    )
    return [gdash.DatasourceVariable("datasource").label("Data source").type("prometheus"), job, instance]


def build(spec: DashboardSpec) -> gdash.Dashboard:
    board = (
        gdash.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags([TAG])
        .editable()
        .time(*DEFAULT_RANGE)
        .refresh(REFRESH)
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .variables(list(_variables()))
        .link(gdash.DashboardLink("Predis Agent").type(model.DashboardLinkType.DASHBOARDS).tags([TAG]).as_dropdown(True).include_vars(True).keep_time(True))
    )
    # Rows are open (not collapsed): Grafana then expects a row's panels after it at the top
    # level, not inside it.
    panel_id = 0
    for row in spec.rows:
        panel_id += 1
        board = board.with_row(gdash.Row(row.title).id(panel_id).collapsed(False))
        for panel in row.panels:
            panel_id += 1
            board = board.with_panel(_panel(panel, panel_id))
    return board


def render(spec: DashboardSpec) -> str:
    """The dashboard's JSON as committed: keys sorted, indented, one trailing newline."""
    return json.dumps(build(spec).build(), cls=JSONEncoder, indent=JSON_INDENT, sort_keys=True) + "\n"


def rendered() -> dict[str, str]:
    """Every dashboard: ``{file name: JSON text}``."""
    return {f"{spec.uid}.json": render(spec) for spec in DASHBOARDS}


def main(argv: Sequence[str] | None = None, out_dir: Path = OUT_DIR, echo: Callable[[str], object] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing them; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale = []
    for name, text in rendered().items():
        path = out_dir / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            echo(f"wrote {path}")
    for name in stale:
        echo(f"{out_dir / name} differs from the generator: run python3 deploy/grafana/generate.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
