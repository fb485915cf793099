# SPDX-License-Identifier: Apache-2.0
"""The access log's compiled ring state (cache_core/native/ring.c) through AccessLog and directly.

A model (a plain list of every event offered) is compared with what the ring holds after
random mixes of one-call hook appends, vectorised appends and reads; the compiled writer's
argument checks refuse bad input without writing anything.
"""

from __future__ import annotations

import threading

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_core import _native
from cache_core.access_log import SCALAR_APPEND_MAX, AccessLog

BATCH = st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 255), st.integers(0, 2**40)), min_size=0, max_size=3 * SCALAR_APPEND_MAX)


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(st.tuples(BATCH, st.booleans(), st.booleans()), max_size=12), capacity_bits=st.integers(0, 6))
def test_the_ring_holds_the_newest_events_in_order(batches, capacity_bits) -> None:
    log = AccessLog(1 << capacity_bits)
    model: list[tuple[int, int, int, int]] = []
    for events, as_lists, via_hook in batches:
        fps = [e[0] for e in events]
        results = [e[1] for e in events]
        sizes = [e[2] for e in events]
        op = len(model) % 7
        if not as_lists:
            fps, results, sizes = (numpy.asarray(fps, dtype=numpy.uint64), numpy.asarray(results, dtype=numpy.uint8), numpy.asarray(sizes, dtype=numpy.int64))
        (log.hook if via_hook else log.append)(op, fps, results, sizes)
        model.extend((fp, op, r, min(size, 2**32 - 1)) for fp, r, size in events)
    assert log.head == len(model) and log.offered == len(model)
    got = log.read(0)
    held = model[max(0, len(model) - log.capacity) :]
    assert got.lost == len(model) - len(held)
    assert [(int(e["fp"]), int(e["op"]), int(e["result"]), int(e["size"])) for e in got.events] == held
    assert all(e["ts_ns"] > 0 for e in got.events)


def test_bad_rows_write_nothing() -> None:
    log = AccessLog(16)
    log.hook(1, [1], [0], [5])
    for fps, results, sizes in (([1, 2], [0], [5, 5]), ([1, -2], [0, 0], [5, 5]), ([1, 2], [0, 256], [5, 5]), ([1, "x"], [0, 0], [5, 5])):
        with pytest.raises((ValueError, OverflowError, TypeError)):
            log.hook(1, fps, results, sizes)
    assert log.head == 1 and [int(e["fp"]) for e in log.read(0).events] == [1]


def test_columns_are_checked() -> None:
    cols = [numpy.zeros(8, dtype=d) for d in ("<i8", "<u8", "u1", "u1", "<u2", "<u4")]
    _native.EventColumns(*cols)
    with pytest.raises(ValueError):
        _native.EventColumns(*cols[:5], numpy.zeros(8, dtype="<u8"))  # wrong width
    with pytest.raises(ValueError):
        _native.EventColumns(*[numpy.zeros(6, dtype=c.dtype) for c in cols])  # not a power of two
    with pytest.raises(TypeError):
        _native.EventColumns(*cols[:5])
    with pytest.raises((ValueError, TypeError, BufferError)):
        _native.EventColumns(*[c[::2] for c in cols])  # not contiguous


def test_concurrent_writers_and_readers_lose_nothing() -> None:
    log = AccessLog(1 << 16)
    per_thread, threads = 5_000, 4
    seen: list[int] = []
    done = threading.Event()

    def write(base: int) -> None:
        for i in range(per_thread):
            log.hook(1, [base + i], [1], [16])

    def read() -> None:
        cursor = 0
        while not done.is_set() or cursor < log.head:
            got = log.read(cursor)
            assert got.lost == 0
            seen.extend(int(fp) for fp in got.events["fp"])
            cursor = got.next_sequence

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(t * per_thread,)) for t in range(threads)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    reader.join()
    assert sorted(seen) == list(range(per_thread * threads))
