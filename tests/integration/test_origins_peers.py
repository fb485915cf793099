# SPDX-License-Identifier: Apache-2.0
"""The ``s3`` and ``redis`` origins inside the running agent, against real peers.

* S3: moto's server on 127.0.0.1 (``tests.peers.moto_server``); the bucket and its objects
  are made with boto3 here. A miss is read through once and then served from the cache; a
  missing object, an oversized one and a key that tries to leave the prefix are nil.
* Redis: a real ``redis-server`` on a free loopback port, filled with redis-py. Read-through
  of binary keys, then an outage: the origin server is killed (SIGKILL), cached keys keep
  being served, uncached keys are nil at once, the breaker opens (``/status``,
  ``components.origin_redis``), and after the server is back the breaker closes again.

Skipped when moto's server or redis-server is not installed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.agentproc import AgentProcess
from tests.peers import HAVE_MOTO_SERVER, moto_server
from tests.polling import wait_for
from tests.resp_helpers import RedisServer

pytestmark = pytest.mark.integration

BUCKET = "predis-origin"
PREFIX = "p/"
S3_VALUE = b"\x00value from s3\xff"
MAX_OBJECT_BYTES = 64
CACHE = {"read_through": True, "max_keys": 4096, "max_memory_bytes": 8 << 20}
# An uncached GET while the origin is down must answer well within this: the origin's
# timeout (0.5 s) and one retry take about a second at most; a hang would reach the
# client's 10 s socket timeout. Room for a loaded machine in between.
QUICK_SECONDS = 5.0
DEADLINE_SECONDS = 20.0


def _agent_client(agent: AgentProcess) -> redis.Redis:
    address = agent.status()["components"]["cache"]["resp"]["address"]
    return redis.Redis(host="127.0.0.1", port=int(address.rsplit(":", 1)[1]), protocol=2, socket_timeout=10)


def _origin_status(agent: AgentProcess, component: str) -> dict[str, Any]:
    status: dict[str, Any] = agent.status()["components"][component]
    return status


def _cache_stats(agent: AgentProcess) -> dict[str, Any]:
    stats: dict[str, Any] = agent.status()["components"]["cache"]["stats"]
    return stats


# ----------------------------------------------------------------------------- S3 on moto


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    if not HAVE_MOTO_SERVER:
        pytest.skip("moto[server] is not installed")
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake credentials, and nothing from the host's AWS config or instance metadata."""
    env = {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_s3_origin_reads_through_once_then_serves_from_the_cache(tmp_path: Path, s3_endpoint: str, aws_env: dict[str, str]) -> None:
    import boto3
    from botocore.config import Config as BotoConfig

    s3 = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", config=BotoConfig(retries={"total_max_attempts": 1})
    )
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "objects/a.bin", Body=S3_VALUE)
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "big", Body=b"x" * (MAX_OBJECT_BYTES + 1))
    s3.put_object(Bucket=BUCKET, Key="secret", Body=b"outside the prefix")

    config = {
        "agent": {"reload": {"watch": False}},
        "cache": {**CACHE, "origin": "s3"},
        "plugins": {
            "s3": {
                "bucket": BUCKET,
                "endpoint_url": s3_endpoint,
                "region": "us-east-1",
                "prefix": PREFIX,
                "max_object_bytes": MAX_OBJECT_BYTES,
            }
        },
    }
    agent = AgentProcess(tmp_path, config, env=aws_env)
    agent.start()
    try:
        client = _agent_client(agent)
        assert client.get("objects/a.bin") == S3_VALUE
        assert client.get("objects/a.bin") == S3_VALUE
        cache = agent.status()["components"]["cache"]
        assert cache["origin"] == "s3" and cache["read_through"] is True
        assert cache["stats"]["origin_loads"] == 1 and cache["stats"]["hits"] == 1
        origin = _origin_status(agent, "origin_s3")
        assert origin["loads"] == 1 and origin["bytes"] == len(S3_VALUE) and origin["breaker"] == "closed"

        assert client.get("no/such/object") is None
        assert client.get("big") is None
        assert client.get("../secret") is None
        assert client.mget(["objects/a.bin", "no/such/object"]) == [S3_VALUE, None]
        origin = _origin_status(agent, "origin_s3")
        assert origin["misses"] == 2 and origin["oversized"] == 1 and origin["rejected"] == 1 and origin["errors"] == 0
        assert origin["loads"] == 1, "the second MGET key is a hit, not another GetObject"
        ready = agent.get("/readyz").json()
        assert ready["components"]["origin"]["ok"] is True
        client.close()
    finally:
        agent.stop()
    assert "outside the prefix" not in agent.logs()


