# SPDX-License-Identifier: Apache-2.0
"""The console as a browser-like HTTP client sees it: its routes, the login form, a session."""

from __future__ import annotations

import re

import requests

from tests.agentproc import AgentProcess

LOGIN = "/dashboard/login"
LOGOUT = "/dashboard/logout"
SESSION_COOKIE = "predis_session"
LOGIN_CSRF_COOKIE = "predis_login_csrf"
PAGES = ("overview", "roi", "prefetching", "models", "exporters")
CSRF_INPUT = re.compile(r'name="csrf" value="([^"]+)"')
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def console_routes(agent: AgentProcess) -> list[tuple[str, str]]:
    """Every console route (method, path) in the agent's route table, as /status lists it."""
    routes = [tuple(r.split(" ", 1)) for r in agent.status()["components"]["http"]["routes"]]
    return [(m, p) for m, p in routes if p == "/dashboard" or p.startswith("/dashboard/") or p.startswith("/api/v1/")]


def is_page(path: str) -> bool:
    return not path.startswith("/api/") and not path.startswith("/dashboard/static/")


def csrf_of(html: str) -> str:
    match = CSRF_INPUT.search(html)
    assert match, html
    return match.group(1)


def login(agent: AgentProcess, token: str | None = None) -> tuple[requests.Session, requests.Response]:
    """A session that fetched the login form and posted ``token``; the answer to the POST."""
    client = requests.Session()
    form = client.get(agent.base_url + LOGIN, timeout=10)
    assert form.status_code == 200, form.text
    answer = client.post(
        agent.base_url + LOGIN,
        data={"csrf": csrf_of(form.text), "token": token if token is not None else agent.token},
        allow_redirects=False,
        timeout=10,
    )
    return client, answer


def page_csrf(agent: AgentProcess, client: requests.Session, page: str = "overview") -> str:
    """The session's CSRF token, as the page's logout form carries it."""
    resp = client.get(f"{agent.base_url}/dashboard/{page}", allow_redirects=False, timeout=10)
    assert resp.status_code == 200, (resp.status_code, resp.headers)
    return csrf_of(resp.text)
