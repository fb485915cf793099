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
import functools
import hmac
import itertools
import logging
import resource
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy

from cache_core.cache import WRONG_TYPE, WRONGTYPE_MESSAGE, Cache, CacheError, Database, NotAnIntegerError, OutOfMemoryError, WrongTypeError
from cache_core.keys import KeyLengthError
from cache_core.resp import admin, hashes, keyspace, strings, unsupported
from cache_core.resp.args import INT64_MAX, CommandError, err_args, int_arg
from cache_core.resp.protocol import ARG_OVERHEAD_BYTES, Encoder, RequestParser
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


# Replies are written out (and the client's output limits checked) whenever this many
# bytes of them are pending in one pass over a pipeline.
FLUSH_BYTES = 256 * 1024
# A batch of reads produces at most this many reply bytes (or one value, if larger): the
# values are copied out of the cache, encoded and written, each a transient copy as large.
READ_BATCH_BYTES = 1024 * 1024
# A bulk reply's framing beyond the value ("$<length>\r\n...\r\n"), for sizing read batches.
REPLY_OVERHEAD_BYTES = 16
WRONGTYPE_REPLY = Encoder.error(WRONGTYPE_MESSAGE)  # the same in RESP2 and RESP3
OK_REPLY = Encoder.simple("OK")
# Commands run a slice of keys at a time when they name more than command_slice_keys.
SLICED = frozenset((b"MGET", b"MSET", b"DEL", b"UNLINK", b"EXISTS"))
# How long a refused connection stays half-closed, reading what its client sent meanwhile.
REJECT_LINGER_SECONDS = 1.0
# Why a client was closed for a limit (ServerStats.limit_disconnections, a metric label).
LIMIT_REASONS = ("output_buffer", "query_buffer", "client_memory")
# The cron's pass over all clients (soft output limits, the cap on their memory) runs at
# most once per this many seconds per connected client.
CLIENT_CHECK_SECONDS_PER_CLIENT = 0.0001
# Failed AUTH attempts are logged once per source and interval, then summed up.
AUTH_LOG_INTERVAL_SECONDS = 10.0
# Sources whose failed AUTH attempts are remembered (the oldest is forgotten past it).
AUTH_SOURCES_MAX = 4096


