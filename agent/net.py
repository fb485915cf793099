# SPDX-License-Identifier: Apache-2.0
"""Listen addresses, listening sockets and server TLS contexts, for every listener.

The HTTP API (:mod:`agent.http`), the Redis-protocol port (:mod:`agent.cache_service`)
and the CLI (which finds the agent from ``agent.http.listen``) share these; nothing here
imports aiohttp, so the CLI and the cache service start without it. ``SO_REUSEPORT`` is
deliberately not used, so a second agent on the same port fails with "address in use"
instead of silently sharing connections.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from typing import Any

from agent.errors import StartupError

LISTEN_BACKLOG = 128


def split_listen(value: str) -> tuple[str, int] | str:
    """``host:port`` (``[v6]:port`` for IPv6) split into its parts, or why it cannot be."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        return f"listen address {value!r}: expected host:port"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        return f"listen address {value!r}: port {port_text!r} is not a number"
    if not 0 <= port <= 65535:
        return f"listen address {value!r}: port must be 0..65535"
    return host, port


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6); raise :class:`StartupError` saying why not."""
    parsed = split_listen(value)
    if isinstance(parsed, str):
        raise StartupError(parsed)
    return parsed


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (a name is not resolved)."""
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
        sock.listen(LISTEN_BACKLOG)
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
