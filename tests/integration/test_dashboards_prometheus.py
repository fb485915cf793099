# SPDX-License-Identifier: Apache-2.0
"""Every query of every committed Grafana dashboard (deploy/grafana/*.json), run against a real
Prometheus (Debian ``prometheus``) scraping a running agent under a workload.

The agent prefetches from the ``files`` origin (stride model), keeps a control share, logs its
accesses and checks them for drift, and pushes to two exporters: Datadog into a real
VictoriaMetrics (it also rejects the agent's events with a 400, which become dead letters) and
New Relic into the test's HTTPS receiver (no real server takes that API offline), which
answers one 413 (a split) and then 500s (failures, the breaker opens). redis-py drives a
sequential scan (prefetched), sets, deletes, a failing command, and two Zipf workloads over
disjoint key sets, the second of which the drift monitor detects. Prometheus also loads
deploy/prometheus/alerts.yml: every rule must evaluate without error against the real series,
and the drift raises PredisAgentDriftDetected.

Grafana's variables are replaced by concrete values ($job, $instance: the scraped agent;
$__rate_interval: RATE_INTERVAL) and each query goes to /api/v1/query. A query Prometheus
refuses fails the test; so does one that returns nothing, naming its panel, unless the panel
is listed in NEEDS_PEER or NEEDS_GPU with the reason it cannot have data here (those must
then return nothing, so that a list entry goes once its panel has data), or in MAY_BE_EMPTY.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import pytest
import redis
import requests
import yaml

from tests import peers
from tests.agentproc import AgentProcess
from tests.dashboards import ALERTS, PanelQuery, committed_dashboards, panel_queries
from tests.polling import wait_for

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package 'prometheus'; .ci/run installs it)"),
    pytest.mark.skipif(peers.VICTORIA_METRICS is None, reason="victoria-metrics not installed (Debian package 'victoria-metrics'; .ci/run installs it)"),
    pytest.mark.skipif(peers.OPENSSL is None, reason="the openssl CLI is not installed; it makes the New Relic receiver's certificate"),
]

JOB = "predis-agent"
SCRAPE_INTERVAL = "1s"
# What $__rate_interval becomes: long enough to span the whole workload at a 1 s scrape.
RATE_INTERVAL = "5m"
TOKEN_FILE_MODE = 0o600
HTTP_TIMEOUT_SECONDS = 10
REDIS_TIMEOUT_SECONDS = 10
READY_DEADLINE_SECONDS = 15.0
# The first sample of a target is queryable only after ~5-6 s (the scrape manager's tick);
# a loaded 2-core machine gets generous deadlines.
SCRAPE_DEADLINE_SECONDS = 60.0
QUERY_DEADLINE_SECONDS = 60.0
WORKLOAD_DEADLINE_SECONDS = 120.0
# Start-up, the workload's two deadlines and the queries' on a loaded machine.
TEST_TIMEOUT_SECONDS = 600
POLL_SECONDS = 0.5
NEVER_EVALUATED = "0001-01-01T"
LABEL_VALUES = re.compile(r"label_values\((.+), (\w+)\)")
STOP_TIMEOUT_SECONDS = 10.0
SHUTDOWN_TIMEOUT_SECONDS = 2
BLOCKS = 300
ZIPF_KEYS = 2000
ZIPF_BURST = 3000
VALUE = b"v" * 64
SET_EVERY = 10
SEED = 26
NR_FAILURES = 40
NR_KEY = "nr-dashboards-key-0123456789"
DD_KEY = "dd-dashboards-key-0123456789"
FAST_SINKS = {
    "retry_initial_seconds": 0.1,
    "retry_max_seconds": 0.5,
    "breaker_fail_max": 3,
    "breaker_reset_timeout_seconds": 1,
    "attempt_timeout_seconds": 2,
}

# Panels whose series only exist when something happens that this workload does not cause,
# by (dashboard title, panel title, query refId): the reason is printed with the results.
NEEDS_PEER: dict[tuple[str, str, str], str] = {
    ("Predis Agent / Prefetching and models", "Canary arms' hit ratio", "A"): "only while a canary runs: needs a registered challenger model (tests/integration/test_model_lifecycle_agent.py)",
    ("Predis Agent / Prefetching and models", "Retrain evaluation", "A"): "set by a retraining run (mlops retrain policy and enough access-log data)",
    ("Predis Agent / Prefetching and models", "Retrain evaluation", "B"): "set by a retraining run (mlops retrain policy and enough access-log data)",
    ("Predis Agent / Prefetching and models", "Retrain evaluation", "C"): "set by a retraining run (mlops retrain policy and enough access-log data)",
}
# Panels that may or may not have data here: checked as valid PromQL only.
MAY_BE_EMPTY: dict[tuple[str, str, str], str] = {
    ("Predis Agent / Host and GPU", "Plugin errors", "A"): "counted only when a plugin raises or a collector times out, which a loaded machine may cause",
}
# Panels that need an NVIDIA GPU (NVML answering): required when the agent's predis_gpu_up is 1.
GPU_ONLY = "needs an NVIDIA GPU: NVML reports none on this machine (predis_gpu_up is 0)"
NEEDS_GPU: dict[tuple[str, str, str], str] = {
    ("Predis Agent / Host and GPU", panel, ref): GPU_ONLY
    for panel, refs in {
        "NVML": "B",
        "GPU utilisation": "A",
        "GPU memory utilisation": "A",
        "GPU memory": "AB",
        "GPU temperature": "A",
        "GPU power": "AB",
        "GPU clocks": "AB",
        "PCIe throughput": "AB",
        "ECC errors": "A",
        "XID events": "A",
        "Throttle reasons": "A",
    }.items()
    for ref in refs
}


def _key(query: PanelQuery) -> tuple[str, str, str]:
    return (query.dashboard, query.panel, query.ref_id)


def concrete(expr: str, instance: str) -> str:
    """The query Grafana would send: its variables replaced by this test's values."""
    out = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$job", JOB).replace("$instance", instance)
    assert "$" not in out, f"a Grafana variable left in {out}"
    return out


