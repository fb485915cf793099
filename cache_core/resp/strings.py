# SPDX-License-Identifier: Apache-2.0
"""String commands beyond GET/SET/MGET/MSET/INCR: Redis 7.0's semantics, error texts and
reply types, command by command.

Each handler takes the connection and the command's arguments (the name first) and returns
the encoded reply, or raises :class:`~cache_core.resp.args.CommandError`. The server merges
:data:`COMMANDS` into its own table.

Commands that read a value and then write (APPEND, SETRANGE, INCRBYFLOAT, GETDEL, GETEX,
MSETNX) hold :meth:`Cache.atomic` across both steps: the prefetcher and read-through fills
write into the cache from other threads, and a write landing between the read and the write
would be lost. Only GET and MGET read through from the origin; these commands see what the
cache holds, as a key that is not cached does not exist for them.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy

from cache_core.cache import TYPE_HASH, TYPE_STRING, WRONG_TYPE, WrongTypeError
from cache_core.resp.args import INT64_MAX, SYNTAX_ERROR, CommandError, err_args, int_arg
from cache_core.resp.keyspace import EMBSTR_MAX_BYTES

if TYPE_CHECKING:
    from cache_core.cache import Cache, Database
    from cache_core.resp.server import Connection

Handler = Callable[["Connection", list[bytes]], Any]

MS_PER_SECOND = 1000
# Redis reads a float argument only if it is shorter than this (MAX_LONG_DOUBLE_CHARS).
MAX_FLOAT_CHARS = 5 * 1024
# INCRBYFLOAT writes its result with this many decimals, trailing zeros removed (Redis's
# "%.17Lf" in ld2string's human mode).
FLOAT_DECIMALS = 17
FLOAT_SCALE = 10**FLOAT_DECIMALS
# Python refuses to turn an int of more than 4300 digits into text; a long double can have
# 4933. Converted this many digits at a time.
DIGITS_PER_CHUNK = 1000
NOT_A_FLOAT = "ERR value is not a valid float"

# What strtold reads in full (Redis's string2ld): decimal, hexadecimal and infinity, with a
# sign; NaN is refused by Redis afterwards, leading spaces before, so neither is here.
_FLOAT_RE = re.compile(
    rb"[+-]?(?:"
    rb"(?P<dec>[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    rb"|0[xX](?P<hex>[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"
    rb"|(?P<inf>[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
    rb")"
)
_NONZERO_DEC = re.compile(rb"[1-9]")
_NONZERO_HEX = re.compile(rb"[1-9a-fA-F]")


def _string_too_long(cache: Cache | Database) -> CommandError:
    """Redis says "(proto-max-bulk-len)", its limit; the cache's limit is its own."""
    return CommandError(f"ERR string exceeds maximum allowed size (cache.max_value_bytes, {cache.max_value_bytes} bytes)")


def _read(cache: Cache | Database, key: bytes) -> bytes | None:
    """A read counted as GET counts it (a hit or a miss, an access for eviction, the
    prefetcher told), from the cache only."""
    values, hits = cache.lookup([key])
    cache.notify_reads([key], hits)
    return _string(values[0])


def _string(value: Any) -> bytes | None:
    """A string command's value: a key holding a hash is WRONGTYPE, as in Redis."""
    if value is WRONG_TYPE:
        raise WrongTypeError()
    return value  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------ setting
def _setex(conn: Connection, args: list[bytes], unit: bytes) -> bytes:
    from cache_core.resp.server import _set_ttl_ms  # the server imports this module first

    ttl_ms = _set_ttl_ms(unit, args[2], args[0].decode().lower())
    conn.cache.set(args[1], args[3], ttl_ms=ttl_ms)
    return conn.encoder.simple("OK")


def c_setex(conn: Connection, args: list[bytes]) -> bytes:
    """SETEX key seconds value: SET ... EX, with its own name in the expiry error."""
    return _setex(conn, args, b"EX")


def c_psetex(conn: Connection, args: list[bytes]) -> bytes:
    """PSETEX key milliseconds value: SET ... PX."""
    return _setex(conn, args, b"PX")


