# SPDX-License-Identifier: Apache-2.0
"""New Relic exporter: the Metric API through newrelic-telemetry-sdk, events as custom events.

Configured under ``exporters.newrelic``. Gauges go as gauges, counters as ``count`` deltas
with ``interval.ms`` (their timestamp is the interval's start, as the SDK does), histograms
as ``summary`` ``{count, sum, min, max}`` over the interval, where ``min`` and ``max`` are the
bounds of the lowest and highest non-empty bucket (a histogram keeps no exact extremes).
Names are dotted like Datadog's; labels become attributes, plus
``exporters.newrelic.attributes`` as the block's common attributes.

The SDK answers 4xx/5xx without raising, so every response's status is checked here. The
Metric API validates asynchronously: a 202 means "received", and a bad value shows up as an
``NrIntegrationError`` event in the account, so values are checked before sending.

Limits (named constants): payloads stay under :data:`MAX_PAYLOAD_BYTES` uncompressed,
at most :data:`MAX_ATTRIBUTES` attributes per metric, attribute names up to
:data:`MAX_ATTRIBUTE_NAME` characters and values up to :data:`MAX_ATTRIBUTE_VALUE`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.api import (
    DeltaTracker,
    ExportAuthError,
    Payload,
    TransientExportError,
    hookimpl,
    http_error,
)
from plugins.exporters.base import (
    EncodeReport,
    LabelMemo,
    Point,
    chunk,
    dotted_name,
    event_fields,
    halve,
    json_size,
    secret_value,
    to_points,
)

if TYPE_CHECKING:
    from newrelic_telemetry_sdk import EventClient, MetricClient

log = logging.getLogger(__name__)

NAME = "newrelic"
SECTION = "exporters.newrelic"
# The exporters.newrelic section: its schema, declared through predis_agent_config_sections.
SECTION_SCHEMA: dict[str, Any] = {
    "description": "New Relic Metric API (gauges, counts with interval.ms, summaries) and agent events as custom events, through newrelic-telemetry-sdk.",
    "properties": {
        "enabled": {"type": "boolean", "default": False, "description": "Push to New Relic."},
        "region": {
            "type": "string",
            "enum": ["us", "eu"],
            "default": "us",
            "description": "Selects the default hosts (metric-api.newrelic.com or metric-api.eu.newrelic.com).",
        },
        "host": {"type": ["string", "null"], "default": None, "description": "Metric API host; null: the region's host."},
        "event_host": {"type": ["string", "null"], "default": None, "description": "Event API host; null: the region's host (insights-collector)."},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 443, "description": "HTTPS port of both hosts."},
        "api_key": {
            "type": ["string", "null"],
            "writeOnly": True,
            "default": None,
            "description": "License (ingest) key; give it as ${env:NAME}, ${file:/path} or ${cred:NAME}.",
        },
        "ca_file": {"type": ["string", "null"], "default": None, "description": "CA bundle to verify the hosts with; null: the system's."},
        "attributes": {
            "type": "object",
            "additionalProperties": {"type": "string", "maxLength": 4096},
            "maxProperties": 50,
            "default": {},
            "description": "Common attributes of every metric.",
        },
        "events": {"type": "boolean", "default": True, "description": "Send agent events as custom events (PredisAgentEvent)."},
        "interval": {
            "type": "number",
            "minimum": 1,
            "maximum": 86400,
            "default": 10,
            "description": "Seconds between two pushes (a multiple of agent.collect.interval_seconds is sensible; rounds in between are skipped).",
        },
    },
}

HOSTS = {
    "us": ("metric-api.newrelic.com", "insights-collector.newrelic.com"),
    "eu": ("metric-api.eu.newrelic.com", "insights-collector.eu01.nr-data.net"),
}
# Metric API: at most 1 MB (10^6 bytes) per POST.
MAX_PAYLOAD_BYTES = 1_000_000
MAX_METRICS_PER_PAYLOAD = 10_000
# At most 150 attributes per metric; names up to 255 characters, values up to 4096.
MAX_ATTRIBUTES = 150
MAX_ATTRIBUTE_NAME = 255
MAX_ATTRIBUTE_VALUE = 4096
# Event API: at most 1 MB per POST too; events carry at most 254 attributes.
MAX_EVENT_ATTRIBUTES = 254
EVENT_TYPE = "PredisAgentEvent"
# Doubles outside this range are rejected by the Metric API.
MAX_ABS_VALUE = 1.7976931348623157e308


class NewRelicExporter:
    name = NAME

    def __init__(self, agent: Any, section: Mapping[str, Any]) -> None:
        self.agent = agent
        region = section.get("region", "us")
        default_metric, default_event = HOSTS[region]
        self.host = section.get("host") or default_metric
        self.event_host = section.get("event_host") or default_event
        self.port = int(section.get("port", 443))
        self.ca_file = section.get("ca_file")
        self._key_ref = section.get("api_key")
        self._key = secret_value(section, "api_key")
        common = {str(k)[:MAX_ATTRIBUTE_NAME]: str(v)[:MAX_ATTRIBUTE_VALUE] for k, v in (section.get("attributes") or {}).items()}
        self.common = {"attributes": dict(list(common.items())[:MAX_ATTRIBUTES])}
        self.send_events = bool(section.get("events", True))
        self.deltas = DeltaTracker()
        self._label_memo = LabelMemo(self._attributes)
        self.last_report = EncodeReport()
        self._metric_client: MetricClient | None = None
        self._event_client: EventClient | None = None

    # -- encoding -----------------------------------------------------------------
    def _attributes(self, labels: Mapping[str, str], report: EncodeReport) -> dict[str, str]:
        out: dict[str, str] = {}
        # The block's common attributes are added to every metric at ingest: they count too.
        room = MAX_ATTRIBUTES - len(self.common["attributes"])
        for k, v in labels.items():
            if len(out) >= room:
                report.trim("attributes")
                continue
            if len(k) > MAX_ATTRIBUTE_NAME:
                report.trim("attribute_name")
                k = k[:MAX_ATTRIBUTE_NAME]
            if len(v) > MAX_ATTRIBUTE_VALUE:
                report.trim("attribute_value")
                v = v[:MAX_ATTRIBUTE_VALUE]
            out[k] = v
        return out

    def _metrics(self, p: Point, report: EncodeReport) -> list[dict[str, Any]]:
        """One item, or two counts (``.count``, ``.sum``) for a summary without buckets:
        New Relic's summary needs min and max, which only a histogram can bound."""
        if p.kind == "summary" and not p.buckets:
            name = dotted_name(p.name)
            parts = [Point(f"{p.name}.count", "count", p.labels, p.timestamp, value=p.count, interval=p.interval), Point(f"{p.name}.sum", "count", p.labels, p.timestamp, value=p.sum, interval=p.interval)]
            out = [m for part in parts if (m := self._metric(part, report)) is not None]
            for item, suffix in zip(out, (".count", ".sum")):
                item["name"] = name + suffix
            return out
        one = self._metric(p, report)
        return [one] if one is not None else []

    def _metric(self, p: Point, report: EncodeReport) -> dict[str, Any] | None:
        values = [p.value] if p.kind != "summary" else [p.sum, p.low, p.high]
        if any(abs(v) > MAX_ABS_VALUE for v in values):
            report.reject("value_out_of_range")
            return None
        name = dotted_name(p.name)
        attributes = self._label_memo.get(p.labels, report)
        ms = int(p.timestamp * 1000)
        if p.kind == "gauge":
            return {"name": name, "value": p.value, "timestamp": ms, "attributes": attributes}
        interval_ms = max(1, round(p.interval * 1000))
        start = ms - interval_ms
        if p.kind == "count":
            return {"name": name, "type": "count", "value": p.value, "interval.ms": interval_ms, "timestamp": start, "attributes": attributes}
        summary = {"count": p.count, "sum": p.sum, "min": p.low, "max": p.high}
        if p.count <= 0:
            summary = {"count": 0, "sum": 0.0, "min": 0.0, "max": 0.0}
        return {"name": name, "type": "summary", "value": summary, "interval.ms": interval_ms, "timestamp": start, "attributes": attributes}

    def _body(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"metrics": items, "common": self.common}

    def encode(self, batch: list[Any]) -> list[Payload]:
        report = EncodeReport()
        items = [m for p in to_points(batch, self.deltas, report) for m in self._metrics(p, report)]
        # The wire form is [{"metrics": [...], "common": {...}}] (the SDK adds the list).
        overhead = json_size([self._body([])])
        payloads = []
        for run, size in chunk(items, max_items=MAX_METRICS_PER_PAYLOAD, max_bytes=MAX_PAYLOAD_BYTES, overhead=overhead):
            if size > MAX_PAYLOAD_BYTES:
                report.reject("metric_too_large", len(run))
                continue
            payloads.append(Payload(body=self._body(run), points=len(run), nbytes=size))
        report.points = sum(p.points for p in payloads)
        report.payloads = len(payloads)
        report.bytes = sum(p.nbytes for p in payloads)
        self.last_report = report
        return payloads

    def encode_events(self, events: list[Any]) -> list[Payload]:
        if not self.send_events:
            return []
        items = []
        for event in events:
            fields = event_fields(event.data, MAX_ATTRIBUTE_VALUE)
            attrs = dict(list(fields.items())[: MAX_EVENT_ATTRIBUTES - 3])
            items.append({**attrs, "eventType": EVENT_TYPE, "kind": event.kind, "timestamp": int(event.time * 1000)})
        return [
            Payload(body={"events": run}, points=len(run), nbytes=size, kind="event")
            for run, size in chunk(items, max_items=MAX_METRICS_PER_PAYLOAD, max_bytes=MAX_PAYLOAD_BYTES, overhead=0)
        ]

    def split(self, payload: Payload) -> list[Payload] | None:
        if payload.kind == "event":
            return halve(payload, "events", lambda items: {"events": items}, len)
        return halve(payload, "metrics", self._body, len)

    # -- sending ------------------------------------------------------------------
    def _pool_kwargs(self) -> dict[str, Any]:
        if self.ca_file:
            return {"ca_certs": self.ca_file, "cert_reqs": "CERT_REQUIRED"}
        return {}

    def _clients(self) -> tuple[MetricClient, EventClient]:
        if not self._key:
            raise ExportAuthError("exporters.newrelic.api_key is not set")
        if self._metric_client is None or self._event_client is None:
            from newrelic_telemetry_sdk import (  # here, not at import: loading the plugin stays cheap
                EventClient,
                MetricClient,
            )

            self._metric_client = MetricClient(self._key, host=self.host, port=self.port, **self._pool_kwargs())
            self._event_client = EventClient(self._key, host=self.event_host, port=self.port, **self._pool_kwargs())
        return self._metric_client, self._event_client

    def refresh_credentials(self) -> None:
        reread = getattr(self._key_ref, "reread", None)
        if callable(reread):
            self._key = reread().reveal()
        self.close()

    def send(self, payload: Payload, timeout: float) -> None:
        import urllib3

        metrics, events = self._clients()
        try:
            if payload.kind == "event":
                response = events.send_batch(payload.body["events"], timeout=timeout)
            else:
                response = metrics.send_batch(payload.body["metrics"], common=payload.body.get("common"), timeout=timeout)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientExportError(f"newrelic: {exc.__class__.__name__}: {exc}") from None
        if not response.ok:
            data = response.data or b""
            answer = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
            error = http_error(response.status, answer, response.headers.get("Retry-After"), where="newrelic: ")
            if error is not None:
                raise error

    def abort(self) -> None:
        """Close the connections of a stuck send (the sink's attempt deadline passed)."""
        self.close()

    def close(self) -> None:
        for client in (self._metric_client, self._event_client):
            if client is not None:
                client.close()
        self._metric_client = self._event_client = None


@hookimpl
def predis_agent_config_sections() -> dict[str, dict[str, Any]]:
    return {SECTION: SECTION_SCHEMA}


@hookimpl
def predis_agent_register_exporters(agent: Any, config: Any) -> list[Any]:
    section = agent.config.section(SECTION)
    if not section.get("enabled"):
        return []
    return [NewRelicExporter(agent, section)]
