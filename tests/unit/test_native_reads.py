# SPDX-License-Identifier: Apache-2.0
"""The compiled string reads and overwrites (cache_core._native.Entries) against the Python paths.

Two caches with one fingerprinting secret and one fake clock go through the same random
operations, one reading through the compiled core, one with ``native=False`` (the Python
small-batch and vectorised paths, the oracle): every read's values, hit flags and access
events, the counters, the per-entry arrays and the CLOCK reference bits must agree after
each step. Writes of keys that exist with values of the same size class take the compiled
overwrite; the others the Python path. Keys repeat within batches, some carry TTLs that the clock passes, some are
prefetched, some hold hashes, and reads are bounded by byte budgets."""

from __future__ import annotations

from typing import Any

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_core import _native
from cache_core.cache import TYPE_HASH, WRONG_TYPE, Cache, null_access_hook
from cache_core.keys import Fingerprinter, KeyLengthError


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[int, list[int], list[int], list[int]]] = []

    def __call__(self, op: int, fps: Any, results: Any, sizes: Any) -> None:
        self.seen.append((op, [int(f) for f in fps], [int(r) for r in results], [int(s) for s in sizes]))


def _pair(eviction: str = "clock") -> tuple[Cache, Cache, FakeClock, Events, Events]:
    clock, secret = FakeClock(), b"s" * 32
    made = []
    for native in (True, False):
        events = Events()
        cache = Cache(
            numpy, max_keys=64, max_memory_bytes=1 << 16, max_key_bytes=24, eviction=eviction, clock=clock,
            fingerprinter=Fingerprinter(secret, max_key_bytes=24), access_hook=events, native=native,
        )  # fmt: skip
        made.append((cache, events))
    assert made[0][0]._entries is not None and made[1][0]._entries is None
    return made[0][0], made[1][0], clock, made[0][1], made[1][1]


_ENTRY_ARRAYS = ("e_handle", "e_len", "e_expire", "e_atime", "e_prefetched", "e_type", "e_live")


def _same_state(a: Cache, b: Cache) -> None:
    for name in _ENTRY_ARRAYS:
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    assert a.stats.hits == b.stats.hits and a.stats.misses == b.stats.misses
    assert a.stats.prefetch_used == b.stats.prefetch_used and a.stats.expirations == b.stats.expirations
    assert (a.stats.sets, a.stats.prefetch_wasted, a.stats.evictions) == (b.stats.sets, b.stats.prefetch_wasted, b.stats.evictions)
    assert (a.store.used_bytes, a.store.chunk_bytes, a.live_keys) == (b.store.used_bytes, b.store.chunk_bytes, b.live_keys)
    if a.eviction_name == "clock":
        assert a.policy.ref.tolist() == b.policy.ref.tolist()


_KEYS = st.sampled_from([b"k%d" % i for i in range(12)] + [b"", b"x" * 25])


@st.composite
def _steps(draw: Any) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 30))):
        op = draw(st.sampled_from(["read", "read", "read", "write", "write", "rewrite", "ttl", "prefetch", "hash", "tick", "delete"]))
        keys = draw(st.lists(_KEYS, min_size=1, max_size=40))
        steps.append((op, keys, draw(st.integers(0, 60)), draw(st.binary(max_size=40))))
    return steps


@settings(max_examples=200, deadline=None)
@given(steps=_steps(), eviction=st.sampled_from(["clock", "lru", "s3fifo"]))
def test_compiled_reads_match_the_python_paths(steps: list[tuple[str, Any]], eviction: str) -> None:
    native, oracle, clock, native_events, oracle_events = _pair(eviction)
    for op, keys, number, value in steps:
        good = [k for k in keys if 1 <= len(k) <= 24]
        if op == "read":
            outcomes = []
            for cache in (native, oracle):
                try:
                    outcomes.append(cache.lookup(keys, max_bytes=number if number % 3 else 0))
                except KeyLengthError as exc:
                    outcomes.append(str(exc))  # type: ignore[arg-type]
            assert outcomes[0] == outcomes[1]
        elif op == "write" and good:
            for cache in (native, oracle):
                cache.mset([(k, value + k) for k in good])
        elif op == "rewrite" and good:  # the same keys again: overwrites in place, TTLs given or kept
            ttl = number if number % 4 == 1 else None
            for cache in (native, oracle):
                cache.mset([(k, value[: len(k)] + k) for k in good], ttl_ms=ttl, keep_ttl=number % 4 == 2)
        elif op == "ttl" and good:
            for cache in (native, oracle):
                cache.mset([(good[0], value)], ttl_ms=number + 1)
        elif op == "prefetch" and good:
            for cache in (native, oracle):
                cache.mset([(k, value) for k in good], prefetched=True)
        elif op == "hash" and good:
            for cache in (native, oracle):
                cache.mset([(good[0], b"field")], kind=TYPE_HASH)
        elif op == "tick":
            clock.t += number / 1000.0
        elif op == "delete" and good:
            assert native.delete(good) == oracle.delete(good)
        _same_state(native, oracle)
        assert native_events.seen == oracle_events.seen


