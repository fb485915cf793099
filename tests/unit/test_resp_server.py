# SPDX-License-Identifier: Apache-2.0
"""cache_core.resp.server in-process: a failing origin or a bad key in a pipelined batch
costs only its own command; the connection and the batch's other commands go on; a slow
origin holds only the connections that wait for it."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Sequence

import numpy

from cache_core.cache import Cache
from cache_core.resp.server import RespServer


class BrokenOrigin:
    name = "broken"

    def load_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        raise OSError("origin unreachable")


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    return sock


async def _exchange(server: RespServer, payload: bytes, replies: int) -> bytes:
    assert server.address is not None
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(payload)
    await writer.drain()
    data = b""
    while data.count(b"\r\n") < replies:
        chunk = await asyncio.wait_for(reader.read(65536), timeout=10)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    writer.close()
    await writer.wait_closed()
    return data


def test_a_failing_origin_answers_an_error_and_the_connection_goes_on() -> None:
    async def scenario() -> bytes:
        cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20, origin=BrokenOrigin(), read_through=True)
        cache.mset([(b"present", b"here")])
        server = RespServer(cache)
        await server.start(_listener())
        try:
            # A pipelined run of GETs is one batch; the miss makes the origin raise.
            return await _exchange(server, b"GET present\r\nGET absent\r\nPING\r\n", 3)
        finally:
            await server.stop()

    data = asyncio.run(scenario())
    assert data.startswith(b"$4\r\nhere\r\n-ERR origin read failed (OSError)")
    assert data.endswith(b"+PONG\r\n")


class GatedOrigin:
    """An origin whose loads wait until the test opens the gate."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()

    def load_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        self.entered.set()
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        return [b"from-origin:" + k for k in keys]


def test_a_slow_origin_holds_only_the_connection_waiting_for_it() -> None:
    async def scenario() -> tuple[bytes, bytes, bytes]:
        origin = GatedOrigin()
        cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20, origin=origin, read_through=True)
        cache.mset([(b"hot", b"cached")])
        server = RespServer(cache)
        await server.start(_listener())
        try:
            assert server.address is not None
            slow_reader, slow_writer = await asyncio.open_connection(*server.address)
            # A reply before the miss, the miss (in a GET run), commands pipelined behind it.
            slow_writer.write(b"PING\r\nGET hot\r\nGET cold\r\nMGET hot cold2\r\nPING\r\n")
            await slow_writer.drain()
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, origin.entered.wait, 10)
            # While the origin holds that read, another client is served at once.
            other = await _exchange(server, b"GET hot\r\nPING\r\n", 2)
            first = await asyncio.wait_for(slow_reader.read(65536), timeout=10)
            origin.gate.set()
            rest = b""
            while rest.count(b"\r\n") < 9:
                chunk = await asyncio.wait_for(slow_reader.read(65536), timeout=10)
                assert chunk, f"connection closed after {first + rest!r}"
                rest += chunk
            slow_writer.close()
            await slow_writer.wait_closed()
            return other, first, rest
        finally:
            await server.stop()

    other, first, rest = asyncio.run(scenario())
    assert other == b"$6\r\ncached\r\n+PONG\r\n"
    # Before the origin answered the slow client had exactly the replies ahead of the miss's run.
    assert first == b"+PONG\r\n"
    assert rest == (
        b"$6\r\ncached\r\n$16\r\nfrom-origin:cold\r\n"
        b"*2\r\n$6\r\ncached\r\n$17\r\nfrom-origin:cold2\r\n"
        b"+PONG\r\n"
    )


def test_a_too_long_key_in_a_batch_fails_only_its_own_command() -> None:
    async def scenario() -> bytes:
        cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20, max_key_bytes=8)
        server = RespServer(cache)
        await server.start(_listener())
        try:
            long_key = b"k" * 9
            payload = b"SET a 1\r\nSET " + long_key + b" 2\r\nSET b 3\r\nMGET a b\r\n"
            return await _exchange(server, payload, 6)
        finally:
            await server.stop()

    data = asyncio.run(scenario())
    first, second, third, rest = data.split(b"\r\n", 3)
    assert (first, third) == (b"+OK", b"+OK")
    assert second.startswith(b"-ERR key is 9 bytes")
    assert rest == b"*2\r\n$1\r\n1\r\n$1\r\n3\r\n"


def test_lone_requests_are_counted_and_named_whichever_path_serves_them() -> None:
    """A lone GET or SET is served by one compiled call, or, where that leaves it to Python
    (a prefetch observer to tell, a policy other than CLOCK), one layer down: either way
    its reply is right, CLIENT LIST names it as the client's last command and
    INFO commandstats counts it."""

    async def bulk(reader: asyncio.StreamReader) -> bytes:
        header = await asyncio.wait_for(reader.readline(), timeout=10)
        assert header.startswith(b"$"), header
        return (await asyncio.wait_for(reader.readexactly(int(header[1:]) + 2), timeout=10))[:-2]

    async def scenario(eviction: str, observe: bool) -> None:
        cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 16, eviction=eviction)
        cache.mset([(b"k", b"v")])
        if observe:
            cache.prefetch_observer = lambda keys, hits: None
        server = RespServer(cache)
        await server.start(_listener())
        assert server.address is not None
        try:
            reader, writer = await asyncio.open_connection(*server.address)
            other_reader, other_writer = await asyncio.open_connection(*server.address)
            writer.write(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            assert await bulk(reader) == b"v"
            other_writer.write(b"*2\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n")
            assert b"cmd=get" in await bulk(other_reader)
            writer.write(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nw\r\n")
            assert await asyncio.wait_for(reader.readline(), timeout=10) == b"+OK\r\n"
            other_writer.write(b"*2\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n")
            assert b"cmd=set" in await bulk(other_reader)
            other_writer.write(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
            stats = await bulk(other_reader)
            assert b"cmdstat_get:calls=1," in stats and b"cmdstat_set:calls=1," in stats
            assert cache.mget([b"k"]) == [b"w"] and cache.stats.hits >= 2
            for w in (writer, other_writer):
                w.close()
                await w.wait_closed()
        finally:
            await server.stop()

    for eviction, observe in (("clock", False), ("clock", True), ("lru", False)):
        asyncio.run(scenario(eviction, observe))