def c_setnx(conn: Connection, args: list[bytes]) -> bytes:
    """SETNX key value: 1 when set, 0 when the key existed (SET NX answers OK/nil)."""
    stored, _old = conn.cache.set(args[1], args[2], nx=True)
    return conn.encoder.integer(1 if stored else 0)


def c_getset(conn: Connection, args: list[bytes]) -> bytes:
    """GETSET key value: the old value (or nil); the TTL is cleared, as a plain SET does."""
    _stored, old = conn.cache.set(args[1], args[2], get=True)
    return conn.encoder.bulk(old)


def c_msetnx(conn: Connection, args: list[bytes]) -> bytes:
    """MSETNX key value [key value ...]: all keys are set, or none when any one exists."""
    if len(args) % 2 == 0:
        raise err_args("msetnx")
    cache = conn.cache
    with cache.atomic():
        if cache.exists(args[1::2]):
            return conn.encoder.integer(0)
        cache.mset(list(zip(args[1::2], args[2::2])))
    return conn.encoder.integer(1)


# ------------------------------------------------------------------------------ reading
def c_getdel(conn: Connection, args: list[bytes]) -> bytes:
    """GETDEL key: the value (or nil), and the key is gone."""
    cache = conn.cache
    key = args[1]
    with cache.atomic():
        value = _string(cache.lookup([key])[0][0])
        if value is not None:
            cache.delete([key])
    return conn.encoder.bulk(value)


def c_getex(conn: Connection, args: list[bytes]) -> bytes:
    """GETEX key [EX s | PX ms | EXAT ts | PXAT ts-ms | PERSIST]: the value, and its TTL set,
    cleared or left alone. As in Redis, a missing key answers nil before the expiry is
    read, so ``GETEX missing EX 0`` is nil and ``GETEX present EX 0`` an error."""
    from cache_core.resp.server import _TTL_OPTIONS, _set_ttl_ms  # the server imports this module first

    unit: bytes | None = None
    expire_arg = b""
    persist = False
    i = 2
    while i < len(args):
        option = args[i].upper()
        if option == b"PERSIST" and unit is None:
            persist = True
        elif option in _TTL_OPTIONS and not persist and unit in (None, option) and i + 1 < len(args):
            unit, expire_arg = option, args[i + 1]
            i += 1
        else:
            raise CommandError(SYNTAX_ERROR)
        i += 1
    cache = conn.cache
    key = args[1]
    with cache.atomic():
        values, hits = cache.lookup([key])
        value = _string(values[0])
        if value is not None:
            if unit is not None:
                ttl_ms = _set_ttl_ms(unit, expire_arg, "getex")
                if ttl_ms <= 0:  # EXAT/PXAT already past: the key goes
                    cache.delete([key])
                else:
                    cache.expire(key, ttl_ms)
            elif persist:
                cache.persist(key)
    cache.notify_reads([key], hits)
    return conn.encoder.bulk(value)


def c_strlen(conn: Connection, args: list[bytes]) -> bytes:
    """STRLEN key: the value's length, 0 for a missing key."""
    value = _read(conn.cache, args[1])
    return conn.encoder.integer(0 if value is None else len(value))


def c_getrange(conn: Connection, args: list[bytes]) -> bytes:
    """GETRANGE key start end (and SUBSTR, its old name): inclusive offsets, negative ones
    from the end, clamped to the string; an empty string when nothing is in range or the
    key is missing (never nil). Both offsets are read before the key, as Redis does."""
    start = int_arg(args[2])
    end = int_arg(args[3])
    value = _read(conn.cache, args[1])
    if value is None or (start < 0 and end < 0 and start > end):
        return conn.encoder.bulk(b"")
    length = len(value)
    if start < 0:
        start = max(0, length + start)
    if end < 0:
        end = max(0, length + end)
    end = min(end, length - 1)
    if start > end:
        return conn.encoder.bulk(b"")
    return conn.encoder.bulk(value[start : end + 1])


