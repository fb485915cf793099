# SPDX-License-Identifier: Apache-2.0
"""The push exporters end to end, against real peers on 127.0.0.1 (tests/peers.py).

* Datadog → VictoriaMetrics (the Debian binary ingests the Datadog v1 series API), read
  back through its export and PromQL APIs;
* New Relic → an HTTPS receiver that records what the real newrelic-telemetry-sdk sends
  (no real server accepts the Metric API offline);
* CloudWatch → moto's server, read back with boto3.

Then the sinks under chaos: a peer that is down when the agent starts (nothing is lost,
the old points arrive once it is up), a receiver answering 500 (breaker opens, then
closes), 429 with Retry-After (honoured), 413 (split, still delivered) and 400 (dead
letter with the vendor's answer, and later payloads keep flowing), and a peer that
accepts connections but never answers (the other exporter and /metrics are unaffected).
One more peer trickles an answer that never ends; the attempt timeout should cut it off
(the sink enforces a deadline for the whole attempt).

Everything is polled with a deadline; nothing sleeps in place of synchronisation. Tests
that need VictoriaMetrics or moto are skipped, saying why, when they are not installed.
"""

from __future__ import annotations

import datetime
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import peers
from tests.agentproc import AgentProcess, merge
from tests.polling import wait_for

pytestmark = pytest.mark.integration

# The machine is slow (2 cores) and an agent, a peer and pytest share it: generous deadlines.
DEADLINE_SECONDS = 30.0
POLL_SECONDS = 0.05
HTTP_TIMEOUT_SECONDS = 5.0
PUSH_INTERVAL_SECONDS = 1
HOST = "h1"
ENV_TAG = "env:test"
NR_SERVICE = "predis"
CW_NAMESPACE = "PredisTest"
CW_REGION = "us-east-1"
# Small retry/breaker values so chaos is over in seconds, not minutes.
FAST_SINKS = {
    "retry_initial_seconds": 0.1,
    "retry_max_seconds": 0.5,
    "breaker_reset_timeout_seconds": 1,
    "attempt_timeout_seconds": 2,
}
SHUTDOWN_TIMEOUT_SECONDS = 2
# Names on the wire: dotted for Datadog and New Relic, the Prometheus name for CloudWatch.
GENERATION_DOTTED = "predis.agent.config.generation"
RUNS_DOTTED = "predis.agent.collection.runs"
GENERATION_PROM = "predis_agent_config_generation"
RUNS_PROM = "predis_agent_collection_runs_total"
# A histogram observed once per collection round, like the runs counter is incremented:
# over the same pushes its count deltas add up to the counter's deltas.
DURATION_DOTTED = "predis.agent.collection.duration.seconds"
DURATION_PROM = "predis_agent_collection_duration_seconds"
EVENT_PATH = "/v1/accounts/events"
METRIC_PATH = "/metric/v1"

needs_vm = pytest.mark.skipif(
    peers.VICTORIA_METRICS is None, reason="victoria-metrics not installed (Debian package 'victoria-metrics'); it stands in for Datadog"
)
needs_moto = pytest.mark.skipif(not peers.HAVE_MOTO_SERVER, reason="moto[server] not installed (pip install 'moto[server]'); it stands in for CloudWatch")
needs_openssl = pytest.mark.skipif(peers.OPENSSL is None, reason="the openssl CLI is not installed; it makes the New Relic receiver's certificate")


