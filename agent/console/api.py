# SPDX-License-Identifier: Apache-2.0
"""The console's JSON API: ``GET /api/v1/roi``, ``/api/v1/series`` and ``/api/v1/events``.

Each answers from the history (:mod:`agent.history`) through :mod:`agent.roi`; the SQLite
reads run in a worker thread, never on the event loop. Authentication is the HTTP
server's (a bearer token, or the console's session). ``since`` is a Unix time in seconds
(default: one day back); anything else is a 400 naming the parameter.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from aiohttp import web

from agent import roi
from agent.errors import AgentError
from agent.http import Route, error_response, json_response

DEFAULT_WINDOW_SECONDS = 86400.0
FORMATS = ("json", "csv")
NO_STORE = {"Cache-Control": "no-store"}


class BadParameter(AgentError, ValueError):
    """A query parameter the API cannot use (the message names it)."""


def parse_since(request: web.Request, now: float | None = None) -> float:
    """The ``since`` parameter: a finite Unix time not in the future; default one day back."""
    now = time.time() if now is None else now
    raw = request.query.get("since")
    if raw is None or raw == "":
        return now - DEFAULT_WINDOW_SECONDS
    try:
        since = float(raw)
    except ValueError:
        raise BadParameter(f"since must be a Unix time in seconds, got {raw[:40]!r}") from None
    if not math.isfinite(since) or since < 0 or since > now:
        raise BadParameter(f"since must be a Unix time in seconds between 0 and now, got {raw[:40]!r}")
    return since


class ConsoleApi:
    """The API's handlers over ``agent`` (its config and its history component)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    @property
    def settings(self) -> roi.RoiSettings:
        return roi.RoiSettings.of(self.agent.config.section("console"))

    @property
    def history(self) -> Any:
        return self.agent.history.history

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/api/v1/roi", self.roi),
            Route("GET", "/api/v1/series", self.series),
            Route("GET", "/api/v1/events", self.events),
        ]

    async def roi(self, request: web.Request) -> web.StreamResponse:
        try:
            since = parse_since(request)
            fmt = request.query.get("format", "")
            if fmt not in ("", *FORMATS):
                raise BadParameter(f"format must be one of {', '.join(FORMATS)}, got {fmt[:20]!r}")
        except BadParameter as exc:
            return error_response(400, str(exc))
        report = await asyncio.to_thread(roi.report, self.history, since, self.settings)
        if fmt == "csv":
            return web.Response(
                text=roi.report_csv(report),
                content_type="text/csv",
                headers={**NO_STORE, "Content-Disposition": 'attachment; filename="predis-roi.csv"'},
            )
        response = json_response(report)
        response.headers.update(NO_STORE)
        if fmt == "json":
            response.headers["Content-Disposition"] = 'attachment; filename="predis-roi.json"'
        return response

    async def series(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("name", "")
        known = sorted(roi.DERIVED) + roi.stored_names()
        if name not in known:
            return error_response(400, f"name must be one of: {', '.join(known)}; got {name[:80]!r}")
        try:
            since = parse_since(request)
        except BadParameter as exc:
            return error_response(400, str(exc))
        history = self.history
        if history is None:
            body: dict[str, Any] = {"name": name, "unit": None, "points": [], "history": "off"}
        else:
            body = {**await asyncio.to_thread(roi.series, history, name, since), "history": "on"}
        response = json_response(body)
        response.headers.update(NO_STORE)
        return response

    async def events(self, request: web.Request) -> web.StreamResponse:
        try:
            since = parse_since(request)
        except BadParameter as exc:
            return error_response(400, str(exc))
        history = self.history
        found = [] if history is None else await asyncio.to_thread(roi.events, history, since)
        response = json_response({"events": found, "history": "off" if history is None else "on"})
        response.headers.update(NO_STORE)
        return response


def routes(agent: Any) -> list[Route]:
    """The API's routes for ``agent`` (registered with the agent's own)."""
    return ConsoleApi(agent).routes()
