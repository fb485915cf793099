# SPDX-License-Identifier: Apache-2.0
"""The Redis-protocol server: asyncio, RESP2/RESP3, pipelining, limits, AUTH, TLS.

One :class:`asyncio.Protocol` per connection parses everything a read delivered,
executes the commands in order and writes all replies with one ``write``. Runs of
consecutive ``GET`` (and of plain ``SET key value``) in a pipeline are executed as one
batch on the cache, which is what lets the GPU path see batches rather than single
keys; replies and semantics are exactly those of executing them one by one.

Reads never wait for the origin on the event loop: a ``GET`` run or ``MGET`` is looked up
in the cache first; when misses must be read through, that connection stops reading, the
origin load runs in a worker thread (``cache.resp.origin_workers`` of them), and the
connection's replies resume in order once it is back. Other connections are served
meanwhile — a slow origin costs the clients that wait for it, not everyone.

Bad input never takes the server down: a protocol violation answers
``-ERR Protocol error: ...`` and closes that connection only; a command error answers
a Redis-style error and the connection goes on.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import fnmatch
import hmac
import itertools
import logging
import os
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cache_core.cache import Cache, CacheError, NotAnIntegerError, OutOfMemoryError
from cache_core.keys import KeyLengthError
from cache_core.resp.protocol import Encoder, RequestParser
from cache_core.store import ValueTooLargeError

log = logging.getLogger(__name__)

REDIS_COMPAT_VERSION = "7.0.0"
OPS_SAMPLE_SECONDS = 0.1
OPS_SAMPLES = 16
# How much of an unknown command's name and arguments its error echoes (as redis-server).
UNKNOWN_ARGS_SHOWN = 128
# Upper bounds (microseconds) of the per-command latency histogram: 1-2-5 steps per
# decade from 10 µs to 10 s. Fixed, so recording a call is one bisect and one increment.
LATENCY_DECADES_USEC = (10, 100, 1_000, 10_000, 100_000, 1_000_000)
LATENCY_STEPS = (1, 2, 5)
LATENCY_MAX_USEC = 10_000_000
LATENCY_BUCKETS_USEC: tuple[int, ...] = tuple(d * s for d in LATENCY_DECADES_USEC for s in LATENCY_STEPS) + (LATENCY_MAX_USEC,)


@dataclass(frozen=True)
class RespLimits:
    max_clients: int = 10000
    max_bulk_bytes: int = 2 * 1024 * 1024
    max_multibulk_length: int = 1024 * 1024
    max_inline_bytes: int = 64 * 1024
    idle_timeout_seconds: float = 0.0
    output_buffer_bytes: int = 64 * 1024 * 1024
    origin_workers: int = 4


class CommandError(Exception):
    """A command failed; ``message`` is sent as a RESP error (prefix included)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _err_args(name: str) -> CommandError:
    return CommandError(f"ERR wrong number of arguments for '{name}' command")


_INT_RE = re.compile(rb"-?[1-9][0-9]{0,19}|0")


def _int_arg(value: bytes, message: str = "ERR value is not an integer or out of range") -> int:
    """A 64-bit integer argument, read like redis-server's string2ll: no '+', no leading
    zeros, no spaces or underscores (Python's int() would take all of those)."""
    if not _INT_RE.fullmatch(value):
        raise CommandError(message)
    number = int(value)
    if not -(1 << 63) <= number < (1 << 63):
        raise CommandError(message)
    return number


@dataclass
class ServerStats:
    started: float = field(default_factory=time.time)
    total_connections: int = 0
    rejected_connections: int = 0
    total_commands: int = 0
    protocol_errors: int = 0
    command_calls: dict[str, list[int]] = field(default_factory=dict)  # name -> [calls, usec, errors]
    # name -> calls per LATENCY_BUCKETS_USEC bound (not cumulative); the last slot counts
    # calls slower than the largest bound.
    command_latency: dict[str, list[int]] = field(default_factory=dict)


