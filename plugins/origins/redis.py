# SPDX-License-Identifier: Apache-2.0
"""The ``redis`` origin: string values of a Redis server (or cluster proxy), read through on a miss.

A key is looked up as the very same bytes in the origin (binary-safe: nothing is decoded,
nothing is prefixed), with ``MGET`` in chunks of ``max_batch`` keys. A key that holds no
string (absent, or a list, hash ...) is a miss, as ``MGET`` answers nil for it; a value
over ``max_value_bytes`` is a miss counted in ``oversized``.

redis-py talks RESP2 (``protocol=2``) over a connection pool of ``max_connections``;
its own retries are off and ``timeout_seconds`` is the connect and the socket timeout,
so :class:`plugins.origins.guard.OriginGuard` alone decides what is retried (connection
errors and timeouts) and when the circuit breaker opens. An authentication failure or an
error reply is not retried but counts towards the breaker.

The password is a writeOnly secret (``plugins.redis_origin.password``, a secret
reference) and takes the place of any password in ``url``; neither the URL nor the
password is logged or shown: status shows only host, port and database.

Counters and the breaker state are in :meth:`RedisOrigin.status`, published into the
agent's ``/status`` as ``components.origin_redis``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agent.api import Rule, hookimpl
from plugins.origins.guard import (
    GuardSettings,
    OriginGuard,
    Outcome,
    guard_schema_properties,
)
from plugins.origins.rules import origin_needs

log = logging.getLogger(__name__)

PLUGIN_NAME = "redis_origin"
ORIGIN_NAME = "redis"
STATUS_COMPONENT = "origin_redis"
DEFAULT_URL = ""
DEFAULT_TIMEOUT_SECONDS = 1.0
MIN_TIMEOUT_SECONDS = 0.01
MAX_TIMEOUT_SECONDS = 300.0
DEFAULT_MAX_BATCH = 500
MIN_MAX_BATCH = 1
MAX_MAX_BATCH = 100_000
DEFAULT_MAX_VALUE_BYTES = 1 << 20
MIN_MAX_VALUE_BYTES = 1
MAX_MAX_VALUE_BYTES = 1 << 30
DEFAULT_MAX_CONNECTIONS = 4
MIN_MAX_CONNECTIONS = 1
MAX_MAX_CONNECTIONS = 1024
URL_PATTERN = "^((rediss?|unix)://.+)?$(?!\\n)"


def config_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of ``plugins.redis_origin``; the host adds ``enabled``."""
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Origin that reads string values from a Redis server with MGET when the cache misses.",
        "properties": {
            "url": {
                "type": "string",
                "pattern": URL_PATTERN,
                "maxLength": 2048,
                "default": DEFAULT_URL,
                "description": (
                    "Where the origin is: redis://host:port/db, rediss:// for TLS, or unix:///path.sock?db=0. "
                    "Empty: the origin is not configured and nothing is registered. Put the password in password, "
                    "not here."
                ),
            },
            "password": {
                "type": ["string", "null"],
                "writeOnly": True,
                "default": None,
                "description": "Password (AUTH) of the origin, as a secret reference; replaces any password in url. null: none.",
            },
            "timeout_seconds": {
                "type": "number",
                "minimum": MIN_TIMEOUT_SECONDS,
                "maximum": MAX_TIMEOUT_SECONDS,
                "default": DEFAULT_TIMEOUT_SECONDS,
                "description": (
                    "Connect timeout and socket timeout of one MGET. The cache waits for read-through, so keep it short."
                ),
            },
            "max_batch": {
                "type": "integer",
                "minimum": MIN_MAX_BATCH,
                "maximum": MAX_MAX_BATCH,
                "default": DEFAULT_MAX_BATCH,
                "description": "Most keys in one MGET; a larger batch of misses is sent as several.",
            },
            "max_value_bytes": {
                "type": "integer",
                "minimum": MIN_MAX_VALUE_BYTES,
                "maximum": MAX_MAX_VALUE_BYTES,
                "default": DEFAULT_MAX_VALUE_BYTES,
                "description": (
                    "Largest value loaded, in bytes; a larger one is a miss (counted in oversized, logged once per key). "
                    "Keep it at or below cache.max_value_bytes."
                ),
            },
            "max_connections": {
                "type": "integer",
                "minimum": MIN_MAX_CONNECTIONS,
                "maximum": MAX_MAX_CONNECTIONS,
                "default": DEFAULT_MAX_CONNECTIONS,
                "description": "Size of the connection pool to the origin.",
            },
            **guard_schema_properties(),
        },
    }


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt may succeed: connection errors, timeouts, a loading server."""
    from redis import exceptions as rex

    if isinstance(exc, rex.AuthenticationError):
        return False  # a ConnectionError subclass, but retrying cannot fix a wrong password
    return isinstance(exc, (rex.ConnectionError, rex.TimeoutError))


def _reveal(value: Any) -> str | None:
    if value is None:
        return None
    reveal = getattr(value, "reveal", None)
    return str(reveal()) if callable(reveal) else str(value)


class RedisOrigin:
    """Loads values from a Redis server with MGET, ``max_batch`` keys at a time."""

    name = ORIGIN_NAME

    def __init__(
        self,
        url: str,
        *,
        password: Any = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        guard: GuardSettings | None = None,
        agent: Any = None,
        client: Any = None,
    ) -> None:
        if not url:
            raise ValueError("plugins.redis_origin.url must name a Redis server")
        for key, value, low, high in (
            ("timeout_seconds", float(timeout_seconds), MIN_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS),
            ("max_batch", int(max_batch), MIN_MAX_BATCH, MAX_MAX_BATCH),
            ("max_value_bytes", int(max_value_bytes), MIN_MAX_VALUE_BYTES, MAX_MAX_VALUE_BYTES),
            ("max_connections", int(max_connections), MIN_MAX_CONNECTIONS, MAX_MAX_CONNECTIONS),
        ):
            if not low <= value <= high:
                raise ValueError(f"plugins.redis_origin.{key} must be {low:g} … {high:g}, found {value!r}")
        self.max_batch = int(max_batch)
        self.max_value_bytes = int(max_value_bytes)
        self.agent = agent
        self.endpoint = "?"
        self.guard = OriginGuard(ORIGIN_NAME, guard, transient=is_transient, on_change=self._publish)
        if client is None:
            client = self._make_client(url, _reveal(password), float(timeout_seconds), int(max_connections))
        self.client = client
        self._publish()

    def _make_client(self, url: str, password: str | None, timeout: float, max_connections: int) -> Any:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise RuntimeError("the redis origin needs the 'redis' package (pip install redis)") from exc
        try:
            pool = redis.ConnectionPool.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                protocol=2,
                max_connections=max_connections,
                retry=Retry(NoBackoff(), 0),  # the guard retries; redis-py must not retry on its own
                decode_responses=False,
            )
        except ValueError as exc:
            # The message may quote the URL (and a password in it): name the problem only.
            raise ValueError(f"plugins.redis_origin.url is not a Redis URL ({exc.__class__.__name__})") from None
        if password is not None:
            pool.connection_kwargs["password"] = password  # from_url lets the URL's password win
        kw = pool.connection_kwargs
        self.endpoint = str(kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}") + f"/{kw.get('db', 0)}"
        return redis.Redis(connection_pool=pool)

    # ------------------------------------------------------------------ public
    def load_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values for ``keys`` in order (None for a miss or an unreachable origin)."""
        return self.guard.load_many(keys, self._mget, chunk_size=self.max_batch)

    def stats(self) -> dict[str, int]:
        return self.guard.stats()

    def status(self) -> dict[str, Any]:
        return {"origin": ORIGIN_NAME, "endpoint": self.endpoint, **self.guard.status()}

    def close(self) -> None:
        """Close the pooled connections."""
        close = getattr(self.client, "close", None)
        if callable(close):
            close()
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()

    # ------------------------------------------------------------------ one chunk
    def _mget(self, keys: list[bytes]) -> list[tuple[Outcome, bytes | None]]:
        values = self.client.mget(keys)
        if len(values) != len(keys):
            raise RuntimeError(f"MGET of {len(keys)} keys answered {len(values)} values")
        out: list[tuple[Outcome, bytes | None]] = []
        for value in values:
            if value is None:
                out.append((Outcome.MISS, None))
            elif not isinstance(value, (bytes, bytearray)):
                out.append((Outcome.ERROR, None))
            elif len(value) > self.max_value_bytes:
                out.append((Outcome.OVERSIZED, None))
            else:
                out.append((Outcome.LOADED, bytes(value)))
        return out

    def _publish(self) -> None:
        components = getattr(self.agent, "component_status", None)
        if isinstance(components, dict):
            components[STATUS_COMPONENT] = self.status()


@hookimpl
def predis_agent_config_schema() -> dict[str, Any]:
    return config_schema()


@hookimpl
def predis_agent_register_origins(agent: Any, config: dict[str, Any]) -> list[RedisOrigin]:
    """One :class:`RedisOrigin` when ``url`` is set; none while it is empty."""
    url = str(config.get("url", DEFAULT_URL) or "")
    if not url:
        components = getattr(agent, "component_status", None)
        if isinstance(components, dict):
            components.pop(STATUS_COMPONENT, None)
        return []
    return [
        RedisOrigin(
            url,
            password=config.get("password"),
            timeout_seconds=float(config.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)),
            max_batch=int(config.get("max_batch", DEFAULT_MAX_BATCH)),
            max_value_bytes=int(config.get("max_value_bytes", DEFAULT_MAX_VALUE_BYTES)),
            max_connections=int(config.get("max_connections", DEFAULT_MAX_CONNECTIONS)),
            guard=GuardSettings.from_config(config),
            agent=agent,
        )
    ]


@hookimpl
def predis_agent_config_rules() -> list[Rule]:
    return [origin_needs(ORIGIN_NAME, PLUGIN_NAME, "url", "the URL of the Redis server the origin reads from")]
