# SPDX-License-Identifier: Apache-2.0
"""AIOps against a running agent (issue 28): each condition is driven for real and must be
detected within a stated number of collection rounds; an action fires (or records its
dry run) only when opted in, its rate limit holds, the audit log records it, and the agent
recovers when the condition clears.

* A vendor outage (nothing listens where Datadog is sent) fills the spool: the spool ETA
  falls below its horizon, the live ``pause_access_log_export`` holds the access-log
  export; VictoriaMetrics (a real Datadog-API peer) coming up on that port drains the spool,
  the ETA goes away and the export resumes; a second outage within the rate limit is
  recorded ``rate_limited`` and changes nothing.
* A memory budget filling (Redis clients writing faster than anything leaves): the
  memory_budget ETA, and a dry-run ``shrink_prefetch_queue`` record that says what it would
  do while the prefetcher keeps its queue.
* A bad model lowering the hit ratio (a markov model trained on another application's keys
  promoted over the stride model that prefetches a scan): the hit_ratio anomaly, the live
  ``rollback_model`` puts the previous champion back in the registry and in service, and the
  hit ratio recovers.
* A flapping sink (a New Relic stand-in failing every other send): the breaker_transitions
  anomaly, and nothing acts or is written because nothing is opted in.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests import peers
from tests.agentproc import AgentProcess, cli
from tests.polling import wait_for

pytestmark = [pytest.mark.integration]

# Rounds (agent.collect.interval_seconds 0.2) within which each condition must be detected.
# The forecasts need aiops.forecast.min_rounds (5) of a shrinking headroom; the Datadog
# exporter sends once a second (5 rounds), so two sends after the minimum.
SPOOL_DETECTION_ROUNDS = 20
MEMORY_DETECTION_ROUNDS = 12
# The anomaly needs aiops.anomaly.consecutive_rounds (3) beyond its threshold.
HIT_RATIO_DETECTION_ROUNDS = 8
# aiops.anomaly.flap_min_transitions (4) within flap_window_rounds (20).
FLAP_DETECTION_ROUNDS = 20
DEADLINE_SECONDS = 60.0
REDIS_TIMEOUT_SECONDS = 5.0
MEMORY_BUDGET_BYTES = 1 << 20
VALUE_BYTES = 1024
KEYS_PER_ROUND = 40
FLAPS = 3
TENANT = "tenant1"
TRACE_KEYS = 40
TRACE_PATTERN = 60
TRACE_REPEATS = 50
# The scan: many more origin blocks than the cache holds, so a hit is a prefetched block.
SCAN_BLOCKS = 3000
SCAN_CACHE_KEYS = 256
# The good model's hit ratio on the scan is at least this; the bad one's falls by more than RATIO_FALL.
GOOD_HIT_RATIO = 0.3
RATIO_FALL = 0.2
SEGMENT_KEY_BYTES = 32

FAST_SINKS = {
    "retry_initial_seconds": 0.05,
    "retry_max_seconds": 0.2,
    "breaker_fail_max": 1,
    "breaker_reset_timeout_seconds": 0.5,
    "attempt_timeout_seconds": 2,
    "spool_min_free_bytes": 0,
    "spool_min_free_percent": 0,
}
AIOPS_FAST = {"forecast": {"min_rounds": 5, "window_rounds": 30}, "anomaly": {"warmup_rounds": 10, "consecutive_rounds": 3}}


def aiops(agent: AgentProcess) -> dict[str, Any]:
    result: dict[str, Any] = agent.status()["components"]["aiops"]
    return result


def home(tmp_path: Path) -> Path:
    path = tmp_path / "agent"
    path.mkdir()
    return path


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def resp_client(agent: AgentProcess) -> redis.Redis:
    address = agent.status()["components"]["cache"]["resp"]["address"]
    return redis.Redis(host=peers.LOOPBACK, port=int(address.rsplit(":", 1)[1]), socket_timeout=REDIS_TIMEOUT_SECONDS, protocol=2)


@pytest.fixture
def started() -> Iterator[list[AgentProcess]]:
    agents: list[AgentProcess] = []
    yield agents
    for agent in agents:
        agent.stop()


# ----------------------------------------------------------------------------- vendor outage
@pytest.mark.skipif(peers.VICTORIA_METRICS is None, reason="victoria-metrics is not installed (Debian package 'victoria-metrics')")
def test_vendor_outage_filling_the_spool(tmp_path: Path, started: list[AgentProcess]) -> None:
    port = peers.free_port()
    audit = tmp_path / "state" / "audit.jsonl"
    segment_key = tmp_path / "segment.key"
    fd = os.open(segment_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(os.urandom(SEGMENT_KEY_BYTES))
    agent = AgentProcess(
        home(tmp_path),
        {
            "agent": {"shutdown_timeout_seconds": 2, "sinks": {**FAST_SINKS, "spool_dir": str(tmp_path / "spool")}},
            "collectors": {"access_log": {"enabled": True, "export_dir": str(tmp_path / "access-log"), "encryption_key": f"${{file:{segment_key}}}", "min_free_bytes": 0, "min_free_percent": 0}},
            "exporters": {"datadog": {"enabled": True, "api_host": f"http://{peers.LOOPBACK}:{port}/datadog", "api_key": "${env:DD_KEY}", "interval": 1, "events": False}},
            "aiops": {
                **AIOPS_FAST,
                "forecast": {**AIOPS_FAST["forecast"], "horizon_seconds": {"spool": 31536000}},
                "remediation": {
                    "opt_in": ["pause_access_log_export"],
                    "live": ["pause_access_log_export"],
                    "min_interval_seconds": 3600,
                    "revert_after_clear_rounds": 3,
                    "audit_log": str(audit),
                },
            },
        },
        env={"DD_KEY": "dd-test-key"},
    )
    started.append(agent)
    agent.start()

    # The outage runs from the start: detected within SPOOL_DETECTION_ROUNDS.
    state = wait_for(lambda: (s := aiops(agent))["forecasts"]["spool"]["below_horizon"] and s, timeout=DEADLINE_SECONDS, what="spool ETA below its horizon")
    assert state["rounds"] <= SPOOL_DETECTION_ROUNDS, state["forecasts"]["spool"]
    eta = state["forecasts"]["spool"]["eta_seconds"]
    assert eta is not None and eta > 0
    assert wait_for(lambda: agent.metric('predis_aiops_eta_seconds{resource="spool"}'), timeout=DEADLINE_SECONDS, what="the spool ETA metric") > 0
    applied = wait_for(lambda: [r for r in audit_records(audit) if r["outcome"] == "applied"], timeout=DEADLINE_SECONDS, what="the applied record")
    assert applied[0]["action"] == "pause_access_log_export" and applied[0]["trigger"] == "eta:spool" and applied[0]["mode"] == "live"
    assert applied[0]["evidence"]["resource"] == "spool" and applied[0]["evidence"]["eta_seconds"] > 0
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600
    wait_for(lambda: agent.status()["components"]["access_log"]["state"] == "held", timeout=DEADLINE_SECONDS, what="the access-log export held")
    assert aiops(agent)["remediation"]["actions"]["pause_access_log_export"]["applied"] is True

    # The vendor comes back: the spool drains, the ETA goes, the export resumes.
    with peers.victoria_metrics(tmp_path / "vm", port):
        wait_for(lambda: agent.status()["sinks"]["datadog"]["queued_points"] == 0, timeout=DEADLINE_SECONDS, what="the spool drained")
        wait_for(lambda: not aiops(agent)["forecasts"]["spool"]["below_horizon"], timeout=DEADLINE_SECONDS, what="the spool ETA cleared")
        wait_for(lambda: [r for r in audit_records(audit) if r["outcome"] == "reverted"], timeout=DEADLINE_SECONDS, what="the reverted record")
        wait_for(lambda: agent.status()["components"]["access_log"]["state"] == "exporting", timeout=DEADLINE_SECONDS, what="export resumed")
        assert agent.metric('predis_aiops_eta_seconds{resource="spool"}') is None

    # A second outage within min_interval_seconds: recorded, not acted on.
    wait_for(lambda: [r for r in audit_records(audit) if r["outcome"] == "rate_limited"], timeout=DEADLINE_SECONDS, what="the rate-limited record")
    assert [r["outcome"] for r in audit_records(audit)] == ["applied", "reverted", "rate_limited"]
    assert agent.status()["components"]["access_log"]["state"] == "exporting"
    assert agent.metric('predis_aiops_actions_total{action="pause_access_log_export",outcome="rate_limited"}') == 1


# ----------------------------------------------------------------------------- memory budget
def test_memory_budget_filling_records_a_dry_run(tmp_path: Path, started: list[AgentProcess]) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    audit = tmp_path / "audit.jsonl"
    agent = AgentProcess(
        home(tmp_path),
        {
            "cache": {"max_memory_bytes": MEMORY_BUDGET_BYTES, "read_through": True, "origin": "files", "prefetch": {"enabled": True, "model": "stride"}},
            "plugins": {"files": {"root": str(origin)}},
            "aiops": {**AIOPS_FAST, "remediation": {"opt_in": ["shrink_prefetch_queue"], "audit_log": str(audit)}},
        },
    )
    started.append(agent)
    agent.start()
    client = resp_client(agent)
    value = b"v" * VALUE_BYTES
    begun = aiops(agent)["rounds"]
    written = 0
    state: dict[str, Any] = {}
    # KEYS_PER_ROUND values per collection round, paced by the rounds /status reports.
    while not state.get("forecasts", {}).get("memory_budget", {}).get("below_horizon"):
        seen = aiops(agent)["rounds"]
        assert seen - begun <= MEMORY_DETECTION_ROUNDS, f"memory_budget not forecast after {seen - begun} rounds: {aiops(agent)['forecasts']}"
        pipe = client.pipeline(transaction=False)
        for _ in range(KEYS_PER_ROUND):
            pipe.set(f"fill:{written}", value)
            written += 1
        pipe.execute()
        state = wait_for(lambda seen=seen: (s := aiops(agent))["rounds"] > seen and s, timeout=DEADLINE_SECONDS, what="the next round")
    records = wait_for(lambda: audit_records(audit), timeout=DEADLINE_SECONDS, what="the dry-run record")
    assert records[0]["outcome"] == "dry_run" and records[0]["action"] == "shrink_prefetch_queue" and records[0]["trigger"] == "eta:memory_budget"
    assert records[0]["detail"] == "would: retune the prefetcher: queue_max_batches 16384 -> 8192"
    assert records[0]["evidence"]["headroom"] < MEMORY_BUDGET_BYTES
    assert aiops(agent)["remediation"]["actions"]["shrink_prefetch_queue"]["mode"] == "dry_run"

    # The writers stop: the headroom no longer shrinks, the ETA goes away; nothing was applied.
    wait_for(lambda: not aiops(agent)["forecasts"]["memory_budget"]["below_horizon"], timeout=DEADLINE_SECONDS, what="the memory ETA cleared")
    assert aiops(agent)["events"]["aiops_eta_recovered"] >= 1
    assert [r["outcome"] for r in audit_records(audit)] == ["dry_run"]
    assert client.ping() is True
    client.close()


# ----------------------------------------------------------------------------- hit ratio
def _trace(path: Path, prefix: str, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    pattern = [f"{prefix}:{rng.randrange(TRACE_KEYS):04d}" for _ in range(TRACE_PATTERN)]
    path.write_text("".join(f"{key}\n" for key in pattern * TRACE_REPEATS))
    return path


class Scanner:
    """A client scanning the origin's blocks in order, one GET at a time, round and round:
    the cache holds far fewer keys than a round, so only prefetching makes hits."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                self.client.get(f"blk{n % SCAN_BLOCKS:05d}")
                n += 1
        except BaseException as exc:
            self.error = exc


