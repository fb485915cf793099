# SPDX-License-Identifier: Apache-2.0
"""Datadog exporter: series (v1 API), agent events and the readiness service check.

Configured under ``exporters.datadog``. Gauges go as ``gauge``, counters as ``count``
deltas with their ``interval``, histograms as ``<name>.count`` and ``<name>.sum`` counts
plus ``<name>.avg`` (a gauge, when there were observations). Names are dotted
(``predis_cache_hits_total`` → ``predis.cache.hits``); labels become ``key:value`` tags,
plus ``exporters.datadog.tags``; every series carries ``tags`` and ``host`` explicitly.

Requests are built here and sent with ``requests`` (the HTTP library the ``datadog``
package itself uses): ``datadog.api`` keeps its key and host in module globals, retries
on its own and reports 5xx and 413 answers without their status code, and the sink needs
the status to tell a retry from a split from a dead letter.

Limits (named constants, checked before sending): a v1 series payload stays under
:data:`MAX_PAYLOAD_BYTES` *uncompressed* (so it is under the compressed limit whether or not
compression is on) and :data:`MAX_SERIES_PER_PAYLOAD` series; names are at most
:data:`MAX_NAME_LENGTH` characters, tags :data:`MAX_TAG_LENGTH`.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import zlib
from collections.abc import Mapping
from typing import Any

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
from plugins.exporters.dogstatsd import DogStatsdExporter

log = logging.getLogger(__name__)

NAME = "datadog"
SECTION = "exporters.datadog"
# The exporters.datadog section: its schema, declared through predis_agent_config_sections.
SECTION_SCHEMA: dict[str, Any] = {
    "description": "Datadog series (v1 API), events and the readiness service check, through the datadog package's HTTP client.",
    "properties": {
        "enabled": {"type": "boolean", "default": False, "description": "Push to Datadog."},
        "mode": {
            "type": "string",
            "enum": ["api", "dogstatsd"],
            "default": "api",
            "description": "api: HTTPS series/events/check_run to api_host; dogstatsd: datagrams to a local Datadog Agent (statsd_host/statsd_port or statsd_socket_path).",
        },
        "api_host": {
            "type": "string",
            "pattern": r"^https?://[^\s]+$(?!\n)",
            "default": "https://api.datadoghq.com",
            "description": "API base URL (site): https://api.datadoghq.com, https://api.datadoghq.eu, https://api.us3.datadoghq.com, ... or a compatible receiver.",
        },
        "api_key": {
            "type": ["string", "null"],
            "writeOnly": True,
            "default": None,
            "description": "API key; give it as ${env:NAME}, ${file:/path} or ${cred:NAME}. It is re-read after a 401/403.",
        },
        "tags": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^[A-Za-z][^\s,|#@]*$(?!\n)", "maxLength": 200},
            "maxItems": 50,
            "default": [],
            "description": "Global tags added to every series and event (key:value).",
        },
        "host": {"type": ["string", "null"], "default": None, "description": "Host name sent with every series; null: this machine's host name."},
        "compress": {"type": "boolean", "default": True, "description": "Deflate-compress request bodies."},
        "events": {"type": "boolean", "default": True, "description": "Send agent events (drift, reload, breaker, rollout) as Datadog events."},
        "service_check": {"type": "boolean", "default": True, "description": "Send the readiness as the service check predis.agent.ready every push."},
        "interval": {
            "type": "number",
            "minimum": 1,
            "maximum": 86400,
            "default": 10,
            "description": "Seconds between two pushes (a multiple of agent.collect.interval_seconds is sensible; rounds in between are skipped).",
        },
        "statsd_host": {"type": "string", "default": "127.0.0.1", "description": "DogStatsD host (mode dogstatsd, UDP)."},
        "statsd_port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 8125, "description": "DogStatsD UDP port."},
        "statsd_socket_path": {"type": ["string", "null"], "default": None, "description": "DogStatsD Unix socket; when set it is used instead of UDP."},
    },
}

SERIES_PATH = "/api/v1/series"
CHECK_RUN_PATH = "/api/v1/check_run"
EVENTS_PATH = "/api/v1/events"

# POST /api/v1/series: 3.2 MB compressed, 62 MB decompressed (Datadog API reference).
MAX_PAYLOAD_BYTES = 3_200_000
# The Datadog Agent's own serializer chunks at 10,000 points per payload.
MAX_SERIES_PER_PAYLOAD = 10_000
# Metric names: start with a letter, ASCII alphanumerics, '_' and '.', at most 200 characters.
MAX_NAME_LENGTH = 200
MAX_TAG_LENGTH = 200
# Events: title up to 100 characters, text up to 4000.
MAX_EVENT_TITLE = 100
MAX_EVENT_TEXT = 4000
# Service check status values.
CHECK_OK = 0
CHECK_CRITICAL = 2
SERVICE_CHECK = "predis.agent.ready"

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*$")
_TAG_BAD = re.compile(r"[\s,|#@]")


class DatadogExporter:
    name = NAME

    def __init__(self, agent: Any, section: Mapping[str, Any]) -> None:
        self.agent = agent
        self.section = dict(section)
        self.api_host = str(section["api_host"]).rstrip("/")
        self._key_ref = section.get("api_key")
        self._key = secret_value(section, "api_key")
        self.host = section.get("host") or socket.gethostname()
        self.global_tags = [str(t) for t in section.get("tags", [])]
        self.compress = bool(section.get("compress", True))
        self.send_events = bool(section.get("events", True))
        self.service_check = bool(section.get("service_check", True))
        self.deltas = DeltaTracker()
        self._label_memo = LabelMemo(self._tags)
        self.last_report = EncodeReport()
        import requests  # here, not at import: loading the plugin stays cheap

        self._session = requests.Session()

    # -- encoding -----------------------------------------------------------------
    def _tags(self, labels: Mapping[str, str], report: EncodeReport) -> list[str]:
        tags = []
        for k, v in labels.items():
            tag = f"{k}:{_TAG_BAD.sub('_', v)}"
            if len(tag) > MAX_TAG_LENGTH:
                report.trim("tag_length")
                tag = tag[:MAX_TAG_LENGTH]
            tags.append(tag)
        return tags + self.global_tags

    def _series(self, p: Point, report: EncodeReport) -> list[dict[str, Any]]:
        name = dotted_name(p.name)
        if len(name) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(name):
            report.reject("invalid_name")
            return []
        tags = self._label_memo.get(p.labels, report)
        ts = int(p.timestamp)
        base = {"tags": tags, "host": self.host}
        interval = max(1, round(p.interval))
        if p.kind == "gauge":
            return [{"metric": name, "points": [[ts, p.value]], "type": "gauge", **base}]
        if p.kind == "count":
            return [{"metric": name, "points": [[ts, p.value]], "type": "count", "interval": interval, **base}]
        out = [
            {"metric": f"{name}.count", "points": [[ts, p.count]], "type": "count", "interval": interval, **base},
            {"metric": f"{name}.sum", "points": [[ts, p.sum]], "type": "count", "interval": interval, **base},
        ]
        if p.count > 0:
            out.append({"metric": f"{name}.avg", "points": [[ts, p.sum / p.count]], "type": "gauge", **base})
        return out

    def encode(self, batch: list[Any]) -> list[Payload]:
        report = EncodeReport()
        series: list[dict[str, Any]] = []
        for p in to_points(batch, self.deltas, report):
            series.extend(self._series(p, report))
        payloads = []
        overhead = json_size({"series": []})
        for items, size in chunk(series, max_items=MAX_SERIES_PER_PAYLOAD, max_bytes=MAX_PAYLOAD_BYTES, overhead=overhead):
            if size > MAX_PAYLOAD_BYTES:
                report.reject("series_too_large", len(items))
                continue
            payloads.append(Payload(body={"series": items}, points=len(items), nbytes=size))
        if self.service_check and self.agent is not None:
            payloads.append(self._check_payload())
        report.points = sum(p.points for p in payloads)
        report.payloads = len(payloads)
        report.bytes = sum(p.nbytes for p in payloads)
        self.last_report = report
        return payloads

    def _check_payload(self) -> Payload:
        readiness = getattr(self.agent, "readiness", {}) or {}
        ready = bool(readiness.get("ready"))
        failing = sorted(n for n, c in (readiness.get("components") or {}).items() if not c.get("ok"))
        body = {
            "check": SERVICE_CHECK,
            "host_name": self.host,
            "status": CHECK_OK if ready else CHECK_CRITICAL,
            "timestamp": int(time.time()),
            "message": "ready" if ready else f"not ready: {', '.join(failing) or 'not checked yet'}",
            "tags": list(self.global_tags),
        }
        return Payload(body=body, points=1, nbytes=json_size(body), kind="check")

    def encode_events(self, events: list[Any]) -> list[Payload]:
        if not self.send_events:
            return []
        out = []
        for event in events:
            data = event_fields(event.data, MAX_EVENT_TEXT)
            body = {
                "title": f"predis-agent: {event.kind}"[:MAX_EVENT_TITLE],
                "text": json.dumps(data, sort_keys=True)[:MAX_EVENT_TEXT],
                "date_happened": int(event.time),
                "host": self.host,
                "tags": [f"event:{event.kind}", *self.global_tags],
                "alert_type": "error" if event.kind in _ERROR_EVENTS else "info",
                "source_type_name": "predis",
            }
            out.append(Payload(body=body, points=1, nbytes=json_size(body), kind="event"))
        return out

    def split(self, payload: Payload) -> list[Payload] | None:
        if payload.kind != "metrics":
            return None
        return halve(payload, "series", lambda items: {"series": items}, len)

    # -- sending ------------------------------------------------------------------
    def refresh_credentials(self) -> None:
        reread = getattr(self._key_ref, "reread", None)
        if callable(reread):
            self._key = reread().reveal()

    def send(self, payload: Payload, timeout: float) -> None:
        if not self._key:
            raise ExportAuthError("exporters.datadog.api_key is not set")
        path = {"metrics": SERIES_PATH, "check": CHECK_RUN_PATH, "event": EVENTS_PATH}[payload.kind]
        data = payload.json_bytes()
        headers = {"DD-API-KEY": self._key, "Content-Type": "application/json"}
        if self.compress:
            data = zlib.compress(data)
            headers["Content-Encoding"] = "deflate"
        import requests

        try:
            response = self._session.post(self.api_host + path, data=data, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            raise TransientExportError(f"datadog: {exc.__class__.__name__}: {exc}") from None
        error = http_error(response.status_code, response.text, response.headers.get("Retry-After"), where="datadog: ")
        if error is not None:
            raise error

    def abort(self) -> None:
        """Close the connections of a stuck send (the sink's attempt deadline passed)."""
        import requests

        stuck, self._session = self._session, requests.Session()
        stuck.close()

    def close(self) -> None:
        self._session.close()


_ERROR_EVENTS = {"sink_auth_failed", "sink_payload_rejected", "config_reload_failed", "model_rolled_back"}


@hookimpl
def predis_agent_config_sections() -> dict[str, dict[str, Any]]:
    return {SECTION: SECTION_SCHEMA}


@hookimpl
def predis_agent_register_exporters(agent: Any, config: Any) -> list[Any]:
    section = agent.config.section(SECTION)
    if not section.get("enabled"):
        return []
    if section.get("mode") == "dogstatsd":
        return [DogStatsdExporter(agent, section, section.get("host") or socket.gethostname())]
    return [DatadogExporter(agent, section)]
