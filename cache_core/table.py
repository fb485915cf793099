# SPDX-License-Identifier: Apache-2.0
"""Batched open-addressing hash table from 128-bit fingerprints to caller-owned handles.

The table lives in flat arrays of the backend's array module (``xp``: CuPy on a GPU,
NumPy otherwise) so a batch of thousands of keys is one vectorised operation rather than
thousands of Python dictionary operations:

* ``keys``   ``(capacity, 2)`` uint64, the fingerprint ``(hi, lo)`` of each slot, stored
  interleaved so one 16-byte gather (NumPy) or one aligned load (CUDA) reads a whole
  fingerprint; ``hi`` and ``lo`` are column views of it;
* ``state``  uint8 per slot: ``EMPTY`` (0), ``FULL`` (1) or ``TOMBSTONE`` (2);
* ``handle`` int64 per slot: an opaque value the caller owns (the cache stores its entry
  ID), -1 when none;
* ``claim``  int64 per slot, the highest contention ticket the slot has seen.

Contention for a slot is resolved with tickets: every claim made in a round carries
``top - row`` where ``row`` is the batch index and ``top`` grows past every ticket handed
out before, so the slot's maximum is the lowest row of *this* round and stale tickets
never need to be cleared (that saves a scatter over every proposed slot per round).

Every slot that is not FULL holds the fingerprint (0, 0) and handle -1, so two tables
that went through the same operations are identical array for array.

**Probing is linear**, starting at ``lo & (capacity - 1)``. Fingerprints are keyed
BLAKE2b output, so home slots are uniform and an attacker cannot aim keys at one chain;
that removes the usual argument for triangular probing (less primary clustering under
poor hashes), while linear probing keeps a chain in neighbouring slots: the next probe is
usually in the cache line (CPU) or memory sector (GPU) already loaded. At the default
maximum load of 0.75 a miss costs about 8.5 probes on average and a hit about 2.5.

**Batches are processed in rounds.** Every pending key looks at one slot per round.
An insert first looks the whole batch up; for each absent key that lookup also notes the
first slot of its chain that is not FULL (the first tombstone, or the EMPTY slot that
ended the search), so a tombstone is only reused once the key is known not to be further
along. The absent keys then claim slots in rounds, starting at those noted slots: a key
at a FULL slot moves on, a key at a free slot proposes for it, and when several keys
propose for one slot in a round the lowest batch index wins. A loser whose winner has the
same fingerprint (an earlier copy of the key in the batch) takes that slot as found; the
others move on. Copies of a key therefore all get the slot of the first copy, and only
the first has ``created`` set. No sort is needed to de-duplicate a batch first (on NumPy,
sorting a million 128-bit keys costs more than inserting them). On CUDA the same rounds
run as kernels (``kernels/table.cu``) with ``atomicMax`` on a claim word and the kernel
boundary as the barrier, rather than a free-for-all ``atomicCAS`` whose winner would
depend on thread timing, so both backends place every key in the same slot.

The table does not lock its callers out of each other beyond one internal lock held for
each public operation; the cache holds its own lock around whole requests.
"""

from __future__ import annotations

import functools
import os
import threading
from importlib import resources
from typing import Any, cast

import numpy

from cache_core import _native
from cache_core.errors import CacheCoreError

EMPTY = 0
FULL = 1
TOMBSTONE = 2

# What one insert round did to a pending key (mirrors PREDIS_* in kernels/table.cu).
ACTION_FOUND = 1
ACTION_CREATED = 2
ACTION_ADVANCE = 3

# Kernels index with 64-bit integers; this only guards against absurd batch sizes.
MAX_BATCH = 1 << 40

KERNEL_SOURCE = "kernels/table.cu"
KERNEL_NAMES = ("predis_lookup", "predis_insert", "predis_delete", "predis_claim")
_THREADS = 256
_MAX_BLOCKS = 4096

_V16 = numpy.dtype((numpy.void, 16))
# Everything _allocate replaces; rehash restores these if rebuilding fails.
_STORAGE = ("_capacity", "_mask", "_keys", "state", "handle", "_claim", "_ticket", "_len", "_tombstones", "_keys16", "_view")
_BOTH_EQUAL = 0x0101  # two adjacent True bytes read as one uint16, in either byte order


class TableError(CacheCoreError):
    """Base class of hash-table errors."""


class TableFullError(TableError):
    """A batch would push the table past its maximum load factor; nothing was changed."""


def kernel_source() -> str:
    """The CUDA C source of the table kernels, read from the installed package."""
    return resources.files("cache_core").joinpath(KERNEL_SOURCE).read_text(encoding="utf-8")


@functools.cache
def _load_kernels(cupy: Any) -> dict[str, Any]:  # pragma: no cover - needs a GPU
    """Compile each kernel once per process (CuPy also caches the binaries on disk)."""
    source = kernel_source()
    return {name: cupy.RawKernel(source, name) for name in KERNEL_NAMES}