def test_a_bad_model_lowering_the_hit_ratio_is_rolled_back(tmp_path: Path, started: list[AgentProcess]) -> None:
    """A good model (stride, v1) prefetches a scan; a bad one (markov trained on other keys,
    v2, learning nothing online) is promoted and serves: the hit ratio falls, the anomaly is
    detected, the live rollback puts v1 back and the hit ratio recovers."""
    origin = tmp_path / "origin"
    origin.mkdir()
    for i in range(SCAN_BLOCKS):
        (origin / f"blk{i:05d}").write_bytes(b"x")
    audit = tmp_path / "audit.jsonl"
    agent = AgentProcess(
        home(tmp_path),
        {
            "cache": {
                "max_keys": SCAN_CACHE_KEYS,
                "read_through": True,
                "origin": "files",
                "prefetch": {"enabled": True, "model": "stride", "depth": 8, "adaptive": False, "threshold": 0.1, "model_process": False, "learn_online": False},
            },
            "plugins": {"files": {"root": str(origin)}},
            "mlops": {"registry_dir": str(tmp_path / "models"), "tenant": TENANT, "check_interval_seconds": 0.5},
            "console": {"control_share": 0.0},
            "aiops": {**AIOPS_FAST, "remediation": {"opt_in": ["rollback_model", "request_retrain"], "live": ["rollback_model"], "audit_log": str(audit)}},
        },
    )
    config = str(agent.config_path)
    scan = tmp_path / "scan.txt"
    scan.write_text("".join(f"blk{i:05d}\n" for i in range(SCAN_BLOCKS)))
    cli("model", "train", "--tenant", TENANT, "--trace", str(scan), "--model", "stride", "--config", config)
    started.append(agent)
    agent.start()
    wait_for(lambda: agent.status()["components"]["mlops"]["serving_version"] == 1, timeout=DEADLINE_SECONDS, what="the good model v1 served")
    client = resp_client(agent)
    scanner = Scanner(client)
    scanner.thread.start()
    try:
        good = wait_for(
            lambda: (a := aiops(agent)["anomalies"]["hit_ratio"])["baseline"] is not None and a["baseline"] >= GOOD_HIT_RATIO and a,
            timeout=DEADLINE_SECONDS,
            what="a hit-ratio baseline from the good model's prefetching",
        )
        # The bad model: trained on keys of another application, it prefetches nothing of the scan.
        cli("model", "train", "--tenant", TENANT, "--trace", str(_trace(tmp_path / "b.txt", "b", 2)), "--model", "markov", "--promote", "--config", config)
        wait_for(lambda: agent.status()["components"]["mlops"]["serving_version"] == 2, timeout=DEADLINE_SECONDS, what="the bad model v2 served")
        begun = aiops(agent)["rounds"]
        state = wait_for(lambda: (s := aiops(agent))["anomalies"]["hit_ratio"]["active"] and s, timeout=DEADLINE_SECONDS, what="the hit-ratio anomaly")
        assert state["rounds"] - begun <= HIT_RATIO_DETECTION_ROUNDS, state["anomalies"]["hit_ratio"]
        records = wait_for(lambda: len(r := audit_records(audit)) >= 2 and r, timeout=DEADLINE_SECONDS, what="two action records")
        by_action = {r["action"]: r for r in records}
        assert by_action["rollback_model"]["outcome"] == "applied" and by_action["rollback_model"]["trigger"] == "anomaly:hit_ratio"
        evidence = by_action["rollback_model"]["evidence"]
        assert evidence["baseline"] >= GOOD_HIT_RATIO and evidence["value"] < evidence["baseline"] - RATIO_FALL, evidence
        assert by_action["request_retrain"]["mode"] == "dry_run"
        wait_for(lambda: agent.status()["components"]["mlops"]["serving_version"] == 1, timeout=DEADLINE_SECONDS, what="v1 served again")
        assert "v1" in next(line for line in cli("model", "list", "--tenant", TENANT, "--config", config).stdout.splitlines() if "champion" in line)

        # The good model prefetches again: the hit ratio recovers and the anomaly clears; the
        # rollback stays, and nothing more is done.
        wait_for(lambda: not aiops(agent)["anomalies"]["hit_ratio"]["active"], timeout=DEADLINE_SECONDS, what="the anomaly cleared")
        assert aiops(agent)["events"]["aiops_anomaly_cleared"] >= 1
        assert aiops(agent)["anomalies"]["hit_ratio"]["value"] >= good["baseline"] - RATIO_FALL
        assert sorted(r["outcome"] for r in audit_records(audit)) == sorted(r["outcome"] for r in records)
    finally:
        scanner.stop.set()
        scanner.thread.join(REDIS_TIMEOUT_SECONDS)
        client.close()
    assert scanner.error is None, scanner.error


