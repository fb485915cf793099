# SPDX-License-Identifier: Apache-2.0
"""The console in a real browser: headless Chromium (Debian's, driven by Playwright).

Login with a good token, a wrong one refused, an expired session sent back to the login
form, logout; every page drawn from a running agent under a workload with prefetching, the
files origin and an exporter whose endpoint is down: each chart has series with points,
the ROI page shows the figures /api/v1/roi gives and names the missing costs; a fresh agent
says "no data yet" (never 0), and one without history says it is off. A screenshot of every
page at laptop (1280x800) and phone (390x844) size is kept under ``$PREDIS_ARTIFACTS`` (or
the test's temporary directory), printed at the end of the test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.agentproc import AgentProcess
from tests.console_client import PAGES
from tests.polling import wait_for

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="the chromium browser is not installed (apt-get install chromium; .ci/run does)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

VIEWPORTS = {"laptop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
BLOCKS = 300
BURST = 1500  # requests per pipelined burst
BURST_KEYS = 300
DRIFT_WINDOW = 500
DRIFT_MIN_SAMPLES = 100
# Events the models page puts on its time axis.
TIMELINE_KINDS = ("drift_detected", "rollout_", "model_")
# The charts each page must draw with points under the workload below.
DRAWN = {
    "overview": ("hit_ratio", "ops_per_second", "latency_seconds", "memory_bytes"),
    "prefetching": (
        "prefetch_precision",
        "prefetch_per_second",
        "predis_cache_prefetch_threshold",
        "predis_cache_prefetch_backed_off",
        "prefetch_model_seconds_per_second",
    ),
    "models": ("predis_mlops_serving_version", "predis_mlops_rollout_share_ratio", "predis_drift_score"),
    "exporters": ("sink_breaker_state", "predis_agent_sink_queue_points", "predis_agent_sink_outage_budget_seconds"),
}
# What each drawn chart reads from /api/v1/series.
SERIES_OF = {"memory_bytes": "memory_bytes", **{key: key for keys in DRAWN.values() for key in keys}}
# Figures of the ROI page that grow with every collection round (the page and the test's own
# request see different rounds): present, not compared.
ROI_FIELDS_SKIPPED = {"window_seconds", "rounds"}
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
READY = "body[data-ready]"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = Path(os.environ["PREDIS_ARTIFACTS"]) if os.environ.get("PREDIS_ARTIFACTS") else tmp_path_factory.mktemp("artifacts")
    directory = root / "console-screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    yield directory
    print(f"\nconsole screenshots: {directory}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_in(browser: Any, agent: AgentProcess, viewport: dict[str, int], token: str | None = None) -> Any:
    """A new browser context logged in through the form; its page is on the overview."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(agent.base_url + "/dashboard")
    assert page.url.endswith("/dashboard/login")
    page.fill("#token", token or agent.token)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/overview")
    return page


def drawn_charts(page: Any) -> dict[str, list[int]]:
    """Each chart on the page: the number of points of each of its series (x first)."""
    result: dict[str, list[int]] = page.evaluate(
        "() => Object.fromEntries(Object.entries(window.predisCharts).map(([k, u]) => [k, u.data.map(s => s.filter(v => v !== null).length)]))"
    )
    return result


def open_page(page: Any, agent: AgentProcess, slug: str) -> None:
    page.goto(f"{agent.base_url}/dashboard/{slug}")
    page.wait_for_selector(READY, state="attached")


