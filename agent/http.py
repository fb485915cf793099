# SPDX-License-Identifier: Apache-2.0
"""The agent's HTTP API: /livez, /readyz, /status, /reload and plugin routes.

One aiohttp application with a single catch-all route and our own dispatch table, so
plugin routes can change on reload without restarting the server, and so that
authentication is decided in one place: every path needs a bearer token unless it is
listed in ``agent.auth.anonymous_routes`` (only ``/livez`` by default). Unknown paths
are authenticated too, so the route table cannot be probed anonymously. The console's paths
(``/dashboard``, ``/api/v1/``) are judged by a :class:`ConsoleGate` instead, which also takes
a session cookie, checks every POST for cross-site requests and CSRF tokens and adds the
console's security headers.

Listening sockets are opened by us (:mod:`agent.net`, shared with the Redis port), which lets a reload bind a new address before the
old one is closed, and re-serve the same socket (a duplicate of it) with a new TLS
context: a bad address or certificate is rejected while the old listener keeps
serving. ``SO_REUSEPORT`` is deliberately not used, so a second agent on the same port
fails with "address in use" instead of silently sharing connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from agent import fdlimits
from agent.errors import AuthError
from agent.logs import RateLimitedLog, RateLimitFilter
from agent.net import is_loopback, make_ssl_context, open_listener, tls_files_stamp
from agent.security import TokenRecord, TokenStore, scope_allows

log = logging.getLogger(__name__)
# aiohttp's own messages about connections (a malformed request is logged with a traceback,
# once per request): given to its request handlers, rate-limited, client errors in one line.
protocol_log = logging.getLogger(f"{__name__}.protocol")
protocol_log.addFilter(RateLimitFilter(brief=(HttpProcessingError,)))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# aiohttp's own body limit is fixed when the app is built; the configured (reloadable)
# limit is enforced per request in the dispatcher, under this hard ceiling.
MAX_REQUEST_BYTES_LIMIT = 104857600
# The answer to a connection refused for the connection cap or the descriptor reserve
# (plain HTTP only: a TLS client gets no bytes before its handshake, so it is just closed).
REFUSED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 35\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b'{"error": "too many connections"}\r\n'
)


class ConsoleGate(Protocol):
    """What the server asks of the console (:class:`agent.console.gate.ConsoleGate`)."""

    def covers(self, path: str) -> bool: ...
    def authenticate(self, request: web.Request, tokens: TokenStore) -> None: ...
    def refused(self, request: web.Request, exc: AuthError) -> web.Response: ...
    async def check_post(self, request: web.Request) -> web.Response | None: ...
    def secure(self, response: web.StreamResponse) -> None: ...


@dataclass(frozen=True)
class SitePlan:
    """A dry-built listener: bound socket and TLS context, not serving yet."""

    sock: socket.socket
    ctx: ssl.SSLContext | None
    listen: str
    tls: dict[str, Any]
    stamp: tuple[Any, ...]


@dataclass(frozen=True)
class Route:
    """An HTTP route. ``handler`` is ``async def handler(request) -> Response``; ``scope`` is
    the least token scope that may call it (``metrics``, ``read`` or ``admin``: see
    :mod:`agent.security`). The console's paths are judged by its gate instead."""

    method: str
    path: str
    handler: Handler
    plugin: str = "agent"
    scope: str = "admin"
    # False: the handler bounds its own time, and agent.http.request_timeout_seconds does
    # not cut it short (a reload: its dry-build is bounded by agent.reload.timeout_seconds,
    # waiting for a sink it turned off earlier by agent.shutdown_timeout_seconds).
    bounded: bool = True


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, indent=2, sort_keys=True, default=str) + "\n",
        status=status,
        content_type="application/json",
    )


