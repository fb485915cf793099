# SPDX-License-Identifier: Apache-2.0
"""cache_core.table on NumPy: batch semantics, collisions, tombstones, limits, rehash, determinism.

Colliding fingerprints are built on purpose: the home slot is ``lo & (capacity - 1)``, so
keys that share ``lo`` modulo the capacity share a probe chain and only ``hi`` tells them
apart.
"""

from __future__ import annotations

from typing import Any

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache_core.table import EMPTY, FULL, TOMBSTONE, HashTable, TableFullError

U64 = numpy.uint64


def fp(*pairs: tuple[int, int]) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Fingerprint arrays from ``(hi, lo)`` pairs."""
    hi = numpy.array([p[0] for p in pairs], dtype=U64)
    lo = numpy.array([p[1] for p in pairs], dtype=U64)
    return hi, lo


def random_fps(rng: numpy.random.Generator, n: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    return (
        rng.integers(0, 2**64, size=n, dtype=U64, endpoint=False),
        rng.integers(0, 2**64, size=n, dtype=U64, endpoint=False),
    )


def snapshot(table: HashTable) -> tuple[Any, ...]:
    return (table.hi.copy(), table.lo.copy(), table.state.copy(), table.handle.copy(), len(table), table.tombstones)


def assert_same(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    for x, y in zip(a, b):
        if isinstance(x, numpy.ndarray):
            assert numpy.array_equal(x, y)
        else:
            assert x == y


def check_invariants(table: HashTable, model: dict[tuple[int, int], int] | None = None) -> None:
    """Counters match the arrays; free slots are canonical; every key is reachable."""
    state = table.state
    full = numpy.flatnonzero(state == FULL)
    assert len(table) == full.shape[0]
    assert table.tombstones == int((state == TOMBSTONE).sum())
    free = state != FULL
    assert not table.hi[free].any() and not table.lo[free].any()
    assert (table.handle[free] == -1).all()
    if full.shape[0]:
        found = table.lookup(table.hi[full], table.lo[full])
        assert numpy.array_equal(found, full)
    if model is not None:
        stored = {(int(table.hi[s]), int(table.lo[s])): int(s) for s in full}
        assert stored == model


# ---------------------------------------------------------------------------- construction
@pytest.mark.parametrize(("asked", "capacity"), [(1, 1), (2, 2), (5, 8), (1024, 1024), (1025, 2048)])
def test_capacity_rounds_up_to_a_power_of_two(asked: int, capacity: int) -> None:
    table = HashTable(numpy, asked)
    assert table.capacity == capacity
    assert table.nbytes == capacity * (16 + 1 + 8 + 8)
    assert len(table) == 0 and table.tombstones == 0 and table.load_factor == 0.0


@pytest.mark.parametrize("kwargs", [{"capacity": 0}, {"capacity": 8, "max_load_factor": 0.0}, {"capacity": 8, "max_load_factor": 1.5}])
def test_bad_construction_is_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        HashTable(numpy, **kwargs)


def test_max_items_is_exact() -> None:
    assert HashTable(numpy, 8).max_items == 6
    assert HashTable(numpy, 8, max_load_factor=1.0).max_items == 8
    assert HashTable(numpy, 2).max_items == 1


# ---------------------------------------------------------------------------- round trips
def test_insert_lookup_delete_round_trip() -> None:
    rng = numpy.random.default_rng(7)
    hi, lo = random_fps(rng, 1000)
    table = HashTable(numpy, 4096)
    slots, created = table.insert(hi, lo)
    assert slots.dtype == numpy.int64 and created.dtype == numpy.bool_
    assert created.all() and numpy.unique(slots).shape[0] == 1000
    assert len(table) == 1000 and table.load_factor == 1000 / 4096
    assert numpy.array_equal(table.lookup(hi, lo), slots)
    assert (table.lookup(*random_fps(rng, 500)) == -1).all()

    again, created_again = table.insert(hi, lo)
    assert numpy.array_equal(again, slots) and not created_again.any() and len(table) == 1000

    removed = table.delete(hi[::2], lo[::2])
    assert numpy.array_equal(removed, slots[::2])
    assert len(table) == 500 and table.tombstones == 500
    assert (table.lookup(hi[::2], lo[::2]) == -1).all()
    assert numpy.array_equal(table.lookup(hi[1::2], lo[1::2]), slots[1::2])
    assert (table.delete(hi[::2], lo[::2]) == -1).all()
    check_invariants(table)


def test_lookup_of_a_batch_with_absent_and_present_keys() -> None:
    table = HashTable(numpy, 16)
    slots, _ = table.insert(*fp((1, 3), (2, 3)))
    assert table.lookup(*fp((2, 3), (9, 9), (1, 3), (3, 3))).tolist() == [slots[1], -1, slots[0], -1]


def test_empty_batches() -> None:
    table = HashTable(numpy, 8)
    empty = numpy.empty(0, dtype=U64)
    assert table.lookup(empty, empty).shape == (0,)
    slots, created = table.insert(empty, empty)
    assert slots.shape == created.shape == (0,)
    assert table.delete(empty, empty).shape == (0,)
    table.set_handles(numpy.empty(0, dtype=numpy.int64), numpy.empty(0, dtype=numpy.int64))
    assert table.get_handles(numpy.empty(0, dtype=numpy.int64)).shape == (0,)
    assert len(table) == 0


def test_fingerprints_are_stored_bit_exact() -> None:
    # Bit patterns that are NaNs, infinities and -0.0 as float64 must survive the
    # 16-byte gathers and scatters untouched.
    pairs = [(0x7FF0000000000001, 0xFFF8000000000001), (0x8000000000000000, 0x7FF0000000000000), (0, 0), (2**64 - 1, 2**64 - 1)]
    table = HashTable(numpy, 16)
    slots, created = table.insert(*fp(*pairs))
    assert created.all()
    for (hi, lo), slot in zip(pairs, slots):
        assert (int(table.hi[slot]), int(table.lo[slot])) == (hi, lo)
    assert numpy.array_equal(table.lookup(*fp(*pairs)), slots)


def test_inputs_accept_lists_and_other_integer_dtypes() -> None:
    table = HashTable(numpy, 8)
    slots, _ = table.insert([1, 2], [3, 2**64 - 1])
    assert numpy.array_equal(table.lookup(numpy.array([1, 2], dtype=numpy.int64), [3, 2**64 - 1]), slots)


@pytest.mark.parametrize(
    ("hi", "lo", "error"),
    [
        (numpy.zeros(2, dtype=U64), numpy.zeros(3, dtype=U64), ValueError),
        (numpy.zeros((2, 2), dtype=U64), numpy.zeros((2, 2), dtype=U64), ValueError),
        (numpy.zeros(2, dtype=numpy.float64), numpy.zeros(2, dtype=U64), TypeError),
    ],
)
def test_bad_fingerprint_arrays_are_rejected(hi: Any, lo: Any, error: type[Exception]) -> None:
    table = HashTable(numpy, 8)
    with pytest.raises(error):
        table.insert(hi, lo)
    with pytest.raises(error):
        table.lookup(hi, lo)
    assert len(table) == 0


# ---------------------------------------------------------------------------- collisions and duplicates
def test_colliding_keys_take_consecutive_slots_lowest_batch_index_first() -> None:
    table = HashTable(numpy, 8)
    slots, created = table.insert(*fp((30, 3), (10, 3), (20, 11)))  # 11 & 7 == 3 as well
    assert slots.tolist() == [3, 4, 5] and created.all()
    assert table.lookup(*fp((20, 11), (10, 3), (30, 3))).tolist() == [5, 4, 3]


def test_probing_wraps_around_the_end() -> None:
    table = HashTable(numpy, 4, max_load_factor=1.0)
    slots, _ = table.insert(*fp((1, 3), (2, 3), (3, 3)))
    assert slots.tolist() == [3, 0, 1]
    assert table.lookup(*fp((3, 3))).tolist() == [1]


def test_duplicates_in_a_batch_share_one_slot_and_only_the_first_is_created() -> None:
    table = HashTable(numpy, 16)
    a, b, c = (1, 5), (2, 5), (3, 6)
    slots, created = table.insert(*fp(b, a, b, c, a, b))
    assert slots[0] == slots[2] == slots[5]
    assert slots[1] == slots[4]
    assert len({int(slots[0]), int(slots[1]), int(slots[3])}) == 3
    assert created.tolist() == [True, True, False, True, False, False]
    assert len(table) == 3
    check_invariants(table)


def test_duplicates_of_an_existing_key_are_never_created() -> None:
    table = HashTable(numpy, 16)
    (slot,), _ = table.insert(*fp((1, 5)))
    slots, created = table.insert(*fp((1, 5), (2, 5), (1, 5)))
    assert slots[0] == slots[2] == slot
    assert created.tolist() == [False, True, False]


def test_duplicates_contending_with_other_keys_for_one_slot() -> None:
    # x and y share a home slot; copies of each must stay together whatever the order.
    table = HashTable(numpy, 8)
    x, y = (1, 2), (2, 2)
    slots, created = table.insert(*fp(y, x, y, x, x))
    assert slots.tolist() == [2, 3, 2, 3, 3]
    assert created.tolist() == [True, True, False, False, False]


def test_delete_names_a_key_twice() -> None:
    table = HashTable(numpy, 8)
    (slot,), _ = table.insert(*fp((1, 1)))
    removed = table.delete(*fp((1, 1), (9, 9), (1, 1)))
    assert removed.tolist() == [slot, -1, -1]
    assert len(table) == 0 and table.tombstones == 1


# ---------------------------------------------------------------------------- tombstones
def test_delete_leaves_a_tombstone_and_clears_the_slot() -> None:
    table = HashTable(numpy, 8)
    slots, _ = table.insert(*fp((1, 2), (2, 2)))
    table.set_handles(slots, numpy.array([10, 20]))
    table.delete(*fp((1, 2)))
    assert table.state[2] == TOMBSTONE and table.handle[2] == -1
    assert table.hi[2] == 0 and table.lo[2] == 0
    # The key behind the tombstone is still found.
    assert table.lookup(*fp((2, 2))).tolist() == [3]
    assert table.get_handles(numpy.array([3])).tolist() == [20]


def test_tombstone_is_reused_and_counted() -> None:
    table = HashTable(numpy, 8)
    table.insert(*fp((1, 2), (2, 2), (3, 2)))  # slots 2, 3, 4
    table.delete(*fp((1, 2)))
    assert table.tombstones == 1
    slots, created = table.insert(*fp((4, 2)))
    assert slots.tolist() == [2] and created.all()
    assert table.tombstones == 0 and len(table) == 3
    check_invariants(table)


def test_tombstone_is_not_reused_for_a_key_further_along_its_chain() -> None:
    table = HashTable(numpy, 8)
    table.insert(*fp((1, 2), (2, 2)))  # slots 2, 3
    table.delete(*fp((1, 2)))  # tombstone at 2, (2, 2) still at 3
    slots, created = table.insert(*fp((2, 2)))
    assert slots.tolist() == [3] and not created.any()
    assert len(table) == 1 and table.tombstones == 1
    # In one batch: the present key is found past the tombstone, a new key takes it.
    slots, created = table.insert(*fp((2, 2), (5, 2), (5, 2)))
    assert slots.tolist() == [3, 2, 2] and created.tolist() == [False, True, False]
    assert table.tombstones == 0
    check_invariants(table)


def test_first_tombstone_of_the_chain_is_taken() -> None:
    table = HashTable(numpy, 16)
    table.insert(*fp((1, 4), (2, 4), (3, 4), (4, 4)))  # slots 4..7
    table.delete(*fp((3, 4), (2, 4)))  # tombstones at 5 and 6
    slots, _ = table.insert(*fp((9, 4), (8, 4), (7, 4)))
    assert slots.tolist() == [5, 6, 8]
    assert table.tombstones == 0
    check_invariants(table)


def test_table_without_empty_slots_still_answers() -> None:
    table = HashTable(numpy, 4, max_load_factor=1.0)
    table.insert(*fp((1, 0), (2, 1), (3, 2), (4, 3)))
    assert (table.state == FULL).all()
    assert table.lookup(*fp((9, 0), (9, 3))).tolist() == [-1, -1]
    table.delete(*fp((2, 1), (4, 3)))
    assert not (table.state == EMPTY).any()
    assert table.lookup(*fp((9, 0))).tolist() == [-1]
    slots, created = table.insert(*fp((9, 0), (3, 2)))
    assert slots.tolist() == [1, 2] and created.tolist() == [True, False]
    check_invariants(table)


# ---------------------------------------------------------------------------- load limit
def test_insert_over_the_load_limit_is_refused_and_changes_nothing() -> None:
    table = HashTable(numpy, 8)  # max 6 keys
    slots, _ = table.insert(*fp(*[(i, i) for i in range(5)]))
    table.set_handles(slots, numpy.arange(5))
    table.delete(*fp((0, 0)))
    table.insert(*fp((0, 0)))
    before = snapshot(table)
    with pytest.raises(TableFullError, match="would exceed 6"):
        table.insert(*fp((1, 1), (10, 10), (11, 11)))
    assert_same(before, snapshot(table))


def test_duplicates_count_once_against_the_load_limit() -> None:
    table = HashTable(numpy, 8)
    table.insert(*fp(*[(i, i) for i in range(5)]))
    slots, created = table.insert(*fp((9, 9), (9, 9), (9, 9), (1, 1)))
    assert len(table) == 6 and created.tolist() == [True, False, False, False]
    with pytest.raises(TableFullError):
        table.insert(*fp((10, 10)))


def test_every_slot_can_be_filled_at_load_factor_one() -> None:
    table = HashTable(numpy, 8, max_load_factor=1.0)
    slots, created = table.insert(*fp(*[(i, 5) for i in range(8)]))
    assert sorted(slots.tolist()) == list(range(8)) and created.all()
    assert slots.tolist() == [5, 6, 7, 0, 1, 2, 3, 4]
    with pytest.raises(TableFullError):
        table.insert(*fp((99, 5)))
    check_invariants(table)


# ---------------------------------------------------------------------------- handles
def test_handles_start_at_minus_one_and_round_trip() -> None:
    table = HashTable(numpy, 16)
    slots, _ = table.insert(*fp((1, 1), (2, 2)))
    assert table.get_handles(slots).tolist() == [-1, -1]
    table.set_handles(slots, numpy.array([7, 8]))
    assert table.get_handles(slots).tolist() == [7, 8]
    assert table.get_handles(numpy.array([slots[1], -1, slots[0]])).tolist() == [8, -1, 7]


def test_set_handles_with_a_repeated_slot_keeps_the_last() -> None:
    table = HashTable(numpy, 16)
    slots, _ = table.insert(*fp((1, 1), (2, 1), (1, 1)))
    table.set_handles(slots, numpy.array([10, 20, 30]))
    assert table.get_handles(slots).tolist() == [30, 20, 30]


def test_set_handles_validates_its_slots() -> None:
    table = HashTable(numpy, 8)
    slots, _ = table.insert(*fp((1, 1)))
    with pytest.raises(ValueError, match="FULL"):
        table.set_handles(numpy.array([2]), numpy.array([1]))
    with pytest.raises(ValueError, match="lie in"):
        table.set_handles(numpy.array([8]), numpy.array([1]))
    with pytest.raises(ValueError, match="lie in"):
        table.set_handles(numpy.array([-1]), numpy.array([1]))
    with pytest.raises(ValueError, match="shape"):
        table.set_handles(slots, numpy.array([1, 2]))
    with pytest.raises(TypeError):
        table.get_handles(numpy.array([1.0]))
    with pytest.raises(ValueError):
        table.get_handles(numpy.array([99]))


# ---------------------------------------------------------------------------- rehash and clear
def test_rehash_keeps_keys_and_handles_and_drops_tombstones() -> None:
    rng = numpy.random.default_rng(3)
    hi, lo = random_fps(rng, 600)
    table = HashTable(numpy, 1024)
    slots, _ = table.insert(hi, lo)
    table.set_handles(slots, numpy.arange(600) * 3)
    table.delete(hi[:100], lo[:100])
    old_slots = table.lookup(hi[100:], lo[100:])
    assert table.tombstones == 100

    mapping = table.rehash(4096)
    assert table.capacity == 4096 and table.tombstones == 0 and len(table) == 500
    new_slots = table.lookup(hi[100:], lo[100:])
    assert numpy.array_equal(mapping[old_slots], new_slots)
    assert mapping.shape == (1024,) and int((mapping >= 0).sum()) == 500
    assert numpy.array_equal(table.get_handles(new_slots), numpy.arange(100, 600) * 3)
    assert (table.lookup(hi[:100], lo[:100]) == -1).all()
    check_invariants(table)

    mapping = table.rehash()
    assert table.capacity == 4096
    assert numpy.array_equal(mapping[new_slots], table.lookup(hi[100:], lo[100:]))
    table.rehash(700)  # rounds up to 1024, 500 keys fit under 0.75
    assert table.capacity == 1024
    assert numpy.array_equal(table.get_handles(table.lookup(hi[100:], lo[100:])), numpy.arange(100, 600) * 3)


def test_rehash_too_small_is_refused_and_changes_nothing() -> None:
    table = HashTable(numpy, 16)
    table.insert(*fp(*[(i, i) for i in range(10)]))
    before = snapshot(table)
    with pytest.raises(TableFullError, match="larger capacity"):
        table.rehash(8)
    assert table.capacity == 16
    assert_same(before, snapshot(table))
    with pytest.raises(ValueError):
        table.rehash(0)


def test_clear_empties_the_table() -> None:
    table = HashTable(numpy, 16)
    slots, _ = table.insert(*fp((1, 1), (2, 2)))
    table.set_handles(slots, numpy.array([1, 2]))
    table.delete(*fp((1, 1)))
    table.clear()
    assert_same(snapshot(table), snapshot(HashTable(numpy, 16)))
    assert table.insert(*fp((1, 1)))[1].all()


# ---------------------------------------------------------------------------- determinism
def test_same_operations_give_identical_arrays() -> None:
    rng = numpy.random.default_rng(11)
    # 256 possible keys over 64 home slots: contention and duplicates everywhere.
    batches = [(rng.integers(0, 4, size=200).astype(U64), rng.integers(0, 64, size=200).astype(U64)) for _ in range(4)]

    def run() -> tuple[Any, ...]:
        table = HashTable(numpy, 256, max_load_factor=1.0)
        for i, (hi, lo) in enumerate(batches):
            slots, _ = table.insert(hi, lo)
            table.set_handles(slots, numpy.arange(slots.shape[0]) + 1000 * i)
            table.delete(hi[::7], lo[::7])
        return snapshot(table)

    assert_same(run(), run())


class KernelEmulation:
    """A serial, line-by-line transcription of ``kernels/table.cu`` in plain Python.

    Within one launch the kernels' threads do not depend on each other's writes
    (phase 0 only writes claim words and its own pending entry; phase 1 reads claim
    words and the query batch, never a slot another thread writes), so running the
    threads one after another gives what the GPU gives. Comparing it with the NumPy
    path checks that both backends place every key in the same slot.
    """

    def __init__(self, capacity: int) -> None:
        self.mask = capacity - 1
        self.capacity = capacity
        self.keys = [(0, 0)] * capacity
        self.state = [EMPTY] * capacity
        self.claim = [0] * capacity
        self.ticket = 1

    def lookup(self, query: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        out, free = [], []
        for q in query:
            pos, found, free_slot = q[1] & self.mask, -1, -1
            for _ in range(self.capacity):
                st = self.state[pos]
                if st == FULL:
                    if self.keys[pos] == q:
                        found = pos
                        break
                else:
                    if free_slot < 0:
                        free_slot = pos
                    if st == EMPTY:
                        break
                pos = (pos + 1) & self.mask
            out.append(found)
            free.append(free_slot)
        return out, free

    def insert(self, query: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
        slots, free = self.lookup(query)
        created = [False] * len(query)
        pending = [(i, free[i]) for i in range(len(query)) if slots[i] < 0]
        while pending:
            top = self.ticket + len(query)
            self.ticket = top + 1
            action: dict[int, str] = {}
            moved: list[tuple[int, int]] = []
            for i, p in pending:  # phase 0
                if self.state[p] == FULL:
                    if self.keys[p] == query[i]:
                        slots[i], action[i] = p, "found"
                    else:
                        p, action[i] = (p + 1) & self.mask, "advance"
                else:
                    self.claim[p] = max(self.claim[p], top - i)
                    action[i] = "propose"
                moved.append((i, p))
            pending = []
            for i, p in moved:  # phase 1
                if action[i] == "propose":
                    best = self.claim[p]
                    if best == top - i:
                        self.keys[p], self.state[p], slots[i], created[i] = query[i], FULL, p, True
                        continue
                    if query[top - best] == query[i]:
                        slots[i] = p
                        continue
                    p, action[i] = (p + 1) & self.mask, "advance"
                if action[i] == "advance":
                    pending.append((i, p))
        return slots, created

    def delete(self, query: list[tuple[int, int]]) -> None:
        slots, _ = self.lookup(query)
        for slot in dict.fromkeys(s for s in slots if s >= 0):
            self.keys[slot], self.state[slot] = (0, 0), TOMBSTONE


def test_numpy_places_keys_exactly_as_the_cuda_kernels_would() -> None:
    rng = numpy.random.default_rng(21)
    table = HashTable(numpy, 128, max_load_factor=1.0)
    emulation = KernelEmulation(128)
    for _ in range(12):
        hi = rng.integers(0, 3, size=60).astype(U64)
        lo = rng.integers(0, 48, size=60).astype(U64)
        pairs = list(zip(hi.tolist(), lo.tolist()))
        full = table.state == FULL
        present = set(zip(table.hi[full].tolist(), table.lo[full].tolist()))
        if len(table) + len(set(pairs) - present) <= 128:
            slots, created = table.insert(hi, lo)
            want_slots, want_created = emulation.insert(pairs)
            assert slots.tolist() == want_slots
            assert created.tolist() == want_created
        table.delete(hi[::3], lo[::3])
        emulation.delete(pairs[::3])
        assert table.state.tolist() == emulation.state
        assert list(zip(table.hi.tolist(), table.lo.tolist())) == emulation.keys
    assert table.tombstones > 0


# ---------------------------------------------------------------------------- readiness probe
def test_self_test_probe_leaves_the_table_exactly_as_it_was() -> None:
    rng = numpy.random.default_rng(5)
    hi, lo = random_fps(rng, 40)
    table = HashTable(numpy, 64)
    slots, _ = table.insert(hi, lo)
    table.set_handles(slots, numpy.arange(40))
    table.delete(hi[:10], lo[:10])
    before = snapshot(table)
    ok, detail = table.self_test_probe(16)
    assert ok, detail
    assert "16 keys ok" in detail
    assert_same(before, snapshot(table))


def test_self_test_probe_on_a_full_table() -> None:
    table = HashTable(numpy, 8, max_load_factor=1.0)
    table.insert(*fp(*[(i, i) for i in range(7)]))
    before = snapshot(table)
    ok, detail = table.self_test_probe(16)
    assert ok and "1 keys ok" in detail
    assert_same(before, snapshot(table))
    table.insert(*fp((7, 7)))
    ok, detail = table.self_test_probe(4)
    assert ok and "lookup-only" in detail
    with pytest.raises(ValueError):
        table.self_test_probe(0)


def test_self_test_probe_reports_a_broken_table() -> None:
    table = HashTable(numpy, 64)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("device lost")

    table.set_handles = broken  # type: ignore[method-assign]
    ok, detail = table.self_test_probe(4)
    assert not ok and "device lost" in detail
    assert len(table) == 0 and table.tombstones == 0


# ---------------------------------------------------------------------------- model-based
UNIVERSE_HI = st.integers(min_value=0, max_value=2)
UNIVERSE_LO = st.integers(min_value=0, max_value=40)
BATCH = st.lists(st.tuples(UNIVERSE_HI, UNIVERSE_LO), min_size=0, max_size=20)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), BATCH),
        st.tuples(st.just("delete"), BATCH),
        st.tuples(st.just("lookup"), BATCH),
        st.tuples(st.just("rehash"), st.sampled_from([None, 16, 32, 64])),
        st.tuples(st.just("probe"), st.integers(min_value=1, max_value=5)),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, capacity=st.sampled_from([8, 16, 32]), max_load=st.sampled_from([0.5, 0.75, 1.0]))
def test_matches_a_dict_model(ops: list[tuple[str, Any]], capacity: int, max_load: float) -> None:
    """Random batches over a tiny key universe (many collisions and duplicates) vs a dict."""
    table = HashTable(numpy, capacity, max_load_factor=max_load)
    slot_of: dict[tuple[int, int], int] = {}
    handle_of: dict[tuple[int, int], int] = {}
    counter = 0
    for op, arg in ops:
        if op in ("insert", "delete", "lookup"):
            hi, lo = fp(*arg) if arg else (numpy.empty(0, dtype=U64), numpy.empty(0, dtype=U64))
        if op == "insert":
            new = {key for key in arg if key not in slot_of}
            if len(slot_of) + len(new) > table.max_items:
                before = snapshot(table)
                with pytest.raises(TableFullError):
                    table.insert(hi, lo)
                assert_same(before, snapshot(table))
                continue
            slots, created = table.insert(hi, lo)
            seen: set[tuple[int, int]] = set()
            for key, slot, made in zip(arg, slots.tolist(), created.tolist()):
                if key in slot_of:
                    assert slot == slot_of[key] and not made
                else:
                    assert made == (key not in seen)
                    if made:
                        slot_of[key] = slot
                    assert slot == slot_of[key]
                seen.add(key)
            handles = numpy.arange(counter, counter + len(arg), dtype=numpy.int64)
            counter += len(arg)
            table.set_handles(slots, handles)
            for key, value in zip(arg, handles.tolist()):
                handle_of[key] = value  # batch order: the last write wins
        elif op == "delete":
            removed = table.delete(hi, lo)
            for key, slot in zip(arg, removed.tolist()):
                if key in slot_of:
                    assert slot == slot_of.pop(key)
                    del handle_of[key]
                else:
                    assert slot == -1
        elif op == "lookup":
            slots = table.lookup(hi, lo)
            assert slots.tolist() == [slot_of.get(key, -1) for key in arg]
            assert table.get_handles(slots).tolist() == [handle_of.get(key, -1) for key in arg]
        elif op == "rehash":
            if len(slot_of) > int((arg or table.capacity) * max_load):
                with pytest.raises(TableFullError):
                    table.rehash(arg)
                continue
            mapping = table.rehash(arg)
            slot_of = {key: int(mapping[slot]) for key, slot in slot_of.items()}
            assert table.tombstones == 0
        else:
            before = snapshot(table)
            ok, detail = table.self_test_probe(arg)
            assert ok, detail
            assert_same(before, snapshot(table))
        check_invariants(table, slot_of)
        full = numpy.flatnonzero(table.state == FULL)
        assert {(int(table.hi[s]), int(table.lo[s])): int(table.handle[s]) for s in full} == handle_of
