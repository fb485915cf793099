# SPDX-License-Identifier: Apache-2.0
"""The plugin API: the one module of ``agent`` (and of ``cache_core``) plugins import from.

Every built-in plugin under ``plugins/`` imports only this module from the project
(``tests/unit/test_plugin_api.py`` holds them to it), and third-party plugins should do the
same: what is listed in ``__all__`` here keeps its name, signature and meaning within a
major version of ``predis-agent``; everything else in ``agent`` and ``cache_core`` may change
in any release. ``docs/plugins.md`` is the reference with examples.

Importing this module is cheap: apart from ``hookimpl``, ``hookspec`` and the protocols,
each name is imported from the module that defines it on first use (PEP 562), so a plugin
that needs only a few names does not load the agent's HTTP server, its cache core or NumPy.
A plugin that needs a name only at run time (an event class in a collector's worker, a
route class in a hook) imports it inside the function that uses it, which keeps loading
the plugin cheap for ``predis-agent config validate``.

Hooks
    ``hookimpl``: decorates hook implementations (the hooks are in ``agent.hookspecs``).
    ``hookspec``: for plugins that declare hooks of their own.

Protocols (``typing.Protocol``, ``runtime_checkable``: what the agent calls on the
objects the ``predis_agent_register_*`` hooks return)
    ``Collector``, ``Exporter``, ``Origin``, ``DriftDetector``, ``HealthCheck``.

Metrics
    ``Metric``: one sample a collector returns. ``MetricSpec``: a metric declared once
    (name, type, help, labels, unit, buckets, series cap). ``sample(spec, value, labels)``:
    a Metric built from its spec (label keys checked). ``DEFAULT_MAX_SERIES``: the series
    cap of a family no spec declares. ``declare_metrics(__name__, specs)``: declares the
    metrics a plugin module produces, once, at import (their series caps, units and types
    then apply, and ``predis-agent metrics docs`` lists a built-in plugin's under its
    file); returns the specs. ``SPECS_BY_NAME``: every spec declared in the process, the
    agent's and the plugins', by name (exporters read units and types from it).

Export (push exporters' payloads and typed errors)
    ``Payload``: one request body and its point count. ``DeltaTracker``: turns cumulative
    counters into per-interval deltas. ``ExportError`` and its subclasses
    ``TransientExportError`` (retried), ``PayloadTooLargeError`` (split),
    ``InvalidPayloadError`` (dead-lettered), ``ExportAuthError`` (credentials re-read,
    retried). ``http_error(status, answer, retry_after, where)``: the typed error for an
    HTTP status, or None for a success.

Agent objects
    ``Event``: what ``predis_agent_event`` receives and ``agent.emit`` sends.
    ``Remediation``: what ``predis_agent_register_remediations`` returns (a protocol);
    ``RemediationUnavailable``: raised by an action that cannot act now.
    ``Route``: an HTTP route ``predis_agent_register_routes`` returns;
    ``json_response(body, status)`` and ``error_response(status, message)`` answer in the
    shapes of the agent's own routes. ``Secret``: a secret config value
    (``reveal()``, ``reveal_bytes()``). ``Rule(name, summary, check)``: a rule across config
    keys that ``predis_agent_config_rules`` returns; ``check(data)`` yields
    ``(dotted.key.path, problem)`` for each violation in the validated config.

Files and security
    ``SecurityError``: a path or permission the agent refuses. ``confine(root, candidate)``:
    ``candidate`` resolved inside ``root`` or SecurityError. ``atomic_write(path, data)``:
    a private file written durably in one step. ``DIR_MODE_SECRET``: the mode of private
    directories. ``free_space(statvfs, directory)``: bytes and percent free.
    ``remove_temp_files(directory, pattern)``: removes leftover temp files of interrupted
    writes.

Drift
    ``WindowFeatures``: the features of one access window that detectors compare.
    ``DriftSettings``: the thresholds of ``mlops.drift``. ``DetectorResult``: one test on
    one feature. ``DriftResult``: a detector's answer. ``combine(entries, settings)``: a
    DriftResult from entries (correction and status applied). ``effective_sizes``,
    ``quantile_bin_counts``: shared statistics helpers. ``STATUS_INSUFFICIENT``: the status
    of an entry without enough data.

Access log and its dataset format
    ``AccessLog``: the cache's access-event ring. ``STREAM_ID_BYTES``, ``TEMP_NAME_RE``,
    ``KeyFormatError``, ``encode_segment``, ``key_id``, ``list_segments``, ``parse_key``,
    ``parse_segment_name``, ``segment_name``: the encrypted segment files of the dataset.

RESP server constants
    ``COMMANDS``: the command table's names. ``LATENCY_BUCKETS_USEC``: the server's latency
    histogram bounds. ``LIMIT_REASONS``: why the server closed a client for a limit.

Origin reads
    ``ORIGIN_CALLERS``: who reads the origin (``demand``, ``prefetch``; the cache keeps an
    ``OriginMeter`` for each in ``Cache.origin_meters``). ``ORIGIN_LATENCY_BUCKETS``: the
    bounds of their call-duration histograms.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agent import hookimpl, hookspec

if TYPE_CHECKING:
    from agent.aiops.remediation import Remediation, RemediationUnavailable
    from agent.config import Secret
    from agent.config_rules import Rule
    from agent.errors import SecurityError
    from agent.http import Route, error_response, json_response
    from agent.mlops.dataset import (
        STREAM_ID_BYTES,
        TEMP_NAME_RE,
        KeyFormatError,
        encode_segment,
        key_id,
        list_segments,
        parse_key,
        parse_segment_name,
        segment_name,
    )
    from agent.mlops.drift import (
        STATUS_INSUFFICIENT,
        DetectorResult,
        DriftResult,
        DriftSettings,
        combine,
        effective_sizes,
        quantile_bin_counts,
    )
    from agent.mlops.features import WindowFeatures
    from agent.runtime import Event
    from agent.security import DIR_MODE_SECRET, atomic_write, confine
    from agent.sinks import (
        DeltaTracker,
        ExportAuthError,
        ExportError,
        InvalidPayloadError,
        Payload,
        PayloadTooLargeError,
        TransientExportError,
        free_space,
        http_error,
        remove_temp_files,
    )
    from agent.telemetry import (
        DEFAULT_MAX_SERIES,
        SPECS_BY_NAME,
        Metric,
        MetricSpec,
        declare_metrics,
        sample,
    )
    from cache_core.access_log import AccessLog
    from cache_core.metering import ORIGIN_CALLERS, ORIGIN_LATENCY_BUCKETS
    from cache_core.resp.server import COMMANDS, LATENCY_BUCKETS_USEC, LIMIT_REASONS

# Where each re-exported name is defined; imported from there on first use.
_SOURCES: dict[str, str] = {
    # metrics
    "Metric": "agent.telemetry",
    "MetricSpec": "agent.telemetry",
    "sample": "agent.telemetry",
    "DEFAULT_MAX_SERIES": "agent.telemetry",
    "SPECS_BY_NAME": "agent.telemetry",
    "declare_metrics": "agent.telemetry",
    # export
    "Payload": "agent.sinks",
    "DeltaTracker": "agent.sinks",
    "ExportError": "agent.sinks",
    "TransientExportError": "agent.sinks",
    "PayloadTooLargeError": "agent.sinks",
    "InvalidPayloadError": "agent.sinks",
    "ExportAuthError": "agent.sinks",
    "http_error": "agent.sinks",
    # agent objects
    "Event": "agent.runtime",
    "Remediation": "agent.aiops.remediation",
    "RemediationUnavailable": "agent.aiops.remediation",
    "Route": "agent.http",
    "json_response": "agent.http",
    "error_response": "agent.http",
    "Secret": "agent.config",
    "Rule": "agent.config_rules",
    # files and security
    "SecurityError": "agent.errors",
    "confine": "agent.security",
    "atomic_write": "agent.security",
    "DIR_MODE_SECRET": "agent.security",
    "free_space": "agent.sinks",
    "remove_temp_files": "agent.sinks",
    # drift
    "WindowFeatures": "agent.mlops.features",
    "DriftSettings": "agent.mlops.drift",
    "DetectorResult": "agent.mlops.drift",
    "DriftResult": "agent.mlops.drift",
    "combine": "agent.mlops.drift",
    "effective_sizes": "agent.mlops.drift",
    "quantile_bin_counts": "agent.mlops.drift",
    "STATUS_INSUFFICIENT": "agent.mlops.drift",
    # access log and dataset format
    "AccessLog": "cache_core.access_log",
    "STREAM_ID_BYTES": "agent.mlops.dataset",
    "TEMP_NAME_RE": "agent.mlops.dataset",
    "KeyFormatError": "agent.mlops.dataset",
    "encode_segment": "agent.mlops.dataset",
    "key_id": "agent.mlops.dataset",
    "list_segments": "agent.mlops.dataset",
    "parse_key": "agent.mlops.dataset",
    "parse_segment_name": "agent.mlops.dataset",
    "segment_name": "agent.mlops.dataset",
    # RESP server constants
    "COMMANDS": "cache_core.resp.server",
    "LATENCY_BUCKETS_USEC": "cache_core.resp.server",
    "LIMIT_REASONS": "cache_core.resp.server",
    # origin reads
    "ORIGIN_CALLERS": "cache_core.metering",
    "ORIGIN_LATENCY_BUCKETS": "cache_core.metering",
}


@runtime_checkable
class Collector(Protocol):
    """What ``predis_agent_register_collectors`` returns.

    ``collect`` runs once per ``agent.collect.interval_seconds`` in the collector thread
    pool, under a timeout; whatever it returns that is not a :class:`Metric` is ignored,
    and an exception costs this collector's samples of that round only.
    """

    name: str

    def collect(self) -> Iterable[Metric]: ...


@runtime_checkable
class Exporter(Protocol):
    """What ``predis_agent_register_exporters`` returns: a push exporter.

    Each is driven by its own resilient sink (queue, retry, breaker, spool). ``encode``
    runs in the collection thread and turns a batch into request payloads; ``send``
    delivers one payload within ``timeout`` seconds from the sink's worker and raises the
    typed export errors. Optional methods the sink calls when present:
    ``encode_events(events) -> list[Payload]`` (agent events), ``split(payload) ->
    list[Payload] | None`` (after PayloadTooLargeError), ``abort()`` (a send past its
    deadline), ``refresh_credentials()`` (after ExportAuthError) and ``close()``.
    An object with only ``name`` and ``send(batch)`` is accepted too: the sink then sends
    whole batches.
    """

    name: str

    def encode(self, batch: list[Metric]) -> list[Payload]: ...

    def send(self, payload: Payload, timeout: float) -> None: ...


@runtime_checkable
class Origin(Protocol):
    """What ``predis_agent_register_origins`` returns: a store the cache reads through.

    ``load_many`` answers one value per key, None for a key the origin does not hold,
    from the cache's origin threads; raising fails that read (counted as an origin error).
    ``cache.origin`` names the origin by ``name``.
    """

    name: str

    def load_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...


@runtime_checkable
class DriftDetector(Protocol):
    """What ``predis_agent_register_drift_detectors`` returns.

    ``check`` compares two windows' features and answers through :func:`combine`; one
    detector raising is logged and the others' entries still count.
    """

    name: str

    def check(self, reference: WindowFeatures, current: WindowFeatures, settings: DriftSettings = ...) -> DriftResult: ...


@runtime_checkable
class HealthCheck(Protocol):
    """What ``predis_agent_register_health_checks`` returns.

    ``check`` runs in a worker thread under ``agent.readiness.timeout_seconds`` and answers
    ``(ok, detail)``; ``/readyz`` shows it as ``<plugin>.<name>``.
    """

    name: str

    def check(self) -> tuple[bool, str]: ...


__all__ = [
    "COMMANDS",
    "DEFAULT_MAX_SERIES",
    "DIR_MODE_SECRET",
    "LATENCY_BUCKETS_USEC",
    "LIMIT_REASONS",
    "ORIGIN_CALLERS",
    "ORIGIN_LATENCY_BUCKETS",
    "SPECS_BY_NAME",
    "STATUS_INSUFFICIENT",
    "STREAM_ID_BYTES",
    "TEMP_NAME_RE",
    "AccessLog",
    "Collector",
    "DeltaTracker",
    "DetectorResult",
    "DriftDetector",
    "DriftResult",
    "DriftSettings",
    "Event",
    "ExportAuthError",
    "ExportError",
    "Exporter",
    "HealthCheck",
    "InvalidPayloadError",
    "KeyFormatError",
    "Metric",
    "MetricSpec",
    "Origin",
    "Payload",
    "PayloadTooLargeError",
    "Remediation",
    "RemediationUnavailable",
    "Route",
    "Rule",
    "Secret",
    "SecurityError",
    "TransientExportError",
    "WindowFeatures",
    "atomic_write",
    "combine",
    "confine",
    "declare_metrics",
    "effective_sizes",
    "encode_segment",
    "error_response",
    "free_space",
    "hookimpl",
    "hookspec",
    "http_error",
    "json_response",
    "key_id",
    "list_segments",
    "parse_key",
    "parse_segment_name",
    "quantile_bin_counts",
    "remove_temp_files",
    "sample",
    "segment_name",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
