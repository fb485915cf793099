# SPDX-License-Identifier: Apache-2.0
"""Numbered databases (cache.databases, 16 as in Redis): SELECT, SWAPDB, MOVE, COPY ... DB,
FLUSHDB per database, FLUSHALL, DBSIZE, KEYS/SCAN/RANDOMKEY per database, INFO keyspace, and
WATCH across them; the wire bytes of every reply compared with a real redis-server, RESP2 and
RESP3. Then redis-py and redis-cli with a database number, as applications configure them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.integration.test_resp_transactions import play
from tests.resp_helpers import agent_and_redis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    with agent_and_redis(tmp_path_factory, "databases") as ports:
        yield ports


SCENARIOS: list[Any] = [
    pytest.param(
        [(0, [["SET", "k", "zero"], ["SELECT", "1"], ["GET", "k"], ["SET", "k", "one"], ["GET", "k"], ["DBSIZE"], ["SELECT", "0"], ["GET", "k"], ["DBSIZE"]])],
        id="separate-keyspaces",
    ),
    pytest.param(
        [(0, [["SELECT", "16"], ["SELECT", "-1"], ["SELECT", "x"], ["SELECT", "15"], ["SET", "a", "1"], ["SELECT", "0"], ["EXISTS", "a"]])],
        id="select-range",
    ),
    pytest.param(
        [(0, [["SET", "a", "0"], ["SELECT", "2"], ["SET", "a", "2"], ["SET", "b", "2"], ["FLUSHDB"], ["DBSIZE"], ["SELECT", "0"], ["GET", "a"], ["FLUSHALL"], ["DBSIZE"]])],
        id="flushdb-is-per-database",
    ),
    pytest.param(
        [(0, [["SET", "a", "0"], ["SELECT", "3"], ["SET", "a", "3"], ["SET", "b", "3", "EX", "100"], ["SWAPDB", "0", "3"], ["GET", "a"], ["TTL", "a"], ["SELECT", "0"], ["GET", "a"], ["GET", "b"], ["TTL", "b"], ["DBSIZE"], ["SWAPDB", "0", "0"], ["GET", "a"]])],
        id="swapdb",
    ),
    pytest.param(
        [(0, [["SWAPDB", "0"], ["SWAPDB", "x", "1"], ["SWAPDB", "1", "x"], ["SWAPDB", "0", "16"], ["SWAPDB", "-1", "0"]])],
        id="swapdb-errors",
    ),
    pytest.param(
        [(0, [["SET", "m", "v", "PX", "100000"], ["MOVE", "m", "1"], ["EXISTS", "m"], ["MOVE", "m", "1"], ["SELECT", "1"], ["GET", "m"], ["SET", "n", "x"], ["MOVE", "m", "1"], ["MOVE", "m", "16"], ["MOVE", "m", "x"], ["SET", "n2", "y"], ["SELECT", "0"], ["SET", "n2", "z"], ["SELECT", "1"], ["MOVE", "n2", "0"], ["GET", "n2"]])],
        id="move",
    ),
    pytest.param(
        [(0, [["SET", "c", "v"], ["COPY", "c", "c", "DB", "1"], ["SELECT", "1"], ["GET", "c"], ["SELECT", "0"], ["COPY", "c", "c", "DB", "1"], ["COPY", "c", "c", "DB", "1", "REPLACE"], ["COPY", "c", "c"], ["COPY", "c", "d", "DB", "16"]])],
        id="copy-between-databases",
    ),
    pytest.param(
        [(0, [["SET", "a", "0"], ["SELECT", "4"], ["SET", "x", "1"], ["KEYS", "*"], ["RANDOMKEY"], ["SCAN", "0"], ["SELECT", "5"], ["KEYS", "*"], ["RANDOMKEY"], ["SCAN", "0"]])],
        id="keys-per-database",
    ),
    pytest.param(
        [(0, [["SET", "a", "0"], ["SELECT", "7"], ["MSET", "x", "1", "y", "2"], ["INFO", "keyspace"]])],
        id="info-keyspace",
    ),
    pytest.param(
        [(0, [["SET", "w", "1"], ["WATCH", "w"]]), (1, [["SELECT", "1"], ["SET", "w", "other-db"]]), (0, [["MULTI"], ["GET", "w"], ["EXEC"]])],
        id="watch-another-database-is-no-conflict",
    ),
    pytest.param(
        [(0, [["SELECT", "2"], ["SET", "w", "1"], ["WATCH", "w"]]), (1, [["SELECT", "2"], ["SET", "w", "2"]]), (0, [["MULTI"], ["GET", "w"], ["EXEC"]])],
        id="watch-in-a-numbered-database",
    ),
    pytest.param(
        [(0, [["SET", "w", "1"], ["WATCH", "w"]]), (1, [["SWAPDB", "0", "1"]]), (0, [["MULTI"], ["GET", "w"], ["EXEC"]])],
        id="swapdb-touches-watched-keys",
    ),
    pytest.param(
        [(0, [["MULTI"], ["SELECT", "1"], ["SET", "t", "1"], ["EXEC"], ["GET", "t"], ["SELECT", "0"], ["GET", "t"]])],
        id="select-inside-a-transaction",
    ),
]


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("steps", SCENARIOS)
def test_databases_match_redis_on_the_wire(ports: dict[str, int], protocol: int, steps: list[Any]) -> None:
    assert play(ports["agent"], protocol, steps) == play(ports["redis"], protocol, steps)


def test_redis_py_and_redis_cli_with_a_database_number(ports: dict[str, int]) -> None:
    port = ports["agent"]
    zero = redis.Redis(host="127.0.0.1", port=port, db=0, socket_timeout=10)
    three = redis.Redis(host="127.0.0.1", port=port, db=3, socket_timeout=10)
    try:
        zero.flushall()
        three.set("app:key", "in db 3")
        assert zero.get("app:key") is None
        assert three.get("app:key") == b"in db 3"
        assert list(three.scan_iter(match="app:*")) == [b"app:key"]
        out = subprocess.run(["redis-cli", "-p", str(port), "-n", "3", "get", "app:key"], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "in db 3"
        out = subprocess.run(["redis-cli", "-p", str(port), "select", "3"], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "OK"
    finally:
        zero.close()
        three.close()
