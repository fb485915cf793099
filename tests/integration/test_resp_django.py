# SPDX-License-Identifier: Apache-2.0
"""Django's built-in Redis cache backend (django.core.cache.backends.redis.RedisCache), as
a Django project configures it, driven through its whole public cache API against the
running agent in database 2; the same calls against a real redis-server give the same
results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.resp_helpers import agent_and_redis

django = pytest.importorskip("django", reason="Django is in the test extras (pip install -e '.[test]')")

from django.conf import settings

if not settings.configured:
    settings.configure(USE_TZ=True)

from django.core.cache.backends.redis import RedisCache

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    with agent_and_redis(tmp_path_factory, "django") as ports:
        yield ports


def django_cache(port: int) -> Any:
    return RedisCache(f"redis://127.0.0.1:{port}/2", {"TIMEOUT": 300, "KEY_PREFIX": "site"})


def session(cache: Any) -> list[Any]:
    """Every public call of Django's cache API, in a sequence whose results are compared."""
    out: list[Any] = []
    cache.clear()
    out.append(cache.set("greeting", "hello"))
    out.append(cache.get("greeting"))
    out.append(cache.get("missing", "default"))
    out.append(cache.add("greeting", "other"))
    out.append(cache.add("fresh", {"a": [1, 2]}))
    out.append(cache.get("fresh"))
    out.append(cache.set_many({"k1": 1, "k2": 2.5, "k3": b"bytes", "k4": None}))
    out.append(cache.get_many(["k1", "k2", "k3", "k4", "missing"]))
    out.append(cache.incr("k1"))
    out.append(cache.incr("k1", 10))
    out.append(cache.decr("k1", 3))
    try:
        cache.incr("missing")
    except ValueError as exc:
        out.append(("ValueError", str(exc)))
    out.append(cache.touch("greeting", 100))
    out.append(cache.touch("missing", 100))
    out.append(cache.has_key("greeting"))
    out.append(cache.has_key("missing"))
    out.append(cache.get_or_set("computed", lambda: "made once"))
    out.append(cache.get_or_set("computed", lambda: "made twice"))
    out.append(cache.delete("greeting"))
    out.append(cache.delete("greeting"))
    out.append(cache.delete_many(["k1", "k2", "missing"]))
    out.append(cache.get_many(["k1", "k2", "k3"]))
    out.append(cache.set("short", "lived", timeout=0))
    out.append(cache.get("short"))
    out.append(cache.set("forever", "kept", timeout=None))
    out.append(cache.get("forever"))
    out.append(cache.set("bigint", 2**70))
    out.append(cache.get("bigint"))
    out.append(cache.incr_version("forever"))
    out.append(cache.get("forever", version=2))
    out.append(cache.clear())
    out.append(cache.get("forever", version=2))
    return out


def test_django_redis_cache_behaves_as_with_redis(ports: dict[str, int]) -> None:
    ours = session(django_cache(ports["agent"]))
    theirs = session(django_cache(ports["redis"]))
    assert ours == theirs
    assert ours[1] == "hello" and ours[7] == {"k1": 1, "k2": 2.5, "k3": b"bytes", "k4": None}


def test_django_keeps_to_its_database(ports: dict[str, int]) -> None:
    """LOCATION .../2 selects database 2: clear() there leaves database 0 alone."""
    import redis

    plain = redis.Redis(host="127.0.0.1", port=ports["agent"], db=0, socket_timeout=10)
    try:
        plain.set("db0-key", "stays")
        cache = django_cache(ports["agent"])
        cache.set("x", 1)
        cache.clear()
        assert plain.get("db0-key") == b"stays"
        assert cache.get("x") is None
    finally:
        plain.close()
