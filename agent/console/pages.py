# SPDX-License-Identifier: Apache-2.0
"""The console's routes: the login form, logout, the pages and their static files.

Pages are small HTML shells rendered here (the CSRF token of the session, whether history
is kept); ``static/console.js`` fills them from the JSON API (``/api/v1/roi``, ``series``,
``events``) and draws the charts with uPlot, vendored under ``static/uplot`` (MIT). No
script is inline, so the Content-Security-Policy allows scripts from the agent only.

The login form POSTs the API token in the body (never in a URL); a good token is exchanged
for a session cookie and the token itself is not kept. Failed logins are counted in
``predis_agent_http_auth_failures_total`` and limited per client address.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any

from aiohttp import web

from agent.console.gate import (
    CONSOLE_ROOT,
    CONSOLE_SCOPE,
    CSRF_FIELD,
    HOME_PATH,
    LOGIN_CSRF_COOKIE,
    LOGIN_FORM_SECONDS,
    LOGIN_PATH,
    LOGOUT_PATH,
    REQUEST_SESSION,
    SESSION_COOKIE,
    STATIC_PREFIX,
    ConsoleGate,
    clear_session_cookie,
    set_session_cookie,
)
from agent.console.sessions import CSRF_TOKEN_BYTES, new_secret
from agent.errors import AuthError
from agent.http import Route
from agent.logs import RateLimitedLog
from agent.security import scope_allows

log = logging.getLogger(__name__)

TOKEN_FIELD = "token"
CURRENT = ' aria-current="page"'


@dataclass(frozen=True)
class Page:
    """One tab of the console."""

    slug: str
    title: str
    lede: str


PAGES = (
    Page("overview", "Overview", "Hit ratio with and without prefetching, throughput, latency and memory."),
    Page("roi", "ROI", "What the cache and its prefetching are worth, from measurements only."),
    Page("prefetching", "Prefetching", "Precision, used and wasted prefetches, back-off, threshold and model cost."),
    Page("models", "Models", "The model served, its rollout, champion and challenger, and drift."),
    Page("exporters", "Exporters", "Each sink's circuit breaker, queue and outage budget."),
)

# Served files (under static/): content types by suffix.
STATIC_FILES = ("console.css", "console.js", "uplot/uPlot.iife.min.js", "uplot/uPlot.min.css", "uplot/LICENSE")
CONTENT_TYPES = {".css": "text/css", ".js": "text/javascript", "LICENSE": "text/plain"}


def _resource(*parts: str) -> str:
    return resources.files("agent.console").joinpath(*parts).read_text(encoding="utf-8")


def _content_type(name: str) -> str:
    for suffix, content_type in CONTENT_TYPES.items():
        if name.endswith(suffix):
            return content_type
    raise ValueError(f"no content type for static file {name}")


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _see_other(location: str) -> web.Response:
    """A redirect the handler returns (the dispatcher turns a raised one into JSON)."""
    return web.Response(status=303, headers={"Location": location})


class ConsolePages:
    """The console's handlers for one agent."""

    def __init__(self, agent: Any, gate: ConsoleGate) -> None:
        self.agent = agent
        self.gate = gate
        self.page_template = Template(_resource("templates", "page.html"))
        self.login_template = Template(_resource("templates", "login.html"))
        self.login_css = _resource("static", "console.css")
        # A client can fail logins as fast as it likes: logged once per agent.log.rate_limit_seconds.
        self.refusals = RateLimitedLog(log)
        self.static = {name: (_resource("static", *name.split("/")), _content_type(name)) for name in STATIC_FILES}

    def routes(self) -> list[Route]:
        routes = [
            Route("GET", CONSOLE_ROOT, self.root),
            Route("GET", LOGIN_PATH, self.login_form),
            Route("POST", LOGIN_PATH, self.login),
            Route("POST", LOGOUT_PATH, self.logout),
        ]
        routes += [Route("GET", f"{CONSOLE_ROOT}/{page.slug}", self._page_handler(page)) for page in PAGES]
        routes += [Route("GET", STATIC_PREFIX + name, self._static_handler(name)) for name in STATIC_FILES]
        return routes

    # -- login and logout ----------------------------------------------------------------
    async def root(self, request: web.Request) -> web.StreamResponse:
        return _see_other(HOME_PATH)

    def _render_login(self, request: web.Request, message: str = "", status: int = 200) -> web.Response:
        csrf = new_secret(CSRF_TOKEN_BYTES)
        response = _html(
            self.login_template.substitute(
                css=self.login_css,
                csrf=html.escape(csrf),
                message=f'<p class="error" role="alert">{html.escape(message)}</p>' if message else "",
            ),
            status,
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            csrf,
            max_age=LOGIN_FORM_SECONDS,
            path=LOGIN_PATH,
            httponly=True,
            samesite="Strict",
            secure=request.secure or None,
        )
        return response

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if self.gate.sessions.get(request.cookies.get(SESSION_COOKIE, "")) is not None:
            return _see_other(HOME_PATH)
        return self._render_login(request)

    async def login(self, request: web.Request) -> web.StreamResponse:
        address = request.remote or "unknown"
        if not self.gate.logins.allowed(address):
            self._count_failure()
            self.refusals.warning("console login from %s refused: too many failed logins", address)
            return self._render_login(request, "Too many failed logins from this address; try again in a minute.", 429)
        form = await request.post()
        token = form.get(TOKEN_FIELD)
        tokens = self.agent.tokens
        try:
            if tokens is None:
                raise AuthError("no token store configured")
            record = tokens.verify(token.strip() if isinstance(token, str) else None)
        except AuthError:
            self._count_failure()
            self.gate.logins.failed(address)
            self.refusals.warning("console login from %s refused: invalid token", address)
            return self._render_login(request, "That token is not valid.", 401)
        if not scope_allows(record.scope, CONSOLE_SCOPE):
            self._count_failure()
            self.refusals.warning("console login from %s refused: token %s has scope %s", address, record.id, record.scope)
            return self._render_login(
                request, f"That token's scope ({record.scope}) does not open the console; it needs {CONSOLE_SCOPE} or admin.", 403
            )
        session = self.gate.sessions.create(record.id)
        log.info("console login with token %s from %s", record.id, address)
        response = _see_other(HOME_PATH)
        set_session_cookie(request, response, session)
        response.del_cookie(LOGIN_CSRF_COOKIE, path=LOGIN_PATH)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = request.get(REQUEST_SESSION)
        if session is not None:
            self.gate.sessions.delete(session)
            log.info("console logout (token %s)", session.token_id)
        response = _see_other(LOGIN_PATH)
        clear_session_cookie(request, response)
        return response

    def _count_failure(self) -> None:
        self.agent.telemetry["predis_agent_http_auth_failures_total"].inc()

    # -- pages and files -----------------------------------------------------------------
    def _page_handler(self, page: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            session = request.get(REQUEST_SESSION)
            tabs = "".join(
                f'<a href="{CONSOLE_ROOT}/{p.slug}"{CURRENT if p is page else ""}>{html.escape(p.title)}</a>' for p in PAGES
            )
            history = self.agent.history.history
            return _html(
                self.page_template.substitute(
                    page=page.slug,
                    title=html.escape(page.title),
                    lede=html.escape(page.lede),
                    tabs=tabs,
                    csrf=html.escape(session.csrf if session is not None else ""),
                    csrf_field=CSRF_FIELD,
                    history="on" if history is not None else "off",
                    logout=LOGOUT_PATH,
                )
            )

        return handler

    def _static_handler(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        body, content_type = self.static[name]

        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(text=body, content_type=content_type, charset="utf-8")

        return handler
