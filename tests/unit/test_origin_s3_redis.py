# SPDX-License-Identifier: Apache-2.0
"""plugins.origins.s3 and plugins.origins.redis without a network: key refusals, error
classification, size caps, chunking, schemas, config and registration.

The S3 client and the Redis client are fakes that record every request, so "refused
without a request" and "retried / not retried" are asserted on what was sent. The real
peers (moto, redis-server) are in tests/integration/test_origins_peers.py.
"""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import redis.exceptions as rex
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from agent.config import Secret, fill_defaults, load_config
from agent.errors import ConfigError
from agent.plugins import DEFAULT_PLUGINS, PluginHost
from plugins.origins import redis as redis_origin
from plugins.origins import s3
from plugins.origins.guard import COUNTERS, STATE_OPEN, GuardSettings
from plugins.origins.redis import RedisOrigin
from plugins.origins.s3 import S3Origin, object_name

NO_RETRY_WAIT = GuardSettings(retry_attempts=1, retry_initial_seconds=0.001, retry_max_seconds=0.001)


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


class FakeBody(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
        self.reads.append(-1 if n is None else n)
        return super().read(n)


class FakeS3:
    """get_object from a dict; a key mapped to an exception raises it (once per list item)."""

    def __init__(self, objects: dict[str, Any]) -> None:
        self.objects = objects
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[FakeBody] = []

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self.requests.append((Bucket, Key))
        item = self.objects.get(Key)
        if isinstance(item, list):
            item = item.pop(0) if len(item) > 1 else item[0]
        if item is None:
            raise client_error("NoSuchKey", 404)
        if isinstance(item, BaseException):
            raise item
        data, length = item if isinstance(item, tuple) else (item, len(item))
        body = FakeBody(data)
        self.bodies.append(body)
        return {"Body": body, "ContentLength": length}


class FakeRedis:
    def __init__(self, data: dict[bytes, Any], fail: list[BaseException] | None = None) -> None:
        self.data = data
        self.fail = list(fail or [])
        self.calls: list[list[bytes]] = []

    def mget(self, keys: list[bytes]) -> list[Any]:
        self.calls.append(list(keys))
        if self.fail:
            raise self.fail.pop(0)
        return [self.data.get(k) for k in keys]


def counts(origin: Any) -> dict[str, int]:
    stats = origin.stats()
    return {name: stats[name] for name in COUNTERS}


def s3_origin(objects: dict[str, Any], **kw: Any) -> tuple[S3Origin, FakeS3]:
    fake = FakeS3(objects)
    origin = S3Origin("bucket", client=fake, **{"guard": NO_RETRY_WAIT, **kw})
    return origin, fake


# ----------------------------------------------------------------------------- S3 keys


@pytest.mark.parametrize(
    ("prefix", "key", "name"),
    [
        ("", b"a", "a"),
        ("p/", b"dir/file.bin", "p/dir/file.bin"),
        ("p/", "é".encode(), "p/é"),
        ("p/", b"a..b/.c/d.", "p/a..b/.c/d."),
        ("", b"x" * 1024, "x" * 1024),
    ],
)
def test_object_names_are_the_prefix_and_the_key(prefix: str, key: bytes, name: str) -> None:
    assert object_name(prefix, key) == name


@pytest.mark.parametrize(
    ("prefix", "key"),
    [
        ("", b""),
        ("", b"\xff\xfe"),  # not UTF-8
        ("", b"\xc0\xaf"),  # overlong "/"
        ("", b"\xed\xa0\x80"),  # a surrogate
        ("", b"x" * 1025),
        ("p/", b"x" * 1023),  # 1025 bytes with the prefix
        ("p/", b"../secret"),
        ("p/", b"a/../../secret"),
        ("p/", b"./a"),
        ("p/", b"a/."),
        ("p/", b".."),
        ("p/", b"a\x00b"),
        ("p/", b"a\nb"),
        ("p/", b"a\x7fb"),
    ],
)
def test_hostile_keys_are_refused(prefix: str, key: bytes) -> None:
    assert object_name(prefix, key) is None


def test_refused_keys_send_no_request_and_count_as_rejected() -> None:
    origin, fake = s3_origin({"p/ok": b"value"}, prefix="p/")
    out = origin.load_many([b"\xff", b"../x", b"x" * 2000, b"ok"])
    assert out == [None, None, None, b"value"]
    assert fake.requests == [("bucket", "p/ok")]
    assert counts(origin) == {"loads": 1, "misses": 0, "rejected": 3, "oversized": 0, "errors": 0, "skipped_breaker_open": 0}


def test_a_prefix_with_a_dot_segment_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        S3Origin("bucket", prefix="a/../", client=FakeS3({}))


# ----------------------------------------------------------------------------- S3 errors and sizes


def test_no_such_key_is_a_miss_not_an_error() -> None:
    origin, fake = s3_origin({})
    assert origin.load_many([b"a", b"b"]) == [None, None]
    assert counts(origin)["misses"] == 2 and counts(origin)["errors"] == 0
    assert origin.guard.breaker.fail_counter == 0 and len(fake.requests) == 2


def test_access_denied_is_an_error_that_is_not_retried_and_trips_the_breaker() -> None:
    denied = client_error("AccessDenied", 403)
    settings = GuardSettings(retry_attempts=2, breaker_fail_max=2)
    origin, fake = s3_origin({"a": denied, "b": denied}, guard=settings, max_parallel=1)
    assert origin.load_many([b"a", b"b", b"c"]) == [None, None, None]
    assert fake.requests == [("bucket", "a"), ("bucket", "b")]  # no retry; c not sent once open
    assert origin.status()["breaker"] == STATE_OPEN
    assert counts(origin)["errors"] == 2 and counts(origin)["skipped_breaker_open"] == 1


def test_no_such_bucket_is_an_error_though_it_is_a_404() -> None:
    origin, _fake = s3_origin({"a": client_error("NoSuchBucket", 404)})
    assert origin.load_many([b"a"]) == [None]
    assert counts(origin)["errors"] == 1 and counts(origin)["misses"] == 0


@pytest.mark.parametrize(
    "error",
    [
        client_error("SlowDown", 503),
        client_error("InternalError", 500),
        EndpointConnectionError(endpoint_url="http://s3"),
        ReadTimeoutError(endpoint_url="http://s3"),
    ],
)
def test_transient_errors_are_retried(error: BaseException) -> None:
    origin, fake = s3_origin({"a": [error, b"value"]})
    assert origin.load_many([b"a"]) == [b"value"]
    assert len(fake.requests) == 2 and origin.stats()["retries"] == 1


def test_an_object_over_the_limit_is_oversized_by_its_length_and_is_not_read() -> None:
    origin, fake = s3_origin({"big": b"x" * 11, "fits": b"y" * 10}, max_object_bytes=10)
    assert origin.load_many([b"big", b"fits"]) == [None, b"y" * 10]
    big, fits = fake.bodies
    assert big.reads == [] and big.closed and fits.closed
    assert fits.reads == [11]  # at most one byte more than the limit
    assert counts(origin)["oversized"] == 1 and counts(origin)["loads"] == 1


def test_a_body_longer_than_its_stated_length_is_still_caught() -> None:
    origin, fake = s3_origin({"liar": (b"x" * 50, 5)}, max_object_bytes=10)
    assert origin.load_many([b"liar"]) == [None]
    assert fake.bodies[0].reads == [11] and counts(origin)["oversized"] == 1


def test_an_empty_object_is_an_empty_value() -> None:
    origin, _fake = s3_origin({"empty": b""})
    assert origin.load_many([b"empty"]) == [b""]
    assert counts(origin)["loads"] == 1


def test_load_many_fetches_in_parallel_on_a_pool_made_once() -> None:
    objects = {f"k{i}": b"v%d" % i for i in range(20)}
    origin, _fake = s3_origin(objects, max_parallel=4)
    pool = origin._executor
    assert origin.load_many([f"k{i}".encode() for i in range(20)]) == [b"v%d" % i for i in range(20)]
    origin.load_many([b"k1", b"k2"])
    assert origin._executor is pool and pool._max_workers == 4
    origin.close()
    assert origin.load_many([b"k3"]) == [b"v3"]  # after close it still answers, serially


def test_s3_status_is_published_into_the_agents_component_status() -> None:
    agent = SimpleNamespace(component_status={})
    origin = S3Origin("bucket", prefix="p/", client=FakeS3({"p/a": b"1"}), agent=agent)
    origin.load_many([b"a", b"b"])
    shown = agent.component_status["origin_s3"]
    assert shown["bucket"] == "bucket" and shown["loads"] == 1 and shown["misses"] == 1 and shown["breaker"] == "closed"


def test_the_real_client_has_no_sdk_retries_and_the_configured_timeouts() -> None:
    origin = S3Origin("bucket", region="us-east-1", endpoint_url="http://127.0.0.1:9", timeout_seconds=0.5, max_parallel=3)
    try:
        config = origin.client.meta.config
        assert config.connect_timeout == 0.5 and config.read_timeout == 0.5
        assert config.retries["total_max_attempts"] == 1 and config.max_pool_connections == 3
    finally:
        origin.close()


# ----------------------------------------------------------------------------- redis


def test_redis_loads_binary_keys_with_mget_in_chunks_of_max_batch() -> None:
    keys = [b"\x00k%d\xff" % i for i in range(5)]
    fake = FakeRedis({k: b"v" + k for k in keys[:4]} | {keys[4]: b"x" * 9})
    origin = RedisOrigin("redis://127.0.0.1:1/0", client=fake, max_batch=2, max_value_bytes=8, guard=NO_RETRY_WAIT)
    assert origin.load_many([*keys, b"absent", keys[0]]) == [b"v" + k for k in keys[:4]] + [None, None, b"v" + keys[0]]
    assert fake.calls == [keys[0:2], keys[2:4], [keys[4], b"absent"]]
    assert counts(origin) == {"loads": 5, "misses": 1, "rejected": 0, "oversized": 1, "errors": 0, "skipped_breaker_open": 0}


def test_redis_connection_errors_are_retried_and_auth_errors_are_not() -> None:
    fake = FakeRedis({b"a": b"1"}, fail=[rex.ConnectionError("refused")])
    origin = RedisOrigin("redis://127.0.0.1:1/0", client=fake, guard=NO_RETRY_WAIT)
    assert origin.load_many([b"a"]) == [b"1"] and len(fake.calls) == 2

    fake = FakeRedis({b"a": b"1"}, fail=[rex.AuthenticationError("WRONGPASS"), rex.AuthenticationError("WRONGPASS")])
    origin = RedisOrigin("redis://127.0.0.1:1/0", client=fake, guard=NO_RETRY_WAIT)
    assert origin.load_many([b"a"]) == [None] and len(fake.calls) == 1
    assert counts(origin)["errors"] == 1 and origin.guard.breaker.fail_counter == 1

    fake = FakeRedis({}, fail=[rex.TimeoutError("timed out")] * 2)
    origin = RedisOrigin("redis://127.0.0.1:1/0", client=fake, guard=NO_RETRY_WAIT)
    assert origin.load_many([b"a"]) == [None] and len(fake.calls) == 2


def test_redis_client_uses_resp2_no_own_retries_and_the_secret_password() -> None:
    origin = RedisOrigin(
        "redis://:from-url@127.0.0.1:6390/2",
        password=Secret("s3cret", "${env:X}"),
        timeout_seconds=0.25,
        max_connections=3,
    )
    try:
        pool = origin.client.connection_pool
        kw = pool.connection_kwargs
        assert kw["protocol"] == 2 and kw["password"] == "s3cret"
        assert kw["socket_timeout"] == 0.25 and kw["socket_connect_timeout"] == 0.25
        assert kw["retry"].get_retries() == 0 and pool.max_connections == 3
        status = origin.status()
        assert status["endpoint"] == "127.0.0.1:6390/2"
        assert "s3cret" not in repr(status) and "from-url" not in repr(status)
    finally:
        origin.close()


def test_a_bad_redis_url_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError) as info:
        RedisOrigin("http://:pw@host/0")
    assert "pw" not in str(info.value)