def error_response(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(
        text=json.dumps({"error": message}) + "\n", status=status, content_type="application/json", headers=headers
    )


@dataclass
class _Listener:
    """A listening socket the server accepts on itself, so that the connection cap and the
    descriptor reserve are checked before aiohttp (or a TLS handshake) costs anything."""

    sock: socket.socket
    ctx: ssl.SSLContext | None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class _Connection(asyncio.Protocol):
    """One accepted connection, in front of aiohttp's request handler.

    Every protocol event is forwarded to the handler; this object adds the read deadline
    aiohttp lacks: from the moment the connection opens, and again from the end of each
    response, the client has ``agent.http.header_timeout_seconds`` to complete the headers
    of its next request (a body still unread from the last request counts against that
    time), or the connection is closed. While a request is being handled, the deadline
    is off: the body has ``body_timeout_seconds`` and the handler ``request_timeout_seconds``.
    """

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._received = False
        self._in_request = False

    # -- asyncio.Protocol, forwarded -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: asyncio's, or another loop's (uvloop's do not derive from
        # asyncio.Transport but have its methods).
        self.transport = stream = cast(asyncio.Transport, transport)
        self.inner = self.server._request_handler()
        if self.inner is None:  # the server stopped while a TLS handshake ran
            stream.abort()
            return
        self.server._opened(self)
        self.arm()
        self.inner.connection_made(stream)

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        self.server._release(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)
        self.transport = None

    # -- the read deadline -------------------------------------------------------------
    def arm(self) -> None:
        """Start the header deadline (at open, and at the end of each request)."""
        self.disarm()
        self._received = False
        self._timer = asyncio.get_running_loop().call_later(self.server.header_timeout, self._expired)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def request_started(self) -> None:
        self.disarm()
        self._in_request = True

    def request_finished(self) -> None:
        self._in_request = False
        if self.transport is not None and not self.transport.is_closing():
            self.arm()

    def _expired(self) -> None:
        self._timer = None
        if self._in_request or self.transport is None:
            return
        # "idle": not one byte of a next request came; "header": some did, not all headers.
        self.server._timed_out("header" if self._received else "idle")
        # abort, not close: a response the client does not read must not keep the socket.
        self.transport.abort()


class HttpServer:
    """Owns the aiohttp runner, the listening socket, its accept loop and the dispatch table.

    Connections are accepted here (not by aiohttp's site): past ``max_connections`` open
    connections, or while no more than ``agent.reserved_descriptors`` plus
    ``extra_reserved_descriptors`` descriptors are left, a new one is answered 503 and
    closed at once (closed without an answer on TLS). The Redis port stops at
    ``agent.reserved_descriptors`` alone, so an HTTP flood gives up first and cannot take
    the descriptors the Redis port, origin reads and exporters need. A failed ``accept()`` (EMFILE, ...) is counted and logged once per
    ``agent.log.rate_limit_seconds``, and the listener retries after ``accept_retry_seconds``.
    """

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics
        self.routes: dict[tuple[str, str], Route] = {}
        self.anonymous: frozenset[str] = frozenset({"/livez"})
        self.tokens: TokenStore | None = None
        self.console: ConsoleGate | None = None
        self.request_timeout = 10.0
        self.max_request_bytes = 1 << 20
        self.max_connections = 256
        self.header_timeout = 10.0
        self.body_timeout = 30.0
        self.accept_retry = 1.0
        self.extra_reserved_descriptors = 128
        self._runner: web.AppRunner | None = None
        self._listener: _Listener | None = None
        self._sock: socket.socket | None = None
        self._listen: str | None = None
        self._tls_section: dict[str, Any] = {}
        self._tls_stamp: tuple[Any, ...] = ()
        # Admitted connections, TLS handshakes in progress included (they hold a descriptor).
        self._live: set[_Connection] = set()
        self._by_transport: dict[asyncio.BaseTransport, _Connection] = {}
        self._handshakes: set[asyncio.Task[None]] = set()
        self._refused_log = RateLimitedLog(log)
        self._accept_log = RateLimitedLog(log)
        self.address: str | None = None
        self.tls = False

    # -- set-up ------------------------------------------------------------------
    def set_routes(self, routes: list[Route]) -> None:
        table: dict[tuple[str, str], Route] = {}
        for route in routes:
            key = (route.method.upper(), route.path)
            if key in table:
                log.error("route %s %s from %s ignored: already served by %s", *key, route.plugin, table[key].plugin)
                continue
            table[key] = route
        self.routes = table

    def configure(self, section: dict[str, Any], auth: dict[str, Any], tokens: TokenStore) -> None:
        self.anonymous = frozenset(auth.get("anonymous_routes", ["/livez"]))
        self.tokens = tokens
        self.request_timeout = float(section["request_timeout_seconds"])
        self.max_request_bytes = int(section["max_request_bytes"])
        self.max_connections = int(section["max_connections"])
        self.header_timeout = float(section["header_timeout_seconds"])
        self.body_timeout = float(section["body_timeout_seconds"])
        self.accept_retry = float(section["accept_retry_seconds"])
        self.extra_reserved_descriptors = int(section["extra_reserved_descriptors"])

    def needs_rebind(self, section: dict[str, Any]) -> bool:
        """True when ``section`` asks for another address, TLS setting or renewed TLS files."""
        tls = dict(section.get("tls", {}))
        return (
            section["listen"] != self._listen
            or tls != self._tls_section
            or tls_files_stamp(tls) != self._tls_stamp
        )

    async def prepare_site(self, section: dict[str, Any]) -> SitePlan:
        """Dry-build: the TLS context and a bound socket for ``section``. Nothing is served yet."""
        tls = dict(section.get("tls", {}))
        ctx = await asyncio.get_running_loop().run_in_executor(None, make_ssl_context, tls)  # reads files: off the loop
        if section["listen"] == self._listen and self._sock is not None:
            sock = self._sock.dup()
        else:
            sock = open_listener(section["listen"])
        return SitePlan(sock, ctx, section["listen"], tls, tls_files_stamp(tls))

    async def start(self, plan: SitePlan) -> None:
        """Serve ``plan``; a listener already running is stopped only after the new one is up."""
        sock, ctx = plan.sock, plan.ctx
        if self._runner is None:
            app = web.Application(client_max_size=MAX_REQUEST_BYTES_LIMIT)
            app.router.add_route("*", "/{tail:.*}", self._dispatch)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False, logger=protocol_log)
            await self._runner.setup()
        old = self._listener
        sock.setblocking(False)
        listener = _Listener(sock, ctx)
        listener.task = asyncio.create_task(self._accept_loop(listener), name=f"http-accept {plan.listen}")
        self._listener = listener
        self._sock = sock
        self._listen = plan.listen
        self._tls_section = plan.tls
        self._tls_stamp = plan.stamp
        host, port = sock.getsockname()[:2]
        scheme = "https" if ctx else "http"
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{scheme}://{shown}:{port}"
        self.tls = ctx is not None
        if not is_loopback(host):
            log.warning("HTTP API listens on non-loopback address %s; keep TLS and tokens on", self.address)
        if old is not None:
            await self._close_listener(old)

    async def stop(self) -> None:
        if self._listener is not None:
            await self._close_listener(self._listener)
            self._listener = None
        for task in list(self._handshakes):
            task.cancel()
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @staticmethod
    async def _close_listener(listener: _Listener) -> None:
        # The accept task is cancelled and awaited first, so the loop no longer watches the
        # descriptor when it is closed (a closed number can be reused at once).
        if listener.task is not None:
            listener.task.cancel()
            await asyncio.gather(listener.task, return_exceptions=True)
        listener.sock.close()

    # -- connections -------------------------------------------------------------
    @property
    def open_connections(self) -> int:
        """Connections admitted and not closed yet (TLS handshakes in progress included)."""
        return len(self._live)

    async def _accept_loop(self, listener: _Listener) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _addr = await loop.sock_accept(listener.sock)
            except ConnectionAbortedError:
                continue  # the client gave up before we accepted: nothing to count
            except OSError as exc:
                fdlimits.count_accept_error(self.metrics, exc)
                self._accept_log.warning(
                    "HTTP accept() on %s failed: %s; retrying every %gs",
                    self.address,
                    exc.strerror or exc,
                    self.accept_retry,
                )
                await asyncio.sleep(self.accept_retry)
                continue
            try:
                self._admit(conn, listener)
            except Exception:
                # Whatever went wrong with this one connection, the listener keeps accepting.
                conn.close()
                self._accept_log.error("HTTP connection to %s dropped: admitting it failed", self.address, exc_info=True)

    def _refusal(self, conn: socket.socket) -> str | None:
        if len(self._live) >= self.max_connections:
            return "max_connections"
        if not fdlimits.within_reserve(conn.fileno(), self.extra_reserved_descriptors):
            return "descriptors"
        return None

    def _admit(self, conn: socket.socket, listener: _Listener) -> None:
        reason = self._refusal(conn)
        if reason is not None:
            self.metrics["predis_agent_http_connections_refused_total"].labels(reason=reason).inc()
            self._refused_log.warning(
                "HTTP connection to %s refused: %s (%d open, agent.http.max_connections %d; descriptor %d, "
                "ceiling %d: open-file limit less agent.reserved_descriptors %d and "
                "agent.http.extra_reserved_descriptors %d)",
                self.address,
                "connection cap reached" if reason == "max_connections" else "descriptor reserve reached",
                len(self._live),
                self.max_connections,
                conn.fileno(),
                fdlimits.descriptor_ceiling(self.extra_reserved_descriptors),
                fdlimits.reserved(),
                self.extra_reserved_descriptors,
            )
            if listener.ctx is None:
                try:
                    conn.send(REFUSED_RESPONSE)
                except OSError:
                    pass  # the client is gone or its window is full: closing is the answer
            conn.close()
            return
        proto = _Connection(self)
        self._live.add(proto)
        self.metrics["predis_agent_http_connections"].inc()
        task = asyncio.get_running_loop().create_task(self._connect(proto, conn, listener.ctx))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _connect(self, proto: _Connection, conn: socket.socket, ctx: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            if ctx is None:
                await loop.connect_accepted_socket(lambda: proto, conn)
            else:
                await loop.connect_accepted_socket(
                    lambda: proto, conn, ssl=ctx, ssl_handshake_timeout=self.header_timeout
                )
        except ConnectionAbortedError:
            # asyncio aborts a TLS handshake that outlives ssl_handshake_timeout this way.
            self._timed_out("handshake")
            self._release(proto)
        except (OSError, ValueError):
            # A failed handshake or a client gone already; asyncio closed the socket.
            self._release(proto)
        except asyncio.CancelledError:
            self._release(proto)
            raise

    def _request_handler(self) -> asyncio.Protocol | None:
        server = self._runner.server if self._runner is not None else None
        return server() if server is not None else None

    def _opened(self, conn: _Connection) -> None:
        assert conn.transport is not None
        self._by_transport[conn.transport] = conn

    def _release(self, conn: _Connection) -> None:
        if conn in self._live:
            self._live.discard(conn)
            self.metrics["predis_agent_http_connections"].dec()
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)

    def _timed_out(self, phase: str) -> None:
        self.metrics["predis_agent_http_timeouts_total"].labels(phase=phase).inc()

    # -- requests --------------------------------------------------------------------
    def _authenticate(self, request: web.Request) -> TokenRecord | None:
        """The presented token's record; None for an anonymous route or a console path (its
        gate decides, scopes included). Raises :class:`AuthError`."""
        if request.path in self.anonymous:
            return None
        if self.tokens is None:
            raise AuthError("no token store configured")
        if self.console is not None and self.console.covers(request.path):
            self.console.authenticate(request, self.tokens)
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("missing bearer token")
        return self.tokens.verify(token.strip())

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        conn = self._by_transport.get(request.transport) if request.transport is not None else None
        if conn is not None:
            conn.request_started()
        try:
            return await self._dispatch_request(request)
        finally:
            if conn is not None:
                conn.request_finished()

    async def _dispatch_request(self, request: web.Request) -> web.StreamResponse:
        console = self.console if self.console is not None and self.console.covers(request.path) else None
        response = await self._answer(request, console)
        if console is not None:
            console.secure(response)
        return response

    async def _answer(self, request: web.Request, console: ConsoleGate | None) -> web.StreamResponse:
        path = request.path
        try:
            record = self._authenticate(request)
        except AuthError as exc:
            self.metrics["predis_agent_http_auth_failures_total"].inc()
            if console is not None:
                refusal = console.refused(request, exc)
                self._count("unauthenticated", refusal.status)
                return _unread_body_closes(request, refusal)
            self._count("unauthenticated", 401)
            return _unread_body_closes(
                request, error_response(401, str(exc), **{"WWW-Authenticate": 'Bearer realm="predis-agent"'})
            )
        if request.content_length is not None and request.content_length > self.max_request_bytes:
            return self._too_large(request)
        route = self.routes.get((request.method, path))
        if route is None and request.method == "HEAD":
            route = self.routes.get(("GET", path))
        if route is None:
            allowed = sorted(m for (m, p) in self.routes if p == path)
            if allowed:
                self._count(path, 405)
                return _unread_body_closes(
                    request, error_response(405, f"method {request.method} not allowed", Allow=", ".join(allowed))
                )
            self._count("unknown", 404)
            return _unread_body_closes(request, error_response(404, f"no route {path}"))
        if record is not None and not scope_allows(record.scope, route.scope):
            self._count(path, 403)
            who = f"{record.name!r}" if record.name else f"id {record.id}"
            return _unread_body_closes(
                request,
                error_response(
                    403,
                    f"token {who} has scope {record.scope!r}; {request.method} {path} needs scope {route.scope!r} "
                    f"(create one with `predis-agent token create --scope {route.scope}`)",
                ),
            )
        if request.body_exists:
            # Read here, whatever the transfer encoding, under the configured limit and
            # deadline; handlers get the clone, whose read() returns the bytes already read.
            request = request.clone(client_max_size=self.max_request_bytes)
            refused = await self._read_body(request)
            if refused is not None:
                return refused
        if console is not None and request.method == "POST":
            forbidden = await console.check_post(request)
            if forbidden is not None:
                self._count(path, forbidden.status)
                return forbidden
        try:
            response = await asyncio.wait_for(route.handler(request), timeout=self.request_timeout if route.bounded else None)
        except TimeoutError:
            log.warning("request %s %s timed out after %.1fs", request.method, path, self.request_timeout)
            response = error_response(503, "request timed out")
        except web.HTTPException as exc:
            response = error_response(exc.status, exc.reason)
        except Exception as exc:
            log.exception("handler for %s %s (%s) failed", request.method, path, route.plugin)
            response = error_response(500, f"internal error in {route.plugin}: {exc.__class__.__name__}")
        self._count(path, response.status)
        return response

    async def _read_body(self, request: web.Request) -> web.StreamResponse | None:
        """Read the body under ``max_request_bytes`` and ``body_timeout_seconds``; None when it
        was read, else the error response (the connection closes after it)."""
        try:
            async with asyncio.timeout(self.body_timeout):
                await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(request)
        except TimeoutError:
            self._timed_out("body")
            self._count("body_timeout", 408)
            response = error_response(
                408, f"request body not received within agent.http.body_timeout_seconds ({self.body_timeout:g}s)"
            )
            response.force_close()
            # The client stalls: send the answer and close now instead of waiting for more.
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
            return response
        except (web.RequestPayloadError, ConnectionError) as exc:
            self._count("bad_body", 400)
            response = error_response(400, f"malformed request body: {exc}")
            response.force_close()
            return response
        return None

    def _too_large(self, request: web.Request) -> web.StreamResponse:
        self._count("oversized", 413)
        return _unread_body_closes(
            request,
            error_response(413, f"request body larger than agent.http.max_request_bytes ({self.max_request_bytes})"),
        )

    def _count(self, route: str, code: int) -> None:
        self.metrics["predis_agent_http_requests_total"].labels(route=route, code=str(code)).inc()


def _unread_body_closes(request: web.Request, response: web.Response) -> web.Response:
    """Mark ``response`` as the connection's last when the request's body was not read.

    aiohttp then reads and drops what is left of the body (bounded by the header
    deadline that starts with the response) before it closes, so the client gets the
    answer instead of a reset.
    """
    if request.body_exists and not request.content.at_eof():
        response.force_close()
    return response