def _grid(n: int) -> tuple[int]:  # pragma: no cover - needs a GPU
    return (max(1, min(_MAX_BLOCKS, -(-n // _THREADS))),)


class HashTable:
    """Fingerprint → slot → handle, batched, on NumPy or CuPy arrays.

    ``capacity`` is rounded up to a power of two. At most
    ``floor(capacity * max_load_factor)`` keys may be FULL; a batch that would exceed it
    raises :class:`TableFullError` before anything is modified.

    On NumPy every operation runs in the compiled core (``cache_core._native.TableView``,
    ``native/table.c``) over these same arrays, with the same result slot for slot;
    ``native=False`` runs the vectorised NumPy rounds instead, the oracle its tests compare
    it with (and the host mirror of the CUDA kernels).
    """

    def __init__(self, xp: Any, capacity: int, *, max_load_factor: float = 0.75, native: bool = True) -> None:
        capacity = int(capacity)
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if not 0.0 < float(max_load_factor) <= 1.0:
            raise ValueError(f"max_load_factor must be in (0, 1], got {max_load_factor}")
        self.xp = xp
        self.max_load_factor = float(max_load_factor)
        self._lock = threading.RLock()
        self._kernels: dict[str, Any] | None = None
        if xp is not numpy:  # pragma: no cover - needs a GPU
            self._kernels = _load_kernels(xp)
        self._native = bool(native) and self._kernels is None
        self._allocate(1 << (capacity - 1).bit_length())

    # ------------------------------------------------------------------ storage
    def _allocate(self, capacity: int) -> None:
        xp = self.xp
        self._capacity = capacity
        self._mask = capacity - 1
        self._keys = xp.zeros((capacity, 2), dtype=xp.uint64)
        self.state = xp.zeros(capacity, dtype=xp.uint8)
        self.handle = xp.full(capacity, -1, dtype=xp.int64)
        self._claim = xp.zeros(capacity, dtype=xp.int64)
        self._ticket = 1
        self._len = 0
        self._tombstones = 0
        # The NumPy path gathers whole fingerprints through this 16-byte void view.
        self._keys16: Any = self._keys.view(_V16).reshape(capacity) if self._kernels is None else None
        self._view: Any = _native.TableView(self._keys, self.state, self.handle, self._claim) if self._native else None

    @property
    def view(self) -> Any:
        """The compiled operations on this table's arrays (None on CuPy or with ``native=False``)."""
        return self._view

    @property
    def hi(self) -> Any:
        """High 64 bits of each slot's fingerprint (a view; 0 where not FULL)."""
        return self._keys[:, 0]

    @property
    def lo(self) -> Any:
        """Low 64 bits of each slot's fingerprint (a view; 0 where not FULL)."""
        return self._keys[:, 1]

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_items(self) -> int:
        """How many keys may be FULL at once (exact: capacity is a power of two)."""
        return int(self._capacity * self.max_load_factor)

    @property
    def tombstones(self) -> int:
        return self._tombstones

    @property
    def load_factor(self) -> float:
        return self._len / self._capacity

    @property
    def nbytes(self) -> int:
        """Device (or host, on NumPy) bytes held by the table's arrays."""
        return int(self._keys.nbytes + self.state.nbytes + self.handle.nbytes + self._claim.nbytes)

    def __len__(self) -> int:
        return self._len

    # ------------------------------------------------------------------ input
    def _as_u64(self, values: Any, name: str) -> Any:
        xp = self.xp
        if isinstance(values, (list, tuple)):
            values = numpy.asarray(values, dtype=numpy.uint64)
        array = xp.asarray(values)
        if array.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array (uint64 fingerprints), got dtype {array.dtype}")
        return array.astype(xp.uint64, copy=False)

    def _pack(self, hi: Any, lo: Any) -> Any:
        """One contiguous ``(n, 2)`` uint64 batch on the device, validated."""
        hi = self._as_u64(hi, "hi")
        lo = self._as_u64(lo, "lo")
        if hi.ndim != 1 or hi.shape != lo.shape:
            raise ValueError(f"hi and lo must be 1-D and of equal length, got shapes {hi.shape} and {lo.shape}")
        if hi.shape[0] > MAX_BATCH:
            raise ValueError(f"a batch holds at most {MAX_BATCH} keys, got {hi.shape[0]}")
        return self.xp.stack((hi, lo), axis=1)

    def _as_slots(self, slots: Any, allow_absent: bool) -> Any:
        xp = self.xp
        slots = xp.asarray(slots)
        if slots.ndim != 1 or slots.dtype.kind not in "iu":
            raise TypeError(f"slots must be a 1-D integer array, got dtype {slots.dtype} and shape {slots.shape}")
        slots = slots.astype(xp.int64, copy=False)
        if slots.shape[0]:
            low = -1 if allow_absent else 0
            if int(slots.min()) < low or int(slots.max()) >= self._capacity:
                raise ValueError(f"slots must lie in [{low}, {self._capacity}), got values outside it")
        return slots

    # ------------------------------------------------------------------ public batch API
    def lookup(self, hi: Any, lo: Any) -> Any:
        """Slot of each fingerprint (int64, -1 where absent), on the device."""
        q = self._pack(hi, lo)
        with self._lock:
            return self._lookup(q)

    def insert(self, hi: Any, lo: Any) -> tuple[Any, Any]:
        """Make every fingerprint present; return ``(slots, created)``.

        ``slots`` (int64) is each key's slot, the same slot for every copy of a key in
        the batch. ``created`` (bool) is True only at the *first* copy of a key that was
        absent before the batch; later copies and keys already present get False. New
        slots start with handle -1. Callers writing values in batch order through
        ``slots`` therefore get last-writer-wins for free.

        Raises :class:`TableFullError`, leaving the table untouched, when the distinct
        new keys would take it past ``max_items``.
        """
        q = self._pack(hi, lo)
        with self._lock:
            slots, created, _ = self._insert(q, enforce_load=True)
            return slots, created

    def insert_handles(self, hi: Any, lo: Any, handles: Any) -> tuple[Any, Any]:
        """:meth:`insert` and :meth:`set_handles` in one: ``(slots, created)``, each key
        naming its last row's handle (the interface :class:`CompactTable` shares)."""
        slots, created = self.insert(hi, lo)
        self.set_handles(slots, handles)
        return slots, created

    def delete(self, hi: Any, lo: Any) -> Any:
        """Remove fingerprints, leaving tombstones; return the freed slot per key.

        A key named twice in the batch is removed once: its first copy reports the slot,
        later copies -1, as if the deletes ran one after another. Absent keys give -1.
        """
        q = self._pack(hi, lo)
        with self._lock:
            return self._delete(q)

    def set_handles(self, slots: Any, handles: Any) -> None:
        """Store ``handles[j]`` at ``slots[j]``; every slot must be FULL.

        If a slot appears more than once, the last occurrence wins on both backends
        (NumPy and CUDA scatter with repeated indices leave the winner undefined).
        """
        xp = self.xp
        with self._lock:
            slots = self._as_slots(slots, allow_absent=False)
            handles = xp.asarray(handles, dtype=xp.int64)
            if handles.shape != slots.shape:
                raise ValueError(f"slots and handles differ in shape: {slots.shape} vs {handles.shape}")
            n = slots.shape[0]
            if n == 0:
                return
            if self._view is not None:
                self._ticket = self._view.set_handles(numpy.ascontiguousarray(slots), numpy.ascontiguousarray(handles), self._ticket)
                return
            if not bool((self.state[slots] == FULL).all()):
                raise ValueError("set_handles: every slot must hold a key (state FULL)")
            last = self._first_claim(slots, xp.arange(n - 1, -1, -1, dtype=xp.int64))
            self.handle[slots[last]] = handles[last]

    def get_handles(self, slots: Any) -> Any:
        """Handle of each slot (int64); slot -1 (absent, as from :meth:`lookup`) gives -1."""
        xp = self.xp
        with self._lock:
            slots = self._as_slots(slots, allow_absent=True)
            out = xp.take(self.handle, xp.maximum(slots, 0))
            return xp.where(slots >= 0, out, -1)

    def clear(self) -> None:
        """Remove every key and tombstone, keeping the capacity."""
        with self._lock:
            self._keys.fill(0)
            self.state.fill(EMPTY)
            self.handle.fill(-1)
            self._claim.fill(0)
            self._ticket = 1
            self._len = 0
            self._tombstones = 0

    def rehash(self, new_capacity: int | None = None) -> Any:
        """Rebuild into ``new_capacity`` slots (default: the same) without tombstones.

        Handles move with their keys. Returns an int64 array over the *old* slots giving
        each key's new slot (-1 where the old slot held no key), for callers that keep
        per-slot data of their own. Raises :class:`TableFullError` (table unchanged) if
        the keys would exceed the new table's load limit.
        """
        xp = self.xp
        with self._lock:
            capacity = self._capacity if new_capacity is None else int(new_capacity)
            if capacity < 1:
                raise ValueError(f"new_capacity must be at least 1, got {capacity}")
            capacity = 1 << (capacity - 1).bit_length()
            limit = int(capacity * self.max_load_factor)
            if self._len > limit:
                raise TableFullError(
                    f"rehash to {capacity} slots would hold {self._len} keys but max_load_factor "
                    f"{self.max_load_factor} allows {limit}; choose a larger capacity"
                )
            old_capacity = self._capacity
            full = xp.flatnonzero(self.state == FULL)
            q = xp.ascontiguousarray(self._keys[full])
            handles = self.handle[full]
            saved = {name: self.__dict__[name] for name in _STORAGE}
            try:
                self._allocate(capacity)
                k = int(full.shape[0])
                slots = xp.full(k, -1, dtype=xp.int64)
                created = xp.zeros(k, dtype=xp.bool_)
                home = xp.bitwise_and(q[:, 1], self._mask).view(xp.int64)
                self._place(q, xp.arange(k, dtype=xp.int64), home, slots, created, None)
                self.handle[slots] = handles
                mapping = xp.full(old_capacity, -1, dtype=xp.int64)
                mapping[full] = slots
            except BaseException:
                # Out of (device) memory half-way: keep serving from the old arrays.
                self.__dict__.update(saved)
                raise
            return mapping

    def self_test_probe(self, n: int = 16) -> tuple[bool, str]:
        """Insert ``n`` fresh random fingerprints, check them, and take them out again.

        This backs readiness: it exercises the real insert, lookup, handle and delete
        paths on the device, then restores every touched slot to its previous state, so
        the table's length, tombstone count and arrays are exactly as before. The probe
        may go past ``max_load_factor`` (it only needs ``n`` slots that are not FULL), so a
        full cache still reports ready; with no free slot it only checks lookups.
        """
        n = int(n)
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        xp = self.xp
        with self._lock:
            backend = "numpy" if self._kernels is None else "cupy"
            before = (self._len, self._tombstones)
            try:
                n = min(n, self._capacity - self._len)
                q = self._fresh_fingerprints(max(n, 1))
                if n < 1:
                    if bool((self._lookup(q) >= 0).any()):
                        return False, f"{backend} table probe: a random fingerprint was reported present"
                    return True, f"{backend} table probe: table full, lookup-only probe ok"
                slots, created, prior = self._insert(q, enforce_load=False, want_prior=True)
                try:
                    problem = self._check_probe(q, slots, created)
                finally:
                    removed = self._delete(q)
                    made = xp.flatnonzero(created)
                    restored = xp.take(prior, made)
                    self.state[xp.take(slots, made)] = restored
                    self._tombstones -= int((restored == EMPTY).sum())
                if problem is None and not bool((removed == slots).all()):
                    problem = "delete did not free the probe's slots"
                if problem is None and (self._len, self._tombstones) != before:
                    problem = f"table counts changed from {before} to {(self._len, self._tombstones)}"
            except Exception as exc:
                return False, f"{backend} table probe raised {exc.__class__.__name__}: {exc}"
            if problem is not None:
                return False, f"{backend} table probe failed: {problem}"
            return True, f"{backend} table probe of {n} keys ok (insert, lookup, handles, delete)"

    # ------------------------------------------------------------------ host scalar path
    @property
    def host_scalar(self) -> bool:
        """True when single keys may be probed with scalar reads: the arrays are host memory.

        A batch of one costs about twenty NumPy calls on the vectorised path (each a
        microsecond or more) against a handful of scalar reads here, so the cache sends
        small batches this way. On CuPy every scalar read would be a device round trip,
        so the GPU path always stays batched.
        """
        return self._kernels is None

    def _probe_one(self, hi: int, lo: int) -> tuple[int, int]:
        """``(slot or -1, first slot of the chain that is not FULL or -1)`` for one key."""
        if self._view is not None:
            return self._view.probe(hi, lo)  # type: ignore[no-any-return]
        state, keys, mask = self.state, self._keys, self._mask
        pos = lo & mask
        free = -1
        for _ in range(self._capacity):
            seen = state.item(pos)
            if seen == FULL:
                if keys.item(pos, 1) == lo and keys.item(pos, 0) == hi:
                    return pos, free
            else:
                if free < 0:
                    free = pos
                if seen == EMPTY:
                    break
            pos = (pos + 1) & mask
        return -1, free

    def lookup_one(self, hi: int, lo: int) -> int:
        """Slot of one fingerprint (-1 when absent); NumPy only, same answer as :meth:`lookup`."""
        with self._lock:
            if self._view is not None:
                return self._view.probe(hi, lo)[0]  # type: ignore[no-any-return]
            return self._probe_one(hi, lo)[0]

    def find_one(self, hi: int, lo: int) -> int:
        """Handle of one fingerprint's slot (-1 when absent); NumPy only."""
        with self._lock:
            if self._view is not None:
                return self._view.find(hi, lo)  # type: ignore[no-any-return]
            slot = self._probe_one(hi, lo)[0]
            return int(self.handle.item(slot)) if slot >= 0 else -1

    def handle_one(self, slot: int) -> int:
        """Handle of one FULL slot (NumPy only)."""
        return int(self.handle.item(slot))

    def insert_one(self, hi: int, lo: int, handle: int) -> tuple[int, bool]:
        """Make one fingerprint present with ``handle`` if absent; return ``(slot, created)``.

        NumPy only. The slot is the one :meth:`insert` picks for a batch of this one key
        (the first slot of its chain that is not FULL), so both paths build the same table.
        """
        with self._lock:
            if self._view is not None:
                slot, outcome = self._view.insert_one(hi, lo, handle, self._len < self.max_items)
                if slot >= 0:
                    if outcome:
                        self._len += 1
                        self._tombstones -= outcome == 2
                    return slot, outcome > 0
                free = -1
            else:
                slot, free = self._probe_one(hi, lo)
                if slot >= 0:
                    return slot, False
            if self._len + 1 > self.max_items or free < 0:
                raise TableFullError(
                    f"inserting 1 new key into a table holding {self._len} would exceed "
                    f"{self.max_items} (capacity {self._capacity} x max_load_factor "
                    f"{self.max_load_factor}); rehash to a larger capacity or evict first"
                )
            if self.state.item(free) == TOMBSTONE:
                self._tombstones -= 1
            self._keys[free, 0] = hi
            self._keys[free, 1] = lo
            self.state[free] = FULL
            self.handle[free] = handle
            self._len += 1
            return free, True

    def delete_one(self, hi: int, lo: int) -> int:
        """Remove one fingerprint, leaving a tombstone; return its freed slot or -1. NumPy only."""
        with self._lock:
            if self._view is not None:
                slot = self._view.delete_one(hi, lo)
                if slot >= 0:
                    self._len -= 1
                    self._tombstones += 1
                return slot  # type: ignore[no-any-return]
            slot = self._probe_one(hi, lo)[0]
            if slot >= 0:
                self._keys[slot, 0] = 0
                self._keys[slot, 1] = 0
                self.handle[slot] = -1
                self.state[slot] = TOMBSTONE
                self._len -= 1
                self._tombstones += 1
            return slot

    # ------------------------------------------------------------------ shared batch logic
    def _fresh_fingerprints(self, n: int) -> Any:
        """``n`` distinct random fingerprints that are not in the table."""
        for _ in range(8):
            host = numpy.frombuffer(os.urandom(16 * n), dtype="<u8").reshape(n, 2)
            q = self.xp.asarray(numpy.ascontiguousarray(host, dtype=numpy.uint64))
            if self._count_distinct(q) == n and not bool((self._lookup(q) >= 0).any()):
                return q
        raise TableError("could not draw fresh random fingerprints")

    def _check_probe(self, q: Any, slots: Any, created: Any) -> str | None:
        xp = self.xp
        n = q.shape[0]
        if not bool(created.all()):
            return "insert did not create every probe key"
        if bool((slots < 0).any()) or int(xp.unique(slots).shape[0]) != n:
            return "insert returned invalid or repeated slots"
        marks = xp.asarray(numpy.frombuffer(os.urandom(8 * n), dtype="<i8") & numpy.int64(0x7FFFFFFFFFFFFFFF))
        self.set_handles(slots, marks)
        found = self._lookup(q)
        if not bool((found == slots).all()):
            return "lookup did not find the inserted keys in their slots"
        if not bool((self.get_handles(found) == marks).all()):
            return "handles read back differ from those written"
        return None

    def _count_distinct(self, q: Any) -> int:
        """Distinct fingerprints in a ``(k, 2)`` batch (sorts; used off the hot path)."""
        xp = self.xp
        k = int(q.shape[0])
        if k < 2:
            return k
        order = xp.lexsort(xp.stack((q[:, 1], q[:, 0])))
        s = q[order]
        changed = (s[1:, 0] != s[:-1, 0]) | (s[1:, 1] != s[:-1, 1])
        return 1 + int(changed.sum())

    def _insert(self, q: Any, enforce_load: bool, want_prior: bool = False) -> tuple[Any, Any, Any]:
        """Insert a packed batch; with ``want_prior`` also return each created slot's old state."""
        xp = self.xp
        n = q.shape[0]
        slots, free = self._lookup(q, track_free=True)
        created = xp.zeros(n, dtype=xp.bool_)
        prior = xp.zeros(n, dtype=xp.uint8) if want_prior else None
        absent = xp.flatnonzero(slots < 0)
        k = int(absent.shape[0])
        if k == 0:
            return slots, created, prior
        if enforce_load and self._len + k > self.max_items:
            new = self._count_distinct(q[absent])
            if self._len + new > self.max_items:
                raise TableFullError(
                    f"inserting {new} new keys into a table holding {self._len} would exceed "
                    f"{self.max_items} (capacity {self._capacity} x max_load_factor "
                    f"{self.max_load_factor}); rehash to a larger capacity or evict first"
                )
        self._place(q, absent, xp.take(free, absent), slots, created, prior)
        return slots, created, prior

    def _place(self, q: Any, idx: Any, pos: Any, slots: Any, created: Any, prior: Any | None) -> None:
        """Claim slots for the batch rows ``idx`` (known absent), starting at ``pos``.

        ``prior``, when given, receives the state each created slot had before (the
        readiness probe uses it to undo itself). Terminates without a probe limit: while
        a key is pending, fewer slots are FULL than will be after the batch, which the
        load check keeps within capacity, so a free slot exists, and every round each key
        finishes or moves one slot on.
        """
        xp = self.xp
        n = int(q.shape[0])
        if self._view is not None:
            self._ticket, won_count, reused = self._view.place(
                q, numpy.ascontiguousarray(idx, dtype=numpy.int64), numpy.ascontiguousarray(pos, dtype=numpy.int64),
                slots, created, prior, self._ticket,
            )
            self._len += won_count
            self._tombstones -= reused
            return
        while idx.shape[0]:
            keep, won, seen = self._round(q, idx, pos, slots, created, n)
            if won.shape[0]:
                self._len += int(won.shape[0])
                # With no tombstones left, every created slot was EMPTY.
                if prior is not None or self._tombstones:
                    seen_won = xp.take(seen, won)
                    self._tombstones -= int((seen_won == TOMBSTONE).sum())
                    if prior is not None:
                        prior[xp.take(idx, won)] = seen_won
            idx = xp.take(idx, keep)
            pos = xp.take(pos, keep)

    def _delete(self, q: Any) -> Any:
        xp = self.xp
        if self._view is not None:
            slots = numpy.empty(q.shape[0], dtype=numpy.int64)
            self._ticket, removed = self._view.remove(q, slots, self._ticket)
            self._len -= removed
            self._tombstones += removed
            return slots
        slots = self._lookup(q)
        hit = xp.flatnonzero(slots >= 0)
        if hit.shape[0]:
            where = slots[hit]
            first = self._first_claim(where, xp.arange(where.shape[0], dtype=xp.int64))
            slots[hit[~first]] = -1
            gone = where[first]
            self._tombstone(gone)
            self._len -= int(gone.shape[0])
            self._tombstones += int(gone.shape[0])
        return slots

    def _tickets(self, rank: Any, bound: int) -> tuple[int, Any]:
        """Tickets for ranks in ``[0, bound)``: the lowest rank gets the highest ticket.

        Returns ``(top, tickets)`` with ``tickets = top - rank``; every later call hands
        out tickets above all of these, so claims left in ``claim`` are always stale.
        """
        # int64 tickets last for centuries even at a billion claims per second.
        top = self._ticket + bound
        self._ticket = top + 1
        return top, self.xp.int64(top) - rank

    def _first_claim(self, slots: Any, rank: Any) -> Any:
        """True where ``rank[j]`` is the lowest rank given for ``slots[j]``."""
        _, tickets = self._tickets(rank, int(rank.shape[0]))
        self._claim_max(slots, tickets)
        return self._claim[slots] == tickets

    # ------------------------------------------------------------------ backend primitives
    def _lookup(self, q: Any, track_free: bool = False) -> Any:
        """Slots of a packed batch; with ``track_free`` also each key's first free slot.

        The first free slot is the first slot on the key's chain that is not FULL (-1 if
        the chain had none); for an absent key it is where the key may be placed.
        """
        if self._kernels is not None:  # pragma: no cover - needs a GPU
            n = q.shape[0]
            out = self.xp.empty(n, dtype=self.xp.int64)
            free = self.xp.empty(n, dtype=self.xp.int64) if track_free else out
            if n:
                self._kernels["predis_lookup"](
                    _grid(n),
                    (_THREADS,),
                    (self._keys, self.state, numpy.uint64(self._mask), numpy.int64(self._capacity), q, numpy.int64(n),
                     out, free, numpy.int32(track_free)),
                )
            return (out, free) if track_free else out
        if self._view is not None:
            n = q.shape[0]
            out = numpy.empty(n, dtype=numpy.int64)
            free = numpy.empty(n, dtype=numpy.int64) if track_free else None
            self._view.lookup(q, out, free)
            return (out, free) if track_free else out
        return self._lookup_numpy(q, track_free)

    def _round(self, q: Any, idx: Any, pos: Any, slots: Any, created: Any, n: int) -> tuple[Any, Any, Any]:
        """One claiming round for the pending batch rows ``idx`` at slots ``pos``.

        Writes ``slots``/``created`` for keys that finish and moves ``pos`` on in place
        for the others. Returns, as positions into ``idx``, the keys still pending and
        the keys that created a slot, plus the state each pending key saw (the old state
        of the slots created, to count reused tombstones and undo a readiness probe).
        """
        if self._kernels is not None:  # pragma: no cover - needs a GPU
            xp = self.xp
            m = idx.shape[0]
            action = xp.empty(m, dtype=xp.uint8)
            seen = xp.empty(m, dtype=xp.uint8)
            top, _ = self._tickets(idx[:0], n)
            kernel = self._kernels["predis_insert"]
            for phase in (0, 1):
                kernel(
                    _grid(m),
                    (_THREADS,),
                    (self._keys, self.state, self._claim, numpy.uint64(self._mask), q, idx, pos, numpy.int64(m),
                     numpy.int64(top), numpy.int32(phase), action, seen, slots, created),
                )
            return xp.flatnonzero(action == ACTION_ADVANCE), xp.flatnonzero(action == ACTION_CREATED), seen
        return self._round_numpy(q, idx, pos, slots, created, n)

    def _claim_max(self, slots: Any, tickets: Any) -> None:
        if self._kernels is not None:  # pragma: no cover - needs a GPU
            n = slots.shape[0]
            self._kernels["predis_claim"](_grid(n), (_THREADS,), (self._claim, slots, tickets, numpy.int64(n)))
            return
        numpy.maximum.at(self._claim, slots, tickets)

    def _tombstone(self, slots: Any) -> None:
        if self._kernels is not None:  # pragma: no cover - needs a GPU
            n = slots.shape[0]
            self._kernels["predis_delete"](_grid(n), (_THREADS,), (self._keys, self.state, self.handle, slots, numpy.int64(n)))
            return
        self._keys[slots] = 0
        self.handle[slots] = -1
        self.state[slots] = TOMBSTONE

    # ------------------------------------------------------------------ NumPy kernels
    def _lookup_numpy(self, q: numpy.ndarray, track_free: bool) -> Any:
        """Vectorised probing: all pending keys advance one slot per round.

        Each round gathers whole 16-byte fingerprints through a void view (one random
        access per key instead of two) and compares both halves in one pass; only the
        keys still pending are carried into the next round. Gathers use ``mode="clip"``,
        which skips NumPy's bounds-error bookkeeping (every index here is masked into
        range), which makes random gathers faster (bench/RESULTS.md).
        """
        n = q.shape[0]
        if n == 0:
            out = numpy.full(0, -1, dtype=numpy.int64)
            return (out, out.copy()) if track_free else out

        def take(a: numpy.ndarray, i: numpy.ndarray) -> numpy.ndarray:
            return numpy.take(a, i, mode="clip")

        # Without tombstones the only free slot a key can meet is the EMPTY one that ends
        # its search, which is therefore its first.
        tombstones = self._tombstones > 0
        state, keys16, mask = self.state, self._keys16, self._mask
        qv = q.view(_V16).reshape(n)
        pos = numpy.bitwise_and(q[:, 1], numpy.uint64(mask)).view(numpy.int64)
        idx = None
        # Both are replaced in the first round, which covers every key.
        out = pos
        free = pos if track_free else None
        for _ in range(self._capacity):
            seen = take(state, pos)
            same = numpy.equal(take(keys16, pos).view(numpy.uint64), qv.view(numpy.uint64))
            hit = same.view(numpy.uint16) == _BOTH_EQUAL
            numpy.logical_and(hit, seen == FULL, out=hit)
            if idx is None:
                out = numpy.where(hit, pos, -1)
            else:
                h = numpy.flatnonzero(hit)
                out[take(idx, h)] = take(pos, h)
            if free is not None:
                if idx is None:
                    free = numpy.where(seen != FULL, pos, -1)
                else:
                    at = numpy.flatnonzero(seen != FULL)
                    rows = take(idx, at)
                    if tombstones:
                        first = numpy.flatnonzero(take(free, rows) < 0)
                        rows, at = take(rows, first), take(at, first)
                    free[rows] = take(pos, at)
            # A key goes on unless it hit or reached an EMPTY slot: as numbers, seen > hit.
            more = numpy.flatnonzero(numpy.greater(seen, hit))
            if more.shape[0] == 0:
                break
            idx = more if idx is None else take(idx, more)
            pos = take(pos, more)
            pos += 1
            pos &= mask
            qv = take(qv, more)
        return (out, free) if track_free else out

    def _round_numpy(
        self, q: numpy.ndarray, idx: numpy.ndarray, pos: numpy.ndarray, slots: numpy.ndarray, created: numpy.ndarray, n: int
    ) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        """:meth:`_round` on NumPy, working on index subsets rather than masks.

        Keys at FULL slots and keys at free slots are split once with ``flatnonzero`` and
        each group only touches the arrays it needs; when a group is the whole pending
        set its index gathers are skipped. Handles are not written because a slot that is
        not FULL always holds handle -1 already.
        """
        def take(a: numpy.ndarray, i: numpy.ndarray) -> numpy.ndarray:
            return numpy.take(a, i, mode="clip")

        def same_key(x16: numpy.ndarray, y16: numpy.ndarray) -> numpy.ndarray:
            return cast(numpy.ndarray, numpy.equal(x16.view(numpy.uint64), y16.view(numpy.uint64)).view(numpy.uint16) == _BOTH_EQUAL)

        m = idx.shape[0]
        q16 = q.view(_V16).reshape(n)
        seen = take(self.state, pos)
        full = seen == FULL
        fi = numpy.flatnonzero(full)
        moving = [fi]
        if fi.shape[0]:
            p, rows = (pos, idx) if fi.shape[0] == m else (take(pos, fi), take(idx, fi))
            match = same_key(take(self._keys16, p), take(q16, rows))
            found = numpy.flatnonzero(match)
            if found.shape[0]:
                slots[take(rows, found)] = take(p, found)
                moving = [take(fi, numpy.flatnonzero(~match))]
            if fi.shape[0] == m:
                return self._advance(pos, moving), fi[:0], seen
        free = numpy.flatnonzero(~full) if fi.shape[0] else None
        p, rows = (pos, idx) if free is None else (take(pos, free), take(idx, free))
        top, tickets = self._tickets(rows, n)
        numpy.maximum.at(self._claim, p, tickets)
        claimed = take(self._claim, p)
        won = claimed == tickets
        w = numpy.flatnonzero(won)
        all_won = w.shape[0] == p.shape[0]
        wp, wr = (p, rows) if all_won else (take(p, w), take(rows, w))
        self._keys16[wp] = take(q16, wr)
        self.state[wp] = FULL
        slots[wr] = wp
        created[wr] = True
        won_at = w if free is None else take(free, w)
        if not all_won:
            lost = numpy.flatnonzero(~won)
            lp, lr = take(p, lost), take(rows, lost)
            winner = numpy.int64(top) - take(claimed, lost)
            copy = same_key(take(q16, winner), take(q16, lr))
            dup = numpy.flatnonzero(copy)
            if dup.shape[0]:
                slots[take(lr, dup)] = take(lp, dup)
                lost = take(lost, numpy.flatnonzero(~copy))
            moving.append(lost if free is None else take(free, lost))
        return self._advance(pos, moving), won_at, seen

    def _advance(self, pos: numpy.ndarray, groups: list[numpy.ndarray]) -> numpy.ndarray:
        """Move the keys at the given positions of ``pos`` one slot on; return them."""
        moving = groups[0] if len(groups) == 1 else numpy.concatenate(groups)
        if moving.shape[0]:
            step = numpy.take(pos, moving, mode="clip")
            step += 1
            step &= self._mask
            pos[moving] = step
        return moving


class CompactTable:
    """Fingerprint → entry ID for a cache on host memory, eight bytes a slot.

    :class:`HashTable` keeps each key's whole fingerprint in its slot, with a handle, a
    claim word for the GPU's batched inserts and a state byte: 33 bytes a slot, 69 bytes a
    key at 1M keys in 2^21 slots. The cache already keeps each entry's fingerprint
    (``Cache.e_hi``, ``e_lo``), so on the host a slot holds only the entry's ID and 32 bits
    of the fingerprint as a tag, and a tag that matches is confirmed against the entry
    (``cache_core._native.CompactTable``, ``native/ctable.c``): the same answers as a table
    of whole fingerprints in a quarter of the memory (bench/RESULTS.md).

    The contract with the caller: an entry's fingerprint is written before the entry is
    inserted and stays until it is deleted from the table. Handles are the entry IDs, at
    most ``len(e_hi) - 1``. Inserting takes the handles with the keys
    (:meth:`insert_handles`), as the entries must already be named. Probing, capacities
    (powers of two), the load limit and :class:`TableFullError` are HashTable's; slots
    reported are this table's own.
    """

    host_scalar = True

    def __init__(self, e_hi: numpy.ndarray, e_lo: numpy.ndarray, capacity: int, *, max_load_factor: float = 0.75) -> None:
        capacity = int(capacity)
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if not 0.0 < float(max_load_factor) <= 1.0:
            raise ValueError(f"max_load_factor must be in (0, 1], got {max_load_factor}")
        self.xp = numpy
        self.max_load_factor = float(max_load_factor)
        # Batches of 4,096 keys and rehashes run without the GIL (native/ctable.c): the
        # calls that change the table wait for each other and for batch reads.
        self._lock = threading.Lock()
        self._view = _native.CompactTable(e_hi, e_lo, 1 << (capacity - 1).bit_length())

    @property
    def view(self) -> Any:
        """The compiled table itself, for the compiled reads (native/reads.c)."""
        return self._view

    @property
    def capacity(self) -> int:
        return int(self._view.capacity)

    @property
    def max_items(self) -> int:
        """Most keys the table may hold: ``floor(capacity * max_load_factor)``."""
        return int(self._view.capacity * self.max_load_factor)

    @property
    def tombstones(self) -> int:
        return int(self._view.tombstones)

    @property
    def load_factor(self) -> float:
        return self._view.len / self._view.capacity  # type: ignore[no-any-return]

    @property
    def nbytes(self) -> int:
        """Host bytes held by the slots (8 a slot)."""
        return int(self._view.capacity) * 8

    def __len__(self) -> int:
        return int(self._view.len)

    @staticmethod
    def _pair(hi: Any, lo: Any) -> tuple[numpy.ndarray, numpy.ndarray]:
        hi = numpy.ascontiguousarray(hi, dtype=numpy.uint64 if isinstance(hi, (list, tuple)) else None)
        lo = numpy.ascontiguousarray(lo, dtype=numpy.uint64 if isinstance(lo, (list, tuple)) else None)
        if hi.dtype.kind not in "iu" or lo.dtype.kind not in "iu":
            raise TypeError(f"hi and lo must be integer arrays (uint64 fingerprints), got dtypes {hi.dtype} and {lo.dtype}")
        if hi.ndim != 1 or hi.shape != lo.shape:
            raise ValueError(f"hi and lo must be 1-D and of equal length, got shapes {hi.shape} and {lo.shape}")
        return hi.astype(numpy.uint64, copy=False), lo.astype(numpy.uint64, copy=False)

    def _full(self, new: int) -> TableFullError:
        return TableFullError(
            f"inserting {new} new keys into a table holding {len(self)} would exceed {self.max_items} "
            f"(capacity {self.capacity} x max_load_factor {self.max_load_factor}); rehash to a larger capacity or evict first"
        )

    # ------------------------------------------------------------------ batches
    def lookup(self, hi: Any, lo: Any) -> numpy.ndarray:
        """Slot of each fingerprint (int64, -1 where absent)."""
        hi, lo = self._pair(hi, lo)
        out = numpy.empty(hi.shape[0], dtype=numpy.int64)
        with self._lock:
            self._view.lookup(hi, lo, out)
        return out

    def get_handles(self, slots: Any) -> numpy.ndarray:
        """Entry of each slot (int64); slot -1 (absent, as from :meth:`lookup`) gives -1."""
        slots = numpy.ascontiguousarray(slots, dtype=numpy.int64)
        if slots.ndim != 1:
            raise TypeError(f"slots must be a 1-D integer array, got shape {slots.shape}")
        out = numpy.empty(slots.shape[0], dtype=numpy.int64)
        try:
            self._view.handles(slots, out)
        except IndexError as exc:
            raise ValueError(str(exc)) from None
        return out

    def insert_handles(self, hi: Any, lo: Any, handles: Any) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Make every fingerprint present naming its entry; return ``(slots, created)``.

        A key named twice names its last row's entry; ``created`` is True only at the row
        that placed a key absent before the batch. Raises :class:`TableFullError`, with
        nothing changed, when the distinct new keys would take the table past
        :attr:`max_items`.
        """
        hi, lo = self._pair(hi, lo)
        handles = numpy.ascontiguousarray(handles, dtype=numpy.int64)
        if handles.shape != hi.shape:
            raise ValueError(f"fingerprints and handles differ in shape: {hi.shape} vs {handles.shape}")
        slots = numpy.empty(hi.shape[0], dtype=numpy.int64)
        created = numpy.zeros(hi.shape[0], dtype=numpy.bool_)
        with self._lock:
            room = self.max_items - len(self)
            # Only a batch longer than the room left can fail; the cache reserves room
            # first, so this extra pass over the batch is the exception.
            absent = int(self._view.absent(hi, lo)) if hi.shape[0] > room else 0
            if absent > room:
                rows = numpy.empty(hi.shape[0], dtype=numpy.int64)
                self._view.lookup(hi, lo, rows)
                missing = rows < 0  # a key named twice counts once
                absent = int(numpy.unique(numpy.stack((hi[missing], lo[missing]), axis=1), axis=0).shape[0])
                if absent > room:
                    raise self._full(absent)
            _done, placed = self._view.insert(hi, lo, handles, slots, created.view(numpy.uint8))
        if not placed:  # no free slot in a chain: impossible under a load limit below 1
            raise self._full(int(created.sum()))
        return slots, created

    def delete(self, hi: Any, lo: Any) -> numpy.ndarray:
        """Remove fingerprints, leaving tombstones; the freed slot per row (-1: absent, or
        named again after its first row)."""
        hi, lo = self._pair(hi, lo)
        out = numpy.empty(hi.shape[0], dtype=numpy.int64)
        with self._lock:
            self._view.delete(hi, lo, out)
        return out

    def clear(self) -> None:
        """Remove every key and tombstone, keeping the capacity."""
        with self._lock:
            self._view.clear()

    def rehash(self, new_capacity: int | None = None) -> None:
        """Rebuild into ``new_capacity`` slots (default: the same, rounded up to a power of
        two) without tombstones. Raises :class:`TableFullError` (table unchanged) if the
        keys would exceed the new table's load limit."""
        capacity = self.capacity if new_capacity is None else int(new_capacity)
        if capacity < 1:
            raise ValueError(f"new_capacity must be at least 1, got {capacity}")
        capacity = 1 << (capacity - 1).bit_length()
        limit = int(capacity * self.max_load_factor)
        if len(self) > limit:
            raise TableFullError(
                f"rehash to {capacity} slots would hold {len(self)} keys but max_load_factor "
                f"{self.max_load_factor} allows {limit}; choose a larger capacity"
            )
        with self._lock:
            self._view.rehash(capacity)

    # ------------------------------------------------------------------ one key
    def lookup_one(self, hi: int, lo: int) -> int:
        """Slot of one fingerprint (-1 when absent)."""
        return self._view.probe(hi, lo)[0]  # type: ignore[no-any-return]

    def find_one(self, hi: int, lo: int) -> int:
        """Entry of one fingerprint (-1 when absent)."""
        return self._view.find(hi, lo)  # type: ignore[no-any-return]

    def handle_one(self, slot: int) -> int:
        """Entry of one slot holding a key."""
        return self._view.handle(slot)  # type: ignore[no-any-return]

    def insert_one(self, hi: int, lo: int, handle: int) -> tuple[int, bool]:
        """Make one fingerprint present naming entry ``handle``; return ``(slot, created)``."""
        slot, outcome = self._view.insert_one(hi, lo, handle, len(self) < self.max_items)
        if slot < 0:
            raise self._full(1)
        return slot, outcome > 0

    def delete_one(self, hi: int, lo: int) -> int:
        """Remove one fingerprint, leaving a tombstone; return its freed slot or -1."""
        return self._view.delete_one(hi, lo)  # type: ignore[no-any-return]

    def self_test_probe(self, n: int = 16) -> tuple[bool, str]:
        """Readiness: the compiled table's insert, lookup, handle and delete on ``n`` random
        fingerprints, in a scratch table of its own (the cache's entries are not touched)."""
        n = int(n)
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        try:
            rng = numpy.random.default_rng()
            e_hi = rng.integers(0, 1 << 64, size=n, dtype=numpy.uint64, endpoint=False)
            e_lo = rng.integers(0, 1 << 64, size=n, dtype=numpy.uint64, endpoint=False)
            scratch = CompactTable(e_hi, e_lo, 2 * n, max_load_factor=1.0)
            eids = numpy.arange(n, dtype=numpy.int64)
            slots, created = scratch.insert_handles(e_hi, e_lo, eids)
            problem = None
            if not bool(created.all()) or len(scratch) != n:
                problem = "insert did not create every key"
            elif not numpy.array_equal(scratch.get_handles(scratch.lookup(e_hi, e_lo)), eids):
                problem = "lookup did not find each key's entry"
            elif not numpy.array_equal(scratch.delete(e_hi, e_lo), slots) or len(scratch):
                problem = "delete did not free the keys' slots"
        except Exception as exc:
            return False, f"numpy table probe raised {exc.__class__.__name__}: {exc}"
        if problem is not None:
            return False, f"numpy table probe failed: {problem}"
        return True, f"numpy table probe of {n} keys ok (insert, lookup, handles, delete)"
