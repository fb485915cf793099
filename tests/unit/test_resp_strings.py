# SPDX-License-Identifier: Apache-2.0
"""cache_core/resp/strings.py without a redis-server: INCRBYFLOAT's reading and writing of
long doubles as Redis's string2ld and ld2string do them, the read-modify-write commands'
atomicity against another thread writing into the cache, and Cache.touch.

(tests/integration/test_resp_differential.py compares every command with redis-server.)"""

from __future__ import annotations

import asyncio
import socket
import threading

import numpy
import pytest

from cache_core.cache import Cache
from cache_core.resp.server import RespServer
from cache_core.resp.strings import format_long_double, parse_long_double

# Increments made by the client and by the competing thread each.
RACE_ROUNDS = 300


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"10.5", b"10.5"),
        (b"3.0e3", b"3000"),
        (b"-0", b"0"),
        (b"-1e-20", b"0"),
        (b"1e-17", b"0.00000000000000001"),
        (b"0x10", b"16"),
        (b"0x1.8p1", b"3"),
        (b".5", b"0.5"),
        (b"5.", b"5"),
        (b"+3", b"3"),
        (b"1.23456789012345678901234", b"1.23456789012345679"),
        # Exactly halfway at the 17th decimal: glibc rounds to even, and so must the agent.
        (b"0.000003814697265625", b"0.00000381469726562"),
        (b"0.000011444091796875", b"0.00001144409179688"),
        (b"123456789012345678901234567890", b"123456789012345678899921813504"),
    ],
)
def test_floats_read_and_written_as_redis_does(text: bytes, expected: bytes) -> None:
    value = parse_long_double(text)
    assert value is not None
    assert format_long_double(value) == expected


def test_a_long_double_past_python_s_digit_limit_is_written_in_full() -> None:
    value = parse_long_double(b"1e4500")
    assert value is not None
    written = format_long_double(value)
    assert len(written) == 4500 and written.startswith(b"99999999999999999999")  # 1e4500 rounded to 64 bits
    assert parse_long_double(written) == value


@pytest.mark.parametrize(
    "text",
    [b"", b" 1", b"1 ", b"abc", b"1_0", b"1e", b"0x", b"nan", b"NaN", b"1e5000", b"-1e5000", b"1e-5000", b"0x1p-20000", b"1\x00", b"1" * 5120, b"\xff"],
)
def test_what_redis_calls_not_a_valid_float(text: bytes) -> None:
    assert parse_long_double(text) is None


@pytest.mark.parametrize("text", [b"inf", b"-Infinity", b"0e-5000", b"0x0p0", b"1e-320", b"0" * 5118 + b"1"])
def test_what_redis_reads_although_it_looks_odd(text: bytes) -> None:
    assert parse_long_double(text) is not None


def test_touch_counts_repeats_and_marks_an_access() -> None:
    cache = Cache(numpy, max_keys=8, max_memory_bytes=1 << 20)
    cache.mset([(b"a", b"1"), (b"b", b"2")])
    before = cache.snapshot()
    assert cache.touch([b"a", b"a", b"b", b"missing"]) == 3
    assert cache.touch([]) == 0
    after = cache.snapshot()
    assert (after.hits, after.misses) == (before.hits, before.misses)  # not a read


def test_read_modify_write_commands_lose_no_update_to_another_writer() -> None:
    """INCRBYFLOAT and APPEND from a client while a thread writes the same keys through the
    cache (as the prefetcher and read-through fills do): every update lands."""

    def hammer(cache: Cache) -> None:
        for _ in range(RACE_ROUNDS):
            cache.incrby(b"n", 1)
            with cache.atomic():
                old = cache.peek(b"s") or b""
                cache.mset([(b"s", old + b"t")], keep_ttl=True)

    async def scenario() -> tuple[bytes, bytes]:
        cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
        server = RespServer(cache)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        await server.start(sock)
        assert server.address is not None
        try:
            reader, writer = await asyncio.open_connection(*server.address)
            thread = threading.Thread(target=hammer, args=(cache,))
            thread.start()
            for _ in range(RACE_ROUNDS):
                writer.write(b"INCRBYFLOAT n 1\r\nAPPEND s c\r\n")
                await writer.drain()
                await asyncio.wait_for(reader.readline(), timeout=10)  # $<len> of the float
                await asyncio.wait_for(reader.readline(), timeout=10)  # the float
                await asyncio.wait_for(reader.readline(), timeout=10)  # :<length>
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
            writer.close()
            await writer.wait_closed()
            return cache.peek(b"n") or b"", cache.peek(b"s") or b""
        finally:
            await server.stop()

    number, text = asyncio.run(scenario())
    assert number == str(2 * RACE_ROUNDS).encode()
    assert len(text) == 2 * RACE_ROUNDS and text.count(b"c") == RACE_ROUNDS