@dataclass(frozen=True)
class RespLimits:
    """The server's limits; the agent fills them from ``cache.resp`` (defaults there)."""

    max_clients: int = 10000
    max_bulk_bytes: int = 2 * 1024 * 1024
    max_multibulk_length: int = 1024 * 1024
    max_inline_bytes: int = 64 * 1024
    idle_timeout_seconds: float = 0.0
    output_buffer_bytes: int = 64 * 1024 * 1024
    output_buffer_soft_bytes: int = 16 * 1024 * 1024
    output_buffer_soft_seconds: float = 10.0
    query_buffer_bytes: int = 256 * 1024 * 1024
    preauth_max_bulk_bytes: int = 16 * 1024
    preauth_max_multibulk_length: int = 10
    max_client_memory_bytes: int = 1024 * 1024 * 1024
    command_slice_keys: int = 1024
    auth_failure_delay_seconds: float = 0.1
    auth_failure_burst: int = 20
    auth_failures_per_second: float = 1.0
    reserved_descriptors: int = 64
    origin_workers: int = 4
    slowlog_log_slower_than_usec: int = 10000
    slowlog_max_len: int = 128

    @functools.cached_property
    def soft_output_bytes(self) -> int:
        """Where a client's pipeline pauses and the soft limit's timer starts: the soft limit,
        at most half the hard one (so a batch sized to fit under the hard limit fits)."""
        return min(self.output_buffer_soft_bytes, self.output_buffer_bytes // 2)

    @functools.cached_property
    def fast_read_room(self) -> int:
        """Reply bytes a read batch may produce without looking at the client's queue: while
        its pipeline is not paused, at most soft_output_bytes are queued."""
        return min(READ_BATCH_BYTES, self.output_buffer_bytes - self.soft_output_bytes)


def descriptor_ceiling(reserved: int) -> int:
    """The lowest descriptor number not given to a client: the soft RLIMIT_NOFILE less
    ``reserved`` (the agent's own files, origins and exporters need some)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return sys.maxsize
    return max(0, soft - reserved)


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
    # Clients closed for a limit, by reason: output_buffer, query_buffer, client_memory.
    limit_disconnections: dict[str, int] = field(default_factory=dict)
    auth_failures: int = 0
    auth_throttled: int = 0
    # Refreshed by the server's cron (every OPS_SAMPLE_SECONDS).
    client_memory_bytes: int = 0
    max_input_buffer: int = 0
    max_output_buffer: int = 0


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
        # WATCH: fingerprint (hi, lo) -> connections watching it. The cache tells of
        # changes from any thread (an eviction may come from the prefetcher), hence a lock.
        self._watched: dict[tuple[int, int], set[Connection]] = {}
        self._watch_lock = threading.Lock()
        self.cache = cache
        self.limits = limits or RespLimits()
        self.password = password
        self.info_extra = info_extra
        self.hint = hint
        self.config_values = config_values or {}
        self.stats = ServerStats()
        self.ops = admin.OpsState()  # slow log and error counts
        self.clients: dict[int, Connection] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._cron: asyncio.Task[None] | None = None
        self._ops_samples: deque[tuple[float, int]] = deque(maxlen=OPS_SAMPLES)
        self.address: tuple[str, int] | None = None
        self._origin_pool: concurrent.futures.ThreadPoolExecutor | None = None
        if password is not None and not password:
            raise ValueError("an empty password would let any client in: set a non-empty requirepass or none")
        self.tasks: set[asyncio.Task[None]] = set()  # commands running in slices
        # source address -> [tokens, last refill]: the AUTH failure budget per source.
        self._auth_budget: dict[str, list[float]] = {}
        self._auth_logged: dict[str, int] = {}  # sources logged this interval -> failures since
        self._auth_log_started = 0.0
        self._limit_log_started = 0.0
        self._clients_checked = 0.0
        self._limit_log_suppressed = 0

    def replace_cache(self, cache: Cache) -> None:
        """Serve a new cache (a reload rebuilt it): every watched key counts as changed."""
        if cache is self.cache:
            return
        with self._watch_lock:
            self.cache.modified = None
            self._mark_dirty(None, None)
            self.cache = cache
            if self._watched:
                cache.modified = self._keys_modified

    # -- WATCH ---------------------------------------------------------------------------
    def watch(self, conn: Connection, fingerprints: list[tuple[int, int]]) -> None:
        with self._watch_lock:
            for fp in fingerprints:
                self._watched.setdefault(fp, set()).add(conn)
                conn.watching.add(fp)
            self.cache.modified = self._keys_modified

    def unwatch(self, conn: Connection) -> None:
        with self._watch_lock:
            for fp in conn.watching:
                watchers = self._watched.get(fp)
                if watchers is not None:
                    watchers.discard(conn)
                    if not watchers:
                        del self._watched[fp]
            conn.watching = set()
            conn.watched_keys = []
            conn.dirty = False
            if not self._watched:
                self.cache.modified = None

    def _keys_modified(self, hi: numpy.ndarray | None, lo: numpy.ndarray | None) -> None:
        with self._watch_lock:
            self._mark_dirty(hi, lo)

    def _mark_dirty(self, hi: numpy.ndarray | None, lo: numpy.ndarray | None) -> None:
        """Flag the connections watching any of these keys (all of them for None)."""
        watched = self._watched
        if not watched:
            return
        if hi is None or lo is None:
            hit = list(watched)
        elif len(lo) <= len(watched):
            hit = [fp for fp in zip(hi.tolist(), lo.tolist()) if fp in watched]
        else:
            hit = [fp for fp in watched if bool(numpy.any((lo == fp[1]) & (hi == fp[0])))]
        for fp in hit:
            for conn in watched[fp]:
                conn.dirty = True

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
        for task in list(self.tasks):
            task.cancel()
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
                    if now - conn.last_active > timeout and not conn._waiting:
                        conn.close()
            # A pass over every client costs time per client (bench/RESULTS.md, "Figures
            # moved out of docstrings"): with many clients, less often (10,000 clients:
            # once a second).
            if now - self._clients_checked >= len(self.clients) * CLIENT_CHECK_SECONDS_PER_CLIENT:
                self._clients_checked = now
                self.check_clients(now)
            self._flush_auth_log(now)
            await asyncio.sleep(OPS_SAMPLE_SECONDS)

    def check_clients(self, now: float) -> None:
        """Soft output limits over time, and the cap on memory held by all clients together
        (Redis's maxmemory-clients): over it, the clients holding most are closed first."""
        sizes: list[tuple[int, Connection]] = []
        total = max_in = max_out = 0
        for conn in list(self.clients.values()):
            if conn.closing:
                continue
            conn._check_output(now)
            held_in = conn.parser.held + conn._held
            held_out = conn.output_bytes()
            total += held_in + held_out
            max_in = max(max_in, held_in)
            max_out = max(max_out, held_out)
            sizes.append((held_in + held_out, conn))
        stats = self.stats
        stats.client_memory_bytes, stats.max_input_buffer, stats.max_output_buffer = total, max_in, max_out
        cap = self.limits.max_client_memory_bytes
        if cap <= 0 or total <= cap:
            return
        sizes.sort(key=lambda item: item[0], reverse=True)
        for size, conn in sizes:
            if total <= cap:
                break
            conn.drop("client_memory", f"holds {size} bytes while all clients hold {total}, over cache.resp.max_client_memory_bytes ({cap})")
            total -= size
        stats.client_memory_bytes = total

    def limit_log(self, message: str) -> None:
        """A warning per client closed for a limit, at most one a second; the rest counted."""
        now = time.monotonic()
        if now - self._limit_log_started >= 1.0:
            if self._limit_log_suppressed:
                log.warning("resp: %d more clients closed for their limits in the last second", self._limit_log_suppressed)
            self._limit_log_started, self._limit_log_suppressed = now, 0
            log.warning("%s", message)
        else:
            self._limit_log_suppressed += 1

    # -- AUTH failures ---------------------------------------------------------------
    def auth_allowed(self, host: str) -> bool:
        """Whether ``host`` may try a password now (its failure budget is not spent)."""
        entry = self._auth_budget.get(host)
        if entry is None:
            return True
        limits = self.limits
        now = time.monotonic()
        entry[0] = min(float(limits.auth_failure_burst), entry[0] + (now - entry[1]) * limits.auth_failures_per_second)
        entry[1] = now
        if entry[0] >= 1.0:
            return True
        self.stats.auth_throttled += 1
        self._note_auth_failure(host)
        return False

    def auth_failed(self, conn: Connection) -> None:
        self.stats.auth_failures += 1
        host = conn.host
        entry = self._auth_budget.pop(host, None)
        if entry is None:
            if len(self._auth_budget) >= AUTH_SOURCES_MAX:
                self._auth_budget.pop(next(iter(self._auth_budget)))
            entry = [float(self.limits.auth_failure_burst), time.monotonic()]
        entry[0] -= 1.0
        self._auth_budget[host] = entry  # most recent last: the oldest is forgotten first
        conn._auth_penalty = True
        self._note_auth_failure(host)

    def _note_auth_failure(self, host: str) -> None:
        seen = self._auth_logged.get(host)
        if seen is None:
            if len(self._auth_logged) < AUTH_SOURCES_MAX:
                self._auth_logged[host] = 0
            log.warning("resp: failed AUTH from %s (further failures from it are summed up every %g s)", host, AUTH_LOG_INTERVAL_SECONDS)
        else:
            self._auth_logged[host] = seen + 1

    def _flush_auth_log(self, now: float) -> None:
        if now - self._auth_log_started < AUTH_LOG_INTERVAL_SECONDS:
            return
        self._auth_log_started = now
        more = {host: n for host, n in self._auth_logged.items() if n}
        if more:
            shown = ", ".join(f"{host} x{n}" for host, n in sorted(more.items(), key=lambda item: -item[1])[:5])
            log.warning("resp: %d more failed or refused AUTH attempts in the last %g s (%s)", sum(more.values()), AUTH_LOG_INTERVAL_SECONDS, shown)
        self._auth_logged = {}

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
        self.authenticated = True
        if server.password is not None:
            self.set_authenticated(False)
        self.transport: asyncio.Transport | None = None
        self.last_active = self.created = time.monotonic()
        # The last command's name and (the start of) its second argument: CLIENT LIST's cmd=.
        self.last_command: tuple[bytes, bytes] = (b"", b"")
        self.no_evict = False  # CLIENT NO-EVICT: accepted, shown as flag e
        self.closing = False
        self.peer = ""
        self.host = ""
        self._backlog: deque[list[bytes]] = deque()
        self._waiting = False  # a read is at the origin: replies and reading wait for it
        self._soft_since: float | None = None  # when the output buffer went over the soft limit
        self._held = 0  # memory held by a command executing in slices (its arguments)
        self._write_paused = False
        self._output_blocked = False  # replies wait to be read: nothing is read or executed
        self._drained: asyncio.Event | None = None
        self._auth_penalty = False  # the last AUTH failed: the next command waits
        self._stepwise = not self.authenticated  # parse one command at a time (before AUTH)
        # MULTI/EXEC: the queued commands (None outside MULTI), whether queueing one failed
        # (EXEC then aborts), the watched keys' fingerprints and whether one changed.
        self.multi: list[list[bytes]] | None = None
        self.multi_failed = False
        self.watching: set[tuple[int, int]] = set()
        self.watched_keys: list[tuple[int, bytes]] = []  # (database, key)
        self.dirty = False
        self.in_exec = False  # reads are served from the cache only (the origin was asked first)
        self.db = 0  # SELECT

    @property
    def cache(self) -> Cache | Database:
        """The database this client has selected (database 0 is the cache itself)."""
        db = self.db
        return self.server.cache if db == 0 else self.server.cache.database(db)

    def set_authenticated(self, authenticated: bool) -> None:
        """Before AUTH a client may send small frames only (Redis: 10 arguments of 16 KiB)."""
        self.authenticated = authenticated
        limits = self.server.limits
        if authenticated:
            self.parser.restrict(None)
        else:
            self.parser.restrict((limits.preauth_max_bulk_bytes, limits.preauth_max_multibulk_length))

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: asyncio's, or another loop's (uvloop's do not derive from
        # asyncio.Transport but have its methods).
        self.transport = stream = cast(asyncio.Transport, transport)
        server = self.server
        server.stats.total_connections += 1
        peer = stream.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.host = str(peer[0]) if peer else "?"
        sock = stream.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        # The kernel gives out the lowest free descriptor: one at or past the ceiling means
        # that many are open, and the agent keeps the rest for its own files and origins.
        if len(server.clients) >= server.limits.max_clients or fd >= descriptor_ceiling(server.limits.reserved_descriptors):
            server.stats.rejected_connections += 1
            stream.write(b"-ERR max number of clients reached\r\n")
            self.closing = True
            # A lingering close: the client's first command (sent before it read the error)
            # is read and dropped instead of being answered by a reset.
            if stream.can_write_eof():
                stream.write_eof()
                asyncio.get_running_loop().call_later(REJECT_LINGER_SECONDS, stream.close)
            else:
                stream.close()
            return
        server.clients[self.id] = self
        # Past the soft output limit the transport says pause_writing: the pipeline waits.
        stream.set_write_buffer_limits(high=server.limits.soft_output_bytes)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.clients.pop(self.id, None)
        self.closing = True
        if self.watching:
            self.server.unwatch(self)
        self._held = 0
        if self._drained is not None:
            self._drained.set()

    def pause_writing(self) -> None:
        """The transport holds more than the soft output limit: execution stops (see _pump)."""
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None:
            self._drained.set()
        if self._output_blocked and not self.closing:
            self._output_blocked = False
            if not self._waiting and self.transport is not None:
                self.transport.resume_reading()
                self._pump()

    def _block_on_output(self) -> None:
        """Stop reading and executing until the client has taken in its replies; if it never
        does, the soft limit's timer closes it."""
        self._output_blocked = True
        if self.transport is not None:
            self.transport.pause_reading()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def drop(self, reason: str, detail: str) -> None:
        """Close at once, discarding queued replies (what Redis does to a client over a
        buffer limit); ``reason`` is the metric label."""
        if self.closing:
            return
        server = self.server
        server.stats.limit_disconnections[reason] = server.stats.limit_disconnections.get(reason, 0) + 1
        server.limit_log(f"resp client {self.peer} closed: {detail}")
        self.closing = True
        self._backlog.clear()
        self._held = 0
        if self.transport is not None:
            # abort(), not close(): close() would first deliver everything queued.
            self.transport.abort()
        if self._drained is not None:
            self._drained.set()

    def output_bytes(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None and not self.closing else 0

    def memory(self) -> int:
        """What this client holds: its query buffer, a sliced command's arguments and its
        queued replies."""
        return cast(int, self.parser.held) + self._held + self.output_bytes()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = time.monotonic()
        parser = self.parser
        limit = self.server.limits.query_buffer_bytes
        # Checked before the bytes join a bulk being assembled too (completed by them, it is
        # joined and sliced, two more copies), and after parsing, when arguments are counted.
        if parser.assembling and parser.held + len(data) > limit:
            self.drop("query_buffer", f"query buffer over cache.resp.query_buffer_bytes ({limit}): {parser.held + len(data)} bytes")
            return
        parser.feed(data)
        commands = None
        if self.authenticated and not self._stepwise:
            commands = parser.commands()
        else:
            # Before AUTH, one command at a time (in _pump): the one after a successful AUTH
            # is parsed under the full limits, as in redis-server.
            self._stepwise = True
        if parser.held > limit:
            self.drop("query_buffer", f"query buffer over cache.resp.query_buffer_bytes ({limit}): {parser.held} bytes held")
            return
        if commands:
            if len(commands) == 1 and not self._backlog and (reply := self._alone(commands[0])) is not None:
                # One GET or SET arrived alone (a client that does not pipeline): served
                # without the backlog's machinery when nothing else is pending.
                transport = self.transport
                if transport is not None:
                    transport.write(reply)
                    if transport.get_write_buffer_size() or self._soft_since is not None:
                        self._check_output()
                return
            self._backlog.extend(commands)
        if not self._waiting and not self._output_blocked:
            self._pump()

    def _alone(self, args: list[bytes]) -> bytes | None:
        """The reply of a lone plain GET or SET on database 0 when the compiled path serves
        it and this connection has nothing else going on (no MULTI, no read at the origin,
        no output held back, no protocol error, no reply that could pass the output limit);
        else None, with nothing done (_pump runs it)."""
        if self.multi is not None or self.db or self._waiting or self._output_blocked or self._write_paused or self.parser.error is not None:
            return None
        count = len(args)
        server = self.server
        if count == 2 and (args[0] == b"GET" or args[0] == b"get"):
            if server.cache.largest_value_bytes + REPLY_OVERHEAD_BYTES > server.limits.fast_read_room:
                return None
            started = time.perf_counter_ns()
            reply = server.cache.serve_lone(args[1], None, self.encoder.null(), WRONGTYPE_REPLY)
            if reply is None:
                reply = self._served(b"GET", [args])  # the observer, an origin or a hook: one layer down
                if reply is not None:
                    self.last_command = LAST_GET
                return reply
            self.last_command, label = LAST_GET, "get"
        elif count == 3 and (args[0] == b"SET" or args[0] == b"set"):
            started = time.perf_counter_ns()
            if server.cache.serve_lone(args[1], args[2], b"", b"") is None:
                if not self._overwritten([args]):
                    return None
                self.last_command = LAST_SET
                return OK_REPLY
            self.last_command, label, reply = LAST_SET, "set", OK_REPLY
        else:
            return None
        usec = (time.perf_counter_ns() - started) // 1000
        server.record(label, usec, False)
        server.stats.total_commands += 1
        if 0 <= server.limits.slowlog_log_slower_than_usec <= usec:
            server.ops.executed(self, args, usec)
        return reply  # type: ignore[return-value]

    def _step(self) -> bool:
        """Parse the next command of a client not yet authenticated (all of them once it is)."""
        if self.authenticated:
            self._stepwise = False
            commands = self.parser.commands()
        else:
            commands = self.parser.commands(one=True)
        self._backlog.extend(commands)
        return bool(commands)

    def _pump(self) -> None:
        """Execute the backlog in order until it is empty, a read waits for the origin or a
        large command continues in slices.

        Replies go out whenever ``FLUSH_BYTES`` of them are pending, and the client's
        output limits are checked then, so a pipeline of large replies to a client that
        does not read is stopped at its limit, not built in full first."""
        out: list[bytes] = []
        pending = 0
        close = False
        backlog = self._backlog
        server = self.server
        slice_keys = server.limits.command_slice_keys
        fast_room = server.limits.fast_read_room
        if self._write_paused:
            self._block_on_output()
            return
        while backlog or (self._stepwise and self._step()):
            if pending > FLUSH_BYTES:
                self._finish(out, False)
                out = []
                pending = 0
                if self.closing:
                    return
                if self._write_paused:
                    self._block_on_output()
                    return
            args = backlog[0]
            if self.multi is not None:
                self.last_command = _last_command(args)
                reply, close = self._in_multi(backlog.popleft())
                if reply is EXEC_WAITS:
                    self._finish(out, False)
                    return  # resumed by _exec_ready, after the origin answered
                out.append(reply)
                pending += len(reply)
                if close:
                    backlog.clear()
                    break
                continue
            name = args[0].upper()
            if self.authenticated and name in SLICED and len(args) > 2 and not self._fits(name, len(args) - 1, pending):
                self.last_command = _last_command(args)
                backlog.popleft()
                self._finish(out, False)
                if not self.closing:
                    self._start_sliced(name, args)
                return
            if self.authenticated and ((name == b"GET" and len(args) == 2) or (name == b"MGET" and len(args) >= 2)):
                self.last_command = LAST_GET if name == b"GET" else LAST_MGET
                run = [backlog.popleft()]
                budget = 0  # no bound: the values fit whatever their lengths
                if name == b"GET":
                    # The name as clients send it first: .upper() allocates, once per command.
                    while backlog and len(run) < slice_keys and len(nxt := backlog[0]) == 2 and (nxt[0] == b"GET" or nxt[0].upper() == b"GET"):
                        run.append(backlog.popleft())
                    # Without a pause, at most the soft limit (half the hard one) is queued: a
                    # run that fits what is left of that needs no look at the queue.
                    if len(run) * (server.cache.largest_value_bytes + REPLY_OVERHEAD_BYTES) > fast_room - pending:
                        budget = self._read_budget(pending)
                        if budget <= 0:  # the replies pending first: write them, then see
                            self._finish(out, False)
                            out, pending = [], 0
                            if self.closing:
                                return
                            if self._write_paused:
                                backlog.extendleft(reversed(run))
                                self._block_on_output()
                                return
                            budget = max(1, self._read_budget(0))
                if not budget and not self.db and (reply := self._served(name, run)) is not None:
                    out.append(reply)
                    pending += len(reply)
                    continue
                before = len(out)
                if self._reads(name, run, out, budget):
                    return  # resumed by _read_done, after the origin answered
                pending += len(out[-1]) if len(out) == before + 1 else sum(map(len, out[before:]))
                continue
            if name == b"SET" and self.authenticated and len(args) == 3:
                self.last_command = LAST_SET
                run = [backlog.popleft()]
                while backlog and len(run) < slice_keys and len(nxt := backlog[0]) == 3 and (nxt[0] == b"SET" or nxt[0].upper() == b"SET"):
                    run.append(backlog.popleft())
                if not self.db and self._overwritten(run):
                    out.append(OK_REPLY * len(run))
                else:
                    out.extend(self._batch(run))  # a failing write falls back to _execute, command by command
                pending += 5 * len(run)
                continue
            reply, close = self._execute(backlog.popleft())
            out.append(reply)
            pending += len(reply)
            if close:
                backlog.clear()
                break
            if self._auth_penalty:
                self._auth_penalty = False
                self._finish(out, False)
                self._pause_after_auth_failure()
                return
        error = self.parser.error
        if error is not None and not close:
            # Answer what came before the violation, then the violation, then close.
            server.stats.protocol_errors += 1
            log.info("resp client %s closed: %s", self.peer, error)
            out.append(self.encoder.error(f"ERR {error}"))
            server.ops.count_error(out[-1])
            close = True
        self._finish(out, close)
        if self._write_paused and not self.closing:
            self._block_on_output()

    def _read_budget(self, pending: int) -> int:
        """Reply bytes one batch of reads may produce now: READ_BATCH_BYTES, and no more than
        fits under the client's hard output limit with what is already queued."""
        return min(READ_BATCH_BYTES, self.server.limits.output_buffer_bytes - self.output_bytes() - pending)

    def _fits(self, name: bytes, keys: int, pending: int) -> bool:
        """Whether a command naming ``keys`` keys runs in one go: at most command_slice_keys,
        and for MGET, even values as long as the longest ever written fit the read budget
        (else it streams: see _sliced_mget)."""
        if keys > self.server.limits.command_slice_keys:
            return False
        if name == b"MGET":
            return keys * (self.server.cache.largest_value_bytes + REPLY_OVERHEAD_BYTES) <= self._read_budget(pending)
        return True

    def _pause_after_auth_failure(self) -> None:
        """A failed AUTH holds this connection's next command back for a while."""
        if self.closing or self.transport is None:
            return
        self._waiting = True
        self.transport.pause_reading()
        asyncio.get_running_loop().call_later(self.server.limits.auth_failure_delay_seconds, self._resume)

    def _resume(self) -> None:
        self._waiting = False
        if self.closing or self.transport is None:
            return
        self.transport.resume_reading()
        self._pump()

    # -- commands executed in slices -----------------------------------------------------
    def _start_sliced(self, name: bytes, args: list[bytes]) -> None:
        """Run a large MSET/MGET/DEL/UNLINK/EXISTS a slice of keys at a time, yielding to
        the other clients between slices; this connection reads nothing meanwhile."""
        self._waiting = True
        self._held = sum(map(len, args)) + ARG_OVERHEAD_BYTES * len(args)
        if self.transport is not None:
            self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._sliced(name, args))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _sliced(self, name: bytes, args: list[bytes]) -> None:
        server = self.server
        label = name.decode().lower()
        started = time.perf_counter_ns()
        error = False
        reply: bytes | None = None
        try:
            if name == b"MGET":
                await self._sliced_mget(args[1:])
            elif name == b"MSET":
                if len(args) % 2 != 1:
                    raise err_args("mset")
                cache = self.cache
                cache.check_batch(args[1::2], args[2::2])
                await self._in_slices(args, 2, lambda part: cache.mset(list(zip(part[::2], part[1::2]))))
                reply = self.encoder.simple("OK")
            else:
                cache = self.cache
                counter = cache.exists if name == b"EXISTS" else cache.delete
                cache.check_batch(args[1:])
                total = [0]

                def count(part: list[bytes]) -> None:
                    total[0] += counter(part)

                await self._in_slices(args, 1, count)
                reply = self.encoder.integer(total[0])
        except CommandError as exc:
            reply, error = self.encoder.error(exc.message), True
        except OutOfMemoryError:
            reply, error = self.encoder.error("OOM command not allowed when used memory > 'maxmemory'."), True
        except WrongTypeError:
            reply, error = self.encoder.error(WRONGTYPE_MESSAGE), True
        except CacheError as exc:
            reply, error = self.encoder.error(f"ERR {exc}"), True
        except (KeyLengthError, ValueTooLargeError) as exc:
            reply, error = self.encoder.error(f"ERR {exc}"), True
        except Exception as exc:
            log.exception("resp command %s failed", label)
            reply, error = self.encoder.error(f"ERR internal error ({exc.__class__.__name__}); see the agent's log"), True
        finally:
            self._held = 0
        server.stats.total_commands += 1
        usec = (time.perf_counter_ns() - started) // 1000
        server.record(label, usec, error)
        server.ops.executed(self, args, usec, reply if error else None)
        self._waiting = False
        if self.closing or self.transport is None:
            return
        self._finish([reply] if reply is not None else [], False)
        if not self.closing:
            self.transport.resume_reading()
            self._pump()

    async def _in_slices(self, args: list[bytes], width: int, apply: Callable[[list[bytes]], None]) -> None:
        step = self.server.limits.command_slice_keys * width
        for start in range(1, len(args), step):
            if self.closing:
                return
            apply(args[start : start + step])
            await asyncio.sleep(0)

    async def _sliced_mget(self, keys: list[bytes]) -> None:
        """MGET streamed: the array header, then each slice's values as it is read; the
        next slice waits until the client has taken the last one in."""
        cache = self.cache
        transport = self.transport
        assert transport is not None
        cache.fp.check_lengths(keys)  # a bad key fails the whole command, before its reply starts
        transport.write(b"*%d\r\n" % len(keys))
        start = 0
        while start < len(keys) and not self.closing:
            part = keys[start : start + self.server.limits.command_slice_keys]
            values, hits = cache.lookup(part, max(1, self._read_budget(0)))
            part = part[: len(values)]
            start += len(part)
            if cache.needs_origin(values):
                loop = asyncio.get_running_loop()
                try:
                    await loop.run_in_executor(self.server.origin_pool(), cache.fill_from_origin, part, values)
                except Exception as exc:
                    log.warning("resp: reading through from the origin failed: %s: %s", exc.__class__.__name__, exc)
                    failed = self.encoder.error(f"ERR origin read failed ({exc.__class__.__name__}); see the agent's log")
                    encoded = b"".join(self.encoder.bulk(v) if v is not None else failed for v in _strings_only(values, self.server.cache))
                else:
                    encoded = self.encoder.bulk_items(_strings_only(values, self.server.cache))
            else:
                encoded = self.encoder.bulk_items(_strings_only(values, self.server.cache))
            cache.notify_reads(part, hits)
            if self.closing:
                return
            transport.write(encoded)
            self._check_output()
            await self._drain()

    async def _drain(self) -> None:
        """Yield to the other clients; wait while this client's socket is full."""
        if self._write_paused and not self.closing:
            if self._drained is None:
                self._drained = asyncio.Event()
            self._drained.clear()
            await self._drained.wait()
        else:
            await asyncio.sleep(0)

    # -- reads ------------------------------------------------------------------------------
    def _reads(self, name: bytes, run: list[list[bytes]], out: list[bytes], budget: int = 0) -> bool:
        """Serve a GET run or one MGET; True when it went to the origin (replies wait).

        ``budget`` > 0 bounds the bytes a GET run copies out: the GETs past it go back to
        the front of the backlog, for the next batch."""
        keys = [c[1] for c in run] if name == b"GET" else run[0][1:]
        started = time.perf_counter_ns()
        cache = self.cache
        if budget and len(keys) * (cache.largest_value_bytes + REPLY_OVERHEAD_BYTES) <= budget:
            budget = 0  # fits whatever the values: the lookup need not add their lengths up
        try:
            values, hits = cache.lookup(keys, budget) if budget > 0 else cache.lookup(keys)
        except Exception:
            # One bad key must fail only its own command: one by one.
            out.extend(self._execute(c)[0] for c in run)
            return False
        if len(values) < len(keys):
            self._backlog.extendleft(reversed(run[len(values) :]))
            del run[len(values) :]
            keys = keys[: len(values)]
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
        cache = self.cache
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

    def _served(self, name: bytes, run: list[list[bytes]]) -> bytes | None:
        """A GET run or one MGET on database 0 read and encoded in one compiled call
        (Cache.read_replies); None when it needs the general path (_reads): nothing was
        read then."""
        started = time.perf_counter_ns()
        cache = self.server.cache
        get = name == b"GET"
        keys = [c[1] for c in run] if get else run[0][1:]
        null = self.encoder.null()
        # A key holding a hash: WRONGTYPE for GET, nil within MGET's array (as in Redis).
        got = cache.read_replies(keys, null, WRONGTYPE_REPLY if get else null, not get)
        if got is None:
            return None
        self._count_reads(name, run, started)
        cache.notify_reads(keys, got[1])
        return got[0]

    def _count_reads(self, name: bytes, run: list[list[bytes]], started: int) -> None:
        """Command statistics and the slow log for a served GET run or MGET."""
        usec = (time.perf_counter_ns() - started) // 1000
        stats = self.server.stats
        slow = 0 <= self.server.limits.slowlog_log_slower_than_usec <= usec  # checked here: the hot path
        if name == b"GET":
            self.server.record("get", usec // len(run), False, len(run))
            if slow:
                self.server.ops.executed_run(self, run, usec // len(run))
            stats.total_commands += len(run)
            return
        self.server.record("mget", usec, False)
        if slow:
            self.server.ops.executed(self, run[0], usec)
        stats.total_commands += 1

    def _read_replies(self, name: bytes, run: list[list[bytes]], values: list[bytes | None], started: int) -> list[bytes]:
        self._count_reads(name, run, started)
        if name == b"GET":
            return self._get_replies(values)
        return [self.encoder.bulks(values)]  # a key holding a hash reads as nil, as in Redis

    def _get_replies(self, values: list[Any]) -> list[bytes]:
        """GET's replies for a run of values, joined in one part (one compiled call): a key
        holding a hash answers WRONGTYPE."""
        return [self.encoder.bulk_items(values, WRONGTYPE_REPLY)]

    def _origin_failed(self, name: bytes, run: list[list[bytes]], values: list[bytes | None], exc: BaseException) -> list[bytes]:
        """A failed read-through costs the commands that missed, never the connection."""
        error = self.encoder.error(f"ERR origin read failed ({exc.__class__.__name__}); see the agent's log")
        self.server.ops.count_error(error, sum(v is None for v in values) if name == b"GET" else 1)
        stats = self.server.stats
        if name == b"GET":
            stats.total_commands += len(run)
            for value in values:
                self.server.record("get", 0, value is None)
            wrong = self.encoder.error(WRONGTYPE_MESSAGE)
            return [wrong if v is WRONG_TYPE else self.encoder.bulk(v) if v is not None else error for v in values]
        stats.total_commands += 1
        self.server.record("mget", 0, True)
        return [error]

    def _finish(self, out: list[bytes], close: bool) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        if out:
            transport.write(b"".join(out) if len(out) > 1 else out[0])
        if close:
            self.close()
            return
        if transport.get_write_buffer_size() or self._soft_since is not None:
            self._check_output()  # nothing queued (the common case): no limit to check

    def _check_output(self, now: float | None = None) -> None:
        """Redis's client-output-buffer-limit: over the hard limit the client is closed at
        once; over the soft limit, once it has stayed there ``output_buffer_soft_seconds``."""
        size = self.output_bytes()
        limits = self.server.limits
        if size > limits.output_buffer_bytes:
            self.drop("output_buffer", f"output buffer over cache.resp.output_buffer_bytes ({limits.output_buffer_bytes}): {size} bytes queued")
        elif size >= limits.soft_output_bytes:
            now = time.monotonic() if now is None else now
            if self._soft_since is None:
                self._soft_since = now
            elif now - self._soft_since >= limits.output_buffer_soft_seconds:
                self.drop(
                    "output_buffer",
                    f"output buffer over cache.resp.output_buffer_soft_bytes ({limits.output_buffer_soft_bytes}) "
                    f"for {limits.output_buffer_soft_seconds:g} s",
                )
        else:
            self._soft_since = None

    # -- execution ------------------------------------------------------------------------
    def _overwritten(self, run: list[list[bytes]]) -> bool:
        """A SET run over distinct existing keys of database 0 that keep their size class,
        in one compiled call (Cache.overwrite_strings); False when it needs _batch."""
        started = time.perf_counter_ns()
        keys = [c[1] for c in run]
        if len(keys) > 1 and len(set(keys)) < len(keys):
            return False
        if not self.server.cache.overwrite_strings(keys, [c[2] for c in run]):
            return False
        usec = (time.perf_counter_ns() - started) // 1000 // len(run)
        self.server.record("set", usec, False, len(run))
        self.server.ops.executed_run(self, run, usec)
        self.server.stats.total_commands += len(run)
        return True

    def _batch(self, commands: list[list[bytes]]) -> list[bytes]:
        """A run of plain SETs in one write on the cache (GET runs are read by _served,
        _reads or, inside EXEC, _run_queued)."""
        started = time.perf_counter_ns()
        try:
            self.cache.mset([(c[1], c[2]) for c in commands])
        except Exception:
            # One bad key or value must fail only its own command: one by one.
            return [self._execute(c)[0] for c in commands]
        replies = [OK_REPLY] * len(commands)
        usec = (time.perf_counter_ns() - started) // 1000
        self.server.record("set", usec // len(commands), False, len(commands))
        self.server.ops.executed_run(self, commands, usec // len(commands))
        self.server.stats.total_commands += len(commands)
        return replies

    def _rejected(self, name: str, args: list[bytes]) -> bytes | None:
        """The error a command gets before it runs (unknown, arity, NOAUTH), or None."""
        spec = COMMANDS.get(name)
        if spec is None:
            refusal = unsupported.refusal(name)
            if refusal is not None:
                return self.encoder.error(refusal)
            shown = ""
            for arg in args[1:]:
                if len(shown) >= UNKNOWN_ARGS_SHOWN:
                    break
                shown += f"'{arg.decode('utf-8', 'replace')[: UNKNOWN_ARGS_SHOWN - len(shown)]}' "
            sent = args[0].decode("utf-8", "replace")[:UNKNOWN_ARGS_SHOWN]
            return self.encoder.error(f"ERR unknown command '{sent}', with args beginning with: {shown}")
        arity = spec[1]
        if (arity > 0 and len(args) != arity) or (arity < 0 and len(args) < -arity):
            return self.encoder.error(f"ERR wrong number of arguments for '{name}' command")
        if not self.authenticated and name not in ("auth", "hello", "quit"):
            return self.encoder.error("NOAUTH Authentication required.")
        return None

    def _in_multi(self, args: list[bytes]) -> tuple[Any, bool]:
        """Inside MULTI: queue the command (+QUEUED), or run MULTI/EXEC/DISCARD/WATCH/QUIT
        at once; a command refused now makes EXEC abort, as in Redis."""
        name = args[0].decode("utf-8", "replace").lower()
        if name in TRANSACTION_CONTROL:
            rejected = self._rejected(name, args)
            if rejected is None and name == "exec" and not self.multi_failed and self._needs_origin_first():
                return EXEC_WAITS, False
            if rejected is not None:
                self.server.stats.total_commands += 1
                self.server.ops.rejected(name, rejected)
                return rejected, False
            return self._execute(args)
        rejected = self._rejected(name, args)
        if rejected is not None:
            self.server.stats.total_commands += 1
            self.server.ops.rejected(name, rejected)
            self.multi_failed = True
            return rejected, False
        assert self.multi is not None
        self.multi.append(args)
        return QUEUED_REPLY, False

    def _needs_origin_first(self) -> bool:
        """EXEC with reads that miss and an origin to read them through: load them first, off
        the loop (a transaction never waits on the origin while it runs). Starts the load."""
        cache = self.cache
        if not (cache.read_through and cache.origin is not None) or not self.multi:
            return False
        keys = [key for command in self.multi for key in _read_keys(command)]
        if not keys:
            return False
        try:
            missing = [k for k, present in zip(keys, cache.contains_many(keys)) if not present]
        except Exception:
            return False  # a bad key: the command itself will say so
        if not missing:
            return False
        self._waiting = True
        if self.transport is not None:
            self.transport.pause_reading()
        loop = asyncio.get_running_loop()
        values: list[bytes | None] = [None] * len(missing)
        future = loop.run_in_executor(self.server.origin_pool(), cache.fill_from_origin, missing, values)
        future.add_done_callback(self._exec_ready)
        return True

    def _exec_ready(self, future: asyncio.Future[None]) -> None:
        self._waiting = False
        if self.closing:
            return
        if not future.cancelled() and future.exception() is not None:
            exc = future.exception()
            log.warning("resp: reading through from the origin before EXEC failed: %s: %s", exc.__class__.__name__, exc)
        reply, _close = self._execute([b"EXEC"])
        self._finish([reply], False)
        if not self.closing and self.transport is not None:
            self.transport.resume_reading()
            self._pump()

    def _execute(self, args: list[bytes]) -> tuple[bytes, bool]:
        server = self.server
        self.last_command = (args[0], args[1][:LAST_ARGUMENT_BYTES] if len(args) > 1 else b"")
        name = args[0].decode("utf-8", "replace").lower()
        server.stats.total_commands += 1
        spec = COMMANDS.get(name)
        if spec is None or not self.authenticated or (len(args) != spec[1] if spec[1] > 0 else len(args) < -spec[1]):
            rejected = self._rejected(name, args)
            if rejected is not None:
                server.ops.rejected(name, rejected)
                return rejected, False
        handler = COMMANDS[name][0]
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
        except WrongTypeError:
            reply, error = self.encoder.error(WRONGTYPE_MESSAGE), True
        except (KeyLengthError, ValueTooLargeError) as exc:
            reply, error = self.encoder.error(f"ERR {exc}"), True
        except CacheError as exc:
            reply, error = self.encoder.error(f"ERR {exc}"), True
        except Exception as exc:
            # A bug or a failing origin must cost this command only, never the connection.
            log.exception("resp command %s failed", name)
            reply, error = self.encoder.error(f"ERR internal error ({exc.__class__.__name__}); see the agent's log"), True
        usec = (time.perf_counter_ns() - started) // 1000
        server.record(name, usec, error)
        if error or 0 <= server.limits.slowlog_log_slower_than_usec <= usec:  # the common case calls nothing
            server.ops.executed(self, args, usec, reply if error else None)
        return reply, close


QUIT = object()
# CLIENT LIST's cmd= of the batched fast paths (no allocation per command).
LAST_GET = (b"get", b"")
LAST_MGET = (b"mget", b"")
LAST_SET = (b"set", b"")
LAST_ARGUMENT_BYTES = admin.SUBCOMMAND_MAX_BYTES


def _last_command(args: list[bytes]) -> tuple[bytes, bytes]:
    """What CLIENT LIST shows of a command: its name and the start of its first argument
    (a subcommand, for CLIENT LIST and the like)."""
    return args[0], args[1][:LAST_ARGUMENT_BYTES] if len(args) > 1 else b""


# _in_multi's answer for an EXEC that first reads misses through from the origin.
EXEC_WAITS = object()
QUEUED_REPLY = b"+QUEUED\r\n"
# Run at once inside MULTI rather than queued (as redis-server does).
TRANSACTION_CONTROL = frozenset(("exec", "discard", "multi", "watch", "quit"))


# ------------------------------------------------------------------------------ commands
def c_ping(conn: Connection, args: list[bytes]) -> bytes:
    if len(args) > 2:
        raise err_args("ping")
    return conn.encoder.bulk(args[1]) if len(args) == 2 else conn.encoder.simple("PONG")


def c_echo(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.bulk(args[1])


def c_quit(conn: Connection, args: list[bytes]) -> Any:
    return QUIT


def _db_index(conn: Connection, value: bytes, message: str = "ERR value is not an integer or out of range") -> int:
    index = int_arg(value, message)
    if not 0 <= index < conn.server.cache.databases:
        raise CommandError("ERR DB index is out of range")
    return index


def c_select(conn: Connection, args: list[bytes]) -> bytes:
    conn.db = _db_index(conn, args[1])
    return conn.encoder.simple("OK")


def c_swapdb(conn: Connection, args: list[bytes]) -> bytes:
    first = _db_index(conn, args[1], "ERR invalid first DB index")
    second = _db_index(conn, args[2], "ERR invalid second DB index")
    conn.server.cache.swap_databases(first, second)
    return conn.encoder.simple("OK")


def c_move(conn: Connection, args: list[bytes]) -> bytes:
    target = _db_index(conn, args[2])
    if target == conn.db:
        raise CommandError("ERR source and destination objects are the same")
    source, destination = conn.cache, conn.server.cache.database(target)
    with source.atomic():
        found = source.peek_typed(args[1])
        if found is None or destination.exists([args[1]]):
            return conn.encoder.integer(0)
        ttl = source.ttl_ms(args[1])
        encoding = source.encoding_override(args[1])
        source.delete([args[1]])
        destination.mset([(args[1], found[1])], ttl_ms=ttl if ttl > 0 else None, kind=found[0], encoding=encoding)
    return conn.encoder.integer(1)


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
        return conn.encoder.simple("OK")
    _check_credentials(conn, user, args[-1])
    return conn.encoder.simple("OK")


def _check_credentials(conn: Connection, user: bytes, password: bytes) -> None:
    """AUTH and HELLO ... AUTH: a source whose failure budget is spent is refused without
    the password being compared; each failure is counted, logged (rate-limited) and holds
    the connection's next command back."""
    server = conn.server
    if server.password is None:
        # As redis-server: the default user has no password (any is accepted); no other user exists.
        if user != b"default":
            raise CommandError("WRONGPASS invalid username-password pair or user is disabled.")
        return
    if not server.auth_allowed(conn.host):
        raise CommandError("ERR too many failed AUTH attempts from this address; wait and retry")
    if user != b"default" or not server.check_password(password):
        server.auth_failed(conn)
        raise CommandError("WRONGPASS invalid username-password pair or user is disabled.")
    if not conn.authenticated:
        conn.set_authenticated(True)


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
            _check_credentials(conn, args[i + 1], args[i + 2])
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
    value = _read(conn, [args[1]])[0]
    if value is WRONG_TYPE:
        raise WrongTypeError()
    return conn.encoder.bulk(value)


def _strings_only(values: list[Any], cache: Cache) -> list[bytes | None]:
    """MGET's values: a key that holds a hash reads as nil, as in Redis."""
    if not cache.typed_keys:  # no hash anywhere: no value can be one
        return values
    return [None if v is WRONG_TYPE else v for v in values]


def _read(conn: Connection, keys: list[bytes]) -> list[bytes | None]:
    """GET/MGET's values: read through from the origin, except inside EXEC, where the
    misses were read through before the transaction started."""
    cache = conn.cache
    if not conn.in_exec:
        return cache.mget(keys)
    values, hits = cache.lookup(keys)
    cache.notify_reads(keys, hits)
    return values


def _read_keys(command: list[bytes]) -> list[bytes]:
    """The keys a queued GET or MGET reads (none for other commands or a wrong arity)."""
    name = command[0].upper()
    if name == b"GET" and len(command) == 2:
        return [command[1]]
    if name == b"MGET" and len(command) >= 2:
        return command[1:]
    return []


# ------------------------------------------------------------------------------ transactions
def c_multi(conn: Connection, args: list[bytes]) -> bytes:
    if conn.multi is not None:
        raise CommandError("ERR MULTI calls can not be nested")
    conn.multi = []
    conn.multi_failed = False
    return conn.encoder.simple("OK")


def c_exec(conn: Connection, args: list[bytes]) -> bytes:
    """The queued commands' replies as one array; nil when a watched key changed,
    EXECABORT when queueing one of them failed. Nothing else runs meanwhile."""
    queued, failed = conn.multi, conn.multi_failed
    if queued is None:
        raise CommandError("ERR EXEC without MULTI")
    conn.multi, conn.multi_failed = None, False
    server = conn.server
    try:
        if failed:
            raise CommandError("EXECABORT Transaction discarded because of previous errors.")
        if conn.watching:
            _expire_watched(conn)
            if conn.dirty:
                return conn.encoder.null_array()
        replies: list[bytes] = []
        room = server.limits.output_buffer_bytes - conn.output_bytes()
        size = 0
        conn.in_exec = True
        try:
            # Every command runs (a transaction is applied whole), but replies past the
            # client's hard output limit are not kept: it is closed, as Redis would close it.
            # The cache's lock is held throughout: no prefetch or eviction from another
            # thread lands between two of its commands.
            with conn.cache.atomic():
                for reply in _run_queued(conn, queued):
                    if size <= room:
                        size += len(reply)
                        replies.append(reply)
        finally:
            conn.in_exec = False
        if size > room:
            conn.drop("output_buffer", f"EXEC reply over cache.resp.output_buffer_bytes ({server.limits.output_buffer_bytes}): {size}+ bytes")
            return b""
        # One reply per queued command (a run of GETs comes as one joined part).
        return b"*%d\r\n" % len(queued) + b"".join(replies)
    finally:
        if conn.watching:
            server.unwatch(conn)


def _run_queued(conn: Connection, queued: list[list[bytes]]) -> Iterator[bytes]:
    """A transaction's replies, in order: runs of plain GETs and SETs are one batch on the
    cache each, as in a pipeline (reads from the cache alone: EXEC read the misses through
    before), everything else one command at a time."""
    i, n = 0, len(queued)
    while i < n:
        command = queued[i]
        name = command[0].upper()
        width = 2 if name == b"GET" else 3 if name == b"SET" else 0
        j = i + 1
        if width and len(command) == width:
            while j < n and len(queued[j]) == width and queued[j][0].upper() == name:
                j += 1
        if j - i > 1:
            run = queued[i:j]
            if name == b"SET":
                yield from conn._batch(run)
                i = j
                continue
            cache, keys = conn.cache, [c[1] for c in run]
            started = time.perf_counter_ns()
            try:
                values, hits = cache.lookup(keys)
            except Exception:
                values = []  # a bad key: each GET answers for itself, below
            if values:
                yield from conn._read_replies(name, run, values, started)
                cache.notify_reads(keys, hits)
                i = j
                continue
        reply, _close = conn._execute(command)
        yield reply
        i += 1


def _expire_watched(conn: Connection) -> None:
    """A watched key whose TTL ran out since WATCH counts as changed (Redis 7.0): looking
    the watched keys up removes the expired ones, which tells the watchers."""
    by_db: dict[int, list[bytes]] = {}
    for db, key in conn.watched_keys:
        by_db.setdefault(db, []).append(key)
    for db, keys in by_db.items():
        conn.server.cache.database(db).contains_many(keys)


def c_discard(conn: Connection, args: list[bytes]) -> bytes:
    if conn.multi is None:
        raise CommandError("ERR DISCARD without MULTI")
    conn.multi, conn.multi_failed = None, False
    if conn.watching:
        conn.server.unwatch(conn)
    return conn.encoder.simple("OK")


def c_watch(conn: Connection, args: list[bytes]) -> bytes:
    if conn.multi is not None:
        raise CommandError("ERR WATCH inside MULTI is not allowed")
    cache = conn.cache
    keys = args[1:]
    hi, lo = cache.fingerprints(keys)
    cache.contains_many(keys)  # a key already expired goes now, before it is watched
    conn.server.watch(conn, list(zip(hi.tolist(), lo.tolist())))
    conn.watched_keys.extend((conn.db, k) for k in keys if (conn.db, k) not in conn.watched_keys)
    return conn.encoder.simple("OK")


def c_unwatch(conn: Connection, args: list[bytes]) -> bytes:
    if conn.watching:
        conn.server.unwatch(conn)
    return conn.encoder.simple("OK")


_TTL_OPTIONS = (b"EX", b"PX", b"EXAT", b"PXAT")


def _set_ttl_ms(unit: bytes, value: bytes, command: str = "set") -> int:
    """Milliseconds from now for SET's EX/PX/EXAT/PXAT, checked as redis-server does
    (``command`` names the command in the error: SETEX, PSETEX and GETEX share this).

    May be <= 0 for an EXAT/PXAT in the past (the key is then not kept).
    """
    number = int_arg(value)
    seconds = unit in (b"EX", b"EXAT")
    if number <= 0 or (seconds and number > INT64_MAX // 1000):
        raise CommandError(f"ERR invalid expire time in '{command}' command")
    ms = number * 1000 if seconds else number
    now_unix_ms = int(time.time() * 1000)
    if unit in (b"EX", b"PX"):
        if ms > INT64_MAX - now_unix_ms:
            raise CommandError(f"ERR invalid expire time in '{command}' command")
        return ms
    return ms - now_unix_ms


def c_set(conn: Connection, args: list[bytes]) -> bytes:
    """SET with Redis 7.0's option rules: NX/XX exclusive, one expiry unit (repeating the
    same one is allowed, the last wins), KEEPTTL not with an expiry."""
    cache = conn.cache
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
    return conn.encoder.bulks(_strings_only(_read(conn, args[1:]), conn.server.cache))


def c_mset(conn: Connection, args: list[bytes]) -> bytes:
    if len(args) % 2 != 1:
        raise err_args("mset")
    keys, values = args[1::2], args[2::2]
    # Distinct existing keys keeping their size class: one compiled call (else mset).
    if conn.db or len(set(keys)) < len(keys) or not conn.server.cache.overwrite_strings(keys, values):
        conn.cache.mset(list(zip(keys, values)))
    return OK_REPLY


def c_del(conn: Connection, args: list[bytes]) -> bytes:
    keys = args[1:]
    return conn.encoder.integer(conn.cache.delete(keys))


def c_exists(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(conn.cache.exists(args[1:]))


_EXPIRE_CONDITIONS = {b"NX": "nx", b"XX": "xx", b"GT": "gt", b"LT": "lt"}


def _expire(conn: Connection, args: list[bytes], unit_ms: int, absolute: bool = False) -> bytes:
    """EXPIRE and PEXPIRE; with ``absolute``, EXPIREAT and PEXPIREAT (the time is a Unix
    time in that unit, not a TTL; cache_core/resp/strings.py)."""
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
    number = int_arg(args[2])
    if unit_ms > 1 and not -(INT64_MAX // unit_ms) <= number <= INT64_MAX // unit_ms:
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    ttl_ms = number * unit_ms
    now_unix_ms = int(time.time() * 1000)
    if absolute:
        ttl_ms -= now_unix_ms
    elif ttl_ms > INT64_MAX - now_unix_ms:
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    when = next(iter(flags)) if len(flags) == 1 else ("xx" if "xx" in flags else None)
    if len(flags) == 2:  # XX with GT or LT: both must hold
        other = next(f for f in flags if f != "xx")
        if conn.cache.ttl_ms(args[1]) == -1:
            return conn.encoder.integer(0)
        when = other
    return conn.encoder.integer(1 if conn.cache.expire(args[1], ttl_ms, when) else 0)


def c_expire(conn: Connection, args: list[bytes]) -> bytes:
    return _expire(conn, args, 1000)


def c_pexpire(conn: Connection, args: list[bytes]) -> bytes:
    return _expire(conn, args, 1)


def c_ttl(conn: Connection, args: list[bytes]) -> bytes:
    ms = conn.cache.ttl_ms(args[1])
    return conn.encoder.integer(ms if ms < 0 else (ms + 500) // 1000)


def c_pttl(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(conn.cache.ttl_ms(args[1]))


def c_persist(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(1 if conn.cache.persist(args[1]) else 0)


def c_incr(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(conn.cache.incrby(args[1], 1))


def c_decr(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(conn.cache.incrby(args[1], -1))


def c_incrby(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(conn.cache.incrby(args[1], int_arg(args[2])))


def c_decrby(conn: Connection, args: list[bytes]) -> bytes:
    delta = int_arg(args[2])
    if delta == -(1 << 63):
        raise CommandError("ERR decrement would overflow")
    return conn.encoder.integer(conn.cache.incrby(args[1], -delta))


def c_dbsize(conn: Connection, args: list[bytes]) -> bytes:
    return conn.encoder.integer(conn.server.cache.dbsize(conn.db))


def c_flush(conn: Connection, args: list[bytes]) -> bytes:
    """FLUSHDB empties the selected database, FLUSHALL every one."""
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError("ERR syntax error")
    everything = args[0].lower() == b"flushall"
    conn.server.cache.flush(None if everything else conn.db)
    return conn.encoder.simple("OK")


def c_hint(conn: Connection, args: list[bytes]) -> bytes:
    if conn.server.hint is None:
        raise CommandError("ERR prefetching is not enabled on this server")
    return conn.encoder.integer(conn.server.hint(args[1:]))


def c_pstats(conn: Connection, args: list[bytes]) -> bytes:
    stats = conn.cache.snapshot()
    return conn.encoder.map({k: v for k, v in stats.__dict__.items()})


COMMANDS: dict[str, tuple[Callable[[Connection, list[bytes]], Any], int]] = {
    "ping": (c_ping, -1),
    "echo": (c_echo, 2),
    "hello": (c_hello, -1),
    "auth": (c_auth, -2),
    "select": (c_select, 2),
    "swapdb": (c_swapdb, 3),
    "move": (c_move, 3),
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
    "multi": (c_multi, 1),
    "exec": (c_exec, 1),
    "discard": (c_discard, 1),
    "watch": (c_watch, -2),
    "unwatch": (c_unwatch, 1),
    "predis.hint": (c_hint, -2),
    "predis.stats": (c_pstats, 1),
}
KEY_COMMANDS = {"get", "set", "mget", "mset", "del", "unlink", "exists", "expire", "pexpire", "ttl", "pttl", "persist", "incr", "decr", "incrby", "decrby", "watch", "move"}
MULTI_KEY = {"mget", "mset", "del", "unlink", "exists", "watch"}
for _module in (strings, keyspace, hashes):
    COMMANDS.update(_module.COMMANDS)
    KEY_COMMANDS |= _module.KEY_COMMANDS
    MULTI_KEY |= _module.MULTI_KEY_COMMANDS
COMMANDS.update(admin.COMMANDS)