@settings(max_examples=150, deadline=None)
@given(steps=_steps(), eviction=st.sampled_from(["clock", "lru", "s3fifo"]), resp3=st.booleans(), observe=st.booleans())
def test_a_servers_compiled_replies_and_overwrites_match_the_python_paths(
    steps: list[tuple[str, Any]], eviction: str, resp3: bool, observe: bool
) -> None:
    """What the RESP server calls for a lone GET or SET (Cache.serve_lone), a GET run, an
    MGET and a SET run: the compiled replies are the oracle's values encoded, the hit flags
    told to the prefetch observer agree, and the entries, counters and CLOCK bits end up the
    same; a call the compiled path leaves to Python (None / False) changed nothing."""
    clock, secret = FakeClock(), b"s" * 32
    caches, observed = [], []
    for native in (True, False):
        seen: list[tuple[list[bytes], list[bool]]] = []
        cache = Cache(
            numpy, max_keys=64, max_memory_bytes=1 << 16, max_key_bytes=24, eviction=eviction, clock=clock,
            fingerprinter=Fingerprinter(secret, max_key_bytes=24), native=native,
        )  # fmt: skip
        if observe:
            cache.prefetch_observer = lambda keys, hits, seen=seen: seen.append((list(keys), list(hits)))
        caches.append(cache)
        observed.append(seen)
    native, oracle = caches
    null, other = (b"_\r\n", b"-WRONGTYPE x\r\n") if resp3 else (b"$-1\r\n", b"-WRONGTYPE x\r\n")
    for op, keys, number, value in steps:
        good = [k for k in keys if 1 <= len(k) <= 24]
        if op == "read" and len(keys) == 1:
            lone = native.serve_lone(keys[0], None, null, other)
            try:
                values, hits = oracle.lookup(keys)
            except KeyLengthError:
                assert lone is None
                continue
            if lone is None:
                assert native.lookup(keys) == (values, hits)
            else:
                assert not observe and eviction == "clock"
                assert lone == _native.encode_bulks(values, null, other, False)
        elif op == "read":
            header = number % 2 == 1
            got = native.read_replies(keys, null, other, header)
            try:
                values, hits = oracle.lookup(keys)
            except KeyLengthError:
                assert got is None
                continue
            if got is None:
                assert native.lookup(keys) == (values, hits)
            else:
                assert got[0] == _native.encode_bulks(values, null, other, header)
                assert got[1] == hits == ([v is not None for v in values] if observe else [])
        elif op in ("write", "rewrite") and good:
            distinct = list(dict.fromkeys(good))
            pairs = [(k, value[: len(k)] + k) for k in distinct]
            if len(pairs) == 1:
                if native.serve_lone(pairs[0][0], pairs[0][1], null, other) is None:
                    native.mset(pairs)
            elif not native.overwrite_strings(distinct, [v for _k, v in pairs]):
                native.mset(pairs)
            oracle.mset(pairs)
        elif op == "hash" and good:
            for cache in caches:
                cache.mset([(good[0], b"field")], kind=TYPE_HASH)
        elif op == "ttl" and good:
            for cache in caches:
                cache.mset([(good[0], value)], ttl_ms=number + 1)
        elif op == "tick":
            clock.t += number / 1000.0
        elif op == "delete" and good:
            assert native.delete(good) == oracle.delete(good)
        _same_state(native, oracle)
    assert observed[0] == observed[1] == []  # told by the server (notify_reads), not by these calls


