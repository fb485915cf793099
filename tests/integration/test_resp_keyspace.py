# SPDX-License-Identifier: Apache-2.0
"""KEYS, SCAN, RANDOMKEY, RENAME, RENAMENX, COPY, OBJECT, MEMORY USAGE against a real
redis-server, replies compared (key lists as sets: the two servers order them differently),
RESP2 and RESP3; glob patterns compared on random patterns (hypothesis); SCAN's guarantee
under concurrent writes, table growth and evictions; redis-py's scan_iter unchanged.

Left out on purpose: MEMORY USAGE's figure (each server's own accounting: compared as
"an integer for a key, nil for none"); OBJECT IDLETIME's figure (compared as 0 right after
a write). OBJECT ENCODING follows the value's history as Redis's does: "raw" after APPEND or
SETRANGE, "embstr" for INCRBYFLOAT's result, kept by RENAME, COPY and MOVE, reset by SET.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.resp_helpers import agent_and_redis, start_agent

pytestmark = pytest.mark.integration

KEYSPACE = ["a", "b", "ab", "abc", "user:1", "user:2", "user:10", "h[1]", "x*y", "x?y", "back\\slash", "-", "]", "^", "Z", "z"]


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    with agent_and_redis(tmp_path_factory, "keyspace", cache={"max_keys": 4096}) as ports:
        yield ports


def clients(ports: dict[str, int], protocol: int = 2) -> tuple[redis.Redis, redis.Redis]:
    return tuple(redis.Redis(host="127.0.0.1", port=ports[name], protocol=protocol, socket_timeout=10) for name in ("agent", "redis"))  # type: ignore[return-value]


def outcome(c: redis.Redis, command: list[Any]) -> Any:
    try:
        reply = c.execute_command(*command)
    except redis.ResponseError as exc:
        return ("error", str(exc))
    if command[0].upper() == "KEYS":
        return ("keys", sorted(reply))
    return ("ok", reply)


def same_on_both(ports: dict[str, int], protocol: int, setup: list[list[Any]], commands: list[list[Any]]) -> None:
    ours, theirs = clients(ports, protocol)
    try:
        for c in (ours, theirs):
            c.flushall()
            for command in setup:
                c.execute_command(*command)
        for command in commands:
            assert outcome(ours, command) == outcome(theirs, command), command
    finally:
        ours.close()
        theirs.close()


FILLED = [["MSET", *[part for k in KEYSPACE for part in (k, "1")]]]
CASES: list[Any] = [
    pytest.param(FILLED, [["KEYS", "*"], ["KEYS", "user:*"], ["KEYS", "user:?"], ["KEYS", "[ab]*"], ["KEYS", "[^a]*"], ["KEYS", "x\\*y"], ["KEYS", "*[*"]], id="keys-patterns"),
    pytest.param(FILLED, [["KEYS", "[a-b]*"], ["KEYS", "[b-a]*"], ["KEYS", "h\\[1\\]"], ["KEYS", "*\\\\*"], ["KEYS", "[]]"], ["KEYS", "[\\]]"], ["KEYS", "nomatch"]], id="keys-sets-and-escapes"),
    pytest.param([], [["KEYS", "*"], ["RANDOMKEY"], ["SCAN", "0"]], id="empty"),
    pytest.param(FILLED, [["SCAN", "x"], ["SCAN", " 1"], ["SCAN", "18446744073709551616"], ["SCAN", "-"], ["SCAN", "0", "COUNT", "0"], ["SCAN", "0", "COUNT"], ["SCAN", "0", "BOGUS", "1"], ["SCAN", "0", "COUNT", "x"]], id="scan-errors"),
    pytest.param(
        [["SET", "a", "1", "EX", "100"], ["SET", "b", "2"]],
        [["RENAME", "a", "c"], ["TTL", "c"], ["EXISTS", "a"], ["RENAME", "nokey", "d"], ["RENAME", "c", "c"], ["RENAME", "c", "b"], ["GET", "b"], ["TTL", "b"]],
        id="rename",
    ),
    pytest.param(
        [["SET", "a", "1"], ["SET", "b", "2"]],
        [["RENAMENX", "a", "b"], ["RENAMENX", "a", "a"], ["RENAMENX", "a", "c"], ["GET", "c"], ["RENAMENX", "nokey", "d"], ["RENAME", "a"]],
        id="renamenx",
    ),
    pytest.param(
        [["SET", "a", "1", "PX", "100000"], ["SET", "b", "2"]],
        [["COPY", "a", "b"], ["COPY", "a", "b", "REPLACE"], ["GET", "b"], ["COPY", "a", "a"], ["COPY", "nokey", "x"], ["COPY", "a", "c", "DB", "0"], ["COPY", "a", "d", "BOGUS"], ["COPY", "a", "e", "DB", "x"], ["EXISTS", "c"]],
        id="copy",
    ),
    pytest.param(
        [["SET", "i", "12345"], ["SET", "neg", "-7"], ["SET", "big", "99999999999999999999"], ["SET", "s", "x" * 44], ["SET", "r", "x" * 45], ["SET", "lead0", "012"], ["SET", "small", "5"]],
        [["OBJECT", "ENCODING", "i"], ["OBJECT", "ENCODING", "neg"], ["OBJECT", "ENCODING", "big"], ["OBJECT", "ENCODING", "s"], ["OBJECT", "ENCODING", "r"], ["OBJECT", "ENCODING", "lead0"], ["OBJECT", "ENCODING", "nokey"], ["OBJECT", "REFCOUNT", "small"], ["OBJECT", "REFCOUNT", "s"], ["OBJECT", "FREQ", "s"], ["OBJECT", "IDLETIME", "nokey"], ["OBJECT", "BOGUS", "s"], ["OBJECT", "ENCODING"], ["OBJECT", "HELP"]],
        id="object",
    ),
    pytest.param(
        [["SET", "ap", "12"], ["APPEND", "ap", "3"], ["APPEND", "new", "45"], ["SET", "sr", "abc"], ["SETRANGE", "sr", "1", "X"], ["SETRANGE", "srnew", "0", "7"],
         ["SET", "f", "1.5"], ["INCRBYFLOAT", "f", "1.5"], ["INCRBYFLOAT", "fl", "0.25"], ["SET", "n", "7"], ["INCR", "n"], ["SET", "reset", "x"], ["APPEND", "reset", "y"], ["SET", "reset", "5"],
         ["SET", "mv", "1"], ["APPEND", "mv", "2"], ["RENAME", "mv", "mv2"], ["COPY", "mv2", "cp"], ["APPEND", "del", "1"], ["APPEND", "del", "1"], ["DEL", "del"], ["SET", "del", "9"]],
        [["OBJECT", "ENCODING", k] for k in ("ap", "new", "sr", "srnew", "f", "fl", "n", "reset", "mv2", "cp", "del")] + [["GET", "ap"], ["GET", "f"], ["OBJECT", "REFCOUNT", "ap"]],
        id="object-encoding-history",
    ),
    pytest.param(
        [["SET", "m", "1"], ["APPEND", "m", "2"], ["MOVE", "m", "1"]],
        [["SELECT", "1"], ["OBJECT", "ENCODING", "m"], ["GET", "m"], ["SELECT", "0"]],
        id="object-encoding-move",
    ),
    pytest.param([["SET", "a", "1"]], [["MEMORY", "USAGE", "nokey"], ["MEMORY", "USAGE", "a", "SAMPLES"], ["MEMORY", "USAGE", "a", "BOGUS", "1"], ["MEMORY", "BOGUS"]], id="memory-usage-errors"),
]


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize(("setup", "commands"), CASES)
def test_same_replies_as_redis(ports: dict[str, int], protocol: int, setup: list[list[Any]], commands: list[list[Any]]) -> None:
    same_on_both(ports, protocol, setup, commands)


def test_memory_usage_and_idletime_answer_as_redis_does(ports: dict[str, int]) -> None:
    ours, theirs = clients(ports)
    try:
        for c in (ours, theirs):
            c.flushall()
            c.set("k", "v" * 100)
            assert isinstance(c.memory_usage("k"), int) and c.memory_usage("k") > 100
            assert c.memory_usage("none") is None
            assert c.object("idletime", "k") == 0
    finally:
        ours.close()
        theirs.close()


def full_scan(c: redis.Redis, **options: Any) -> list[bytes]:
    cursor, seen = 0, []
    while True:
        cursor, keys = c.scan(cursor, **options)
        seen.extend(keys)
        if cursor == 0:
            return seen


@pytest.mark.parametrize("options", [{}, {"count": 1}, {"count": 3, "match": "user:*"}, {"count": 1000}, {"_type": "string"}, {"_type": "hash"}])
def test_a_whole_scan_returns_what_redis_returns(ports: dict[str, int], options: dict[str, Any]) -> None:
    ours, theirs = clients(ports)
    try:
        for c in (ours, theirs):
            c.flushall()
            c.mset({f"user:{i}": i for i in range(300)} | {f"other:{i}": i for i in range(50)})
        mine = full_scan(ours, **options)
        assert sorted(set(mine)) == sorted(set(full_scan(theirs, **options)))
        assert len(mine) == len(set(mine))  # nothing was added or removed: each key once
        assert sorted(ours.scan_iter(match="other:*")) == sorted(theirs.scan_iter(match="other:*"))
    finally:
        ours.close()
        theirs.close()


PATTERN_CHARS = st.sampled_from(list("ab*?[]^-\\:1"))


@settings(max_examples=150, deadline=None)
@given(pattern=st.text(PATTERN_CHARS, min_size=1, max_size=8))
def test_glob_patterns_match_the_same_keys_as_redis(ports: dict[str, int], pattern: str) -> None:
    ours, theirs = clients(ports)
    try:
        for c in (ours, theirs):
            if c.dbsize() != len(KEYSPACE) + 10:
                c.flushall()
                c.mset({k: "1" for k in KEYSPACE} | {f"a{i}b": "1" for i in range(10)})
        assert sorted(ours.keys(pattern)) == sorted(theirs.keys(pattern)), pattern
    finally:
        ours.close()
        theirs.close()


def test_scan_returns_every_key_present_throughout_under_concurrent_writes(tmp_path: Any) -> None:
    """While one client scans COUNT 7 at a time, another adds 3,000 keys into a cache of
    max_keys 2048 (about 1,500 evictions, and the table rehashes away their tombstones) and
    deletes others; every key present from the first SCAN to the last is returned."""
    agent, port = start_agent(tmp_path, cache={"max_keys": 2048, "eviction": "lru"})
    try:
        scanner = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
        writer = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
        stable = {f"stable:{i}".encode() for i in range(300)}
        scanner.mset({k: "s" for k in stable})
        for i in range(300):
            writer.set(f"doomed:{i}", "d")
        # The stable keys are read all along, so LRU never picks them.
        stop = threading.Event()
        errors: list[BaseException] = []

        def churn() -> None:
            try:
                i = 0
                while not stop.is_set() and i < 3000:
                    writer.set(f"new:{i}", "n")
                    if i < 300:
                        writer.delete(f"doomed:{i}")
                    if i % 50 == 0:
                        writer.mget(list(stable))
                    i += 1
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=churn)
        thread.start()
        scans = 0
        try:
            # Whole iterations, one after the other, for as long as the writes go on.
            while thread.is_alive():
                seen: list[bytes] = []
                cursor = 0
                while True:
                    cursor, keys = scanner.scan(cursor, count=7)
                    seen.extend(keys)
                    if cursor == 0:
                        break
                missed = stable - set(seen)
                assert not missed, f"{len(missed)} stable keys were never returned by scan {scans}"
                scans += 1
        finally:
            stop.set()
            thread.join(timeout=60)
        assert not errors, errors
        assert scans >= 1
        assert scanner.info("stats")["evicted_keys"] > 0
        scanner.close()
        writer.close()
    finally:
        agent.stop()
