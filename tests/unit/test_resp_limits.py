# SPDX-License-Identifier: Apache-2.0
"""The RESP server's limits in-process (cache_core.resp.server): output limits enforced while
replies are produced, the query-buffer limit, small frames before AUTH, the cap on all
clients' memory, large commands in slices, AUTH failures rate-limited, descriptors kept.

The same limits against a running agent, with its RSS measured: tests/chaos/test_resp_chaos.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import numpy
import pytest

from cache_core.cache import Cache
from cache_core.resp.server import RespLimits, RespServer
from tests.polling import wait_for_async
from tests.resp_helpers import encode_command
from tests.unit.test_resp_server import _listener

PASSWORD = "limits-test-password"
# How long a test waits for something the server should do (never asserted on).
PATIENCE = 20.0


def run(scenario: Callable[[RespServer], Awaitable[Any]], *, limits: RespLimits | None = None, password: str | None = None, max_keys: int = 4096, memory: int = 64 << 20) -> Any:
    async def main() -> Any:
        cache = Cache(numpy, max_keys=max_keys, max_memory_bytes=memory)
        server = RespServer(cache, limits=limits or RespLimits(), password=password)
        await server.start(_listener())
        try:
            return await scenario(server)
        finally:
            await server.stop()

    return asyncio.run(main())


async def connect(server: RespServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert server.address is not None
    return await asyncio.open_connection(*server.address)


async def read_replies(reader: asyncio.StreamReader, count: int) -> list[Any]:
    """``count`` whole RESP2 replies (arrays flattened into lists)."""
    return [await _reply(reader) for _ in range(count)]


async def _reply(reader: asyncio.StreamReader) -> Any:
    line = (await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout=30))[:-2]
    kind, rest = line[:1], line[1:]
    if kind in (b"+", b"-"):
        return line.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        return (await asyncio.wait_for(reader.readexactly(n + 2), timeout=30))[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [await _reply(reader) for _ in range(n)]
    raise AssertionError(f"not a reply: {line!r}")


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes; what it sent (a reset counts as closed)."""
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(1 << 20), timeout=30):
            data += chunk
    except ConnectionResetError:
        pass
    return data


