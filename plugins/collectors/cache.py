# SPDX-License-Identifier: Apache-2.0
"""The ``cache_metrics`` collector: what the cache and its Redis-protocol server did.

Operators and the MLOps loop judge the cache by these numbers, so every sample is read
from a counter the cache or the server really keeps (``Cache.snapshot()`` and
``RespServer.stats``); nothing is estimated and nothing is exported as a placeholder.
Counters stay cumulative (``_total``); a cache rebuilt by a sizing change carries on
from the counters of the one it replaces.

The ``command`` label is bounded: only names of the server's command table appear,
anything else is folded into ``other``. Latency per command is a histogram over the
server's fixed bounds (10 µs to 10 s, ``cache_core.resp.server.LATENCY_BUCKETS_USEC``).

Prefetch issued / used / wasted counts come with the prefetcher; until it exists they are
not exported at all rather than as zeros that would look like a measured "no prefetch".

The collector is registered always and reads ``collectors.cache.enabled`` on every round,
so turning it on or off by a reload takes effect without re-registration.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from agent import api
from agent.api import Metric, MetricSpec, declare_metrics, hookimpl, sample

PLUGIN_NAME = "cache_metrics"
CONFIG_SECTION = "collectors.cache"
# The collectors.cache section: its schema, declared through predis_agent_config_sections.
SECTION_SCHEMA: dict[str, Any] = {
    "description": "Cache metrics (hits, misses, commands, latency, memory, evictions, clients).",
    "properties": {"enabled": {"type": "boolean", "default": True, "description": "Collect the cache's metrics."}},
}
OTHER_COMMAND = "other"
USEC_PER_SECOND = 1_000_000


@functools.cache
def bucket_bounds_seconds() -> tuple[float, ...]:
    """The histogram's bounds: the server's (read on first use, so that loading this
    plugin does not load the RESP server)."""
    return tuple(bound / USEC_PER_SECOND for bound in api.LATENCY_BUCKETS_USEC)


# Every sample this collector produces, declared once; built with :func:`sample`.
METRICS: tuple[MetricSpec, ...] = declare_metrics(
    __name__,
    (
        MetricSpec("predis_cache_hits_total", "counter", "Key lookups that found a live value."),
        MetricSpec("predis_cache_misses_total", "counter", "Key lookups that found no live value (before any read-through)."),
        MetricSpec("predis_cache_sets_total", "counter", "Values stored by clients."),
        MetricSpec("predis_cache_deletes_total", "counter", "Keys deleted by clients."),
        MetricSpec("predis_cache_evictions_total", "counter", "Keys evicted to make room (policy cache.eviction)."),
        MetricSpec("predis_cache_expirations_total", "counter", "Keys removed because their TTL passed."),
        MetricSpec("predis_cache_origin_loads_total", "counter", "Values read through from the origin on a miss."),
        MetricSpec("predis_cache_origin_errors_total", "counter", "Origin loads that failed."),
        MetricSpec(
            "predis_cache_origin_reads_total",
            "counter",
            "Keys asked of the origin, by caller: demand (a miss read through) or prefetch (the prefetcher's loads).",
            ("by",),
        ),
        MetricSpec("predis_cache_origin_read_bytes_total", "counter", "Bytes of the values the origin returned, by caller (demand, prefetch).", ("by",), unit="bytes"),
        MetricSpec(
            "predis_cache_origin_read_duration_seconds",
            "histogram",
            "Duration of one origin call (a batch of keys), by caller (demand, prefetch).",
            ("by",),
            unit="seconds",
            buckets=api.ORIGIN_LATENCY_BUCKETS,
        ),
        MetricSpec(
            "predis_cache_control_reads_total",
            "counter",
            "Served reads the prefetcher saw, in the control share of keys (group=control: never prefetched, console.control_share) and in the rest (group=treated).",
            ("group",),
        ),
        MetricSpec("predis_cache_control_hits_total", "counter", "Hits among predis_cache_control_reads_total, by group (control, treated).", ("group",)),
        MetricSpec("predis_cache_prefetch_skipped_control_total", "counter", "Prefetch candidates and hints dropped because their key is in the control share."),
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
    ),
)
SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in METRICS}

# CacheStats field -> counter it feeds.
STAT_COUNTERS: tuple[tuple[str, str], ...] = (
    ("hits", "predis_cache_hits_total"),
    ("misses", "predis_cache_misses_total"),
    ("sets", "predis_cache_sets_total"),
    ("deletes", "predis_cache_deletes_total"),
    ("evictions", "predis_cache_evictions_total"),
    ("expirations", "predis_cache_expirations_total"),
    ("origin_loads", "predis_cache_origin_loads_total"),
    ("origin_errors", "predis_cache_origin_errors_total"),
    ("prefetch_inserted", "predis_cache_prefetch_inserted_total"),
    ("prefetch_used", "predis_cache_prefetch_used_total"),
    ("prefetch_wasted", "predis_cache_prefetch_wasted_total"),
)
STAT_GAUGES: tuple[tuple[str, str], ...] = (
    ("keys", "predis_cache_keys"),
    ("max_keys", "predis_cache_max_keys"),
    ("value_bytes", "predis_cache_value_bytes"),
    ("charged_bytes", "predis_cache_charged_bytes"),
    ("max_memory_bytes", "predis_cache_max_memory_bytes"),
)
# CacheStats field -> value of the ``tier`` label of predis_cache_memory_bytes.
MEMORY_TIERS: tuple[tuple[str, str], ...] = (("device_bytes", "device"), ("host_bytes", "host"))


def command_label(name: str) -> str:
    """The bounded ``command`` label for a command name."""
    return name if name in api.COMMANDS else OTHER_COMMAND


class CacheCollector:
    """Reads the running cache and RESP server of ``agent.cache_service``."""

    name = "cache"

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def enabled(self) -> bool:
        return bool(self.agent.config.section(CONFIG_SECTION).get("enabled", True))

    def collect(self) -> list[Metric]:
        if not self.enabled():
            return []
        service = self.agent.cache_service
        out: list[Metric] = []
        cache = service.cache
        if cache is not None:
            out.extend(self._cache_samples(cache.snapshot()))
            out.extend(self._origin_samples(cache))
        server = service.server
        if server is not None:
            out.extend(self._server_samples(server))
        prefetcher = getattr(service, "prefetcher", None)
        if prefetcher is not None:
            st = prefetcher.stats
            skipped = SPECS["predis_cache_prefetch_skipped_total"]
            for reason, value in (("threshold", st.skipped_threshold), ("cached", st.skipped_cached), ("bandwidth", st.skipped_bandwidth)):
                out.append(sample(skipped, value, {"reason": reason}))
            out.append(sample(SPECS["predis_cache_prefetch_threshold"], prefetcher.threshold))
            out.append(sample(SPECS["predis_cache_prefetch_dropped_batches_total"], st.dropped_batches))
            out.append(sample(SPECS["predis_cache_prefetch_observed_total"], st.observed))
            out.append(sample(SPECS["predis_cache_prefetch_steps_total"], st.steps))
            out.append(sample(SPECS["predis_cache_prefetch_inference_seconds_total"], st.inference_seconds))
            out.append(sample(SPECS["predis_cache_prefetch_model_process_up"], 1 if prefetcher.in_model_process else 0))
            out.append(sample(SPECS["predis_cache_prefetch_model_process_restarts_total"], st.model_process_restarts))
            out.append(sample(SPECS["predis_cache_prefetch_foresight_named_total"], st.foresight_named))
            out.append(sample(SPECS["predis_cache_prefetch_foresight_read_total"], st.foresight_read))
            out.append(sample(SPECS["predis_cache_prefetch_backed_off"], 1 if prefetcher.backed_off else 0))
            out.append(sample(SPECS["predis_cache_prefetch_backoffs_total"], st.backoffs))
            out.append(sample(SPECS["predis_cache_prefetch_skipped_control_total"], st.skipped_control))
            for group, reads, hits in (("control", st.control_reads, st.control_hits), ("treated", st.treated_reads, st.treated_hits)):
                out.append(sample(SPECS["predis_cache_control_reads_total"], reads, {"group": group}))
                out.append(sample(SPECS["predis_cache_control_hits_total"], hits, {"group": group}))
        return out

    @staticmethod
    def _origin_samples(cache: Any) -> list[Metric]:
        """What each caller asked of the origin, while the cache has one."""
        if cache.origin is None:
            return []
        out: list[Metric] = []
        for by in api.ORIGIN_CALLERS:
            reads, read_bytes, calls, seconds, buckets = cache.origin_meters[by].snapshot()
            labels = {"by": by}
            out.append(sample(SPECS["predis_cache_origin_reads_total"], reads, labels))
            out.append(sample(SPECS["predis_cache_origin_read_bytes_total"], read_bytes, labels))
            cumulative = tuple((bound, float(n)) for bound, n in zip(api.ORIGIN_LATENCY_BUCKETS, buckets, strict=True))
            out.append(sample(SPECS["predis_cache_origin_read_duration_seconds"], seconds, labels, buckets=cumulative, count=float(calls)))
        return out

    @staticmethod
    def _cache_samples(stats: Any) -> list[Metric]:
        out = [sample(SPECS[name], getattr(stats, field)) for field, name in STAT_COUNTERS + STAT_GAUGES]
        memory = SPECS["predis_cache_memory_bytes"]
        out.extend(sample(memory, getattr(stats, field), {"tier": tier}) for field, tier in MEMORY_TIERS)
        return out

    def _server_samples(self, server: Any) -> list[Metric]:
        stats = server.stats
        out = [
            sample(SPECS["predis_cache_connected_clients"], len(server.clients)),
            sample(SPECS["predis_cache_connections_total"], stats.total_connections),
            sample(SPECS["predis_cache_rejected_connections_total"], stats.rejected_connections),
            sample(SPECS["predis_cache_protocol_errors_total"], stats.protocol_errors),
            sample(SPECS["predis_cache_client_buffer_bytes"], stats.client_memory_bytes),
            sample(SPECS["predis_cache_auth_failures_total"], stats.auth_failures),
            sample(SPECS["predis_cache_auth_throttled_total"], stats.auth_throttled),
        ]
        limit_closed = dict(stats.limit_disconnections)
        for reason in api.LIMIT_REASONS:
            out.append(sample(SPECS["predis_cache_client_limit_disconnections_total"], limit_closed.get(reason, 0), {"reason": reason}))
        # The event loop mutates these dicts while this runs in a collector thread: take
        # copies first (list() over a dict does not release the GIL).
        calls = {name: list(entry) for name, entry in list(stats.command_calls.items())}
        latency = {name: list(counts) for name, counts in list(stats.command_latency.items())}
        folded = self._fold(calls, latency)
        for command, (count, usec, errors, buckets) in sorted(folded.items()):
            labels = {"command": command}
            out.append(sample(SPECS["predis_cache_commands_total"], count, labels))
            out.append(sample(SPECS["predis_cache_command_errors_total"], errors, labels))
            if buckets is not None:
                out.append(self._histogram(labels, usec, buckets))
        return out

    @staticmethod
    def _fold(
        calls: Mapping[str, list[int]], latency: Mapping[str, list[int]]
    ) -> dict[str, tuple[int, int, int, list[int] | None]]:
        """Per bounded label: (calls, total µs, errors, per-bucket counts or None)."""
        folded: dict[str, tuple[int, int, int, list[int] | None]] = {}
        for name, (count, usec, errors) in calls.items():
            label = command_label(name)
            buckets = latency.get(name)
            if label in folded:
                c0, u0, e0, b0 = folded[label]
                merged = [a + b for a, b in zip(b0, buckets, strict=True)] if b0 is not None and buckets is not None else None
                folded[label] = (c0 + count, u0 + usec, e0 + errors, merged)
            else:
                folded[label] = (count, usec, errors, buckets)
        return folded

    @staticmethod
    def _histogram(labels: dict[str, str], usec: int, counts: list[int]) -> Metric:
        cumulative: list[tuple[float, float]] = []
        running = 0
        # The last slot (slower than every bound) is only in the +Inf bucket, i.e. ``count``.
        bounds = bucket_bounds_seconds()
        for bound, n in zip(bounds, counts[: len(bounds)], strict=True):
            running += n
            cumulative.append((bound, float(running)))
        return sample(
            SPECS["predis_cache_command_duration_seconds"],
            usec / USEC_PER_SECOND,
            labels,
            buckets=tuple(cumulative),
            count=float(sum(counts)),
        )


@hookimpl
def predis_agent_config_sections() -> dict[str, dict[str, Any]]:
    return {CONFIG_SECTION: SECTION_SCHEMA}


@hookimpl
def predis_agent_config_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Loads the cache collector; whether it runs is collectors.cache.enabled.",
        "properties": {},
    }


@hookimpl
def predis_agent_register_collectors(agent: Any) -> list[CacheCollector]:
    return [CacheCollector(agent)]