# ------------------------------------------------------------------------------ modifying
def c_append(conn: Connection, args: list[bytes]) -> bytes:
    """APPEND key value: the new length; a missing key is created (even by an empty value),
    an existing one keeps its TTL."""
    cache = conn.cache
    key, tail = args[1], args[2]
    with cache.atomic():
        old = _string(cache.peek(key))
        if old is not None and len(old) + len(tail) > cache.max_value_bytes:
            raise _string_too_long(cache)
        value = tail if old is None else old + tail
        # Redis appends to a copy of the string it owns, "raw" from then on; a new key is
        # encoded as SET would.
        cache.mset([(key, value)], keep_ttl=True, encoding=None if old is None else b"raw")
    return conn.encoder.integer(len(value))


def c_setrange(conn: Connection, args: list[bytes]) -> bytes:
    """SETRANGE key offset value: overwrite from ``offset``, padding with zero bytes; the new
    length. An empty value changes nothing (a missing key stays missing) and answers the
    current length; an existing key keeps its TTL."""
    offset = int_arg(args[2])
    if offset < 0:
        raise CommandError("ERR offset is out of range")
    cache = conn.cache
    key, part = args[1], args[3]
    with cache.atomic():
        old = _string(cache.peek(key))
        if not part:
            return conn.encoder.integer(0 if old is None else len(old))
        end = offset + len(part)
        if end > cache.max_value_bytes:
            raise _string_too_long(cache)
        base = old or b""
        if len(base) < offset:
            base += bytes(offset - len(base))
        value = base[:offset] + part + base[end:]
        cache.mset([(key, value)], keep_ttl=True, encoding=b"raw")  # Redis writes into a raw string
    return conn.encoder.integer(len(value))


def parse_long_double(text: bytes) -> numpy.longdouble | None:
    """``text`` as Redis's string2ld reads it (strtold, in full), or None where Redis says
    "not a valid float": empty, too long, leading space, trailing bytes, NaN, or a number
    that overflows to infinity or underflows to zero (the literal ``inf`` is accepted).

    The value is the platform's long double, as in redis-server (80-bit on x86-64), so
    that INCRBYFLOAT rounds where Redis rounds."""
    if not text or len(text) >= MAX_FLOAT_CHARS:
        return None
    match = _FLOAT_RE.fullmatch(text)
    if match is None:
        return None
    with warnings.catch_warnings():
        # numpy warns on a decimal that overflows; that case is refused just below.
        warnings.simplefilter("ignore", RuntimeWarning)
        value = numpy.longdouble(text.decode("ascii"))
    if numpy.isinf(value) and match.group("inf") is None:
        return None
    if value == 0:
        digits = match.group("dec")
        nonzero = _NONZERO_DEC if digits is not None else _NONZERO_HEX
        if nonzero.search(digits if digits is not None else match.group("hex")):
            return None  # underflowed to zero
    return value


def _digits(number: int) -> str:
    """Decimal digits of a non-negative int of any length (see DIGITS_PER_CHUNK)."""
    chunk = 10**DIGITS_PER_CHUNK
    parts: list[str] = []
    while number >= chunk:
        number, low = divmod(number, chunk)
        parts.append(f"{low:0{DIGITS_PER_CHUNK}d}")
    parts.append(str(number))
    return "".join(reversed(parts))


def format_long_double(value: numpy.longdouble) -> bytes:
    """``value`` as Redis writes an INCRBYFLOAT result: "%.17Lf" (exact, rounded half to
    even as glibc does), trailing zeros and a trailing point removed, "-0" as "0"."""
    numerator, denominator = value.as_integer_ratio()
    scaled, rest = divmod(abs(numerator) * FLOAT_SCALE, denominator)
    if 2 * rest > denominator or (2 * rest == denominator and scaled % 2):
        scaled += 1
    whole, fraction = divmod(scaled, FLOAT_SCALE)
    text = f"{_digits(whole)}.{fraction:0{FLOAT_DECIMALS}d}".rstrip("0").rstrip(".")
    if numerator < 0 and text != "0":
        text = "-" + text
    return text.encode("ascii")