# ----------------------------------------------------------------------------- fixtures
class Agents:
    """Starts agents under ``tmp_path``; on teardown stops them, checks they exited 0 and
    that no configured secret shows up in their logs."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[tuple[AgentProcess, list[str]]] = []

    def start(self, config: dict[str, Any], env: dict[str, str] | None = None, secrets: tuple[str, ...] = ()) -> AgentProcess:
        home = self.tmp_path / f"agent{len(self.started)}"
        home.mkdir()
        base = {"agent": {"reload": {"watch": False}, "shutdown_timeout_seconds": SHUTDOWN_TIMEOUT_SECONDS}}
        agent = AgentProcess(home, merge(base, config), env=env)
        self.started.append((agent, list(secrets)))
        return agent.start()

    def stop_all(self) -> None:
        problems = []
        for agent, secrets in self.started:
            rc = agent.stop()
            logs = agent.logs()
            if rc != 0:
                problems.append(f"agent in {agent.tmp} exited {rc}: {logs[-4000:]}")
            problems += [f"a secret leaked into the logs of the agent in {agent.tmp}" for s in secrets if s in logs]
        self.started.clear()
        assert not problems, "\n".join(problems)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    pool = Agents(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> peers.SelfSignedCert:
    if peers.OPENSSL is None:
        pytest.skip("the openssl CLI is not installed")
    return peers.self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def nr_receiver(cert: peers.SelfSignedCert) -> Iterator[peers.NewRelicReceiver]:
    with peers.NewRelicReceiver(cert) as receiver:
        yield receiver


def _key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def datadog_section(api_host: str, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "api_host": api_host,
        "api_key": "${env:DD_KEY}",
        "tags": [ENV_TAG],
        "host": HOST,
        "interval": PUSH_INTERVAL_SECONDS,
        **extra,
    }


def newrelic_section(receiver: peers.NewRelicReceiver, cert: peers.SelfSignedCert, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "host": peers.LOOPBACK,
        "event_host": peers.LOOPBACK,
        "port": receiver.port,
        "api_key": "${env:NR_KEY}",
        "ca_file": str(cert.cert),
        "attributes": {"service": NR_SERVICE},
        "interval": PUSH_INTERVAL_SECONDS,
        **extra,
    }


def sink(agent: AgentProcess, name: str) -> dict[str, Any]:
    result: dict[str, Any] = agent.status()["sinks"][name]
    return result


def poll_sink(agent: AgentProcess, name: str, predicate: Callable[[dict[str, Any]], Any], what: str, timeout: float = DEADLINE_SECONDS) -> dict[str, Any]:
    """Poll ``/status`` until the sink's entry satisfies ``predicate``; returns that entry."""
    last: list[dict[str, Any]] = []

    def check() -> dict[str, Any] | None:
        entry = sink(agent, name)
        last[:] = [entry]
        return entry if predicate(entry) else None

    try:
        result: dict[str, Any] = wait_for(check, timeout=timeout, interval=POLL_SECONDS, what=f"sink {name}: {what}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status: {last[0] if last else None}\n{agent.logs()[-3000:]}") from None
    return result


def labels_of(series: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in series["metric"].items() if k != "__name__"}


# ----------------------------------------------------------------------------- 1. Datadog
@needs_vm
def test_datadog_series_land_in_victoria_metrics(agents: Agents, tmp_path: Path) -> None:
    key = _key("dd")
    with peers.victoria_metrics(tmp_path / "vm") as vm:
        agent = agents.start({"exporters": {"datadog": datadog_section(vm.datadog_url)}}, env={"DD_KEY": key}, secrets=(key,))

        generation = peers.vm_query(vm, GENERATION_DOTTED)
        assert len(generation) == 1, generation
        ((labels, value),) = generation.items()
        assert dict(labels) == {"__name__": GENERATION_DOTTED, "env": "test", "host": HOST}
        assert value == agent.metric(GENERATION_PROM) == 1.0

        # Counters travel as count deltas: the first sample is only a baseline, so wait for two.
        runs = peers.vm_export(vm, RUNS_DOTTED, until=lambda s: len(s) == 1 and len(s[0]["values"]) >= 2)
        (series,) = runs
        assert labels_of(series) == {"env": "test", "host": HOST}
        assert all(v > 0 for v in series["values"]), series
        # The deltas add up to no more than the runs the agent counted.
        assert sum(series["values"]) <= (agent.metric(RUNS_PROM) or 0)
        # Datadog timestamps are whole seconds; VictoriaMetrics stores them in ms.
        assert all(ts % 1000 == 0 for ts in series["timestamps"])

        # A histogram goes as <name>.count and <name>.sum counts plus a <name>.avg gauge; the
        # counts over all pushes match the runs counter's (both move once per round).
        def histogram_matches_runs(runs: list[dict[str, Any]]) -> bool:
            count = peers.vm_export_once(vm, f"{DURATION_DOTTED}.count")
            seen[:] = [count]
            return bool(count and runs) and sum(count[0]["values"]) == sum(runs[0]["values"]) > 0

        seen: list[Any] = []
        try:
            peers.vm_export(vm, RUNS_DOTTED, until=histogram_matches_runs)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; histogram count: {seen}") from None
        (count,) = peers.vm_export_once(vm, f"{DURATION_DOTTED}.count")
        (total,) = peers.vm_export_once(vm, f"{DURATION_DOTTED}.sum")
        (avg,) = peers.vm_export(vm, f"{DURATION_DOTTED}.avg")
        assert labels_of(count) == labels_of(total) == labels_of(avg) == {"env": "test", "host": HOST}
        counts = dict(zip(count["timestamps"], count["values"]))
        sums = dict(zip(total["timestamps"], total["values"]))
        for ts, value in zip(avg["timestamps"], avg["values"]):
            if ts in counts and ts in sums and counts[ts] > 0:
                assert value == pytest.approx(sums[ts] / counts[ts]), (ts, value, sums[ts], counts[ts])
        assert all(v > 0 for v in total["values"])

        status = sink(agent, "datadog")
        assert status["sent_points"] > 0 and status["breaker"] == "closed"
        assert key not in json.dumps(agent.status())


