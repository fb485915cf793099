# SPDX-License-Identifier: Apache-2.0
"""Prometheus pull exporter: serves the agent's metrics at ``/metrics``.

Text format 0.0.4 or OpenMetrics, chosen from the scraper's ``Accept`` header. Each
format is rendered once per collection round, lazily on the first scrape after the round
(off the event loop) and cached until the next round (``Telemetry.exposition``), so a
scrape never renders the registry again and scraping more often costs only a copy. The
route is authenticated like every other route; give Prometheus a token with
``authorization: {credentials_file: ...}`` in its scrape config, or list ``/metrics``
in ``agent.auth.anonymous_routes``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

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
    telemetry = agent.telemetry
    path = agent.config.plugin_config("prometheus").get("path", "/metrics")

    async def metrics(request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "")
        body, content_type = await asyncio.get_running_loop().run_in_executor(None, telemetry.exposition, accept)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return [Route("GET", path, metrics)]
