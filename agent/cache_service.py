# SPDX-License-Identifier: Apache-2.0
"""The cache component: builds the :class:`~cache_core.cache.Cache` from the ``cache``
config section, serves it over RESP, sweeps expired keys and answers readiness.

It keeps the runtime thin: the Agent asks it to dry-build (:meth:`CacheService.plan`),
then to apply the plan (:meth:`CacheService.apply`); everything that can fail (a
backend without a GPU, a port in use, unreadable TLS files, a non-loopback listener
without a password, an origin that does not exist) fails in ``plan``, before anything
running is touched.

What a change restarts (docs/configuration.md has the table): keys of
:data:`REBUILD_KEYS` and ``cache.backend`` build a new, empty cache (a cache can be
refilled, and a table cannot change its fingerprint key or capacity in place);
``cache.resp.listen`` and ``cache.resp.tls`` bind the new listener first and then stop
accepting on the old one, while open connections keep being served; the other RESP
limits, the password, ``cache.read_through`` and ``cache.origin`` apply in place.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import Config, Secret, settings_of
from agent.config_rules import enforce
from agent.errors import StartupError
from agent.net import is_loopback, make_ssl_context, open_listener, parse_listen, tls_files_stamp
from cache_core.access_log import AccessLog
from cache_core.backend import Backend
from cache_core.cache import Cache, null_access_hook
from cache_core.models import Vocabulary, make_model, place_model
from cache_core.prefetch import Prefetcher, PrefetchSettings, test_inference
from cache_core.resp.server import RespLimits, RespServer

log = logging.getLogger(__name__)

REBUILD_KEYS = (
    "max_memory_bytes",
    "max_keys",
    "max_key_bytes",
    "max_value_bytes",
    "eviction",
    "slab_growth_factor",
    "max_load_factor",
    "databases",
)


@dataclass
class CachePlan:
    """A dry-built cache component: nothing in it is serving yet."""

    section: dict[str, Any]
    backend: Backend
    cache: Cache | None  # None: keep the running cache
    sock: socket.socket | None  # None: keep the running listener (or RESP disabled)
    ssl_context: ssl.SSLContext | None
    tls_stamp: tuple[Any, ...]
    password: str | None
    origin: tuple[str, Any] | None
    origin_deferred: bool = False  # origin plugins are rebuilt in this reload: point at it after
    reserved_descriptors: int = 64  # agent.reserved_descriptors: not given to Redis clients
    control_share: float = 0.0  # console.control_share: keys never prefetched


def _limits(resp: dict[str, Any], reserved_descriptors: int) -> RespLimits:
    return settings_of(RespLimits, resp, reserved_descriptors=reserved_descriptors)


def _password(resp: dict[str, Any]) -> str | None:
    """The RESP password, or None for none (an empty one never passes the config rules)."""
    value = resp.get("requirepass")
    if value is None:
        return None
    return value.reveal() if isinstance(value, Secret) else str(value)


class CacheService:
    """Owns the cache, its RESP server and its expiry sweep."""

    def __init__(self) -> None:
        self.section: dict[str, Any] = {}
        self.control_share = 0.0
        self.backend: Backend | None = None
        self.cache: Cache | None = None
        self.server: RespServer | None = None
        self.origin_name: str | None = None
        self._listen: str | None = None
        self._tls: dict[str, Any] = {}
        self._tls_stamp: tuple[Any, ...] = ()
        self._sweep: asyncio.Task[None] | None = None
        self.swept_keys = 0
        self.access_log: AccessLog | None = None
        self.prefetcher: Prefetcher | None = None
        self._prefetch_key: tuple[Any, ...] | None = None
        # Where a model to serve comes from before a fresh one is made (the registry's
        # champion: agent.mlops.service); returns (model, vocabulary, version) or None.
        self.model_source: Callable[[], tuple[Any, Vocabulary, int] | None] | None = None

    # ------------------------------------------------------------------ dry-build
    def plan(self, cfg: Config, backend: Backend, origins: list[tuple[str, Any]] | None) -> CachePlan:
        """Build what ``cfg`` asks for off to the side; raises :class:`StartupError`.

        ``origins`` None: the origin plugins are about to be rebuilt, so the origin is
        looked up afterwards (:meth:`set_origin`) rather than checked here.
        """
        enforce(cfg.data, "cache")
        section = cfg.section("cache")
        resp = section["resp"]
        password = _password(resp)
        origin = self.find_origin(section, origins) if origins is not None else None
        rebuild = (
            self.cache is None
            or backend is not self.backend
            or any(section[key] != self.section.get(key) for key in REBUILD_KEYS)
        )
        cache = None
        if rebuild:
            try:
                cache = Cache(
                    backend.xp,
                    max_keys=section["max_keys"],
                    max_memory_bytes=section["max_memory_bytes"],
                    max_key_bytes=section["max_key_bytes"],
                    max_value_bytes=section["max_value_bytes"],
                    eviction=section["eviction"],
                    slab_growth_factor=section["slab_growth_factor"],
                    max_load_factor=section["max_load_factor"],
                    databases=section["databases"],
                )
            except (ValueError, MemoryError) as exc:
                raise StartupError(f"cache: cannot allocate the cache ({exc.__class__.__name__}: {exc})") from None
        sock = None
        ctx = None
        tls = dict(resp["tls"])
        stamp = tls_files_stamp(tls)
        if resp["enabled"]:
            ctx = make_ssl_context(tls, "cache.resp.tls")
            rebind = (
                self.server is None
                or resp["listen"] != self._listen
                or tls != self._tls
                or stamp != self._tls_stamp
            )
            if rebind:
                if self.server is not None and resp["listen"] == self._listen and self.server.sockets:
                    sock = self.server.sockets[0].dup()
                else:
                    sock = open_listener(resp["listen"])
        reserved = int(cfg.get("agent.reserved_descriptors"))
        share = float(cfg.get("console.control_share"))
        return CachePlan(section, backend, cache, sock, ctx, stamp, password, origin, origins is None, reserved, share)

    @staticmethod
    def find_origin(section: dict[str, Any], origins: list[tuple[str, Any]]) -> tuple[str, Any] | None:
        wanted = section.get("origin")
        if wanted is None:
            return None
        names = {str(getattr(obj, "name", plugin)): (plugin, obj) for plugin, obj in origins}
        if wanted not in names:
            have = ", ".join(sorted(names)) or "none"
            raise StartupError(
                f"cache.origin is {wanted!r} but no enabled plugin registers an origin of that name "
                f"(registered: {have}); enable and configure its plugin (e.g. plugins.files.root)"
            )
        return names[wanted]

    # ------------------------------------------------------------------ swap
    async def apply(self, plan: CachePlan) -> list[str]:
        """Make ``plan`` the running component; return what was restarted, for the log."""
        done: list[str] = []
        section, resp = plan.section, plan.section["resp"]
        if plan.cache is not None:
            if self.cache is not None:
                log.warning("cache rebuilt empty: its sizing, policy or backend changed (%d keys dropped)", self.cache.dbsize())
                plan.cache.carry_counters(self.cache)
                done.append("cache rebuilt")
            self.cache = plan.cache
            self._attach_access_log()
        assert self.cache is not None
        self.backend = plan.backend
        self.section = section
        self.control_share = plan.control_share
        if not plan.origin_deferred:
            self.set_origin(plan.origin, section["read_through"])
        elif self.cache is not None and plan.cache is not None:
            self.cache.origin = None
            self.cache.read_through = False
        if not resp["enabled"]:
            if self.server is not None:
                await self.server.stop()
                self.server = None
                self._listen = None
                done.append("resp server stopped")
        else:
            if self.server is None:
                self.server = RespServer(
                    self.cache,
                    limits=_limits(resp, plan.reserved_descriptors),
                    password=plan.password,
                    info_extra=self.info,
                    config_values=self._config_values(section),
                )
            server = self.server
            server.replace_cache(self.cache)
            server.limits = _limits(resp, plan.reserved_descriptors)
            server.password = plan.password
            server.config_values = self._config_values(section)
            if plan.sock is not None:
                await server.start(plan.sock, plan.ssl_context)
                self._listen = resp["listen"]
                self._tls = dict(resp["tls"])
                self._tls_stamp = plan.tls_stamp
                done.append(f"resp listening on {self.address}")
                if not is_loopback(server.address[0] if server.address else ""):
                    log.warning("RESP server listens on non-loopback address %s; keep requirepass and TLS on", self.address)
        self.sync_prefetcher()
        if self.server is not None:
            self.server.hint = self.prefetcher.hint if self.prefetcher is not None else None
        if self._sweep is None:
            self._sweep = asyncio.create_task(self._sweep_loop(), name="cache-ttl-sweep")
        return done

    # ------------------------------------------------------------------ prefetching
    def sync_prefetcher(self) -> None:
        """Start, keep, rebuild or stop the prefetcher for ``cache.prefetch`` and the origin.

        A change of pacing, thresholds, depth or budget retunes the running prefetcher
        in place; it is rebuilt (its model starts over) only when the cache, the origin
        object, the model kind, the vocabulary size, ``learn_online`` or where the model
        runs changed. An unrelated reload loses nothing it learned.
        """
        cache = self.cache
        section = {**self.section.get("prefetch", {}), "control_share": self.control_share}
        origin = cache.origin if cache is not None else None
        wanted = bool(section.get("enabled")) and cache is not None and origin is not None
        key = (id(cache), id(origin), tuple(sorted(section.items()))) if wanted else None
        if key == self._prefetch_key:
            return
        old = self.prefetcher
        if wanted and old is not None and self._prefetch_key is not None and key is not None and key[:2] == self._prefetch_key[:2]:
            settings = settings_of(PrefetchSettings, section)
            learn = bool(section.get("learn_online", True)) or old.version is None
            if old.retune(settings, model=section["model"], vocabulary_size=int(section["vocabulary_size"]), learn_online=learn):
                self._prefetch_key = key
                log.info("prefetching retuned in place (the model keeps what it learned)")
                return
        if old is not None:
            old.close()
            if cache is not None and cache.prefetch_observer == old.observe:
                cache.prefetch_observer = None
        self.prefetcher = None
        self._prefetch_key = key
        if wanted:
            assert cache is not None
            settings = settings_of(PrefetchSettings, section)
            served = self.model_source() if self.model_source is not None else None
            version: int | None = None
            if served is not None:
                model, vocab, version = served
                place_model(model, cache.xp)
                result = test_inference(model, vocab, settings.depth)
                if not result[0]:
                    log.error("prefetch: champion v%d failed its test inference (%s); serving a fresh %s model", version, result[1], section["model"])
                    served, version = None, None
            if served is None:
                vocab = Vocabulary(int(section["vocabulary_size"]))
                model = make_model(section["model"], vocab, xp=cache.xp)
                result = test_inference(model, vocab, settings.depth)
            learn = bool(section.get("learn_online", True)) or version is None
            self.prefetcher = Prefetcher(
                cache, origin, model, vocab, settings, learn_online=learn, version=version, counters_from=old.stats if old is not None else None
            )
            self.prefetcher.test_result = result
            cache.prefetch_observer = self.prefetcher.observe
            what = f"champion v{version} ({getattr(model, 'name', '?')})" if version is not None else f"a fresh {section['model']} model"
            log.info("prefetching on: %s from origin %s", what, self.origin_name)
        elif old is not None:
            log.info("prefetching off")
        if self.server is not None:
            self.server.hint = self.prefetcher.hint if self.prefetcher is not None else None

    def configure_access_log(self, section: dict[str, Any]) -> None:
        """Create, keep or drop the access-event ring for ``collectors.access_log``.

        The ring is kept (with its unexported events) unless its size or sampling changed.
        """
        if not section.get("enabled"):
            self.access_log = None
        else:
            capacity = int(section["ring_capacity"])
            current = self.access_log
            rate = float(section["sample_rate"])
            raw = bool(section["store_raw_keys"])
            if current is None or (current.capacity, current.sample_rate, current.store_raw_keys) != (capacity, rate, raw):
                self.access_log = AccessLog(capacity, sample_rate=rate, store_raw_keys=raw)
        self._attach_access_log()

    def _attach_access_log(self) -> None:
        if self.cache is not None:
            self.cache.access_hook = self.access_log.hook if self.access_log is not None else null_access_hook

    def tls_renewed(self, resp: dict[str, Any]) -> bool:
        """True when the running RESP listener's TLS files were renewed in place."""
        return self.server is not None and bool(self._tls.get("enabled")) and tls_files_stamp(dict(resp["tls"])) != self._tls_stamp

    def set_origin(self, origin: tuple[str, Any] | None, read_through: bool) -> None:
        """Point read-through at ``origin`` (None: no origin, read-through off)."""
        self.origin_name = str(getattr(origin[1], "name", origin[0])) if origin else None
        if self.cache is not None:
            self.cache.origin = origin[1] if origin else None
            self.cache.read_through = bool(read_through) and origin is not None
            self.sync_prefetcher()

    def discard(self, plan: CachePlan) -> None:
        """Release what a plan that will not be applied holds."""
        if plan.sock is not None:
            plan.sock.close()

    def _config_values(self, section: dict[str, Any]) -> dict[str, str]:
        """What ``CONFIG GET`` answers: the Redis names clients and tools ask for."""
        resp = section["resp"]
        host, port = parse_listen(resp["listen"])
        if self.server is not None and self.server.address:
            port = self.server.address[1]
        return {
            "maxmemory": str(section["max_memory_bytes"]),
            "maxmemory-policy": section["eviction"],
            "maxclients": str(resp["max_clients"]),
            "timeout": str(int(resp["idle_timeout_seconds"])),
            "proto-max-bulk-len": str(resp["max_bulk_bytes"]),
            "bind": host,
            "port": str(port),
            "databases": str(section["databases"]),
            "save": "",
            "appendonly": "no",
        }

    # ------------------------------------------------------------------ running
    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(float(self.section["ttl_sweep_interval_seconds"]))
            cache = self.cache
            if cache is not None:
                try:
                    self.swept_keys += cache.sweep_expired(int(self.section["ttl_sweep_max_keys"]))
                except Exception:
                    log.exception("TTL sweep failed; it is tried again next interval")

    async def stop(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self.prefetcher is not None:
            self.prefetcher.close()
            self.prefetcher = None
        if self.server is not None:
            await self.server.stop()
            self.server = None

    @property
    def address(self) -> str | None:
        if self.server is None or self.server.address is None:
            return None
        host, port = self.server.address
        scheme = "rediss" if self._tls.get("enabled") else "redis"
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{port}"

    def info(self) -> dict[str, Any]:
        """The ``predis`` section of INFO."""
        backend = self.backend
        device = backend.device_info().name if backend else "?"
        prefetch = self.prefetcher.status()["model"] if self.prefetcher is not None else "disabled"
        return {"backend": backend.name if backend else "?", "device": device, "prefetch": prefetch}

    def self_test(self, slots: int) -> tuple[bool, str]:
        """Readiness: a fresh probe through device memory, then through the device hash table."""
        if self.backend is None or self.cache is None:
            return False, "cache not started"
        ok, detail = self.backend.self_test(slots)
        if not ok:
            return ok, detail
        ok, table_detail = self.cache.self_test()
        return ok, f"{detail}; {table_detail}"

    def status(self) -> dict[str, Any]:
        cache = self.cache
        stats = cache.snapshot() if cache is not None else None
        server = self.server
        return {
            "resp": {
                "address": self.address,
                "tls": bool(self._tls.get("enabled")) if server else False,
                "clients": len(server.clients) if server else 0,
                "auth": bool(server and server.password is not None),
            },
            "read_through": bool(cache and cache.read_through),
            "origin": self.origin_name,
            "eviction": self.section.get("eviction"),
            "swept_keys": self.swept_keys,
            "prefetch": self.prefetcher.status() if self.prefetcher is not None else {"enabled": False},
            "stats": dict(stats.__dict__) if stats else None,
        }
