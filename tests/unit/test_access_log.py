# SPDX-License-Identifier: Apache-2.0
"""cache_core.access_log: ring semantics, per-reader loss accounting, key sampling, and
concurrent producers (every event is either read or counted as lost)."""

from __future__ import annotations

import threading

import numpy
import pytest

from cache_core.access_log import EVENT_DTYPE, AccessLog
from cache_core.cache import OP_GET, OP_SET, RES_HIT, RES_MISS, RES_STORED, Cache


def batch(start: int, n: int) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    fps = numpy.arange(start, start + n, dtype=numpy.uint64)
    return fps, numpy.full(n, RES_HIT, dtype=numpy.uint8), fps.astype(numpy.int64) % 100


@pytest.mark.parametrize("capacity", [0, 3, 6, -8])
def test_capacity_must_be_a_power_of_two(capacity: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        AccessLog(capacity)


def test_sample_rate_is_checked() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        AccessLog(8, sample_rate=1.5)


def test_events_come_back_in_order_across_the_wrap() -> None:
    log = AccessLog(8, clock_ns=lambda: 42)
    assert log.append(OP_GET, *batch(0, 5)) == 5
    first = log.read(0)
    assert first.next_sequence == 5 and first.lost == 0
    assert first.events["fp"].tolist() == [0, 1, 2, 3, 4]
    log.append(OP_SET, *batch(5, 6))  # wraps: slots 5,6,7 then 0,1,2
    second = log.read(first.next_sequence)
    assert second.events["fp"].tolist() == [5, 6, 7, 8, 9, 10]
    assert set(second.events["op"].tolist()) == {OP_SET} and set(second.events["ts_ns"].tolist()) == {42}
    assert second.events["size"].tolist() == [5, 6, 7, 8, 9, 10] and second.lost == 0
    assert second.events.dtype == EVENT_DTYPE


def test_a_slow_reader_is_told_how_many_events_it_lost() -> None:
    log = AccessLog(8)
    log.append(OP_GET, *batch(0, 20))
    result = log.read(0)
    assert result.lost == 12 and result.events["fp"].tolist() == list(range(12, 20))
    assert result.next_sequence == 20
    # A batch larger than the ring keeps its newest events.
    log.append(OP_GET, *batch(100, 11))
    again = log.read(result.next_sequence)
    assert again.lost == 3 and again.events["fp"].tolist() == list(range(103, 111))


def test_max_events_pages_through_the_ring() -> None:
    log = AccessLog(16)
    log.append(OP_GET, *batch(0, 10))
    seen: list[int] = []
    cursor = 0
    while True:
        page = log.read(cursor, max_events=3)
        if not len(page.events):
            break
        seen += page.events["fp"].tolist()
        cursor = page.next_sequence
    assert seen == list(range(10)) and cursor == 10


def test_sizes_saturate_instead_of_wrapping() -> None:
    log = AccessLog(4)
    log.append(OP_SET, numpy.asarray([1], dtype=numpy.uint64), numpy.asarray([RES_STORED]), numpy.asarray([1 << 40]))
    assert log.read(0).events["size"].tolist() == [numpy.iinfo(numpy.uint32).max]


def test_sampling_is_by_key_and_close_to_the_rate() -> None:
    rng = numpy.random.default_rng(3)
    fps = rng.integers(0, numpy.iinfo(numpy.uint64).max, 40000, dtype=numpy.uint64, endpoint=True)
    log = AccessLog(1 << 17, sample_rate=0.25)
    kept = log.append(OP_GET, fps, numpy.zeros(len(fps), numpy.uint8), numpy.zeros(len(fps), numpy.int64))
    assert 0.23 < kept / len(fps) < 0.27
    assert log.offered == 40000 and log.sampled_out == 40000 - kept
    # The same keys again: exactly the same ones are kept (a key is always or never logged).
    log.append(OP_GET, fps, numpy.zeros(len(fps), numpy.uint8), numpy.zeros(len(fps), numpy.int64))
    events = log.read(0).events["fp"]
    assert events[:kept].tolist() == events[kept:].tolist()
    assert AccessLog(8, sample_rate=0.0).append(OP_GET, *batch(0, 5)) == 0


def test_concurrent_producers_lose_nothing_silently() -> None:
    log = AccessLog(1 << 10)
    producers, batches, size = 4, 300, 7
    read_events: list[numpy.ndarray] = []
    lost = 0
    done = threading.Event()

    def produce(worker: int) -> None:
        for b in range(batches):
            base = (worker * batches + b) * size
            log.append(OP_GET, *batch(base, size))

    def consume() -> None:
        nonlocal lost
        cursor = 0
        while True:
            finished = done.is_set()
            result = log.read(cursor)
            lost += result.lost
            read_events.append(result.events)
            cursor = result.next_sequence
            if finished and cursor == log.head:
                return

    reader = threading.Thread(target=consume)
    reader.start()
    threads = [threading.Thread(target=produce, args=(w,)) for w in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join(timeout=60)
    assert not reader.is_alive()
    got = numpy.concatenate(read_events)["fp"]
    total = producers * batches * size
    assert len(got) + lost == total == log.head
    # No event is read twice, and every batch that was read arrived whole and in order.
    assert len(numpy.unique(got)) == len(got)
    starts = numpy.flatnonzero(got % size == 0)
    complete = [got[s : s + size] for s in starts if s + size <= len(got)]
    assert all((c == numpy.arange(c[0], c[0] + size)).all() for c in complete)


def test_the_cache_reports_every_operation_to_the_log() -> None:
    log = AccessLog(64)
    cache = Cache(numpy, max_keys=16, max_memory_bytes=1 << 16, access_hook=log.hook)
    cache.mset([(b"a", b"12345"), (b"b", b"1")])
    cache.mget([b"a", b"zz"])
    events = log.read(0).events
    assert events["op"].tolist() == [OP_SET, OP_SET, OP_GET, OP_GET]
    assert events["result"].tolist() == [RES_STORED, RES_STORED, RES_HIT, RES_MISS]
    assert events["size"].tolist() == [5, 1, 5, 0]
    a_fp = cache.fp.fingerprint(b"a")[1]
    assert events["fp"][0] == a_fp == events["fp"][2]


def test_raw_keys_are_stored_only_when_asked_for() -> None:
    plain = AccessLog(8)
    with_keys = AccessLog(8, store_raw_keys=True)
    for log in (plain, with_keys):
        cache = Cache(numpy, max_keys=16, max_memory_bytes=1 << 16, access_hook=log.hook)
        cache.mset([(b"user:1", b"x")])
        cache.mget([b"user:1", b"user:2"])
        for i in range(20):  # wrap the ring: keys must stay aligned with their events
            cache.get(b"k%d" % i)
    assert plain.read(0).keys is None and plain.hook.wants_keys is False  # type: ignore[attr-defined]
    result = with_keys.read(0)
    assert result.keys == [b"k%d" % i for i in range(12, 20)]
    assert result.events["fp"].tolist() == [Cache(numpy, max_keys=1, max_memory_bytes=1 << 20).fp.fingerprint(k)[1] for k in result.keys]
