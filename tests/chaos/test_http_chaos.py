# SPDX-License-Identifier: Apache-2.0
"""A real agent against an HTTP connection flood and oversized chunked bodies (issue 21,
item 7: 720 idle HTTP connections exhausted the descriptors, took down Redis, HTTP, origin
reads and export, and wrote 529k log lines in 5 s; a chunked body bypassed
``agent.http.max_request_bytes``).

The agent's open-file limit is lowered after it starts (``prlimit``), so that a few hundred
idle connections are enough to reach it. With the limits at their defaults the flood is
refused (503) before the descriptors run out: the Redis port keeps answering PING, the idle
connections are closed at the header deadline, and the log gets a handful of lines. With
the limits taken away (no cap, no reserve), ``accept()`` fails with EMFILE and the log
still gets a bounded number of lines, one per interval with a count.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.agentproc import AgentProcess
from tests.polling import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.security]

# Idle connections the test opens: as many as in the finding, which exhausted a limit of 1024.
FLOOD = 720
# The open-file limits the agent is given once started: the finding's 1024 (the connection
# cap stops the flood), and 256, below the cap (the descriptor reserve stops it).
FINDING_NOFILE = 1024
LOW_NOFILE = 256
# Short, so that the flood's idle connections are closed while the test waits.
HEADER_TIMEOUT_SECONDS = 2
# How long the test waits for something the agent should do (never asserted on).
PATIENCE = 30.0
# Log lines the flood may add: a few rate-limited warnings (one per kind and interval), far
# from the finding's 529k.
MAX_FLOOD_LOG_LINES = 12
PINGS = 20
COLLECT_INTERVAL_SECONDS = 10
# How long clients keep connecting while the agent has no descriptor to spare.
EXHAUSTED_SECONDS = 3.0
CONNECT_TIMEOUT_SECONDS = 0.2
# agent.http.max_request_bytes for the chunked-body test (the schema's default, 1 MiB).
BODY_LIMIT = 1048576


def resp_port(agent: AgentProcess) -> int:
    address = agent.status()["components"]["cache"]["resp"]["address"]
    return int(address.rsplit(":", 1)[1])


def http_port(agent: AgentProcess) -> int:
    return int(agent.base_url.rsplit(":", 1)[1])


def ping(port: int) -> bytes:
    """One PING on a fresh connection, over a raw socket (no client library retries)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def log_lines(agent: AgentProcess) -> int:
    return len((agent.tmp / "stderr.log").read_text(errors="replace").splitlines())


