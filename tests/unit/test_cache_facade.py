# SPDX-License-Identifier: Apache-2.0
"""cache_core.cache on the NumPy backend: Redis semantics, TTL, eviction, accounting.

The property test drives random operation sequences against a plain dict model with a
fake clock; eviction is accounted for by letting the model forget exactly the keys the
cache reported as evicted through its access hook.
"""

from __future__ import annotations

import os

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_core.cache import RES_EVICTED, RES_EXPIRED, Cache, NotAnIntegerError, OutOfMemoryError
from cache_core.keys import Fingerprinter, KeyLengthError
from cache_core.store import ValueStore, ValueTooLargeError, size_classes


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def array_module() -> object:
    """The backend under test: NumPy, or CuPy when ``PREDIS_TEST_BACKEND=cupy`` (the GPU check).

    On CuPy the same sequences run through the CUDA kernels and the device value store,
    so the dict-model property test doubles as the CPU/GPU equivalence check.
    """
    if os.environ.get("PREDIS_TEST_BACKEND", "numpy") == "cupy":
        return pytest.importorskip("cupy")
    return numpy


XP = array_module()


def make(**kw: object) -> tuple[Cache, FakeClock, list[tuple[int, numpy.ndarray, numpy.ndarray]]]:
    clock = FakeClock()
    events: list[tuple[int, numpy.ndarray, numpy.ndarray]] = []
    args: dict[str, object] = {
        "max_keys": 64,
        "max_memory_bytes": 1 << 20,
        "clock": clock,
        "fingerprinter": Fingerprinter(secret=b"unit-test-secret", max_key_bytes=int(kw.get("max_key_bytes", 512))),  # type: ignore[call-overload]
        "access_hook": lambda op, fps, results, sizes: events.append((op, fps.copy(), results.copy())),
    }
    args.update(kw)
    return Cache(XP, **args), clock, events  # type: ignore[arg-type]


def test_set_get_overwrite_and_last_writer_wins() -> None:
    cache, _, _ = make()
    cache.mset([(b"a", b"1"), (b"b", b"2"), (b"a", b"3")])
    assert cache.mget([b"a", b"b", b"c", b"a"]) == [b"3", b"2", None, b"3"]
    cache.mset([(b"a", b"x" * 1000)])
    assert cache.get(b"a") == b"x" * 1000
    assert cache.dbsize() == 2
    snap = cache.snapshot()
    assert (snap.hits, snap.misses, snap.sets) == (4, 1, 3)  # sets count distinct keys written
    assert snap.value_bytes == 1000 + 1


def test_set_options_nx_xx_get_keepttl() -> None:
    cache, clock, _ = make()
    assert cache.set(b"k", b"v1", nx=True) == (True, None)
    assert cache.set(b"k", b"v2", nx=True) == (False, None)
    assert cache.set(b"missing", b"v", xx=True) == (False, None)
    assert cache.set(b"k", b"v3", xx=True, get=True) == (True, b"v1")
    cache.expire(b"k", 5000)
    cache.set(b"k", b"v4", keep_ttl=True)
    assert 0 < cache.ttl_ms(b"k") <= 5000
    cache.set(b"k", b"v5")
    assert cache.ttl_ms(b"k") == -1
    assert cache.ttl_ms(b"nope") == -2


def test_ttl_lazy_expiry_sweep_and_expire_zero() -> None:
    cache, clock, events = make()
    cache.mset([(b"a", b"1")], ttl_ms=100)
    cache.mset([(b"b", b"2")], ttl_ms=200)
    cache.mset([(b"c", b"3")])
    clock.t += 0.15
    assert cache.get(b"a") is None  # lazy
    assert cache.sweep_expired(100) == 0  # b is not due yet, a is gone already
    clock.t += 0.1
    assert cache.sweep_expired(100) == 1
    assert cache.dbsize() == 1 and cache.snapshot().expirations == 2
    assert cache.expire(b"c", 0) is True and cache.dbsize() == 0
    assert cache.expire(b"c", 10) is False
    assert any((r == RES_EXPIRED).any() for _, _, r in events)


def test_incr_semantics() -> None:
    cache, _, _ = make()
    assert cache.incrby(b"n", 1) == 1
    assert cache.incrby(b"n", -11) == -10
    cache.mset([(b"s", b"abc"), (b"big", str(2**63 - 1).encode()), (b"lead", b"01")])
    for key in (b"s", b"lead"):
        with pytest.raises(NotAnIntegerError):
            cache.incrby(key, 1)
    with pytest.raises(NotAnIntegerError):
        cache.incrby(b"big", 1)
    cache.expire(b"n", 10_000)
    cache.incrby(b"n", 1)
    assert cache.ttl_ms(b"n") > 0  # INCR keeps the TTL


