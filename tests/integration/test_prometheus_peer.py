# SPDX-License-Identifier: Apache-2.0
"""The Prometheus exporter against the real thing (Debian ``prometheus`` and ``promtool``):
the agent's exposition is lint-clean, and a real Prometheus scraping the running agent with
a bearer token reads back what the agent and redis-py did, through its query API.

Neither test installs anything: both are skipped, saying why, when the binaries are missing
(``.ci/run`` installs the ``prometheus`` package on CI).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

from tests.agentproc import AgentProcess
from tests.polling import wait_for

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
PROMTOOL_TIMEOUT_SECONDS = 30
# Prometheus answers /-/ready in well under a second; its first sample of a target is
# queryable only after ~5-6 s (scrape manager's reload tick), so allow a generous deadline.
READY_DEADLINE_SECONDS = 15.0
FIRST_SAMPLE_DEADLINE_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
SCRAPE_INTERVAL = "1s"
JOB = "predis-agent"
REDIS_TIMEOUT_SECONDS = 10
TOKEN_FILE_MODE = 0o600
KEYS_SET = 3
HITS = 2


def _traffic(agent: AgentProcess) -> None:
    """Sets and hits on the agent's RESP port, so cache counters have known values."""
    address = agent.status()["components"]["cache"]["resp"]["address"]
    client = redis.Redis(host=LOOPBACK, port=int(address.rsplit(":", 1)[1]), socket_timeout=REDIS_TIMEOUT_SECONDS)
    try:
        for i in range(KEYS_SET):
            assert client.set(f"k{i}", b"v")
        for i in range(HITS):
            assert client.get(f"k{i}") == b"v"
    finally:
        client.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """A running agent in its own directory, apart from Prometheus' files."""
    home = tmp_path / "agent"
    home.mkdir()
    proc = AgentProcess(home, {"agent": {"reload": {"watch": False}}})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus'; .ci/run installs it)")
def test_agent_exposition_is_promtool_clean(agent: AgentProcess) -> None:
    _traffic(agent)
    wait_for(lambda: agent.metric("predis_cache_sets_total") == KEYS_SET, what="the sets in /metrics")
    body = agent.get("/metrics").content
    assert b'predis_cache_command_duration_seconds_bucket{command="set"' in body
    assert b"_created" not in body
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=PROMTOOL_TIMEOUT_SECONDS, check=False
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr.decode()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _query(base: str, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    data: dict[str, Any] = json.loads(requests.get(url, timeout=5).text)
    assert data["status"] == "success", data
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in data["data"]["result"]}


def _single_value(base: str, expr: str) -> float | None:
    result = _query(base, expr)
    return next(iter(result.values())) if len(result) == 1 else None


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package 'prometheus'; .ci/run installs it)")
def test_real_prometheus_scrapes_the_agent_with_a_token(agent: AgentProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "prometheus.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, TOKEN_FILE_MODE)
    with os.fdopen(fd, "w") as out:
        out.write(agent.create_token("prometheus"))
    target = agent.base_url.split("://", 1)[1].rstrip("/")
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "authorization": {"credentials_file": str(token_file)},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    port = _free_port()
    base = f"http://{LOOPBACK}:{port}"
    assert PROMETHEUS is not None
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: requests.get(f"{base}/-/ready", timeout=2).status_code == 200, timeout=READY_DEADLINE_SECONDS, what="Prometheus ready")
        _traffic(agent)

        def up() -> bool:
            return _single_value(base, f'up{{job="{JOB}"}}') == 1.0

        wait_for(up, timeout=FIRST_SAMPLE_DEADLINE_SECONDS, interval=0.25, what="the agent target to be up")
        generation = _query(base, "predis_agent_config_generation")
        assert list(generation.values()) == [1.0], generation
        (labels,) = generation
        assert dict(labels)["job"] == JOB and dict(labels)["instance"] == target
        wait_for(
            lambda: _single_value(base, f'predis_cache_sets_total{{job="{JOB}"}}') == KEYS_SET,
            timeout=FIRST_SAMPLE_DEADLINE_SECONDS,
            interval=0.25,
            what="predis_cache_sets_total read back through Prometheus",
        )
        assert _single_value(base, "predis_cache_hits_total") == HITS
        assert _single_value(base, 'predis_cache_commands_total{command="get"}') == HITS
        targets = requests.get(f"{base}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"], targets
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(timeout=STOP_TIMEOUT_SECONDS)
        log.close()
