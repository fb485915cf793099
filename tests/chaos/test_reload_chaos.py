# SPDX-License-Identifier: Apache-2.0
"""A real agent against hostile reloads (issue 21, "reloads that freeze the loop" and
"failed reloads mis-reported or half-applied").

Each hostile config is refused fast, by ``POST /reload`` (422), SIGHUP and the file watch
(an error line), and by ``predis-agent config validate`` (exit 2), with
``predis_agent_config_last_reload_success`` 0 and the failure counter up, the generation
unchanged, and the old config still serving HTTP and Redis. A reload storm that turns an
exporter with a dead endpoint on and off costs a pinging client no timeout.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

from tests import peers
from tests.agentproc import AgentProcess, cli, merge
from tests.polling import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.security]

# "Refused fast", as the issue asks: generous next to the milliseconds a refusal takes (a
# 2-core machine shared with other work must not fail it), far below the minutes (or the
# out-of-memory kill) the findings took.
REFUSED_FAST_SECONDS = 15.0
# A client gives up on a round trip after this long: the loop must never stall that long
# (a loaded machine may delay a round trip by a second; a close on the loop would cost
# SHUTDOWN_TIMEOUT_SECONDS).
CLIENT_TIMEOUT_SECONDS = 3.0
# The exporter's close may wait this long for its dead endpoint (long enough that a close
# on the event loop would time the client out).
SHUTDOWN_TIMEOUT_SECONDS = 10
STORM_TOGGLES = 3


def resp_port(agent: AgentProcess) -> int:
    address = agent.status()["components"]["cache"]["resp"]["address"]
    return int(address.rsplit(":", 1)[1])


def still_serving(agent: AgentProcess) -> None:
    assert requests.get(agent.base_url + "/livez", timeout=CLIENT_TIMEOUT_SECONDS).status_code == 200
    client = redis.Redis(host="127.0.0.1", port=resp_port(agent), socket_timeout=CLIENT_TIMEOUT_SECONDS)
    try:
        assert client.ping() is True
    finally:
        client.close()


def failures(agent: AgentProcess) -> float:
    return agent.metric("predis_agent_config_reload_failures_total") or 0.0


def alias_bomb() -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\nagent: {x: *a9}\n"


def yaml_with(config: dict[str, Any], path: str, raw: str) -> str:
    """``config`` as YAML with ``path`` set to the literal YAML ``raw`` (e.g. ``.nan``)."""
    marker = "CHAOS-MARKER-VALUE"
    parts = path.split(".")
    config = merge(config, {})
    node: dict[str, Any] = config
    for part in parts[:-1]:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    node[parts[-1]] = marker
    return yaml.safe_dump(config, sort_keys=False).replace(marker, raw)


@pytest.fixture(scope="module")
def fifo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fifo") / "pipe"
    os.mkfifo(path)
    return path


# (id, the hostile config text from the agent's good config, a fragment of the reason)
Case = tuple[str, Callable[[dict[str, Any], Path], str], str]
CASES: list[Case] = [
    ("dev-zero-secret", lambda c, f: yaml_with(c, "agent.tracing.service_name", "'${file:/dev/zero}'"), "character device"),
    ("fifo-secret", lambda c, f: yaml_with(c, "agent.tracing.service_name", f"'${{file:{f}}}'"), "FIFO"),
    ("alias-bomb", lambda c, f: yaml.safe_dump(c) + alias_bomb(), "alias bomb"),
    ("nan-collect-interval", lambda c, f: yaml_with(c, "agent.collect.interval_seconds", ".nan"), "finite number"),
    ("nan-idle-timeout", lambda c, f: yaml_with(c, "cache.resp.idle_timeout_seconds", ".nan"), "finite number"),
    ("inf-shutdown", lambda c, f: yaml_with(c, "agent.shutdown_timeout_seconds", ".inf"), "at most"),
    ("yaml-tag", lambda c, f: yaml_with(c, "agent.log", "!!python/object/apply:os.system ['true']"), "YAML tag"),
    ("recursive-alias", lambda c, f: yaml.safe_dump(c) + "x: &a\n  y: *a\n", "recursive alias"),
    ("deep-nesting", lambda c, f: yaml.safe_dump(c) + "x: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper"),
    ("empty-requirepass", lambda c, f: yaml_with(c, "cache.resp.requirepass", "''"), "must not be empty"),
    ("huge-integer", lambda c, f: yaml_with(c, "agent.collect.interval_seconds", "9" * 5000), "YAML refused"),
    # Valid for the schema; found while dry-building, before the running log handlers go.
    ("unopenable-log-file", lambda c, f: yaml_with(c, "agent.log.file.path", "/proc/predis-chaos/agent.log"), "cannot be opened"),
]
# Cases whose config is valid as such (`config validate` checks the file, not the machine):
# only the agent, which opens what the config names, refuses them.
RESOURCE_CASES = {"unopenable-log-file"}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    # The watch is off: each case below triggers its reload itself.
    proc = AgentProcess(tmp_path_factory.mktemp("agent"), {"agent": {"reload": {"watch": False}}})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize(("name", "text_of", "reason"), CASES, ids=[c[0] for c in CASES])
def test_a_hostile_reload_is_refused_fast_and_the_old_config_keeps_serving(
    agent: AgentProcess, fifo: Path, name: str, text_of: Callable[[dict[str, Any], Path], str], reason: str
) -> None:
    generation = agent.status()["config_generation"]
    failed_before = failures(agent)
    text = text_of(agent.config, fifo)
    agent.write_config(text)
    try:
        started = time.monotonic()
        resp = agent.post("/reload")
        elapsed = time.monotonic() - started
        assert resp.status_code == 422, resp.text
        assert elapsed < REFUSED_FAST_SECONDS, elapsed
        body = resp.json()
        assert body["ok"] is False and any(reason in e for e in body["errors"]), body
        assert body["generation"] == generation
        status = agent.status()
        assert status["config_generation"] == generation
        assert agent.metric("predis_agent_config_last_reload_success") == 0.0
        assert failures(agent) == failed_before + 1
        still_serving(agent)

        started = time.monotonic()
        proc = cli("config", "validate", str(agent.config_path), env=agent.env, check=False, timeout=60)
        assert time.monotonic() - started < REFUSED_FAST_SECONDS + 5  # a Python start-up on top
        if name in RESOURCE_CASES:
            assert proc.returncode == 0, proc.stderr[-2000:]
        else:
            assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
            assert reason in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    finally:
        agent.write_config(agent.config)
    resp = agent.post("/reload")
    assert resp.status_code == 200, resp.text
    assert agent.metric("predis_agent_config_last_reload_success") == 1.0


def test_a_hostile_config_file_is_refused_on_sighup_with_an_error_line(agent: AgentProcess, fifo: Path) -> None:
    failed_before = failures(agent)
    generation = agent.status()["config_generation"]
    agent.write_config(yaml_with(agent.config, "agent.collect.interval_seconds", ".nan"))
    try:
        agent.signal(signal.SIGHUP)
        last = wait_for(
            lambda: (s := agent.status()["last_reload"]) and s["trigger"] == "SIGHUP" and not s["ok"] and s,
            timeout=REFUSED_FAST_SECONDS,
            what="the SIGHUP reload to be rejected",
        )
        assert any("agent.collect.interval_seconds" in e and "finite number" in e for e in last["errors"]), last
        assert agent.status()["config_generation"] == generation
        assert agent.metric("predis_agent_config_last_reload_success") == 0.0
        assert failures(agent) == failed_before + 1
        logs = wait_for(lambda: (t := agent.logs()) and "reload (SIGHUP) rejected" in t and t, what="the error line")
        assert "Task exception was never retrieved" not in logs
        still_serving(agent)
    finally:
        agent.write_config(agent.config)


def test_the_config_file_replaced_by_a_fifo_is_refused(agent: AgentProcess, fifo: Path) -> None:
    agent.config_path.unlink()
    os.mkfifo(agent.config_path)
    try:
        started = time.monotonic()
        resp = agent.post("/reload")
        assert resp.status_code == 422, resp.text
        assert time.monotonic() - started < REFUSED_FAST_SECONDS
        assert any("FIFO" in e for e in resp.json()["errors"]), resp.text
        still_serving(agent)
    finally:
        agent.config_path.unlink()
        agent.write_config(agent.config)


def test_an_alias_bomb_picked_up_by_the_file_watch_is_refused(tmp_path: Path) -> None:
    proc = AgentProcess(tmp_path)
    proc.start()
    try:
        proc.write_config(yaml.safe_dump(proc.config) + alias_bomb())
        last = wait_for(
            lambda: (s := proc.status()["last_reload"]) and s["trigger"] == "file-watch" and not s["ok"] and s,
            timeout=REFUSED_FAST_SECONDS,
            what="the file-watch reload to be rejected",
        )
        assert any("alias bomb" in e for e in last["errors"]), last
        assert proc.status()["config_generation"] == 1
        assert proc.metric("predis_agent_config_last_reload_success") == 0.0
        still_serving(proc)
        assert "reload (file-watch) rejected" in proc.logs()
    finally:
        proc.stop()


class Pinger:
    """A client that round-trips Redis PINGs and HTTP /livez until stopped, counting timeouts."""

    def __init__(self, agent: AgentProcess) -> None:
        self.redis = redis.Redis(host="127.0.0.1", port=resp_port(agent), socket_timeout=CLIENT_TIMEOUT_SECONDS)
        self.url = agent.base_url + "/livez"
        self.round_trips = 0
        self.timeouts: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pinger")

    def __enter__(self) -> Pinger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.redis.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.redis.ping()
            except (redis.TimeoutError, redis.ConnectionError) as exc:
                self.timeouts.append(f"redis: {exc}")
            try:
                requests.get(self.url, timeout=CLIENT_TIMEOUT_SECONDS)
            except requests.RequestException as exc:
                self.timeouts.append(f"http: {exc}")
            self.round_trips += 1


def test_a_reload_storm_turning_a_dead_exporter_off_and_on_costs_no_client_timeout(tmp_path: Path) -> None:
    dead_port = peers.free_port()  # nothing listens there: every push fails and stays queued
    exporter = {
        "enabled": True,
        "api_host": f"http://127.0.0.1:{dead_port}",
        "api_key": "${env:CHAOS_DD_KEY}",
        "interval": 1,
    }
    config = {
        "agent": {
            "reload": {"watch": False},
            "shutdown_timeout_seconds": SHUTDOWN_TIMEOUT_SECONDS,
            "sinks": {"retry_initial_seconds": 0.1, "retry_max_seconds": 0.2, "attempt_timeout_seconds": 1},
        },
        "exporters": {"datadog": exporter},
    }
    agent = AgentProcess(tmp_path, config, env={"CHAOS_DD_KEY": "chaos-key-0123456789"})
    agent.start()
    try:
        wait_for(
            lambda: (s := agent.status()["sinks"].get("datadog")) and s["failed_attempts"] > 0 and s["queued_points"] > 0,
            what="the exporter failing against its dead endpoint with points queued",
        )
        with Pinger(agent) as pinger:
            for toggle in range(STORM_TOGGLES):
                for enabled in (False, True):
                    agent.write_config(merge(agent.config, {"exporters": {"datadog": {"enabled": enabled}}}))
                    resp = agent.post("/reload")
                    assert resp.status_code == 200, resp.text
                    assert ("datadog" in agent.status()["sinks"]) is enabled
                if toggle == 0:
                    wait_for(lambda: pinger.round_trips > 0, what="the pinger's first round trips")
            rounds = pinger.round_trips
            wait_for(lambda: pinger.round_trips > rounds, what="round trips after the storm")
        assert pinger.timeouts == [], pinger.timeouts[:5]
        assert agent.status()["config_generation"] == 1 + 2 * STORM_TOGGLES
    finally:
        agent.stop()
