# SPDX-License-Identifier: Apache-2.0
"""MULTI/EXEC in-process: what a real redis-server cannot show side by side (eviction of a
watched key, the origin read before EXEC off the loop, an EXEC reply over the client's
output limit, a reload's new cache). tests/integration/test_resp_transactions.py compares
the rest with redis-server on the wire."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy

from cache_core.cache import Cache
from cache_core.resp.server import RespLimits, RespServer
from tests.resp_helpers import encode_command as command
from tests.unit.test_resp_limits import closed_by_server, connect, read_replies, run


def test_an_evicted_watched_key_fails_exec() -> None:
    async def scenario(server: RespServer) -> None:
        reader, writer = await connect(server)
        writer.write(command("SET", "w", "1") + command("WATCH", "w"))
        assert await read_replies(reader, 2) == ["+OK", "+OK"]
        # Another client fills the cache past max_keys: the watched key is evicted.
        other_reader, other = await connect(server)
        other.write(b"".join(command("SET", f"fill:{i}", "x") for i in range(8)))
        assert await read_replies(other_reader, 8) == ["+OK"] * 8
        assert server.cache.snapshot().evictions > 0 and server.cache.peek(b"w") is None
        writer.write(command("MULTI") + command("SET", "done", "1") + command("EXEC"))
        assert await read_replies(reader, 3) == ["+OK", "+QUEUED", None]
        assert server.cache.peek(b"done") is None
        writer.close()
        other.close()

    run(scenario, max_keys=4)


class ThreadNotingOrigin:
    name = "noting"

    def __init__(self) -> None:
        self.threads: list[str] = []

    def load_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        self.threads.append(threading.current_thread().name)
        return [b"origin:" + k if k.startswith(b"o") else None for k in keys]


def test_exec_reads_misses_through_off_the_loop_first() -> None:
    origin = ThreadNotingOrigin()

    async def main() -> None:
        cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20, origin=origin, read_through=True)
        cache.mset([(b"cached", b"here")])
        server = RespServer(cache)
        from tests.unit.test_resp_server import _listener

        await server.start(_listener())
        try:
            reader, writer = await connect(server)
            writer.write(command("MULTI") + command("GET", "o1") + command("MGET", "cached", "o2", "x") + command("GET", "x") + command("EXEC"))
            replies = await read_replies(reader, 5)
            assert replies[4] == [b"origin:o1", [b"here", b"origin:o2", None], None]
            writer.close()
        finally:
            await server.stop()

    asyncio.run(main())
    assert origin.threads and all(name.startswith("resp-origin") for name in origin.threads)


def test_an_exec_reply_over_the_output_limit_closes_the_client_after_applying_everything() -> None:
    limits = RespLimits(output_buffer_bytes=1 << 20)

    async def scenario(server: RespServer) -> None:
        server.cache.mset([(b"big", b"b" * (512 << 10))])
        reader, writer = await connect(server)
        writer.write(command("MULTI") + command("GET", "big") * 4 + command("SET", "last", "1") + command("EXEC"))
        await closed_by_server(reader)
        writer.close()
        assert server.stats.limit_disconnections == {"output_buffer": 1}
        assert server.cache.peek(b"last") == b"1"  # the transaction was applied whole

    run(scenario, limits=limits)


def test_a_new_cache_counts_as_a_change_of_every_watched_key() -> None:
    async def scenario(server: RespServer) -> None:
        reader, writer = await connect(server)
        writer.write(command("WATCH", "w"))
        assert await read_replies(reader, 1) == ["+OK"]
        old = server.cache
        server.replace_cache(Cache(numpy, max_keys=64, max_memory_bytes=1 << 20))
        assert old.modified is None and server.cache.modified is not None
        writer.write(command("MULTI") + command("PING") + command("EXEC"))
        assert await read_replies(reader, 3) == ["+OK", "+QUEUED", None]
        assert server.cache.modified is None  # nothing watched any more
        writer.close()

    run(scenario)