async def non_reading_socket(server: RespServer) -> socket.socket:
    """A connected socket with a tiny receive buffer, for a client that reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    assert server.address is not None
    await asyncio.get_running_loop().sock_connect(sock, server.address)
    return sock


# ------------------------------------------------------------------ output limits
def test_a_pipeline_of_large_replies_stops_at_the_output_limits() -> None:
    """SET big <1 MiB>, then 500 pipelined GET big from a client that does not read: its
    pipeline pauses at the soft limit, the client is closed when the soft limit's time is
    up, and no more than the hard limit was ever queued for it."""
    limits = RespLimits(output_buffer_bytes=4 << 20, output_buffer_soft_bytes=1 << 20, output_buffer_soft_seconds=0.3)

    async def scenario(server: RespServer) -> None:
        cache = server.cache
        cache.mset([(b"big", b"x" * (1 << 20))])
        sock = await non_reading_socket(server)
        loop = asyncio.get_running_loop()
        peak = [0]

        def watch() -> bool:
            for conn in server.clients.values():
                peak[0] = max(peak[0], conn.output_bytes())
            return server.stats.limit_disconnections.get("output_buffer", 0) == 1

        await loop.sock_sendall(sock, encode_command("GET", "big") * 500)
        await wait_for_async(watch, timeout=PATIENCE, what="the non-reading client to be closed")
        sock.close()
        assert peak[0] <= limits.output_buffer_bytes
        # Every other client goes on.
        reader, writer = await connect(server)
        writer.write(encode_command("PING"))
        assert await read_replies(reader, 1) == ["+PONG"]
        writer.close()

    run(scenario, limits=limits)


def test_a_reply_past_the_hard_limit_closes_the_client_at_once() -> None:
    limits = RespLimits(output_buffer_bytes=512 << 10, output_buffer_soft_seconds=3600)

    async def scenario(server: RespServer) -> None:
        server.cache.mset([(b"huge", b"h" * (1 << 20))])
        sock = await non_reading_socket(server)
        loop = asyncio.get_running_loop()
        await wait_for_async(lambda: server.clients, timeout=PATIENCE, what="the connection to be accepted")
        # The kernel would otherwise take the whole reply in: the agent's side holds it.
        for conn in server.clients.values():
            assert conn.transport is not None
            conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await loop.sock_sendall(sock, encode_command("GET", "huge"))
        await wait_for_async(lambda: server.stats.limit_disconnections.get("output_buffer", 0) == 1, timeout=PATIENCE, what="the hard limit to close the client")
        sock.close()

    run(scenario, limits=limits)


def test_a_client_over_the_soft_limit_for_its_time_is_closed() -> None:
    limits = RespLimits(output_buffer_bytes=64 << 20, output_buffer_soft_bytes=1 << 20, output_buffer_soft_seconds=0.2)

    async def scenario(server: RespServer) -> None:
        server.cache.mset([(b"v", b"y" * (256 << 10))])
        sock = await non_reading_socket(server)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, encode_command("GET", "v") * 40)  # 10 MiB: over soft, under hard
        await wait_for_async(lambda: server.stats.limit_disconnections.get("output_buffer", 0) == 1, timeout=PATIENCE, what="the soft limit to close the client")
        sock.close()

    run(scenario, limits=limits)


def test_a_reading_client_gets_every_reply_of_a_long_pipeline() -> None:
    """The limits stop clients that do not read, not large pipelines that are read."""
    limits = RespLimits(output_buffer_bytes=1 << 20, output_buffer_soft_bytes=1 << 20)

    async def scenario(server: RespServer) -> None:
        value = b"z" * 50_000
        server.cache.mset([(b"k", value)])
        reader, writer = await connect(server)
        writer.write(encode_command("GET", "k") * 200)  # 10 MB of replies, 10x the limit
        replies = await read_replies(reader, 200)
        assert replies == [value] * 200
        writer.close()
        assert not server.stats.limit_disconnections

    run(scenario, limits=limits)


def test_reads_copy_out_a_bounded_batch_whatever_the_value_sizes() -> None:
    """Small and 1 MiB values mixed in one GET pipeline and one MGET: every reply is right,
    and no batch copies out more than the read budget (one value past it at most)."""
    from cache_core.resp import server as server_module

    async def scenario(server: RespServer) -> None:
        cache = server.cache
        big = b"B" * (1 << 20)
        cache.mset([(b"big", big)] + [(b"s:%d" % i, b"%d" % i) for i in range(50)])
        copied: list[int] = []
        lookup = cache.lookup

        def counting(keys: Any, max_bytes: int = 0) -> Any:
            values, hits = lookup(keys, max_bytes)
            copied.append(sum(len(v) for v in values if v is not None))
            return values, hits

        cache.lookup = counting  # type: ignore[method-assign]
        order = [b"s:%d" % i if i % 10 else b"big" for i in range(50)]
        expected = [big if k == b"big" else k[2:] for k in order]
        reader, writer = await connect(server)
        writer.write(b"".join(encode_command("GET", k) for k in order) + encode_command("MGET", *order))
        assert await read_replies(reader, 50) == expected
        assert await read_replies(reader, 1) == [expected]
        writer.close()
        assert max(copied) <= server_module.READ_BATCH_BYTES + len(big)

    run(scenario)


def test_a_cut_lookup_counts_only_the_keys_it_read() -> None:
    cache = Cache(numpy, max_keys=64, max_memory_bytes=8 << 20)
    cache.mset([(b"a", b"x" * 1000), (b"b", b"y" * 1000), (b"c", b"z" * 1000)])
    for keys in ([b"a", b"b", b"c"], [b"a", b"b", b"c"] * 10):  # the small and the batched path
        before = cache.snapshot().hits
        values, _hits = cache.lookup(keys, max_bytes=1500)
        assert values == [b"x" * 1000]
        assert cache.snapshot().hits == before + 1
        values, _hits = cache.lookup(keys, max_bytes=2000)
        assert values == [b"x" * 1000, b"y" * 1000]
        assert cache.lookup(keys)[0] == [b"x" * 1000, b"y" * 1000, b"z" * 1000] * (len(keys) // 3)


# ------------------------------------------------------------------ input limits
def test_the_query_buffer_limit_closes_a_client_sending_an_endless_command() -> None:
    limits = RespLimits(query_buffer_bytes=1 << 20)

    async def scenario(server: RespServer) -> None:
        reader, writer = await connect(server)
        writer.write(b"*1048576\r\n")
        chunk = b"$65536\r\n" + b"q" * 65536 + b"\r\n"
        try:
            for _ in range(64):  # 4 MiB of arguments, 4x the limit
                writer.write(chunk)
                await writer.drain()
        except ConnectionResetError:
            pass
        await closed_by_server(reader)
        writer.close()
        assert server.stats.limit_disconnections == {"query_buffer": 1}

    run(scenario, limits=limits)


def test_before_auth_only_small_frames_are_accepted() -> None:
    async def scenario(server: RespServer) -> None:
        reader, writer = await connect(server)
        writer.write(b"*1048576\r\n$2097152\r\n")
        data = await closed_by_server(reader)
        writer.close()
        assert data == b"-ERR Protocol error: unauthenticated multibulk length\r\n"
        reader, writer = await connect(server)
        writer.write(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2097152\r\n")
        data = await closed_by_server(reader)
        writer.close()
        assert data == b"-ERR Protocol error: unauthenticated bulk length\r\n"
        # AUTH pipelined with a large command: the command is read under the full limits.
        value = b"v" * (1 << 20)
        reader, writer = await connect(server)
        writer.write(encode_command("AUTH", PASSWORD) + encode_command("SET", "k", value) + encode_command("STRLEN", "k") + encode_command("GET", "k"))
        assert await read_replies(reader, 3) == ["+OK", "+OK", 1 << 20]
        assert await read_replies(reader, 1) == [value]
        writer.close()

    run(scenario, password=PASSWORD)


def test_the_cap_on_all_clients_memory_closes_the_largest_first() -> None:
    limits = RespLimits(max_client_memory_bytes=1 << 20, query_buffer_bytes=64 << 20)

    async def scenario(server: RespServer) -> None:
        small_reader, small = await connect(server)
        small.write(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$200000\r\n" + b"s" * 100_000)  # 100 kB held
        big_reader, big = await connect(server)
        big.write(b"*2\r\n$4\r\nECHO\r\n$2000000\r\n" + b"b" * 1_200_000)  # 1.2 MB held
        await big.drain()
        await closed_by_server(big_reader)
        big.close()
        assert server.stats.limit_disconnections == {"client_memory": 1}
        small.write(b"s" * 100_000 + b"\r\n")
        assert await read_replies(small_reader, 1) == ["+OK"]
        small.close()

    run(scenario, limits=limits)


# ------------------------------------------------------------------ large commands in slices
def test_large_commands_in_slices_give_the_same_replies() -> None:
    limits = RespLimits(command_slice_keys=7)

    async def scenario(server: RespServer) -> None:
        reader, writer = await connect(server)
        keys = [f"s:{i}".encode() for i in range(100)]
        pairs = [part for i, k in enumerate(keys) for part in (k, b"%d" % i)]
        writer.write(
            encode_command("MSET", *pairs)
            + encode_command("MGET", *keys, "absent")
            + encode_command("EXISTS", *keys, "absent", keys[0])
            + encode_command("DEL", *keys[:50], "absent")
            + encode_command("MSET", "odd", "pairs", "left")
            + encode_command("DBSIZE")
            + encode_command("MGET", *keys[:20], "k" * 600)
            + encode_command("MSET", *pairs[:40], "k" * 600, "v")
            + encode_command("DEL", *keys, "k" * 600)
            + encode_command("DBSIZE")
        )
        replies = await read_replies(reader, 10)
        assert replies[0] == "+OK"
        assert replies[1] == [b"%d" % i for i in range(100)] + [None]
        assert replies[2] == 101
        assert replies[3] == 50
        assert replies[4] == "-ERR wrong number of arguments for 'mset' command"
        assert replies[5] == 50
        assert replies[6] == "-ERR key at index 20 is 600 bytes; keys must be 1..512 bytes (raise cache.max_key_bytes to accept longer keys)"
        # A bad key fails a sliced write whole: nothing of it was applied.
        assert replies[7] == "-ERR key at index 20 is 600 bytes; keys must be 1..512 bytes (raise cache.max_key_bytes to accept longer keys)"
        assert replies[8] == "-ERR key at index 100 is 600 bytes; keys must be 1..512 bytes (raise cache.max_key_bytes to accept longer keys)"
        assert replies[9] == 50
        writer.close()

    run(scenario, limits=limits)


def test_other_clients_are_served_while_a_large_mset_runs() -> None:
    """A 200k-pair MSET runs in slices: a PING sent after it is answered before it ends."""

    async def scenario(server: RespServer) -> None:
        reader, writer = await connect(server)
        pairs = [b"m:%d" % i for i in range(200_000) for _ in range(2)]
        writer.write(encode_command("MSET", *pairs))
        await writer.drain()
        await wait_for_async(lambda: server.tasks, timeout=PATIENCE, what="the MSET to start in slices")
        ping_reader, ping_writer = await connect(server)
        ping_writer.write(encode_command("PING"))
        assert await read_replies(ping_reader, 1) == ["+PONG"]
        assert server.tasks, "the MSET should still be running"
        assert await read_replies(reader, 1) == ["+OK"]
        assert server.cache.dbsize() == 200_000
        writer.close()
        ping_writer.close()

    run(scenario, max_keys=262_144)


def test_a_large_mget_streams_to_a_reading_client_past_the_output_limit() -> None:
    limits = RespLimits(output_buffer_bytes=1 << 20, output_buffer_soft_bytes=1 << 20, command_slice_keys=64)

    async def scenario(server: RespServer) -> None:
        value = b"w" * 100_000
        server.cache.mset([(b"w", value)])
        reader, writer = await connect(server)
        writer.write(encode_command("MGET", *["w"] * 100))  # a 10 MB reply, 10x the limit
        assert await read_replies(reader, 1) == [[value] * 100]
        writer.close()
        assert not server.stats.limit_disconnections

    run(scenario, limits=limits)


# ------------------------------------------------------------------ AUTH
def test_auth_failures_are_rate_limited_per_source_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    limits = RespLimits(auth_failure_burst=3, auth_failures_per_second=0.001, auth_failure_delay_seconds=0.01)

    async def scenario(server: RespServer) -> None:
        reader, writer = await connect(server)
        writer.write(encode_command("AUTH", "wrong") * 3 + encode_command("AUTH", PASSWORD) + encode_command("GET", "k"))
        replies = await read_replies(reader, 5)
        assert replies[:3] == ["-WRONGPASS invalid username-password pair or user is disabled."] * 3
        # The budget is spent: even the right password is refused unchecked.
        assert replies[3] == "-ERR too many failed AUTH attempts from this address; wait and retry"
        assert replies[4] == "-NOAUTH Authentication required."
        writer.close()
        # A new connection from the same source is refused too.
        reader, writer = await connect(server)
        writer.write(encode_command("HELLO", "3", "AUTH", "default", PASSWORD))
        assert await read_replies(reader, 1) == ["-ERR too many failed AUTH attempts from this address; wait and retry"]
        writer.close()
        assert (server.stats.auth_failures, server.stats.auth_throttled) == (3, 2)

    with caplog.at_level(logging.WARNING, logger="cache_core.resp.server"):
        run(scenario, limits=limits, password=PASSWORD)
    lines = [r.getMessage() for r in caplog.records if "AUTH" in r.getMessage()]
    assert lines == ["resp: failed AUTH from 127.0.0.1 (further failures from it are summed up every 10 s)"]
    assert PASSWORD not in caplog.text


def test_an_empty_password_is_refused() -> None:
    with pytest.raises(ValueError, match="empty password"):
        RespServer(Cache(numpy, max_keys=16, max_memory_bytes=1 << 20), password="")


# ------------------------------------------------------------------ descriptors
def test_connections_are_refused_before_descriptors_run_out() -> None:
    """With every descriptor reserved for the agent itself, no client gets one."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = RespLimits(reserved_descriptors=soft)

    async def scenario(server: RespServer) -> None:
        reader, writer = await connect(server)
        assert await closed_by_server(reader) == b"-ERR max number of clients reached\r\n"
        writer.close()
        assert server.stats.rejected_connections == 1

    run(scenario, limits=limits)
