# SPDX-License-Identifier: Apache-2.0
"""Keyspace commands: KEYS, SCAN, RANDOMKEY, RENAME, RENAMENX, COPY, OBJECT, MEMORY USAGE,
with Redis 7.0's semantics, error texts and reply types.

The cache finds entries by keyed fingerprints and keeps each entry's key name beside it
(in slabs of its own, :attr:`cache_core.cache.Cache.key_store`), so these commands name keys back. SCAN's cursor is
an entry ID: a key keeps its entry for its whole life, so Redis's guarantee (every key
present for the whole iteration is returned) holds across table growth, rehashes and the
eviction of other keys. Patterns follow redis-server's ``stringmatchlen``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cache_core.cache import TYPE_HASH, TYPE_STRING
from cache_core.resp.args import SYNTAX_ERROR, CommandError, err_args, int_arg

if TYPE_CHECKING:
    from cache_core.resp.server import Connection

Handler = Callable[["Connection", list[bytes]], Any]

SCAN_DEFAULT_COUNT = 10
SCAN_TYPES = {b"string": TYPE_STRING, b"hash": TYPE_HASH}
NO_TYPE = 255  # SCAN TYPE of a type this server does not hold: matches no key
# Redis encodes a string value as "int" when it reads as a 64-bit integer of at most this
# many characters, as "embstr" up to EMBSTR_MAX_BYTES, else as "raw".
INT_ENCODING_MAX_CHARS = 20
EMBSTR_MAX_BYTES = 44
# Redis shares the integers below this as objects whose OBJECT REFCOUNT is INT_MAX.
SHARED_INTEGERS = 10000
SHARED_REFCOUNT = 2147483647
LFU_NOT_SELECTED = (
    "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching "
    "between policies at runtime LRU and LFU data will take some time to adjust."
)
_RANDOM = random.Random()


# ------------------------------------------------------------------ patterns
def glob_matcher(pattern: bytes) -> Callable[[bytes], bool] | None:
    """A matcher for a Redis glob pattern (None: everything matches), as a compiled regex.

    ``*`` any run, ``?`` any byte, ``[...]`` a set with ``^`` negation, ``a-z`` ranges (either
    order) and ``\\`` escapes, an unclosed set running to the end of the pattern, and ``\\``
    escaping the next byte outside sets: redis-server's ``stringmatchlen``.
    """
    if pattern.strip(b"*") == b"" and pattern:
        return None
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x2A:  # '*'
            while i + 1 < n and pattern[i + 1] == 0x2A:
                i += 1
            out.append(".*")
        elif c == 0x3F:  # '?'
            out.append(".")
        elif c == 0x5C and i + 1 < n:  # '\\' escapes the next byte
            i += 1
            out.append(_byte(pattern[i]))
        elif c == 0x5B:  # '['
            i, part = _bracket(pattern, i + 1)
            out.append(part)
        else:
            out.append(_byte(c))
        i += 1
    regex = re.compile("".join(out).encode("latin-1"), re.DOTALL)
    return lambda key: regex.fullmatch(key) is not None


def _byte(b: int) -> str:
    return f"\\x{b:02x}"


def _bracket(pattern: bytes, i: int) -> tuple[int, str]:
    """The set starting at ``pattern[i]`` (after '['): where it ends (its ']') and its regex."""
    n = len(pattern)
    negate = i < n and pattern[i] == 0x5E  # '^'
    if negate:
        i += 1
    items: list[str] = []
    while i < n:
        c = pattern[i]
        if c == 0x5C and i + 1 < n:
            i += 1
            items.append(_byte(pattern[i]))
        elif c == 0x5D:  # ']'
            break
        elif i + 2 < n and pattern[i + 1] == 0x2D:  # a range 'a-z'
            start, end = sorted((c, pattern[i + 2]))
            items.append(f"{_byte(start)}-{_byte(end)}")
            i += 2
        else:
            items.append(_byte(c))
        i += 1
    if not items:
        return i, "." if negate else "(?!)"
    return i, ("[^" if negate else "[") + "".join(items) + "]"


# ------------------------------------------------------------------ commands
def c_keys(conn: Connection, args: list[bytes]) -> bytes:
    match = glob_matcher(args[1])
    names = conn.cache.key_names()
    return conn.encoder.bulks(names if match is None else [k for k in names if match(k)])


def c_scan(conn: Connection, args: list[bytes]) -> bytes:
    cursor = scan_cursor(args[1])
    count = SCAN_DEFAULT_COUNT
    match: Callable[[bytes], bool] | None = None
    wanted_type: bytes | None = None
    i = 2
    while i < len(args):
        option = args[i].upper()
        if i + 1 >= len(args):
            raise CommandError(SYNTAX_ERROR)
        if option == b"COUNT":
            count = int_arg(args[i + 1])
            if count < 1:
                raise CommandError(SYNTAX_ERROR)
        elif option == b"MATCH":
            match = glob_matcher(args[i + 1])
        elif option == b"TYPE":
            wanted_type = args[i + 1].lower()
        else:
            raise CommandError(SYNTAX_ERROR)
        i += 2
    kind = None if wanted_type is None else SCAN_TYPES.get(wanted_type, NO_TYPE)
    following, names = conn.cache.scan(cursor, count, kind=kind)
    if match is not None:
        names = [k for k in names if match(k)]
    return conn.encoder.array([str(following).encode(), names])


def scan_cursor(text: bytes) -> int:
    """SCAN's cursor as redis-server reads it (C's strtoul): an optional sign, decimal
    digits, nothing else (empty is 0); a negative number wraps around 2**64."""
    match = re.fullmatch(rb"([+-]?)([0-9]*)", text)
    if match is None or (match.group(1) and not match.group(2)):
        raise CommandError("ERR invalid cursor")
    value = int(match.group(2) or b"0")
    if value >= 1 << 64:
        raise CommandError("ERR invalid cursor")
    return (-value) % (1 << 64) if match.group(1) == b"-" else value


def c_randomkey(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.bulk(conn.cache.random_key(_RANDOM))


def _move(conn: Connection, source: bytes, target: bytes, *, keep_source: bool, replace: bool, target_db: int | None = None) -> bool:
    """Write ``source``'s value (and TTL) to ``target`` (in database ``target_db``, the
    selected one by default); False when ``target`` exists and may not be replaced. The
    caller has checked that ``source`` exists, under the same lock."""
    cache = conn.cache
    destination = cache if target_db is None else conn.server.cache.database(target_db)
    if not replace and destination.exists([target]):
        return False
    found = cache.peek_typed(source)
    assert found is not None
    kind, value = found
    ttl = cache.ttl_ms(source)
    encoding = cache.encoding_override(source)  # RENAME moves the object, COPY duplicates it: same encoding
    if not keep_source:
        cache.delete([source])
    destination.mset([(target, value)], ttl_ms=ttl if ttl > 0 else None, kind=kind, encoding=encoding)
    return True


def c_rename(conn: Connection, args: list[bytes]) -> bytes:
    cache = conn.cache
    with cache.atomic():
        if not cache.exists([args[1]]):
            raise CommandError("ERR no such key")
        if args[1] != args[2]:
            _move(conn, args[1], args[2], keep_source=False, replace=True)
    return conn.encoder.simple("OK")


def c_renamenx(conn: Connection, args: list[bytes]) -> bytes:
    cache = conn.cache
    with cache.atomic():
        if not cache.exists([args[1]]):
            raise CommandError("ERR no such key")
        if args[1] == args[2]:
            return conn.encoder.integer(0)
        return conn.encoder.integer(1 if _move(conn, args[1], args[2], keep_source=False, replace=False) else 0)


def c_copy(conn: Connection, args: list[bytes]) -> bytes:
    replace = False
    target_db = conn.db
    i = 3
    while i < len(args):
        option = args[i].upper()
        if option == b"REPLACE":
            replace = True
        elif option == b"DB" and i + 1 < len(args):
            target_db = int_arg(args[i + 1])
            if not 0 <= target_db < conn.server.cache.databases:
                raise CommandError("ERR DB index is out of range")
            i += 1
        else:
            raise CommandError(SYNTAX_ERROR)
        i += 1
    if args[1] == args[2] and target_db == conn.db:
        raise CommandError("ERR source and destination objects are the same")
    cache = conn.cache
    with cache.atomic():
        if not cache.exists([args[1]]):
            return conn.encoder.integer(0)
        return conn.encoder.integer(1 if _move(conn, args[1], args[2], keep_source=True, replace=replace, target_db=target_db) else 0)


def _encoding(value: bytes) -> bytes:
    text = value.decode("latin-1")
    if 0 < len(value) <= INT_ENCODING_MAX_CHARS and re.fullmatch(r"-?[1-9][0-9]*|0", text) and -(1 << 63) <= int(text) < 1 << 63:
        return b"int"
    return b"embstr" if len(value) <= EMBSTR_MAX_BYTES else b"raw"


OBJECT_HELP = [
    "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "ENCODING <key>",
    "    Return the kind of internal representation used in order to store the value",
    "    associated with a <key>.",
    "FREQ <key>",
    "    Return the access frequency index of the <key>. The returned integer is",
    "    proportional to the logarithm of the recent access frequency of the key.",
    "IDLETIME <key>",
    "    Return the idle time of the <key>, that is the approximated number of",
    "    seconds elapsed since the last access to the key.",
    "REFCOUNT <key>",
    "    Return the number of references of the value associated with the specified",
    "    <key>.",
    "HELP",
    "    Prints this help.",
]


def c_object(conn: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"HELP" and len(args) == 2:
        return conn.encoder.array([line.encode() for line in OBJECT_HELP])
    if sub not in (b"ENCODING", b"FREQ", b"IDLETIME", b"REFCOUNT") or len(args) != 3:
        if sub in (b"ENCODING", b"FREQ", b"IDLETIME", b"REFCOUNT", b"HELP"):
            raise err_args("object|" + sub.decode().lower())
        raise CommandError(f"ERR unknown subcommand '{args[1].decode('utf-8', 'replace')}'. Try OBJECT HELP.")
    cache = conn.cache
    found = cache.peek_typed(args[2])
    if found is None:
        return conn.encoder.null()
    kind, value = found
    if sub == b"ENCODING":
        from cache_core.resp.hashes import hash_encoding  # hashes imports this module
        return conn.encoder.bulk((cache.encoding_override(args[2]) or _encoding(value)) if kind == TYPE_STRING else hash_encoding(value))
    if sub == b"FREQ":
        raise CommandError(LFU_NOT_SELECTED)
    if sub == b"IDLETIME":
        idle = cache.idle_ms(args[2])
        return conn.encoder.integer((idle or 0) // 1000)
    shared = kind == TYPE_STRING and (cache.encoding_override(args[2]) or _encoding(value)) == b"int" and 0 <= int(value) < SHARED_INTEGERS
    return conn.encoder.integer(SHARED_REFCOUNT if shared else 1)


def c_memory(conn: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"USAGE":
        if len(args) < 3:
            raise err_args("memory|usage")
        if len(args) not in (3, 5) or (len(args) == 5 and args[3].upper() != b"SAMPLES"):
            raise CommandError(SYNTAX_ERROR)
        if len(args) == 5:
            int_arg(args[4])
        return conn.encoder.value(conn.cache.memory_usage(args[2]))
    raise CommandError(f"ERR unknown subcommand '{args[1].decode('utf-8', 'replace')}'. Try MEMORY HELP.")


# name -> (handler, arity as Redis gives it: n exact, -n at least n).
COMMANDS: dict[str, tuple[Handler, int]] = {
    "keys": (c_keys, 2),
    "scan": (c_scan, -2),
    "randomkey": (c_randomkey, 1),
    "rename": (c_rename, 3),
    "renamenx": (c_renamenx, 3),
    "copy": (c_copy, -3),
    "object": (c_object, -2),
    "memory": (c_memory, -2),
}
KEY_COMMANDS: set[str] = {"rename", "renamenx", "copy"}
MULTI_KEY_COMMANDS: set[str] = set()
