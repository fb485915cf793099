# SPDX-License-Identifier: Apache-2.0
"""The ``s3`` origin: objects of one S3 (or S3-compatible) bucket, read through on a cache miss.

A key names the object ``plugins.s3.prefix + key``. Keys arrive from the network, so each
is checked before anything is sent: it is *refused* (a miss, counted in ``rejected``, no
request made) when it is empty, not valid UTF-8, contains a control character, has a
``.`` or ``..`` path segment, or makes an object name over S3's 1024-byte limit with the
prefix. Refusing dot segments keeps the prefix a real boundary also behind proxies and
S3-compatible stores that normalise URL paths (``p/../secret`` would leave ``p/``).

Each key is one ``GetObject``; a batch runs on a thread pool of ``max_parallel`` threads
(created once) behind :class:`plugins.origins.guard.OriginGuard` (retry of transient
errors, circuit breaker, counters). botocore's own retries are off and its connect and
read timeouts are ``timeout_seconds``. ``NoSuchKey`` (404) is a miss, not an error;
``AccessDenied``, a missing bucket or bad credentials are errors that are not retried
but count towards the breaker. An object over ``max_object_bytes`` (by its
``Content-Length``, and by reading at most one byte more than the limit) is a miss
counted in ``oversized``; its body is closed unread.

Counters and the breaker state are in :meth:`S3Origin.status`, published into the
agent's ``/status`` as ``components.origin_s3``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
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

PLUGIN_NAME = "s3"
ORIGIN_NAME = "s3"
STATUS_COMPONENT = "origin_s3"
DEFAULT_BUCKET = ""
DEFAULT_PREFIX = ""
MAX_PREFIX_BYTES = 512
DEFAULT_MAX_OBJECT_BYTES = 1 << 20
MIN_MAX_OBJECT_BYTES = 1
MAX_MAX_OBJECT_BYTES = 1 << 30
DEFAULT_TIMEOUT_SECONDS = 1.0
MIN_TIMEOUT_SECONDS = 0.01
MAX_TIMEOUT_SECONDS = 300.0
DEFAULT_MAX_PARALLEL = 8
MIN_MAX_PARALLEL = 1
MAX_MAX_PARALLEL = 64
# S3's limit on an object name, in UTF-8 bytes.
MAX_OBJECT_KEY_BYTES = 1024

# Error codes that mean "no such object": a miss. NoSuchBucket is a 404 too, but an error.
MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
# Error codes about one object that say nothing about the origin's health.
PER_OBJECT_CODES = frozenset({"InvalidObjectState", "InvalidRange"})
# Error codes worth another attempt (besides every 5xx).
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "RequestLimitExceeded",
    }
)


def config_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of ``plugins.s3``; the host adds ``enabled``."""
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Origin that reads one object per key from an S3 (or S3-compatible) bucket when the cache misses.",
        "properties": {
            "bucket": {
                "type": "string",
                "pattern": "^[A-Za-z0-9._-]*$(?!\\n)",
                "maxLength": 255,
                "default": DEFAULT_BUCKET,
                "description": "Bucket holding the values. Empty: the origin is not configured and nothing is registered.",
            },
            "prefix": {
                "type": "string",
                "maxLength": MAX_PREFIX_BYTES,
                "default": DEFAULT_PREFIX,
                "description": "Put before every key to make its object name (e.g. \"cache/\"); keys cannot reach outside it.",
            },
            "region": {
                "type": ["string", "null"],
                "pattern": "^[a-z0-9-]{1,64}$(?!\\n)",
                "default": None,
                "description": "AWS region of the bucket; null: the SDK's default (AWS_REGION, the profile).",
            },
            "endpoint_url": {
                "type": ["string", "null"],
                "pattern": "^https?://[^\\s]+$(?!\\n)",
                "default": None,
                "description": "S3 endpoint for S3-compatible stores (MinIO, Ceph, moto); null: AWS's own.",
            },
            "profile": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 128,
                "default": None,
                "description": (
                    "Named profile of the AWS shared config and credentials files; null: the SDK's default "
                    "credential chain (environment, profile, instance role)."
                ),
            },
            "max_object_bytes": {
                "type": "integer",
                "minimum": MIN_MAX_OBJECT_BYTES,
                "maximum": MAX_MAX_OBJECT_BYTES,
                "default": DEFAULT_MAX_OBJECT_BYTES,
                "description": (
                    "Largest object loaded, in bytes; a larger one is a miss (counted in oversized, logged once per key). "
                    "Keep it at or below cache.max_value_bytes."
                ),
            },
            "timeout_seconds": {
                "type": "number",
                "minimum": MIN_TIMEOUT_SECONDS,
                "maximum": MAX_TIMEOUT_SECONDS,
                "default": DEFAULT_TIMEOUT_SECONDS,
                "description": (
                    "Connect timeout and read timeout (per socket read) of one GetObject. The cache waits for "
                    "read-through, so keep it short."
                ),
            },
            "max_parallel": {
                "type": "integer",
                "minimum": MIN_MAX_PARALLEL,
                "maximum": MAX_MAX_PARALLEL,
                "default": DEFAULT_MAX_PARALLEL,
                "description": "GetObject requests of one batch run at the same time (threads and pooled connections).",
            },
            **guard_schema_properties(),
        },
    }