# ----------------------------------------------------------------------------- 2. New Relic
@needs_openssl
def test_newrelic_metric_api_requests(agents: Agents, nr_receiver: peers.NewRelicReceiver, cert: peers.SelfSignedCert) -> None:
    key = _key("nr")
    agent = agents.start({"exporters": {"newrelic": newrelic_section(nr_receiver, cert)}}, env={"NR_KEY": key}, secrets=(key,))

    def has(name: str, pred: Callable[[dict[str, Any]], bool]) -> bool:
        return any(m.get("name") == name and pred(m) for m in nr_receiver.metrics())

    wait_for(lambda: has(GENERATION_DOTTED, lambda m: True), timeout=DEADLINE_SECONDS, what="the generation gauge at the receiver")
    wait_for(lambda: has(RUNS_DOTTED, lambda m: True), timeout=DEADLINE_SECONDS, what="the runs count at the receiver")
    wait_for(lambda: has(DURATION_DOTTED, lambda m: True), timeout=DEADLINE_SECONDS, what="the duration summary at the receiver")
    # Stop the agent so that no push lands between the reads below.
    assert agent.stop() == 0

    metric_requests = nr_receiver.requests(METRIC_PATH)
    assert metric_requests
    for request in metric_requests:
        assert request.header("Api-Key") == key
        assert request.header("Content-Encoding") == "gzip"
        assert request.header("Content-Type") == "application/json"
        assert isinstance(request.json, list) and request.json, request.json
        for block in request.json:
            assert set(block) == {"metrics", "common"}, block.keys()
            assert block["common"] == {"attributes": {"service": NR_SERVICE}}
            assert isinstance(block["metrics"], list) and block["metrics"]
    # Nothing went anywhere but the Metric and Event APIs.
    assert {r.path for r in nr_receiver.requests()} <= {METRIC_PATH, EVENT_PATH}

    items = nr_receiver.metrics()
    gauges = [m for m in items if m["name"] == GENERATION_DOTTED]
    assert gauges and all("type" not in m for m in gauges), gauges
    assert {m["value"] for m in gauges} == {1.0}
    assert all(m["attributes"] == {} for m in gauges)

    counts = [m for m in items if m["name"] == RUNS_DOTTED]
    assert counts and all(m["type"] == "count" for m in counts), counts
    assert all(isinstance(m["interval.ms"], int) and m["interval.ms"] > 0 for m in counts)
    assert all(m["value"] > 0 for m in counts)
    # Histograms go as summaries whose count over the pushes matches the runs counter.
    summaries = [m for m in items if m["name"] == DURATION_DOTTED]
    assert summaries and all(m["type"] == "summary" and m["interval.ms"] > 0 for m in summaries), summaries
    for m in summaries:
        value = m["value"]
        assert set(value) == {"count", "sum", "min", "max"}, value
        assert value["count"] > 0 and 0 <= value["min"] <= value["sum"] / value["count"] <= value["max"], value
    assert sum(m["value"]["count"] for m in summaries) == sum(m["value"] for m in counts)
    # Timestamps are ms since the epoch; a count's is its interval's start.
    now_ms = time.time() * 1000
    assert all(0 < now_ms - m["timestamp"] < 10 * 60 * 1000 for m in gauges + counts)

    assert key not in agent.logs()


