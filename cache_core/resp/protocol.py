# SPDX-License-Identifier: Apache-2.0
"""RESP request parsing and reply encoding (RESP2 and RESP3).

The parser is incremental and bounded: it keeps the state of a half-received command
between reads (so a 1M-element ``MSET`` arriving in many reads is parsed once, not
re-parsed from its start at every read) and refuses, before buffering them, declared
lengths above the configured limits. Requests are arrays of bulk strings, as every
client sends them, or inline commands (``PING\\r\\n``), as a person types them into
``telnet``; anything else is a protocol error.

The server parses with the compiled ``cache_core._native.RequestParser``
(cache_core/native/parser.c); :class:`PyRequestParser` here is the same parser in
Python, kept as its test oracle (tests/unit/test_native_parser.py feeds both the same
bytes, split at random points, and compares commands, errors and held memory).

hiredis was considered: its reader parses replies, has no limit on declared bulk or
array lengths and does not parse inline commands, so it would need this parser around
it anyway.
"""

from __future__ import annotations

from typing import Any

from cache_core import _native
from cache_core.errors import CacheCoreError

CRLF = b"\r\n"
# The longest header line ("*<count>" or "$<length>") we read before the CRLF arrives.
MAX_HEADER_BYTES = 32
# What one received argument costs in memory beyond its bytes (the bytes object's header
# and its slot in the argument list), for the query-buffer accounting.
ARG_OVERHEAD_BYTES = 41
MULTIBULK_ERROR = "Protocol error: invalid multibulk length"
BULK_ERROR = "Protocol error: invalid bulk length"


class ProtocolError(CacheCoreError):
    """The client broke the protocol; the connection is answered once and closed."""


def _header_int(line: bytes | bytearray) -> int:
    """The integer of a ``*n`` header, as redis-server's string2ll reads it.

    Plain decimal only: no sign but a leading '-', no leading zeros, no "-0"; raises
    ValueError otherwise.
    """
    if not line or len(line) > 20:
        raise ValueError
    digits = line[1:] if line[0] == 0x2D else line  # leading '-'
    if not digits.isdigit() or (digits[0] == 0x30 and (len(digits) > 1 or digits is not line)):
        raise ValueError
    return -int(digits) if digits is not line else int(digits)


