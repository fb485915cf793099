# SPDX-License-Identifier: Apache-2.0
"""One keyspace across three agents through the real twemproxy (Debian ``nutcracker``).

The proxy runs on ``deploy/twemproxy/nutcracker.yml`` as shipped, with only its listen
address, its server lines and its password replaced. redis-py talks to the proxy: keys
spread over the agents, each key lives on exactly one of them, the commands twemproxy
forwards work, the ones it does not close the connection, and restarting one agent
(which comes back empty) loses that agent's keys and no other.
"""

from __future__ import annotations

import inspect
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.agentproc import AgentProcess
from tests.polling import wait_for
from tests.resp_helpers import BASE_CACHE, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "deploy" / "twemproxy" / "nutcracker.yml"
POOL = "predis"
AGENTS = 3
KEYS = 300
PASSWORD_ENV = "TWEMPROXY_TEST_PASSWORD"
PASSWORD = "proxy-" + secrets.token_hex(12)
CLIENT_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
NUTCRACKER = shutil.which("nutcracker")


def _client_options() -> dict[str, Any]:
    """redis-py options for twemproxy: RESP2 (twemproxy does not know HELLO), no CLIENT
    SETINFO on connect (twemproxy does not know CLIENT) and no retries, so that a command
    the proxy refuses fails once. redis-py 7.1 replaced lib_name/lib_version with driver_info."""
    options: dict[str, Any] = {"protocol": 2, "socket_timeout": CLIENT_TIMEOUT_SECONDS, "retry": Retry(NoBackoff(), 0)}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters:
        options["driver_info"] = None
    else:
        options.update(lib_name=None, lib_version=None)
    return options


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, **_client_options())


@dataclass
class Fleet:
    agents: list[AgentProcess]
    ports: list[int]
    proxy_port: int

    def proxy(self) -> redis.Redis:
        return _client(self.proxy_port)

    def direct(self, index: int) -> redis.Redis:
        return _client(self.ports[index])

    def owners(self) -> dict[bytes, int]:
        """Every key the agents hold, and which agent holds it (asked directly, not through the proxy)."""
        found: dict[bytes, int] = {}
        for index in range(len(self.agents)):
            for key in self.direct(index).keys("*"):
                assert key not in found, f"key {key!r} is held by agents {found[key]} and {index}"
                found[key] = index
        return found