# ----------------------------------------------------------------------------- 3. CloudWatch
@needs_moto
def test_cloudwatch_put_metric_data_reaches_moto(agents: Agents) -> None:
    import boto3
    import botocore.config

    with peers.moto_server() as endpoint:
        started = datetime.datetime.now(datetime.UTC)
        secret = _key("aws")
        agent = agents.start(
            {
                "exporters": {
                    "cloudwatch": {
                        "enabled": True,
                        "endpoint_url": endpoint,
                        "region": CW_REGION,
                        "namespace": CW_NAMESPACE,
                        "dimensions": {"Host": HOST},
                        "interval": PUSH_INTERVAL_SECONDS,
                    }
                }
            },
            env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": secret},
            secrets=(secret,),
        )
        cw = boto3.client(
            "cloudwatch",
            endpoint_url=endpoint,
            region_name=CW_REGION,
            aws_access_key_id="x",
            aws_secret_access_key="x",
            config=botocore.config.Config(retries={"max_attempts": 1}),
        )
        dims = [{"Name": "Host", "Value": HOST}]

        def stats(name: str, statistics: list[str]) -> list[dict[str, Any]]:
            points: list[dict[str, Any]] = cw.get_metric_statistics(
                Namespace=CW_NAMESPACE,
                MetricName=name,
                Dimensions=dims,
                StartTime=started - datetime.timedelta(minutes=5),
                EndTime=datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5),
                Period=60,
                Statistics=statistics,
            )["Datapoints"]
            return points

        generation = wait_for(lambda: stats(GENERATION_PROM, ["Minimum", "Maximum", "Average"]), timeout=DEADLINE_SECONDS, what="the generation in moto")
        expected = agent.metric(GENERATION_PROM)
        assert expected == 1.0
        assert all(p["Minimum"] == p["Maximum"] == p["Average"] == expected for p in generation), generation

        # The same through GetMetricData.
        data = cw.get_metric_data(
            MetricDataQueries=[
                {
                    "Id": "g",
                    "MetricStat": {"Metric": {"Namespace": CW_NAMESPACE, "MetricName": GENERATION_PROM, "Dimensions": dims}, "Period": 60, "Stat": "Maximum"},
                }
            ],
            StartTime=started - datetime.timedelta(minutes=5),
            EndTime=datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5),
        )["MetricDataResults"]
        assert data and data[0]["Values"] and set(data[0]["Values"]) == {expected}, data

        # An unlabelled metric carries exactly the configured dimensions.
        listed = cw.list_metrics(Namespace=CW_NAMESPACE, MetricName=GENERATION_PROM)["Metrics"]
        assert listed and all(m["Dimensions"] == dims for m in listed), listed

        # Counters go as deltas: the sum over the pushes is positive and within what ran.
        runs = wait_for(lambda: stats(RUNS_PROM, ["Sum", "SampleCount"]), timeout=DEADLINE_SECONDS, what="the runs count in moto")
        total = sum(p["Sum"] for p in runs)
        assert 0 < total <= (agent.metric(RUNS_PROM) or 0), runs

        # A histogram goes as Values/Counts: its sample count over the pushes is the number of
        # rounds, the same as the runs counter's deltas.
        def histogram_matches_runs() -> bool:
            samples = sum(float(p["SampleCount"]) for p in stats(DURATION_PROM, ["SampleCount"]))
            runs = sum(float(p["Sum"]) for p in stats(RUNS_PROM, ["Sum"]))
            return samples > 0 and samples == runs

        wait_for(histogram_matches_runs, timeout=DEADLINE_SECONDS, what="the duration histogram's count matching the runs in moto")
        (duration,) = cw.list_metrics(Namespace=CW_NAMESPACE, MetricName=DURATION_PROM)["Metrics"][:1]
        assert duration["Dimensions"] == dims, duration

        status = sink(agent, "cloudwatch")
        assert status["sent_points"] > 0 and status["failed_attempts"] == 0 and status["dropped_points"] == {}, status


