# SPDX-License-Identifier: Apache-2.0
"""Prefetching in the running agent: a scan read over RESP is prefetched from the files
origin off the request path, PREDIS.HINT loads what a client names, and the figures show
in /status and /metrics. Disabling it in a reload stops it and HINT says so. The same with
the models in their own process (``model_process``), which goes with the prefetcher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.agentproc import AgentProcess, merge, pid_running
from tests.polling import wait_for

pytestmark = pytest.mark.integration

BLOCKS = 200


@pytest.fixture(params=[False, True], ids=["models-in-thread", "model-process"])
def agent(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    root = tmp_path / "origin"
    root.mkdir()
    for i in range(BLOCKS):
        (root / f"blk{i:04d}").write_bytes(f"block {i}".encode())
    config = {
        "agent": {"reload": {"watch": False}},
        "cache": {
            "read_through": True,
            "origin": "files",
            "prefetch": {"enabled": True, "model": "stride", "depth": 4, "adaptive": False, "threshold": 0.1, "model_process": request.param},
        },
        "plugins": {"files": {"root": str(root)}},
    }
    proc = AgentProcess(tmp_path, config).start()
    try:
        yield proc
    finally:
        proc.stop()


def client_of(agent: AgentProcess) -> redis.Redis:
    address = agent.status()["components"]["cache"]["resp"]["address"]
    return redis.Redis(host="127.0.0.1", port=int(address.rsplit(":", 1)[1]), socket_timeout=10, protocol=2)


def prefetch_status(agent: AgentProcess) -> dict[str, Any]:
    return agent.status()["components"]["cache"]["prefetch"]


def test_a_scan_is_prefetched_and_hints_load_named_keys(agent: AgentProcess) -> None:
    client = client_of(agent)
    for i in range(3):
        assert client.get(f"blk{i:04d}") == f"block {i}".encode()
    wait_for(lambda: prefetch_status(agent)["loaded"] >= 1, what="the prefetcher to load the next blocks")
    # Reading on: the next blocks were prefetched, so demand reads hit prefetched entries.
    for i in range(3, 60):
        assert client.get(f"blk{i:04d}") == f"block {i}".encode()
        # Each read waits for the worker to have seen it, so the run is deterministic.
        wait_for(lambda n=i: prefetch_status(agent)["observed"] >= n + 1, what="the worker to catch up")
    status = prefetch_status(agent)
    assert status["model"] == "stride" and status["used"] >= 40, status
    assert wait_for(lambda: (agent.metric("predis_cache_prefetch_used_total") or 0) >= 40, what="the prefetch metric")
    # The model's cost is exported: observed keys, worker steps and the time they took.
    assert status["steps"] >= 1 and status["observed"] >= status["steps"]
    observed = wait_for(lambda: (agent.metric("predis_cache_prefetch_observed_total") or 0) >= 60 and agent.metric("predis_cache_prefetch_observed_total"), what="the observed metric")
    steps = agent.metric("predis_cache_prefetch_steps_total")
    assert 1 <= steps <= observed
    spent = agent.metric("predis_cache_prefetch_inference_seconds_total")
    assert 0 < spent < 60
    # A scan is foreseen: the blocks the worker named were read next, so it does not back off.
    backoff = status["backoff"]
    assert backoff["named"] >= 40 and backoff["foreseen"] >= 0.9 * backoff["named"] - 4, backoff
    assert backoff["active"] is False and backoff["backoffs"] == 0, backoff
    assert agent.metric("predis_cache_prefetch_backed_off") == 0
    assert wait_for(lambda: (agent.metric("predis_cache_prefetch_foresight_read_total") or 0) >= 36, what="the foresight metric")

    assert client.execute_command("PREDIS.HINT", "blk0150", "blk0151") == 2
    assert prefetch_status(agent)["hints"] == 2
    used_before = prefetch_status(agent)["used"]
    wait_for(lambda: prefetch_status(agent)["loaded"] >= status["loaded"] + 2, what="the hinted keys to load")
    assert client.get("blk0150") == b"block 150"
    assert prefetch_status(agent)["used"] == used_before + 1
    assert client.info("predis")["prefetch"] == "stride"
    process = prefetch_status(agent)["model_process"]
    in_process = agent.config["cache"]["prefetch"]["model_process"]
    assert process["state"] == ("running" if in_process else "off") and process["restarts"] == 0, process
    assert agent.metric("predis_cache_prefetch_model_process_up") == (1 if in_process else 0)
    if in_process:
        assert process["pid"] not in (None, agent.proc.pid)
        assert pid_running(process["pid"])

    agent.write_config(merge(agent.config, {"cache": {"prefetch": {"enabled": False}}}))
    assert agent.post("/reload").status_code == 200
    assert prefetch_status(agent) == {"enabled": False}
    if in_process:  # the model process went with its prefetcher
        wait_for(lambda: not pid_running(process["pid"]), what="the model process to exit")
    with pytest.raises(redis.ResponseError, match="prefetching is not enabled"):
        client.execute_command("PREDIS.HINT", "blk0160")
    client.close()


def test_reads_the_model_cannot_foresee_make_the_worker_back_off(agent: AgentProcess) -> None:
    """Keys with no order to them: the stride model names nothing a read then asks for, and
    after a window of reads (backoff_window_reads, 4,096) the worker backs off; /status
    and /metrics say so."""
    client = client_of(agent)
    numbers = iter(range(1, 1 << 30, 7919))
    assert prefetch_status(agent)["backoff"]["active"] is False

    def read_some() -> bool:
        pipe = client.pipeline(transaction=False)
        for _ in range(256):
            pipe.get(f"rnd{next(numbers) * 104729 % 1000003:07d}")
        pipe.execute()
        return prefetch_status(agent)["backoff"]["active"]

    wait_for(read_some, what="the prefetch worker to back off")
    backoff = prefetch_status(agent)["backoff"]
    assert backoff["backoffs"] == 1 and backoff["accuracy"] is not None and backoff["accuracy"] < 0.05, backoff
    assert wait_for(lambda: agent.metric("predis_cache_prefetch_backed_off") == 1, what="the backed-off gauge")
    assert agent.metric("predis_cache_prefetch_backoffs_total") == 1
    client.close()
