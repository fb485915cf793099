# SPDX-License-Identifier: Apache-2.0
"""The agent's HTTP API: /livez, /readyz, /status, /reload and plugin routes.

One aiohttp application with a single catch-all route and our own dispatch table, so
plugin routes can change on reload without restarting the server, and so that
authentication is decided in one place: every path needs a bearer token unless it is
listed in ``agent.auth.anonymous_routes`` (only ``/livez`` by default). Unknown paths
are authenticated too, so the route table cannot be probed anonymously.

Listening sockets are opened by us, which lets a reload bind a new address before the
old one is closed, and re-serve the same socket (a duplicate of it) with a new TLS
context: a bad address or certificate is rejected while the old listener keeps
serving. ``SO_REUSEPORT`` is deliberately not used, so a second agent on the same port
fails with "address in use" instead of silently sharing connections.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent.errors import AuthError, StartupError
from agent.security import TokenStore

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# aiohttp's own body limit is fixed when the app is built; the configured (reloadable)
# limit is enforced per request in the dispatcher, under this hard ceiling.
MAX_REQUEST_BYTES_LIMIT = 104857600


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
    """An HTTP route. ``handler`` is ``async def handler(request) -> Response``."""

    method: str
    path: str
    handler: Handler
    plugin: str = "agent"


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) and check both parts."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise StartupError(f"listen address {value!r}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise StartupError(f"listen address {value!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise StartupError(f"listen address {value!r}: port must be 0..65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_listener(listen: str) -> socket.socket:
    host, port = parse_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"listen address {listen!r}: cannot resolve {host!r} ({exc})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return sock


def make_ssl_context(tls: dict[str, Any], where: str = "agent.http.tls") -> ssl.SSLContext | None:
    """A server TLS context (TLS >= 1.2) for the ``tls`` section at config path ``where``."""
    if not tls.get("enabled"):
        return None
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not cert or not key:
        raise StartupError(f"{where}.enabled is true but cert_file and key_file are not both set")
    for label, path in (("cert_file", cert), ("key_file", key)):
        if not os.path.isfile(os.path.expanduser(path)):
            raise StartupError(f"{where}.{label}: {path} does not exist")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.get("min_version") == "1.3" else ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.path.expanduser(cert), os.path.expanduser(key))
    except (ssl.SSLError, OSError) as exc:
        raise StartupError(f"{where}: cannot load certificate/key: {exc}") from None
    return ctx


def tls_files_stamp(tls: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies the TLS files' current contents (renewed in place → different)."""
    if not tls.get("enabled"):
        return ()
    stamp: list[Any] = []
    for key in ("cert_file", "key_file"):
        path = tls.get(key)
        try:
            st = os.stat(os.path.expanduser(path)) if path else None
        except OSError:
            st = None
        stamp.append((path, st.st_ino, st.st_size, st.st_mtime_ns) if st else (path, None))
    return tuple(stamp)


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


class HttpServer:
    """Owns the aiohttp runner, the listening site and the dispatch table."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics
        self.routes: dict[tuple[str, str], Route] = {}
        self.anonymous: frozenset[str] = frozenset({"/livez"})
        self.tokens: TokenStore | None = None
        self.request_timeout = 10.0
        self.max_request_bytes = 1 << 20
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._sock: socket.socket | None = None
        self._listen: str | None = None
        self._tls_section: dict[str, Any] = {}
        self._tls_stamp: tuple[Any, ...] = ()
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
        ctx = make_ssl_context(tls)
        if section["listen"] == self._listen and self._sock is not None:
            sock = self._sock.dup()
        else:
            sock = open_listener(section["listen"])
        return SitePlan(sock, ctx, section["listen"], tls, tls_files_stamp(tls))

    async def start(self, plan: SitePlan) -> None:
        """Serve ``plan``; a site already running is stopped only after the new one is up."""
        sock, ctx = plan.sock, plan.ctx
        if self._runner is None:
            app = web.Application(client_max_size=MAX_REQUEST_BYTES_LIMIT)
            app.router.add_route("*", "/{tail:.*}", self._dispatch)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await self._runner.setup()
        old = self._site
        site = web.SockSite(self._runner, sock, ssl_context=ctx)
        await site.start()
        self._site = site
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
            await old.stop()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    # -- requests --------------------------------------------------------------------
    def _authenticate(self, request: web.Request) -> None:
        if request.path in self.anonymous:
            return
        if self.tokens is None:
            raise AuthError("no token store configured")
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("missing bearer token")
        self.tokens.verify(token.strip())

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        try:
            self._authenticate(request)
        except AuthError as exc:
            self.metrics["predis_agent_http_auth_failures_total"].inc()
            self._count("unauthenticated", 401)
            return error_response(401, str(exc), **{"WWW-Authenticate": 'Bearer realm="predis-agent"'})
        if request.content_length is not None and request.content_length > self.max_request_bytes:
            self._count("oversized", 413)
            return error_response(413, f"request body larger than agent.http.max_request_bytes ({self.max_request_bytes})")
        route = self.routes.get((request.method, path))
        if route is None and request.method == "HEAD":
            route = self.routes.get(("GET", path))
        if route is None:
            allowed = sorted(m for (m, p) in self.routes if p == path)
            if allowed:
                self._count(path, 405)
                return error_response(405, f"method {request.method} not allowed", Allow=", ".join(allowed))
            self._count("unknown", 404)
            return error_response(404, f"no route {path}")
        try:
            response = await asyncio.wait_for(route.handler(request), timeout=self.request_timeout)
        except asyncio.TimeoutError:
            log.warning("request %s %s timed out after %.1fs", request.method, path, self.request_timeout)
            response = error_response(503, "request timed out")
        except web.HTTPException as exc:
            response = error_response(exc.status, exc.reason)
        except Exception as exc:
            log.exception("handler for %s %s (%s) failed", request.method, path, route.plugin)
            response = error_response(500, f"internal error in {route.plugin}: {exc.__class__.__name__}")
        self._count(path, response.status)
        return response

    def _count(self, route: str, code: int) -> None:
        self.metrics["predis_agent_http_requests_total"].labels(route=route, code=str(code)).inc()
