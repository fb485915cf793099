# SPDX-License-Identifier: Apache-2.0
"""cache_core.table.CompactTable (native/ctable.c) against a dict model.

The compact table keeps only an entry ID and a 32-bit tag per slot and confirms a match
through the entries' fingerprints, so the tests drive it the way the cache does: an
entry's fingerprint is written before the entry is inserted and stays until it is
deleted. Fingerprints are drawn from a small pool whose members share home slots and
tags (the same ``lo`` low bits, the same ``hi`` high half) so that probing chains, tag
collisions confirmed against the entry, tombstones and rehashes are all exercised.
"""

from __future__ import annotations

import threading

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_core.table import CompactTable, HashTable, TableFullError

ENTRIES = 64


def _pool() -> list[tuple[int, int]]:
    """Fingerprints that collide on purpose: 4 home slots, 2 tags, distinct keys."""
    keys = []
    for i in range(40):
        hi = ((7 + i % 2) << 32) | (0x9E3779B9 * (i + 1) & 0xFFFFFFFF)  # 2 high halves (tags), distinct low halves
        lo = ((i * 0x632BE59BD9B4E019) & ~0xFFFF) | (i % 4)  # home slot i % 4 in small tables
        keys.append((hi, lo & 0xFFFFFFFFFFFFFFFF))
    return keys


POOL = _pool()


class Model:
    """The table, its entry arrays and a dict of what it must answer."""

    def __init__(self, capacity: int, load: float = 0.75) -> None:
        self.e_hi = numpy.zeros(ENTRIES, dtype=numpy.uint64)
        self.e_lo = numpy.zeros(ENTRIES, dtype=numpy.uint64)
        self.table = CompactTable(self.e_hi, self.e_lo, capacity, max_load_factor=load)
        self.keys: dict[tuple[int, int], int] = {}
        self.free = list(range(ENTRIES - 1, -1, -1))

    def insert(self, batch: list[tuple[int, int]]) -> None:
        """The cache's mset of new keys: the absent ones get entries, named in the table."""
        fresh = list(dict.fromkeys(k for k in batch if k not in self.keys))
        if not fresh:
            return
        eids = [self.free.pop() for _ in fresh]
        for (hi, lo), eid in zip(fresh, eids):
            self.e_hi[eid], self.e_lo[eid] = hi, lo
        hi = numpy.asarray([k[0] for k in fresh], dtype=numpy.uint64)
        lo = numpy.asarray([k[1] for k in fresh], dtype=numpy.uint64)
        before = len(self.table)
        try:
            slots, created = self.table.insert_handles(hi, lo, numpy.asarray(eids, dtype=numpy.int64))
        except TableFullError:
            assert len(self.keys) + len(fresh) > self.table.max_items and len(self.table) == before
            self.free.extend(reversed(eids))
            return
        assert created.all() and len(set(slots.tolist())) == len(fresh)
        self.keys.update(zip(fresh, eids))

    def delete(self, batch: list[tuple[int, int]]) -> None:
        hi = numpy.asarray([k[0] for k in batch], dtype=numpy.uint64)
        lo = numpy.asarray([k[1] for k in batch], dtype=numpy.uint64)
        freed = self.table.delete(hi, lo)
        seen = set()
        for key, slot in zip(batch, freed.tolist()):
            first = key in self.keys and key not in seen
            assert (slot >= 0) == first, (key, slot)
            seen.add(key)
        for key in dict.fromkeys(batch):
            if key in self.keys:
                self.free.append(self.keys.pop(key))

    def check(self) -> None:
        assert len(self.table) == len(self.keys)
        hi = numpy.asarray([k[0] for k in POOL], dtype=numpy.uint64)
        lo = numpy.asarray([k[1] for k in POOL], dtype=numpy.uint64)
        found = self.table.get_handles(self.table.lookup(hi, lo))
        want = [self.keys.get(k, -1) for k in POOL]
        assert found.tolist() == want
        assert [self.table.find_one(*k) for k in POOL] == want


ops = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "insert_one", "delete_one", "rehash", "clear"]),
        st.lists(st.sampled_from(POOL), min_size=1, max_size=12),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, capacity=st.sampled_from([4, 8, 16, 64]), load=st.sampled_from([0.5, 0.75, 1.0]))
def test_random_operations_answer_as_a_dict_does(ops: list[tuple[str, list[tuple[int, int]]]], capacity: int, load: float) -> None:
    m = Model(capacity, load)
    for op, batch in ops:
        if op == "insert":
            m.insert(batch)
        elif op == "delete":
            m.delete(batch)
        elif op == "insert_one":
            key = batch[0]
            if key in m.keys:
                slot, created = m.table.insert_one(*key, m.keys[key])
                assert not created and m.table.handle_one(slot) == m.keys[key]
            elif len(m.keys) < m.table.max_items:
                eid = m.free.pop()
                m.e_hi[eid], m.e_lo[eid] = key
                slot, created = m.table.insert_one(*key, eid)
                assert created and m.table.handle_one(slot) == eid
                m.keys[key] = eid
            else:
                with pytest.raises(TableFullError):
                    m.table.insert_one(*key, m.free[-1])
        elif op == "delete_one":
            key = batch[0]
            assert (m.table.delete_one(*key) >= 0) == (key in m.keys)
            if key in m.keys:
                m.free.append(m.keys.pop(key))
        elif op == "rehash":
            bigger = m.table.capacity * 2 if len(m.keys) > m.table.max_items // 2 else m.table.capacity
            m.table.rehash(bigger)
            assert m.table.tombstones == 0
        else:
            m.table.clear()
            m.free.extend(m.keys.values())
            m.keys.clear()
            assert m.table.tombstones == 0
        m.check()


