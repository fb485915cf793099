# SPDX-License-Identifier: Apache-2.0
"""Console sessions and the login limiter on a clock the test moves: idle and absolute
lifetimes, the bound (oldest first), ids that are random and only match exactly, and failed
logins limited per address within a sliding window."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from agent.console.gate import ConsoleGate, cross_site, current_record, is_page, require_console_scope
from agent.console.sessions import (
    LOGIN_FAILURE_WINDOW_SECONDS,
    LOGIN_FAILURES_ALLOWED,
    LOGIN_LIMITER_ADDRESSES,
    LoginLimiter,
    SessionStore,
)
from agent.errors import AuthError
from agent.security import TokenStore, create_local_token


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_is_found_by_its_exact_id_only() -> None:
    store = SessionStore(900, 28800, 8, Clock())
    session = store.create("tok1")
    other = store.create("tok2")
    assert session.id != other.id and session.csrf != other.csrf and len(session.id) >= 43
    assert store.get(session.id) is session
    assert store.get(session.id[:-1]) is None
    assert store.get(session.id + "x") is None
    assert store.get("") is None
    assert store.get("é" * 43) is None
    store.delete(session)
    assert store.get(session.id) is None and store.get(other.id) is other


def test_idle_and_absolute_lifetimes() -> None:
    clock = Clock()
    store = SessionStore(10, 25, 8, clock)
    session = store.create("tok")
    for _ in range(2):
        clock.now += 9  # within the idle lifetime: each request restarts its clock
        assert store.get(session.id) is session
    clock.now += 8  # 26 s after login: past the absolute lifetime though never idle for 10 s
    assert store.get(session.id) is None
    idle = store.create("tok")
    clock.now += 10.5
    assert store.get(idle.id) is None
    assert len(store) == 0


def test_the_oldest_session_goes_first_when_full_and_when_the_bound_shrinks() -> None:
    store = SessionStore(900, 28800, 3, Clock())
    sessions = [store.create(f"tok{i}") for i in range(4)]
    assert [store.get(s.id) is not None for s in sessions] == [False, True, True, True]
    store.configure(900, 28800, 1)
    assert [store.get(s.id) is not None for s in sessions] == [False, False, False, True]
    assert len(store) == 1


def test_failed_logins_are_limited_per_address_within_the_window() -> None:
    clock = Clock()
    limiter = LoginLimiter(clock)
    for _ in range(LOGIN_FAILURES_ALLOWED):
        assert limiter.allowed("10.0.0.1")
        limiter.failed("10.0.0.1")
    assert not limiter.allowed("10.0.0.1")
    assert limiter.allowed("10.0.0.2")
    clock.now += LOGIN_FAILURE_WINDOW_SECONDS + 1
    assert limiter.allowed("10.0.0.1")


def test_the_limiter_remembers_a_bounded_number_of_addresses() -> None:
    limiter = LoginLimiter(Clock())
    for _ in range(LOGIN_FAILURES_ALLOWED):
        limiter.failed("first")
    assert not limiter.allowed("first")
    for i in range(LOGIN_LIMITER_ADDRESSES):
        limiter.failed(f"addr{i}")
    assert limiter.allowed("first")  # forgotten, the oldest, to keep the map bounded


def test_which_paths_the_gate_covers_and_which_are_pages() -> None:
    covers = ConsoleGate.covers
    assert covers("/dashboard") and covers("/dashboard/roi") and covers("/api/v1/roi")
    assert not covers("/dashboardx") and not covers("/status") and not covers("/api/v2/x")
    assert is_page("/dashboard/roi") and is_page("/dashboard")
    assert not is_page("/dashboard/static/console.js") and not is_page("/api/v1/roi")


def test_cross_site_is_read_from_the_browser_s_headers() -> None:
    def request(**headers: str) -> bool:
        return cross_site(make_mocked_request("POST", "/dashboard/logout", headers={"Host": "127.0.0.1:9470", **headers}))

    assert not request()
    assert not request(**{"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:9470"})
    assert request(**{"Sec-Fetch-Site": "cross-site"})
    assert request(**{"Sec-Fetch-Site": "same-site"})
    assert request(Origin="https://evil.example")
    # What a browser sends on the console's own form posts under Referrer-Policy: no-referrer.
    assert not request(Origin="null", **{"Sec-Fetch-Site": "same-origin"})
    assert request(Origin="null", **{"Sec-Fetch-Site": "cross-site"})
    assert request(Origin="https://127.0.0.1:9470")  # another scheme is another origin


def test_a_session_s_token_is_looked_up_again_local_token_included(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    _, reader = store.create("reader", "read")
    _, scraper = store.create("scraper", "metrics")
    assert current_record(store, reader.id) == reader
    assert require_console_scope(reader) == reader
    with pytest.raises(AuthError, match="scope metrics"):
        require_console_scope(scraper)
    local, _path = create_local_token(tmp_path / "run" / "local-token")
    assert current_record(store, local.id) is None
    store.local = local
    assert current_record(store, local.id) == local
    store.revoke(reader.id)
    assert current_record(store, reader.id) is None