def test_limits_are_refused_before_anything_changes() -> None:
    cache, _, _ = make(max_value_bytes=100, max_key_bytes=8)
    cache.mset([(b"ok", b"1")])
    with pytest.raises(ValueTooLargeError):
        cache.mset([(b"x", b"1"), (b"y", b"z" * 101)])
    with pytest.raises(KeyLengthError):
        cache.mset([(b"x" * 9, b"1")])
    with pytest.raises(KeyLengthError):
        cache.get(b"")
    assert cache.mget([b"x", b"ok"]) == [None, b"1"]


@pytest.mark.parametrize("policy", ["clock", "s3fifo"])
def test_eviction_keeps_within_key_and_byte_budgets(policy: str) -> None:
    cache, _, events = make(max_keys=32, max_memory_bytes=32 * 1024, eviction=policy)
    for i in range(200):
        cache.mset([(b"k%d" % i, b"v" * 500)])
        if i % 3 == 0:
            cache.get(b"k0")
    snap = cache.snapshot()
    assert snap.keys <= 32
    assert snap.charged_bytes <= 32 * 1024
    assert snap.evictions == 200 - snap.keys
    evicted = sum(int((r == RES_EVICTED).sum()) for _, _, r in events)
    assert evicted == snap.evictions
    # The frequently read key survives under both policies.
    assert cache.get(b"k0") == b"v" * 500


def test_a_value_larger_than_the_budget_is_refused() -> None:
    cache, _, _ = make(max_memory_bytes=4096, max_value_bytes=8192)
    with pytest.raises(OutOfMemoryError):
        cache.mset([(b"huge", b"x" * 5000)])


def test_accounting_returns_to_zero_and_flush() -> None:
    cache, _, _ = make()
    cache.mset([(b"k%d" % i, b"x" * i) for i in range(40)])
    assert cache.snapshot().value_bytes == sum(range(40))
    assert cache.delete([b"k%d" % i for i in range(40)] + [b"k1"]) == 40
    snap = cache.snapshot()
    assert snap.keys == 0 and snap.value_bytes == 0 and snap.charged_bytes == 0
    cache.mset([(b"a", b"1")])
    cache.flush()
    assert cache.dbsize() == 0 and cache.get(b"a") is None
    ok, detail = cache.self_test()
    assert ok, detail


def test_store_size_classes_and_exact_accounting() -> None:
    sizes = size_classes(1 << 20, 1.25)
    assert sizes[0] == 16 and sizes[-1] == 1 << 20 and sizes == sorted(set(sizes))
    assert all(b <= a * 1.25 + 8 for a, b in zip(sizes, sizes[1:]))
    store = ValueStore(XP, max_value_bytes=1 << 20)
    values = [bytes([i % 251]) * n for i, n in enumerate([0, 1, 15, 16, 17, 1000, 70000, 1 << 20])]
    handles = [store.put(v) for v in values]
    assert [store.get(h, len(v)) for h, v in zip(handles, values)] == values
    assert store.used_bytes == sum(map(len, values))
    assert store.chunk_bytes == sum(store.chunk_size(len(v)) for v in values)
    for h, v in zip(handles, values):
        store.free(h, len(v))
    assert (store.used_bytes, store.chunk_bytes, store.values) == (0, 0, 0)
    # One spare empty page per class of small values stays allocated until trim().
    small_classes = {store.class_for(len(v)) for v in values if store.page_bytes // store.chunk_size(len(v)) > 1}
    assert 0 < store.allocated_bytes <= len(small_classes) * store.page_bytes
    assert store.trim() > 0 and store.allocated_bytes == 0
    with pytest.raises(ValueTooLargeError):
        store.put(b"x" * ((1 << 20) + 1))


KEYS = st.sampled_from([b"k%d" % i for i in range(24)])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.binary(max_size=40), st.one_of(st.none(), st.integers(1, 3000))),
        st.tuples(st.just("mset"), st.lists(st.tuples(KEYS, st.binary(max_size=40)), min_size=1, max_size=6)),
        st.tuples(st.just("get"), st.lists(KEYS, min_size=1, max_size=6)),
        st.tuples(st.just("del"), st.lists(KEYS, min_size=1, max_size=4)),
        st.tuples(st.just("expire"), KEYS, st.integers(-5, 3000)),
        st.tuples(st.just("tick"), st.integers(1, 2000)),
        st.tuples(st.just("sweep"),),
    ),
    max_size=60,
)


