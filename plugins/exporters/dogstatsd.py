# SPDX-License-Identifier: Apache-2.0
"""DogStatsD mode of the Datadog exporter (``exporters.datadog.mode: dogstatsd``).

Sends through the ``datadog`` package's ``DogStatsd`` client to a local Datadog Agent over
UDP or a Unix socket: gauges as ``g``, counter deltas as ``c`` (the Agent aggregates them
per flush), histograms as ``<name>.count``/``<name>.sum`` counts and ``<name>.avg``,
agent events as DogStatsD events and the readiness as a service check. The client packs
metrics into datagrams of at most :data:`MAX_UDP_DATAGRAM_BYTES` (UDP) or
:data:`MAX_UDS_DATAGRAM_BYTES` (UDS) and escapes event text; names and tags are
sanitised here (no ``|``, ``:`` in names, ``#``, ``@`` or ``,``).

UDP is fire-and-forget: a send "succeeds" when the datagram leaves the host. Socket errors
(no Agent on a Unix socket, a full buffer, a local UDP port refusing with ICMP) are counted
by the client, and the exporter turns a growing ``packets_dropped`` into a transient error,
so the sink's retries, circuit breaker and outage budget see the failure. The client counts
drops only with its telemetry on: it is on, with a flush interval that never comes, so it
sends no telemetry metrics of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.api import DeltaTracker, Payload, TransientExportError
from plugins.exporters.base import (
    EncodeReport,
    LabelMemo,
    chunk,
    dotted_name,
    event_fields,
    halve,
    json_size,
    to_points,
)

if TYPE_CHECKING:
    from datadog.dogstatsd.base import DogStatsd

# datadog-go's OptimalUDPPayloadSize; the Agent's default dogstatsd_buffer_size for UDS.
MAX_UDP_DATAGRAM_BYTES = 1432
MAX_UDS_DATAGRAM_BYTES = 8192
# Metric lines per payload handed to the client at once.
MAX_LINES_PER_PAYLOAD = 2000
MAX_NAME_LENGTH = 200
MAX_TAG_LENGTH = 200
MAX_EVENT_TITLE = 100
MAX_EVENT_TEXT = 4000
# The client keeps its drop counters only with telemetry on; this interval means its
# telemetry is never flushed (no datadog.dogstatsd.client.* metrics are sent).
TELEMETRY_NEVER_SECONDS = 10 * 365 * 86400

_NAME_BAD = re.compile(r"[^A-Za-z0-9_.]")
_TAG_BAD = re.compile(r"[\s,|#@]")


class DogStatsdExporter:
    name = "datadog"

    def __init__(self, agent: Any, section: Mapping[str, Any], host_name: str) -> None:
        self.agent = agent
        self.socket_path = section.get("statsd_socket_path")
        self.statsd_host = section.get("statsd_host", "127.0.0.1")
        self.statsd_port = int(section.get("statsd_port", 8125))
        self.global_tags = [str(t) for t in section.get("tags", [])]
        self.host = host_name
        self.send_events = bool(section.get("events", True))
        self.service_check = bool(section.get("service_check", True))
        self.deltas = DeltaTracker()
        self._label_memo = LabelMemo(self._tags)
        self.last_report = EncodeReport()
        self._client: DogStatsd | None = None

    def _tags(self, labels: Mapping[str, str], report: EncodeReport) -> list[str]:
        out = []
        for k, v in labels.items():
            tag = f"{_TAG_BAD.sub('_', k)}:{_TAG_BAD.sub('_', v)}"
            if len(tag) > MAX_TAG_LENGTH:
                report.trim("tag_length")
                tag = tag[:MAX_TAG_LENGTH]
            out.append(tag)
        return out

    def encode(self, batch: list[Any]) -> list[Payload]:
        report = EncodeReport()
        lines: list[list[Any]] = []
        for p in to_points(batch, self.deltas, report):
            name = _NAME_BAD.sub("_", dotted_name(p.name))[:MAX_NAME_LENGTH]
            tags = self._label_memo.get(p.labels, report)
            if p.kind == "gauge":
                lines.append(["g", name, p.value, tags])
            elif p.kind == "count":
                lines.append(["c", name, p.value, tags])
            else:
                lines.append(["c", f"{name}.count", p.count, tags])
                lines.append(["c", f"{name}.sum", p.sum, tags])
                if p.count > 0:
                    lines.append(["g", f"{name}.avg", p.sum / p.count, tags])
        payloads = [
            Payload(body={"lines": run}, points=len(run), nbytes=size)
            for run, size in chunk(lines, max_items=MAX_LINES_PER_PAYLOAD, max_bytes=1 << 30, overhead=0)
        ]
        if self.service_check and self.agent is not None:
            readiness = getattr(self.agent, "readiness", {}) or {}
            body = {"check": {"ready": bool(readiness.get("ready"))}}
            payloads.append(Payload(body=body, points=1, nbytes=json_size(body), kind="check"))
        report.points = sum(p.points for p in payloads)
        report.payloads = len(payloads)
        report.bytes = sum(p.nbytes for p in payloads)
        self.last_report = report
        return payloads

    def encode_events(self, events: list[Any]) -> list[Payload]:
        if not self.send_events:
            return []
        out = []
        for event in events:
            body = {
                "event": {
                    "title": f"predis-agent: {event.kind}"[:MAX_EVENT_TITLE],
                    "text": str(event_fields(event.data, MAX_EVENT_TEXT))[:MAX_EVENT_TEXT],
                    "date": int(event.time),
                    "kind": event.kind,
                }
            }
            out.append(Payload(body=body, points=1, nbytes=json_size(body), kind="event"))
        return out

    def split(self, payload: Payload) -> list[Payload] | None:
        return halve(payload, "lines", lambda items: {"lines": items}, len) if payload.kind == "metrics" else None

    def client(self) -> DogStatsd:
        if self._client is None:
            from datadog.dogstatsd.base import (
                DogStatsd,  # here, not at import: loading the plugin stays cheap
            )

            self._client = DogStatsd(
                host=None if self.socket_path else self.statsd_host,
                port=None if self.socket_path else self.statsd_port,
                socket_path=self.socket_path,
                constant_tags=list(self.global_tags),
                disable_telemetry=False,
                telemetry_min_flush_interval=TELEMETRY_NEVER_SECONDS,
                disable_buffering=False,
                max_buffer_len=MAX_UDS_DATAGRAM_BYTES if self.socket_path else MAX_UDP_DATAGRAM_BYTES,
                origin_detection_enabled=False,
            )
        return self._client

    def send(self, payload: Payload, timeout: float) -> None:
        client = self.client()
        before = client.packets_dropped
        body = payload.body
        if payload.kind == "metrics":
            for kind, name, value, tags in body["lines"]:
                if kind == "g":
                    client.gauge(name, value, tags=tags)
                else:
                    client.count(name, value, tags=tags)
        elif payload.kind == "check":
            from datadog.dogstatsd.base import DogStatsd

            ok = body["check"]["ready"]
            client.service_check("predis.agent.ready", DogStatsd.OK if ok else DogStatsd.CRITICAL, hostname=self.host, message="ready" if ok else "not ready")
        else:
            e = body["event"]
            client.event(e["title"], e["text"], date_happened=e["date"], hostname=self.host, tags=[f"event:{e['kind']}"], source_type_name="predis")
        client.flush_buffered_metrics()
        dropped = client.packets_dropped - before
        if dropped > 0:
            raise TransientExportError(f"dogstatsd: {dropped} datagram(s) could not be sent")

    def close(self) -> None:
        if self._client is not None:
            self._client.close_socket()
            self._client = None