# ----------------------------------------------------------------------------- 4. peer down at start
@needs_vm
def test_datadog_peer_down_at_start_loses_nothing(agents: Agents, tmp_path: Path) -> None:
    key = _key("dd")
    port = peers.free_port()
    agent = agents.start(
        {
            "agent": {"sinks": {**FAST_SINKS, "queue_max_age_seconds": 3600}},
            # VictoriaMetrics 1.79 has no /api/v1/events (it answers 400), so agent events
            # (the breaker's state changes) would be dead-lettered: the series are the test.
            "exporters": {"datadog": datadog_section(f"http://{peers.LOOPBACK}:{port}/datadog", events=False)},
        },
        env={"DD_KEY": key},
        secrets=(key,),
    )
    # At least three pushes (a series and a service-check payload each) wait in the queue.
    down = poll_sink(agent, "datadog", lambda s: s["failed_attempts"] > 0 and s["queued_payloads"] >= 6, "failing with payloads queued")
    assert down["queued_points"] > 0 and down["sent_points"] == 0 and down["dropped_points"] == {}, down

    vm_started = time.time()
    with peers.victoria_metrics(tmp_path / "vm", port=port) as vm:
        poll_sink(agent, "datadog", lambda s: s["queued_points"] == 0 and s["sent_points"] > 0, "the queue drained")
        runs = peers.vm_export(vm, RUNS_DOTTED, until=lambda s: s and any(ts < vm_started * 1000 for ts in s[0]["timestamps"]))
        (series,) = runs
        before = [v for v, ts in zip(series["values"], series["timestamps"]) if ts < vm_started * 1000]
        assert before and all(v > 0 for v in before), series
        generation = peers.vm_export(vm, GENERATION_DOTTED)
        (gen,) = generation
        gen_before = [v for v, ts in zip(gen["values"], gen["timestamps"]) if ts < vm_started * 1000]
        # The rounds queued during the outage arrived: three or more pushes at least 0.9 s
        # apart, so at least two distinct (whole-second) timestamps from before VM started.
        ts_before = {ts for ts in gen["timestamps"] if ts < vm_started * 1000}
        assert len(ts_before) >= 2 and set(gen_before) == {1.0}, gen
        final = sink(agent, "datadog")
        assert final["dropped_points"] == {} and final["breaker"] == "closed", final
        assert final["failed_attempts"] >= down["failed_attempts"]


