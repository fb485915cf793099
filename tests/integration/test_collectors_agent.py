# SPDX-License-Identifier: Apache-2.0
"""The built-in collectors inside the running agent: what redis-py did shows up in
/metrics, process metrics are there, and the GPU collector's state is in /status."""

from __future__ import annotations

from pathlib import Path

import pynvml
import pytest
import redis

from tests.agentproc import AgentProcess
from tests.polling import wait_for

pytestmark = pytest.mark.integration


def _nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_cache_process_and_gpu_collectors_in_the_running_agent(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, {"agent": {"reload": {"watch": False}}}).start()
    try:
        address = agent.status()["components"]["cache"]["resp"]["address"]
        client = redis.Redis(host="127.0.0.1", port=int(address.rsplit(":", 1)[1]), socket_timeout=10)
        assert client.set("a", b"1") and client.set("b", b"2")
        assert client.get("a") == b"1" and client.get("b") == b"2" and client.get("missing") is None
        wait_for(lambda: agent.metric("predis_cache_hits_total") == 2, what="2 hits in /metrics")
        assert agent.metric("predis_cache_misses_total") == 1
        assert agent.metric("predis_cache_sets_total") == 2
        assert agent.metric("predis_cache_keys") == 2
        assert agent.metric('predis_cache_commands_total{command="get"}') == 3
        assert agent.metric('predis_cache_commands_total{command="set"}') == 2
        assert agent.metric('predis_cache_command_duration_seconds_count{command="get"}') == 3
        assert agent.metric('predis_cache_command_duration_seconds_bucket{command="get",le="+Inf"}') == 3
        assert (agent.metric("predis_cache_connected_clients") or 0) >= 1
        assert (agent.metric('predis_cache_memory_bytes{tier="device"}') or 0) > 0
        assert (agent.metric("process_cpu_seconds_total") or 0) > 0
        assert (agent.metric("process_open_fds") or 0) > 0
        wait_for(lambda: agent.metric("predis_process_event_loop_lag_seconds") is not None, what="the event-loop lag")
        client.close()

        status = agent.status()
        gpu = status["components"]["gpu"]
        collectors = status["components"]["collection"]["collectors"]
        assert {"cache_metrics.cache", "process_metrics.process", "gpu_metrics.gpu"} <= set(collectors)
        if _nvml_works():
            assert agent.metric("predis_gpu_up") == 1 and gpu["up"] is True
        else:
            assert agent.metric("predis_gpu_up") == 0
            assert gpu["up"] is False and gpu["enabled"] is True
            assert "NVML library (libnvidia-ml.so.1) was not found" in gpu["reason"]
            # A CPU-only host is a normal host: readiness does not depend on the GPU.
            assert agent.get("/readyz").status_code == 200
            assert agent.logs().count("GPU metrics unavailable") == 1
    finally:
        assert agent.stop() == 0
