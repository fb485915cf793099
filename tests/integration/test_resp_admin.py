# SPDX-License-Identifier: Apache-2.0
"""Operations commands against a real redis-server: CLIENT, SLOWLOG, LATENCY, INFO, CONFIG GET,
LASTSAVE, ACL WHOAMI, redis-cli on them, and the out-of-scope commands' errors.

Both servers log every command in the slow log (a 0 threshold); each test resets it first.
Compared: reply shapes, field names and their order, error texts, and the values that should
be the same. Left out on purpose, where the agent legitimately differs:

- Values that measure the process (addresses, ports, fds, ids, durations, memory, CPU times,
  run and replication ids, the Unix time of a slow log entry).
- CLIENT LIST's qbuf-free, argv-mem, rbs, rbp, obl, oll, tot-mem: the agent has no per-client
  reply buffer or preallocated query buffer; it reports what it holds.
- INFO's server, memory and stats sections carry agent figures (device memory, limits) and
  the ``# Predis`` section; INFO persistence's rdb_changes_since_last_save (Redis counts writes
  to save, the agent never saves) and rdb_last_save_time (each server's start).
- CONFIG GET of sizing parameters and tcp-keepalive (the agent's config, not Redis defaults)
  and of requirepass (never answered by the agent: a secret does not leave it).
- LATENCY HISTOGRAM's bucket bounds (Redis: powers of two; the agent: its metrics' 1-2-5 steps).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cache_core.resp import unsupported
from tests.agentproc import AgentProcess
from tests.resp_helpers import RedisServer, start_agent

pytestmark = pytest.mark.integration

# Redis 7.0's CLIENT LIST fields, in order.
CLIENT_FIELDS = [
    "id", "addr", "laddr", "fd", "name", "age", "idle", "flags", "db", "sub", "psub", "ssub", "multi", "qbuf",
    "qbuf-free", "argv-mem", "multi-mem", "rbs", "rbp", "obl", "oll", "omem", "tot-mem", "events", "cmd", "user",
    "redir", "resp",
]
# CLIENT LIST fields whose values must match too (the rest measure the process).
# age and idle are seconds on each server's own clock: compared as "small", not equal (a busy
# machine can put a second between the two servers' connections).
CLIENT_TIMES = ("age", "idle")
CLIENT_TIME_MAX_SECONDS = 30
CLIENT_SAME_VALUES = ("name", "flags", "db", "sub", "psub", "ssub", "multi", "multi-mem", "omem", "events", "cmd", "user", "redir", "resp")
DEFAULT_SECTIONS = ["Server", "Clients", "Memory", "Persistence", "Stats", "Replication", "CPU", "Modules", "Errorstats", "Cluster", "Keyspace"]
ALL_SECTIONS = ["Server", "Clients", "Memory", "Persistence", "Stats", "Replication", "CPU", "Modules", "Commandstats", "Errorstats", "Latencystats", "Cluster", "Keyspace"]
# CONFIG GET parameters whose values are the same on both servers as configured here.
CONFIG_SAME = (
    "save", "appendonly", "appendfsync", "slowlog-log-slower-than", "slowlog-max-len", "latency-monitor-threshold", "hz",
    "io-threads", "io-threads-do-reads", "lua-time-limit", "busy-reply-threshold", "databases", "timeout", "maxclients",
    "cluster-enabled", "notify-keyspace-events", "replica-read-only", "slave-read-only", "replicaof", "slaveof",
)
REDIS_CLI = "redis-cli"


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    real = RedisServer(tmp_path_factory.mktemp("redis-server"))
    try:
        agent: AgentProcess
        agent, agent_port = start_agent(tmp_path_factory.mktemp("resp-admin-agent"), resp={"slowlog_log_slower_than_usec": 0})
    except BaseException:
        real.stop()
        raise
    try:
        with client(real.port, 2) as r:
            r.connection.send_command("CONFIG", "SET", "slowlog-log-slower-than", "0")  # type: ignore[union-attr]
            assert r.connection.read_response() == b"OK"  # type: ignore[union-attr]
        yield {"redis": real.port, "agent": agent_port}
        assert agent.proc is not None and agent.proc.poll() is None, "the agent died during the tests"
    finally:
        agent.stop()
        real.stop()


def client(port: int, protocol: int = 2) -> redis.Redis:
    """One connection, no client library handshake beyond HELLO 3 (so the slow log shows
    only what a test sends)."""
    return redis.Redis(
        host="127.0.0.1", port=port, protocol=protocol, socket_timeout=10, single_connection_client=True,
        retry=Retry(NoBackoff(), 0), driver_info=None,
    )


def call(c: redis.Redis, *args: Any) -> Any:
    """The raw reply (no redis-py callbacks), or ("error", text)."""
    conn = c.connection
    assert conn is not None
    try:
        conn.send_command(*args)
        return conn.read_response()
    except redis.ResponseError as exc:
        return ("error", str(exc))


def both(ports: dict[str, int], protocol: int = 2) -> tuple[redis.Redis, redis.Redis]:
    return client(ports["redis"], protocol), client(ports["agent"], protocol)


def parse_client_line(line: str) -> list[tuple[str, str]]:
    return [tuple(field.split("=", 1)) for field in line.split(" ")]  # type: ignore[misc]


def text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def sections(info: str) -> list[str]:
    return [line[2:] for line in info.split("\r\n") if line.startswith("# ")]


def section_fields(info: str, title: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    inside = False
    for line in info.split("\r\n"):
        if line.startswith("# "):
            inside = line[2:] == title
        elif inside and line:
            key, _, value = line.partition(":")
            out.append((key, value))
    return out


# ------------------------------------------------------------------------------ CLIENT
@pytest.mark.parametrize("protocol", [2, 3])
def test_client_list_and_info_fields_match_redis(ports: dict[str, int], protocol: int) -> None:
    real, agent = both(ports, protocol)
    with real, agent:
        lines = {}
        for name, c in (("redis", real), ("agent", agent)):
            assert call(c, "CLIENT", "SETNAME", "admin-test") == b"OK"
            info = text(call(c, "CLIENT", "INFO"))
            assert info.endswith("\n") and info.count("\n") == 1
            listed = text(call(c, "CLIENT", "LIST"))
            assert listed.endswith("\n")
            mine = [line for line in listed.splitlines() if "name=admin-test" in line]
            assert len(mine) == 1, listed
            lines[name] = (parse_client_line(info.strip()), parse_client_line(mine[0]))
        for kind in (0, 1):
            real_fields, agent_fields = lines["redis"][kind], lines["agent"][kind]
            assert [k for k, _ in agent_fields] == [k for k, _ in real_fields] == CLIENT_FIELDS
            real_values, agent_values = dict(real_fields), dict(agent_fields)
            assert {k: agent_values[k] for k in CLIENT_SAME_VALUES} == {k: real_values[k] for k in CLIENT_SAME_VALUES}
            for k in CLIENT_TIMES:
                assert 0 <= int(agent_values[k]) <= CLIENT_TIME_MAX_SECONDS and 0 <= int(real_values[k]) <= CLIENT_TIME_MAX_SECONDS
        assert dict(lines["agent"][1])["cmd"] == "client|list" and dict(lines["agent"][0])["resp"] == str(protocol)


def test_client_list_options_and_flags_match_redis(ports: dict[str, int]) -> None:
    real, agent = both(ports)
    with real, agent:
        for c in (real, agent):
            call(c, "CLIENT", "SETNAME", "flagged")
            call(c, "CLIENT", "NO-EVICT", "on")
        cases = [
            ["CLIENT", "LIST", "TYPE", "pubsub"],
            ["CLIENT", "LIST", "TYPE", "master"],
            ["CLIENT", "LIST", "TYPE", "nope"],
            ["CLIENT", "LIST", "ID"],
            ["CLIENT", "LIST", "ID", "abc"],
            ["CLIENT", "LIST", "ID", "0"],
            ["CLIENT", "LIST", "foo"],
            ["CLIENT", "INFO", "x"],
            ["CLIENT", "NO-EVICT", "x"],
            ["CLIENT", "NO-EVICT"],
            ["CLIENT", "NO-EVICT", "OFF"],
            ["CLIENT", "NO-EVICT", "on"],
            ["CLIENT", "NOPE"],
        ]
        for case in cases:
            assert call(agent, *case) == call(real, *case), case
        for c in (real, agent):
            own = dict(parse_client_line(text(call(c, "CLIENT", "INFO")).strip()))
            assert own["flags"] == "e"
            by_id = text(call(c, "CLIENT", "LIST", "ID", own["id"], "999999"))
            assert by_id.count("\n") == 1 and f"id={own['id']} " in by_id
            assert "name=flagged" in text(call(c, "CLIENT", "LIST", "TYPE", "normal"))
            # Inside MULTI: flags x, multi = queued commands (seen from another connection).
            assert call(c, "MULTI") == b"OK"
            assert call(c, "SET", "k", "v") == b"QUEUED"
        for port, c in ((ports["redis"], real), (ports["agent"], agent)):
            with client(port) as other:
                listed = text(call(other, "CLIENT", "LIST"))
            line = dict(parse_client_line(next(line for line in listed.splitlines() if "name=flagged" in line)))
            assert (line["flags"], line["multi"], line["cmd"]) == ("xe", "1", "set"), line
            assert call(c, "DISCARD") == b"OK"


def test_client_kill_replies_match_redis(ports: dict[str, int]) -> None:
    real, agent = both(ports)
    with real, agent:
        cases = [
            ["CLIENT", "KILL"],
            ["CLIENT", "KILL", "1.2.3.4:5"],
            ["CLIENT", "KILL", "id"],
            ["CLIENT", "KILL", "ID", "999999"],
            ["CLIENT", "KILL", "ID", "abc"],
            ["CLIENT", "KILL", "ID", "0"],
            ["CLIENT", "KILL", "ID", "-1"],
            ["CLIENT", "KILL", "foo", "bar"],
            ["CLIENT", "KILL", "ID", "999999", "SKIPME", "maybe"],
            ["CLIENT", "KILL", "ID", "999999", "SKIPME", "yes"],
            ["CLIENT", "KILL", "ADDR", "1.2.3.4:5", "LADDR", "x"],
            ["CLIENT", "KILL", "TYPE", "pubsub"],
            ["CLIENT", "KILL", "TYPE", "foo"],
            ["CLIENT", "KILL", "USER", "nobody"],
            ["CLIENT", "KILL", "MAXAGE", "1"],
            ["CLIENT", "KILL", "ID", "1", "ADDR"],
        ]
        for case in cases:
            assert call(agent, *case) == call(real, *case), case


def _closed(c: redis.Redis) -> bool:
    try:
        call(c, "PING")
    except (redis.ConnectionError, ConnectionError, OSError):
        return True
    return False


@pytest.mark.parametrize("how", ["id", "addr", "old", "laddr", "self"])
def test_client_kill_closes_the_client_as_redis(ports: dict[str, int], how: str) -> None:
    for port in (ports["redis"], ports["agent"]):
        with client(port) as killer, client(port) as victim:
            call(victim, "CLIENT", "SETNAME", "victim")
            line = dict(parse_client_line(text(call(victim, "CLIENT", "INFO")).strip()))
            own = dict(parse_client_line(text(call(killer, "CLIENT", "INFO")).strip()))
            if how == "id":
                assert call(killer, "CLIENT", "KILL", "ID", line["id"]) == 1
            elif how == "addr":
                assert call(killer, "CLIENT", "KILL", "ADDR", line["addr"], "SKIPME", "yes") == 1
            elif how == "old":
                assert call(killer, "CLIENT", "KILL", line["addr"]) == b"OK"
            elif how == "laddr":
                # Every client of the server shares its listening address: all but the caller go.
                assert call(killer, "CLIENT", "KILL", "LADDR", line["laddr"], "TYPE", "normal", "USER", "default") >= 1
            else:
                assert call(victim, "CLIENT", "KILL", "ID", line["id"], "SKIPME", "no") == 1
                assert _closed(victim), port
                continue
            assert _closed(victim), (how, port)
            assert call(killer, "CLIENT", "ID") == int(own["id"])


# ------------------------------------------------------------------------------ SLOWLOG
def _slowlog_commands() -> list[list[Any]]:
    return [
        ["CLIENT", "SETNAME", "slow"],
        ["SET", "slowkey", "1"],
        ["GET", "slowkey"],
        ["AUTH", "default", "anything"],
        ["HELLO", "2", "AUTH", "default", "secret"],
        ["MULTI"],
        ["SET", "slowkey", "2"],
        ["GET", "slowkey"],
        ["EXEC"],
        ["SET", "slowkey", "v" * 300],
        ["DEL", *[f"key{i}" for i in range(40)]],
        ["GET"],
        ["NOPE"],
        ["SLOWLOG", "LEN"],
    ]


@pytest.mark.parametrize("protocol", [2, 3])
def test_slowlog_entries_match_redis(ports: dict[str, int], protocol: int) -> None:
    real, agent = both(ports, protocol)
    entries = {}
    with real, agent:
        for name, c in (("redis", real), ("agent", agent)):
            assert call(c, "SLOWLOG", "RESET") == b"OK"
            for command in _slowlog_commands():
                call(c, *command)
            # EXEC, GET (wrong arity) and NOPE are not logged; SLOWLOG RESET is.
            assert call(c, "SLOWLOG", "LEN") == len(_slowlog_commands()) - 3 + 1
            entries[name] = call(c, "SLOWLOG", "GET", "-1")
            assert len(call(c, "SLOWLOG", "GET")) == 10
            assert len(call(c, "SLOWLOG", "GET", "2")) == 2
            assert call(c, "SLOWLOG", "GET", "0") == []
            own = dict(parse_client_line(text(call(c, "CLIENT", "INFO")).strip()))
            for entry in entries[name]:
                assert len(entry) == 6
                assert isinstance(entry[0], int) and isinstance(entry[2], int) and entry[2] >= 0
                assert abs(entry[1] - time.time()) < 60
                assert entry[4] == own["addr"].encode()
        for real_entry, agent_entry in zip(entries["redis"], entries["agent"], strict=True):
            assert agent_entry[3] == real_entry[3]
            assert agent_entry[5] == real_entry[5]
        first = {name: e[-1][0] for name, e in entries.items()}
        assert [e[0] - first["agent"] for e in entries["agent"]] == [e[0] - first["redis"] for e in entries["redis"]]
        argvs = [e[3] for e in entries["agent"]]
        assert [b"AUTH", b"(redacted)", b"(redacted)"] in argvs
        assert [b"HELLO", b"2", b"AUTH", b"(redacted)", b"(redacted)"] in argvs
        assert [b"SET", b"slowkey", b"v" * 128 + b"... (172 more bytes)"] in argvs
        assert [b"DEL", *[f"key{i}".encode() for i in range(30)], b"... (10 more arguments)"] in argvs
        assert [b"SLOWLOG", b"RESET"] == argvs[-1]


def test_slowlog_errors_match_redis(ports: dict[str, int]) -> None:
    real, agent = both(ports)
    with real, agent:
        for case in (["SLOWLOG"], ["SLOWLOG", "GET", "-2"], ["SLOWLOG", "GET", "abc"], ["SLOWLOG", "GET", "1", "2"], ["SLOWLOG", "LEN", "x"], ["SLOWLOG", "RESET", "x"], ["SLOWLOG", "foo"], ["SLOWLOG", "GET", "-1"]):
            call(real, "SLOWLOG", "RESET")
            call(agent, "SLOWLOG", "RESET")
            real_reply, agent_reply = call(real, *case), call(agent, *case)
            if isinstance(real_reply, list):
                assert [e[3] for e in agent_reply] == [e[3] for e in real_reply], case
            else:
                assert agent_reply == real_reply, case
        assert call(agent, "SLOWLOG", "HELP")[0] == call(real, "SLOWLOG", "HELP")[0]


# ------------------------------------------------------------------------------ LATENCY
@pytest.mark.parametrize("protocol", [2, 3])
def test_latency_replies_match_redis(ports: dict[str, int], protocol: int) -> None:
    real, agent = both(ports, protocol)
    with real, agent:
        for case in (
            ["LATENCY", "LATEST"], ["LATENCY", "HISTORY", "command"], ["LATENCY", "RESET"], ["LATENCY", "RESET", "command", "foo"],
            ["LATENCY", "DOCTOR"], ["LATENCY", "GRAPH", "command"], ["LATENCY", "HISTORY"], ["LATENCY", "LATEST", "x"],
            ["LATENCY", "foo"], ["LATENCY"], ["CONFIG", "GET", "latency-monitor-threshold"],
        ):
            assert call(agent, *case) == call(real, *case), case
        for c in (real, agent):
            call(c, "SET", "histogram", "1")
        real_histogram, agent_histogram = call(real, "LATENCY", "HISTOGRAM", "set"), call(agent, "LATENCY", "HISTOGRAM", "set")
        if protocol == 3:
            assert list(agent_histogram) == list(real_histogram) == [b"set"]
            assert list(agent_histogram[b"set"]) == list(real_histogram[b"set"]) == [b"calls", b"histogram_usec"]
        else:
            assert agent_histogram[0] == real_histogram[0] == b"set"
            assert agent_histogram[1][0::2] == real_histogram[1][0::2] == [b"calls", b"histogram_usec"]


# ------------------------------------------------------------------------------ INFO
def test_info_sections_match_redis(ports: dict[str, int]) -> None:
    real, agent = both(ports)
    with real, agent:
        for args, expected in (((), DEFAULT_SECTIONS), (("default",), DEFAULT_SECTIONS), (("all",), ALL_SECTIONS), (("everything",), ALL_SECTIONS), (("server", "cpu"), ["Server", "CPU"]), (("CPU",), ["CPU"])):
            assert sections(text(call(real, "INFO", *args))) == expected, args
            agent_sections = sections(text(call(agent, "INFO", *args)))
            assert [s for s in agent_sections if s != "Predis"] == expected, args
        assert call(agent, "INFO", "nope") == call(real, "INFO", "nope") == b""
        assert sections(text(call(agent, "INFO", "predis"))) == ["Predis"]


def test_info_fields_match_redis(ports: dict[str, int]) -> None:
    real, agent = both(ports)
    with real, agent:
        for c in (real, agent):
            call(c, "NOPE")
            call(c, "GET")
        infos = {name: text(call(c, "INFO", "everything")) for name, c in (("redis", real), ("agent", agent))}
    for title in ("Clients", "Persistence", "Replication", "CPU", "Modules", "Cluster"):
        real_fields, agent_fields = section_fields(infos["redis"], title), section_fields(infos["agent"], title)
        assert [k for k, _ in agent_fields] == [k for k, _ in real_fields], title
    persistence = dict(section_fields(infos["agent"], "Persistence"))
    real_persistence = dict(section_fields(infos["redis"], "Persistence"))
    for key in persistence:
        if key not in ("rdb_changes_since_last_save", "rdb_last_save_time"):
            assert persistence[key] == real_persistence[key], key
    replication, real_replication = dict(section_fields(infos["agent"], "Replication")), dict(section_fields(infos["redis"], "Replication"))
    assert {k: v for k, v in replication.items() if k != "master_replid"} == {k: v for k, v in real_replication.items() if k != "master_replid"}
    assert re.fullmatch(r"[0-9a-f]{40}", replication["master_replid"])
    for key, value in section_fields(infos["agent"], "CPU"):
        assert re.fullmatch(r"\d+\.\d{6}", value), key
    assert dict(section_fields(infos["agent"], "Cluster")) == {"cluster_enabled": "0"}
    for name in ("redis", "agent"):
        errors = dict(section_fields(infos[name], "Errorstats"))
        assert int(errors["errorstat_ERR"].removeprefix("count=")) >= 2
        commands = dict(section_fields(infos[name], "Commandstats"))
        assert re.fullmatch(r"calls=\d+,usec=\d+,usec_per_call=\d+\.\d\d,rejected_calls=[1-9]\d*,failed_calls=\d+", commands["cmdstat_get"])
        for key, value in section_fields(infos[name], "Latencystats"):
            assert key.startswith("latency_percentiles_usec_") and re.fullmatch(r"p50=[\d.]+,p99=[\d.]+,p99\.9=[\d.]+", value), (name, key)
    server, real_server = dict(section_fields(infos["agent"], "Server")), dict(section_fields(infos["redis"], "Server"))
    assert set(real_server) - set(server) <= {"monotonic_clock", "multiplexing_api", "atomicvar_api", "gcc_version", "lru_clock"}
    assert server["redis_mode"] == "standalone" and server["tcp_port"] == str(ports["agent"])
    stats = dict(section_fields(infos["agent"], "Stats"))
    assert int(stats["total_error_replies"]) >= 2


# ------------------------------------------------------------------------------ CONFIG
@pytest.mark.parametrize("protocol", [2, 3])
def test_config_get_matches_redis(ports: dict[str, int], protocol: int) -> None:
    real, agent = both(ports, protocol)
    with real, agent:
        for key in CONFIG_SAME:
            assert call(agent, "CONFIG", "GET", key) == call(real, "CONFIG", "GET", key), key
        real_limits, agent_limits = call(real, "CONFIG", "GET", "client-output-buffer-limit"), call(agent, "CONFIG", "GET", "client-output-buffer-limit")
        real_value = real_limits[b"client-output-buffer-limit"] if protocol == 3 else real_limits[1]
        agent_value = agent_limits[b"client-output-buffer-limit"] if protocol == 3 else agent_limits[1]
        assert agent_value.split()[4:] == real_value.split()[4:]
        assert agent_value.split()[:4] == [b"normal", b"67108864", b"16777216", b"10"]
        everything = call(agent, "CONFIG", "GET", "*")
        values = everything if protocol == 3 else dict(zip(everything[0::2], everything[1::2]))
        real_everything = call(real, "CONFIG", "GET", "*")
        real_values = real_everything if protocol == 3 else dict(zip(real_everything[0::2], real_everything[1::2]))
        for key in (b"maxmemory", b"maxclients", b"databases", b"maxmemory-policy", b"port", b"bind", b"maxmemory-clients", b"client-query-buffer-limit", b"proto-max-bulk-len", b"tcp-keepalive"):
            assert key in values and key in real_values, key
        assert values[b"maxmemory"] == str(64 * 1024 * 1024).encode() and values[b"port"] == str(ports["agent"]).encode()
        assert b"requirepass" not in values
        upper, pattern = call(agent, "CONFIG", "GET", "MAXCLIENTS", "max*"), call(agent, "CONFIG", "GET", "max*")
        assert (upper if protocol == 3 else dict(zip(upper[0::2], upper[1::2]))) == (pattern if protocol == 3 else dict(zip(pattern[0::2], pattern[1::2])))
        assert call(agent, "CONFIG", "GET") == call(real, "CONFIG", "GET")
        assert call(agent, "CONFIG", "FOO") == call(real, "CONFIG", "FOO")
        for sub in ("SET", "REWRITE", "RESETSTAT"):
            reply = call(agent, "CONFIG", sub, *(["maxmemory", "1"] if sub == "SET" else []))
            assert reply[0] == "error" and f"CONFIG {sub} is not supported" in reply[1]


def test_lastsave_and_acl_whoami_match_redis(ports: dict[str, int]) -> None:
    real, agent = both(ports)
    with real, agent:
        for c in (real, agent):
            assert abs(call(c, "LASTSAVE") - time.time()) < 3600
            assert call(c, "ACL", "WHOAMI") == b"default"
        assert call(agent, "LASTSAVE", "x") == call(real, "LASTSAVE", "x")
        assert call(agent, "ACL", "WHOAMI", "x") == call(real, "ACL", "WHOAMI", "x")
        reply = call(agent, "ACL", "SETUSER", "bob")
        assert reply == ("error", "'ACL SETUSER' is not supported by this server (one user, default, with cache.resp.requirepass; ACL users are out of scope, see docs/redis-protocol.md)")


# ------------------------------------------------------------------------------ redis-cli
def cli(port: int, *args: str) -> str:
    done = subprocess.run([REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def have_cli() -> None:
    try:
        subprocess.run([REDIS_CLI, "--version"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("redis-cli is not installed (.ci/run installs it)")


def test_redis_cli_operations_commands(ports: dict[str, int], have_cli: None) -> None:
    for port in (ports["redis"], ports["agent"]):
        info = cli(port, "info")
        assert info.startswith("# Server") and "# Persistence" in info and "role:master" in info
        listed = cli(port, "client", "list")
        assert listed.startswith("id=") and "cmd=client|list" in listed
        cli(port, "slowlog", "reset")
        cli(port, "set", "cli-key", "v")
        slow = cli(port, "slowlog", "get")
        assert "cli-key" in slow and "slowlog" in slow.lower()
        assert cli(port, "slowlog", "len").strip() == "3"  # RESET, SET, GET
        assert cli(port, "latency", "latest") == "\n"
        assert cli(port, "config", "get", "save") == "save\n\n"
        assert cli(port, "client", "kill", "id", "999999").strip() == "0"
        assert cli(port, "client", "no-evict", "on").strip() == "OK"
        assert cli(port, "acl", "whoami").strip() == "default"
    assert cli(ports["agent"], "info", "predis").startswith("# Predis")


# ------------------------------------------------------------------------------ out of scope
def test_out_of_scope_commands_say_so() -> None:
    assert not {"hset", "hget", "hgetall", "select", "scan", "keys"} & {n for g in unsupported.GROUPS for n in g.commands}


@pytest.mark.parametrize("group", unsupported.GROUPS, ids=lambda g: g.what)
def test_out_of_scope_commands_answer_a_clear_error(ports: dict[str, int], group: unsupported.Group) -> None:
    with client(ports["agent"]) as agent:
        for name in group.commands:
            reply = call(agent, name.upper(), "key", "arg")
            assert reply == ("error", f"'{name.upper()}' is not supported by this server (Predis caches strings and hashes; {group.what} are out of scope, see docs/redis-protocol.md)")
            assert call(agent, "COMMAND", "INFO", name) == [None]
        assert call(agent, "PING") == b"PONG"


def test_out_of_scope_error_text_for_lpush(ports: dict[str, int]) -> None:
    with socket.create_connection(("127.0.0.1", ports["agent"]), timeout=10) as sock:
        sock.sendall(b"*3\r\n$5\r\nlpush\r\n$1\r\nk\r\n$1\r\nv\r\n")
        data = sock.recv(4096)
    assert data == b"-ERR 'LPUSH' is not supported by this server (Predis caches strings and hashes; lists are out of scope, see docs/redis-protocol.md)\r\n"