# ----------------------------------------------------------------------------- schemas and config


@pytest.mark.parametrize("module", [s3, redis_origin])
def test_schemas_are_closed_and_every_number_has_a_default_and_a_range(module: Any) -> None:
    fragment = module.config_schema()
    jsonschema.Draft202012Validator.check_schema(fragment)
    assert fragment["additionalProperties"] is False
    for name, prop in fragment["properties"].items():
        assert "default" in prop and "description" in prop, name
        if prop.get("type") in ("integer", "number"):
            assert "minimum" in prop and "maximum" in prop, name
        jsonschema.Draft202012Validator(prop).validate(prop["default"])


def test_defaults() -> None:
    section: dict[str, Any] = {}
    fill_defaults(section, s3.config_schema())
    assert section["bucket"] == "" and section["prefix"] == "" and section["region"] is None
    assert section["max_object_bytes"] == 1 << 20 and section["max_parallel"] == 8 and section["retry_attempts"] == 2
    section = {}
    fill_defaults(section, redis_origin.config_schema())
    assert section["url"] == "" and section["password"] is None and section["max_batch"] == 500
    assert redis_origin.config_schema()["properties"]["password"] == {
        **redis_origin.config_schema()["properties"]["password"],
        "type": ["string", "null"],
        "writeOnly": True,
        "default": None,
    }


