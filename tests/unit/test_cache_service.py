# SPDX-License-Identifier: Apache-2.0
"""agent.cache_service: what a config builds, what a change rebuilds, what is refused."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import redis

from agent.cache_service import CacheService
from agent.config import Config, load_config
from agent.errors import ConfigError, StartupError
from cache_core.backend import Backend
from cache_core.cache import null_access_hook


class StubOrigin:
    name = "stub"

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data = data

    def load_many(self, keys: list[bytes]) -> list[bytes | None]:
        return [self.data.get(k) for k in keys]


def config(text: str) -> Config:
    """The embedded default plus ``text`` (lines under ``cache:``), RESP on a free port."""
    if "resp:" not in text:
        text += "  resp: {listen: '127.0.0.1:0'}\n"
    return load_config(None, text="cache:\n" + text)


def test_a_non_loopback_listener_without_a_password_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"not a loopback address.*requirepass.*\[rule resp-public-needs-password\]"):
        load_config(None, text="cache:\n  resp: {listen: '0.0.0.0:0'}\n")


def test_a_non_loopback_listener_is_allowed_with_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UT_RESP_PW", "s3cret-pass")
    cfg = load_config(None, text="cache:\n  resp: {listen: '0.0.0.0:0', requirepass: '${env:UT_RESP_PW}'}\n")
    plan = CacheService().plan(cfg, Backend("numpy"), [])
    try:
        assert plan.password == "s3cret-pass" and plan.sock is not None
    finally:
        CacheService().discard(plan)


def test_read_through_needs_an_existing_origin() -> None:
    service = CacheService()
    with pytest.raises(ConfigError, match=r"cache.origin is not set.*\[rule read-through-needs-origin\]"):
        config("  read_through: true\n")
    with pytest.raises(StartupError, match=r"'nope'.*registered: stub"):
        service.plan(config("  origin: nope\n"), Backend("numpy"), [("p", StubOrigin({}))])


def test_apply_serves_the_cache_and_only_sizing_changes_rebuild_it() -> None:
    async def scenario() -> dict[str, Any]:
        service = CacheService()
        backend = Backend("numpy")
        origin = StubOrigin({b"from-origin": b"loaded"})
        first = service.plan(config("  max_keys: 1000\n"), backend, [("p", origin)])
        assert first.cache is not None and first.sock is not None
        await service.apply(first)
        assert service.address is not None and service.address.startswith("redis://127.0.0.1:")
        port = service.server.address[1]  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()

        def client_round() -> tuple[Any, ...]:
            client = redis.Redis(port=port, protocol=2, socket_timeout=5)
            try:
                client.set("k", "v")
                return client.get("k"), client.get("from-origin"), client.config_get("maxclients")
            finally:
                client.close()

        before = await loop.run_in_executor(None, client_round)
        cache = service.cache
        # Limits, read-through and origin change in place: same cache, same listener.
        second = service.plan(
            config("  max_keys: 1000\n  read_through: true\n  origin: stub\n  resp: {listen: '127.0.0.1:0', max_clients: 7}\n"),
            backend,
            [("p", origin)],
        )
        assert second.cache is None
        # The listen string is the same ("127.0.0.1:0"), so the running socket is kept.
        assert second.sock is None
        await service.apply(second)
        assert service.cache is cache and service.server.limits.max_clients == 7  # type: ignore[union-attr]
        after = await loop.run_in_executor(None, client_round)
        # A sizing change builds a new, empty cache.
        third = service.plan(config("  max_keys: 2000\n"), backend, [])
        assert third.cache is not None
        await service.apply(third)
        assert service.cache is not cache and service.cache.dbsize() == 0  # type: ignore[union-attr]
        ok, detail = service.self_test(8)
        status = service.status()
        await service.stop()
        return {"before": before, "after": after, "ok": ok, "detail": detail, "status": status}

    result = asyncio.run(scenario())
    assert result["before"] == (b"v", None, {"maxclients": "10000"})
    assert result["after"] == (b"v", b"loaded", {"maxclients": "7"})
    assert result["ok"] and "table probe" in result["detail"]
    assert result["status"]["resp"]["address"].startswith("redis://") and result["status"]["stats"]["keys"] == 0


def test_a_busy_port_fails_in_plan_and_leaves_the_running_server_alone() -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]

    async def scenario() -> tuple[str, str | None]:
        service = CacheService()
        await service.apply(service.plan(config(""), Backend("numpy"), []))
        address = service.address
        with pytest.raises(StartupError, match="Address already in use|cannot listen"):
            service.plan(load_config(None, text=f"cache:\n  resp: {{listen: '127.0.0.1:{busy}'}}\n"), Backend("numpy"), [])
        still = service.address
        await service.stop()
        return str(address), still

    try:
        address, still = asyncio.run(scenario())
    finally:
        blocker.close()
    assert still == address


def test_disabling_resp_stops_the_server() -> None:
    async def scenario() -> tuple[bool, str | None]:
        service = CacheService()
        await service.apply(service.plan(config(""), Backend("numpy"), []))
        had = service.address is not None
        await service.apply(service.plan(load_config(None, text="cache:\n  resp: {enabled: false}\n"), Backend("numpy"), []))
        gone = service.address
        await service.stop()
        return had, gone

    assert asyncio.run(scenario()) == (True, None)


def test_the_access_log_is_attached_kept_across_a_rebuild_and_checked() -> None:
    async def scenario() -> tuple[Any, ...]:
        service = CacheService()
        section = dict(load_config(None, text="collectors:\n  access_log: {enabled: true, ring_capacity: 1024}\n").section(
            "collectors.access_log"
        ))
        service.configure_access_log(section)
        await service.apply(service.plan(config(""), Backend("numpy"), []))
        ring = service.access_log
        assert ring is not None and service.cache is not None
        service.cache.mset([(b"a", b"1")])
        await service.apply(service.plan(config("  max_keys: 999\n"), Backend("numpy"), []))
        service.cache.get(b"a")  # the rebuilt cache reports to the same ring
        events = ring.read(0).events
        service.configure_access_log({**section, "enabled": False})
        detached = service.cache.access_hook
        await service.stop()
        return len(events), service.access_log, detached

    count, after, hook = asyncio.run(scenario())
    assert count == 2 and after is None
    assert hook is null_access_hook


def test_a_rebuilt_cache_carries_its_counters_on() -> None:
    async def scenario() -> tuple[Any, Any, int]:
        service = CacheService()
        backend = Backend("numpy")
        await service.apply(service.plan(config("  max_keys: 1000\n"), backend, []))
        assert service.cache is not None
        service.cache.mset([(b"a", b"1")])
        service.cache.mget([b"a", b"a", b"nope"])
        before = service.cache.snapshot()
        await service.apply(service.plan(config("  max_keys: 2000\n"), backend, []))
        after = service.cache.snapshot()
        keys = service.cache.dbsize()
        await service.stop()
        return before, after, keys

    before, after, keys = asyncio.run(scenario())
    assert keys == 0  # rebuilt empty
    assert (after.hits, after.misses, after.sets) == (before.hits, before.misses, before.sets) == (2, 1, 1)
    assert after.max_keys == 2000 and after.keys == 0


def test_a_prefetch_pacing_or_threshold_change_keeps_the_prefetcher_and_a_model_change_rebuilds_it() -> None:
    origin = StubOrigin({b"k%d" % i: b"v" for i in range(64)})

    def prefetching(extra: str) -> Config:
        return config("  origin: stub\n  read_through: true\n  prefetch: {enabled: true, vocabulary_size: 4096" + extra + "}\n")

    async def scenario() -> tuple[Any, ...]:
        service = CacheService()
        backend = Backend("numpy")
        await service.apply(service.plan(prefetching(""), backend, [("p", origin)]))
        first = service.prefetcher
        assert first is not None
        first.hint([b"k1", b"k2"])
        await service.apply(service.plan(prefetching(", threshold: 0.4, max_cpu_share: 0.3, depth: 3"), backend, [("p", origin)]))
        retuned = service.prefetcher
        settings = retuned.settings if retuned is not None else None
        await service.apply(service.plan(prefetching(", threshold: 0.4, max_cpu_share: 0.3, depth: 3, model: markov"), backend, [("p", origin)]))
        rebuilt = service.prefetcher
        await service.stop()
        return first, retuned, settings, rebuilt

    first, retuned, settings, rebuilt = asyncio.run(scenario())
    assert retuned is first
    assert settings is not None and (settings.threshold, settings.max_cpu_share, settings.depth) == (0.4, 0.3, 3)
    assert rebuilt is not first and rebuilt is not None
    assert rebuilt.stats.hints == 2  # the counters go on from the prefetcher it replaced