class PyRequestParser:
    """Turns bytes from a socket into commands (lists of ``bytes``); the oracle of the
    compiled :data:`RequestParser`."""

    def __init__(self, *, max_bulk_bytes: int, max_multibulk_length: int, max_inline_bytes: int) -> None:
        self.max_bulk_bytes = max_bulk_bytes
        self.max_multibulk_length = max_multibulk_length
        self.max_inline_bytes = max_inline_bytes
        # Unparsed bytes. ``bytes`` rather than ``bytearray``: slicing bytes gives the
        # argument in one copy, and most reads hold whole commands, so little is joined.
        self._buf = b""
        self._pos = 0
        self._args: list[bytes] | None = None  # the multibulk command being received
        self._remaining = 0
        # While a long bulk string arrives in pieces, the pieces wait here until it is
        # whole (``_need`` bytes from ``_pos``), so it is joined once, not once per read.
        self._chunks: list[bytes] = []
        self._chunked = 0
        self._need = 0
        self.error: ProtocolError | None = None
        # (max bulk bytes, max arguments) before AUTH; None: the configured limits only.
        self._restricted: tuple[int, int] | None = None
        # Memory held by the arguments of the command being received (not yet complete).
        self._partial = 0
        self._counted: list[bytes] | None = None
        self._counted_len = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed into a command."""
        return len(self._buf) - self._pos + self._chunked

    @property
    def assembling(self) -> bool:
        """A long bulk string is arriving in pieces (they wait in ``_chunks``)."""
        return self._chunked > 0

    @property
    def held(self) -> int:
        """Memory this parser holds for its client: unparsed bytes and the arguments of a
        command not yet complete (the client's query buffer, as Redis counts it)."""
        return len(self._buf) - self._pos + self._chunked + self._partial

    def restrict(self, limits: tuple[int, int] | None) -> None:
        """Tighter limits for a client that has not authenticated (Redis: 10 arguments of
        16 KiB): (max bulk bytes, max arguments); ``None``: the configured ones only. A length over the configured
        limit stays "invalid"; one over the tighter limit only says "unauthenticated"."""
        self._restricted = limits

    def feed(self, data: bytes) -> None:
        if self._need and len(self._buf) - self._pos + self._chunked + len(data) < self._need:
            self._chunks.append(bytes(data))
            self._chunked += len(data)
            return
        if self._chunks or self._pos < len(self._buf):
            # One join of everything unparsed: the bulk that completes is copied once here.
            pieces: list[Any] = [memoryview(self._buf)[self._pos :]] if self._pos < len(self._buf) else []
            pieces.extend(self._chunks)
            pieces.append(data)
            self._buf = b"".join(pieces)
            self._chunks = []
            self._chunked = 0
        else:
            self._buf = bytes(data)
        self._pos = 0
        self._need = 0

    def commands(self, one: bool = False) -> list[list[bytes]]:
        """Every complete command received so far (only the first with ``one``: before
        AUTH each command is parsed under the limits its predecessor left).

        A protocol violation stops parsing: the commands before it are returned and
        :attr:`error` is set; the caller answers them, then the error, then closes.
        """
        out: list[list[bytes]] = []
        if self.error is not None or self._chunks:
            return out
        try:
            self._parse(out, one)
        except ProtocolError as exc:
            self.error = exc
        return out

    def _parse(self, out: list[list[bytes]], one: bool = False) -> None:
        """The hot loop: local variables only, one ``find`` per header."""
        buf = self._buf
        size = len(buf)
        pos = self._pos
        args = self._args
        remaining = self._remaining
        max_bulk = self.max_bulk_bytes
        find = buf.find
        try:
            while True:
                if args is None:
                    if pos >= size:
                        return
                    if buf[pos] != 0x2A:  # not '*': an inline command
                        self._pos = pos
                        command = self._inline()
                        pos = self._pos
                        if command is None:
                            return
                        if command:
                            out.append(command)
                            if one:
                                return
                        continue
                    end = find(CRLF, pos)
                    if end < 0:
                        if size - pos > MAX_HEADER_BYTES:
                            raise ProtocolError(MULTIBULK_ERROR)
                        return
                    try:
                        count = _header_int(buf[pos + 1 : end])
                    except ValueError:
                        raise ProtocolError(MULTIBULK_ERROR) from None
                    if count > self.max_multibulk_length:
                        raise ProtocolError(MULTIBULK_ERROR)
                    if self._restricted is not None and count > self._restricted[1]:
                        raise ProtocolError("Protocol error: unauthenticated multibulk length")
                    pos = end + 2
                    if count <= 0:
                        continue
                    args = []
                    remaining = count
                while remaining:
                    if pos >= size:
                        return
                    if buf[pos] != 0x24:  # '$'
                        c = buf[pos]
                        shown = chr(c) if 32 < c < 127 else f"\\x{c:02x}"
                        raise ProtocolError(f"Protocol error: expected '$', got '{shown}'")
                    end = find(CRLF, pos)
                    if end < 0:
                        if size - pos > MAX_HEADER_BYTES:
                            raise ProtocolError(BULK_ERROR)
                        return
                    digits = buf[pos + 1 : end]
                    # Plain decimal digits only: int() alone would also take " 1", "+1", "1_0";
                    # no leading zeros, as redis-server's string2ll.
                    if not digits.isdigit() or end - pos > 20 or (digits[0] == 0x30 and len(digits) > 1):
                        raise ProtocolError(BULK_ERROR)
                    length = int(digits)
                    if length > max_bulk:
                        raise ProtocolError(BULK_ERROR)
                    if self._restricted is not None and length > self._restricted[0]:
                        raise ProtocolError("Protocol error: unauthenticated bulk length")
                    start = end + 2
                    stop = start + length
                    if size < stop + 2:
                        self._need = stop + 2 - pos
                        return
                    if buf[stop : stop + 2] != CRLF:
                        raise ProtocolError("Protocol error: bulk string not terminated by CRLF")
                    args.append(buf[start:stop])
                    pos = stop + 2
                    remaining -= 1
                out.append(args)
                args = None
                if one:
                    return
        finally:
            self._pos = pos
            self._args = args
            self._remaining = remaining
            if args is None:
                self._partial = 0
                self._counted = None
            else:
                # Count only the arguments that arrived in this call: a command of a
                # million arguments received in many reads is summed once in all.
                if args is not self._counted:
                    self._counted, self._counted_len, self._partial = args, 0, 0
                if len(args) > self._counted_len:
                    fresh = args[self._counted_len :]
                    self._partial += sum(map(len, fresh)) + ARG_OVERHEAD_BYTES * len(fresh)
                    self._counted_len = len(args)

    def _inline(self) -> list[bytes] | None:
        buf = self._buf
        end = buf.find(b"\n", self._pos)
        if end < 0:
            if len(buf) - self._pos > self.max_inline_bytes:
                raise ProtocolError("Protocol error: too big inline request")
            return None
        if end - self._pos > self.max_inline_bytes:
            raise ProtocolError("Protocol error: too big inline request")
        line = bytes(buf[self._pos : end]).rstrip(b"\r")
        self._pos = end + 1
        return split_inline(line)


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command like redis-server does: spaces, "double" and 'single' quotes.

    redis-server splits a C string, so a NUL byte ends the line there.
    """
    line = line.split(b"\x00", 1)[0]
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i : i + 1].isspace():
            i += 1
        if i >= n:
            return args
        current = bytearray()
        quote = 0
        while True:
            if i >= n:
                if quote:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                break
            c = line[i]
            if quote == 0x22:  # inside "..."
                if c == 0x5C and i + 1 < n:  # backslash escape
                    i += 1
                    esc = line[i]
                    if esc == 0x78 and i + 2 < n and _is_hex(line[i + 1 : i + 3]):
                        current.append(int(line[i + 1 : i + 3], 16))
                        i += 2
                    else:
                        current.append({0x6E: 10, 0x72: 13, 0x74: 9, 0x62: 8, 0x61: 7}.get(esc, esc))
                elif c == 0x22:
                    if i + 1 < n and not line[i + 1 : i + 2].isspace():
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                else:
                    current.append(c)
            elif quote == 0x27:  # inside '...'
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    i += 1
                    current.append(0x27)
                elif c == 0x27:
                    if i + 1 < n and not line[i + 1 : i + 2].isspace():
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                else:
                    current.append(c)
            elif c in (0x20, 0x09, 0x0A, 0x0D, 0x00):
                break
            elif c in (0x22, 0x27):
                quote = c  # as in redis-server, a quote starts quoting even inside a word
            else:
                current.append(c)
            i += 1
        args.append(bytes(current))


_native.parser_setup(ProtocolError, split_inline)
#: The parser the server uses: cache_core/native/parser.c, the same interface and
#: behaviour as :class:`PyRequestParser`.
RequestParser = _native.RequestParser


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(chr(b) in "0123456789abcdefABCDEF" for b in pair)


class Encoder:
    """Encodes replies for one connection's protocol version (2 or 3)."""

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        self._null = b"_\r\n" if protocol == 3 else b"$-1\r\n"
        self._null_array = b"_\r\n" if protocol == 3 else b"*-1\r\n"

    @staticmethod
    def simple(text: str) -> bytes:
        return b"+" + text.encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ") + CRLF

    @staticmethod
    def error(text: str) -> bytes:
        return b"-" + text.encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ") + CRLF

    @staticmethod
    def integer(value: int) -> bytes:
        return b":%d\r\n" % value

    def null(self) -> bytes:
        return self._null

    def null_array(self) -> bytes:
        return self._null_array

    def bulk(self, value: bytes | None) -> bytes:
        if value is None:
            return self._null
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def bulks(self, values: list[Any], other: bytes | None = None) -> bytes:
        """An array of bulk strings: None (and any value that is not bytes, such as the
        cache's WRONG_TYPE marker) as null, or as ``other`` when given."""
        return _native.encode_bulks(values if type(values) is list else list(values), self._null, other or self._null, True)  # type: ignore[no-any-return]

    def bulk_items(self, values: list[Any], other: bytes | None = None) -> bytes:
        """The elements of :meth:`bulks` without the array header (a reply streamed in
        parts, or the replies of a run of GETs)."""
        return _native.encode_bulks(values if type(values) is list else list(values), self._null, other or self._null, False)  # type: ignore[no-any-return]

    def verbatim(self, text: str) -> bytes:
        data = text.encode("utf-8", "replace")
        return b"=%d\r\ntxt:%s\r\n" % (len(data) + 4, data)

    def array(self, items: list[Any] | None) -> bytes:
        if items is None:
            return self._null_array
        return b"*%d\r\n" % len(items) + b"".join(self.value(v) for v in items)

    def map(self, items: dict[Any, Any]) -> bytes:
        head = b"%%%d\r\n" % len(items) if self.protocol == 3 else b"*%d\r\n" % (2 * len(items))
        return head + b"".join(self.value(k) + self.value(v) for k, v in items.items())

    def value(self, item: Any) -> bytes:
        """Any Python value: bytes/str as bulk, bool/int as integer, list, dict, None."""
        if item is None:
            return self._null
        if isinstance(item, bytes):
            return self.bulk(item)
        if isinstance(item, str):
            return self.bulk(item.encode("utf-8"))
        if isinstance(item, bool):
            return self.integer(int(item))
        if isinstance(item, int):
            return self.integer(item)
        if isinstance(item, float):
            if self.protocol == 3:
                return b",%r\r\n" % item
            return self.bulk(repr(item).encode())
        if isinstance(item, (list, tuple)):
            return self.array(list(item))
        if isinstance(item, dict):
            return self.map(item)
        raise TypeError(f"cannot encode {type(item).__name__} as RESP")
