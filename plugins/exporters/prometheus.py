# SPDX-License-Identifier: Apache-2.0
"""Prometheus pull exporter: serves the agent's metrics at ``/metrics``.

Text format 0.0.4 or OpenMetrics, chosen from the scraper's ``Accept`` header. The
route is authenticated like every other route; give Prometheus a token with
``authorization: {credentials_file: ...}`` in its scrape config, or list ``/metrics``
in ``agent.auth.anonymous_routes``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from agent import hookimpl
from agent.http import Route


@hookimpl
def predis_agent_config_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "path": {"type": "string", "pattern": "^/[A-Za-z0-9_./-]*$", "default": "/metrics", "description": "Route of the exposition."}
        },
    }


@hookimpl
def predis_agent_register_routes(agent: Any) -> list[Route]:
    registry = agent.telemetry.registry
    path = agent.config.plugin_config("prometheus").get("path", "/metrics")

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return [Route("GET", path, metrics)]
