# SPDX-License-Identifier: Apache-2.0
"""Operations commands: CONFIG, COMMAND, CLIENT, INFO, SLOWLOG, LATENCY and ACL WHOAMI, the
commands that redis-cli, monitoring exporters (redis_exporter) and administrators send rather
than applications, with Redis 7.0's reply shapes and error texts.

They live apart from the data commands so that work on one does not collide with the other;
the server merges :data:`COMMANDS` into its own table. COMMAND describes that merged table,
which it reads at call time (the server module imports this one).

The server keeps one :class:`OpsState` (``server.ops``): the slow log and the error counts.
It tells it of each command run (:meth:`OpsState.executed`) and of each error reply given
before a command ran (:meth:`OpsState.rejected`); everything else here reads state the
server and its connections keep anyway.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import platform
import resource
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cache_core.resp.args import SYNTAX_ERROR, CommandError, err_args, int_arg
from cache_core.resp.protocol import ARG_OVERHEAD_BYTES

if TYPE_CHECKING:
    from cache_core.resp.server import Connection, RespServer

Handler = Callable[["Connection", list[bytes]], Any]

# A slow log entry keeps at most this many arguments (the last one then says how many more
# there were) and this many bytes of each (Redis's SLOWLOG_ENTRY_MAX_ARGC / _MAX_STRING).
SLOWLOG_MAX_ARGS = 32
SLOWLOG_MAX_ARG_BYTES = 128
# SLOWLOG GET without a count answers this many entries, as Redis does.
SLOWLOG_GET_DEFAULT = 10
# What replaces a password in the slow log (AUTH, HELLO ... AUTH), as Redis writes it.
REDACTED = b"(redacted)"
# An error reply's code (its first word) is looked for in its first this many bytes; a reply
# without one counts as ERR (Redis's afterErrorReply).
ERROR_CODE_MAX_BYTES = 32
# Distinct error codes counted in INFO errorstats: a client cannot grow the table without
# bound by making up error codes (further codes are counted in total_error_replies only).
ERRORSTATS_MAX_CODES = 128
# How much of a command's second argument a connection remembers for CLIENT LIST's cmd=
# ("client|list"): enough for any subcommand name, never a large value.
SUBCOMMAND_MAX_BYTES = 32
# The client types CLIENT LIST TYPE and CLIENT KILL TYPE accept; every client here is normal.
CLIENT_TYPES = frozenset((b"normal", b"master", b"slave", b"replica", b"pubsub"))
# Redis's defaults for the output limits of classes of clients this server never has.
REPLICA_PUBSUB_OUTPUT_LIMITS = "slave 268435456 67108864 60 pubsub 33554432 8388608 60"
# Redis's server cron frequency, reported as hz (this server's cron runs at its own pace).
REDIS_HZ = 10
# The percentiles INFO latencystats reports (Redis's latency-tracking-info-percentiles).
LATENCY_PERCENTILES = (50.0, 99.0, 99.9)
# Redis's answer to LATENCY DOCTOR while latency monitoring is off (latency-monitor-threshold
# 0, the only setting here).
LATENCY_DOCTOR_DISABLED = (
    "I'm sorry, Dave, I can't do that. Latency monitoring is disabled in this Redis instance. "
    'You may use "CONFIG SET latency-monitor-threshold <milliseconds>." in order to enable it. '
    "If we weren't in a deep space mission I'd suggest to take a look at https://redis.io/topics/latency-monitor.\n"
)
# INFO replication's repl_backlog_size: Redis's default, which it reports with no replica too.
REDIS_REPL_BACKLOG_BYTES = 1024 * 1024
REPLICATION_ID_HEX = 40  # run_id and master_replid: 40 hex characters, as Redis's
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class SlowlogEntry:
    """One SLOWLOG GET element: id, Unix time, duration (µs), arguments, client address, name."""

    id: int
    time: int
    usec: int
    argv: list[bytes]
    peer: str
    name: bytes


class OpsState:
    """A server's slow log and error counts (INFO errorstats, cmdstat rejected_calls).

    Everything runs on the event loop: no lock."""

    def __init__(self) -> None:
        self.slowlog: deque[SlowlogEntry] = deque()
        self.slowlog_next_id = 0
        self.errors: dict[str, int] = {}  # error code -> replies (at most ERRORSTATS_MAX_CODES)
        self.error_replies = 0
        self.rejected_calls: dict[str, int] = {}  # command -> calls refused before running
        self.run_id = secrets.token_hex(REPLICATION_ID_HEX // 2)
        self.replid = secrets.token_hex(REPLICATION_ID_HEX // 2)

    # -- what the server tells ----------------------------------------------------------
    def executed(self, conn: Connection, args: list[bytes], usec: int, error: bytes | None = None) -> None:
        """A command ran for ``usec`` µs (``error``: the error reply it gave): counted in
        errorstats, logged in the slow log past the threshold."""
        if error is not None:
            self.count_error(error)
        threshold = conn.server.limits.slowlog_log_slower_than_usec
        if 0 <= threshold <= usec and args[0].lower() != b"exec":
            self._log(conn, args, usec)

    def executed_run(self, conn: Connection, run: list[list[bytes]], usec: int) -> None:
        """A batch of commands ran (a pipeline's GET or SET run), ``usec`` µs each."""
        threshold = conn.server.limits.slowlog_log_slower_than_usec
        if 0 <= threshold <= usec:
            for args in run:
                self._log(conn, args, usec)

    def rejected(self, name: str, reply: bytes) -> None:
        """An error reply given before the command ran (unknown command, arity, NOAUTH)."""
        self.count_error(reply)
        from cache_core.resp.server import COMMANDS

        if name in COMMANDS:
            self.rejected_calls[name] = self.rejected_calls.get(name, 0) + 1

    def count_error(self, reply: bytes, count: int = 1) -> None:
        """Count an encoded error reply (``-CODE message``) under its code, as Redis does."""
        self.error_replies += count
        text = reply[1:] if reply[:1] == b"-" else reply
        space = text.find(b" ", 0, ERROR_CODE_MAX_BYTES)
        code = text[:space].decode("utf-8", "replace") if space > 0 else "ERR"
        if code in self.errors or len(self.errors) < ERRORSTATS_MAX_CODES:
            self.errors[code] = self.errors.get(code, 0) + count

    def _log(self, conn: Connection, args: list[bytes], usec: int) -> None:
        limit = conn.server.limits.slowlog_max_len
        if limit <= 0:
            return
        self.slowlog.appendleft(SlowlogEntry(self.slowlog_next_id, int(time.time()), usec, slowlog_argv(args), conn.peer, conn.name or b""))
        self.slowlog_next_id += 1
        while len(self.slowlog) > limit:
            self.slowlog.pop()


def slowlog_argv(args: list[bytes]) -> list[bytes]:
    """The arguments a slow log entry keeps: passwords redacted, at most SLOWLOG_MAX_ARGS
    arguments and SLOWLOG_MAX_ARG_BYTES bytes of each, saying how much was left out."""
    name = args[0].lower()
    redacted: set[int] = set()
    if name == b"auth":
        redacted = set(range(1, len(args)))
    elif name == b"hello":
        for i in range(2, len(args) - 2):
            if args[i].upper() == b"AUTH":
                redacted = {i + 1, i + 2}
                break
    kept = len(args) if len(args) <= SLOWLOG_MAX_ARGS else SLOWLOG_MAX_ARGS - 1
    argv: list[bytes] = []
    for i in range(kept):
        arg = REDACTED if i in redacted else args[i]
        if len(arg) > SLOWLOG_MAX_ARG_BYTES:
            arg = arg[:SLOWLOG_MAX_ARG_BYTES] + b"... (%d more bytes)" % (len(arg) - SLOWLOG_MAX_ARG_BYTES)
        argv.append(arg)
    if kept < len(args):
        argv.append(b"... (%d more arguments)" % (len(args) - kept))
    return argv


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _unknown_subcommand(command: str, sub: bytes) -> CommandError:
    return CommandError(f"ERR unknown subcommand '{_text(sub)[:128]}'. Try {command} HELP.")


def _check_arity(command: str, sub: bytes, args: list[bytes], arities: dict[bytes, int]) -> bytes:
    """The upper-cased subcommand, once its argument count is what Redis allows."""
    upper = sub.upper()
    arity = arities.get(upper)
    if arity is None:
        raise _unknown_subcommand(command.upper(), sub)
    if (arity > 0 and len(args) != arity) or (arity < 0 and len(args) < -arity):
        raise err_args(f"{command}|{upper.decode().lower()}")
    return upper


def _help(conn: Connection, lines: list[str]) -> bytes:
    return b"*%d\r\n" % len(lines) + b"".join(conn.encoder.simple(line) for line in lines)


def _text_reply(conn: Connection, text: str) -> bytes:
    """A text report: verbatim under RESP3, a bulk string under RESP2 (as Redis answers)."""
    return conn.encoder.verbatim(text) if conn.protocol == 3 else conn.encoder.bulk(text.encode("utf-8"))


# ------------------------------------------------------------------------------ CONFIG
def config_table(server: RespServer) -> dict[str, str]:
    """Every parameter CONFIG GET answers: what the server's limits say, Redis's values for
    what this server does not have (no persistence, no replicas, no scripting), and the
    agent's own ``config_values`` (memory, eviction, address, databases) over them.
    ``requirepass`` is never answered: a secret does not leave the agent."""
    limits = server.limits
    cache = server.cache
    host, port = server.address if server.address else ("", 0)
    table = {
        "maxmemory": str(cache.snapshot().max_memory_bytes),
        "maxmemory-policy": cache.eviction_name,
        "maxclients": str(limits.max_clients),
        "timeout": str(int(limits.idle_timeout_seconds)),
        "proto-max-bulk-len": str(limits.max_bulk_bytes),
        "client-query-buffer-limit": str(limits.query_buffer_bytes),
        "maxmemory-clients": str(limits.max_client_memory_bytes),
        "client-output-buffer-limit": (
            f"normal {limits.output_buffer_bytes} {limits.output_buffer_soft_bytes} "
            f"{int(limits.output_buffer_soft_seconds)} {REPLICA_PUBSUB_OUTPUT_LIMITS}"
        ),
        "slowlog-log-slower-than": str(limits.slowlog_log_slower_than_usec),
        "slowlog-max-len": str(limits.slowlog_max_len),
        "latency-monitor-threshold": "0",
        "bind": str(host),
        "port": str(port),
        "databases": "16",
        "save": "",
        "appendonly": "no",
        "appendfsync": "everysec",
        "hz": str(REDIS_HZ),
        "io-threads": "1",
        "io-threads-do-reads": "no",
        "lua-time-limit": "5000",
        "busy-reply-threshold": "5000",
        "tcp-keepalive": "0",
        "cluster-enabled": "no",
        "notify-keyspace-events": "",
        "replica-read-only": "yes",
        "slave-read-only": "yes",
        "replicaof": "",
        "slaveof": "",
    }
    table.update(server.config_values)
    if server.address:
        table["port"] = str(port)  # the port bound (the config may say 0: any free port)
    return table


def c_config(conn: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"GET":
        if len(args) < 3:
            raise err_args("config|get")
        table = config_table(conn.server)
        found: dict[str, str] = {}
        for pattern in args[2:]:
            text = _text(pattern).lower()
            for key, value in table.items():
                if fnmatch.fnmatchcase(key, text):
                    found[key] = value
        return conn.encoder.map(found)
    if sub in (b"SET", b"REWRITE"):
        raise CommandError("ERR CONFIG " + sub.decode() + " is not supported: change the agent's config file and reload")
    if sub == b"RESETSTAT":
        raise CommandError(
            "ERR CONFIG RESETSTAT is not supported: the server's counters feed the agent's metrics, "
            "which never go back; compare two INFO readings instead"
        )
    raise _unknown_subcommand("CONFIG", args[1])


def c_command(conn: Connection, args: list[bytes]) -> bytes:
    from cache_core.resp.server import COMMANDS

    if len(args) == 1:
        return conn.encoder.array([_command_info(conn, name) for name in sorted(COMMANDS)])
    sub = args[1].upper()
    if sub == b"COUNT":
        return conn.encoder.integer(len(COMMANDS))
    if sub == b"DOCS":
        return conn.encoder.map({})
    if sub == b"INFO":
        names = [a.decode("utf-8", "replace").lower() for a in args[2:]]
        return conn.encoder.array([_command_info(conn, n) if n in COMMANDS else None for n in names])
    raise CommandError(f"ERR unknown subcommand '{args[1].decode('utf-8', 'replace')}'. Try COMMAND HELP.")


def _command_info(conn: Connection, name: str) -> Any:
    from cache_core.resp.server import COMMANDS, KEY_COMMANDS, MULTI_KEY

    arity = COMMANDS[name][1]
    keyed = name in KEY_COMMANDS
    return [name.encode(), arity, [], 1 if keyed else 0, -1 if name in MULTI_KEY else (1 if keyed else 0), 1 if keyed else 0]


# ------------------------------------------------------------------------------ CLIENT
_CLIENT_ARITY = {
    b"SETNAME": 3, b"GETNAME": 2, b"ID": 2, b"SETINFO": 4, b"LIST": -2, b"INFO": 2, b"KILL": -3, b"NO-EVICT": 3, b"HELP": 2,
}
_CLIENT_HELP = [
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GETNAME", "    Return the name of the current connection.",
    "ID", "    Return the ID of the current connection.",
    "INFO", "    Return information about the current client connection.",
    "KILL <ip:port>", "    Kill connection made from <ip:port>.",
    "KILL <option> <value> [<option> <value> [...]]",
    "    Kill connections. Options are: ID <client-id>, TYPE (NORMAL|MASTER|REPLICA|PUBSUB), USER <username>, ADDR <ip:port>, LADDR <ip:port>, SKIPME (YES|NO).",
    "LIST [options ...]", "    Return information about client connections. Options: TYPE (NORMAL|MASTER|REPLICA|PUBSUB), ID id [id ...].",
    "NO-EVICT (ON|OFF)", "    Accepted; this server never closes a client to free memory for others' sake only.",
    "SETNAME <name>", "    Assign the name <name> to the current connection.",
    "HELP", "    Print this help.",
]


def c_client(conn: Connection, args: list[bytes]) -> bytes:
    sub = _check_arity("client", args[1], args, _CLIENT_ARITY)
    if sub == b"SETNAME":
        if any(c < 0x21 or c > 0x7E for c in args[2]):
            raise CommandError("ERR Client names cannot contain spaces, newlines or special characters.")
        conn.name = args[2] or None  # an empty name removes the name, as in Redis
        return conn.encoder.simple("OK")
    if sub == b"GETNAME":
        return conn.encoder.bulk(conn.name)
    if sub == b"ID":
        return conn.encoder.integer(conn.id)
    if sub == b"LIST":
        return _client_list(conn, args)
    if sub == b"INFO":
        return _text_reply(conn, client_line(conn) + "\n")
    if sub == b"KILL":
        return _client_kill(conn, args)
    if sub == b"NO-EVICT":
        mode = args[2].lower()
        if mode not in (b"on", b"off"):
            raise CommandError(SYNTAX_ERROR)
        conn.no_evict = mode == b"on"
        return conn.encoder.simple("OK")
    if sub == b"HELP":
        return _help(conn, _CLIENT_HELP)
    return conn.encoder.simple("OK")  # SETINFO: accepted and ignored


def _clients(conn: Connection) -> list[Connection]:
    """The connected clients, oldest first (closed ones are gone already for Redis)."""
    return [c for c in conn.server.clients.values() if not c.closing]


def _client_type(value: bytes) -> bytes:
    kind = value.lower()
    if kind not in CLIENT_TYPES:
        raise CommandError(f"ERR Unknown client type '{_text(value)}'")
    return kind


def _client_list(conn: Connection, args: list[bytes]) -> bytes:
    clients = _clients(conn)
    if len(args) == 4 and args[2].upper() == b"TYPE":
        if _client_type(args[3]) != b"normal":
            clients = []
    elif len(args) > 3 and args[2].upper() == b"ID":
        ids = [int_arg(value, "ERR Invalid client ID") for value in args[3:]]
        by_id = {c.id: c for c in clients}
        clients = [by_id[i] for i in ids if i in by_id]
    elif len(args) != 2:
        raise CommandError(SYNTAX_ERROR)
    return _text_reply(conn, "".join(client_line(c) + "\n" for c in clients))


def _address(conn: Connection, key: str) -> str:
    transport = conn.transport
    address = transport.get_extra_info(key) if transport is not None else None
    if not address:
        return "?"
    return f"{address[0]}:{address[1]}"


def client_line(conn: Connection) -> str:
    """One CLIENT LIST line, Redis 7.0's fields in Redis's order, filled from what the
    connection knows. This server has no per-client reply buffer (rbs, rbp, obl are 0:
    replies go straight to the transport, whose queue is omem) and no query buffer
    allocation beyond what it holds (qbuf-free 0)."""
    now = time.monotonic()
    transport = conn.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    fd = sock.fileno() if sock is not None else -1
    flags = ""
    if conn.multi is not None:
        flags += "x"
    if conn.dirty:
        flags += "d"
    if conn.no_evict:
        flags += "e"
    queued = conn.multi
    multi_mem = sum(len(a) + ARG_OVERHEAD_BYTES for command in queued for a in command) if queued else 0
    omem = conn.output_bytes()
    fields = [
        ("id", conn.id),
        ("addr", conn.peer),
        ("laddr", _address(conn, "sockname")),
        ("fd", fd),
        ("name", _text(conn.name or b"")),
        ("age", int(now - conn.created)),
        ("idle", int(now - conn.last_active)),
        ("flags", flags or "N"),
        ("db", getattr(conn, "db", 0)),
        ("sub", 0),
        ("psub", 0),
        ("ssub", 0),
        ("multi", len(queued) if queued is not None else -1),
        ("qbuf", conn.parser.held),
        ("qbuf-free", 0),
        ("argv-mem", conn._held),
        ("multi-mem", multi_mem),
        ("rbs", 0),
        ("rbp", 0),
        ("obl", 0),
        ("oll", 1 if omem else 0),
        ("omem", omem),
        ("tot-mem", conn.memory() + multi_mem),
        ("events", "r" + ("w" if omem else "")),
        ("cmd", last_command(conn)),
        ("user", "default"),
        ("redir", -1),
        ("resp", conn.protocol),
    ]
    return " ".join(f"{k}={v}" for k, v in fields)


# Commands whose second argument names a subcommand, so CLIENT LIST shows "client|list".
CONTAINER_COMMANDS = frozenset(
    (b"acl", b"client", b"cluster", b"command", b"config", b"function", b"latency", b"memory", b"module", b"object", b"pubsub", b"script", b"slowlog", b"xinfo", b"xgroup")
)


def last_command(conn: Connection) -> str:
    """CLIENT LIST's cmd=: the last command's name as Redis names it ("client|list"), or
    NULL before the first one or after one this server does not know."""
    from cache_core.resp.server import COMMANDS

    name, sub = conn.last_command
    lower = name.lower()
    text = _text(lower)
    if text not in COMMANDS:
        return "NULL"
    if lower in CONTAINER_COMMANDS and sub:
        return f"{text}|{_text(sub.lower())}"
    return text


def _kill(conn: Connection, target: Connection) -> None:
    """Close ``target`` at once, dropping what it has queued (Redis frees the client); the
    calling client itself is closed once its reply is out."""
    if target is conn:
        conn._backlog.clear()
        asyncio.get_running_loop().call_soon(conn.close)
        return
    target.closing = True
    target._backlog.clear()
    if target.transport is not None:
        target.transport.abort()


def _client_kill(conn: Connection, args: list[bytes]) -> bytes:
    if len(args) == 3:  # the old form: CLIENT KILL ip:port
        peer = _text(args[2])
        for client in _clients(conn):
            if client.peer == peer:
                _kill(conn, client)
                return conn.encoder.simple("OK")
        raise CommandError("ERR No such client")
    client_id = 0
    kind: bytes | None = None
    addr: str | None = None
    laddr: str | None = None
    skipme = True
    i = 2
    while i < len(args):
        option = args[i].lower()
        more = i + 1 < len(args)
        if option == b"id" and more:
            client_id = int_arg(args[i + 1], "ERR client-id should be greater than 0")
            if client_id < 1:
                raise CommandError("ERR client-id should be greater than 0")
        elif option == b"type" and more:
            kind = _client_type(args[i + 1])
        elif option == b"addr" and more:
            addr = _text(args[i + 1])
        elif option == b"laddr" and more:
            laddr = _text(args[i + 1])
        elif option == b"user" and more:
            if args[i + 1] != b"default":
                raise CommandError(f"ERR No such user '{_text(args[i + 1])}'")
        elif option == b"skipme" and more:
            value = args[i + 1].lower()
            if value not in (b"yes", b"no"):
                raise CommandError(SYNTAX_ERROR)
            skipme = value == b"yes"
        else:
            raise CommandError(SYNTAX_ERROR)
        i += 2
    killed = 0
    for client in _clients(conn):
        if addr is not None and client.peer != addr:
            continue
        if laddr is not None and _address(client, "sockname") != laddr:
            continue
        if kind is not None and kind != b"normal":
            continue
        if client_id and client.id != client_id:
            continue
        if client is conn and skipme:
            continue
        _kill(conn, client)
        killed += 1
    return conn.encoder.integer(killed)


# ------------------------------------------------------------------------------ SLOWLOG
_SLOWLOG_ARITY = {b"GET": -2, b"LEN": 2, b"RESET": 2, b"HELP": 2}
_SLOWLOG_HELP = [
    "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET [<count>]",
    "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
    "    Entries are made of:",
    "    id, timestamp, time in microseconds, arguments array, client IP and port,",
    "    client name",
    "LEN",
    "    Return the length of the slowlog.",
    "RESET",
    "    Reset the slowlog.",
    "HELP",
    "    Print this help.",
]


def c_slowlog(conn: Connection, args: list[bytes]) -> bytes:
    """The slow log: commands that ran for at least cache.resp.slowlog_log_slower_than_usec
    (Redis's slowlog-log-slower-than), the newest cache.resp.slowlog_max_len of them."""
    sub = _check_arity("slowlog", args[1], args, _SLOWLOG_ARITY)
    ops = conn.server.ops
    if sub == b"LEN":
        return conn.encoder.integer(len(ops.slowlog))
    if sub == b"RESET":
        ops.slowlog.clear()
        return conn.encoder.simple("OK")
    if sub == b"HELP":
        return _help(conn, _SLOWLOG_HELP)
    if len(args) > 3:
        raise CommandError(f"ERR unknown subcommand or wrong number of arguments for '{_text(args[1])}'. Try SLOWLOG HELP.")
    count = SLOWLOG_GET_DEFAULT
    if len(args) == 3:
        count = int_arg(args[2], "ERR count should be greater than or equal to -1")
        if count < -1:
            raise CommandError("ERR count should be greater than or equal to -1")
    entries = list(ops.slowlog) if count == -1 else list(ops.slowlog)[:count]
    return conn.encoder.array([[e.id, e.time, e.usec, e.argv, e.peer, e.name] for e in entries])


# ------------------------------------------------------------------------------ LATENCY
_LATENCY_ARITY = {b"LATEST": 2, b"HISTORY": 3, b"RESET": -2, b"DOCTOR": 2, b"GRAPH": 3, b"HISTOGRAM": -2, b"HELP": 2}
_LATENCY_HELP = [
    "LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "DOCTOR",
    "    Return a human readable latency analysis report.",
    "GRAPH <event>",
    "    Return an ASCII latency graph for the <event> class.",
    "HISTORY <event>",
    "    Return time-latency samples for the <event> class.",
    "LATEST",
    "    Return the latest latency samples for all events.",
    "RESET [<event> ...]",
    "    Reset latency data of one or more <event> classes.",
    "    (default: reset all data for all event classes)",
    "HISTOGRAM [COMMAND ...]",
    "    Return a cumulative distribution of latencies in the format of a histogram for the specified command names.",
    "    If no commands are specified then all histograms are replied.",
    "HELP",
    "    Print this help.",
]


def c_latency(conn: Connection, args: list[bytes]) -> bytes:
    """Redis's latency monitor with latency-monitor-threshold 0 (which CONFIG GET reports):
    no events are sampled, so LATEST and HISTORY are empty and RESET resets none, exactly as
    redis-server answers by default. Per-command latency is tracked (INFO commandstats,
    latencystats, LATENCY HISTOGRAM, the agent's metrics)."""
    sub = _check_arity("latency", args[1], args, _LATENCY_ARITY)
    if sub in (b"LATEST", b"HISTORY"):
        return conn.encoder.array([])
    if sub == b"RESET":
        return conn.encoder.integer(0)
    if sub == b"DOCTOR":
        return _text_reply(conn, LATENCY_DOCTOR_DISABLED)
    if sub == b"GRAPH":
        raise CommandError(f"ERR No samples available for event '{_text(args[2])}'")
    if sub == b"HELP":
        return _help(conn, _LATENCY_HELP)
    return _latency_histogram(conn, [_text(a).lower() for a in args[2:]])


def _latency_histogram(conn: Connection, names: list[str]) -> bytes:
    """Each command's calls and the cumulative count of calls at or under each of the
    server's latency bounds (µs). Redis reports power-of-two bounds; this server's are the
    1-2-5 steps its metrics use."""
    from cache_core.resp.server import LATENCY_BUCKETS_USEC

    stats = conn.server.stats
    wanted = names or sorted(stats.command_latency)
    out: dict[str, Any] = {}
    for name in wanted:
        counts = stats.command_latency.get(name)
        if counts is None or not sum(counts):
            continue
        histogram: dict[int, int] = {}
        total = 0
        for bound, count in zip(LATENCY_BUCKETS_USEC, counts):
            total += count
            if count:
                histogram[bound] = total
        out[name] = {"calls": sum(counts), "histogram_usec": histogram}
    return conn.encoder.map(out)


# ------------------------------------------------------------------------------ ACL
def c_acl(conn: Connection, args: list[bytes]) -> bytes:
    """ACL WHOAMI answers the only user; the rest of ACL is out of scope (one user,
    ``default``, whose password is cache.resp.requirepass)."""
    if args[1].upper() == b"WHOAMI":
        if len(args) != 2:
            raise err_args("acl|whoami")
        return conn.encoder.bulk(b"default")
    raise CommandError(
        f"ERR 'ACL {_text(args[1])[:128].upper()}' is not supported by this server "
        "(one user, default, with cache.resp.requirepass; ACL users are out of scope, see docs/redis-protocol.md)"
    )


# ------------------------------------------------------------------------------ LASTSAVE
def c_lastsave(conn: Connection, args: list[bytes]) -> bytes:
    """The server's start time: what a redis-server that never saved answers (and INFO's
    rdb_last_save_time). Nothing is ever saved here; a cache starts empty by design."""
    return conn.encoder.integer(int(conn.server.stats.started))


# ------------------------------------------------------------------------------ INFO
def c_info(conn: Connection, args: list[bytes]) -> bytes:
    wanted = {a.decode("utf-8", "replace").lower() for a in args[1:]}
    return _text_reply(conn, render_info(conn.server, wanted))


# INFO's sections in Redis's order; DEFAULT_SECTIONS is what INFO (or INFO default) answers,
# ALL_SECTIONS what INFO all / everything answers. "predis" is this server's own section.
INFO_SECTIONS = (
    "server", "clients", "memory", "persistence", "stats", "replication", "cpu", "modules",
    "commandstats", "errorstats", "latencystats", "cluster", "keyspace", "predis",
)
DEFAULT_SECTIONS = frozenset(INFO_SECTIONS) - {"commandstats", "latencystats"}
ALL_SECTIONS = frozenset(INFO_SECTIONS)
SECTION_TITLES = {"cpu": "CPU"}


def _sections(wanted: set[str]) -> set[str]:
    if not wanted:
        return set(DEFAULT_SECTIONS)
    chosen = {w for w in wanted if w in ALL_SECTIONS}
    if "default" in wanted:
        chosen |= DEFAULT_SECTIONS
    if "all" in wanted or "everything" in wanted:
        chosen |= ALL_SECTIONS
    return chosen


def _rss_bytes() -> int:
    """Resident set size from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


def _percentile(bounds: tuple[int, ...], counts: list[int], percentile: float) -> float:
    """The latency bound under which ``percentile`` % of the calls fall."""
    total = sum(counts)
    rank = total * percentile / 100.0
    seen = 0
    for bound, count in zip(bounds, counts):
        seen += count
        if seen >= rank:
            return float(bound)
    return float(bounds[-1])


def render_info(server: RespServer, wanted: set[str]) -> str:
    """INFO's text: Redis 7.0's sections and field names. Persistence answers what a Redis
    without persistence answers (a cache starts empty by design); replication answers a
    master without replicas."""
    from cache_core.resp.server import LATENCY_BUCKETS_USEC, REDIS_COMPAT_VERSION

    chosen = _sections(wanted)
    if not chosen:
        return ""
    cache = server.cache
    stats = cache.snapshot()
    ops = server.ops
    started = int(server.stats.started)
    now = time.time()
    uptime = int(now - server.stats.started)
    port = server.address[1] if server.address else 0
    uname = platform.uname()
    sections: dict[str, list[tuple[str, Any]]] = {}
    sections["server"] = [
        ("redis_version", REDIS_COMPAT_VERSION),
        ("redis_git_sha1", "00000000"),
        ("redis_git_dirty", 0),
        ("redis_build_id", "0"),
        ("redis_mode", "standalone"),
        ("predis_server", "predis"),
        ("os", f"{uname.system} {uname.release} {uname.machine}"),
        ("arch_bits", 64 if sys.maxsize > 2**32 else 32),
        ("process_id", os.getpid()),
        ("process_supervised", "no"),
        ("run_id", ops.run_id),
        ("tcp_port", port),
        ("server_time_usec", int(now * 1_000_000)),
        ("uptime_in_seconds", uptime),
        ("uptime_in_days", uptime // 86400),
        ("hz", REDIS_HZ),
        ("configured_hz", REDIS_HZ),
        ("executable", sys.executable),
        ("config_file", ""),
        ("io_threads_active", 0),
    ]
    sections["clients"] = [
        ("connected_clients", len(server.clients)),
        ("cluster_connections", 0),
        ("maxclients", server.limits.max_clients),
        ("client_recent_max_input_buffer", server.stats.max_input_buffer),
        ("client_recent_max_output_buffer", server.stats.max_output_buffer),
        ("blocked_clients", 0),
        ("tracking_clients", 0),
        ("clients_in_timeout_table", 0),
    ]
    used = stats.device_bytes + stats.host_bytes
    rss = _rss_bytes()
    sections["memory"] = [
        ("used_memory", used),
        ("used_memory_human", f"{used / 1048576:.2f}M"),
        ("used_memory_rss", rss),
        ("used_memory_rss_human", f"{rss / 1048576:.2f}M"),
        ("used_memory_device", stats.device_bytes),
        ("used_memory_host", stats.host_bytes),
        ("used_memory_values", stats.value_bytes),
        ("used_memory_charged", stats.charged_bytes),
        ("maxmemory", stats.max_memory_bytes),
        ("maxmemory_human", f"{stats.max_memory_bytes / 1048576:.2f}M"),
        ("maxmemory_policy", cache.eviction_name),
        ("mem_clients_slaves", 0),
        ("mem_clients_normal", server.stats.client_memory_bytes),
        ("maxmemory_clients", server.limits.max_client_memory_bytes),
    ]
    sections["persistence"] = [
        ("loading", 0),
        ("async_loading", 0),
        ("current_cow_peak", 0),
        ("current_cow_size", 0),
        ("current_cow_size_age", 0),
        ("current_fork_perc", "0.00"),
        ("current_save_keys_processed", 0),
        ("current_save_keys_total", 0),
        ("rdb_changes_since_last_save", 0),
        ("rdb_bgsave_in_progress", 0),
        ("rdb_last_save_time", started),
        ("rdb_last_bgsave_status", "ok"),
        ("rdb_last_bgsave_time_sec", -1),
        ("rdb_current_bgsave_time_sec", -1),
        ("rdb_saves", 0),
        ("rdb_last_cow_size", 0),
        ("rdb_last_load_keys_expired", 0),
        ("rdb_last_load_keys_loaded", 0),
        ("aof_enabled", 0),
        ("aof_rewrite_in_progress", 0),
        ("aof_rewrite_scheduled", 0),
        ("aof_last_rewrite_time_sec", -1),
        ("aof_current_rewrite_time_sec", -1),
        ("aof_last_bgrewrite_status", "ok"),
        ("aof_rewrites", 0),
        ("aof_rewrites_consecutive_failures", 0),
        ("aof_last_write_status", "ok"),
        ("aof_last_cow_size", 0),
        ("module_fork_in_progress", 0),
        ("module_fork_last_cow_size", 0),
    ]
    sections["stats"] = [
        ("total_connections_received", server.stats.total_connections),
        ("total_commands_processed", server.stats.total_commands),
        ("instantaneous_ops_per_sec", server.ops_per_sec()),
        ("rejected_connections", server.stats.rejected_connections),
        ("sync_full", 0),
        ("sync_partial_ok", 0),
        ("sync_partial_err", 0),
        ("expired_keys", stats.expirations),
        ("evicted_keys", stats.evictions),
        ("evicted_clients", server.stats.limit_disconnections.get("client_memory", 0)),
        ("keyspace_hits", stats.hits),
        ("keyspace_misses", stats.misses),
        ("pubsub_channels", 0),
        ("pubsub_patterns", 0),
        ("pubsubshard_channels", 0),
        ("latest_fork_usec", 0),
        ("total_forks", 0),
        ("migrate_cached_sockets", 0),
        ("slave_expires_tracked_keys", 0),
        ("tracking_total_keys", 0),
        ("tracking_total_items", 0),
        ("tracking_total_prefixes", 0),
        ("unexpected_error_replies", 0),
        ("total_error_replies", ops.error_replies),
        ("client_query_buffer_limit_disconnections", server.stats.limit_disconnections.get("query_buffer", 0)),
        ("client_output_buffer_limit_disconnections", server.stats.limit_disconnections.get("output_buffer", 0)),
        ("acl_access_denied_auth", server.stats.auth_failures + server.stats.auth_throttled),
        ("protocol_errors", server.stats.protocol_errors),
    ]
    sections["replication"] = [
        ("role", "master"),
        ("connected_slaves", 0),
        ("master_failover_state", "no-failover"),
        ("master_replid", ops.replid),
        ("master_replid2", "0" * REPLICATION_ID_HEX),
        ("master_repl_offset", 0),
        ("second_repl_offset", -1),
        ("repl_backlog_active", 0),
        ("repl_backlog_size", REDIS_REPL_BACKLOG_BYTES),
        ("repl_backlog_first_byte_offset", 0),
        ("repl_backlog_histlen", 0),
    ]
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = [
        ("used_cpu_sys", f"{own.ru_stime:.6f}"),
        ("used_cpu_user", f"{own.ru_utime:.6f}"),
        ("used_cpu_sys_children", f"{children.ru_stime:.6f}"),
        ("used_cpu_user_children", f"{children.ru_utime:.6f}"),
    ]
    if hasattr(resource, "RUSAGE_THREAD"):
        thread = resource.getrusage(resource.RUSAGE_THREAD)  # the event loop's thread
        cpu += [("used_cpu_sys_main_thread", f"{thread.ru_stime:.6f}"), ("used_cpu_user_main_thread", f"{thread.ru_utime:.6f}")]
    sections["cpu"] = cpu
    sections["modules"] = []
    calls = server.stats.command_calls
    rejected = ops.rejected_calls
    sections["commandstats"] = [
        (
            f"cmdstat_{name}",
            f"calls={c},usec={u},usec_per_call={u / c if c else 0:.2f},rejected_calls={rejected.get(name, 0)},failed_calls={e}",
        )
        for name, (c, u, e) in sorted({**{n: (0, 0, 0) for n in rejected}, **{n: tuple(v) for n, v in calls.items()}}.items())
    ]
    sections["errorstats"] = [(f"errorstat_{code}", f"count={n}") for code, n in sorted(ops.errors.items())]
    latency: list[tuple[str, Any]] = []
    for name, counts in sorted(server.stats.command_latency.items()):
        if sum(counts):
            bounds = LATENCY_BUCKETS_USEC + (LATENCY_BUCKETS_USEC[-1],)
            shown = ",".join(f"p{p:g}={_percentile(bounds, counts, p):.3f}" for p in LATENCY_PERCENTILES)
            latency.append((f"latency_percentiles_usec_{name}", shown))
    sections["latencystats"] = latency
    sections["cluster"] = [("cluster_enabled", 0)]
    sections["keyspace"] = _keyspace(server)
    extra = server.info_extra() if server.info_extra else {}
    sections["predis"] = [("backend", extra.get("backend", "?")), ("device", extra.get("device", "?")), ("prefetch", extra.get("prefetch", "disabled"))]
    lines: list[str] = []
    for title in INFO_SECTIONS:
        if title not in chosen:
            continue
        lines.append(f"# {SECTION_TITLES.get(title, title.capitalize())}")
        lines.extend(f"{k}:{v}" for k, v in sections[title])
        lines.append("")
    return "\r\n".join(lines)


def _keyspace(server: RespServer) -> list[tuple[str, Any]]:
    """INFO keyspace: one line per database that holds keys."""
    return [(f"db{db}", f"keys={count},expires={expires},avg_ttl=0") for db, count, expires in server.cache.keyspace()]


COMMANDS: dict[str, tuple[Handler, int]] = {
    "info": (c_info, -1),
    "config": (c_config, -2),
    "command": (c_command, -1),
    "client": (c_client, -2),
    "slowlog": (c_slowlog, -2),
    "latency": (c_latency, -2),
    "acl": (c_acl, -2),
    "lastsave": (c_lastsave, 1),
}