# ----------------------------------------------------------------------------- 5. New Relic errors
@needs_openssl
def test_newrelic_errors_breaker_retry_after_split_and_dead_letter(
    agents: Agents, nr_receiver: peers.NewRelicReceiver, cert: peers.SelfSignedCert, tmp_path: Path
) -> None:
    key = _key("nr")
    dead = tmp_path / "dead"
    agent = agents.start(
        {
            "agent": {"sinks": {**FAST_SINKS, "breaker_fail_max": 3, "dead_letter_dir": str(dead)}},
            "exporters": {"newrelic": newrelic_section(nr_receiver, cert)},
            # The breaker flapping on purpose here would raise AIOps anomaly events, posted to
            # the same receiver: the failures injected below must meet the metric payloads.
            "aiops": {"enabled": False},
        },
        env={"NR_KEY": key},
        secrets=(key,),
    )
    poll_sink(agent, "newrelic", lambda s: s["sent_points"] > 0, "a first delivery")

    def quiet() -> dict[str, Any]:
        """Wait until nothing is queued and the breaker is closed (no event pending either)."""
        return poll_sink(agent, "newrelic", lambda s: s["queued_points"] == 0 and s["breaker"] == "closed", "idle with the breaker closed")

    # 500 over and over: the breaker opens (and stays open between half-open probes).
    nr_receiver.fail_next(500, count=10_000, body='{"error": "internal"}')
    opened = poll_sink(agent, "newrelic", lambda s: s["breaker"] == "open", "the breaker open")
    assert opened["failed_attempts"] >= 3 and "500" in (opened["last_error"] or ""), opened
    # The receiver recovers: the breaker closes and what was queued is delivered.
    nr_receiver.clear_failures()
    sent_while_open = opened["sent_points"]
    recovered = poll_sink(agent, "newrelic", lambda s: s["breaker"] == "closed" and s["sent_points"] > sent_while_open, "the breaker closed again")
    assert recovered["dropped_points"] == {}, recovered
    quiet()
    # The breaker's state changes went out as custom events once the receiver took them.
    events = [e for r in nr_receiver.requests(EVENT_PATH) if r.status == 202 for e in r.json]
    changes = [(e["old"], e["new"]) for e in events if e.get("kind") == "breaker_state_changed"]
    assert ("closed", "open") in changes and changes[-1][1] == "closed", changes
    assert all(e["eventType"] == "PredisAgentEvent" and e["sink"] == "newrelic" for e in events), events
    assert all(r.header("Api-Key") == key for r in nr_receiver.requests(EVENT_PATH))

    # 429 with Retry-After: the next attempt waits at least that long.
    nr_receiver.fail_next(429, count=1, headers={"Retry-After": "1"})
    failed = agent_wait_failures(agent, nr_receiver, 429)
    later = wait_for(lambda: [r for r in nr_receiver.requests() if r.at > failed.at], timeout=DEADLINE_SECONDS, what="the retry after the 429")
    assert later[0].at - failed.at >= 0.95, (failed.at, later[0].at)
    quiet()

    # 413: the payload is split in two and both halves are delivered.
    before = sink(agent, "newrelic")
    nr_receiver.fail_next(413, count=1, body="Payload Too Large")
    too_large = agent_wait_failures(agent, nr_receiver, 413)
    assert too_large.path == METRIC_PATH, too_large.path
    split = poll_sink(agent, "newrelic", lambda s: s["splits"] >= before["splits"] + 1, "a split")
    assert split["dropped_points"] == {}, split
    rejected = too_large.json[0]["metrics"]

    def halves_arrived() -> bool:
        accepted = [r for r in nr_receiver.requests(METRIC_PATH) if r.at > too_large.at and r.status == 202]
        got = [m for r in accepted for block in r.json for m in block["metrics"]]
        return all(m in got for m in rejected) and any(0 < len(r.json[0]["metrics"]) < len(rejected) for r in accepted)

    wait_for(halves_arrived, timeout=DEADLINE_SECONDS, what="both halves of the split payload delivered")
    quiet()

    # 400: dead-lettered with the receiver's answer; later payloads still flow.
    answer = f"invalid metric data (test marker {uuid.uuid4().hex})"
    nr_receiver.fail_next(400, count=1, body=answer)
    invalid = agent_wait_failures(agent, nr_receiver, 400)
    lettered = poll_sink(agent, "newrelic", lambda s: s["dead_letters"] >= 1, "a dead letter")
    assert sum(lettered["dropped_points"].values()) >= 1 and set(lettered["dropped_points"]) <= {"invalid"}, lettered
    files = wait_for(lambda: sorted((dead / "newrelic").glob("*.json")), timeout=DEADLINE_SECONDS, what="the dead-letter file")
    records = [json.loads(f.read_text()) for f in files]
    assert any(r["answer"] == answer and r["status"] == 400 and r["sink"] == "newrelic" for r in records), records
    assert all(key not in f.read_text() for f in files)
    sent_then = lettered["sent_points"]
    poll_sink(agent, "newrelic", lambda s: s["sent_points"] > sent_then, "deliveries after the dead letter")
    wait_for(
        lambda: any(r.status == 202 and r.at > invalid.at for r in nr_receiver.requests(METRIC_PATH)),
        timeout=DEADLINE_SECONDS,
        what="an accepted request after the 400",
    )


