# SPDX-License-Identifier: Apache-2.0
"""cache_core.resp.protocol: the incremental bounded request parser and the RESP2/RESP3 encoder.

Hermetic: no sockets. The expected inline splits are what redis-server 7.0's
``sdssplitargs`` produces (checked by hand against the Debian redis-server).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_core.resp.protocol import Encoder, ProtocolError, RequestParser, split_inline

LIMITS = {"max_bulk_bytes": 1024, "max_multibulk_length": 16, "max_inline_bytes": 1024}


def parser(**limits: int) -> RequestParser:
    return RequestParser(**{**LIMITS, **limits})


def multibulk(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def parse_all(data: bytes, **limits: int) -> tuple[list[list[bytes]], ProtocolError | None]:
    p = parser(**limits)
    p.feed(data)
    return p.commands(), p.error


def parse_bytewise(data: bytes, **limits: int) -> tuple[list[list[bytes]], ProtocolError | None]:
    p = parser(**limits)
    out: list[list[bytes]] = []
    for i in range(len(data)):
        p.feed(data[i : i + 1])
        out.extend(p.commands())
    return out, p.error


# ------------------------------------------------------------------ incremental parsing
ARG = st.binary(max_size=40)
# Inline arguments that need no quoting: no whitespace, no quotes, not empty, and no NUL
# (redis-server ends an inline line at NUL; see test_nul_byte_in_an_inline_line_terminates).
INLINE_ARG = st.binary(min_size=1, max_size=12).filter(
    lambda b: not any(c in b for c in b" \t\r\n\x0b\x0c\"'\x00")
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, list[list[bytes]]]:
    """A byte stream of multibulk, inline, empty-line and ``*0``/``*-1`` frames, and its commands."""
    stream = bytearray()
    expected: list[list[bytes]] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["multibulk", "multibulk", "inline", "empty", "null"]))
        if kind == "multibulk":
            args = draw(st.lists(ARG, min_size=1, max_size=6))
            stream += multibulk(args)
            expected.append(args)
        elif kind == "inline":
            args = draw(st.lists(INLINE_ARG, min_size=1, max_size=5))
            if args[0].startswith(b"*"):
                args[0] = b"x" + args[0]
            stream += b" ".join(args) + draw(st.sampled_from([b"\r\n", b"\n"]))
            expected.append(args)
        elif kind == "empty":
            stream += draw(st.sampled_from([b"\r\n", b"\n", b"   \r\n"]))
        else:
            stream += draw(st.sampled_from([b"*0\r\n", b"*-1\r\n"]))
    return bytes(stream), expected


@settings(max_examples=200, deadline=None)
@given(requests())
def test_byte_by_byte_feeding_gives_the_same_commands_as_one_feed(case: tuple[bytes, list[list[bytes]]]) -> None:
    data, expected = case
    whole, error = parse_all(data)
    assert error is None
    assert whole == expected
    pieces, error = parse_bytewise(data)
    assert error is None
    assert pieces == expected


@settings(max_examples=100, deadline=None)
@given(requests(), st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_arbitrary_read_boundaries_give_the_same_commands(case: tuple[bytes, list[list[bytes]]], sizes: list[int]) -> None:
    data, expected = case
    p = parser()
    out: list[list[bytes]] = []
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        p.feed(data[pos : pos + size])
        out.extend(p.commands())
        pos += size
        i += 1
    assert p.error is None
    assert out == expected
    assert p.buffered == 0


def test_half_received_command_is_kept_until_complete() -> None:
    p = parser()
    frame = multibulk([b"SET", b"key", b"x" * 100])
    p.feed(frame[:30])
    assert p.commands() == []
    assert p.buffered > 0
    p.feed(frame[30:])
    assert p.commands() == [[b"SET", b"key", b"x" * 100]]
    assert p.buffered == 0


def test_many_commands_in_one_feed_come_out_in_order() -> None:
    data = b"".join(multibulk([b"INCR", b"k%d" % i]) for i in range(500))
    commands, error = parse_all(data)
    assert error is None
    assert commands == [[b"INCR", b"k%d" % i] for i in range(500)]


def test_large_stream_compacts_its_buffer() -> None:
    p = parser(max_bulk_bytes=4096)
    frame = multibulk([b"SET", b"k", b"v" * 4000])
    total = 0
    for _ in range(100):  # 400 KB through one parser, a frame and a half at a time
        p.feed(frame + frame[:20])
        total += len(p.commands())
        p.feed(frame[20:])
        total += len(p.commands())
    assert total == 200
    assert p.buffered == 0


@pytest.mark.parametrize("data", [b"*0\r\n", b"*-1\r\n", b"\r\n", b"\n", b"  \t \r\n"])
def test_empty_frames_are_ignored(data: bytes) -> None:
    commands, error = parse_all(data + b"PING\r\n" + data + multibulk([b"PING"]))
    assert error is None
    assert commands == [[b"PING"], [b"PING"]]


# ------------------------------------------------------------------ limits and errors
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*17\r\n", "invalid multibulk length"),  # one more than max_multibulk_length
        (b"*999999999999\r\n", "invalid multibulk length"),
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*\r\n", "invalid multibulk length"),
        (b"*1" + b"1" * 40, "invalid multibulk length"),  # header with no CRLF in sight
        (b"*1\r\n$1025\r\n", "invalid bulk length"),  # one more than max_bulk_bytes
        (b"*1\r\n$999999999999\r\n", "invalid bulk length"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*1\r\n$x\r\n", "invalid bulk length"),
        (b"*1\r\n$1" + b"1" * 40, "invalid bulk length"),
        (b"*1\r\n:1\r\n", "expected '$', got ':'"),
        (b"*1\r\n*1\r\n", "expected '$', got '*'"),
        (b"*1\r\n\x00\r\n", "expected '$', got '\\x00'"),
        (b"*1\r\n$4\r\nPINGxx", "bulk string not terminated by CRLF"),
        (b"x" * 1025, "too big inline request"),  # no newline yet, already over max_inline_bytes
        (b"x" * 1100 + b"\r\n", "too big inline request"),
        (b'SET "a b\r\n', "unbalanced quotes in request"),
        (b"SET 'a\r\n", "unbalanced quotes in request"),
        (b'SET "a"b\r\n', "unbalanced quotes in request"),
    ],
)
def test_protocol_violations_set_error(data: bytes, message: str) -> None:
    for parse in (parse_all, parse_bytewise):
        commands, error = parse(data)
        assert commands == []
        assert isinstance(error, ProtocolError)
        assert str(error) == f"Protocol error: {message}"


def test_limits_are_inclusive() -> None:
    args = [b"x" * 1024] + [b"a"] * 15
    commands, error = parse_all(multibulk(args))
    assert error is None and commands == [args]
    line = b"ECHO " + b"y" * 1019  # exactly max_inline_bytes before the newline
    commands, error = parse_all(line + b"\n")
    assert error is None and commands == [[b"ECHO", b"y" * 1019]]


def test_error_keeps_earlier_commands_and_stops_parsing() -> None:
    p = parser()
    p.feed(multibulk([b"SET", b"a", b"1"]) + b"PING\r\n" + b"*1\r\n:5\r\n" + multibulk([b"GET", b"a"]))
    assert p.commands() == [[b"SET", b"a", b"1"], [b"PING"]]
    assert isinstance(p.error, ProtocolError)
    p.feed(multibulk([b"PING"]))
    assert p.commands() == []  # nothing after a violation is executed


def test_declared_length_is_refused_before_the_body_arrives() -> None:
    p = parser()
    p.feed(b"*1\r\n$5000\r\n")  # the 5000 bytes are never sent
    assert p.commands() == []
    assert p.error is not None and "invalid bulk length" in str(p.error)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_from_the_parser(data: bytes) -> None:
    for parse in (parse_all, parse_bytewise):
        commands, error = parse(data)
        assert all(isinstance(c, list) and c and all(isinstance(a, bytes) for a in c) for c in commands)
        assert error is None or isinstance(error, ProtocolError)


# ------------------------------------------------------------------ inline splitting
@pytest.mark.parametrize(
    ("line", "args"),
    [
        (b"SET a b", [b"SET", b"a", b"b"]),
        (b"  SET\t a   b  ", [b"SET", b"a", b"b"]),
        (b'SET "a b" c', [b"SET", b"a b", b"c"]),
        (b"SET 'a b' c", [b"SET", b"a b", b"c"]),
        (b'ECHO ""', [b"ECHO", b""]),
        (b"ECHO ''", [b"ECHO", b""]),
        (b'ECHO "a\\nb\\r\\t\\b\\a"', [b"ECHO", b"a\nb\r\t\x08\x07"]),
        (b'ECHO "\\x41\\x7a\\xff"', [b"ECHO", b"Az\xff"]),
        (b'ECHO "\\xZZ"', [b"ECHO", b"xZZ"]),
        (b'ECHO "a\\"b"', [b"ECHO", b'a"b']),
        (b'ECHO "a\\\\b"', [b"ECHO", b"a\\b"]),
        (b'ECHO "\\q"', [b"ECHO", b"q"]),
        (b"ECHO 'it\\'s'", [b"ECHO", b"it's"]),
        (b"ECHO 'a\\nb'", [b"ECHO", b"a\\nb"]),  # no escapes inside single quotes
        (b"ECHO 'say \"hi\"'", [b"ECHO", b'say "hi"']),
        (b'ECHO "it\'s"', [b"ECHO", b"it's"]),
        (b"", []),
        (b"   ", []),
    ],
)
def test_split_inline_like_redis(line: bytes, args: list[bytes]) -> None:
    assert split_inline(line) == args


@pytest.mark.parametrize("line", [b'ECHO "abc', b"ECHO 'abc", b'ECHO "a"b', b"ECHO 'a'b", b'ECHO "abc\\'])
def test_split_inline_unbalanced_quotes(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="unbalanced quotes"):
        split_inline(line)


def test_split_inline_quote_inside_a_word_starts_quoting() -> None:
    """As in sdssplitargs: a quote in the middle of a word starts quoting there."""
    assert split_inline(b'ECHO a"b c"') == [b"ECHO", b"ab c"]
    assert split_inline(b"ECHO a'b c'") == [b"ECHO", b"ab c"]


def test_split_inline_vertical_tab_inside_a_word_is_kept() -> None:
    """As in sdssplitargs: only space, \\t, \\r, \\n and NUL end an unquoted word."""
    assert split_inline(b"ECHO a\x0bb") == [b"ECHO", b"a\x0bb"]
    assert split_inline(b"ECHO a\x0cb") == [b"ECHO", b"a\x0cb"]


NUL_PROBE = r"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from cache_core.resp.protocol import ProtocolError, RequestParser, split_inline
for line in (b"\x00", b"ECHO a\x00b", b"\x00\xff\xfe", b"SET k \x00"):
    try:
        args = split_inline(line)
    except ProtocolError:
        continue
    assert isinstance(args, list) and all(isinstance(a, bytes) for a in args), args
p = RequestParser(max_bulk_bytes=1024, max_multibulk_length=16, max_inline_bytes=1024)
p.feed(b"PING\x00\r\nPING\r\n")
p.commands()
print("done")
"""