def c_incrbyfloat(conn: Connection, args: list[bytes]) -> bytes:
    """INCRBYFLOAT key increment: long-double arithmetic and Redis's formatting (10.5 stays
    "10.5", 3.0e3 becomes "3000"); a missing key counts as 0; the TTL is kept."""
    cache = conn.cache
    key = args[1]
    with cache.atomic():
        old = _string(cache.peek(key))
        current = numpy.longdouble(0) if old is None else parse_long_double(old)
        increment = parse_long_double(args[2])
        if current is None or increment is None:
            raise CommandError(NOT_A_FLOAT)
        with numpy.errstate(all="ignore"):
            result = current + increment
        if not numpy.isfinite(result):
            raise CommandError("ERR increment would produce NaN or Infinity")
        text = format_long_double(result)
        # Redis stores the formatted number as a plain string object, never as "int".
        cache.mset([(key, text)], keep_ttl=True, encoding=b"embstr" if len(text) <= EMBSTR_MAX_BYTES else b"raw")
    return conn.encoder.bulk(text)


# ------------------------------------------------------------------------------ keyspace
def c_expireat(conn: Connection, args: list[bytes]) -> bytes:
    """EXPIREAT key unix-seconds [NX|XX|GT|LT]: EXPIRE's rules at an absolute time; a time
    already past deletes the key."""
    from cache_core.resp.server import _expire  # the server imports this module first

    return _expire(conn, args, MS_PER_SECOND, absolute=True)


def c_pexpireat(conn: Connection, args: list[bytes]) -> bytes:
    """PEXPIREAT key unix-milliseconds [NX|XX|GT|LT]."""
    from cache_core.resp.server import _expire  # the server imports this module first

    return _expire(conn, args, 1, absolute=True)


def _expiretime_ms(conn: Connection, key: bytes) -> int:
    """The Unix time (ms) at which ``key`` expires, -1 without a TTL, -2 when missing.

    The cache keeps expiry on its monotonic clock: the Unix time is now plus what is
    left, so it may read a millisecond off the time EXPIREAT was given."""
    left = conn.cache.ttl_ms(key)
    if left < 0:
        return left
    return min(INT64_MAX, int(time.time() * MS_PER_SECOND) + left)


def c_expiretime(conn: Connection, args: list[bytes]) -> bytes:
    """EXPIRETIME key: Unix seconds, rounded to the nearest second as Redis rounds them."""
    at = _expiretime_ms(conn, args[1])
    return conn.encoder.integer(at if at < 0 else (at + MS_PER_SECOND // 2) // MS_PER_SECOND)


def c_pexpiretime(conn: Connection, args: list[bytes]) -> bytes:
    """PEXPIRETIME key: Unix milliseconds."""
    return conn.encoder.integer(_expiretime_ms(conn, args[1]))


def c_touch(conn: Connection, args: list[bytes]) -> bytes:
    """TOUCH key [key ...]: how many exist (a key named twice counts twice); each counts as
    an access for eviction."""
    return conn.encoder.integer(conn.cache.touch(args[1:]))


TYPE_NAMES = {TYPE_STRING: "string", TYPE_HASH: "hash"}


def c_type(conn: Connection, args: list[bytes]) -> bytes:
    """TYPE key: "string", "hash", or "none" for a missing key."""
    kind = conn.cache.type_of(args[1])
    return conn.encoder.simple("none" if kind is None else TYPE_NAMES[kind])


# name -> (handler, arity as Redis gives it: n exact, -n at least n).
COMMANDS: dict[str, tuple[Handler, int]] = {
    "setex": (c_setex, 4),
    "psetex": (c_psetex, 4),
    "setnx": (c_setnx, 3),
    "getset": (c_getset, 3),
    "getdel": (c_getdel, 2),
    "getex": (c_getex, -2),
    "msetnx": (c_msetnx, -3),
    "append": (c_append, 3),
    "strlen": (c_strlen, 2),
    "getrange": (c_getrange, 4),
    "substr": (c_getrange, 4),
    "setrange": (c_setrange, 4),
    "incrbyfloat": (c_incrbyfloat, 3),
    "expireat": (c_expireat, -3),
    "pexpireat": (c_pexpireat, -3),
    "expiretime": (c_expiretime, 2),
    "pexpiretime": (c_pexpiretime, 2),
    "touch": (c_touch, -2),
    "type": (c_type, 2),
}
# The commands whose first argument is a key (COMMAND INFO's key positions).
KEY_COMMANDS: set[str] = set(COMMANDS)
# Of those, the ones that take any number of keys (MSETNX's key positions run to the end).
MULTI_KEY_COMMANDS: set[str] = {"msetnx", "touch"}
