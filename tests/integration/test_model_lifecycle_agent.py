# SPDX-License-Identifier: Apache-2.0
"""The model lifecycle end to end, in the running agent, driven by real Redis-protocol reads.

1. Workload A (a Markov chain over the ``a`` keys) is bootstrapped offline:
   ``predis-agent model train`` registers a markov model trained on a trace of A as the
   tenant's first version, the champion. The agent serves it, frozen
   (``cache.prefetch.learn_online: false``): a version is one behaviour.
2. The workload switches to B (another chain, over the ``b`` keys): the champion knows
   nothing of it, the hit ratio falls, the drift monitor detects the drift, the drift
   policy asks for a retrain, the pipeline trains a candidate on the access log, it beats
   the champion on the held-out slice and becomes the challenger; the canary steps it up
   and promotes it.
3. A deliberately bad challenger — trained on A while the traffic is B — is registered
   with the CLI; the canary rolls it back automatically within its block budget.

Every step is checked where an operator would see it: the events at a push exporter (New
Relic custom events, received by the test's HTTPS receiver), ``/metrics``, ``/status``,
``/readyz`` and the registry's audit log.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.agentproc import AgentProcess, cli
from tests.peers import NewRelicReceiver, self_signed_cert
from tests.polling import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI needed for the receiver's certificate"),
]

KEYS = 1000  # per workload
FOLLOW = 0.95  # chance a read goes to the chain's successor rather than a random key
STEP_READS = 400  # reads between two looks at the agent
BLOCK_BUDGET = 40
TENANT = "shop-eu"


class Chain:
    """A Markov chain over one key set: mostly a fixed successor, sometimes a jump."""

    def __init__(self, prefix: str, seed: int) -> None:
        self.rng = random.Random(seed)
        order = list(range(KEYS))
        self.rng.shuffle(order)
        self.successor = {order[i]: order[(i + 1) % KEYS] for i in range(KEYS)}
        self.prefix = prefix
        self.state = order[0]

    def next_key(self) -> str:
        self.state = self.successor[self.state] if self.rng.random() < FOLLOW else self.rng.randrange(KEYS)
        return f"{self.prefix}{self.state:05d}"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[NewRelicReceiver, Path]]:
    cert = self_signed_cert(tmp_path / "tls")
    with NewRelicReceiver(cert) as rx:
        yield rx, cert.cert


def events_of(rx: NewRelicReceiver, kind: str) -> list[dict[str, Any]]:
    found = []
    for request in rx.requests("/v1/accounts/events"):
        for event in request.json or []:
            if event.get("kind") == kind:
                found.append(event)
    return found


def test_drift_retrain_canary_promotion_and_automatic_rollback(tmp_path: Path, receiver: tuple[NewRelicReceiver, Path]) -> None:
    rx, ca = receiver
    origin = tmp_path / "origin"
    origin.mkdir()
    for prefix in ("a", "b"):
        for i in range(KEYS):
            (origin / f"{prefix}{i:05d}").write_bytes(f"{prefix}-{i}".encode() * 8)
    registry = tmp_path / "registry"
    config = {
        "agent": {"reload": {"watch": False}},
        "cache": {
            "max_keys": 100,
            "read_through": True,
            "origin": "files",
            # One client walking a chain a read at a time: the canary tells the models apart
            # by prefetches that land before the next read, so the worker steps on every
            # read instead of resting (max_cpu_share 1: what docs/prefetching.md suggests
            # for a few clients on predictable paths). With rests, how many land depended
            # on the machine's speed: on a slow one the champion's arm hit 9 %, the bad
            # challenger's 7 %, too close for the canary within its budget. For the same
            # reason the models run in the worker thread: a step through the model process
            # waits for two hops between processes (with it the canary needed 69 blocks).
            "prefetch": {"enabled": True, "model": "markov", "depth": 2, "learn_online": False, "max_cpu_share": 1.0, "model_process": False},
        },
        "plugins": {"files": {"root": str(origin)}},
        "collectors": {"access_log": {"enabled": True, "store_raw_keys": True, "ring_capacity": 1 << 16}},
        "drift": {"check_interval_seconds": 1, "window_events": 2000, "min_samples": 500},
        "mlops": {
            "registry_dir": str(registry),
            "tenant": TENANT,
            "eval_cache_share": 0.1,
            "check_interval_seconds": 0.5,
            "retrain": {
                "enabled": True,
                "kind": "markov",
                "recent_requests": 2500,
                "history_requests": 0,
                "min_requests": 1000,
                "min_interval_seconds": 3600,
                # Train on B, not on the moment it began: how many B reads precede the
                # drift check depends on the machine's speed.
                "settle_requests": 2000,
                "time_budget_seconds": 60,
            },
            "rollout": {"steps": [0.2, 0.5, 1.0], "block_requests": 150, "min_blocks": 3, "max_blocks": BLOCK_BUDGET, "margin": 0.02, "z": 3},
        },
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
    env = {"NR_TEST_KEY": "nr-test-key-0123456789", "HTTPS_PROXY": "", "https_proxy": ""}
    agent = AgentProcess(tmp_path, config, env=env)
    conf = str(agent.config_path)

    # 1. Bootstrap workload A offline: the tenant's first model becomes the champion.
    chain_a = Chain("a", seed=1)
    trace_a = tmp_path / "a.txt"
    trace_a.write_text("\n".join(chain_a.next_key() for _ in range(20_000)) + "\n")
    trained = json.loads(cli("model", "train", "--tenant", TENANT, "--trace", str(trace_a), "--model", "markov", "--config", conf, "--json", env=agent.env).stdout)
    assert trained["registered"] and trained["version"] == 1 and trained["alias"] == "champion"

    agent.start()
    try:
        port = int(agent.status()["components"]["cache"]["resp"]["address"].rsplit(":", 1)[1])
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, protocol=2)

        def mlops() -> dict[str, Any]:
            return agent.status()["components"]["mlops"]

        def reads(chain: Chain, n: int = STEP_READS) -> None:
            for _ in range(n):
                assert client.get(chain.next_key()) is not None

        def traffic_until(chain: Chain, predicate: Any, what: str, timeout: float = 120) -> Any:
            def step() -> Any:
                reads(chain)
                return predicate()

            return wait_for(step, timeout=timeout, interval=0.01, what=what)

        assert mlops()["serving_version"] == 1
        ready = agent.get("/readyz").json()
        assert ready["components"]["prefetch"]["ok"], ready
        assert "test inference" in ready["components"]["prefetch"]["detail"]

        # Workload A, served by the champion, becomes the drift reference. (Switching right
        # after: how well prefetches land in time depends on the machine's load, and a
        # long A phase would let a load swing alone pass for a degradation.)
        traffic_until(chain_a, lambda: (agent.status()["components"]["drift"]["reference"] or {}).get("events", 0) >= 500, "workload A as the drift reference")
        assert not events_of(rx, "retrain_started")

        # 2. Workload B: drift -> retrain -> challenger -> canary -> promotion.
        chain_b = Chain("b", seed=2)
        traffic_until(chain_b, lambda: events_of(rx, "drift_detected"), "the drift_detected event")
        finished = traffic_until(chain_b, lambda: events_of(rx, "retrain_finished"), "the retrain to finish")
        report = finished[0]
        assert report["result"] == "registered", report
        assert report["reason"].startswith("drift:"), report
        assert report["version"] == 2 and report["alias"] == "challenger"
        assert report["candidate_hit_ratio"] > report["champion_hit_ratio"] + 0.05, report
        # Metrics join the next collection round: poll for them.
        wait_for(lambda: agent.metric('predis_mlops_retrain_total{result="registered"}') == 1, what="the retrain counter")
        assert (agent.metric("predis_mlops_retrain_duration_seconds_count") or 0) >= 1

        traffic_until(chain_b, lambda: events_of(rx, "rollout_promote"), "the canary to promote the challenger")
        kinds = [e["kind"] for e in rx_events(rx) if e["kind"].startswith("rollout_")]
        assert kinds[:3] == ["rollout_started", "rollout_advance", "rollout_promote"], kinds
        advance = events_of(rx, "rollout_advance")[0]
        assert advance["from_share"] == 0.2 and advance["to_share"] == 0.5
        assert advance["challenger_hit_ratio"] > advance["champion_hit_ratio"]
        assert wait_for(lambda: mlops()["serving_version"] == 2, what="v2 serving")
        wait_for(lambda: agent.metric('predis_mlops_rollout_decisions_total{decision="promote"}') == 1, what="the promote counter")
        wait_for(lambda: agent.metric(f'predis_mlops_serving_version{{tenant="{TENANT}"}}') == 2, what="the serving-version gauge")
        aliases = {row["version"]: row["aliases"] for row in json.loads(cli("model", "list", "--tenant", TENANT, "--config", conf, "--json", env=agent.env).stdout)}
        assert aliases == {1: [], 2: ["champion"]}

        # 3. A bad challenger: trained on A while the traffic is B. It beats v2 on A's own
        # held-out slice, so it is registered; the canary sees it lose and rolls it back.
        bad = json.loads(cli("model", "train", "--tenant", TENANT, "--trace", str(trace_a), "--model", "markov", "--config", conf, "--json", env=agent.env).stdout)
        assert bad["registered"] and bad["version"] == 3 and bad["alias"] == "challenger", bad
        rollback = traffic_until(chain_b, lambda: events_of(rx, "rollout_rollback"), "the canary to roll the bad challenger back")[0]
        assert rollback["challenger_version"] == 3
        assert "worse" in rollback["reason"], rollback
        assert max(json.loads(rollback["blocks"])) <= BLOCK_BUDGET
        assert rollback["challenger_hit_ratio"] < rollback["champion_hit_ratio"]
        wait_for(lambda: agent.metric('predis_mlops_rollout_decisions_total{decision="rollback"}') == 1, what="the rollback counter")
        status = mlops()
        assert status["serving_version"] == 2 and status["rollout"] is None
        assert status["last_rollout"]["state"] == "rolled_back"

        # The audit log has every move and decision, in order.
        audit = json.loads(cli("model", "audit", "--tenant", TENANT, "--config", conf, "--json", env=agent.env).stdout)
        moves = [(e["alias"], e["action"], e["from"], e["to"]) for e in audit]
        assert moves == [
            ("champion", "register", None, 1),
            ("challenger", "promote", None, 2),
            ("challenger", "canary_step", 2, 2),
            ("champion", "promote", 1, 2),
            ("challenger", "promote", 2, None),
            ("challenger", "promote", None, 3),
            ("challenger", "rollback", 3, None),
        ], moves
        assert all(e["actor"] == "predis-agent canary" for e in audit[2:5]) and audit[6]["actor"] == "predis-agent canary"
        client.close()
    finally:
        agent.stop()


def rx_events(rx: NewRelicReceiver) -> list[dict[str, Any]]:
    """Every custom event the receiver got, in arrival order."""
    return [event for request in rx.requests("/v1/accounts/events") for event in (request.json or [])]