def test_a_matching_tag_is_confirmed_against_the_entry() -> None:
    """Two keys with the same home slot and the same tag (hi's high half): each finds its
    own entry, not the other's."""
    m = Model(8)
    a = (0xAAAA_0000_0000_0001, 0x10)
    b = (0xAAAA_0000_0000_0002, 0x10)
    m.insert([a])
    assert m.table.find_one(*b) == -1
    m.insert([b])
    assert m.table.find_one(*a) == m.keys[a] and m.table.find_one(*b) == m.keys[b] != m.keys[a]


def test_a_batch_that_does_not_fit_changes_nothing() -> None:
    m = Model(8)  # max_items 6
    m.insert(POOL[:5])
    before = (len(m.table), m.table.lookup(*zip(*POOL[:5])).tolist())
    eids = numpy.arange(5, 8, dtype=numpy.int64)
    for (hi, lo), eid in zip(POOL[5:8], eids.tolist()):
        m.e_hi[eid], m.e_lo[eid] = hi, lo
    with pytest.raises(TableFullError, match="would exceed 6"):
        m.table.insert_handles(*(numpy.asarray(c, dtype=numpy.uint64) for c in zip(*POOL[5:8])), eids)
    assert (len(m.table), m.table.lookup(*zip(*POOL[:5])).tolist()) == before
    # A key named twice counts once against the limit.
    twice = [POOL[5], POOL[5]]
    m.e_hi[5], m.e_lo[5] = POOL[5]
    _slots, created = m.table.insert_handles(*(numpy.asarray(c, dtype=numpy.uint64) for c in zip(*twice)),
                                             numpy.asarray([5, 5], dtype=numpy.int64))
    assert created.tolist() == [True, False] and len(m.table) == 6


def test_bad_arguments_are_errors_not_crashes() -> None:
    e = numpy.zeros(4, dtype=numpy.uint64)
    with pytest.raises(ValueError, match="uint64"):
        CompactTable(numpy.zeros(4, dtype=numpy.float64), e, 8)
    with pytest.raises(ValueError, match="one length"):
        CompactTable(e, numpy.zeros(5, dtype=numpy.uint64), 8)
    t = CompactTable(e, e, 8)
    with pytest.raises(ValueError, match="outside the entry arrays"):
        t.insert_one(1, 2, 4)
    with pytest.raises(ValueError, match="outside the entry arrays"):
        t.insert_handles(numpy.asarray([1], dtype=numpy.uint64), numpy.asarray([2], dtype=numpy.uint64), numpy.asarray([-1]))
    with pytest.raises(ValueError, match="outside the table"):
        t.get_handles(numpy.asarray([8]))
    with pytest.raises(ValueError, match="equal length"):
        t.lookup(numpy.zeros(2, dtype=numpy.uint64), numpy.zeros(3, dtype=numpy.uint64))
    t.rehash(2)  # fine while empty: 2 slots at 0.75 hold 1 key
    e[0], e[1] = 1, 3  # e_hi and e_lo are the same array here: fingerprints (1, 1) and (3, 3)
    assert t.insert_one(1, 1, 0)[1]
    with pytest.raises(TableFullError, match="would exceed 1"):
        t.insert_one(3, 3, 1)
    with pytest.raises(TableFullError, match="allows 0"):
        t.insert_one(1, 1, 0)  # present: no error...
        t.rehash(1)  # ...but one slot at 0.75 holds none
    assert t.find_one(1, 1) == 0 and t.self_test_probe(16)[0]


def test_it_answers_as_the_gpu_tables_host_mirror_does() -> None:
    """The same keys in a CompactTable and a HashTable (the CUDA kernels' NumPy mirror) map
    to the same handles, through inserts, deletes and a rehash."""
    rng = numpy.random.default_rng(7)
    n = 5000
    e_hi = rng.integers(0, 1 << 64, size=n, dtype=numpy.uint64)
    e_lo = rng.integers(0, 1 << 64, size=n, dtype=numpy.uint64)
    compact, wide = CompactTable(e_hi, e_lo, 1 << 13), HashTable(numpy, 1 << 13, native=False)
    eids = numpy.arange(n, dtype=numpy.int64)
    compact.insert_handles(e_hi, e_lo, eids)
    wide.insert_handles(e_hi, e_lo, eids)
    gone = eids[::3]
    compact.delete(e_hi[gone], e_lo[gone])
    wide.delete(e_hi[gone], e_lo[gone])
    compact.rehash(1 << 14)
    for table in (compact, wide):
        got = table.get_handles(table.lookup(e_hi, e_lo))
        assert got.tolist() == [-1 if i % 3 == 0 else i for i in range(n)]


def test_big_batches_from_two_threads_stay_consistent() -> None:
    """Batches of 4,096 keys and more run without the GIL; the table's lock keeps a delete
    from running into an insert (every key is either fully in or fully out)."""
    rng = numpy.random.default_rng(11)
    n = 20_000
    e_hi = rng.integers(0, 1 << 64, size=n, dtype=numpy.uint64)
    e_lo = rng.integers(0, 1 << 64, size=n, dtype=numpy.uint64)
    table = CompactTable(e_hi, e_lo, 1 << 16)
    halves = (numpy.arange(0, n // 2), numpy.arange(n // 2, n))
    errors: list[BaseException] = []

    def churn(rows: numpy.ndarray) -> None:
        try:
            for _ in range(10):
                table.insert_handles(e_hi[rows], e_lo[rows], rows)
                table.delete(e_hi[rows], e_lo[rows])
            table.insert_handles(e_hi[rows], e_lo[rows], rows)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(rows,)) for rows in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(table) == n
    assert table.get_handles(table.lookup(e_hi, e_lo)).tolist() == list(range(n))