class RespServer:
    """Serves a :class:`~cache_core.cache.Cache` over RESP."""

    def __init__(
        self,
        cache: Cache,
        *,
        limits: RespLimits | None = None,
        password: str | None = None,
        info_extra: Callable[[], dict[str, Any]] | None = None,
        hint: Callable[[list[bytes]], int] | None = None,
        config_values: dict[str, str] | None = None,
    ) -> None:
        self.cache = cache
        self.limits = limits or RespLimits()
        self.password = password
        self.info_extra = info_extra
        self.hint = hint
        self.config_values = config_values or {}
        self.stats = ServerStats()
        self.clients: dict[int, Connection] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._cron: asyncio.Task[None] | None = None
        self._ops_samples: deque[tuple[float, int]] = deque(maxlen=OPS_SAMPLES)
        self.address: tuple[str, int] | None = None
        self._origin_pool: concurrent.futures.ThreadPoolExecutor | None = None

    def origin_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads that read misses through from the origin (made on first use)."""
        if self._origin_pool is None:
            self._origin_pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.limits.origin_workers, thread_name_prefix="resp-origin")
        return self._origin_pool

    # -- lifecycle -----------------------------------------------------------------
    async def start(self, sock: socket.socket, ssl_context: ssl.SSLContext | None = None) -> None:
        """Accept on ``sock``. Called again with another socket, it accepts there and stops
        accepting on the old one; connections already open keep being served."""
        loop = asyncio.get_running_loop()
        new = await loop.create_server(lambda: Connection(self), sock=sock, ssl=ssl_context)
        old, self._server = self._server, new
        self.address = sock.getsockname()[:2]
        if old is not None:
            old.close()
        if self._cron is None:
            self._cron = asyncio.create_task(self._cron_loop(), name="resp-cron")

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (for a reload that keeps the address)."""
        if self._server is None:
            return []
        return list(self._server.sockets)

    async def stop(self) -> None:
        if self._cron is not None:
            self._cron.cancel()
            self._cron = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self.clients.values()):
            conn.close()
        if server is not None:
            await server.wait_closed()
        pool, self._origin_pool = self._origin_pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def _cron_loop(self) -> None:
        while True:
            now = time.monotonic()
            self._ops_samples.append((now, self.stats.total_commands))
            timeout = self.limits.idle_timeout_seconds
            if timeout > 0:
                for conn in list(self.clients.values()):
                    if now - conn.last_active > timeout:
                        conn.close()
            await asyncio.sleep(OPS_SAMPLE_SECONDS)

    def ops_per_sec(self) -> int:
        if len(self._ops_samples) < 2:
            return 0
        (t0, c0), (t1, c1) = self._ops_samples[0], self._ops_samples[-1]
        return int((c1 - c0) / (t1 - t0)) if t1 > t0 else 0

    def record(self, name: str, usec: int, error: bool, calls: int = 1) -> None:
        """Count ``calls`` executions of ``name`` that took ``usec`` microseconds each."""
        stats = self.stats
        entry = stats.command_calls.get(name)
        if entry is None:
            entry = stats.command_calls[name] = [0, 0, 0]
            stats.command_latency[name] = [0] * (len(LATENCY_BUCKETS_USEC) + 1)
        entry[0] += calls
        entry[1] += usec * calls
        if error:
            entry[2] += calls
        stats.command_latency[name][bisect.bisect_left(LATENCY_BUCKETS_USEC, usec)] += calls

    def check_password(self, candidate: bytes) -> bool:
        if self.password is None:
            return False
        return hmac.compare_digest(candidate, self.password.encode("utf-8"))


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: RespServer) -> None:
        self.server = server
        limits = server.limits
        self.parser = RequestParser(
            max_bulk_bytes=limits.max_bulk_bytes,
            max_multibulk_length=limits.max_multibulk_length,
            max_inline_bytes=limits.max_inline_bytes,
        )
        self.id = next(server._ids)
        self.name: bytes | None = None
        self.protocol = 2
        self.encoder = Encoder(2)
        self.authenticated = server.password is None
        self.transport: asyncio.Transport | None = None
        self.last_active = time.monotonic()
        self.closing = False
        self.peer = ""
        self._backlog: deque[list[bytes]] = deque()
        self._waiting = False  # a read is at the origin: replies and reading wait for it

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        server.stats.total_connections += 1
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(server.clients) >= server.limits.max_clients:
            server.stats.rejected_connections += 1
            transport.write(b"-ERR max number of clients reached\r\n")
            transport.close()
            self.closing = True
            return
        server.clients[self.id] = self

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.clients.pop(self.id, None)
        self.closing = True

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = time.monotonic()
        self.parser.feed(data)
        self._backlog.extend(self.parser.commands())
        if not self._waiting:
            self._pump()

    def _pump(self) -> None:
        """Execute the backlog in order until it is empty or a read waits for the origin."""
        out: list[bytes] = []
        close = False
        backlog = self._backlog
        while backlog:
            args = backlog[0]
            name = args[0].upper()
            if self.authenticated and ((name == b"GET" and len(args) == 2) or (name == b"MGET" and len(args) >= 2)):
                run = [backlog.popleft()]
                if name == b"GET":
                    while backlog and len(backlog[0]) == 2 and backlog[0][0].upper() == b"GET":
                        run.append(backlog.popleft())
                if self._reads(name, run, out):
                    return  # resumed by _read_done, after the origin answered
                continue
            if name == b"SET" and self.authenticated and len(args) == 3 and len(backlog) > 1:
                run = [backlog.popleft()]
                while backlog and len(backlog[0]) == 3 and backlog[0][0].upper() == b"SET":
                    run.append(backlog.popleft())
                out.extend(self._batch(name, run) if len(run) > 1 else [self._execute(run[0])[0]])
                continue
            reply, close = self._execute(backlog.popleft())
            out.append(reply)
            if close:
                backlog.clear()
                break
        error = self.parser.error
        if error is not None and not close:
            # Answer what came before the violation, then the violation, then close.
            self.server.stats.protocol_errors += 1
            log.info("resp client %s closed: %s", self.peer, error)
            out.append(self.encoder.error(f"ERR {error}"))
            close = True
        self._finish(out, close)

    # -- reads ------------------------------------------------------------------------------
    def _reads(self, name: bytes, run: list[list[bytes]], out: list[bytes]) -> bool:
        """Serve a GET run or one MGET; True when it went to the origin (replies wait)."""
        keys = [c[1] for c in run] if name == b"GET" else run[0][1:]
        started = time.perf_counter_ns()
        cache = self.server.cache
        try:
            values, hits = cache.lookup(keys)
        except Exception:
            # One bad key must fail only its own command: one by one.
            out.extend(self._execute(c)[0] for c in run)
            return False
        if not cache.needs_origin(values):
            out.extend(self._read_replies(name, run, values, started))
            cache.notify_reads(keys, hits)
            return False
        # Replies so far go out now; the rest follow the origin's answer, in order.
        self._finish(out, False)
        out.clear()
        self._waiting = True
        if self.transport is not None:
            self.transport.pause_reading()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.server.origin_pool(), cache.fill_from_origin, keys, values)
        future.add_done_callback(lambda f: self._read_done(f, name, run, keys, values, hits, started))
        return True

    def _read_done(self, future: asyncio.Future[None], name: bytes, run: list[list[bytes]], keys: list[bytes], values: list[bytes | None], hits: list[bool], started: int) -> None:
        self._waiting = False
        if self.closing:
            return
        exc = future.exception() if not future.cancelled() else asyncio.CancelledError()
        cache = self.server.cache
        if exc is None:
            replies = self._read_replies(name, run, values, started)
        else:
            log.warning("resp: reading through from the origin failed: %s: %s", exc.__class__.__name__, exc)
            replies = self._origin_failed(name, run, values, exc)
        cache.notify_reads(keys, hits)
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()
        self._finish(replies, False)
        self._pump()

    def _read_replies(self, name: bytes, run: list[list[bytes]], values: list[bytes | None], started: int) -> list[bytes]:
        usec = (time.perf_counter_ns() - started) // 1000
        stats = self.server.stats
        if name == b"GET":
            self.server.record("get", usec // len(run), False, len(run))
            stats.total_commands += len(run)
            return [self.encoder.bulk(v) for v in values]
        self.server.record("mget", usec, False)
        stats.total_commands += 1
        return [self.encoder.bulks(values)]

    def _origin_failed(self, name: bytes, run: list[list[bytes]], values: list[bytes | None], exc: BaseException) -> list[bytes]:
        """A failed read-through costs the commands that missed, never the connection."""
        error = self.encoder.error(f"ERR origin read failed ({exc.__class__.__name__}); see the agent's log")
        stats = self.server.stats
        if name == b"GET":
            stats.total_commands += len(run)
            for value in values:
                self.server.record("get", 0, value is None)
            return [self.encoder.bulk(v) if v is not None else error for v in values]
        stats.total_commands += 1
        self.server.record("mget", 0, True)
        return [error]

    def _finish(self, out: list[bytes], close: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        if out:
            transport.write(b"".join(out))
        if close:
            self.close()
            return
        if transport.get_write_buffer_size() > self.server.limits.output_buffer_bytes:
            log.warning("resp client %s dropped: output buffer over %d bytes", self.peer, self.server.limits.output_buffer_bytes)
            # abort(), not close(): close() would first deliver everything queued.
            self.closing = True
            transport.abort()

    # -- execution ------------------------------------------------------------------------
    def _batch(self, name: bytes, commands: list[list[bytes]]) -> list[bytes]:
        started = time.perf_counter_ns()
        label = name.decode().lower()
        try:
            if name == b"GET":
                values = self.server.cache.mget([c[1] for c in commands])
                replies = [self.encoder.bulk(v) for v in values]
            else:
                self.server.cache.mset([(c[1], c[2]) for c in commands])
                ok = self.encoder.simple("OK")
                replies = [ok] * len(commands)
        except Exception:
            # One bad key (or a failing origin) must fail only its own command: one by one.
            return [self._execute(c)[0] for c in commands]
        usec = (time.perf_counter_ns() - started) // 1000
        self.server.record(label, usec // len(commands), False, len(commands))
        self.server.stats.total_commands += len(commands)
        return replies

    def _execute(self, args: list[bytes]) -> tuple[bytes, bool]:
        server = self.server
        name = args[0].decode("utf-8", "replace").lower()
        spec = COMMANDS.get(name)
        server.stats.total_commands += 1
        if spec is None:
            shown = ""
            for arg in args[1:]:
                if len(shown) >= UNKNOWN_ARGS_SHOWN:
                    break
                shown += f"'{arg.decode('utf-8', 'replace')[: UNKNOWN_ARGS_SHOWN - len(shown)]}' "
            sent = args[0].decode("utf-8", "replace")[:UNKNOWN_ARGS_SHOWN]
            return self.encoder.error(f"ERR unknown command '{sent}', with args beginning with: {shown}"), False
        handler, arity = spec
        if (arity > 0 and len(args) != arity) or (arity < 0 and len(args) < -arity):
            return self.encoder.error(f"ERR wrong number of arguments for '{name}' command"), False
        if not self.authenticated and name not in ("auth", "hello", "quit"):
            return self.encoder.error("NOAUTH Authentication required."), False
        started = time.perf_counter_ns()
        error = False
        close = False
        try:
            reply = handler(self, args)
            if reply is QUIT:
                reply, close = self.encoder.simple("OK"), True
        except CommandError as exc:
            reply, error = self.encoder.error(exc.message), True
        except NotAnIntegerError as exc:
            reply, error = self.encoder.error(f"ERR {exc}"), True
        except OutOfMemoryError:
            reply, error = self.encoder.error("OOM command not allowed when used memory > 'maxmemory'."), True
        except (KeyLengthError, ValueTooLargeError) as exc:
            reply, error = self.encoder.error(f"ERR {exc}"), True
        except CacheError as exc:
            reply, error = self.encoder.error(f"ERR {exc}"), True
        except Exception as exc:
            # A bug or a failing origin must cost this command only, never the connection.
            log.exception("resp command %s failed", name)
            reply, error = self.encoder.error(f"ERR internal error ({exc.__class__.__name__}); see the agent's log"), True
        server.record(name, (time.perf_counter_ns() - started) // 1000, error)
        return reply, close


QUIT = object()


# ------------------------------------------------------------------------------ commands
def c_ping(conn: Connection, args: list[bytes]) -> bytes:
    if len(args) > 2:
        raise _err_args("ping")
    return conn.encoder.bulk(args[1]) if len(args) == 2 else conn.encoder.simple("PONG")


def c_echo(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.bulk(args[1])


def c_quit(conn: Connection, args: list[bytes]) -> Any:
    return QUIT


def c_select(conn: Connection, args: list[bytes]) -> bytes:
    if _int_arg(args[1]) != 0:
        raise CommandError("ERR DB index is out of range")
    return conn.encoder.simple("OK")


def c_auth(conn: Connection, args: list[bytes]) -> bytes:
    if len(args) > 3:
        raise CommandError("ERR syntax error")
    user = args[1] if len(args) == 3 else b"default"
    if conn.server.password is None:
        if len(args) == 2:
            raise CommandError(
                "ERR AUTH <password> called without any password configured for the default user. "
                "Are you sure your configuration is correct?"
            )
        # As redis-server: the default user has no password (any is accepted); no other user exists.
        if user != b"default":
            raise CommandError("WRONGPASS invalid username-password pair or user is disabled.")
        conn.authenticated = True
        return conn.encoder.simple("OK")
    if user != b"default" or not conn.server.check_password(args[-1]):
        raise CommandError("WRONGPASS invalid username-password pair or user is disabled.")
    conn.authenticated = True
    return conn.encoder.simple("OK")


def c_hello(conn: Connection, args: list[bytes]) -> bytes:
    protocol = conn.protocol
    i = 1
    if len(args) > 1:
        try:
            protocol = int(args[1])
        except ValueError:
            raise CommandError("ERR Protocol version is not an integer or out of range") from None
        if protocol not in (2, 3):
            raise CommandError("NOPROTO unsupported protocol version")
        i = 2
    name = None
    while i < len(args):
        option = args[i].upper()
        if option == b"AUTH" and i + 2 < len(args):
            if args[i + 1] != b"default" or not conn.server.check_password(args[i + 2]):
                raise CommandError("WRONGPASS invalid username-password pair or user is disabled.")
            conn.authenticated = True
            i += 3
        elif option == b"SETNAME" and i + 1 < len(args):
            name = args[i + 1]
            i += 2
        else:
            raise CommandError(f"ERR Syntax error in HELLO option '{args[i].decode('utf-8', 'replace')}'")
    if not conn.authenticated:
        raise CommandError("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
    if name is not None:
        conn.name = name
    conn.protocol = protocol
    conn.encoder = Encoder(protocol)
    return conn.encoder.map(
        {
            "server": "redis",
            "version": REDIS_COMPAT_VERSION,
            "proto": protocol,
            "id": conn.id,
            "mode": "standalone",
            "role": "master",
            "modules": [],
        }
    )


def c_get(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.bulk(conn.server.cache.get(args[1]))


INT64_MAX = (1 << 63) - 1
_TTL_OPTIONS = (b"EX", b"PX", b"EXAT", b"PXAT")


def _set_ttl_ms(unit: bytes, value: bytes) -> int:
    """Milliseconds from now for SET's EX/PX/EXAT/PXAT, checked as redis-server does.

    May be <= 0 for an EXAT/PXAT in the past (the key is then not kept).
    """
    number = _int_arg(value)
    seconds = unit in (b"EX", b"EXAT")
    if number <= 0 or (seconds and number > INT64_MAX // 1000):
        raise CommandError("ERR invalid expire time in 'set' command")
    ms = number * 1000 if seconds else number
    now_unix_ms = int(time.time() * 1000)
    if unit in (b"EX", b"PX"):
        if ms > INT64_MAX - now_unix_ms:
            raise CommandError("ERR invalid expire time in 'set' command")
        return ms
    return ms - now_unix_ms


def c_set(conn: Connection, args: list[bytes]) -> bytes:
    """SET with Redis 7.0's option rules: NX/XX exclusive, one expiry unit (repeating the
    same one is allowed, the last wins), KEEPTTL not with an expiry."""
    cache = conn.server.cache
    nx = xx = get = keep = False
    unit: bytes | None = None
    expire_arg = b""
    i = 3
    while i < len(args):
        option = args[i].upper()
        if option == b"NX" and not xx:
            nx = True
        elif option == b"XX" and not nx:
            xx = True
        elif option == b"GET":
            get = True
        elif option == b"KEEPTTL" and unit is None:
            keep = True
        elif option in _TTL_OPTIONS and not keep and unit in (None, option) and i + 1 < len(args):
            unit, expire_arg = option, args[i + 1]
            i += 1
        else:
            raise CommandError("ERR syntax error")
        i += 1
    ttl_ms = _set_ttl_ms(unit, expire_arg) if unit is not None else None
    key = args[1]
    if ttl_ms is not None and ttl_ms <= 0:
        # An absolute time already past: the condition decides the reply, and no key is kept.
        present = cache.exists([key]) > 0
        old = cache.peek(key) if get else None
        if (nx and present) or (xx and not present):
            return conn.encoder.bulk(old) if get else conn.encoder.null()
        cache.delete([key])
        return conn.encoder.bulk(old) if get else conn.encoder.simple("OK")
    stored, old = cache.set(key, args[2], ttl_ms=ttl_ms, nx=nx, xx=xx, keep_ttl=keep, get=get)
    if get:
        return conn.encoder.bulk(old)
    return conn.encoder.simple("OK") if stored else conn.encoder.null()


def c_mget(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.bulks(conn.server.cache.mget(args[1:]))


def c_mset(conn: Connection, args: list[bytes]) -> bytes:
    if len(args) % 2 != 1:
        raise _err_args("mset")
    conn.server.cache.mset(list(zip(args[1::2], args[2::2])))
    return conn.encoder.simple("OK")


def c_del(conn: Connection, args: list[bytes]) -> bytes:
    keys = args[1:]
    return conn.encoder.integer(conn.server.cache.delete(keys))


def c_exists(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(conn.server.cache.exists(args[1:]))


_EXPIRE_CONDITIONS = {b"NX": "nx", b"XX": "xx", b"GT": "gt", b"LT": "lt"}


def _expire(conn: Connection, args: list[bytes], unit_ms: int) -> bytes:
    name = args[0].decode().lower()
    flags: set[str] = set()
    for option in args[3:]:
        flag = _EXPIRE_CONDITIONS.get(option.upper())
        if flag is None:
            raise CommandError(f"ERR Unsupported option {option.decode('utf-8', 'replace')}")
        flags.add(flag)
    if "nx" in flags and len(flags) > 1:
        raise CommandError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if {"gt", "lt"} <= flags:
        raise CommandError("ERR GT and LT options at the same time are not compatible")
    number = _int_arg(args[2])
    if unit_ms > 1 and not -(INT64_MAX // unit_ms) <= number <= INT64_MAX // unit_ms:
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    ttl_ms = number * unit_ms
    if ttl_ms > INT64_MAX - int(time.time() * 1000):
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    when = next(iter(flags)) if len(flags) == 1 else ("xx" if "xx" in flags else None)
    if len(flags) == 2:  # XX with GT or LT: both must hold
        other = next(f for f in flags if f != "xx")
        if conn.server.cache.ttl_ms(args[1]) == -1:
            return conn.encoder.integer(0)
        when = other
    return conn.encoder.integer(1 if conn.server.cache.expire(args[1], ttl_ms, when) else 0)


def c_expire(conn: Connection, args: list[bytes]) -> bytes:
    return _expire(conn, args, 1000)


def c_pexpire(conn: Connection, args: list[bytes]) -> bytes:
    return _expire(conn, args, 1)


def c_ttl(conn: Connection, args: list[bytes]) -> bytes:
    ms = conn.server.cache.ttl_ms(args[1])
    return conn.encoder.integer(ms if ms < 0 else (ms + 500) // 1000)


def c_pttl(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(conn.server.cache.ttl_ms(args[1]))


def c_persist(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(1 if conn.server.cache.persist(args[1]) else 0)


def c_incr(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(conn.server.cache.incrby(args[1], 1))


def c_decr(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(conn.server.cache.incrby(args[1], -1))


def c_incrby(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(conn.server.cache.incrby(args[1], _int_arg(args[2])))


def c_decrby(conn: Connection, args: list[bytes]) -> bytes:
    delta = _int_arg(args[2])
    if delta == -(1 << 63):
        raise CommandError("ERR decrement would overflow")
    return conn.encoder.integer(conn.server.cache.incrby(args[1], -delta))


def c_dbsize(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(conn.server.cache.dbsize())


def c_flush(conn: Connection, args: list[bytes]) -> bytes:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError("ERR syntax error")
    conn.server.cache.flush()
    return conn.encoder.simple("OK")


def c_config(conn: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"GET":
        if len(args) < 3:
            raise _err_args("config|get")
        found: dict[str, str] = {}
        for pattern in args[2:]:
            text = pattern.decode("utf-8", "replace").lower()
            for key, value in conn.server.config_values.items():
                if fnmatch.fnmatchcase(key, text):
                    found[key] = value
        return conn.encoder.map(found)
    if sub in (b"SET", b"RESETSTAT", b"REWRITE"):
        raise CommandError("ERR CONFIG " + sub.decode() + " is not supported: change the agent's config file and reload")
    raise CommandError(f"ERR unknown subcommand '{args[1].decode('utf-8', 'replace')}'. Try CONFIG HELP.")


def c_command(conn: Connection, args: list[bytes]) -> bytes:
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
    arity = COMMANDS[name][1]
    keyed = name in KEY_COMMANDS
    return [name.encode(), arity, [], 1 if keyed else 0, -1 if name in MULTI_KEY else (1 if keyed else 0), 1 if keyed else 0]


_CLIENT_ARITY = {b"SETNAME": 3, b"GETNAME": 2, b"ID": 2, b"SETINFO": 4}


def c_client(conn: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    arity = _CLIENT_ARITY.get(sub)
    if arity is None:
        raise CommandError(f"ERR unknown subcommand '{args[1].decode('utf-8', 'replace')[:128]}'. Try CLIENT HELP.")
    if len(args) != arity:
        raise CommandError(f"ERR wrong number of arguments for 'client|{sub.decode().lower()}' command")
    if sub == b"SETNAME":
        if any(c < 0x21 or c > 0x7E for c in args[2]):
            raise CommandError("ERR Client names cannot contain spaces, newlines or special characters.")
        conn.name = args[2] or None  # an empty name removes the name, as in Redis
        return conn.encoder.simple("OK")
    if sub == b"GETNAME":
        return conn.encoder.bulk(conn.name)
    if sub == b"ID":
        return conn.encoder.integer(conn.id)
    return conn.encoder.simple("OK")  # SETINFO: accepted and ignored


def c_info(conn: Connection, args: list[bytes]) -> bytes:
    wanted = {a.decode("utf-8", "replace").lower() for a in args[1:]}
    text = render_info(conn.server, wanted)
    return conn.encoder.verbatim(text) if conn.protocol == 3 else conn.encoder.bulk(text.encode())


def c_hint(conn: Connection, args: list[bytes]) -> bytes:
    if conn.server.hint is None:
        raise CommandError("ERR prefetching is not enabled on this server")
    return conn.encoder.integer(conn.server.hint(args[1:]))


def c_pstats(conn: Connection, args: list[bytes]) -> bytes:
    stats = conn.server.cache.snapshot()
    return conn.encoder.map({k: v for k, v in stats.__dict__.items()})


def render_info(server: RespServer, wanted: set[str]) -> str:
    cache = server.cache
    stats = cache.snapshot()
    everything = not wanted or "all" in wanted or "everything" in wanted or "default" in wanted
    sections: list[tuple[str, list[tuple[str, Any]]]] = []
    port = server.address[1] if server.address else 0
    sections.append(
        (
            "server",
            [
                ("redis_version", REDIS_COMPAT_VERSION),
                ("redis_mode", "standalone"),
                ("predis_server", "predis"),
                ("process_id", os.getpid()),
                ("tcp_port", port),
                ("uptime_in_seconds", int(time.time() - server.stats.started)),
            ],
        )
    )
    sections.append(
        ("clients", [("connected_clients", len(server.clients)), ("maxclients", server.limits.max_clients), ("blocked_clients", 0)])
    )
    used = stats.device_bytes + stats.host_bytes
    sections.append(
        (
            "memory",
            [
                ("used_memory", used),
                ("used_memory_human", f"{used / 1048576:.2f}M"),
                ("used_memory_device", stats.device_bytes),
                ("used_memory_host", stats.host_bytes),
                ("used_memory_values", stats.value_bytes),
                ("used_memory_charged", stats.charged_bytes),
                ("maxmemory", stats.max_memory_bytes),
                ("maxmemory_policy", cache.eviction_name),
            ],
        )
    )
    sections.append(
        (
            "stats",
            [
                ("total_connections_received", server.stats.total_connections),
                ("total_commands_processed", server.stats.total_commands),
                ("instantaneous_ops_per_sec", server.ops_per_sec()),
                ("rejected_connections", server.stats.rejected_connections),
                ("expired_keys", stats.expirations),
                ("evicted_keys", stats.evictions),
                ("keyspace_hits", stats.hits),
                ("keyspace_misses", stats.misses),
                ("total_error_replies", sum(v[2] for v in server.stats.command_calls.values())),
                ("protocol_errors", server.stats.protocol_errors),
            ],
        )
    )
    calls = [
        (f"cmdstat_{name}", f"calls={c},usec={u},usec_per_call={u / c if c else 0:.2f},rejected_calls=0,failed_calls={e}")
        for name, (c, u, e) in sorted(server.stats.command_calls.items())
    ]
    sections.append(("commandstats", calls))
    expires = int(((cache.e_expire != 0) & cache.e_live).sum())
    sections.append(("keyspace", [("db0", f"keys={stats.keys},expires={expires},avg_ttl=0")] if stats.keys else []))
    extra = server.info_extra() if server.info_extra else {}
    sections.append(("predis", [("backend", extra.get("backend", "?")), ("device", extra.get("device", "?")), ("prefetch", extra.get("prefetch", "disabled"))]))
    lines: list[str] = []
    for title, fields in sections:
        default_sections = {"server", "clients", "memory", "stats", "keyspace", "predis"}
        if not (title in wanted or (everything and (title in default_sections or "all" in wanted or "everything" in wanted))):
            continue
        lines.append(f"# {title.capitalize() if title != 'commandstats' else 'Commandstats'}")
        lines.extend(f"{k}:{v}" for k, v in fields)
        lines.append("")
    return "\r\n".join(lines)


COMMANDS: dict[str, tuple[Callable[[Connection, list[bytes]], Any], int]] = {
    "ping": (c_ping, -1),
    "echo": (c_echo, 2),
    "hello": (c_hello, -1),
    "auth": (c_auth, -2),
    "select": (c_select, 2),
    "quit": (c_quit, -1),
    "get": (c_get, 2),
    "set": (c_set, -3),
    "mget": (c_mget, -2),
    "mset": (c_mset, -3),
    "del": (c_del, -2),
    "unlink": (c_del, -2),
    "exists": (c_exists, -2),
    "expire": (c_expire, -3),
    "pexpire": (c_pexpire, -3),
    "ttl": (c_ttl, 2),
    "pttl": (c_pttl, 2),
    "persist": (c_persist, 2),
    "incr": (c_incr, 2),
    "decr": (c_decr, 2),
    "incrby": (c_incrby, 3),
    "decrby": (c_decrby, 3),
    "dbsize": (c_dbsize, 1),
    "flushdb": (c_flush, -1),
    "flushall": (c_flush, -1),
    "info": (c_info, -1),
    "config": (c_config, -2),
    "command": (c_command, -1),
    "client": (c_client, -2),
    "predis.hint": (c_hint, -2),
    "predis.stats": (c_pstats, 1),
}
KEY_COMMANDS = {"get", "set", "mget", "mset", "del", "unlink", "exists", "expire", "pexpire", "ttl", "pttl", "persist", "incr", "decr", "incrby", "decrby"}
MULTI_KEY = {"mget", "mset", "del", "unlink", "exists"}