def agent_wait_failures(agent: AgentProcess, receiver: peers.NewRelicReceiver, status: int) -> peers.Captured:
    """The request the receiver answered ``status`` to (waits for it)."""
    found: list[peers.Captured] = wait_for(
        lambda: [r for r in receiver.requests() if r.status == status],
        timeout=DEADLINE_SECONDS,
        what=f"a request answered {status}",
    )
    assert receiver.pending_failures() == 0
    return found[-1]


# ----------------------------------------------------------------------------- 6. stalled peer
@needs_openssl
def test_stalled_datadog_peer_does_not_block_newrelic_or_metrics(
    agents: Agents, nr_receiver: peers.NewRelicReceiver, cert: peers.SelfSignedCert
) -> None:
    dd_key, nr_key = _key("dd"), _key("nr")
    with peers.StalledPeer() as stalled:
        agent = agents.start(
            {
                "agent": {"sinks": FAST_SINKS},
                "exporters": {
                    "datadog": datadog_section(f"http://{peers.LOOPBACK}:{stalled.port}/datadog"),
                    "newrelic": newrelic_section(nr_receiver, cert),
                },
            },
            env={"DD_KEY": dd_key, "NR_KEY": nr_key},
            secrets=(dd_key, nr_key),
        )
        wait_for(lambda: stalled.accepted >= 1, timeout=DEADLINE_SECONDS, what="the agent connecting to the stalled peer")
        dd = poll_sink(agent, "datadog", lambda s: s["failed_attempts"] >= 1, "a timed-out attempt")
        # Cut off by the client's read timeout or by the sink's whole-attempt deadline,
        # whichever comes first.
        error = dd["last_error"] or ""
        assert dd["sent_points"] == 0 and ("Timeout" in error or "attempt_timeout_seconds" in error), dd

        # While Datadog hangs, New Relic keeps receiving new pushes and /metrics answers.
        def more_pushes_than(seen: int) -> Callable[[], bool]:
            return lambda: len(nr_receiver.requests(METRIC_PATH)) > seen

        for _ in range(3):
            wait_for(more_pushes_than(len(nr_receiver.requests(METRIC_PATH))), timeout=DEADLINE_SECONDS, what="another New Relic push")
            scrape = requests.get(agent.base_url + "/metrics", headers=agent.headers(), timeout=HTTP_TIMEOUT_SECONDS)
            assert scrape.status_code == 200 and "predis_agent_sink_breaker_state" in scrape.text
        nr = sink(agent, "newrelic")
        assert nr["sent_points"] > 0 and nr["failed_attempts"] == 0 and nr["breaker"] == "closed", nr
        dd = sink(agent, "datadog")
        assert dd["sent_points"] == 0 and dd["queued_points"] > 0, dd


# ----------------------------------------------------------------------------- 7. trickling peer
TRICKLE_EVERY_SECONDS = 0.3
ATTEMPT_TIMEOUT_SECONDS = 1
# With a 1 s attempt timeout the first attempt must have failed well within this.
TRICKLE_DEADLINE_SECONDS = 10.0


def test_trickling_datadog_peer_is_cut_off_by_the_attempt_timeout(agents: Agents) -> None:
    key = _key("dd")
    with peers.StalledPeer(trickle_every=TRICKLE_EVERY_SECONDS) as trickling:
        agent = agents.start(
            {
                "agent": {"sinks": {**FAST_SINKS, "attempt_timeout_seconds": ATTEMPT_TIMEOUT_SECONDS}},
                "exporters": {"datadog": datadog_section(f"http://{peers.LOOPBACK}:{trickling.port}/datadog")},
            },
            env={"DD_KEY": key},
            secrets=(key,),
        )
        wait_for(lambda: trickling.accepted >= 1, timeout=DEADLINE_SECONDS, what="the agent connecting to the trickling peer")
        failed = poll_sink(agent, "datadog", lambda s: s["failed_attempts"] >= 1, "the attempt cut off", timeout=TRICKLE_DEADLINE_SECONDS)
        assert failed["sent_points"] == 0, failed