def test_nul_byte_in_an_inline_line_terminates() -> None:
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run([sys.executable, "-c", NUL_PROBE], capture_output=True, text=True, timeout=10, cwd=root)
    except subprocess.TimeoutExpired:
        pytest.fail("split_inline/RequestParser did not return within 10 s on a NUL byte")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"


def test_inline_line_ends_with_lf_or_crlf() -> None:
    commands, error = parse_all(b"SET a 1\nGET a\r\nPING\r\r\n")
    assert error is None
    assert commands == [[b"SET", b"a", b"1"], [b"GET", b"a"], [b"PING"]]


# ------------------------------------------------------------------ encoder
def test_null_differs_between_resp2_and_resp3() -> None:
    two, three = Encoder(2), Encoder(3)
    assert two.null() == two.bulk(None) == two.value(None) == b"$-1\r\n"
    assert three.null() == three.bulk(None) == three.value(None) == b"_\r\n"
    assert two.array(None) == b"*-1\r\n"
    assert three.array(None) == b"_\r\n"
    assert two.bulks([b"a", None]) == b"*2\r\n$1\r\na\r\n$-1\r\n"
    assert three.bulks([b"a", None]) == b"*2\r\n$1\r\na\r\n_\r\n"


def test_map_is_a_flat_array_in_resp2_and_a_map_in_resp3() -> None:
    items = {"a": 1, "b": b"x"}
    assert Encoder(2).map(items) == b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n$1\r\nx\r\n"
    assert Encoder(3).map(items) == b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n$1\r\nx\r\n"
    assert Encoder(2).map({}) == b"*0\r\n"
    assert Encoder(3).map({}) == b"%0\r\n"


