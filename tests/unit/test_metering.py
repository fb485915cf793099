# SPDX-License-Identifier: Apache-2.0
"""cache_core.metering: origin reads by caller, and the control share the prefetcher never loads."""

from __future__ import annotations

import hashlib

import numpy
import pytest

from cache_core.cache import Cache
from cache_core.metering import BUCKETS, CONTROL_HASH_KEY, CONTROL_HASH_PERSON, ORIGIN_LATENCY_BUCKETS, ControlShare, OriginMeter
from cache_core.models import StrideModel, Vocabulary
from cache_core.prefetch import Prefetcher, PrefetchSettings
from cache_core.replay import MemoryOrigin


def small_cache(origin: MemoryOrigin | None = None) -> Cache:
    return Cache(numpy, max_keys=4096, max_memory_bytes=1 << 22, origin=origin, read_through=origin is not None)


def test_the_control_share_is_the_documented_hash_and_about_its_share() -> None:
    share = ControlShare(0.1)
    keys = [f"key:{i}".encode() for i in range(20000)]
    mask = share.mask(keys)
    expected = [
        int.from_bytes(hashlib.blake2b(k, digest_size=16, key=CONTROL_HASH_KEY, person=CONTROL_HASH_PERSON).digest()[8:], "little") % BUCKETS < 1000
        for k in keys
    ]
    assert mask == expected
    assert 0.09 < sum(mask) / len(mask) < 0.11
    # Stable: a new instance (a restart) picks the same keys; none with a zero share.
    assert ControlShare(0.1).mask(keys) == mask and not any(ControlShare(0.0).mask(keys))
    assert (keys[mask.index(True)] in share) and (keys[mask.index(False)] not in share)
    with pytest.raises(ValueError, match="control share"):
        ControlShare(1.0)


def test_the_prefetcher_never_loads_a_control_key_and_counts_both_groups() -> None:
    origin = MemoryOrigin(8)
    cache = small_cache()
    vocab = Vocabulary(4096)
    settings = PrefetchSettings(depth=4, threshold=0.0, adaptive=False, control_share=0.3)
    pf = Prefetcher(cache, origin, StrideModel(vocab), vocab, settings, sync=True)
    share = ControlShare(0.3)
    hits = 0
    for n in range(300):
        key = f"blk:{n:05d}".encode()
        hit = cache.get(key) is not None
        hits += hit
        if not hit:
            cache.set(key, b"demand")
        pf.observe([key], [hit])
    prefetched = [k for k in (f"blk:{n:05d}".encode() for n in range(310)) if cache.peek(k) == origin.value]
    assert prefetched, "the stride was prefetched"
    assert not any(share.mask(prefetched)), "a control key was prefetched"
    st = pf.stats
    assert st.skipped_control > 0
    assert st.control_reads + st.treated_reads == 300 and st.control_hits + st.treated_hits == hits
    control = sum(share.mask([f"blk:{n:05d}".encode() for n in range(300)]))
    assert st.control_reads == control
    # Control keys are never prefetched, so their reads here (each key read once) all missed.
    assert st.control_hits == 0 and st.treated_hits > 0
    # Hints leave the control share out too.
    named = [f"hint:{i}".encode() for i in range(200)]
    pf.hint(named)
    assert not any(share.mask([k for k in named if cache.contains_many([k])[0]]))
    assert all(cache.contains_many([k for k, c in zip(named, share.mask(named)) if not c]))


def test_a_retune_changes_the_control_share_in_place() -> None:
    cache = small_cache()
    vocab = Vocabulary(64)
    pf = Prefetcher(cache, MemoryOrigin(8), StrideModel(vocab), vocab, PrefetchSettings(control_share=0.0), sync=True)
    assert pf.control.limit == 0
    assert pf.retune(PrefetchSettings(control_share=0.25))
    assert pf.control.share == 0.25 and pf.control.limit == BUCKETS // 4


def test_origin_reads_are_metered_by_caller_and_carried_across_a_rebuild() -> None:
    origin = MemoryOrigin(10)
    cache = small_cache(origin)
    assert cache.mget([b"a", b"b", b"a"]) == [origin.value] * 3
    reads, read_bytes, calls, seconds, buckets = cache.origin_meters["demand"].snapshot()
    assert (reads, read_bytes, calls) == (2, 20, 1) and seconds >= 0 and buckets[-1] == 1
    assert cache.origin_meters["prefetch"].snapshot()[:3] == (0, 0, 0)
    vocab = Vocabulary(64)
    pf = Prefetcher(cache, origin, StrideModel(vocab), vocab, PrefetchSettings(), sync=True)
    pf.hint([b"h1", b"h2", b"a"])  # "a" is cached: not asked of the origin
    assert cache.origin_meters["prefetch"].snapshot()[:3] == (2, 20, 1)
    rebuilt = small_cache(origin)
    rebuilt.carry_counters(cache)
    assert rebuilt.origin_meters["demand"].snapshot()[:3] == (2, 20, 1)
    assert rebuilt.origin_meters["prefetch"].snapshot()[:3] == (2, 20, 1)


def test_a_failed_origin_call_counts_its_keys_and_time() -> None:
    meter = OriginMeter()
    meter.failed(3, 0.002)
    meter.observe(2, [b"xy", None], 20.0)
    reads, read_bytes, calls, seconds, buckets = meter.snapshot()
    assert (reads, read_bytes, calls, seconds) == (5, 2, 2, pytest.approx(20.002))
    # 2 ms falls in the 2.5 ms bucket and above; 20 s in none (only +Inf, which is ``calls``).
    first = ORIGIN_LATENCY_BUCKETS.index(0.0025)
    assert buckets[first - 1] == 0 and buckets[first] == 1 and buckets[-1] == 1