# ----------------------------------------------------------------------------- redis-server


@pytest.fixture
def origin_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(_subdir(tmp_path, "origin-redis"))
    try:
        yield server
    finally:
        server.stop()


def _subdir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


def _redis_agent(tmp_path: Path, port: int, **origin: Any) -> AgentProcess:
    config = {
        "agent": {"reload": {"watch": False}},
        "cache": {**CACHE, "origin": "redis"},
        "plugins": {"redis_origin": {"url": f"redis://127.0.0.1:{port}/0", "timeout_seconds": 0.5, **origin}},
    }
    agent = AgentProcess(_subdir(tmp_path, "agent"), config)
    agent.start()
    return agent


def test_redis_origin_reads_binary_keys_through(tmp_path: Path, origin_redis: RedisServer) -> None:
    source = redis.Redis(host="127.0.0.1", port=origin_redis.port, protocol=2, socket_timeout=5)
    source.set(b"bin\x00key\xff", b"\x00\x01binary value\xfe")
    source.set("plain", "text")
    source.rpush("a-list", "x")
    source.close()
    agent = _redis_agent(tmp_path, origin_redis.port, max_batch=2)
    try:
        client = _agent_client(agent)
        assert client.get(b"bin\x00key\xff") == b"\x00\x01binary value\xfe"
        assert client.get(b"bin\x00key\xff") == b"\x00\x01binary value\xfe"
        assert client.mget(["plain", "absent", "a-list", b"bin\x00key\xff"]) == [b"text", None, None, b"\x00\x01binary value\xfe"]
        stats = _cache_stats(agent)
        assert stats["origin_loads"] == 2 and stats["hits"] == 2
        origin = _origin_status(agent, "origin_redis")
        assert origin["loads"] == 2 and origin["misses"] == 2 and origin["errors"] == 0
        assert origin["endpoint"] == f"127.0.0.1:{origin_redis.port}/0" and origin["breaker"] == "closed"
        client.close()
    finally:
        agent.stop()


def test_an_origin_outage_keeps_hits_serving_answers_misses_at_once_and_opens_the_breaker(
    tmp_path: Path, origin_redis: RedisServer
) -> None:
    port = origin_redis.port
    source = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=5)
    for i in range(3):
        source.set(f"hot{i}", f"value{i}")
    source.close()
    agent = _redis_agent(
        tmp_path,
        port,
        retry_attempts=1,
        retry_initial_seconds=0.01,
        breaker_fail_max=2,
        breaker_reset_timeout_seconds=3,
    )
    try:
        client = _agent_client(agent)
        assert client.mget(["hot0", "hot1", "hot2"]) == [b"value0", b"value1", b"value2"]

        os.kill(origin_redis.proc.pid, signal.SIGKILL)  # a real outage: no goodbye to the clients
        origin_redis.proc.wait(timeout=10)

        assert client.mget(["hot0", "hot1", "hot2"]) == [b"value0", b"value1", b"value2"], "hits must keep serving"
        started = time.monotonic()
        assert client.get("cold0") is None
        assert time.monotonic() - started < QUICK_SECONDS
        origin = wait_for(
            lambda: (s := _origin_status(agent, "origin_redis"))["breaker"] == "open" and s,
            timeout=DEADLINE_SECONDS,
            what="the redis origin's breaker to open",
        )
        assert origin["errors"] + origin["skipped_breaker_open"] >= 1 and origin["last_error"]
        assert "ConnectionError" in origin["last_error"]

        skipped = origin["skipped_breaker_open"]
        started = time.monotonic()
        assert client.mget(["cold1", "cold2", "hot1"]) == [None, None, b"value1"]
        assert time.monotonic() - started < QUICK_SECONDS
        after = _origin_status(agent, "origin_redis")
        if after["breaker"] == "open":  # still within the reset timeout: nothing was sent
            assert after["skipped_breaker_open"] == skipped + 2
        assert _cache_stats(agent)["hits"] >= 4

        # The origin comes back on the same port: the half-open probe closes the breaker.
        back = RedisServer(_subdir(tmp_path, "origin-redis-again"), port=port)
        try:
            source = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=5)
            source.set("cold1", "back again")
            source.close()
            wait_for(lambda: client.get("cold1") == b"back again", timeout=DEADLINE_SECONDS, interval=0.2, what="read-through after the outage")
            assert _origin_status(agent, "origin_redis")["breaker"] == "closed"
        finally:
            back.stop()
        client.close()
    finally:
        agent.stop()
    assert "circuit breaker closed -> open" in agent.logs()
