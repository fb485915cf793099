# SPDX-License-Identifier: Apache-2.0
"""The console's security against a running agent: every console route refuses without a
session (the routes listed from the agent's own route table), cross-site and CSRF-less POSTs
are refused (login and logout), the cookies carry their flags (Secure under TLS), sessions
end when idle, when too old, at logout and when their token is revoked, failed logins are
counted and rate-limited, nothing listens beyond loopback by default, and neither a token
nor a session id reaches the agent's log."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
import requests
import yaml

from agent.console.sessions import LOGIN_FAILURES_ALLOWED
from tests.agentproc import AgentProcess, cli, merge
from tests.console_client import (
    LOGIN,
    LOGIN_CSRF_COOKIE,
    LOGOUT,
    PAGES,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    console_routes,
    csrf_of,
    is_page,
    login,
    page_csrf,
)
from tests.integration.test_cli_tls_tracing import make_cert
from tests.polling import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.security]

EVIL_ORIGIN = "https://evil.example"
AUTH_FAILURES = "predis_agent_http_auth_failures_total"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    proc = AgentProcess(tmp_path, {"agent": {"log": {"level": "debug"}}, "console": {"history_path": str(tmp_path / "history" / "h.sqlite3")}})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def cookie_attributes(response: requests.Response, name: str) -> dict[str, str | bool]:
    """The attributes of the Set-Cookie for ``name`` (keys lower-case; flags as True)."""
    for header in response.raw.headers.getlist("Set-Cookie"):
        parsed = SimpleCookie()
        parsed.load(header)
        if name in parsed:
            morsel = parsed[name]
            attrs: dict[str, str | bool] = {"value": morsel.value}
            for part in header.split(";")[1:]:
                key, _, value = part.strip().partition("=")
                attrs[key.lower()] = value if value else True
            return attrs
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers}")


def assert_console_headers(response: requests.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.url, name, response.headers)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0], csp
    assert "frame-ancestors 'none'" in csp, csp


def test_every_console_route_refuses_without_a_session(agent: AgentProcess) -> None:
    routes = console_routes(agent)
    paths = {path for _method, path in routes}
    expected = {LOGIN, LOGOUT, "/dashboard", "/api/v1/roi", "/api/v1/series", "/api/v1/events", "/dashboard/static/console.js"}
    assert expected | {f"/dashboard/{p}" for p in PAGES} <= paths, routes
    assert ("POST", LOGIN) in routes and ("GET", LOGIN) in routes and ("POST", LOGOUT) in routes
    forged = {SESSION_COOKIE: "A" * 43}
    for method, path in routes:
        if path == LOGIN:
            continue
        for cookies in ({}, forged):
            resp = requests.request(method, agent.base_url + path, cookies=cookies, allow_redirects=False, timeout=10)
            if is_page(path):
                assert resp.status_code == 303 and resp.headers["Location"] == LOGIN, (method, path, resp.status_code)
            else:
                assert resp.status_code == 401 and "error" in resp.json(), (method, path, resp.status_code)
            assert_console_headers(resp)
    # The login form is the one anonymous console route; a bearer token opens the rest.
    form = requests.get(agent.base_url + LOGIN, timeout=10)
    assert form.status_code == 200 and 'type="password"' in form.text
    assert_console_headers(form)
    for method, path in routes:
        if method == "GET" and path != LOGIN:
            resp = agent.get(path + ("?name=hit_ratio" if path == "/api/v1/series" else ""), allow_redirects=False)
            assert resp.status_code in (200, 303), (path, resp.status_code, resp.text)
            assert_console_headers(resp)


def test_login_sets_a_strict_cookie_and_logout_ends_the_session(agent: AgentProcess) -> None:
    client, answer = login(agent)
    assert answer.status_code == 303 and answer.headers["Location"] == "/dashboard/overview"
    cookie = cookie_attributes(answer, SESSION_COOKIE)
    assert cookie["httponly"] is True and cookie["samesite"] == "Strict" and cookie["path"] == "/", cookie
    assert "secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
    session_id = str(cookie["value"])
    assert len(session_id) >= 43 and agent.token not in session_id
    assert agent.status()["components"]["console"]["sessions"] == 1

    # With a session, the console's root and the login form lead to the overview.
    for path in ("/dashboard", LOGIN):
        resp = client.get(agent.base_url + path, allow_redirects=False, timeout=10)
        assert resp.status_code == 303 and resp.headers["Location"] == "/dashboard/overview", (path, resp.headers)
    csrf = page_csrf(agent, client)
    for page in PAGES:
        resp = client.get(f"{agent.base_url}/dashboard/{page}", allow_redirects=False, timeout=10)
        assert resp.status_code == 200 and f'data-page="{page}"' in resp.text
        assert "<script>" not in resp.text and agent.token not in resp.text and session_id not in resp.text
        assert_console_headers(resp)
    api = client.get(agent.base_url + "/api/v1/roi", timeout=10)
    assert api.status_code == 200 and api.json()["status"] in ("no_data", "ok")
    assert_console_headers(api)

    # Logout is a POST that needs the session's CSRF token.
    refused = client.post(agent.base_url + LOGOUT, allow_redirects=False, timeout=10)
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    refused = client.post(agent.base_url + LOGOUT, data={"csrf": ("y" if csrf[0] == "x" else "x") + csrf[1:]}, allow_redirects=False, timeout=10)
    assert refused.status_code == 403
    assert client.get(agent.base_url + "/dashboard/roi", allow_redirects=False, timeout=10).status_code == 200
    out = client.post(agent.base_url + LOGOUT, data={"csrf": csrf}, allow_redirects=False, timeout=10)
    assert out.status_code == 303 and out.headers["Location"] == LOGIN
    cleared = cookie_attributes(out, SESSION_COOKIE)
    assert cleared["value"] == "" and cleared["max-age"] == "0", cleared
    # The old cookie, sent again, opens nothing.
    replay = requests.get(agent.base_url + "/dashboard/overview", cookies={SESSION_COOKIE: session_id}, allow_redirects=False, timeout=10)
    assert replay.status_code == 303 and replay.headers["Location"] == LOGIN
    assert agent.status()["components"]["console"]["sessions"] == 0

    # The header works as well as the form field (what a script on the page would send).
    client, _ = login(agent)
    header = client.post(agent.base_url + LOGOUT, headers={"X-CSRF-Token": page_csrf(agent, client)}, allow_redirects=False, timeout=10)
    assert header.status_code == 303

    # Nothing in the log carries the token, a session id or a CSRF token.
    logs = agent.logs()
    assert "console login with token" in logs
    for secret in (agent.token, agent.token.rsplit("_", 1)[1], session_id, csrf):
        assert secret not in logs


def test_a_token_in_a_url_opens_nothing_and_a_cookie_only_the_console(agent: AgentProcess) -> None:
    form = requests.get(f"{agent.base_url}{LOGIN}?token={agent.token}", allow_redirects=False, timeout=10)
    assert form.status_code == 200 and SESSION_COOKIE not in form.cookies
    assert 'method="post" action="/dashboard/login"' in form.text
    client = requests.Session()
    page = client.get(agent.base_url + LOGIN, timeout=10)
    by_query = client.post(
        f"{agent.base_url}{LOGIN}?token={agent.token}", data={"csrf": csrf_of(page.text)}, allow_redirects=False, timeout=10
    )
    assert by_query.status_code == 401 and SESSION_COOKIE not in by_query.cookies
    # A session opens the console, not the rest of the API.
    client, answer = login(agent)
    assert answer.status_code == 303
    for path in ("/status", "/metrics", "/readyz"):
        assert client.get(agent.base_url + path, timeout=10).status_code == 401, path
    assert client.post(agent.base_url + "/reload", timeout=10).status_code == 401


def test_a_reload_retunes_sessions_in_place(agent: AgentProcess) -> None:
    first, _ = login(agent)
    second, _ = login(agent)
    agent.write_config(merge(agent.config, {"console": {"max_sessions": 1}}))
    assert agent.post("/reload").status_code == 200
    assert agent.status()["components"]["console"]["sessions"] == 1
    assert first.get(agent.base_url + "/dashboard/overview", allow_redirects=False, timeout=10).status_code == 303
    assert second.get(agent.base_url + "/dashboard/overview", allow_redirects=False, timeout=10).status_code == 200


def test_cross_site_posts_are_refused(agent: AgentProcess) -> None:
    # Login: a cross-site form post, and one without the pre-session cookie (login CSRF).
    for headers in ({"Origin": EVIL_ORIGIN}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null", "Sec-Fetch-Site": "cross-site"}):
        client = requests.Session()
        form = client.get(agent.base_url + LOGIN, timeout=10)
        resp = client.post(
            agent.base_url + LOGIN, data={"csrf": csrf_of(form.text), "token": agent.token}, headers=headers, allow_redirects=False, timeout=10
        )
        assert resp.status_code == 403 and SESSION_COOKIE not in resp.cookies, headers
    form = requests.get(agent.base_url + LOGIN, timeout=10)
    forged = requests.post(agent.base_url + LOGIN, data={"csrf": csrf_of(form.text), "token": agent.token}, allow_redirects=False, timeout=10)
    assert forged.status_code == 403 and SESSION_COOKIE not in forged.cookies
    mismatched = requests.post(
        agent.base_url + LOGIN,
        data={"csrf": "y" * 43, "token": agent.token},
        cookies={LOGIN_CSRF_COOKIE: form.cookies[LOGIN_CSRF_COOKIE]},
        allow_redirects=False,
        timeout=10,
    )
    assert mismatched.status_code == 403 and SESSION_COOKIE not in mismatched.cookies
    # The same origin, as a browser sends it, is let through.
    client, answer = login(agent)
    assert answer.status_code == 303
    # Logout: the right CSRF token but a cross-site origin is refused; the session lives on.
    csrf = page_csrf(agent, client)
    for headers in ({"Origin": EVIL_ORIGIN}, {"Sec-Fetch-Site": "same-site"}):
        resp = client.post(agent.base_url + LOGOUT, data={"csrf": csrf}, headers=headers, allow_redirects=False, timeout=10)
        assert resp.status_code == 403, headers
    assert client.get(agent.base_url + "/dashboard/overview", allow_redirects=False, timeout=10).status_code == 200
    same = client.post(
        agent.base_url + LOGOUT, data={"csrf": csrf}, headers={"Origin": agent.base_url, "Sec-Fetch-Site": "same-origin"}, allow_redirects=False, timeout=10
    )
    assert same.status_code == 303


def test_wrong_tokens_are_counted_and_rate_limited(agent: AgentProcess) -> None:
    before = agent.metric(AUTH_FAILURES) or 0
    wrong = agent.token[:-4] + ("aaaa" if not agent.token.endswith("aaaa") else "bbbb")
    for attempt in range(LOGIN_FAILURES_ALLOWED):
        client, answer = login(agent, wrong)
        assert answer.status_code == 401 and "not valid" in answer.text, attempt
        assert SESSION_COOKIE not in answer.cookies
    wait_for(lambda: agent.metric(AUTH_FAILURES) == before + LOGIN_FAILURES_ALLOWED, what="the failed logins counted")
    # Past the limit even the right token is refused from this address for now.
    client, answer = login(agent)
    assert answer.status_code == 429 and SESSION_COOKIE not in answer.cookies
    wait_for(lambda: agent.metric(AUTH_FAILURES) == before + LOGIN_FAILURES_ALLOWED + 1, what="the refused login counted")
    assert wrong not in agent.logs() and agent.token not in agent.logs()


def test_a_revoked_token_ends_its_sessions_at_once(agent: AgentProcess) -> None:
    second = agent.create_token("second")
    token_id = second.split("_")[1]
    client, answer = login(agent, second)
    assert answer.status_code == 303
    other, _ = login(agent)
    assert client.get(agent.base_url + "/api/v1/events", timeout=10).status_code == 200
    cli("token", "revoke", token_id, "--config", str(agent.config_path), env=agent.env)
    page = client.get(agent.base_url + "/dashboard/overview", allow_redirects=False, timeout=10)
    assert page.status_code == 303 and page.headers["Location"] == LOGIN
    assert client.get(agent.base_url + "/api/v1/events", timeout=10).status_code == 401
    # The other token's session is untouched.
    assert other.get(agent.base_url + "/dashboard/overview", allow_redirects=False, timeout=10).status_code == 200


def test_a_metrics_token_does_not_open_the_console(agent: AgentProcess) -> None:
    metrics_only = cli("token", "create", "--config", str(agent.config_path), "--name", "scraper", "--scope", "metrics", env=agent.env).stdout.strip()
    reader = cli("token", "create", "--config", str(agent.config_path), "--name", "reader", "--scope", "read", env=agent.env).stdout.strip()
    client, answer = login(agent, metrics_only)
    assert answer.status_code == 403 and "scope (metrics)" in answer.text and SESSION_COOKIE not in answer.cookies
    assert agent.get("/api/v1/roi", token=metrics_only).status_code == 401
    page = agent.get("/dashboard/overview", token=metrics_only, allow_redirects=False)
    assert page.status_code == 303 and page.headers["Location"] == LOGIN
    # A read token opens it, by login and by bearer.
    client, answer = login(agent, reader)
    assert answer.status_code == 303
    assert client.get(agent.base_url + "/dashboard/roi", allow_redirects=False, timeout=10).status_code == 200
    assert agent.get("/api/v1/roi", token=reader).status_code == 200


@pytest.mark.parametrize("lifetime", ["session_ttl_seconds", "session_max_seconds"])
def test_sessions_expire(tmp_path: Path, lifetime: str) -> None:
    agent = AgentProcess(tmp_path, {"console": {lifetime: 1}})
    agent.start()
    try:
        client, answer = login(agent)
        assert answer.status_code == 303
        assert client.get(agent.base_url + "/dashboard/overview", allow_redirects=False, timeout=10).status_code == 200
        # Polled through /status, which does not touch the session's idle clock.
        wait_for(lambda: agent.status()["components"]["console"]["sessions"] == 0, what="the session to expire")
        page = client.get(agent.base_url + "/dashboard/overview", allow_redirects=False, timeout=10)
        assert page.status_code == 303 and page.headers["Location"] == LOGIN
    finally:
        agent.stop()


def test_a_full_store_ends_the_oldest_session(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, {"console": {"max_sessions": 2}})
    agent.start()
    try:
        clients = [login(agent)[0] for _ in range(3)]
        codes = [c.get(agent.base_url + "/dashboard/overview", allow_redirects=False, timeout=10).status_code for c in clients]
        assert codes == [303, 200, 200]
    finally:
        agent.stop()


def test_cookies_are_secure_under_tls(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    agent = AgentProcess(tmp_path, {"agent": {"http": {"tls": {"enabled": True, "cert_file": str(cert), "key_file": str(key)}}}})
    agent.start()
    try:
        assert agent.base_url.startswith("https://")
        client = requests.Session()
        # Per request: a CA bundle named in the environment would override Session.verify.
        form = client.get(agent.base_url + LOGIN, verify=str(cert), timeout=10)
        assert cookie_attributes(form, LOGIN_CSRF_COOKIE)["secure"] is True
        answer = client.post(
            agent.base_url + LOGIN, data={"csrf": csrf_of(form.text), "token": agent.token}, verify=str(cert), allow_redirects=False, timeout=10
        )
        cookie = cookie_attributes(answer, SESSION_COOKIE)
        assert cookie["secure"] is True and cookie["httponly"] is True and cookie["samesite"] == "Strict", cookie
        page = client.get(agent.base_url + "/dashboard/overview", verify=str(cert), allow_redirects=False, timeout=10)
        assert page.status_code == 200
    finally:
        agent.stop()


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    # /proc/net/tcp{,6} print each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def listening_addresses(pid: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The local addresses of the TCP sockets process ``pid`` listens on."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if match:
            inodes.add(match.group(1))
    found = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(_address(fields[1].split(":")[0]))
    return found


def test_nothing_listens_beyond_loopback_by_default(agent: AgentProcess, tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    defaults = yaml.safe_load(cli("config", "show", "--config", str(empty), env=agent.env).stdout)

    def listens(node: object) -> list[str]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "listen" and isinstance(v, str)] + [x for v in node.values() for x in listens(v)]
        return []

    addresses = listens(defaults)
    assert addresses, defaults
    for listen in addresses:
        assert ipaddress.ip_address(listen.rsplit(":", 1)[0].strip("[]")).is_loopback, listen
    assert agent.proc is not None
    bound = listening_addresses(agent.proc.pid)
    assert len(bound) >= 2 and all(a.is_loopback for a in bound), bound
