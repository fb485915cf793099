# SPDX-License-Identifier: Apache-2.0
"""The cache inside the running agent: read-through from the files origin, and hot reload
of the cache section (password, listener, sizing, origin) while clients are connected."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.agentproc import AgentProcess, merge
from tests.polling import wait_for

pytestmark = pytest.mark.integration


def _resp_port(agent: AgentProcess) -> int:
    address = agent.status()["components"]["cache"]["resp"]["address"]
    return int(address.rsplit(":", 1)[1])


def _client(port: int, **kw: Any) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, **kw)


def _reload(agent: AgentProcess, config: dict[str, Any]) -> dict[str, Any]:
    """Write ``config``, send SIGHUP, and return the reload's result once it is reported."""
    previous = agent.status()["last_reload"]
    since = previous["time"] if previous else 0.0
    agent.write_config(config)
    agent.signal(signal.SIGHUP)
    last: dict[str, Any] = wait_for(
        lambda: (r := agent.status()["last_reload"]) is not None and r["time"] > since and r, what="the reload's result"
    )
    return last


@pytest.fixture
def origin_root(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    (root / "objects").mkdir(parents=True)
    (root / "objects" / "a.bin").write_bytes(b"\x00payload from the origin\xff")
    (tmp_path / "outside.txt").write_text("must never be served")
    return root


@pytest.fixture
def agent(tmp_path: Path, origin_root: Path) -> Iterator[AgentProcess]:
    config = {
        "agent": {"reload": {"watch": False}},
        "cache": {"read_through": True, "origin": "files", "max_keys": 4096, "max_memory_bytes": 8 << 20},
        "plugins": {"files": {"root": str(origin_root)}},
    }
    proc = AgentProcess(tmp_path, config)
    proc.start()
    yield proc
    proc.stop()


def test_a_miss_is_read_through_from_the_files_origin_and_then_served_from_the_cache(agent: AgentProcess) -> None:
    client = _client(_resp_port(agent), protocol=2)
    assert client.get("objects/a.bin") == b"\x00payload from the origin\xff"
    assert client.get("objects/a.bin") == b"\x00payload from the origin\xff"
    assert client.get("objects/missing") is None
    assert client.get("../outside.txt") is None
    stats = agent.status()["components"]["cache"]
    assert stats["read_through"] is True and stats["origin"] == "files"
    assert stats["stats"]["origin_loads"] == 1 and stats["stats"]["hits"] == 1
    ready = agent.get("/readyz").json()
    assert ready["components"]["origin"]["ok"] is True
    client.close()


def test_reload_adds_a_password_without_dropping_keys_or_open_connections(agent: AgentProcess) -> None:
    port = _resp_port(agent)
    old = _client(port, protocol=2)
    assert old.set("kept", "yes")
    secret = agent.tmp / "resp-password"
    secret.write_text("correct horse battery")
    last = _reload(agent, merge(agent.config, {"cache": {"resp": {"requirepass": f"${{file:{secret}}}"}}}))
    assert last["ok"] is True and "cache.resp.requirepass" in last["changed"]
    # The connection that was open stays authenticated; a new one must AUTH.
    assert old.get("kept") == b"yes"
    with pytest.raises(redis.AuthenticationError):
        _client(port, protocol=2).get("kept")
    with pytest.raises(redis.AuthenticationError):
        _client(port, protocol=2, password="wrong").get("kept")
    fresh = _client(port, password="correct horse battery")
    assert fresh.get("kept") == b"yes"
    assert "correct horse battery" not in agent.logs()
    assert "correct horse battery" not in agent.get("/status").text
    old.close()
    fresh.close()


def test_reload_moves_the_listener_and_keeps_the_open_connection(agent: AgentProcess) -> None:
    port = _resp_port(agent)
    old = _client(port, protocol=2)
    assert old.set("moving", "1")
    # Port 0 again would be the same listen string; name the new address by a free port.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    new_port = probe.getsockname()[1]
    probe.close()
    last = _reload(agent, merge(agent.config, {"cache": {"resp": {"listen": f"127.0.0.1:{new_port}"}}}))
    assert last["ok"] is True and "cache.resp.listen" in last["changed"]
    assert _resp_port(agent) == new_port
    assert _client(new_port, protocol=2).get("moving") == b"1"
    assert old.get("moving") == b"1"  # still served on the connection accepted before
    with pytest.raises(redis.ConnectionError):
        _client(port, protocol=2, socket_connect_timeout=5).ping()
    old.close()


def test_a_sizing_change_rebuilds_the_cache_empty_and_an_unknown_origin_is_rejected(agent: AgentProcess) -> None:
    port = _resp_port(agent)
    client = _client(port, protocol=2)
    assert client.set("dropped", "x") and client.dbsize() == 1
    rejected = _reload(agent, merge(agent.config, {"cache": {"origin": "nope"}}))
    assert rejected["ok"] is False and any("'nope'" in e for e in rejected["errors"])
    assert client.get("dropped") == b"x"  # the old config keeps serving, data intact
    applied = _reload(agent, merge(agent.config, {"cache": {"max_keys": 8192}}))
    assert applied["ok"] is True and "cache.max_keys" in applied["changed"]
    assert client.dbsize() == 0 and client.get("dropped") is None
    assert "cache rebuilt empty" in agent.logs()
    assert agent.status()["components"]["cache"]["stats"]["max_keys"] == 8192
    client.close()