@settings(max_examples=120, deadline=None)
@given(ops=OPS, policy=st.sampled_from(["clock", "s3fifo"]), small_batch=st.sampled_from([0, 1, 16]))
def test_random_sequences_match_a_dict_model(ops: list[tuple], policy: str, small_batch: int) -> None:
    """small_batch 0: every batch vectorised; 1: single keys scalar; 16: all of these batches scalar."""
    evicted: set[int] = set()
    fp = Fingerprinter(secret=b"model-secret")

    def hook(op: int, fps: numpy.ndarray, results: numpy.ndarray, sizes: numpy.ndarray) -> None:
        evicted.update(int(f) for f in fps[results == RES_EVICTED])

    cache, clock, _ = make(
        max_keys=16, max_memory_bytes=16 * 64, eviction=policy, fingerprinter=fp, access_hook=hook, small_batch=small_batch
    )
    model: dict[bytes, tuple[bytes, float | None]] = {}

    def now_ms() -> int:
        return int(clock.t * 1000)

    def alive(key: bytes) -> bytes | None:
        item = model.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= now_ms():
            del model[key]
            return None
        return value

    def forget_evicted() -> None:
        for key in list(model):
            if fp.fingerprint(key)[1] in evicted:
                del model[key]
        evicted.clear()

    for op in ops:
        kind = op[0]
        if kind == "set":
            _, key, value, ttl = op
            cache.mset([(key, value)], ttl_ms=ttl)
            forget_evicted()
            model[key] = (value, None if ttl is None else now_ms() + ttl)
        elif kind == "mset":
            cache.mset(op[1])
            forget_evicted()
            for key, value in op[1]:
                model[key] = (value, None)
        elif kind == "get":
            assert cache.mget(op[1]) == [alive(k) for k in op[1]]
        elif kind == "del":
            expected = len({k for k in op[1] if alive(k) is not None})
            assert cache.delete(op[1]) == expected
            for key in op[1]:
                model.pop(key, None)
        elif kind == "expire":
            _, key, ttl = op
            exists = alive(key) is not None
            assert cache.expire(key, ttl) is exists
            if exists:
                if ttl <= 0:
                    del model[key]
                else:
                    model[key] = (model[key][0], now_ms() + ttl)
        elif kind == "tick":
            clock.t += op[1] / 1000
        else:
            cache.sweep_expired(1000)
            # Like Redis' DBSIZE, the count includes expired keys not yet reclaimed, so
            # it is compared exactly right after a sweep and as a bound otherwise.
            live = [k for k in list(model) if alive(k) is not None]
            assert cache.dbsize() == len(live)
            assert cache.snapshot().value_bytes == sum(len(model[k][0]) for k in live)
        assert cache.dbsize() >= len([k for k in list(model) if alive(k) is not None])
        assert cache.snapshot().charged_bytes <= 16 * 64


def test_store_overwrite_in_the_same_class_is_in_place_and_a_cycle_does_not_churn_pages() -> None:
    store = ValueStore(XP, max_value_bytes=1 << 20)
    handle = store.put(b"a" * 20)
    assert store.replace(handle, 20, b"b" * 24) == handle  # 20 and 24 bytes share a class
    assert store.get(handle, 24) == b"b" * 24 and store.used_bytes == 24
    moved = store.replace(handle, 24, b"c" * 5000)
    assert moved != handle and store.get(moved, 5000) == b"c" * 5000
    assert store.used_bytes == 5000 and store.values == 1
    allocated = store.allocated_bytes
    for _ in range(50):
        store.free(moved, 5000)
        moved = store.put(b"d" * 5000)
    assert store.allocated_bytes == allocated and store.get(moved, 5000) == b"d" * 5000


@pytest.mark.parametrize("policy", ["clock", "s3fifo"])
def test_small_and_batched_paths_agree(policy: str) -> None:
    """The scalar host path (small batches) and the vectorised path give the same results."""
    rng = numpy.random.default_rng(7)
    small = Cache(numpy, max_keys=64, max_memory_bytes=1 << 16, eviction=policy)
    batched = Cache(numpy, max_keys=64, max_memory_bytes=1 << 16, eviction=policy, small_batch=0)
    assert small.small_batch > 0 and batched.small_batch == 0
    keys = [b"k%d" % i for i in range(100)]
    for step in range(400):
        batch = [keys[int(i)] for i in rng.integers(0, len(keys), int(rng.integers(1, 5)))]
        op = step % 4
        items = [(k, k * int(rng.integers(1, 3))) for k in batch]
        for cache in (small, batched):
            if op == 0:
                cache.mset(items)
            elif op == 3:
                cache.delete(batch)
        if op in (1, 2):
            assert small.mget(batch) == batched.mget(batch)
        assert small.exists(batch) == batched.exists(batch)
    a, b = small.snapshot(), batched.snapshot()
    assert (a.keys, a.hits, a.misses, a.evictions, a.value_bytes) == (b.keys, b.hits, b.misses, b.evictions, b.value_bytes)


