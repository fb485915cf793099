# SPDX-License-Identifier: Apache-2.0
"""Prometheus pull exporter: serves the agent's metrics at ``/metrics``.

Text format 0.0.4 or OpenMetrics, chosen from the scraper's ``Accept`` header. Each
format is rendered once per collection round, lazily on the first scrape after the round
(off the event loop) and cached until the next round (``Telemetry.exposition``), so a
scrape never renders the registry again and scraping more often costs only a copy. The
route is authenticated like every other route; give Prometheus a token with
``authorization: {credentials_file: ...}`` in its scrape config, or list ``/metrics``
in ``agent.auth.anonymous_routes``. Configured under ``exporters.prometheus``
(``enabled``, ``path``, and ``listen`` to serve the exposition on a port of its own too,
run by the agent's runtime with the same TLS and token auth).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from agent.api import hookimpl

if TYPE_CHECKING:
    from aiohttp import web

    from agent.api import Route


SECTION = "exporters.prometheus"
# The exporters.prometheus section: its schema, declared through predis_agent_config_sections.
SECTION_SCHEMA: dict[str, Any] = {
    "description": "Pull endpoint on the agent's HTTP server (authenticated unless the path is in agent.auth.anonymous_routes).",
    "properties": {
        "enabled": {"type": "boolean", "default": True, "description": "Serve the exposition."},
        "path": {"type": "string", "pattern": r"^/[A-Za-z0-9_./-]*$(?!\n)", "default": "/metrics", "description": "Route of the exposition."},
        "listen": {
            "type": ["string", "null"],
            "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$(?!\n)",
            "default": None,
            "description": "Also serve the exposition on this host:port (only the exposition route, with agent.http's TLS and the same token auth unless the path is in agent.auth.anonymous_routes). null: only on the agent's HTTP API.",
        },
    },
}


@hookimpl
def predis_agent_config_sections() -> dict[str, dict[str, Any]]:
    return {SECTION: SECTION_SCHEMA}


@hookimpl
def predis_agent_register_routes(agent: Any) -> list[Route]:
    from aiohttp import web  # here, not at import: loading the plugin stays cheap

    from agent.api import Route

    section = agent.config.section(SECTION)
    if not section.get("enabled", True):
        return []
    telemetry = agent.telemetry
    path = section["path"]

    async def metrics(request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "")
        body, content_type = await asyncio.get_running_loop().run_in_executor(None, telemetry.exposition, accept)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return [Route("GET", path, metrics, scope="metrics")]