# ----------------------------------------------------------------------------- flapping sink
def test_flapping_sink_is_detected_and_nothing_acts_unasked(tmp_path: Path, started: list[AgentProcess]) -> None:
    audit = tmp_path / "audit.jsonl"
    with peers.NewRelicReceiver(peers.self_signed_cert(tmp_path / "tls")) as receiver:
        agent = AgentProcess(
            home(tmp_path),
            {
                "agent": {"sinks": FAST_SINKS},
                "exporters": {
                    "newrelic": {
                        "enabled": True,
                        "host": peers.LOOPBACK,
                        "event_host": peers.LOOPBACK,
                        "port": receiver.port,
                        "api_key": "${env:NR_KEY}",
                        "ca_file": str(tmp_path / "tls" / "cert.pem"),
                        "interval": 1,
                        "events": False,
                    }
                },
                "aiops": {**AIOPS_FAST, "remediation": {"audit_log": str(audit)}},
            },
            env={"NR_KEY": "nr-test-key", "HTTPS_PROXY": "", "https_proxy": ""},
        )
        started.append(agent)
        agent.start()
        wait_for(lambda: receiver.requests(), timeout=DEADLINE_SECONDS, what="a first delivery")

        def breaker() -> str:
            return str(agent.status()["sinks"]["newrelic"]["breaker"])

        begun = aiops(agent)["rounds"]
        for _ in range(FLAPS):
            receiver.fail_next(500)
            wait_for(lambda: breaker() == "open", timeout=DEADLINE_SECONDS, what="the breaker open")
            wait_for(lambda: breaker() == "closed", timeout=DEADLINE_SECONDS, what="the breaker closed")
        state = wait_for(lambda: (s := aiops(agent))["anomalies"]["breaker_transitions"]["active"] and s, timeout=DEADLINE_SECONDS, what="the flapping anomaly")
        assert state["rounds"] - begun <= FLAPS * FLAP_DETECTION_ROUNDS
        assert agent.metric('predis_aiops_anomaly{signal="breaker_transitions"}') == 1
        # The sink delivers again: the anomaly clears once the window has no transitions.
        wait_for(lambda: not aiops(agent)["anomalies"]["breaker_transitions"]["active"], timeout=DEADLINE_SECONDS, what="the flapping cleared")
    assert not audit.exists()
    assert all(a["mode"] == "off" and not a["counts"] for a in aiops(agent)["remediation"]["actions"].values())