def test_both_are_builtins_with_validated_sections() -> None:
    assert ("s3", "plugins.origins.s3") in DEFAULT_PLUGINS
    assert ("redis_origin", "plugins.origins.redis") in DEFAULT_PLUGINS
    host = PluginHost(load_entrypoints=False)
    assert host.plugins["s3"].state == "loaded" and host.plugins["redis_origin"].state == "loaded"
    fragments, opaque = host.schema_fragments()
    text = "plugins:\n  s3:\n    bucket: b\n    prefix: p/\n  redis_origin:\n    url: redis://127.0.0.1:6379/0\n"
    cfg = load_config(None, text=text, plugin_fragments=fragments, opaque_plugins=opaque)
    assert cfg.plugin_config("s3")["bucket"] == "b" and cfg.plugin_config("s3")["enabled"] is True
    assert cfg.plugin_config("redis_origin")["max_batch"] == 500


def test_the_redis_password_stays_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORIGIN_PW", "hunter2")
    fragments, opaque = PluginHost(load_entrypoints=False).schema_fragments()
    text = "plugins:\n  redis_origin:\n    url: redis://127.0.0.1:6379/0\n    password: ${env:ORIGIN_PW}\n"
    cfg = load_config(None, text=text, plugin_fragments=fragments, opaque_plugins=opaque)
    value = cfg.plugin_config("redis_origin")["password"]
    assert isinstance(value, Secret) and value.reveal() == "hunter2" and "hunter2" not in repr(value)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("plugins:\n  s3:\n    bucket: b\n    max_parallel: 0\n", "plugins.s3.max_parallel"),
        ("plugins:\n  s3:\n    bucket: b\n    timeout_seconds: 0\n", "plugins.s3.timeout_seconds"),
        ("plugins:\n  s3:\n    bucket: 'a b'\n", "plugins.s3.bucket"),
        ("plugins:\n  s3:\n    bucket: b\n    retry_attempts: 11\n", "plugins.s3.retry_attempts"),
        ("plugins:\n  s3:\n    bucket: b\n    endpoint_url: ftp://x\n", "plugins.s3.endpoint_url"),
        ("plugins:\n  s3:\n    bukcet: b\n", "plugins.s3.bukcet"),
        ("plugins:\n  redis_origin:\n    url: http://x\n", "plugins.redis_origin.url"),
        ("plugins:\n  redis_origin:\n    max_batch: 0\n", "plugins.redis_origin.max_batch"),
        ("plugins:\n  redis_origin:\n    breaker_fail_max: 0\n", "plugins.redis_origin.breaker_fail_max"),
        ("plugins:\n  redis_origin:\n    pasword: x\n", "plugins.redis_origin.pasword"),
    ],
)
def test_bad_sections_are_config_errors_naming_the_key(text: str, path: str) -> None:
    fragments, opaque = PluginHost(load_entrypoints=False).schema_fragments()
    with pytest.raises(ConfigError) as info:
        load_config(None, text=text, plugin_fragments=fragments, opaque_plugins=opaque)
    assert [p.path for p in info.value.problems] == [path]


