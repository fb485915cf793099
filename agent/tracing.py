# SPDX-License-Identifier: Apache-2.0
"""OpenTelemetry spans around reload, collection and export.

With no ``agent.tracing.otlp_endpoint`` the tracer is OpenTelemetry's no-op one and a
span costs a function call. With an endpoint, spans are batched and sent over OTLP/HTTP
from the SDK's own thread. The provider is owned by the agent (not installed globally),
so reconfiguring on reload simply replaces it.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import trace

from agent import __version__

log = logging.getLogger(__name__)


class Tracing:
    def __init__(self) -> None:
        self._provider: Any = None
        self._tracer: Any = trace.NoOpTracer()
        self.endpoint: str | None = None

    def configure(self, section: dict[str, Any]) -> None:
        endpoint = section.get("otlp_endpoint")
        self.shutdown()
        self.endpoint = endpoint
        if not endpoint:
            self._tracer = trace.NoOpTracer()
            return
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

        resource = Resource.create({"service.name": section["service_name"], "service.version": __version__})
        provider = TracerProvider(resource=resource, sampler=ParentBasedTraceIdRatio(section["sample_ratio"]))
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=section["export_timeout_seconds"])
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        self._provider = provider
        self._tracer = provider.get_tracer("predis_agent", __version__)
        log.info("tracing: exporting spans to %s", endpoint)

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Any]:
        return self._tracer.start_as_current_span(name, attributes=attributes or None)

    def flush(self, timeout_ms: int = 2000) -> None:
        if self._provider is not None:
            self._provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        if self._provider is not None:
            try:
                self._provider.shutdown()
            except Exception as exc:
                log.warning("tracing shutdown failed: %s", exc)
            self._provider = None
