# SPDX-License-Identifier: Apache-2.0
"""The compiled RESP parser (cache_core/native/parser.c) against its oracle.

protocol.PyRequestParser is the parser in Python that served before the compiled one;
both are fed the same bytes, split at the same random points, under the same random
limits, and must return the same commands, the same protocol error (class and text), and
account the same held memory after every read. The inputs mix well-formed commands with
every kind of malformed header and body a fuzzer or a confused client produces.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache_core import _native
from cache_core.resp.protocol import ProtocolError, PyRequestParser, RequestParser


def multibulk(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


ARG = st.binary(max_size=40) | st.sampled_from([b"GET", b"SET", b"\r\n", b"a\r\nb", b"$3\r\n", b"*1\r\n"])
WELL_FORMED = st.lists(ARG, min_size=1, max_size=6).map(multibulk)
INLINE = st.sampled_from(
    [b"PING\r\n", b"GET k\n", b"SET 'a b' \"c\\x41\"\r\n", b"  \r\n", b"\r\n", b"ECHO \"unbalanced\r\n", b"A 'x'y\r\n", b"X\x00Y\r\n"]
)
BAD_HEADERS = st.sampled_from(
    [
        b"*-1\r\n", b"*0\r\n", b"*-0\r\n", b"*01\r\n", b"*+1\r\n", b"* 1\r\n", b"*\r\n", b"*-\r\n",
        b"*99999999999999999999\r\n", b"*-99999999999999999999\r\n", b"*999999999999999999999\r\n",
        b"*1\r\n$-1\r\n", b"*1\r\n$01\r\nx\r\n", b"*1\r\n$+1\r\nx\r\n", b"*1\r\n$\r\n", b"*1\r\n$1 \r\nx\r\n",
        b"*1\r\n$9999999999999999999\r\n", b"*1\r\n$99999999999999999999\r\n", b"*1\r\n:1\r\n",
        b"*1\r\n$3\r\nabcXY", b"*1\r\n\x01", b"*2\r\n$1\r\na\r\n+b\r\n", b"*" + b"1" * 40, b"*1\r\n$" + b"2" * 40,
        b"*1\r\n$3\r", b"*3", b"$3\r\nabc\r\n",
    ]
)
PIECE = WELL_FORMED | INLINE | BAD_HEADERS | st.binary(max_size=12)
LIMITS = st.fixed_dictionaries(
    {
        "max_bulk_bytes": st.sampled_from([0, 1, 3, 8, 64, 1 << 20]),
        "max_multibulk_length": st.sampled_from([0, 1, 2, 5, 1024]),
        "max_inline_bytes": st.sampled_from([0, 4, 16, 1024]),
    }
)


def outcome(parser: object, one: bool) -> tuple[object, ...]:
    commands = parser.commands(one=one)  # type: ignore[attr-defined]
    error = parser.error  # type: ignore[attr-defined]
    shown = None if error is None else (type(error), str(error))
    return commands, shown, parser.held, parser.buffered  # type: ignore[attr-defined]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(PIECE, min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    limits=LIMITS,
    restricted=st.none() | st.tuples(st.sampled_from([0, 2, 16]), st.sampled_from([0, 1, 3])),
    one=st.booleans(),
)
def test_native_parser_agrees_with_the_oracle(pieces, cuts, limits, restricted, one) -> None:
    data = b"".join(pieces)
    bounds = sorted({min(c, len(data)) for c in cuts} | {len(data)})
    native, oracle = RequestParser(**limits), PyRequestParser(**limits)
    native.restrict(restricted)
    oracle.restrict(restricted)
    start = 0
    for stop in bounds:
        native.feed(data[start:stop])
        oracle.feed(data[start:stop])
        start = stop
        # Like the server before AUTH: parse one command at a time until none is left.
        while True:
            got, want = outcome(native, one), outcome(oracle, one)
            assert got == want
            if not got[0] or not one:
                break


@settings(max_examples=200, deadline=None)
@given(commands=st.lists(st.lists(st.binary(max_size=3000), min_size=1, max_size=4), min_size=1, max_size=5), step=st.integers(1, 700))
def test_long_bulks_arriving_in_pieces_are_assembled_once(commands, step) -> None:
    data = b"".join(multibulk(c) for c in commands)
    native = RequestParser(max_bulk_bytes=1 << 20, max_multibulk_length=16, max_inline_bytes=1024)
    got: list[list[bytes]] = []
    for i in range(0, len(data), step):
        native.feed(memoryview(data)[i : i + step])
        got.extend(native.commands())
        assert native.held <= len(data) + 41 * 4  # bytes plus the per-argument overhead
    assert got == commands
    assert native.held == 0 and native.buffered == 0 and native.error is None


def test_assembling_is_true_only_while_a_declared_bulk_is_incomplete() -> None:
    p = RequestParser(max_bulk_bytes=1 << 20, max_multibulk_length=16, max_inline_bytes=1024)
    p.feed(b"*2\r\n$3\r\nSET\r\n$100\r\n" + b"x" * 10)
    assert p.commands() == [] and p.assembling
    assert p.held == len(b"$100\r\n") + 10 + 3 + 41
    p.feed(b"x" * 90 + b"\r\n")
    assert not p.assembling
    assert p.commands() == [[b"SET", b"x" * 100]]
    assert p.held == 0


def test_errors_and_limits_are_validated() -> None:
    with pytest.raises(TypeError):
        RequestParser(1, 2, 3)  # keyword-only, as the Python parser
    with pytest.raises(ValueError):
        RequestParser(max_bulk_bytes=-1, max_multibulk_length=1, max_inline_bytes=1)
    p = RequestParser(max_bulk_bytes=8, max_multibulk_length=4, max_inline_bytes=8)
    with pytest.raises(ValueError):
        p.restrict((-1, 2))
    with pytest.raises(TypeError):
        p.feed("text is not bytes")
    p.feed(b"*1\r\n$9\r\n")
    assert p.commands() == []
    assert isinstance(p.error, ProtocolError) and str(p.error) == "Protocol error: invalid bulk length"
    p.feed(b"*1\r\n$1\r\nx\r\n")
    assert p.commands() == [], "after a protocol error nothing more is parsed"


def test_setup_refuses_what_is_not_an_exception_or_callable() -> None:
    with pytest.raises(TypeError):
        _native.parser_setup(object, print)
    with pytest.raises(TypeError):
        _native.parser_setup(ProtocolError, 3)


def test_parsing_leaks_neither_buffers_nor_objects() -> None:
    """The buffer (PyMem) and every argument object are traced by tracemalloc: after a
    warm-up, a hundred rounds of valid, truncated and invalid input leave nothing behind."""
    inputs = [multibulk([b"SET", b"k" * 50, b"v" * 5000]) * 3, b"*3\r\n$3\r\nSET\r\n$2\r\nab", b"*1\r\n$x\r\n", b"PING 'a\r\n", b"GET a b\r\n"]

    def rounds(n: int) -> None:
        for _ in range(n):
            for data in inputs:
                p = RequestParser(max_bulk_bytes=1 << 20, max_multibulk_length=16, max_inline_bytes=1024)
                for i in range(0, len(data), 777):
                    p.feed(data[i : i + 777])
                    p.commands()
                del p

    tracemalloc.start()
    try:
        rounds(20)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        rounds(100)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 4096, f"{after - before} bytes still allocated after 100 rounds"
