# SPDX-License-Identifier: Apache-2.0
"""The production data collector inside the real agent: redis-py traffic goes through the
cache into the access-event ring, the exporter thread writes encrypted segments under
``collectors.access_log.export_dir``, ``/status`` and ``/metrics`` report it, and
``predis-agent data read`` decrypts exactly the GETs and SETs that were sent."""

from __future__ import annotations

import collections
import json
import os
import stat
from pathlib import Path

import pytest
import redis

from agent.mlops.dataset import list_segments
from tests.agentproc import AgentProcess, cli
from tests.polling import wait_for

pytestmark = pytest.mark.integration

SETS = 20
GETS = 30  # SETS of them hit, the rest miss


def test_agent_exports_redis_traffic_and_data_read_finds_it(tmp_path: Path) -> None:
    key = os.urandom(32).hex()
    key_file = tmp_path / "segment.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    export = tmp_path / "export"
    config = {
        "agent": {"reload": {"watch": False}},
        "collectors": {
            "access_log": {
                "enabled": True,
                "ring_capacity": 65536,
                "export_dir": str(export),
                "encryption_key": f"${{file:{key_file}}}",
                "flush_interval_seconds": 0.2,
                "min_free_bytes": 0,
                "min_free_percent": 0,
            }
        },
    }
    agent = AgentProcess(tmp_path, config).start()
    try:
        address = agent.status()["components"]["cache"]["resp"]["address"]
        client = redis.Redis(host="127.0.0.1", port=int(address.rsplit(":", 1)[1]), socket_timeout=10, protocol=2)
        for i in range(SETS):
            assert client.set(f"user:{i}:profile", b"v" * (i + 1))
        for i in range(GETS):
            client.get(f"user:{i}:profile")
        client.close()
        expected = SETS + GETS
        status = wait_for(
            lambda: (s := agent.status()["components"].get("access_log")) and s["events_exported"] >= expected and s,
            timeout=20,
            what="the access log to export the traffic",
        )
        assert status["state"] == "exporting" and status["paused"] is False and status["events_dropped"] == {}
        assert wait_for(lambda: (agent.metric("predis_access_log_events_exported_total") or 0) >= expected, what="the metric")
        assert agent.metric("predis_access_log_export_paused") == 0
        names = list_segments(export)
        assert names and stat.S_IMODE(export.stat().st_mode) == 0o700
        for name in names:
            assert stat.S_IMODE((export / name).stat().st_mode) == 0o600
            assert b"user:" not in (export / name).read_bytes()
        assert key not in json.dumps(agent.status()) and key not in agent.logs()
    finally:
        assert agent.stop() == 0

    result = cli("data", "read", str(export), "--key-file", str(key_file), "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    ops = collections.Counter((row["op"], row["result"]) for row in rows)
    assert ops[("set", "stored")] == SETS
    assert ops[("get", "hit")] == SETS and ops[("get", "miss")] == GETS - SETS
    sizes = sorted(row["size"] for row in rows if row["op"] == "set")
    assert sizes == list(range(1, SETS + 1))
    assert "failed verification" in result.stderr and "0 segment(s) failed" in result.stderr