# ----------------------------------------------------------------------------- Prometheus
@dataclass
class Prometheus:
    base: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = requests.get(f"{self.base}/api/v1/query", params={"query": expr}, timeout=HTTP_TIMEOUT_SECONDS)
        data: dict[str, Any] = resp.json()
        assert resp.status_code == 200 and data["status"] == "success", f"Prometheus refused {expr}: {data}"
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def get(self, path: str) -> Any:
        resp = requests.get(f"{self.base}{path}", timeout=HTTP_TIMEOUT_SECONDS)
        resp.raise_for_status()
        return resp.json()["data"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    """A factory: start Prometheus scraping one agent with its own token; stopped at teardown."""
    started: list[Prometheus] = []

    def start(agent: AgentProcess) -> Prometheus:
        token_file = tmp_path / "prometheus.token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, TOKEN_FILE_MODE)
        with os.fdopen(fd, "w") as out:
            out.write(agent.create_token("prometheus"))
        target = agent.base_url.split("://", 1)[1].rstrip("/")
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": JOB, "authorization": {"credentials_file": str(token_file)}, "static_configs": [{"targets": [target]}]}
            ],
        }
        config_file = tmp_path / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        port = peers.free_port()
        log_path = tmp_path / "prometheus.log"
        assert PROMETHEUS is not None
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address={peers.LOOPBACK}:{port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        prom = Prometheus(f"http://{peers.LOOPBACK}:{port}", proc, log_path)
        started.append(prom)
        wait_for(lambda: requests.get(f"{prom.base}/-/ready", timeout=2).status_code == 200, timeout=READY_DEADLINE_SECONDS, what="Prometheus ready")
        return prom

    try:
        yield start
    finally:
        for prom in started:
            prom.proc.terminate()
            try:
                prom.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                prom.proc.kill()
                prom.proc.wait(timeout=STOP_TIMEOUT_SECONDS)


@pytest.fixture
def nr_receiver(tmp_path: Path) -> Iterator[peers.NewRelicReceiver]:
    with peers.NewRelicReceiver(peers.self_signed_cert(tmp_path / "tls")) as receiver:
        yield receiver


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[peers.VictoriaMetrics]:
    with peers.victoria_metrics(tmp_path / "vm") as running:
        yield running


@pytest.fixture
def agent(tmp_path: Path, vm: peers.VictoriaMetrics, nr_receiver: peers.NewRelicReceiver) -> Iterator[AgentProcess]:
    origin = tmp_path / "origin"
    origin.mkdir()
    for i in range(BLOCKS):
        (origin / f"blk{i:04d}").write_bytes(f"block {i}".encode())
    home = tmp_path / "agent"
    home.mkdir()
    config = {
        "agent": {"reload": {"watch": False}, "shutdown_timeout_seconds": SHUTDOWN_TIMEOUT_SECONDS, "sinks": {**FAST_SINKS, "dead_letter_dir": str(tmp_path / "dead")}},
        "cache": {
            "read_through": True,
            "origin": "files",
            "prefetch": {"enabled": True, "model": "stride", "depth": 4, "adaptive": True},
        },
        "plugins": {"files": {"root": str(origin)}},
        "console": {"control_share": 0.2},
        "collectors": {"access_log": {"enabled": True, "ring_capacity": 1 << 17}},
        "drift": {"check_interval_seconds": 1, "window_events": 20_000, "min_samples": 500},
        "exporters": {
            # Agent events go to /api/v1/events, which VictoriaMetrics answers 400: dead letters.
            "datadog": {"enabled": True, "api_host": vm.datadog_url, "api_key": "${env:DD_KEY}", "host": "h1", "interval": 1},
            "newrelic": {
                "enabled": True,
                "host": peers.LOOPBACK,
                "event_host": peers.LOOPBACK,
                "port": nr_receiver.port,
                "api_key": "${env:NR_KEY}",
                "ca_file": str(tmp_path / "tls" / "cert.pem"),
                "interval": 1,
            },
        },
    }
    # The receiver splits the first payload (413), then fails the next ones (500).
    nr_receiver.fail_next(413)
    nr_receiver.fail_next(500, NR_FAILURES)
    proc = AgentProcess(home, config, env={"DD_KEY": DD_KEY, "NR_KEY": NR_KEY, "HTTPS_PROXY": "", "https_proxy": ""})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        logs = proc.logs()
        assert DD_KEY not in logs and NR_KEY not in logs, "an API key leaked into the agent's logs"


# ----------------------------------------------------------------------------- the workload
def _client(agent: AgentProcess) -> redis.Redis:
    address = agent.status()["components"]["cache"]["resp"]["address"]
    return redis.Redis(host=peers.LOOPBACK, port=int(address.rsplit(":", 1)[1]), socket_timeout=REDIS_TIMEOUT_SECONDS, protocol=2)


def _zipf(rng: numpy.random.Generator, prefix: str) -> list[str]:
    weights = numpy.arange(1, ZIPF_KEYS + 1, dtype=numpy.float64) ** -1.0
    weights /= weights.sum()
    return [f"{prefix}:{k}" for k in rng.choice(ZIPF_KEYS, size=ZIPF_BURST, p=weights)]


def _burst(client: redis.Redis, keys: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for i, key in enumerate(keys):
        if i % SET_EVERY == 0:
            pipe.set(key, VALUE)
        else:
            pipe.get(key)
    pipe.execute()


def drive(agent: AgentProcess) -> None:
    client = _client(agent)
    rng = numpy.random.default_rng(SEED)
    order = random.Random(SEED)
    try:
        # A sequential scan through the files origin: misses read through, the stride model
        # prefetches what comes next, later reads hit prefetched entries.
        for i in range(BLOCKS):
            assert client.get(f"blk{i:04d}") == f"block {i}".encode()
        wait_for(lambda: agent.status()["components"]["cache"]["prefetch"]["used"] >= 1, timeout=WORKLOAD_DEADLINE_SECONDS, what="a prefetched entry to be used")
        # Writes, deletes, expiry and a command that fails.
        for i in range(50):
            assert client.set(f"tmp{i}", VALUE, px=order.randint(1, 5) if i % 2 else None)
        assert client.delete(*(f"tmp{i}" for i in range(0, 50, 2))) == 25
        with pytest.raises(redis.ResponseError):
            client.incr("blk0000")
        # Workload A is in the drift reference; workload B (a disjoint key set) is drift.
        for prefix in ("a", "b"):
            pipe = client.pipeline(transaction=False)
            for k in range(ZIPF_KEYS):
                pipe.set(f"{prefix}:{k}", VALUE)
            pipe.execute()

        def traffic_until(prefix: str, predicate: Any, what: str) -> Any:
            def step() -> Any:
                _burst(client, _zipf(rng, prefix))
                return predicate()

            return wait_for(step, timeout=WORKLOAD_DEADLINE_SECONDS, interval=0.05, what=what)

        def drift() -> dict[str, Any]:
            result: dict[str, Any] = agent.status()["components"]["drift"]
            return result

        traffic_until("a", lambda: (drift().get("reference") or {}).get("reason") == "initial", "workload A to become the drift reference")
        traffic_until("b", lambda: (agent.metric('predis_drift_checks_total{status="drift"}') or 0) >= 1, "drift on workload B")
    finally:
        client.close()


# ----------------------------------------------------------------------------- the test
@pytest.mark.timeout(TEST_TIMEOUT_SECONDS)
def test_every_dashboard_query_returns_data_from_a_real_prometheus(agent: AgentProcess, prometheus_for: Any) -> None:
    prom: Prometheus = prometheus_for(agent)
    instance = agent.base_url.split("://", 1)[1].rstrip("/")
    wait_for(lambda: prom.value(f'up{{job="{JOB}"}}') == 1.0, timeout=SCRAPE_DEADLINE_SECONDS, interval=POLL_SECONDS, what="the agent target to be up")
    drive(agent)
    # Prometheus has scraped the end of the workload once it sees the drift the agent saw.
    wait_for(
        lambda: (prom.value(f'sum(predis_drift_detected_total{{job="{JOB}"}})') or 0) >= 1,
        timeout=SCRAPE_DEADLINE_SECONDS,
        interval=POLL_SECONDS,
        what="the drift detection scraped by Prometheus",
    )
    gpu = prom.value(f'max(predis_gpu_up{{job="{JOB}"}})') == 1.0
    absent = {**NEEDS_PEER, **({} if gpu else NEEDS_GPU)}
    excused = {**absent, **MAY_BE_EMPTY}
    queries = panel_queries()
    stale = sorted(set(excused) - {_key(q) for q in queries})
    assert not stale, f"the exclusion lists name panels no dashboard has: {stale}"
    # The $job and $instance variables offer the scraped agent: Grafana resolves
    # label_values(METRIC{MATCHERS}, LABEL) through the label-values API.
    for board in committed_dashboards().values():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = LABEL_VALUES.fullmatch(variable["query"])
            assert match, f"{board['title']}: variable {variable['name']} is not label_values(...): {variable['query']}"
            selector = match.group(1).replace("$job", JOB)
            values = requests.get(f"{prom.base}/api/v1/label/{match.group(2)}/values", params={"match[]": selector}, timeout=HTTP_TIMEOUT_SECONDS).json()["data"]
            assert {"job": JOB, "instance": instance}[variable["name"]] in values, (board["title"], variable["name"], values)
    # Every query, excused or not, must be valid PromQL for a real Prometheus.
    for query in queries:
        prom.query(concrete(query.expr, instance))
    required = [q for q in queries if _key(q) not in excused]
    empty: list[PanelQuery] = []

    def all_answer() -> bool:
        empty[:] = [q for q in required if not prom.query(concrete(q.expr, instance))]
        return not empty

    try:
        wait_for(all_answer, timeout=QUERY_DEADLINE_SECONDS, interval=POLL_SECONDS, what="every dashboard query to return data")
    except AssertionError:
        lines = [f"{q}: {concrete(q.expr, instance)}" for q in empty]
        raise AssertionError("panels whose query returned nothing:\n" + "\n".join(lines) + f"\nthe agent's log ends:\n{agent.logs()[-1500:]}") from None
    has_data = [str(q) for q in queries if _key(q) in absent and prom.query(concrete(q.expr, instance))]
    assert not has_data, f"listed as unable to have data here, yet they have: {has_data}; drop them from NEEDS_PEER/NEEDS_GPU"
    # The alert rules evaluate cleanly against the real series, and the drift the workload
    # caused raises its alert (pending for its for:, then firing) with the agent's labels.
    def rules_evaluated() -> list[dict[str, Any]]:
        rules = [rule for group in prom.get("/api/v1/rules")["groups"] for rule in group["rules"]]
        # A rule not evaluated yet shows Go's zero time.
        return rules if not any(rule["lastEvaluation"].startswith(NEVER_EVALUATED) for rule in rules) else []

    rules = wait_for(rules_evaluated, timeout=SCRAPE_DEADLINE_SECONDS, interval=POLL_SECONDS, what="every rule evaluated once")
    assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []
    drift_alerts = [a for a in prom.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == "PredisAgentDriftDetected"]
    assert drift_alerts and all(a["state"] in ("pending", "firing") for a in drift_alerts), drift_alerts
    assert {(a["labels"]["job"], a["labels"]["instance"], a["labels"]["severity"]) for a in drift_alerts} == {(JOB, instance, "info")}
    assert prom.query(f'predis:cache_hit_ratio:rate10m{{job="{JOB}"}}'), "the hit-ratio recording rule has no value"
    # The numbers behind the panels are the workload's.
    hits_per_second = prom.value(concrete('sum(rate(predis_cache_hits_total{job=~"$job"}[$__rate_interval]))', instance))
    assert hits_per_second is not None and hits_per_second > 0
    used = prom.value(f'sum(predis_cache_prefetch_used_total{{job="{JOB}"}})')
    assert used is not None and used >= 1
    assert prom.query(f'predis_agent_sink_points_sent_total{{job="{JOB}", sink="datadog"}} > 0')
    assert prom.query(f'predis_agent_sink_splits_total{{job="{JOB}", sink="newrelic"}} > 0')
    assert prom.query(f'predis_agent_sink_dead_letters_total{{job="{JOB}", sink="datadog"}} > 0')
