# SPDX-License-Identifier: Apache-2.0
"""Hashes against a real redis-server: every hash command and option, WRONGTYPE between
strings and hashes both ways, hashes under TTL, RENAME, MOVE, SCAN TYPE and OBJECT; the wire
bytes compared in RESP2 and RESP3, random sequences of hash and string commands compared
(hypothesis), and redis-py's hash calls as a feature store makes them.

HRANDFIELD is random on both servers: compared by shape (how many, from which fields).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.integration.test_resp_transactions import play
from tests.resp_helpers import agent_and_redis

pytestmark = pytest.mark.integration

WRONGTYPE = "WRONGTYPE"


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    with agent_and_redis(tmp_path_factory, "hashes") as ports:
        yield ports


SCENARIOS: list[Any] = [
    pytest.param(
        [(0, [["HSET", "h", "f1", "v1", "f2", "v2"], ["HSET", "h", "f1", "new", "f3", "v3"], ["HGET", "h", "f1"], ["HGET", "h", "nope"], ["HGET", "none", "f"],
              ["HMGET", "h", "f1", "nope", "f3"], ["HGETALL", "h"], ["HKEYS", "h"], ["HVALS", "h"], ["HLEN", "h"], ["HLEN", "none"], ["HGETALL", "none"]])],
        id="set-and-read",
    ),
    pytest.param(
        [(0, [["HSETNX", "h", "f", "1"], ["HSETNX", "h", "f", "2"], ["HGET", "h", "f"], ["HMSET", "h", "a", "1", "b", "2"], ["HEXISTS", "h", "a"], ["HEXISTS", "h", "z"],
              ["HSTRLEN", "h", "a"], ["HSTRLEN", "h", "z"], ["HDEL", "h", "a", "a", "z"], ["HDEL", "none", "a"], ["HDEL", "h", "b", "f"], ["EXISTS", "h"], ["TYPE", "h"]])],
        id="setnx-hmset-del-last-field-deletes-the-key",
    ),
    pytest.param(
        [(0, [["HINCRBY", "h", "n", "5"], ["HINCRBY", "h", "n", "-7"], ["HINCRBY", "h", "n", "x"], ["HSET", "h", "s", "abc"], ["HINCRBY", "h", "s", "1"],
              ["HSET", "h", "big", "9223372036854775807"], ["HINCRBY", "h", "big", "1"], ["HINCRBYFLOAT", "h", "f", "10.5"], ["HINCRBYFLOAT", "h", "f", "0.1"],
              ["HINCRBYFLOAT", "h", "f", "3.0e3"], ["HINCRBYFLOAT", "h", "s", "1"], ["HINCRBYFLOAT", "h", "f", "x"], ["HINCRBYFLOAT", "h", "f", "inf"], ["HGETALL", "h"]])],
        id="increments",
    ),
    pytest.param(
        [(0, [["HSET", "h", "f", "v"], ["GET", "h"], ["MGET", "h", "nope"], ["INCR", "h"], ["APPEND", "h", "x"], ["STRLEN", "h"], ["GETRANGE", "h", "0", "1"],
              ["SETRANGE", "h", "0", "x"], ["INCRBYFLOAT", "h", "1"], ["GETDEL", "h"], ["GETEX", "h"], ["GETSET", "h", "v"], ["SET", "h", "v", "GET"], ["SETNX", "h", "v"],
              ["TYPE", "h"], ["HGET", "h", "f"]])],
        id="wrongtype-string-commands-on-a-hash",
    ),
    pytest.param(
        [(0, [["SET", "s", "v"], ["HSET", "s", "f", "v"], ["HGET", "s", "f"], ["HGETALL", "s"], ["HDEL", "s", "f"], ["HLEN", "s"], ["HINCRBY", "s", "f", "1"],
              ["HSET", "h", "f", "v"], ["SET", "h", "now a string"], ["TYPE", "h"], ["GET", "h"], ["HGET", "h", "f"]])],
        id="wrongtype-hash-commands-on-a-string-and-set-over-a-hash",
    ),
    pytest.param(
        [(0, [["HSET", "h", "f", "v"], ["EXPIRE", "h", "100"], ["HSET", "h", "g", "w"], ["TTL", "h"], ["HDEL", "h", "g"], ["TTL", "h"], ["PERSIST", "h"], ["TTL", "h"],
              ["RENAME", "h", "h2"], ["TYPE", "h2"], ["HGETALL", "h2"], ["COPY", "h2", "h3"], ["HGET", "h3", "f"], ["MOVE", "h3", "1"], ["SELECT", "1"], ["TYPE", "h3"],
              ["HGETALL", "h3"], ["SELECT", "0"], ["DEL", "h2"], ["EXISTS", "h2"]])],
        id="a-hash-is-one-key",
    ),
    pytest.param(
        [(0, [["HSET", "small", "f", "v"], ["SET", "s", "v"], ["SCAN", "0", "TYPE", "hash", "COUNT", "100"], ["SCAN", "0", "TYPE", "list"],
              ["HSET", "wide", "f", "x" * 65], ["OBJECT", "ENCODING", "small"], ["OBJECT", "ENCODING", "wide"], ["OBJECT", "REFCOUNT", "small"]])],
        id="object-encoding-and-scan-type",
    ),
    pytest.param(
        [(0, [["HSET", "h", "ab", "1", "ac", "2", "b", "3"], ["HSCAN", "h", "0"], ["HSCAN", "h", "0", "MATCH", "a*"], ["HSCAN", "h", "0", "COUNT", "0"],
              ["HSCAN", "h", "x"], ["HSCAN", "h", "0", "BOGUS", "1"], ["HSCAN", "none", "0"], ["HRANDFIELD", "none"], ["HRANDFIELD", "none", "2"], ["HRANDFIELD", "h", "0"]])],
        id="hscan-and-hrandfield-edges",
    ),
    pytest.param(
        [(0, [["HSET", "h"], ["HSET", "h", "f"], ["HSET", "h", "f", "v", "g"], ["HMSET", "h", "f"], ["HGET", "h"], ["HMGET", "h"], ["HSETNX", "h", "f"], ["HINCRBY", "h", "f"],
              ["HRANDFIELD", "h", "1", "BOGUS"], ["HRANDFIELD", "h", "x"]])],
        id="arity-and-syntax-errors",
    ),
    pytest.param(
        [(0, [["HSET", "w", "f", "1"], ["WATCH", "w"]]), (1, [["HINCRBY", "w", "f", "1"]]), (0, [["MULTI"], ["HGET", "w", "f"], ["EXEC"]])],
        id="watch-sees-a-field-change",
    ),
]


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("steps", SCENARIOS)
def test_hashes_match_redis_on_the_wire(ports: dict[str, int], protocol: int, steps: list[Any]) -> None:
    assert play(ports["agent"], protocol, steps) == play(ports["redis"], protocol, steps)


def test_hrandfield_has_redis_s_shape(ports: dict[str, int]) -> None:
    r = redis.Redis(host="127.0.0.1", port=ports["agent"], socket_timeout=10)
    try:
        r.delete("h")
        r.hset("h", mapping={"a": "1", "b": "2", "c": "3"})
        assert r.hrandfield("h") in (b"a", b"b", b"c")
        assert sorted(r.hrandfield("h", 2)) < [b"d"] and len(set(r.hrandfield("h", 2))) == 2
        assert sorted(r.hrandfield("h", 10)) == [b"a", b"b", b"c"]
        picked = r.hrandfield("h", -7)
        assert len(picked) == 7 and set(picked) <= {b"a", b"b", b"c"}
        pairs = r.hrandfield("h", 2, withvalues=True)
        assert len(pairs) == 4 and {pairs[0]: pairs[1], pairs[2]: pairs[3]}.items() <= {b"a": b"1", b"b": b"2", b"c": b"3"}.items()
    finally:
        r.close()


def test_a_feature_store_s_calls(ports: dict[str, int]) -> None:
    """What Feast's Redis online store and the like do: a hash per entity, fields per feature,
    written in a pipeline with a TTL, read back with HMGET/HGETALL."""
    r = redis.Redis(host="127.0.0.1", port=ports["agent"], socket_timeout=10)
    try:
        with r.pipeline() as pipe:
            for entity in range(20):
                pipe.hset(f"driver:{entity}", mapping={"trips": entity, "rating": f"{4 + entity / 100:.2f}", "_ts": "1700000000"})
                pipe.expire(f"driver:{entity}", 3600)
            pipe.execute()
        assert r.hmget("driver:7", ["trips", "rating", "missing"]) == [b"7", b"4.07", None]
        assert r.hgetall("driver:3") == {b"trips": b"3", b"rating": b"4.03", b"_ts": b"1700000000"}
        assert 3500 < r.ttl("driver:3") <= 3600
        assert dict(r.hscan_iter("driver:5", match="t*")) == {b"trips": b"5"}
        assert sorted(r.scan_iter(match="driver:1*", _type="hash")) == sorted(f"driver:{i}".encode() for i in (1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19))
    finally:
        r.close()


KEYS = st.sampled_from(["h", "g", "s"])
FIELDS = st.sampled_from(["a", "b", "c"])
VALUES = st.sampled_from(["1", "-2", "x", "10.5", ""])


@st.composite
def operation(draw: st.DrawFn) -> list[str]:
    key, field, value = draw(KEYS), draw(FIELDS), draw(VALUES)
    return draw(
        st.sampled_from(
            [
                ["HSET", key, field, value], ["HGET", key, field], ["HDEL", key, field], ["HLEN", key], ["HINCRBY", key, field, "3"],
                ["HINCRBYFLOAT", key, field, "1.5"], ["HSETNX", key, field, value], ["HEXISTS", key, field], ["HSTRLEN", key, field],
                ["HMGET", key, field, "z"], ["SET", key, value], ["GET", key], ["INCR", key], ["APPEND", key, value], ["TYPE", key], ["DEL", key],
                ["EXISTS", key], ["MGET", "h", "g", "s"],
            ]
        )  # fmt: skip
    )


@settings(max_examples=60, deadline=None)
@given(commands=st.lists(operation(), min_size=1, max_size=15))
def test_random_hash_and_string_sequences_match_redis(ports: dict[str, int], commands: list[list[str]]) -> None:
    steps = [(0, [["DEL", "h", "g", "s"], *commands])]
    assert play(ports["agent"], 2, steps) == play(ports["redis"], 2, steps)
