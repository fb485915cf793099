# SPDX-License-Identifier: Apache-2.0
"""``exporters.prometheus.listen``: the exposition on a port of its own, hot-reloadable.

Only the exposition route is served there, behind the same token auth; unsetting the key
in a reload closes the port, and a port that cannot be bound rejects the reload.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests

from tests.agentproc import AgentProcess, merge
from tests.polling import wait_for

pytestmark = pytest.mark.integration


def test_metrics_port_serves_only_the_exposition_and_follows_reloads(tmp_path: Path) -> None:
    config = {"agent": {"reload": {"watch": False}}, "exporters": {"prometheus": {"listen": "127.0.0.1:0"}}}
    agent = AgentProcess(tmp_path, config).start()
    try:
        address = agent.status()["components"]["http"]["metrics_address"]
        assert address and address != agent.base_url
        good = requests.get(address + "/metrics", headers=agent.headers(), timeout=10)
        assert good.status_code == 200 and "predis_agent_config_generation 1.0" in good.text
        assert requests.get(address + "/metrics", timeout=10).status_code == 401
        assert requests.get(address + "/status", headers=agent.headers(), timeout=10).status_code == 404

        # A port that is taken rejects the reload; the old listener keeps serving.
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        agent.write_config(merge(agent.config, {"exporters": {"prometheus": {"listen": f"127.0.0.1:{taken}"}}}))
        rejected = agent.post("/reload")
        assert rejected.status_code == 422, rejected.text
        assert requests.get(address + "/metrics", headers=agent.headers(), timeout=10).status_code == 200
        blocker.close()

        agent.write_config(merge(agent.config, {"exporters": {"prometheus": {"listen": None}}}))
        assert agent.post("/reload").status_code == 200
        assert agent.status()["components"]["http"]["metrics_address"] is None
        port = int(address.rsplit(":", 1)[1])

        def closed() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) != 0

        assert wait_for(closed, what="the metrics port to close")
        assert agent.get("/metrics").status_code == 200  # still on the API port
    finally:
        agent.stop()
