# SPDX-License-Identifier: Apache-2.0
"""The compiled hash table (cache_core._native.TableView) against the NumPy rounds.

Two tables go through the same random operations, one on the compiled core (the default
on NumPy), one with ``native=False`` (the vectorised NumPy rounds, the oracle): every
result and every array, claim words and ticket included, must be identical after each
step. Fingerprints are drawn from a few values per half so batches repeat keys, chains
collide and deletes leave tombstones that later inserts reuse."""

from __future__ import annotations

from typing import Any

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_core import _native
from cache_core.table import FULL, HashTable, TableFullError

_ARRAYS = ("_keys", "state", "handle", "_claim")


def _same(a: HashTable, b: HashTable) -> None:
    for name in _ARRAYS:
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    assert (len(a), a.tombstones, a._ticket, a.capacity) == (len(b), b.tombstones, b._ticket, b.capacity)


def _batch(draw: Any, size: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    hi = draw(st.lists(st.integers(0, 3), min_size=size, max_size=size))
    lo = draw(st.lists(st.integers(0, 40), min_size=size, max_size=size))
    return numpy.asarray(hi, dtype=numpy.uint64), numpy.asarray(lo, dtype=numpy.uint64)


def _both(tables: tuple[HashTable, HashTable], op: str, *args: Any) -> Any:
    results = []
    for table in tables:
        try:
            results.append(("ok", getattr(table, op)(*args)))
        except (TableFullError, ValueError) as exc:
            results.append(("error", type(exc).__name__))
    normal = [_plain(r) for r in results]
    assert normal[0] == normal[1], op
    _same(*tables)
    return results[0][1]


def _plain(result: tuple[str, Any]) -> Any:
    kind, value = result
    if kind == "error":
        return result
    if isinstance(value, tuple):
        return tuple(v.tolist() if isinstance(v, numpy.ndarray) else v for v in value)
    return value.tolist() if isinstance(value, numpy.ndarray) else value


@st.composite
def _programs(draw: Any) -> list[tuple[str, Any]]:
    steps = []
    for _ in range(draw(st.integers(1, 25))):
        op = draw(st.sampled_from(["insert", "delete", "lookup", "set_handles", "insert_one", "delete_one", "rehash", "clear"]))
        size = draw(st.integers(0, 30))
        steps.append((op, _batch(draw, size), draw(st.integers(0, 1 << 20)), draw(st.sampled_from([32, 64, 128]))))
    return steps


@settings(max_examples=250, deadline=None)
@given(program=_programs(), load=st.sampled_from([0.5, 0.75, 1.0]))
def test_the_compiled_table_matches_the_numpy_rounds(program: list[tuple[str, Any]], load: float) -> None:
    tables = (HashTable(numpy, 64, max_load_factor=load), HashTable(numpy, 64, max_load_factor=load, native=False))
    assert tables[0]._view is not None and tables[1]._view is None
    for op, (hi, lo), number, capacity in program:
        if op in ("insert", "delete", "lookup"):
            _both(tables, op, hi, lo)
        elif op == "set_handles":
            slots = tables[0].lookup(hi, lo)
            handles = numpy.arange(len(slots), dtype=numpy.int64) + number
            _both(tables, "set_handles", slots[slots >= 0], handles[slots >= 0])
            if (slots < 0).any():  # a slot that holds no key: refused by both, nothing written
                _both(tables, "set_handles", numpy.maximum(slots, 0), handles)
        elif op == "insert_one" and len(hi):
            _both(tables, "insert_one", int(hi[0]), int(lo[0]), number)
        elif op == "delete_one" and len(hi):
            _both(tables, "delete_one", int(hi[0]), int(lo[0]))
        elif op == "rehash":
            _both(tables, "rehash", capacity)
        elif op == "clear":
            _both(tables, "clear")
        for table in tables:
            assert int((table.state == FULL).sum()) == len(table)


def test_scalar_and_batch_answers_agree_on_a_large_random_table() -> None:
    rng = numpy.random.default_rng(7)
    n = 20_000  # past the size at which batches run without the GIL
    hi, lo = (rng.integers(0, 1 << 63, size=n, dtype=numpy.int64).astype(numpy.uint64) for _ in range(2))
    native, oracle = HashTable(numpy, 1 << 15), HashTable(numpy, 1 << 15, native=False)
    for table in (native, oracle):
        slots, created = table.insert(hi, lo)
        assert bool(created.all())
        table.set_handles(slots, numpy.arange(n))
        table.delete(hi[::3], lo[::3])
    _same(native, oracle)
    assert native.lookup(hi, lo).tolist() == oracle.lookup(hi, lo).tolist()
    for j in range(0, n, 997):
        expected = -1 if j % 3 == 0 else j
        assert native.find_one(int(hi[j]), int(lo[j])) == oracle.find_one(int(hi[j]), int(lo[j])) == expected


def test_the_view_refuses_arrays_it_cannot_serve() -> None:
    keys, state = numpy.zeros((8, 2), dtype=numpy.uint64), numpy.zeros(8, dtype=numpy.uint8)
    handle, claim = numpy.full(8, -1, dtype=numpy.int64), numpy.zeros(8, dtype=numpy.int64)
    with pytest.raises(ValueError):
        _native.TableView(keys, state, handle, numpy.zeros(4, dtype=numpy.int64))  # lengths differ
    with pytest.raises(ValueError):
        _native.TableView(numpy.zeros((6, 2), dtype=numpy.uint64), state[:6], handle[:6], claim[:6])  # not a power of two
    with pytest.raises((ValueError, BufferError)):
        readonly = keys.copy()
        readonly.setflags(write=False)
        _native.TableView(readonly, state, handle, claim)
    with pytest.raises(TypeError):
        _native.TableView(keys, state, handle)
    view = _native.TableView(keys, state, handle, claim)
    with pytest.raises(ValueError):
        view.lookup(numpy.zeros((2, 2), dtype=numpy.uint64), numpy.zeros(3, dtype=numpy.int64))
    with pytest.raises(ValueError):  # a start slot outside the table
        view.place(numpy.zeros((1, 2), dtype=numpy.uint64), numpy.zeros(1, dtype=numpy.int64),
                   numpy.full(1, 8, dtype=numpy.int64), numpy.full(1, -1, dtype=numpy.int64),
                   numpy.zeros(1, dtype=numpy.bool_), None, 1)  # fmt: skip
    with pytest.raises(OverflowError):
        view.probe(-1, 0)
    assert view.insert_one(1, 2, 5, True) == (2, 1)
    assert view.insert_one(1, 2, 6, True) == (2, 0)
    assert view.find(1, 2) == 5
    assert view.insert_one(9, 10, 7, False) == (-1, 0)  # no room: nothing written
    assert view.delete_one(1, 2) == 2 and view.find(1, 2) == -1
    assert view.insert_one(3, 2, 8, True) == (2, 2)  # the tombstone reused