def test_verbatim_string_counts_the_format_prefix() -> None:
    text = "# Server\r\nredis_version:7.0.0\r\n"
    encoded = Encoder(3).verbatim(text)
    assert encoded == b"=%d\r\ntxt:%s\r\n" % (len(text) + 4, text.encode())
    assert Encoder(3).verbatim("é") == b"=6\r\ntxt:\xc3\xa9\r\n"  # length in bytes, not characters


def test_nested_arrays_and_maps() -> None:
    value = [b"get", 2, [], [b"a", [1, None]], {"k": [True, False]}]
    assert Encoder(2).value(value) == (
        b"*5\r\n$3\r\nget\r\n:2\r\n*0\r\n*2\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n"
        b"*2\r\n$1\r\nk\r\n*2\r\n:1\r\n:0\r\n"
    )
    assert Encoder(3).value(value) == (
        b"*5\r\n$3\r\nget\r\n:2\r\n*0\r\n*2\r\n$1\r\na\r\n*2\r\n:1\r\n_\r\n"
        b"%1\r\n$1\r\nk\r\n*2\r\n:1\r\n:0\r\n"
    )


def test_scalars() -> None:
    two, three = Encoder(2), Encoder(3)
    assert two.simple("OK") == b"+OK\r\n"
    assert two.error("ERR bad\r\nthing") == b"-ERR bad  thing\r\n"  # a reply line cannot hold CR/LF
    assert two.simple("a\nb") == b"+a b\r\n"
    assert two.integer(-(1 << 63)) == b":-9223372036854775808\r\n"
    assert two.bulk(b"") == b"$0\r\n\r\n"
    assert two.bulk(b"a\r\nb") == b"$4\r\na\r\nb\r\n"
    assert two.value("ключ") == b"$8\r\n\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87\r\n"
    assert two.value(1.5) == b"$3\r\n1.5\r\n"
    assert three.value(1.5) == b",1.5\r\n"
    assert two.value(True) == b":1\r\n"
    assert two.value((b"a",)) == b"*1\r\n$1\r\na\r\n"


def test_unknown_type_is_refused() -> None:
    with pytest.raises(TypeError, match="cannot encode set"):
        Encoder(3).value({1, 2})