def object_name(prefix: str, key: bytes) -> str | None:
    """The object name ``key`` stands for under ``prefix``, or None when the key is refused."""
    if not isinstance(key, bytes) or not key:
        return None
    try:
        text = key.decode("utf-8")  # strict: invalid, overlong and surrogate forms fail
    except UnicodeDecodeError:
        return None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        return None
    name = prefix + text
    if len(name.encode("utf-8")) > MAX_OBJECT_KEY_BYTES:
        return None
    if any(segment in (".", "..") for segment in name.split("/")):
        return None
    return name


def _error_code(exc: BaseException) -> tuple[str, int | None]:
    response = getattr(exc, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code") or "")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code, int(status) if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt may succeed: network trouble, timeouts, 5xx, throttling."""
    from botocore import exceptions as bce

    if isinstance(exc, (bce.HTTPClientError, bce.ConnectionError)):
        return True  # connection refused/reset/closed, connect and read timeouts, broken streams
    if isinstance(exc, bce.ClientError):
        code, status = _error_code(exc)
        return code in TRANSIENT_CODES or (status is not None and status >= 500)
    return False


class S3Origin:
    """Loads values from objects of one bucket; one GetObject per key, ``max_parallel`` at a time."""

    name = ORIGIN_NAME

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        region: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_parallel: int = DEFAULT_MAX_PARALLEL,
        guard: GuardSettings | None = None,
        agent: Any = None,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("plugins.s3.bucket must name a bucket")
        if len(prefix.encode("utf-8")) > MAX_PREFIX_BYTES:
            raise ValueError(f"plugins.s3.prefix must be at most {MAX_PREFIX_BYTES} bytes")
        if object_name(prefix, b"k") is None:
            raise ValueError("plugins.s3.prefix must not contain control characters or a '.' or '..' segment")
        if isinstance(max_object_bytes, bool) or not MIN_MAX_OBJECT_BYTES <= int(max_object_bytes) <= MAX_MAX_OBJECT_BYTES:
            raise ValueError(
                f"plugins.s3.max_object_bytes must be {MIN_MAX_OBJECT_BYTES} … {MAX_MAX_OBJECT_BYTES}, found {max_object_bytes!r}"
            )
        if not MIN_TIMEOUT_SECONDS <= float(timeout_seconds) <= MAX_TIMEOUT_SECONDS:
            raise ValueError(f"plugins.s3.timeout_seconds must be {MIN_TIMEOUT_SECONDS} … {MAX_TIMEOUT_SECONDS}, found {timeout_seconds!r}")
        if not MIN_MAX_PARALLEL <= int(max_parallel) <= MAX_MAX_PARALLEL:
            raise ValueError(f"plugins.s3.max_parallel must be {MIN_MAX_PARALLEL} … {MAX_MAX_PARALLEL}, found {max_parallel!r}")
        self.bucket = bucket
        self.prefix = prefix
        self.max_object_bytes = int(max_object_bytes)
        self.max_parallel = int(max_parallel)
        self.agent = agent
        self.guard = OriginGuard(ORIGIN_NAME, guard, transient=is_transient, on_change=self._publish)
        self.client = client if client is not None else _make_client(
            region=region,
            endpoint_url=endpoint_url,
            profile=profile,
            timeout_seconds=float(timeout_seconds),
            pool=self.max_parallel,
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.max_parallel, thread_name_prefix="origin-s3")
        self._closed = threading.Event()
        self._publish()

    # ------------------------------------------------------------------ public
    def load_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values for ``keys`` in order (None for a miss, a refused key or an unreachable origin)."""
        executor = None if self._closed.is_set() else self._executor
        return self.guard.load_many(
            keys,
            self._fetch,
            prepare=lambda key: object_name(self.prefix, key),
            chunk_size=1,
            executor=executor,
        )

    def stats(self) -> dict[str, int]:
        return self.guard.stats()

    def status(self) -> dict[str, Any]:
        return {"origin": ORIGIN_NAME, "bucket": self.bucket, "prefix": self.prefix, **self.guard.status()}

    def close(self) -> None:
        """Stop the fetch threads and the client's connections."""
        self._closed.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.client, "close", None)
        if callable(close):
            close()

    # ------------------------------------------------------------------ one object
    def _fetch(self, names: list[str]) -> list[tuple[Outcome, bytes | None]]:
        return [self._get(name) for name in names]

    def _get(self, name: str) -> tuple[Outcome, bytes | None]:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            code, status = _error_code(exc)
            if code in MISSING_CODES or (status == 404 and code in ("", "NoSuchKey")):
                return Outcome.MISS, None
            if code in PER_OBJECT_CODES:
                return Outcome.ERROR, None
            raise
        body = response["Body"]
        try:
            length = response.get("ContentLength")
            if isinstance(length, int) and length > self.max_object_bytes:
                return Outcome.OVERSIZED, None
            data = body.read(self.max_object_bytes + 1)
        finally:
            body.close()
        if len(data) > self.max_object_bytes:
            return Outcome.OVERSIZED, None
        return Outcome.LOADED, bytes(data)

    def _publish(self) -> None:
        components = getattr(self.agent, "component_status", None)
        if isinstance(components, dict):
            components[STATUS_COMPONENT] = self.status()


