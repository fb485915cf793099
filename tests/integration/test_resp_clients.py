# SPDX-License-Identifier: Apache-2.0
"""The agent's RESP server driven by real clients: redis-py (RESP3 and RESP2), redis-cli and
redis-benchmark, against the real agent subprocess (see reference/real_peers.md §6)."""

from __future__ import annotations

import csv
import io
import random
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.agentproc import AgentProcess
from tests.polling import wait_for
from tests.resp_helpers import BASE_CACHE, connect, encode_command, read_exactly, start_agent

pytestmark = pytest.mark.integration

PASSWORD = "resp-" + secrets.token_hex(12)
PASSWORD_ENV = "RESP_TEST_REQUIREPASS"
MAX_MEMORY = BASE_CACHE["max_memory_bytes"]
MAX_KEYS = BASE_CACHE["max_keys"]
PROTOCOLS = [pytest.param(None, id="resp3-default"), pytest.param(2, id="resp2")]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, int]]:
    proc, port = start_agent(tmp_path_factory.mktemp("resp-agent"))
    yield proc, port
    assert proc.proc is not None and proc.proc.poll() is None, "the agent died during the tests"
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def auth_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, int]]:
    proc, port = start_agent(
        tmp_path_factory.mktemp("resp-auth-agent"),
        resp={"requirepass": "${env:" + PASSWORD_ENV + "}"},
        env={PASSWORD_ENV: PASSWORD},
    )
    yield proc, port
    assert proc.stop() == 0
    assert PASSWORD not in proc.logs()


@pytest.fixture(scope="module")
def port(agent: tuple[AgentProcess, int]) -> int:
    return agent[1]


def make_client(port: int, protocol: int | None, **kw: Any) -> redis.Redis:
    """One connection (made here); no retries, so a refused AUTH fails at once."""
    if protocol is not None:
        kw["protocol"] = protocol
    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=30, single_connection_client=True, retry=Retry(NoBackoff(), 0), **kw
    )


@pytest.fixture(params=PROTOCOLS)
def r(request: pytest.FixtureRequest, port: int) -> Iterator[redis.Redis]:
    client = make_client(port, request.param)
    yield client
    client.close()


@pytest.fixture
def key(request: pytest.FixtureRequest) -> Any:
    """Keys unique to the test (and its protocol variant), so tests sharing the agent never collide."""
    prefix = request.node.name

    def make(name: str = "k") -> str:
        return f"{prefix}:{name}"

    return make


