# SPDX-License-Identifier: Apache-2.0
"""Hash commands (HSET, HGET, HMGET, HGETALL, HDEL, HEXISTS, HLEN, HKEYS, HVALS, HSTRLEN,
HINCRBY, HINCRBYFLOAT, HSETNX, HMSET, HRANDFIELD, HSCAN) with Redis 7.0's semantics, error
texts and reply types.

A hash is one cache entry of type hash whose value is its fields encoded back to back
(each field and value preceded by its length, four bytes little-endian), in insertion order
as Redis's small hashes keep them. Memory, the TTL, eviction, WATCH and the access log treat
it as one key; the encoding counts against ``cache.max_value_bytes``. A command reads the
entry, changes the fields and writes it back under the cache's lock (O(size of the hash)),
which suits what feature stores keep in hashes: tens of fields per entity.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy

from cache_core.cache import TYPE_HASH, WrongTypeError
from cache_core.resp.args import INT64_MAX, INT64_MIN, SYNTAX_ERROR, CommandError, err_args, int_arg
from cache_core.resp.keyspace import glob_matcher, scan_cursor
from cache_core.resp.strings import NOT_A_FLOAT, format_long_double, parse_long_double

if TYPE_CHECKING:
    from cache_core.cache import Cache, Database
    from cache_core.resp.server import Connection

Handler = Callable[["Connection", list[bytes]], Any]

_LENGTH = struct.Struct("<I")
# OBJECT ENCODING: Redis keeps a hash as a listpack up to this many fields of at most this
# many bytes each (hash-max-listpack-entries / -value), as a hashtable past them.
LISTPACK_MAX_ENTRIES = 128
LISTPACK_MAX_VALUE_BYTES = 64
_RANDOM = random.Random()


# ------------------------------------------------------------------ encoding
def encode(fields: dict[bytes, bytes]) -> bytes:
    pack = _LENGTH.pack
    return b"".join(part for field, value in fields.items() for part in (pack(len(field)), field, pack(len(value)), value))


def decode(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    unpack = _LENGTH.unpack_from
    pos, end = 0, len(data)
    while pos < end:
        (n,) = unpack(data, pos)
        field = data[pos + 4 : pos + 4 + n]
        pos += 4 + n
        (n,) = unpack(data, pos)
        out[field] = data[pos + 4 : pos + 4 + n]
        pos += 4 + n
    return out


def hash_encoding(data: bytes) -> bytes:
    """OBJECT ENCODING of an encoded hash, as Redis would keep it."""
    fields = decode(data)
    small = len(fields) <= LISTPACK_MAX_ENTRIES and all(len(f) <= LISTPACK_MAX_VALUE_BYTES and len(v) <= LISTPACK_MAX_VALUE_BYTES for f, v in fields.items())
    return b"listpack" if small else b"hashtable"


# ------------------------------------------------------------------ reading and writing
def _fields(cache: Cache | Database, key: bytes) -> dict[bytes, bytes] | None:
    """The hash at ``key`` (None if absent); WRONGTYPE for a string. Counts no read."""
    found = cache.peek_typed(key)
    if found is None:
        return None
    kind, data = found
    if kind != TYPE_HASH:
        raise WrongTypeError()
    return decode(data)


def _store(cache: Cache | Database, key: bytes, fields: dict[bytes, bytes]) -> None:
    """Write the hash back (keeping its TTL), or delete the key when no field is left."""
    if not fields:
        cache.delete([key])
        return
    data = encode(fields)
    if len(data) > cache.max_value_bytes:
        raise CommandError(f"ERR hash exceeds cache.max_value_bytes ({cache.max_value_bytes} bytes encoded)")
    cache.mset([(key, data)], keep_ttl=True, kind=TYPE_HASH)


def _read(conn: Connection, key: bytes) -> dict[bytes, bytes]:
    """The hash at ``key`` (empty if absent), the read counting as an access for eviction."""
    cache = conn.cache
    with cache.atomic():
        fields = _fields(cache, key)
        if fields is not None:
            cache.touch([key])
    return fields or {}


# ------------------------------------------------------------------ commands
def c_hset(conn: Connection, args: list[bytes]) -> bytes:
    """HSET key field value [field value ...]: how many fields were new."""
    if len(args) % 2 != 0:
        raise err_args(args[0].decode("utf-8", "replace").lower())
    cache = conn.cache
    with cache.atomic():
        fields = _fields(cache, args[1]) or {}
        before = len(fields)
        for i in range(2, len(args), 2):
            fields[args[i]] = args[i + 1]
        _store(cache, args[1], fields)
    return conn.encoder.integer(len(fields) - before)


def c_hmset(conn: Connection, args: list[bytes]) -> bytes:
    c_hset(conn, args)
    return conn.encoder.simple("OK")


def c_hsetnx(conn: Connection, args: list[bytes]) -> bytes:
    cache = conn.cache
    with cache.atomic():
        fields = _fields(cache, args[1]) or {}
        if args[2] in fields:
            return conn.encoder.integer(0)
        fields[args[2]] = args[3]
        _store(cache, args[1], fields)
    return conn.encoder.integer(1)


def c_hget(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.bulk(_read(conn, args[1]).get(args[2]))


def c_hmget(conn: Connection, args: list[bytes]) -> bytes:
    fields = _read(conn, args[1])
    return conn.encoder.bulks([fields.get(f) for f in args[2:]])


def c_hgetall(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.map(_read(conn, args[1]))


def c_hkeys(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.bulks(list(_read(conn, args[1])))


def c_hvals(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.bulks(list(_read(conn, args[1]).values()))


def c_hlen(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(len(_read(conn, args[1])))


def c_hexists(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(1 if args[2] in _read(conn, args[1]) else 0)


def c_hstrlen(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(len(_read(conn, args[1]).get(args[2], b"")))


def c_hdel(conn: Connection, args: list[bytes]) -> bytes:
    cache = conn.cache
    with cache.atomic():
        fields = _fields(cache, args[1])
        if fields is None:
            return conn.encoder.integer(0)
        removed = sum(1 for f in dict.fromkeys(args[2:]) if fields.pop(f, None) is not None)
        if removed:
            _store(cache, args[1], fields)
    return conn.encoder.integer(removed)


def c_hincrby(conn: Connection, args: list[bytes]) -> bytes:
    delta = int_arg(args[3])
    cache = conn.cache
    with cache.atomic():
        fields = _fields(cache, args[1]) or {}
        old = fields.get(args[2], b"0")
        current = int_arg(old, "ERR hash value is not an integer")
        result = current + delta
        if not INT64_MIN <= result <= INT64_MAX:
            raise CommandError("ERR increment or decrement would overflow")
        fields[args[2]] = str(result).encode()
        _store(cache, args[1], fields)
    return conn.encoder.integer(result)


def c_hincrbyfloat(conn: Connection, args: list[bytes]) -> bytes:
    increment = parse_long_double(args[3])
    if increment is None:
        raise CommandError(NOT_A_FLOAT)
    if not numpy.isfinite(increment):
        raise CommandError("ERR value is NaN or Infinity")
    cache = conn.cache
    with cache.atomic():
        fields = _fields(cache, args[1]) or {}
        old = fields.get(args[2])
        current = numpy.longdouble(0) if old is None else parse_long_double(old)
        if current is None:
            raise CommandError("ERR hash value is not a float")
        with numpy.errstate(all="ignore"):
            result = current + increment
        if not numpy.isfinite(result):
            raise CommandError("ERR increment would produce NaN or Infinity")
        text = format_long_double(result)
        fields[args[2]] = text
        _store(cache, args[1], fields)
    return conn.encoder.bulk(text)


def c_hrandfield(conn: Connection, args: list[bytes]) -> bytes:
    """HRANDFIELD key [count [WITHVALUES]]: one field (nil if none); a positive count that
    many distinct fields (at most all), a negative one that many, repeats allowed."""
    if len(args) > 4 or (len(args) == 4 and args[3].upper() != b"WITHVALUES"):
        raise CommandError(SYNTAX_ERROR)
    fields = _read(conn, args[1])
    if len(args) == 2:
        return conn.encoder.bulk(_RANDOM.choice(list(fields)) if fields else None)
    count = int_arg(args[2])
    with_values = len(args) == 4
    names = list(fields)
    if count >= 0:
        chosen = _RANDOM.sample(names, min(count, len(names)))
    else:
        chosen = [_RANDOM.choice(names) for _ in range(-count)] if names else []
    if with_values and conn.protocol == 3:
        return conn.encoder.array([[f, fields[f]] for f in chosen])
    if with_values:
        return conn.encoder.bulks([part for f in chosen for part in (f, fields[f])])
    return conn.encoder.bulks(chosen)


def c_hscan(conn: Connection, args: list[bytes]) -> bytes:
    """HSCAN key cursor [MATCH pattern] [COUNT n]: the whole hash in one call (cursor 0), as
    Redis answers for hashes kept as listpacks; COUNT is a hint, as in Redis."""
    scan_cursor(args[2])
    match: Callable[[bytes], bool] | None = None
    i = 3
    while i < len(args):
        option = args[i].upper()
        if i + 1 >= len(args):
            raise CommandError(SYNTAX_ERROR)
        if option == b"COUNT":
            if int_arg(args[i + 1]) < 1:
                raise CommandError(SYNTAX_ERROR)
        elif option == b"MATCH":
            match = glob_matcher(args[i + 1])
        else:
            raise CommandError(SYNTAX_ERROR)
        i += 2
    fields = _read(conn, args[1])
    flat = [part for f, v in fields.items() if match is None or match(f) for part in (f, v)]
    return conn.encoder.array([b"0", flat])


# name -> (handler, arity as Redis gives it: n exact, -n at least n).
COMMANDS: dict[str, tuple[Handler, int]] = {
    "hset": (c_hset, -4),
    "hmset": (c_hmset, -4),
    "hsetnx": (c_hsetnx, 4),
    "hget": (c_hget, 3),
    "hmget": (c_hmget, -3),
    "hgetall": (c_hgetall, 2),
    "hkeys": (c_hkeys, 2),
    "hvals": (c_hvals, 2),
    "hlen": (c_hlen, 2),
    "hexists": (c_hexists, 3),
    "hstrlen": (c_hstrlen, 3),
    "hdel": (c_hdel, -3),
    "hincrby": (c_hincrby, 4),
    "hincrbyfloat": (c_hincrbyfloat, 4),
    "hrandfield": (c_hrandfield, -2),
    "hscan": (c_hscan, -3),
}
KEY_COMMANDS: set[str] = set(COMMANDS)
MULTI_KEY_COMMANDS: set[str] = set()