def _make_client(*, region: str | None, endpoint_url: str | None, profile: str | None, timeout_seconds: float, pool: int) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    session = boto3.session.Session(profile_name=profile, region_name=region)
    config = BotoConfig(
        connect_timeout=timeout_seconds,
        read_timeout=timeout_seconds,
        # total_max_attempts counts the first attempt: 1 = no SDK retry. (botocore reads
        # {"max_attempts": 1} as one retry.) The guard does the retrying.
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=pool,
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


@hookimpl
def predis_agent_config_schema() -> dict[str, Any]:
    return config_schema()


@hookimpl
def predis_agent_register_origins(agent: Any, config: dict[str, Any]) -> list[S3Origin]:
    """One :class:`S3Origin` when ``bucket`` is set; none while it is empty."""
    bucket = str(config.get("bucket", DEFAULT_BUCKET) or "")
    if not bucket:
        components = getattr(agent, "component_status", None)
        if isinstance(components, dict):
            components.pop(STATUS_COMPONENT, None)
        return []
    return [
        S3Origin(
            bucket,
            prefix=str(config.get("prefix", DEFAULT_PREFIX) or ""),
            region=config.get("region"),
            endpoint_url=config.get("endpoint_url"),
            profile=config.get("profile"),
            max_object_bytes=int(config.get("max_object_bytes", DEFAULT_MAX_OBJECT_BYTES)),
            timeout_seconds=float(config.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)),
            max_parallel=int(config.get("max_parallel", DEFAULT_MAX_PARALLEL)),
            guard=GuardSettings.from_config(config),
            agent=agent,
        )
    ]


@hookimpl
def predis_agent_config_rules() -> list[Rule]:
    return [origin_needs(ORIGIN_NAME, PLUGIN_NAME, "bucket", "the bucket the origin reads objects from")]
