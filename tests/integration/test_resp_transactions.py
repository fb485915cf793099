# SPDX-License-Identifier: Apache-2.0
"""MULTI/EXEC/DISCARD/WATCH/UNWATCH: the same steps on a real redis-server and on the agent,
the wire bytes of every reply compared, in RESP2 and RESP3; then redis-py's transactional
pipeline and its WATCH retry loop, unchanged, against the agent.

A scenario is a list of steps, each (connection, commands): the commands are sent on that
connection in one write (pipelined) and all their replies are read before the next step,
so what another client does between WATCH and EXEC happens at a known point.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.polling import wait_for
from tests.resp_helpers import agent_and_redis, encode_command, start_agent

pytestmark = pytest.mark.integration

Step = tuple[int, list[list[str]]]


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    with agent_and_redis(tmp_path_factory, "transactions") as ports:
        yield ports


class Incomplete(Exception):
    pass


def _reply_end(data: bytes, pos: int) -> int:
    """Where the RESP2/RESP3 reply starting at ``pos`` ends; Incomplete if it has not all arrived."""
    end = data.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    kind, line = data[pos : pos + 1], data[pos + 1 : end]
    if kind in (b"+", b"-", b":", b"_", b",", b"#", b"("):
        return end + 2
    if kind in (b"$", b"=", b"!"):
        n = int(line)
        if n < 0:
            return end + 2
        if len(data) < end + 2 + n + 2:
            raise Incomplete
        return end + 2 + n + 2
    if kind in (b"*", b"~", b">", b"%", b"|"):
        n = int(line)
        pos = end + 2
        for _ in range(max(n, 0) * (2 if kind in (b"%", b"|") else 1)):
            pos = _reply_end(data, pos)
        return pos
    raise AssertionError(f"not a RESP reply at {pos}: {data[pos:pos + 40]!r}")


def read_replies(sock: socket.socket, count: int) -> list[bytes]:
    data = b""
    while True:
        try:
            out, pos = [], 0
            for _ in range(count):
                end = _reply_end(data, pos)
                out.append(data[pos:end])
                pos = end
            assert pos == len(data), f"more than {count} replies: {data[pos:]!r}"
            return out
        except Incomplete:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {data!r}"
            data += chunk


def play(port: int, protocol: int, steps: list[Step]) -> list[list[bytes]]:
    """Run ``steps`` on two fresh connections to ``port``; every step's replies."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    try:
        first = socks[0]
        first.sendall(encode_command("FLUSHALL"))
        read_replies(first, 1)
        if protocol == 3:
            for s in socks:
                s.sendall(encode_command("HELLO", "3"))
                read_replies(s, 1)
        out = []
        for index, commands in steps:
            if commands == [["WAIT-EXPIRED", "t"]]:
                wait_for(lambda: _pttl(socks[1], "t") == b":-2\r\n", timeout=10, what="the key's TTL to run out")
                continue
            socks[index].sendall(b"".join(encode_command(*c) for c in commands))
            out.append(read_replies(socks[index], len(commands)))
        return out
    finally:
        for s in socks:
            s.close()


def _pttl(sock: socket.socket, key: str) -> bytes:
    sock.sendall(encode_command("PTTL", key))
    return read_replies(sock, 1)[0]