def _proxy_config(tmp: Path, ports: list[int], listen: int) -> Path:
    """The shipped config with this test's addresses and password; everything else as shipped."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    pool = config[POOL]
    assert pool["distribution"] == "ketama" and pool["redis"] is True and "redis_auth" in pool
    pool["listen"] = f"127.0.0.1:{listen}"
    pool["redis_auth"] = PASSWORD
    pool["servers"] = [f"127.0.0.1:{port}:1 agent-{index}" for index, port in enumerate(ports)]
    path = tmp / "nutcracker.yml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(config, handle)
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if NUTCRACKER is None:
        pytest.skip("nutcracker (twemproxy) is not installed (.ci/run installs it)")
    tmp = tmp_path_factory.mktemp("twemproxy")
    agents: list[AgentProcess] = []
    ports = [free_port() for _ in range(AGENTS)]
    proc: subprocess.Popen[bytes] | None = None
    log = open(tmp / "nutcracker.log", "wb")
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in list(os.environ):
                if name.startswith("PREDIS_AGENT_"):
                    mp.delenv(name)
            for index, port in enumerate(ports):
                home = tmp / f"agent-{index}"
                home.mkdir()
                cache = {**BASE_CACHE, "resp": {"listen": f"127.0.0.1:{port}", "requirepass": "${env:" + PASSWORD_ENV + "}"}}
                agents.append(AgentProcess(home, {"cache": cache}, env={PASSWORD_ENV: PASSWORD}))
        for agent in agents:
            agent.start()
        proxy_port = free_port()
        config = _proxy_config(tmp, ports, proxy_port)
        checked = subprocess.run([NUTCRACKER, "--test-conf", "--conf-file", str(config)], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
        proc = subprocess.Popen(
            [NUTCRACKER, "--conf-file", str(config), "--stats-addr", "127.0.0.1", "--stats-port", str(free_port()), "--verbose", "5"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        fleet = Fleet(agents, ports, proxy_port)
        wait_for(lambda: proc.poll() is None and fleet.proxy().ping(), timeout=30, what="nutcracker to answer PING")
        yield fleet
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        log.close()
        for agent in agents:
            agent.stop()


def test_keys_spread_across_the_agents(fleet: Fleet) -> None:
    proxy = fleet.proxy()
    values = {f"spread:{i}": f"value-{i}" for i in range(KEYS)}
    assert proxy.mset(values) is True
    assert proxy.mget(list(values)) == [v.encode() for v in values.values()]
    owners = {key: agent for key, agent in fleet.owners().items() if key.startswith(b"spread:")}
    assert sorted(owners) == sorted(k.encode() for k in values)
    shares = [sum(1 for agent in owners.values() if agent == index) for index in range(AGENTS)]
    assert all(share > 0 for share in shares), shares
    for key, agent in owners.items():
        assert fleet.direct(agent).get(key) == values[key.decode()].encode()
    # A hash tag keeps related keys on one agent, whatever the rest of the key.
    tagged = {f"{{user:42}}:{part}": part for part in ("cart", "profile", "session", "prefs")}
    proxy.mset(tagged)
    placed = {agent for key, agent in fleet.owners().items() if key.startswith(b"{user:42}:")}
    assert len(placed) == 1


def test_commands_twemproxy_forwards(fleet: Fleet) -> None:
    proxy = fleet.proxy()
    checks: list[tuple[str, Callable[[], Any], Any]] = [
        ("SET", lambda: proxy.set("fwd:s", "v"), True),
        ("GET", lambda: proxy.get("fwd:s"), b"v"),
        ("SET NX PX", lambda: proxy.set("fwd:s", "w", nx=True, px=60_000), None),
        ("MSET", lambda: proxy.mset({f"fwd:m{i}": i for i in range(20)}), True),
        ("MGET", lambda: proxy.mget([f"fwd:m{i}" for i in range(20)] + ["fwd:none"]), [str(i).encode() for i in range(20)] + [None]),
        ("EXISTS", lambda: proxy.exists("fwd:m1"), 1),
        ("DEL", lambda: proxy.delete("fwd:m1", "fwd:m2", "fwd:m3", "fwd:none"), 3),
        ("UNLINK", lambda: proxy.unlink("fwd:m4", "fwd:m6", "fwd:none"), 2),
        ("TOUCH", lambda: proxy.touch("fwd:m7", "fwd:m8", "fwd:none"), 2),
        ("EXPIRE", lambda: proxy.expire("fwd:s", 100), True),
        ("TTL", lambda: proxy.ttl("fwd:s"), 100),
        ("PEXPIRE", lambda: proxy.pexpire("fwd:m5", 100_000), True),
        ("PERSIST", lambda: proxy.persist("fwd:m5"), True),
        ("SETEX", lambda: proxy.setex("fwd:e", 100, "x"), True),
        ("GETSET", lambda: proxy.getset("fwd:e", "y"), b"x"),
        ("INCR", lambda: proxy.incr("fwd:n"), 1),
        ("INCRBY", lambda: proxy.incrby("fwd:n", 5), 6),
        ("DECR", lambda: proxy.decr("fwd:n"), 5),
        ("APPEND", lambda: proxy.append("fwd:a", "ab"), 2),
        ("STRLEN", lambda: proxy.strlen("fwd:a"), 2),
        ("HSET", lambda: proxy.hset("fwd:h", mapping={"a": 1, "b": 2}), 2),
        ("HGET", lambda: proxy.hget("fwd:h", "a"), b"1"),
        ("HMGET", lambda: proxy.hmget("fwd:h", ["a", "b", "c"]), [b"1", b"2", None]),
        ("HINCRBY", lambda: proxy.hincrby("fwd:h", "b", 3), 5),
        ("HGETALL", lambda: proxy.hgetall("fwd:h"), {b"a": b"1", b"b": b"5"}),
        ("HDEL", lambda: proxy.hdel("fwd:h", "a"), 1),
        ("HLEN", lambda: proxy.hlen("fwd:h"), 1),
        ("TYPE", lambda: proxy.type("fwd:h"), b"hash"),
        ("PING", lambda: proxy.ping(), True),
    ]
    failures = []
    for name, call, expected in checks:
        got = call()
        if got != expected:
            failures.append(f"{name}: expected {expected!r}, got {got!r}")
    assert not failures, failures
    # A pipeline without MULTI is forwarded command by command, to whichever agent owns each key.
    pipe = proxy.pipeline(transaction=False)
    for i in range(30):
        pipe.set(f"fwd:p{i}", i)
    pipe.get("fwd:p7")
    pipe.incr("fwd:p8")
    assert pipe.execute() == [True] * 30 + [b"7", 9]
    assert len({agent for key, agent in fleet.owners().items() if key.startswith(b"fwd:p")}) > 1


def test_exists_with_several_keys_counts_only_the_first_keys_agent(fleet: Fleet) -> None:
    """twemproxy splits MGET, MSET, DEL, UNLINK and TOUCH by agent, but sends a whole EXISTS
    to the agent of its first key, which counts only the keys it holds itself."""
    proxy = fleet.proxy()
    proxy.mset({f"ex:{i}": i for i in range(30)})
    owners = {key.decode(): agent for key, agent in fleet.owners().items() if key.startswith(b"ex:")}
    first = "ex:0"
    elsewhere = [key for key, agent in owners.items() if agent != owners[first]]
    together = [key for key, agent in owners.items() if agent == owners[first]]
    assert proxy.exists(first, *elsewhere) == 1
    assert proxy.exists(*together) == len(together)
    proxy.mset({"{ex}:a": 1, "{ex}:b": 2})
    assert proxy.exists("{ex}:a", "{ex}:b") == 2


@pytest.mark.parametrize(
    "name, call",
    [
        ("MULTI/EXEC", lambda c: c.pipeline(transaction=True).set("ref:t", 1).execute()),
        ("SCAN", lambda c: c.scan(0)),
        ("KEYS", lambda c: c.keys("*")),
        ("SELECT", lambda c: c.execute_command("SELECT", 1)),
        ("DBSIZE", lambda c: c.dbsize()),
        ("FLUSHDB", lambda c: c.flushdb()),
        ("INFO", lambda c: c.info()),
        ("RENAME", lambda c: c.rename("fwd:s", "fwd:s2")),
        ("ECHO", lambda c: c.echo("x")),
        ("HELLO", lambda c: c.execute_command("HELLO", 3)),
        ("CLIENT", lambda c: c.execute_command("CLIENT", "SETINFO", "LIB-NAME", "x")),
    ],
)
def test_commands_twemproxy_refuses_close_the_connection(fleet: Fleet, name: str, call: Callable[[redis.Redis], Any]) -> None:
    client = fleet.proxy()
    with pytest.raises(redis.ConnectionError, match="Connection closed by server"):
        call(client)
    assert client.ping() is True  # a new connection works; nothing reached an agent
    assert fleet.proxy().get("ref:t") is None


def test_one_agent_restart_loses_only_its_share(fleet: Fleet) -> None:
    proxy = fleet.proxy()
    values = {f"restart:{i}": f"v{i}" for i in range(KEYS)}
    proxy.mset(values)
    owners = {key.decode(): agent for key, agent in fleet.owners().items() if key.startswith(b"restart:")}
    assert len(owners) == KEYS
    victim = 1
    lost = {key for key, agent in owners.items() if agent == victim}
    kept = set(values) - lost
    assert lost and kept

    fleet.agents[victim].stop()
    # While it is down its keys fail (auto_eject_hosts: false keeps them on it); the others are served.
    some_lost, some_kept = sorted(lost)[0], sorted(kept)[0]
    with pytest.raises(redis.RedisError):
        proxy.get(some_lost)
    assert proxy.get(some_kept) == values[some_kept].encode()

    fleet.agents[victim].start()
    wait_for(lambda: _answers(proxy, some_lost), timeout=30, what="the proxy to reach the restarted agent")
    got = dict(zip(values, proxy.mget(list(values))))
    assert {key for key, value in got.items() if value is None} == lost
    assert all(got[key] == values[key].encode() for key in kept)
    # Written again, a lost key goes back to the same agent: nothing moved on the ring.
    proxy.set(some_lost, "again")
    assert fleet.direct(victim).get(some_lost) == b"again"


def _answers(client: redis.Redis, key: str) -> bool:
    try:
        client.get(key)
    except redis.RedisError:
        return False
    return True
