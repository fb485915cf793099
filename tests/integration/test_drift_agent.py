# SPDX-License-Identifier: Apache-2.0
"""Live drift detection in the running agent, driven by real Redis-protocol traffic.

The agent records its cache's accesses in the access-log ring; the drift monitor checks the
newest window every second. Workload A (Zipf over one key set) sets the reference and keeps
checking as no drift; workload B (the same shape over a disjoint key set) is detected, shows
in ``/status`` and ``/metrics``, and its ``drift_detected`` event reaches a push exporter's
events (New Relic custom events, received by the test's HTTPS receiver).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy
import pytest
import redis

from tests.agentproc import AgentProcess
from tests.peers import NewRelicReceiver, self_signed_cert
from tests.polling import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI needed for the receiver's certificate"),
]

KEYS = 2000
BURST = 3000  # requests per burst of traffic; a check window holds one or more bursts


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[NewRelicReceiver, Path]]:
    cert = self_signed_cert(tmp_path / "tls")
    with NewRelicReceiver(cert) as rx:
        yield rx, cert.cert


def zipf_keys(rng: numpy.random.Generator, n: int, prefix: str) -> list[str]:
    p = numpy.arange(1, KEYS + 1, dtype=numpy.float64) ** -1.0
    p /= p.sum()
    return [f"{prefix}:{k}" for k in rng.choice(KEYS, size=n, p=p)]


def burst(client: redis.Redis, keys: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for i, key in enumerate(keys):
        if i % 10 == 0:
            pipe.set(key, b"v" * 64)
        else:
            pipe.get(key)
    pipe.execute()


def drift_status(agent: AgentProcess) -> dict[str, Any]:
    return agent.status()["components"]["drift"]


def test_a_workload_change_is_detected_reported_and_sent_as_an_event(tmp_path: Path, receiver: tuple[NewRelicReceiver, Path]) -> None:
    rx, ca = receiver
    config = {
        "agent": {"reload": {"watch": False}},
        "collectors": {"access_log": {"enabled": True, "ring_capacity": 1 << 17}},
        "drift": {"check_interval_seconds": 1, "window_events": 20_000, "min_samples": 500},
        "exporters": {
            "newrelic": {
                "enabled": True,
                "host": "127.0.0.1",
                "event_host": "127.0.0.1",
                "port": rx.port,
                "api_key": "${env:NR_TEST_KEY}",
                "ca_file": str(ca),
                "interval": 1,
            }
        },
    }
    agent = AgentProcess(tmp_path, config, env={"NR_TEST_KEY": "nr-test-key-0123456789", "HTTPS_PROXY": "", "https_proxy": ""}).start()
    rng = numpy.random.default_rng(11)
    try:
        address = agent.status()["components"]["cache"]["resp"]["address"]
        client = redis.Redis(host="127.0.0.1", port=int(address.rsplit(":", 1)[1]), socket_timeout=10, protocol=2)

        # Warm the cache with both key sets first: a cold cache's rising hit ratio is itself
        # a change of the access stream, and not the one this test is about.
        for prefix in ("a", "b"):
            pipe = client.pipeline(transaction=False)
            for k in range(KEYS):
                pipe.set(f"{prefix}:{k}", b"v" * 64)
            pipe.execute()

        def traffic_until(prefix: str, predicate: Any, what: str, timeout: float = 60) -> Any:
            def step() -> Any:
                burst(client, zipf_keys(rng, BURST, prefix))
                return predicate()

            return wait_for(step, timeout=timeout, interval=0.05, what=what)

        traffic_until("a", lambda: (r := drift_status(agent)["reference"]) and r["reason"] == "initial", "workload A to become the reference")
        seen: list[Any] = []

        def no_drift_yet() -> bool:
            last = drift_status(agent)["last_result"] or {}
            seen.append(last)
            return last.get("status") == "no_drift"

        try:
            traffic_until("a", no_drift_yet, "a check of workload A against itself")
        except AssertionError:
            raise AssertionError(f"workload A kept drifting against itself; last results: {seen[-3:]}") from None
        before = drift_status(agent)
        assert before["reference"]["events"] >= 500
        drifted = traffic_until("b", lambda: (drift_status(agent)["last_result"] or {}).get("status") == "drift", "drift on workload B")
        assert drifted
        status = drift_status(agent)
        assert status["checks"] > before["checks"]
        assert status["last_result"]["affected_features"], status
        assert wait_for(lambda: (agent.metric('predis_drift_checks_total{status="drift"}') or 0) >= 1, what="the drift metric")

        def drift_events() -> list[dict[str, Any]]:
            found = []
            for request in rx.requests("/v1/accounts/events"):
                for event in request.json or []:
                    if event.get("kind") == "drift_detected":
                        found.append(event)
            return found

        events = wait_for(drift_events, timeout=30, what="the drift_detected custom event at the receiver")
        assert events[0]["eventType"] == "PredisAgentEvent"
        client.close()
    finally:
        agent.stop()
