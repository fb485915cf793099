# SPDX-License-Identifier: Apache-2.0
"""Operations commands: CONFIG, COMMAND, CLIENT and INFO, the commands that redis-cli,
monitoring exporters and administrators send rather than applications.

They live apart from the data commands so that work on one does not collide with the other;
the server merges :data:`COMMANDS` into its own table. COMMAND describes that merged table,
which it reads at call time (the server module imports this one).
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cache_core.resp.args import CommandError, err_args

if TYPE_CHECKING:
    from cache_core.resp.server import Connection, RespServer

Handler = Callable[["Connection", list[bytes]], Any]


def c_config(conn: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"GET":
        if len(args) < 3:
            raise err_args("config|get")
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


def render_info(server: RespServer, wanted: set[str]) -> str:
    from cache_core.resp.server import REDIS_COMPAT_VERSION

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
        (
            "clients",
            [
                ("connected_clients", len(server.clients)),
                ("maxclients", server.limits.max_clients),
                ("client_recent_max_input_buffer", server.stats.max_input_buffer),
                ("client_recent_max_output_buffer", server.stats.max_output_buffer),
                ("blocked_clients", 0),
            ],
        )
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
                ("mem_clients_normal", server.stats.client_memory_bytes),
                ("maxmemory_clients", server.limits.max_client_memory_bytes),
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
                ("evicted_clients", server.stats.limit_disconnections.get("client_memory", 0)),
                ("client_query_buffer_limit_disconnections", server.stats.limit_disconnections.get("query_buffer", 0)),
                ("client_output_buffer_limit_disconnections", server.stats.limit_disconnections.get("output_buffer", 0)),
                ("acl_access_denied_auth", server.stats.auth_failures + server.stats.auth_throttled),
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


COMMANDS: dict[str, tuple[Handler, int]] = {
    "info": (c_info, -1),
    "config": (c_config, -2),
    "command": (c_command, -1),
    "client": (c_client, -2),
}