def shoot(page: Any, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def busy_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """An agent with history, prefetching from the files origin, and a Datadog exporter whose
    endpoint refuses connections (its breaker, queue and outage budget move), under reads."""
    tmp = tmp_path_factory.mktemp("busy")
    root = tmp / "origin"
    root.mkdir()
    for i in range(BLOCKS):
        (root / f"blk{i:04d}").write_bytes(f"block {i} ".encode() * 20)
    config = {
        "agent": {"reload": {"watch": False}},
        "cache": {
            "read_through": True,
            "origin": "files",
            "prefetch": {"enabled": True, "model": "stride", "depth": 4, "adaptive": False, "threshold": 0.1},
        },
        "plugins": {"files": {"root": str(root)}},
        "console": {"history_path": str(tmp / "history" / "history.sqlite3")},
        "exporters": {"datadog": {"enabled": True, "api_host": f"http://127.0.0.1:{free_port()}", "api_key": "${env:DD_KEY}", "interval": 1}},
        # Drift checks every second on small windows, so that scores and a detection show up.
        "collectors": {"access_log": {"enabled": True, "ring_capacity": 1 << 17}},
        "drift": {"check_interval_seconds": 1, "window_events": DRIFT_WINDOW, "min_samples": DRIFT_MIN_SAMPLES},
    }
    agent = AgentProcess(tmp, config, env={"DD_KEY": "console-test-key-not-secret"})
    agent.start()
    try:
        address = agent.status()["components"]["cache"]["resp"]["address"]
        client = redis.Redis(host="127.0.0.1", port=int(address.rsplit(":", 1)[1]), socket_timeout=10, protocol=2)
        runs = agent.status()["components"]["collection"]["runs"]
        for i in range(BLOCKS):
            assert client.get(f"blk{i:04d}") is not None
            if i % 50 == 49:  # spread the reads over several collection rounds
                wait_for(lambda n=runs + i // 50 + 1: agent.status()["components"]["collection"]["runs"] > n, what="a collection round")
        for i in range(0, BLOCKS, 3):
            client.get(f"blk{i:04d}")
        bursts = iter(range(1 << 20))

        def burst_until_drift() -> bool:
            """One burst of reads and writes on a key set that changes with every burst, then
            the next drift check; true once the agent has reported a drift."""
            shift = next(bursts)
            pipe = client.pipeline(transaction=False)
            for i in range(BURST):
                key = f"{'ab'[shift % 2]}:{(i * 7 + shift) % BURST_KEYS}"
                if i % 10 == 0:
                    pipe.set(key, b"v" * 64)
                else:
                    pipe.get(key)
            pipe.execute()
            checks = agent.status()["components"]["drift"]["checks"]
            wait_for(lambda: agent.status()["components"]["drift"]["checks"] > checks, what="a drift check")
            return any(e["kind"] == "drift_detected" for e in agent.get("/api/v1/events").json()["events"])

        wait_for(burst_until_drift, timeout=60, what="a drift detected in the history's events")
        client.close()

        def all_series_have_points() -> bool:
            for name in set(SERIES_OF.values()):
                resp = agent.get(f"/api/v1/series?name={name}")
                if resp.status_code != 200 or not resp.json()["points"]:
                    return False
            return True

        wait_for(all_series_have_points, timeout=60, what="every drawn series to have points")
        yield agent
    finally:
        agent.stop()


@pytest.mark.parametrize("size", list(VIEWPORTS))
def test_every_page_draws_its_charts_under_a_workload(browser: Any, busy_agent: AgentProcess, artifacts: Path, size: str) -> None:
    page = log_in(browser, busy_agent, VIEWPORTS[size])
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    for slug in PAGES:
        open_page(page, busy_agent, slug)
        shoot(page, artifacts, f"{slug}-{size}")
        assert page.locator(".notice.error").count() == 0, page.locator(".notice.error").all_inner_texts()
        charts = drawn_charts(page)
        for key in DRAWN.get(slug, ()):
            assert key in charts, (slug, key, charts)
            assert len(charts[key]) >= 2 and charts[key][0] >= 1 and all(n >= 1 for n in charts[key][1:]), (slug, key, charts)
        # A chart with nothing to draw says so (never zeros): none is left blank.
        for card in page.locator(".chart").all():
            assert card.locator("canvas").count() == 1 or card.inner_text().strip().endswith("no data yet"), card.inner_text()
        if size == "phone":  # one column: no chart wider than the screen
            widths = page.evaluate("() => Array.from(document.querySelectorAll('.chart')).map(c => c.getBoundingClientRect().right)")
            assert all(right <= VIEWPORTS["phone"]["width"] for right in widths), widths
    # The drift events are on the models page's time axis and listed under it.
    events = [e for e in busy_agent.get("/api/v1/events").json()["events"] if e["kind"].startswith(TIMELINE_KINDS)]
    assert any(e["kind"] == "drift_detected" for e in events), events
    open_page(page, busy_agent, "models")
    assert page.locator("table.events tr[data-kind]").count() == len(events)
    # One time axis for the page's charts, and every event on it.
    ranges = page.evaluate("() => Object.values(window.predisCharts).map(u => [u.scales.x.min, u.scales.x.max])")
    assert len(ranges) >= 3 and all(r == ranges[0] for r in ranges), ranges
    assert all(ranges[0][0] <= e["ts"] <= ranges[0][1] for e in events), (ranges[0], events)
    # The exporters page lists the AIOps events (forecasts, anomalies, actions): those the API
    # had when the page loaded, and nothing else.
    open_page(page, busy_agent, "exporters")
    assert page.locator("h2", has_text="AIOps: forecasts, anomalies and actions").count() == 1
    shown = page.locator("table.events tr[data-kind]").evaluate_all("rows => rows.map(r => r.dataset.kind)")
    kept = [e["kind"] for e in busy_agent.get("/api/v1/events").json()["events"] if e["kind"].startswith("aiops_")]
    assert all(kind.startswith("aiops_") for kind in shown) and len(shown) <= len(kept), (shown, kept)
    if not shown:
        assert page.get_by_text("No AIOps forecast, anomaly or action in this window.").count() == 1
    assert errors == []
    page.context.close()


def test_the_roi_page_shows_the_report_and_names_missing_costs(browser: Any, busy_agent: AgentProcess, artifacts: Path) -> None:
    page = log_in(browser, busy_agent, VIEWPORTS["laptop"])
    open_page(page, busy_agent, "roi")
    report = busy_agent.get(f"/api/v1/roi?since={page.evaluate('() => Math.floor(Date.now() / 1000) - 86400')}").json()
    figures = page.evaluate(
        "() => Object.fromEntries(Array.from(document.querySelectorAll('[data-field]')).map(e => [e.dataset.field, JSON.parse(e.dataset.value)]))"
    )
    assert report["status"] == "ok" and report["requests"] > 0, report
    assert len(figures) >= 20, figures
    for path, shown in figures.items():
        if path in ROI_FIELDS_SKIPPED:
            continue
        value: Any = report
        for key in path.split("."):
            value = value[key]
        assert shown == value, (path, shown, value)
    # Every figure of the report that is a number or null is on the page.
    flat = {k for k, v in report.items() if v is None or isinstance(v, (int, float, list)) and not isinstance(v, bool)} - {"missing", "notes"}
    flat |= {f"costs.{k}" for k in report["costs"] if k != "currency"} | {f"control.{k}" for k in report["control"] if k != "enough"}
    assert flat - set(figures) - {"since", "until"} == set(), flat - set(figures)
    # Too few reads in the never-prefetched control share: the page says so, and only then.
    notices = page.locator("#notices").inner_text()
    assert ("Not enough control traffic yet" in notices) == (not report["control"]["enough"]), (notices, report["control"])
    # No console.costs in the config: the missing costs are named, their figures not zero.
    assert report["missing"], report
    assert page.locator("[data-missing]").all_inner_texts() == report["missing"]
    for key in ("costs.net_per_day", "costs.avoided_per_day"):
        tile = page.locator(f'[data-field="{key}"] .value')
        assert tile.inner_text() == "cost not configured" if report["costs"][key.split(".")[1]] is None else tile.inner_text() != ""
    # The exports are links (GETs with the session's cookie), and they download.
    with page.expect_download() as download:
        page.click("text=Export CSV")
    assert download.value.suggested_filename == "predis-roi.csv"
    with page.expect_download() as download:
        page.click("text=Export JSON")
    saved = artifacts / "predis-roi.json"
    download.value.save_as(str(saved))
    assert json.loads(saved.read_text())["requests"] == report["requests"]
    page.context.close()


@pytest.fixture
def fresh_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp_path, {"console": {"history_path": str(tmp_path / "history" / "h.sqlite3")}})
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def test_login_wrong_token_logout(browser: Any, fresh_agent: AgentProcess, artifacts: Path) -> None:
    context = browser.new_context(viewport=VIEWPORTS["laptop"])
    page = context.new_page()
    page.goto(fresh_agent.base_url + "/dashboard/roi")
    assert page.url.endswith("/dashboard/login")
    shoot(page, artifacts, "login-laptop")
    page.fill("#token", fresh_agent.token[:-3] + "xyz")
    page.click("button[type=submit]")
    assert page.locator(".error").inner_text() == "That token is not valid."
    assert page.url.endswith("/dashboard/login")
    shoot(page, artifacts, "login-refused-laptop")
    assert not [c for c in context.cookies() if c["name"] == "predis_session"]
    page.fill("#token", fresh_agent.token)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/overview")
    (cookie,) = [c for c in context.cookies() if c["name"] == "predis_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert page.evaluate("() => document.cookie") == ""  # HttpOnly: no script reads it
    page.click("text=Log out")
    page.wait_for_url("**/dashboard/login")
    assert not [c for c in context.cookies() if c["name"] == "predis_session"]
    page.goto(fresh_agent.base_url + "/dashboard/overview")
    assert page.url.endswith("/dashboard/login")
    context.close()


def test_a_fresh_agent_says_no_data_yet(browser: Any, fresh_agent: AgentProcess, artifacts: Path) -> None:
    page = log_in(browser, fresh_agent, VIEWPORTS["laptop"])
    open_page(page, fresh_agent, "roi")
    shoot(page, artifacts, "roi-no-data-laptop")
    assert "No data yet" in page.locator("#notices").inner_text()
    values = page.locator("[data-field] .value").all_inner_texts()
    assert values and "0" not in values
    for key in ("requests", "hits", "hit_ratio"):
        assert page.locator(f'[data-field="{key}"] .value').inner_text() == "no data yet"
    for slug in ("prefetching", "models", "exporters"):
        open_page(page, fresh_agent, slug)
        shoot(page, artifacts, f"{slug}-no-data-laptop")
        tiles = page.locator(".tile .value").all_inner_texts()
        assert tiles and all(t in ("no data yet", "no push exporter measured yet") or t.strip() for t in tiles)
        assert "0" not in tiles
    page.context.close()


def test_without_history_every_page_says_it_is_off(browser: Any, tmp_path: Path, artifacts: Path) -> None:
    agent = AgentProcess(tmp_path)
    agent.start()
    try:
        page = log_in(browser, agent, VIEWPORTS["phone"])
        for slug in PAGES:
            open_page(page, agent, slug)
            assert "history is off: set console.history_path" in page.locator("#notices").inner_text().lower(), slug
            assert drawn_charts(page) == {}
        shoot(page, artifacts, "history-off-phone")
        page.context.close()
    finally:
        agent.stop()


def test_an_expired_session_goes_back_to_the_login_form(browser: Any, tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, {"console": {"session_max_seconds": 1}})
    agent.start()
    try:
        page = log_in(browser, agent, VIEWPORTS["laptop"])
        assert page.locator("h1").inner_text() == "Overview"
        wait_for(lambda: agent.status()["components"]["console"]["sessions"] == 0, what="the session to expire")
        page.click("text=ROI")
        page.wait_for_url("**/dashboard/login")
        assert page.locator("#token").is_visible()
        page.context.close()
    finally:
        agent.stop()