def as_dict(reply: Any) -> dict[Any, Any]:
    """A RESP3 map or the flat RESP2 array it becomes."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2]))


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def raw(client: redis.Redis, *args: Any) -> Any:
    """Send one command on the client's connection and return the parsed reply, with none of
    redis-py's per-command reply callbacks (which turn e.g. PING's reply into a bool)."""
    conn = client.connection
    assert conn is not None
    conn.send_command(*args)
    return conn.read_response()


def protocol_of(client: redis.Redis) -> int:
    hello = as_dict(client.execute_command("HELLO"))
    return int(hello[b"proto"] if b"proto" in hello else hello["proto"])


# ------------------------------------------------------------------ redis-py
@pytest.mark.parametrize(("protocol", "expected"), [(None, 3), (3, 3), (2, 2)])
def test_hello_reports_the_negotiated_protocol(port: int, protocol: int | None, expected: int) -> None:
    client = make_client(port, protocol)
    try:
        hello = {text(k): v for k, v in as_dict(client.execute_command("HELLO")).items()}
        assert int(hello["proto"]) == expected
        assert text(hello["server"]) == "redis"
        assert text(hello["mode"]) == "standalone"
        assert int(hello["id"]) == client.client_id()
    finally:
        client.close()


def test_ping_and_echo(r: redis.Redis) -> None:
    assert r.ping() is True
    assert raw(r, "PING", "hello") == b"hello"
    assert raw(r, "PING") == b"PONG"
    assert r.echo(b"\x00\r\n\xff") == b"\x00\r\n\xff"
    assert r.echo("") == b""


def test_set_get_binary_empty_and_large_values(r: redis.Redis, key: Any) -> None:
    values = {
        key("bytes"): bytes(range(256)),
        key("crlf"): b"a\r\nb\r\n$3\r\n*1\r\n",
        key("empty"): b"",
        key("large"): secrets.token_bytes(200_000),
        key("utf8"): "ключ-значение".encode(),
    }
    for k, v in values.items():
        assert r.set(k, v) is True
    for k, v in values.items():
        assert r.get(k) == v
    binary_key = key().encode() + b"\x00\xff\r\n"
    assert r.set(binary_key, b"v") is True
    assert r.get(binary_key) == b"v"
    assert r.get(key().encode() + b"\x00\xfe\r\n") is None
    assert r.get(key("never-set")) is None
    assert r.set(key("bytes"), b"overwritten") is True
    assert r.get(key("bytes")) == b"overwritten"


def test_set_options(r: redis.Redis, key: Any) -> None:
    k, other = key(), key("other")
    assert r.set(k, "v1", nx=True) is True
    assert r.set(k, "v2", nx=True) is None
    assert r.get(k) == b"v1"
    assert r.set(k, "v2", xx=True) is True
    assert r.set(other, "x", xx=True) is None
    assert r.exists(other) == 0
    assert r.set(k, "v3", get=True) == b"v2"
    assert r.set(other, "y", get=True) is None
    assert r.get(other) == b"y"
    assert r.set(k, "v4", ex=100) is True
    assert 0 < r.ttl(k) <= 100
    assert r.set(k, "v5", keepttl=True) is True
    assert 0 < r.pttl(k) <= 100_000
    assert r.get(k) == b"v5"
    assert r.set(k, "v6") is True
    assert r.ttl(k) == -1  # a plain SET clears the TTL
    assert r.set(k, "v7", px=100_000, get=True) == b"v6"
    assert 0 < r.pttl(k) <= 100_000
    assert r.set(k, "v8", xx=True, keepttl=True, get=True) == b"v7"
    assert 0 < r.pttl(k) <= 100_000
    for bad in (["EX", "0"], ["PX", "-5"], ["EX", "abc"], ["NX", "XX"], ["EX", "10", "PX", "10"], ["KEEPTTL", "EX", "10"], ["BOGUS"], ["EX"]):
        with pytest.raises(redis.ResponseError) as info:
            r.execute_command("SET", k, "nope", *bad)
        assert str(info.value) in {"invalid expire time in 'set' command", "syntax error", "value is not an integer or out of range"}
    assert r.get(k) == b"v8"  # no failed SET changed the value


def test_set_px_expires(r: redis.Redis, key: Any) -> None:
    k = key()
    assert r.set(k, "soon", px=200) is True
    assert r.get(k) in (b"soon", None)
    wait_for(lambda: r.exists(k) == 0, timeout=20, what="the PX 200 key to expire")
    assert r.get(k) is None
    assert r.ttl(k) == -2


def test_mset_and_mget(r: redis.Redis, key: Any) -> None:
    mapping = {key(str(i)): f"value-{i}" for i in range(20)}
    assert r.mset(mapping) is True
    names = [*mapping, key("missing")]
    assert r.mget(names) == [v.encode() for v in mapping.values()] + [None]
    assert r.mget(key("0"), key("0")) == [b"value-0", b"value-0"]
    assert r.execute_command("MSET", key("a"), "1", key("a"), "2") in (True, b"OK")
    assert r.get(key("a")) == b"2"  # the last pair for a key wins
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'mset' command"):
        r.execute_command("MSET", key("a"), "1", key("b"))


def test_del_and_exists_count_repeated_keys(r: redis.Redis, key: Any) -> None:
    a, b, missing = key("a"), key("b"), key("missing")
    r.mset({a: "1", b: "2"})
    assert r.exists(a, a, missing) == 2
    assert r.exists(a, b, a, b) == 4
    assert r.delete(a, a, missing) == 1
    assert r.exists(a) == 0
    assert r.unlink(b, b) == 1
    assert r.delete(a, b) == 0


def test_expire_ttl_and_pttl(r: redis.Redis, key: Any) -> None:
    k, missing = key(), key("missing")
    assert r.ttl(missing) == -2
    assert r.pttl(missing) == -2
    assert r.expire(missing, 100) is False
    r.set(k, "v")
    assert r.ttl(k) == -1
    assert r.pttl(k) == -1
    assert r.expire(k, 100) is True
    assert 0 < r.ttl(k) <= 100
    assert 0 < r.pttl(k) <= 100_000
    assert r.persist(k) is True
    assert r.ttl(k) == -1
    assert r.persist(k) is False
    assert r.pexpire(k, 200) is True
    wait_for(lambda: r.exists(k) == 0, timeout=20, what="the PEXPIRE 200 key to expire")
    assert r.pttl(k) == -2
    r.set(k, "v")
    assert r.expire(k, -1) is True  # a negative TTL deletes at once
    assert r.exists(k) == 0
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        r.execute_command("EXPIRE", k, "soon")


def test_incr_family(r: redis.Redis, key: Any) -> None:
    n = key("n")
    assert r.incr(n) == 1
    assert r.incrby(n, 10) == 11
    assert r.decr(n) == 10
    assert r.decrby(n, 25) == -15
    assert r.get(n) == b"-15"
    assert r.decr(key("fresh")) == -1
    r.set(key("text"), "abc")
    for command in (["INCR", key("text")], ["INCRBY", key("text"), "2"], ["DECR", key("text")]):
        with pytest.raises(redis.ResponseError, match="^value is not an integer or out of range$"):
            r.execute_command(*command)
    with pytest.raises(redis.ResponseError, match="^value is not an integer or out of range$"):
        r.execute_command("INCRBY", n, "1.5")
    r.set(key("max"), str(2**63 - 1))
    with pytest.raises(redis.ResponseError, match="^increment or decrement would overflow$"):
        r.incr(key("max"))
    r.set(key("min"), str(-(2**63)))
    with pytest.raises(redis.ResponseError, match="^increment or decrement would overflow$"):
        r.decr(key("min"))
    with pytest.raises(redis.ResponseError, match="^decrement would overflow$"):
        r.execute_command("DECRBY", n, str(-(2**63)))
    assert r.get(key("max")) == str(2**63 - 1).encode()  # failed increments change nothing
    assert r.get(n) == b"-15"


def test_setex_psetex_setnx_getset(r: redis.Redis, key: Any) -> None:
    k, other = key(), key("other")
    assert r.setex(k, 100, "v") is True
    assert 0 < r.ttl(k) <= 100
    assert r.psetex(k, 50_000, "w") is True
    assert r.get(k) == b"w"
    assert 0 < r.pttl(k) <= 50_000
    with pytest.raises(redis.ResponseError, match="^invalid expire time in 'setex' command$"):
        r.setex(k, 0, "x")
    with pytest.raises(redis.ResponseError, match="^invalid expire time in 'psetex' command$"):
        r.psetex(k, -1, "x")
    assert r.setnx(k, "x") is False
    assert r.setnx(other, "x") is True
    assert r.get(other) == b"x"
    assert r.getset(k, "y") == b"w"
    assert r.ttl(k) == -1  # GETSET clears the TTL, as SET does
    assert r.getset(key("fresh"), "z") is None
    assert r.get(key("fresh")) == b"z"


def test_getdel_and_getex(r: redis.Redis, key: Any) -> None:
    k = key()
    assert r.getdel(k) is None
    r.set(k, "v", ex=100)
    assert r.getdel(k) == b"v"
    assert r.exists(k) == 0
    assert r.getex(k, ex=10) is None
    r.set(k, "v")
    assert r.getex(k) == b"v"
    assert r.ttl(k) == -1
    assert r.getex(k, ex=100) == b"v"
    assert 0 < r.ttl(k) <= 100
    assert r.getex(k, px=50_000) == b"v"
    assert 0 < r.pttl(k) <= 50_000
    assert r.getex(k, persist=True) == b"v"
    assert r.ttl(k) == -1
    at = int(time.time()) + 1000
    assert r.getex(k, exat=at) == b"v"
    assert r.expiretime(k) == at
    assert r.getex(k, pxat=(at + 1000) * 1000) == b"v"
    assert 1000 < r.ttl(k) <= 2000
    with pytest.raises(redis.ResponseError, match="^invalid expire time in 'getex' command$"):
        r.getex(k, ex=0)
    with pytest.raises(redis.ResponseError, match="^syntax error$"):
        r.execute_command("GETEX", k, "PERSIST", "EX", "10")
    assert r.getex(k, exat=1) == b"v"  # a time already past: the value, and the key goes
    assert r.exists(k) == 0


def test_msetnx(r: redis.Redis, key: Any) -> None:
    a, b, c = key("a"), key("b"), key("c")
    assert r.msetnx({a: "1", b: "2"}) is True
    assert r.msetnx({b: "3", c: "4"}) is False
    assert r.mget(a, b, c) == [b"1", b"2", None]
    with pytest.raises(redis.ResponseError, match="^wrong number of arguments for 'msetnx' command$"):
        r.execute_command("MSETNX", c, "1", a)


def test_append_strlen_getrange_setrange_substr(r: redis.Redis, key: Any) -> None:
    k = key()
    assert r.append(k, "Hello") == 5
    assert r.append(k, ", World") == 12
    assert r.strlen(k) == 12
    assert r.strlen(key("missing")) == 0
    assert r.getrange(k, 0, 4) == b"Hello"
    assert r.getrange(k, -5, -1) == b"World"
    assert r.getrange(k, 5, 1) == b""
    assert r.getrange(key("missing"), 0, -1) == b""
    assert r.substr(k, 7) == b"World"
    assert r.setrange(k, 7, "Redis") == 12
    assert r.get(k) == b"Hello, Redis"
    assert r.setrange(key("padded"), 3, "x") == 4
    assert r.get(key("padded")) == b"\x00\x00\x00x"
    assert r.setrange(key("nothing"), 10, "") == 0
    assert r.exists(key("nothing")) == 0
    r.set(key("ttl"), "abc", ex=100)
    assert r.append(key("ttl"), "d") == 4
    assert r.setrange(key("ttl"), 0, "X") == 4
    assert 0 < r.ttl(key("ttl")) <= 100  # APPEND and SETRANGE keep the TTL
    with pytest.raises(redis.ResponseError, match="^offset is out of range$"):
        r.setrange(k, -1, "x")


def test_strings_are_held_to_max_value_bytes(r: redis.Redis, key: Any) -> None:
    k = key()
    limit = 1 << 20  # cache.max_value_bytes' default, which the test agent keeps
    with pytest.raises(redis.ResponseError, match=r"^string exceeds maximum allowed size \(cache\.max_value_bytes"):
        r.setrange(k, limit, "x")
    assert r.exists(k) == 0
    assert r.setrange(k, limit - 1, "x") == limit
    with pytest.raises(redis.ResponseError, match=r"^string exceeds maximum allowed size \(cache\.max_value_bytes"):
        r.append(k, "y")
    assert r.strlen(k) == limit  # the failed APPEND changed nothing
    assert r.getrange(k, -1, -1) == b"x"


def test_incrbyfloat(r: redis.Redis, key: Any) -> None:
    k = key()
    assert r.incrbyfloat(k, 10.5) == 10.5
    assert r.get(k) == b"10.5"
    assert r.incrbyfloat(k, 0.1) == pytest.approx(10.6)
    assert r.get(k) == b"10.6"
    assert r.execute_command("INCRBYFLOAT", key("e"), "3.0e3") in (b"3000", 3000.0)
    assert r.get(key("e")) == b"3000"
    r.set(key("text"), "abc")
    with pytest.raises(redis.ResponseError, match="^value is not a valid float$"):
        r.incrbyfloat(key("text"), 1)
    with pytest.raises(redis.ResponseError, match="^increment would produce NaN or Infinity$"):
        r.execute_command("INCRBYFLOAT", k, "inf")
    assert r.get(k) == b"10.6"
    r.set(key("ttl"), "1", ex=100)
    assert r.incrbyfloat(key("ttl"), 1.5) == 2.5
    assert 0 < r.ttl(key("ttl")) <= 100


def test_expireat_pexpireat_expiretime(r: redis.Redis, key: Any) -> None:
    k, missing = key(), key("missing")
    at = int(time.time()) + 1000
    assert r.expireat(missing, at) is False
    assert r.expiretime(missing) == -2
    assert r.pexpiretime(missing) == -2
    r.set(k, "v")
    assert r.expiretime(k) == -1
    assert r.expireat(k, at) is True
    assert r.expiretime(k) == at
    assert abs(r.pexpiretime(k) - at * 1000) <= 1  # kept on a monotonic clock: within a millisecond
    assert r.expireat(k, at + 500, lt=True) is False
    assert r.pexpireat(k, (at + 500) * 1000, gt=True) is True
    assert r.expiretime(k) == at + 500
    assert r.expireat(k, at, nx=True) is False
    assert r.pexpireat(k, 1) is True  # already past: deleted
    assert r.exists(k) == 0
    with pytest.raises(redis.ResponseError, match="^invalid expire time in 'expireat' command$"):
        r.execute_command("EXPIREAT", k, str(2**63 - 1))


def test_touch_and_type(r: redis.Redis, key: Any) -> None:
    a, b = key("a"), key("b")
    r.mset({a: "1", b: ""})
    assert r.touch(a, a, b, key("missing")) == 3
    assert text(r.type(a)) == "string"
    assert text(r.type(b)) == "string"
    assert text(r.type(key("missing"))) == "none"


def test_dbsize_flushdb_flushall(r: redis.Redis, key: Any) -> None:
    assert r.flushall() is True
    assert r.dbsize() == 0
    r.mset({key("1"): "a", key("2"): "b", key("3"): "c"})
    assert r.dbsize() == 3
    assert r.flushdb() is True
    assert r.dbsize() == 0
    assert r.get(key("1")) is None
    r.set(key("1"), "a")
    assert r.flushall(asynchronous=True) is True
    assert r.dbsize() == 0
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("FLUSHDB", "LATER")


def test_select(r: redis.Redis) -> None:
    """cache.databases is 16 by default, as in Redis: 0..15 select, 16 is out of range."""
    assert r.select(0) is True
    assert r.select(15) is True
    with pytest.raises(redis.ResponseError, match="^DB index is out of range$"):
        r.select(16)
    assert r.select(0) is True
    assert r.ping() is True


def test_info_sections(r: redis.Redis, port: int, key: Any) -> None:
    server = r.info("server")
    assert server["redis_mode"] == "standalone"
    assert server["tcp_port"] == port
    assert str(server["redis_version"]).startswith("7.")
    assert "used_memory" not in server  # one section asked, one section returned

    clients = r.info("clients")
    assert clients["connected_clients"] >= 1
    assert clients["maxclients"] == 10000

    memory = r.info("memory")
    assert memory["maxmemory"] == MAX_MEMORY
    assert isinstance(memory["used_memory"], int) and memory["used_memory"] >= 0

    k = key()
    r.set(k, "v")
    before = r.info("stats")
    assert r.get(k) == b"v"
    assert r.get(key("missing")) is None
    after = r.info("stats")
    assert after["keyspace_hits"] == before["keyspace_hits"] + 1
    assert after["keyspace_misses"] == before["keyspace_misses"] + 1
    assert after["total_commands_processed"] > before["total_commands_processed"]
    assert isinstance(after["instantaneous_ops_per_sec"], int)
    wait_for(lambda: r.info("stats")["instantaneous_ops_per_sec"] > 0, timeout=20, what="instantaneous_ops_per_sec to rise")

    stats = r.info("commandstats")
    assert stats["cmdstat_get"]["calls"] >= 2
    assert stats["cmdstat_set"]["calls"] >= 1
    assert "cmdstat_nosuchcommand" not in stats

    keyspace = r.info("keyspace")
    assert keyspace["db0"]["keys"] == r.dbsize()

    predis = r.info("predis")
    assert predis["backend"] in ("numpy", "cupy")
    assert predis["device"]

    default = r.info()
    for field in ("redis_version", "connected_clients", "used_memory", "keyspace_hits", "backend"):
        assert field in default
    assert "cmdstat_get" not in default  # commandstats is not a default section, as in Redis
    assert "cmdstat_get" in r.info("all")


def test_info_reply_type_follows_protocol(port: int) -> None:
    raw3 = make_client(port, 3)
    raw2 = make_client(port, 2)
    try:
        for client in (raw3, raw2):
            client.response_callbacks.clear()
        three = raw3.execute_command("INFO", "server")
        two = raw2.execute_command("INFO", "server")
        assert b"redis_mode:standalone" in (two if isinstance(two, bytes) else two.encode())
        assert "redis_mode:standalone" in text(three)
    finally:
        raw3.close()
        raw2.close()
    with connect(port) as s:  # on the wire: RESP3 INFO is a verbatim string
        s.sendall(encode_command("HELLO", "3"))
        s.recv(4096)
        s.sendall(encode_command("INFO", "predis"))
        assert s.recv(1)[:1] == b"="


def test_config_get(r: redis.Redis) -> None:
    assert r.config_get("maxmemory") == {"maxmemory": str(MAX_MEMORY)}
    assert r.config_get("nosuchparameter") == {}
    save = r.config_get("save")
    assert save == {"save": ""}
    with pytest.raises(redis.ResponseError, match="CONFIG SET is not supported"):
        r.config_set("maxmemory", "1")
    assert r.config_get("maxmemory") == {"maxmemory": str(MAX_MEMORY)}


def test_command_count_and_docs(r: redis.Redis) -> None:
    count = r.command_count()
    assert isinstance(count, int) and count >= 25
    assert r.execute_command("COMMAND COUNT") == count
    docs = r.execute_command("COMMAND DOCS")
    assert docs in ({}, [])


def test_client_setname_getname_id(r: redis.Redis, port: int) -> None:
    assert r.client_getname() is None
    assert r.client_setname("worker-1") is True
    assert text(r.client_getname()) == "worker-1"
    my_id = r.client_id()
    assert isinstance(my_id, int) and my_id > 0
    other = make_client(port, 2)
    try:
        assert other.client_id() != my_id
        assert other.client_getname() is None  # names are per connection
    finally:
        other.close()
    with pytest.raises(redis.ResponseError, match="Client names cannot contain spaces"):
        r.client_setname("has space")
    assert text(r.client_getname()) == "worker-1"


def test_predis_stats(r: redis.Redis, key: Any) -> None:
    before = {text(k): v for k, v in as_dict(r.execute_command("PREDIS.STATS")).items()}
    for field in ("hits", "misses", "sets", "keys", "max_keys", "max_memory_bytes", "evictions"):
        assert field in before
    assert before["max_keys"] == MAX_KEYS
    assert before["max_memory_bytes"] == MAX_MEMORY
    r.set(key(), "v")
    r.get(key())
    after = {text(k): v for k, v in as_dict(r.execute_command("PREDIS.STATS")).items()}
    assert after["sets"] == before["sets"] + 1
    assert after["hits"] == before["hits"] + 1


def test_unknown_command_error(r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command("NOSUCHCOMMAND", "arg1", "arg2")
    message = str(info.value)
    assert message.lower().startswith("unknown command 'nosuchcommand', with args beginning with: 'arg1' 'arg2'")
    assert r.ping() is True  # the connection goes on


def test_wrong_arity_error(r: redis.Redis) -> None:
    for command, name in ((["GET"], "get"), (["SET", "k"], "set"), (["ECHO", "a", "b"], "echo"), (["DBSIZE", "x"], "dbsize"), (["TTL"], "ttl")):
        with pytest.raises(redis.ResponseError) as info:
            r.execute_command(*command)
        assert str(info.value) == f"wrong number of arguments for '{name}' command"
    assert r.ping() is True


def test_pipeline_of_1000_mixed_commands_replies_in_order(r: redis.Redis, key: Any) -> None:
    rng = random.Random(20240601)
    names = [key(str(i)) for i in range(12)]
    model: dict[str, bytes] = {}
    pipe = r.pipeline(transaction=False)
    expected: list[Any] = []
    r.delete(*names)
    while len(expected) < 1000:
        op = rng.choice(["set", "set", "get", "get", "getrun", "setrun", "incr", "exists", "del", "mget", "ping", "echo"])
        k = rng.choice(names)
        if op == "set":
            value = rng.choice([b"%d" % rng.randint(-5, 5), b"text", b""])
            pipe.set(k, value)
            model[k] = value
            expected.append(True)
        elif op == "setrun":  # consecutive plain SETs are batched by the server
            for j in range(rng.randint(2, 8)):
                kk = names[(names.index(k) + j) % len(names)]
                pipe.set(kk, b"run%d" % j)
                model[kk] = b"run%d" % j
                expected.append(True)
        elif op == "get":
            pipe.get(k)
            expected.append(model.get(k))
        elif op == "getrun":  # consecutive GETs are batched by the server
            for _ in range(rng.randint(2, 8)):
                kk = rng.choice(names)
                pipe.get(kk)
                expected.append(model.get(kk))
        elif op == "incr":
            pipe.incr(k)
            current = model.get(k, b"0")
            try:
                number = int(current)
                if current != b"%d" % number:
                    raise ValueError
                model[k] = b"%d" % (number + 1)
                expected.append(number + 1)
            except ValueError:
                expected.append(redis.ResponseError("value is not an integer or out of range"))
        elif op == "exists":
            pipe.exists(k, k)
            expected.append(2 if k in model else 0)
        elif op == "del":
            pipe.delete(k)
            expected.append(1 if model.pop(k, None) is not None else 0)
        elif op == "mget":
            some = rng.sample(names, 3)
            pipe.mget(some)
            expected.append([model.get(x) for x in some])
        elif op == "ping":
            pipe.ping()
            expected.append(True)
        else:
            pipe.echo(b"e%d" % len(expected))
            expected.append(b"e%d" % len(expected))
    replies = pipe.execute(raise_on_error=False)
    assert len(replies) == len(expected)
    for i, (got, want) in enumerate(zip(replies, expected)):
        if isinstance(want, Exception):
            assert isinstance(got, redis.ResponseError) and str(got) == str(want), f"reply {i}"
        else:
            assert got == want, f"reply {i}: {got!r} != {want!r}"
    assert r.mget(names) == [model.get(k) for k in names]


# ------------------------------------------------------------------ AUTH
@pytest.fixture(scope="module")
def auth_port(auth_agent: tuple[AgentProcess, int]) -> int:
    return auth_agent[1]


def test_status_reports_auth(auth_agent: tuple[AgentProcess, int], agent: tuple[AgentProcess, int]) -> None:
    assert auth_agent[0].status()["components"]["cache"]["resp"]["auth"] is True
    assert agent[0].status()["components"]["cache"]["resp"]["auth"] is False


def test_noauth_before_auth(auth_port: int) -> None:
    # redis-py's connect sends CLIENT SETINFO, which (as in Redis 7.2) needs AUTH first; the
    # wire-level test below checks a plain command's NOAUTH reply byte for byte.
    client = redis.Redis(host="127.0.0.1", port=auth_port, protocol=2, socket_timeout=30, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            client.get("k")
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            client.execute_command("DBSIZE")
    finally:
        client.close()
    # The default client sends HELLO 3 without credentials: refused, not served.
    with pytest.raises(redis.AuthenticationError, match="^HELLO must be called with the client already authenticated"):
        make_client(auth_port, None).ping()


@pytest.mark.parametrize("protocol", [None, 2])
def test_wrong_password_is_refused(auth_port: int, protocol: int | None) -> None:
    with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
        make_client(auth_port, protocol, password="not-" + PASSWORD).ping()
    with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
        make_client(auth_port, protocol, username="someone", password=PASSWORD).ping()


@pytest.mark.parametrize("protocol", [None, 2])
@pytest.mark.parametrize("username", [None, "default"])
def test_right_password_is_accepted(auth_port: int, protocol: int | None, username: str | None) -> None:
    client = make_client(auth_port, protocol, password=PASSWORD, username=username)
    try:
        assert client.ping() is True
        assert client.set("auth:k", "v") is True
        assert client.get("auth:k") == b"v"
        assert protocol_of(client) == (protocol or 3)
    finally:
        client.close()


def test_auth_on_the_wire(auth_port: int) -> None:
    with connect(auth_port) as s:
        s.sendall(encode_command("GET", "auth:k"))
        assert read_exactly(s, b"-NOAUTH Authentication required.\r\n") == b"-NOAUTH Authentication required.\r\n"
        wrong = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        s.sendall(encode_command("AUTH", "bad"))
        assert read_exactly(s, wrong) == wrong
        s.sendall(encode_command("HELLO", "3", "AUTH", "default", "bad"))
        assert read_exactly(s, wrong) == wrong
        s.sendall(encode_command("HELLO", "3", "AUTH", "default", PASSWORD))
        assert s.recv(2) == b"%7"  # the RESP3 map HELLO answers
        s.recv(4096)
        s.sendall(encode_command("PING"))
        assert read_exactly(s, b"+PONG\r\n") == b"+PONG\r\n"
    with connect(auth_port) as s:  # AUTH <password> on a RESP2 connection
        s.sendall(encode_command("AUTH", PASSWORD) + encode_command("SET", "auth:w", "1") + encode_command("GET", "auth:w"))
        assert read_exactly(s, b"+OK\r\n+OK\r\n$1\r\n1\r\n") == b"+OK\r\n+OK\r\n$1\r\n1\r\n"


# ------------------------------------------------------------------ redis-cli
def redis_cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("redis-cli")
    if binary is None:
        pytest.skip("redis-cli is not installed (.ci/run installs redis-tools)")
    return subprocess.run([binary, "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, text=True, timeout=60)


def test_redis_cli_ping_set_get(port: int) -> None:
    assert redis_cli(port, "ping").stdout == "PONG\n"
    assert redis_cli(port, "set", "cli:key", "hello world").stdout == "OK\n"
    assert redis_cli(port, "get", "cli:key").stdout == "hello world\n"
    assert redis_cli(port, "incrby", "cli:n", "5").stdout == "5\n"
    assert redis_cli(port, "get", "cli:missing").stdout == "\n"
    out = redis_cli(port, "nosuchcommand")
    assert "unknown command" in out.stdout + out.stderr


def test_redis_cli_resp3(port: int) -> None:
    out = redis_cli(port, "-3", "set", "cli:three", "v3")
    assert out.stdout == "OK\n"
    assert "HELLO" not in out.stdout + out.stderr  # no "HELLO 3 failed"
    assert redis_cli(port, "-3", "get", "cli:three").stdout == "v3\n"
    assert redis_cli(port, "-3", "get", "cli:missing").stdout == "\n"  # RESP3 null, printed as nothing off a tty
    info = redis_cli(port, "-3", "info", "predis").stdout
    assert "# Predis" in info and "backend:" in info


def test_redis_cli_info_predis(port: int) -> None:
    out = redis_cli(port, "info", "predis").stdout
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    assert lines[0] == "# Predis"
    fields = dict(line.split(":", 1) for line in lines[1:])
    assert fields["backend"] in ("numpy", "cupy")
    assert "prefetch" in fields


def test_redis_cli_with_password(auth_port: int) -> None:
    out = redis_cli(auth_port, "ping")
    assert "NOAUTH" in out.stdout + out.stderr
    assert redis_cli(auth_port, "-a", PASSWORD, "--no-auth-warning", "ping").stdout == "PONG\n"
    assert redis_cli(auth_port, "--pass", PASSWORD, "--no-auth-warning", "set", "cli:auth", "ok").stdout == "OK\n"
    assert redis_cli(auth_port, "--user", "default", "--pass", PASSWORD, "--no-auth-warning", "get", "cli:auth").stdout == "ok\n"
    out = redis_cli(auth_port, "-a", "wrong", "--no-auth-warning", "ping")
    assert "WRONGPASS" in out.stdout + out.stderr or "AUTH failed" in out.stdout + out.stderr


# ------------------------------------------------------------------ redis-benchmark
def test_redis_benchmark_runs_clean_and_writes_keys(port: int) -> None:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        pytest.skip("redis-benchmark is not installed (.ci/run installs redis-tools)")
    client = make_client(port, 2)
    try:
        client.flushall()
        before = client.info("commandstats")
        out = subprocess.run(
            [binary, "-h", "127.0.0.1", "-p", str(port), "-t", "set,get,incr,mset", "-P", "16", "-n", "20000", "-r", "1000", "--csv"],
            capture_output=True, text=True, timeout=150,
        )
        assert out.returncode == 0, out.stderr
        noise = [line for line in (out.stdout + out.stderr).splitlines() if "ERR" in line or "rror" in line or "WARNING" in line]
        assert noise == [], noise  # no error replies and no "Could not fetch server CONFIG"
        rows = list(csv.DictReader(io.StringIO(out.stdout)))
        assert [row["test"] for row in rows] == ["SET", "GET", "INCR", "MSET (10 keys)"]
        for row in rows:
            assert float(row["rps"]) > 0
            assert float(row["max_latency_ms"]) >= float(row["min_latency_ms"]) >= 0
        # It really wrote: random keys out of 1000 (key:000000000NNN), a counter, MSET's keys.
        assert 500 < client.dbsize() <= 2001
        assert client.info("keyspace")["db0"]["keys"] == client.dbsize()
        after = client.info("commandstats")
        for name in ("set", "get", "incr", "mset"):
            done = after[f"cmdstat_{name}"]["calls"] - before.get(f"cmdstat_{name}", {}).get("calls", 0)
            assert done >= 20000, name
            assert after[f"cmdstat_{name}"]["failed_calls"] == before.get(f"cmdstat_{name}", {}).get("failed_calls", 0)
        values = [v for v in client.mget([f"key:{i:012d}" for i in range(1000)]) if v is not None]
        assert len(values) > 500
        assert {len(v) for v in values} == {3}  # redis-benchmark's default -d 3 payload
    finally:
        client.close()


def test_redis_benchmark_resp3(port: int) -> None:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        pytest.skip("redis-benchmark is not installed (.ci/run installs redis-tools)")
    out = subprocess.run(
        [binary, "-3", "-h", "127.0.0.1", "-p", str(port), "-t", "set,get", "-P", "16", "-n", "2000", "-r", "100", "--csv"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [row["test"] for row in rows] == ["SET", "GET"]
    assert all(float(row["rps"]) > 0 for row in rows)
    assert "rror" not in out.stdout + out.stderr


def test_agent_still_alive_and_logs_no_password(agent: tuple[AgentProcess, int], auth_agent: tuple[AgentProcess, int]) -> None:
    for proc, _ in (agent, auth_agent):
        assert proc.proc is not None and proc.proc.poll() is None
    assert PASSWORD not in auth_agent[0].logs()
    assert PASSWORD not in Path(auth_agent[0].config_path).read_text()  # only the ${env:...} reference