def test_a_write_of_more_distinct_keys_than_the_cache_holds_keeps_the_last_ones() -> None:
    """As that many SETs in a row would: no error, the cache full with keys of the batch
    (the last ones written among them; which earlier ones stay is the eviction policy's
    choice), and the cache keeps working (a failed batch once leaked its entry IDs and broke
    every later write)."""
    cache = Cache(numpy, max_keys=4, max_memory_bytes=1 << 20)
    cache.mset([(b"k%d" % i, b"v%d" % i) for i in range(10)])
    assert cache.dbsize() == 4
    assert cache.mget([b"k8", b"k9"]) == [b"v8", b"v9"]
    assert cache.exists([b"k%d" % i for i in range(10)]) == 4
    cache.mset([(b"after", b"1")])
    assert cache.get(b"after") == b"1"


def test_databases_are_separate_keyspaces_sharing_one_budget() -> None:
    """The same key in two databases is two entries; evictions take keys of any database,
    and the per-database counts stay equal to what the entries say."""
    cache = Cache(numpy, max_keys=32, max_memory_bytes=1 << 20, databases=4)
    one, three = cache.database(1), cache.database(3)
    cache.mset([(b"k", b"zero")])
    one.mset([(b"k", b"one")])
    assert (cache.get(b"k"), one.get(b"k"), three.get(b"k")) == (b"zero", b"one", None)
    for i in range(100):  # past max_keys: evictions across databases
        (cache, one, three)[i % 3].mset([(b"n%d" % i, b"v")])
    live = cache.e_live
    counted = numpy.bincount(cache.e_db[live].astype(numpy.int64), minlength=4)
    assert cache.db_keys.tolist() == counted.tolist()
    assert cache.dbsize() == 32 == sum(cache.dbsize(db) for db in range(4))
    cache.swap_databases(1, 3)
    assert cache.db_keys.tolist() == [counted[0], counted[3], counted[2], counted[1]]
    assert sorted(three.key_names()) == sorted(set(three.key_names()))
    cache.database(3).flush()
    assert cache.dbsize(3) == 0 and cache.dbsize() == 32 - counted[1]
    with pytest.raises(ValueError, match="databases must be"):
        Cache(numpy, max_keys=8, max_memory_bytes=1 << 20, databases=0)


def test_the_table_and_the_entries_grow_with_the_keys_and_flushall_gives_them_back() -> None:
    cache = Cache(numpy, max_keys=200_000, max_memory_bytes=64 << 20)
    idle = cache.snapshot()
    first = cache.table.capacity
    assert first * cache.table.max_load_factor < 200_000, "the table starts small"
    assert idle.device_bytes < 200_000 and idle.host_bytes == 0
    keys = [b"key:%06d" % i for i in range(30_000)]
    for start in range(0, len(keys), 7_000):  # batches and single writes both grow it
        cache.mset([(k, k[::-1]) for k in keys[start : start + 7_000]])
    cache.set(b"one more", b"v")
    assert cache.table.capacity * cache.table.max_load_factor >= 30_001 > first
    assert cache.mget(keys) == [k[::-1] for k in keys]
    assert cache.get(b"one more") == b"v"
    grown = cache.snapshot()
    assert grown.host_bytes > 30_000 * 50  # the entries handed out are counted, not max_keys of them
    assert grown.host_bytes < 200_000 * 50
    cache.delete(keys[:10_000])
    cache.set(b"reuses an entry", b"w")
    assert cache.snapshot().host_bytes <= grown.host_bytes + 64, "a freed entry is handed out again"
    assert cache.scan(0, 100_000)[1].count(b"reuses an entry") == 1
    cache.flush()
    assert cache.table.capacity == first and cache.snapshot().host_bytes == 0
    assert cache.mget(keys[:5]) == [None] * 5


def test_clock_names_each_victim_once_when_its_sweep_wraps_around() -> None:
    """A sweep that wraps the ring meets the cold entries it already chose: each must be a
    victim once (the cache freed a victim named twice twice: negative byte counts, one
    entry ID handed to two keys)."""
    from cache_core.eviction import ClockPolicy

    policy = ClockPolicy(8)
    policy.on_insert(numpy.arange(8, dtype=numpy.int64), numpy.zeros(8, dtype=numpy.uint64))
    policy.on_access(numpy.arange(4, 8, dtype=numpy.int64))  # 0-3 cold, 4-7 referenced
    victims = policy.victims(6).tolist()
    assert len(victims) == 6 and len(set(victims)) == 6
    assert victims[:4] == [0, 1, 2, 3]  # the cold ones first, in the hand's order
    cache = Cache(numpy, max_keys=8, max_memory_bytes=1 << 16)
    for round_ in range(6):
        cache.mset([(b"k%d-%d" % (round_, i), b"v" * (i * 7)) for i in range(12)])
        cache.mget([b"k%d-%d" % (round_, i) for i in range(0, 12, 3)])
        assert cache.live_keys == int(cache.e_live.sum()) <= 8
        assert cache.store.chunk_bytes >= 0 and len(cache._free) == len(set(cache._free))