def open_flood(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send nothing (a connect refused or timed out is skipped)."""
    socks: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        socks.append(sock)
    return socks


def closed_by_agent(sock: socket.socket, seen: dict[int, bytes]) -> bool:
    """Whether the agent has closed ``sock``; what it sent first is kept in ``seen``."""
    key = id(sock)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
            seen[key] = seen.get(key, b"") + data
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_all_closed(socks: list[socket.socket]) -> dict[int, bytes]:
    seen: dict[int, bytes] = {}
    pending = list(socks)

    def progress() -> bool:
        pending[:] = [s for s in pending if not closed_by_agent(s, seen)]
        return not pending

    wait_for(progress, timeout=PATIENCE, interval=0.1, what=f"the agent to close every flood connection ({len(pending)} open)")
    return seen


@pytest.fixture
def flood_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    config: dict[str, Any] = {
        "agent": {
            "http": {"header_timeout_seconds": HEADER_TIMEOUT_SECONDS},
            # The schema's default: a collector that fails for want of a descriptor logs once
            # per round, and the harness's fast rounds would make that the test's noise.
            "collect": {"interval_seconds": COLLECT_INTERVAL_SECONDS},
        }
    }
    agent = AgentProcess(tmp_path, config).start()
    try:
        yield agent
    finally:
        agent.stop()


def lower_nofile(agent: AgentProcess, limit: int) -> None:
    assert agent.proc is not None
    held = len(os.listdir(f"/proc/{agent.proc.pid}/fd"))
    assert held < limit // 4, f"the agent already holds {held} descriptors"
    resource.prlimit(agent.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))


@pytest.mark.parametrize(("limit", "reason"), [(FINDING_NOFILE, "max_connections"), (LOW_NOFILE, "descriptors")])
def test_idle_connection_flood_is_refused_before_descriptors_run_out(
    flood_agent: AgentProcess, limit: int, reason: str
) -> None:
    agent = flood_agent
    rport, hport = resp_port(agent), http_port(agent)
    lower_nofile(agent, limit)
    before = log_lines(agent)

    socks = open_flood(hport, FLOOD)
    try:
        # Past the reserve the agent refuses (503) instead of running out: Redis keeps serving.
        for _ in range(PINGS):
            assert ping(rport) == b"+PONG\r\n"
        seen = wait_all_closed(socks)
    finally:
        for sock in socks:
            sock.close()
    refused = sum(1 for data in seen.values() if data.startswith(b"HTTP/1.1 503"))
    assert refused > 0, "no connection was refused"
    assert refused < len(socks), "every connection was refused: none was held idle"
    assert ping(rport) == b"+PONG\r\n"

    def scraped() -> dict[str, float] | None:
        resp = agent.get("/metrics")
        if resp.status_code != 200:
            return None
        values: dict[str, float] = {}
        for line in resp.text.splitlines():
            name, _, value = line.rpartition(" ")
            if name.startswith("predis_agent_http_"):
                values[name] = float(value)
        return values

    metrics = wait_for(scraped, timeout=PATIENCE, what="a /metrics answer after the flood")
    assert metrics.get(f'predis_agent_http_connections_refused_total{{reason="{reason}"}}', 0) >= refused
    assert metrics.get('predis_agent_http_timeouts_total{phase="idle"}', 0) >= len(socks) - refused
    added = log_lines(agent) - before
    assert added <= MAX_FLOOD_LOG_LINES, (agent.tmp / "stderr.log").read_text()[-3000:]


def test_accept_failures_write_a_bounded_number_of_log_lines(flood_agent: AgentProcess) -> None:
    """With its open-file limit below what it holds, every accept() of the agent fails with
    EMFILE, on the HTTP port and on the Redis port, for as long as clients keep connecting.
    Each failure is counted; the log gets one line per kind and interval; once the limit is
    back, both ports serve again."""
    agent = flood_agent
    rport, hport = resp_port(agent), http_port(agent)
    assert agent.proc is not None
    pid = agent.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    held = len(os.listdir(f"/proc/{pid}/fd"))
    before = log_lines(agent)
    attempts = 0
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (held // 2, hard))
    try:
        attack_ends = time.monotonic() + EXHAUSTED_SECONDS
        while time.monotonic() < attack_ends:
            for port in (hport, rport):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_SECONDS).close()
                    attempts += 1
                except OSError:
                    pass  # the backlog is full: the agent cannot take anyone
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert attempts > 0

    wait_for(lambda: ping(rport) == b"+PONG\r\n", timeout=PATIENCE, what="the Redis port to serve again")
    wait_for(lambda: agent.get("/livez").status_code == 200, timeout=PATIENCE, what="/livez again")
    errors = wait_for(
        lambda: agent.metric('predis_agent_accept_errors_total{errno="EMFILE"}'), timeout=PATIENCE, what="EMFILE counted"
    )
    assert errors > 0
    added = log_lines(agent) - before
    assert added <= MAX_FLOOD_LOG_LINES, (agent.tmp / "stderr.log").read_text()[-3000:]


def test_a_chunked_body_twice_the_limit_to_reload_gets_413(tmp_path: Path) -> None:
    limit = BODY_LIMIT
    agent = AgentProcess(tmp_path, {"agent": {"http": {"max_request_bytes": limit}}}).start()
    try:
        generation = agent.metric("predis_agent_config_generation")

        def body() -> Iterator[bytes]:  # a generator: requests sends it chunked, no Content-Length
            piece = b"x" * 65536
            for _ in range(2 * limit // len(piece)):
                yield piece

        resp = requests.post(agent.base_url + "/reload", headers=agent.headers(), data=body(), timeout=30)
        assert resp.status_code == 413, resp.text
        assert "max_request_bytes" in resp.json()["error"]
        assert resp.request.headers.get("Transfer-Encoding") == "chunked"
        assert agent.metric("predis_agent_config_generation") == generation
        assert agent.get("/livez").status_code == 200
    finally:
        agent.stop()