def test_a_servers_read_and_overwrite_in_one_call() -> None:
    """The compiled reply path serves plain reads, and leaves to Python, with nothing
    changed, what it cannot serve: an expired entry, a hook that takes no ring, a read the
    origin would fill; overwrite_strings only rewrites existing keys that keep their class."""
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 16, max_key_bytes=24, clock=(clock := FakeClock()))
    cache.mset([(b"a", b"1"), (b"b", b""), (b"h", b"f")])
    cache.mset([(b"h", b"f")], kind=TYPE_HASH)
    null, wrong = b"$-1\r\n", b"-WRONGTYPE x\r\n"
    assert cache.read_replies([b"a", b"zz", b"b", b"h"], null, wrong, False) == (b"$1\r\n1\r\n$-1\r\n$0\r\n\r\n-WRONGTYPE x\r\n", [])
    assert cache.read_replies([b"a", b"h"], null, null, True) == (b"*2\r\n$1\r\n1\r\n$-1\r\n", [])
    assert (cache.stats.hits, cache.stats.misses) == (5, 1)
    assert cache.read_replies([b"x" * 25], null, wrong, False) is None  # too long: the Python path raises
    cache.mset([(b"t", b"v")], ttl_ms=5)
    clock.t += 1.0
    atime = cache.e_atime.tolist()
    assert cache.read_replies([b"a", b"t"], null, wrong, False) is None
    assert cache.e_atime.tolist() == atime and (cache.stats.hits, cache.stats.misses) == (5, 1)
    # Overwrites: an existing key keeping its size class in place, anything else refused.
    handle = cache.e_handle.tolist()
    assert cache.overwrite_strings([b"a", b"b"], [b"22", b"3"])
    assert cache.e_handle.tolist() == handle and cache.mget([b"a", b"b"]) == [b"22", b"3"]
    sets = cache.stats.sets
    assert not cache.overwrite_strings([b"a", b"new"], [b"1", b"2"])
    assert not cache.overwrite_strings([b"a"], [b"x" * 600])  # another size class
    assert not cache.overwrite_strings([b"h"], [b"x"])  # a hash
    assert cache.stats.sets == sets and cache.mget([b"a", b"new"]) == [b"22", None]
    # One request in one call: a GET's reply, a SET over an existing key in place.
    hits = cache.stats.hits
    assert cache.serve_lone(b"a", None, null, wrong) == b"$2\r\n22\r\n"
    assert cache.serve_lone(b"h", None, null, wrong) == wrong and cache.serve_lone(b"zz", None, null, wrong) == null
    assert cache.stats.hits == hits + 2
    assert cache.serve_lone(b"a", b"7", null, wrong) is True and cache.mget([b"a"]) == [b"7"]
    assert cache.serve_lone(b"new", b"7", null, wrong) is None and cache.mget([b"new"]) == [None]
    assert cache.serve_lone(b"x" * 25, None, null, wrong) is None
    cache.prefetch_observer = lambda keys, hits: None  # told in Python: not here
    assert cache.serve_lone(b"a", None, null, wrong) is None
    cache.prefetch_observer = None
    # A hook that reports through Python calls, or an origin that fills misses: not here.
    cache.access_hook = Events()
    assert cache.read_replies([b"a"], null, wrong, False) is None and cache.serve_lone(b"a", None, null, wrong) is None
    cache.access_hook = null_access_hook
    assert cache.read_replies([b"a"], null, wrong, False) is not None
    cache.origin, cache.read_through = object(), True
    assert cache.read_replies([b"a"], null, wrong, False) is None and cache.serve_lone(b"a", None, null, wrong) is None


@settings(max_examples=60, deadline=None)
@given(steps=_steps())
def test_compiled_paths_log_the_same_events_into_the_access_log(steps: list[tuple[str, Any]]) -> None:
    """With an access log that takes every event, the compiled reads and overwrites write
    their events into its ring themselves: the same events, in the same order, as the
    Python paths report through the hook."""
    from cache_core.access_log import AccessLog

    clock, secret = FakeClock(), b"s" * 32
    logs = [AccessLog(1 << 12), AccessLog(1 << 12)]
    assert logs[0].hook.ring is not None
    caches = [
        Cache(numpy, max_keys=64, max_memory_bytes=1 << 16, max_key_bytes=24, clock=clock, access_hook=log.hook,
              fingerprinter=Fingerprinter(secret, max_key_bytes=24), native=native)
        for log, native in zip(logs, (True, False))
    ]  # fmt: skip
    for op, keys, number, value in steps:
        good = [k for k in keys if 1 <= len(k) <= 24]
        for cache in caches:
            if op in ("read", "hash") or not good:
                try:
                    cache.lookup(keys, max_bytes=number if number % 3 else 0)
                except KeyLengthError:
                    pass
            elif op == "tick":
                clock.t += number / 1000.0
            else:
                cache.mset([(k, value[: len(k)] + k) for k in good], ttl_ms=number + 1 if op == "ttl" else None)
    events = [log.read(0).events for log in logs]
    assert logs[0].head == logs[1].head and logs[0].offered == logs[1].offered
    for field in ("fp", "op", "result", "size"):
        assert events[0][field].tolist() == events[1][field].tolist(), field