SCENARIOS: list[Any] = [
    pytest.param([(0, [["MULTI"], ["SET", "a", "1"], ["INCR", "a"], ["GET", "a"], ["MGET", "a", "b"], ["EXEC"]])], id="queued-replies"),
    pytest.param([(0, [["MULTI"], ["SET", "a", "x"], ["INCR", "a"], ["GET", "a"], ["EXEC"]])], id="error-inside-exec-others-applied"),
    pytest.param([(0, [["MULTI"], ["SET", "a", "1"], ["NOSUCH", "x"], ["EXEC"], ["GET", "a"]])], id="unknown-command-aborts"),
    pytest.param([(0, [["MULTI"], ["SET", "a"], ["SET", "b", "1"], ["EXEC"], ["EXISTS", "a", "b"]])], id="arity-error-aborts"),
    pytest.param([(0, [["EXEC"], ["DISCARD"], ["MULTI"], ["MULTI"], ["WATCH", "a"], ["PING"], ["EXEC"]])], id="misplaced-control"),
    pytest.param([(0, [["MULTI"], ["SET", "a", "1"], ["DISCARD"], ["GET", "a"], ["EXEC"]])], id="discard"),
    pytest.param([(0, [["MULTI"], ["EXEC"]])], id="empty-transaction"),
    pytest.param(
        [(0, [["HSET", "h", "f", "v"], ["MULTI"], ["SET", "a", "1"], ["SET", "b", "2"], ["SET", "a", "3"], ["GET", "a"], ["GET", "b"], ["GET", "none"], ["GET", "h"], ["GET", "a"], ["EXEC"]])],
        id="runs-of-gets-and-sets",
    ),
    pytest.param([(0, [["SET", "w", "1"], ["WATCH", "w"]]), (1, [["SET", "w", "2"]]), (0, [["MULTI"], ["GET", "w"], ["EXEC"]])], id="watch-conflict"),
    pytest.param([(0, [["WATCH", "w"]]), (1, [["SET", "w", "2"]]), (0, [["MULTI"], ["GET", "w"], ["EXEC"]])], id="watched-key-created"),
    pytest.param([(0, [["SET", "w", "1"], ["WATCH", "w"]]), (1, [["DEL", "w"]]), (0, [["MULTI"], ["PING"], ["EXEC"]])], id="watched-key-deleted"),
    pytest.param([(0, [["SET", "w", "1"], ["WATCH", "w"]]), (1, [["EXPIRE", "w", "100"]]), (0, [["MULTI"], ["PING"], ["EXEC"]])], id="watched-key-given-ttl"),
    pytest.param([(0, [["SET", "w", "1"], ["WATCH", "w"]]), (1, [["FLUSHALL"]]), (0, [["MULTI"], ["PING"], ["EXEC"]])], id="watched-key-flushed"),
    pytest.param([(0, [["SET", "w", "1"], ["WATCH", "w"], ["SET", "w", "1"], ["MULTI"], ["PING"], ["EXEC"]])], id="own-write-counts"),
    pytest.param([(0, [["SET", "w", "1"], ["WATCH", "w"]]), (1, [["SET", "other", "2"], ["DEL", "nokey"], ["GET", "w"]]), (0, [["MULTI"], ["GET", "w"], ["EXEC"]])], id="no-conflict"),
    pytest.param([(0, [["SET", "w", "1"], ["WATCH", "w"]]), (1, [["SET", "w", "1", "NX"]]), (0, [["MULTI"], ["GET", "w"], ["EXEC"]])], id="failed-write-is-no-change"),
    pytest.param([(0, [["SET", "w", "1"], ["WATCH", "w"], ["UNWATCH"]]), (1, [["SET", "w", "2"]]), (0, [["MULTI"], ["GET", "w"], ["EXEC"]])], id="unwatch"),
    pytest.param([(0, [["SET", "w", "1"], ["WATCH", "w"], ["MULTI"], ["DISCARD"]]), (1, [["SET", "w", "2"]]), (0, [["MULTI"], ["GET", "w"], ["EXEC"]])], id="discard-unwatches"),
    pytest.param([(0, [["SET", "w", "1"], ["WATCH", "w"]]), (1, [["SET", "w", "2"]]), (0, [["MULTI"], ["GET", "w"], ["EXEC"], ["MULTI"], ["GET", "w"], ["EXEC"]])], id="exec-unwatches"),
    pytest.param([(0, [["SET", "w", "1"], ["WATCH", "w"]]), (1, [["SET", "w", "2"]]), (0, [["MULTI"], ["NOSUCH"], ["EXEC"], ["MULTI"], ["GET", "w"], ["EXEC"]])], id="execabort-unwatches"),
    pytest.param([(0, [["SET", "t", "1", "PX", "30"], ["WATCH", "t"]]), (0, [["WAIT-EXPIRED", "t"]]), (0, [["MULTI"], ["PING"], ["EXEC"]])], id="watched-key-expires"),
    pytest.param([(0, [["WATCH", "a", "b"], ["WATCH", "c"]]), (1, [["SET", "c", "1"]]), (0, [["MULTI"], ["PING"], ["EXEC"]])], id="watch-accumulates"),
]


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("steps", SCENARIOS)
def test_transactions_match_redis_on_the_wire(ports: dict[str, int], protocol: int, steps: list[Step]) -> None:
    theirs = play(ports["redis"], protocol, steps)
    ours = play(ports["agent"], protocol, steps)
    assert ours == theirs