def _registered(text: str, agent: Any) -> list[Any]:
    host = PluginHost(
        load_entrypoints=False, builtins=(("s3", "plugins.origins.s3"), ("redis_origin", "plugins.origins.redis"))
    )
    fragments, opaque = host.schema_fragments()
    cfg = load_config(None, text=text, plugin_fragments=fragments, opaque_plugins=opaque)
    host.apply_config(cfg.plugin_enabled)
    return [origin for _plugin, origin in host.collect("predis_agent_register_origins", agent=agent, config=cfg)]


def test_nothing_is_registered_while_bucket_and_url_are_empty() -> None:
    agent = SimpleNamespace(component_status={"origin_s3": {}, "origin_redis": {}})
    assert _registered("", agent) == []
    assert agent.component_status == {}, "an unconfigured origin leaves no stale status behind"
    assert _registered("plugins:\n  s3:\n    bucket: b\n    enabled: false\n", agent) == []


def test_the_hooks_build_the_origins_from_their_sections() -> None:
    text = (
        "plugins:\n"
        "  s3:\n    bucket: b\n    prefix: p/\n    region: us-east-1\n    endpoint_url: http://127.0.0.1:9\n"
        "    max_object_bytes: 7\n    max_parallel: 2\n    breaker_fail_max: 3\n"
        "  redis_origin:\n    url: redis://127.0.0.1:9/1\n    max_batch: 9\n    max_value_bytes: 5\n"
    )
    agent = SimpleNamespace(component_status={})
    origins = {o.name: o for o in _registered(text, agent)}
    try:
        assert set(origins) == {"s3", "redis"}
        assert origins["s3"].prefix == "p/" and origins["s3"].max_object_bytes == 7 and origins["s3"].max_parallel == 2
        assert origins["s3"].guard.settings.breaker_fail_max == 3
        assert origins["redis"].max_batch == 9 and origins["redis"].max_value_bytes == 5
        assert set(agent.component_status) == {"origin_s3", "origin_redis"}
    finally:
        for origin in origins.values():
            origin.close()
