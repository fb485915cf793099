# SPDX-License-Identifier: Apache-2.0
"""The agent on each event loop (agent.event_loop): it serves the Redis protocol and HTTP
on the loop it reports, and refuses to start on a loop it cannot have."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.agentproc import AgentProcess

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("choice", ["asyncio", "uvloop", "auto"])
def test_the_agent_serves_on_the_loop_it_was_given(tmp_path: Path, choice: str) -> None:
    if choice != "asyncio":
        pytest.importorskip("uvloop", reason="uvloop is a dependency on Linux; this platform has no build of it")
    agent = AgentProcess(tmp_path, {"agent": {"event_loop": choice}}).start()
    try:
        status = agent.status()
        assert status["event_loop"] == ("asyncio" if choice == "asyncio" else "uvloop")
        port = int(status["components"]["cache"]["resp"]["address"].rsplit(":", 1)[1])
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
        pipe = client.pipeline(transaction=False)
        for i in range(100):
            pipe.set(f"k{i}", f"v{i}")
        pipe.execute()
        assert client.mget([f"k{i}" for i in range(100)]) == [f"v{i}".encode() for i in range(100)]
        assert client.get("k7") == b"v7" and client.set("k7", "w") and client.get("k7") == b"w"
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command("NOSUCHCOMMAND")
        assert client.ping()
    finally:
        assert agent.stop() == 0


def test_uvloop_asked_for_but_missing_is_a_startup_error(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "uvloop.py").write_text("raise ImportError('uvloop is not installed on this host')\n")
    repo = Path(__file__).resolve().parents[2]
    agent = AgentProcess(tmp_path, {"agent": {"event_loop": "uvloop"}}, env={"PYTHONPATH": f"{shadow}:{repo}"})
    agent.token = "unused"  # no token needed: it must not get as far as serving
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(agent.config_path)],
        capture_output=True, text=True, env=agent.env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot start: agent.event_loop is uvloop but uvloop cannot be imported" in proc.stderr