def test_redis_py_transactional_pipeline(ports: dict[str, int]) -> None:
    """redis-py's default pipeline is MULTI ... EXEC; Django's set_many uses it."""
    r = redis.Redis(host="127.0.0.1", port=ports["agent"], socket_timeout=10)
    try:
        r.flushall()
        with r.pipeline() as pipe:
            results = pipe.set("p:a", "1").incr("p:a").get("p:a").mget("p:a", "p:none").execute()
        assert results == [True, 2, b"2", [b"2", None]]
        with r.pipeline() as pipe:
            pipe.set("p:b", "x").incr("p:b").set("p:c", "3")
            with pytest.raises(redis.ResponseError, match="not an integer"):
                pipe.execute()
        assert r.get("p:c") == b"3"  # the other commands of the transaction ran

        def double(pipe: redis.client.Pipeline) -> None:
            value = int(pipe.get("p:a"))
            pipe.multi()
            pipe.set("p:a", value * 2)

        assert r.transaction(double, "p:a") == [True]
        assert r.get("p:a") == b"4"
    finally:
        r.close()


def test_redis_py_watch_retries_after_a_conflict(ports: dict[str, int]) -> None:
    r = redis.Redis(host="127.0.0.1", port=ports["agent"], socket_timeout=10)
    other = redis.Redis(host="127.0.0.1", port=ports["agent"], socket_timeout=10)
    attempts = []
    try:
        r.set("p:n", "10")

        def add_one(pipe: redis.client.Pipeline) -> None:
            value = int(pipe.get("p:n"))
            if not attempts:
                other.set("p:n", "100")  # a concurrent write between WATCH and EXEC
            attempts.append(value)
            pipe.multi()
            pipe.set("p:n", value + 1)

        r.transaction(add_one, "p:n")
        assert attempts == [10, 100]  # the first EXEC failed, the retry saw the new value
        assert r.get("p:n") == b"101"
    finally:
        r.close()
        other.close()


def test_a_transaction_reads_through_from_the_origin(tmp_path: Any) -> None:
    """GET inside MULTI/EXEC reads a miss through from the origin, as outside a transaction
    (the misses are loaded off the loop before the transaction runs); a key the origin does
    not have is nil, and WATCH does not count a read-through load as a change."""
    root = tmp_path / "origin"
    root.mkdir()
    (root / "doc1").write_bytes(b"from the origin")
    (tmp_path / "agent").mkdir()
    agent, port = start_agent(tmp_path / "agent", cache={"read_through": True, "origin": "files"}, extra={"plugins": {"files": {"root": str(root)}}})
    try:
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
        try:
            with r.pipeline() as pipe:
                assert pipe.get("doc1").get("doc2").execute() == [b"from the origin", None]
            r.delete("doc1")
            with r.pipeline() as pipe:
                pipe.watch("doc1")
                pipe.multi()
                pipe.get("doc1")
                assert pipe.execute() == [b"from the origin"]
        finally:
            r.close()
    finally:
        agent.stop()