def test_a_run_of_reads_and_its_replies() -> None:
    native, _oracle, clock, events, _ = _pair()
    native.mset([(b"a", b"1"), (b"b", b""), (b"c", b"333")], ttl_ms=None)
    native.mset([(b"h", b"f")], kind=TYPE_HASH)
    values, hits = native.lookup([b"a", b"zz", b"b", b"h", b"a"])
    assert values == [b"1", None, b"", WRONG_TYPE, b"1"]
    assert native.stats.hits == 4 and native.stats.misses == 1
    # A byte budget serves a prefix (at least one key) and reads only that.
    values, _ = native.lookup([b"c", b"a", b"a"], max_bytes=3)
    assert values == [b"333"]
    values, _ = native.lookup([b"c", b"a"], max_bytes=1)
    assert values == [b"333"]
    # An expired entry sends the batch to the Python path, which removes it.
    native.mset([(b"t", b"v")], ttl_ms=5)
    clock.t += 1.0
    assert native.lookup([b"t", b"a"])[0] == [None, b"1"]
    assert native.stats.expirations == 1
    ok, wrong = b"$-1\r\n", b"-WRONGTYPE x\r\n"
    assert _native.encode_bulks([b"ab", None, WRONG_TYPE, b""], ok, wrong, True) == b"*4\r\n$2\r\nab\r\n$-1\r\n-WRONGTYPE x\r\n$0\r\n\r\n"
    assert _native.encode_bulks([b"x" * 1000], ok, wrong, False) == b"$1000\r\n" + b"x" * 1000 + b"\r\n"
    with pytest.raises(TypeError):
        _native.encode_bulks((b"a",), ok, wrong, True)


def test_entries_refuse_arrays_they_cannot_serve() -> None:
    arrays = [numpy.zeros(8, dtype=numpy.int64) for _ in range(4)] + [numpy.zeros(8, dtype=bool), numpy.zeros(8, dtype=numpy.uint8)]
    with pytest.raises(ValueError):
        _native.Entries(*arrays[:5], numpy.zeros(4, dtype=numpy.uint8))
    with pytest.raises(TypeError):
        _native.Entries(*arrays[:5])
    entries = _native.Entries(*arrays)
    cache = Cache(numpy, max_keys=8, max_memory_bytes=1 << 12)
    with pytest.raises(TypeError):  # a hasher that is not the compiled one
        entries.read(object(), cache.table.view, [b"a"], 16, 0, 0, False, WRONG_TYPE, [], numpy.zeros(0, dtype=numpy.int64), None, None, 1)
    with pytest.raises(TypeError):
        entries.read(cache.fp.hasher(0), object(), [b"a"], 16, 0, 0, False, WRONG_TYPE, [], numpy.zeros(0, dtype=numpy.int64), None, None, 1)


def test_put_many_allocates_as_put_does_one_value_after_another() -> None:
    """The value store's batch put (bulk chunk allocation, one compiled copy) gives the same
    handles and leaves the same pages, free lists and counters as put() called per value,
    through frees, page releases and reuse, over several size classes."""
    import random

    from cache_core.store import ValueStore

    rng = random.Random(3)
    for _trial in range(120):
        page_bytes = rng.choice([256, 1024, 4096])
        batch, single = (ValueStore(numpy, max_value_bytes=5000, page_bytes=page_bytes) for _ in range(2))
        live: list[tuple[int, int]] = []
        for _step in range(12):
            if live and rng.random() < 0.4:
                for _ in range(rng.randint(1, len(live))):
                    handle, length = live.pop(rng.randrange(len(live)))
                    batch.free(handle, length)
                    single.free(handle, length)
            values = [rng.randbytes(rng.choice([0, 3, 16, 17, 30, 100, 700, 5000])) for _ in range(rng.randint(0, 60))]
            handles = batch.put_many(values).tolist()
            assert handles == [single.put(v) for v in values]
            assert [batch.get(h, len(v)) for h, v in zip(handles, values)] == values
            live += [(h, len(v)) for h, v in zip(handles, values)]
            assert (batch.used_bytes, batch.chunk_bytes, batch.values, batch.allocated_bytes) == (
                single.used_bytes, single.chunk_bytes, single.values, single.allocated_bytes)  # fmt: skip
            for a, b in zip(batch._classes, single._classes):
                assert (a.free, a.fresh, a.used, a.partial, a.released, a.current, a.spare) == (
                    b.free, b.fresh, b.used, b.partial, b.released, b.current, b.spare)  # fmt: skip
    store = ValueStore(numpy, max_value_bytes=100)
    with pytest.raises(ValueError):  # too long: refused before anything is allocated
        store.put_many([b"a"] * 4 + [b"x" * 101])
    assert store.values == 0 and store.allocated_bytes == 0
    with pytest.raises(ValueError):
        _native.write_values(store.page_lists, store.chunk_sizes, numpy.zeros(1, dtype=numpy.int64), [b"x" * 17])
