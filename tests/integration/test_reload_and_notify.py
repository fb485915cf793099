# SPDX-License-Identifier: Apache-2.0
"""The agent as a subprocess: hot reload by SIGHUP, file edit and API; sd_notify order."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from tests.agentproc import AgentProcess, merge
from tests.polling import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    proc = AgentProcess(tmp_path)
    proc.start()
    yield proc
    proc.stop()


def _generation(agent: AgentProcess) -> int:
    return int(agent.status()["config_generation"])


def test_ready_and_alive(agent: AgentProcess) -> None:
    assert agent.get("/livez", token="").status_code == 200
    ready = agent.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True
    assert body["components"]["cache"]["ok"] is True
    assert "round-trip" in body["components"]["cache"]["detail"]


def test_sighup_applies_a_valid_change(agent: AgentProcess) -> None:
    assert _generation(agent) == 1
    agent.write_config(merge(agent.config, {"agent": {"log": {"level": "debug"}, "reload": {"watch": False}}}))
    # The watch is still on in the running config; turn it off through a first reload
    # so that this test proves SIGHUP alone applies the next change.
    wait_for(lambda: _generation(agent) == 2, what="file-watch reload to generation 2")
    agent.write_config(merge(agent.config, {"agent": {"log": {"level": "warning"}, "reload": {"watch": False}}}))
    agent.signal(signal.SIGHUP)
    wait_for(lambda: _generation(agent) == 3, what="SIGHUP reload to generation 3")
    last = agent.status()["last_reload"]
    assert last["ok"] is True and last["trigger"] == "SIGHUP"
    assert "agent.log.level" in last["changed"]
    assert agent.metric("predis_agent_config_generation") == 3.0


def test_file_edit_applies_and_invalid_change_keeps_old_config(agent: AgentProcess) -> None:
    agent.write_config(merge(agent.config, {"agent": {"collect": {"interval_seconds": 0.3}}}))
    wait_for(lambda: _generation(agent) == 2, what="file-watch reload")
    assert agent.status()["components"]["collection"]["interval_seconds"] == 0.3
    assert agent.metric("predis_agent_config_last_reload_success") == 1.0

    bad = merge(agent.config, {"agent": {"collect": {"interval_seconds": -5}, "htp": {}}})
    agent.write_config(bad)
    last = wait_for(
        lambda: (s := agent.status()["last_reload"]) and not s["ok"] and s,
        what="the invalid edit to be rejected",
    )
    assert any(e.startswith("agent.collect.interval_seconds:") for e in last["errors"]), last
    assert any(e.startswith("agent.htp:") and "unknown key" in e for e in last["errors"]), last
    status = agent.status()
    assert status["config_generation"] == 2
    assert status["components"]["collection"]["interval_seconds"] == 0.3
    assert agent.get("/readyz").status_code == 200
    assert agent.metric("predis_agent_config_last_reload_success") == 0.0
    assert agent.metric("predis_agent_config_reload_failures_total") == 1.0
    assert "rejected" in agent.logs()

    # Asking again through the API names the same problems and still changes nothing.
    resp = agent.post("/reload")
    assert resp.status_code == 422
    assert any("agent.htp" in e for e in resp.json()["errors"])
    assert _generation(agent) == 2

    agent.write_config(merge(agent.config, {"agent": {"collect": {"interval_seconds": 0.25}}}))
    resp = agent.post("/reload")
    assert resp.status_code == 200, resp.text
    assert resp.json()["generation"] == 3
    assert agent.metric("predis_agent_config_last_reload_success") == 1.0


def test_collection_keeps_running_across_reloads(agent: AgentProcess) -> None:
    runs = wait_for(lambda: (n := agent.status()["components"]["collection"]["runs"]) >= 2 and n, what="collection runs")
    agent.write_config(merge(agent.config, {"agent": {"log": {"level": "debug"}}}))
    wait_for(lambda: _generation(agent) == 2, what="reload")
    wait_for(lambda: agent.status()["components"]["collection"]["runs"] > runs + 2, what="collection after reload")


def test_listen_address_moves_and_a_busy_port_is_refused(agent: AgentProcess, tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy_port = blocker.getsockname()[1]
    try:
        agent.write_config(merge(agent.config, {"agent": {"http": {"listen": f"127.0.0.1:{busy_port}"}}}))
        last = wait_for(lambda: (s := agent.status()["last_reload"]) and not s["ok"] and s, what="busy port rejected")
        assert any(str(busy_port) in e for e in last["errors"]), last
        assert agent.get("/livez").status_code == 200
    finally:
        blocker.close()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    new_port = free.getsockname()[1]
    free.close()
    agent.write_config(merge(agent.config, {"agent": {"http": {"listen": f"127.0.0.1:{new_port}"}}}))
    old_url = agent.base_url
    agent.base_url = f"http://127.0.0.1:{new_port}"
    wait_for(lambda: agent.get("/livez").status_code == 200, what="the new listener")
    assert agent.status()["components"]["http"]["address"] == agent.base_url
    agent.base_url = old_url
    with pytest.raises(OSError):
        agent.get("/livez")


def test_sd_notify_messages_arrive_in_order(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    agent = AgentProcess(tmp_path, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    try:
        agent.start()
        messages: list[str] = []

        def receive_until(prefix: str) -> str:
            while True:
                msg = sock.recv(4096).decode()
                messages.append(msg)
                if msg.startswith(prefix):
                    return msg

        ready = receive_until("READY=1")
        assert f"MAINPID={agent.proc.pid}" in ready  # type: ignore[union-attr]
        receive_until("WATCHDOG=1")
        receive_until("WATCHDOG=1")
        agent.signal(signal.SIGHUP)
        reloading = receive_until("RELOADING=1")
        assert "MONOTONIC_USEC=" in reloading
        usec = int(reloading.split("MONOTONIC_USEC=")[1].split()[0])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60_000_000
        receive_until("READY=1")
        assert agent.stop() == 0
        receive_until("STOPPING=1")
        lifecycle = [m.split("\n")[0] for m in messages if not m.startswith("WATCHDOG")]
        assert lifecycle == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], messages
    finally:
        agent.stop()
        sock.close()
        os.unlink(path)


def test_runs_on_the_embedded_default_without_any_config_file(tmp_path: Path) -> None:
    if Path("/etc/predis/agent.yaml").exists():
        pytest.skip("/etc/predis/agent.yaml exists on this machine and would be used")
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("PREDIS_AGENT_CONFIG", None)
    token = subprocess.run(
        [sys.executable, "-m", "agent", "token", "create"], capture_output=True, text=True, env=env, timeout=60, check=True
    ).stdout.strip()
    assert (tmp_path / ".local" / "state" / "predis-agent" / "tokens.json").exists()
    out = open(tmp_path / "out.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--set", "agent.http.listen=127.0.0.1:0", "--set", "cache.resp.listen=127.0.0.1:0"],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        line = wait_for(lambda: "ready: http" in (text := (tmp_path / "out.log").read_text()) and text, what="ready line")
        assert "config: <embedded default>" in line and "cache backend: numpy" in line
        url = line.split("ready: ", 1)[1].split(" ", 1)[0]
        assert requests.get(url + "/livez", timeout=10).status_code == 200
        ready = requests.get(url + "/readyz", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert requests.get(url + "/readyz", timeout=10).status_code == 401
        # The embedded default serves the cache over the Redis protocol, on loopback.
        resp_url = line.split("redis protocol: ", 1)[1].split()[0]
        client = redis.Redis.from_url(resp_url, socket_timeout=10)
        assert resp_url.startswith("redis://127.0.0.1:")
        assert client.set("embedded", b"default") and client.get("embedded") == b"default"
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        out.close()
