# SPDX-License-Identifier: Apache-2.0
"""The Cache facade: get/put/delete/exists/mget/mset/expire/ttl/incr, batched.

Pieces: a :class:`~cache_core.keys.Fingerprinter` (keyed 128-bit fingerprints), the
hash table (fingerprint → entry ID: a :class:`~cache_core.table.CompactTable` on host
memory, the device's :class:`~cache_core.table.HashTable` on a GPU), dense per-entry
metadata on the host (value handle, length, expiry, fingerprint), the
:class:`~cache_core.store.ValueStore` (value bytes in the backend's memory) and an
eviction policy over entry IDs.

Every public operation takes a batch (the single-key forms are batches of one), holds
one lock for the whole batch, and reports what happened to the access hook: one call
per batch with NumPy arrays, so an access log can append it vectorised.

Semantics follow Redis where Redis has an answer: duplicate keys in one write batch
resolve last-writer-wins; a plain SET clears the TTL; INCR keeps it; a value that cannot
fit even in an empty cache is refused with :class:`OutOfMemoryError`; expired keys are
removed lazily on access and by :meth:`Cache.sweep_expired`.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard, cast

import numpy

from cache_core import _native
from cache_core.backend import to_host
from cache_core.errors import CacheCoreError
from cache_core.eviction import ClockPolicy, make_policy
from cache_core.keys import Fingerprinter
from cache_core.metering import ORIGIN_CALLERS, OriginMeter
from cache_core.store import ValueStore, ValueTooLargeError
from cache_core.table import CompactTable, HashTable

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
TTL_NONE = 0
# A table is rebuilt without tombstones once they exceed this share of its slots.
TOMBSTONE_REBUILD_RATIO = 0.25
# On NumPy, batches of at most this many keys are served by scalar probes of the same
# arrays (see HashTable.host_scalar): below it, the fixed cost of some twenty NumPy calls
# per batch exceeds a Python loop over the keys (measured in bench/bench_cache.py).
SMALL_BATCH = 16
# Up to this many events, an access hook that takes lists gets lists (cheaper to build
# than three arrays for a few events; the access log's compiled append takes either).
HOOK_LIST_EVENTS = 32
# The table is first sized for this many keys (or max_keys if fewer) and doubles as keys
# arrive: a rehash of n keys costs about what inserting them did, so growth adds a constant
# factor to writes while an idle agent holds a table of 2048 slots instead of max_keys'.
INITIAL_TABLE_KEYS = 1024

# Value types: a string (what every string command reads and writes) or a hash (its fields
# encoded by cache_core.resp.hashes; one entry, one value, as far as memory, TTL and
# eviction go).
TYPE_STRING, TYPE_HASH = 0, 1
WRONGTYPE_MESSAGE = "WRONGTYPE Operation against a key holding the wrong kind of value"
# Most numbered databases (the entry's database is a uint16).
MAX_DATABASES = 65536
# SCAN looks for live entries this many entry IDs at a time (one NumPy pass each).
SCAN_WINDOW = 65536

# Access-hook op and result codes (uint8), shared with the access log.
OP_GET, OP_SET, OP_DEL, OP_EXPIRE, OP_PREFETCH = 1, 2, 3, 4, 5
RES_HIT, RES_MISS, RES_PREFETCH_HIT, RES_EVICTED, RES_STORED, RES_DELETED, RES_EXPIRED = 0, 1, 2, 3, 4, 5, 6


class CacheError(CacheCoreError):
    """Base class of errors the cache reports to its callers."""


class NotAnIntegerError(CacheError):
    """INCR on a value that is not a base-10 64-bit integer, or an overflow."""


class WrongTypeError(CacheError):
    """A string operation on a hash, or a hash operation on a string (Redis's WRONGTYPE)."""

    def __init__(self) -> None:
        super().__init__(WRONGTYPE_MESSAGE)


class _WrongType:
    """What a read of string values gives for a key that holds another type (a hash):
    GET answers WRONGTYPE for it, MGET nil, and read-through leaves it alone."""

    def __repr__(self) -> str:
        return "WRONG_TYPE"


WRONG_TYPE: Any = _WrongType()


class OutOfMemoryError(CacheError):
    """A write that cannot fit within the memory budget even after evicting."""


class AccessHook(Protocol):
    """Told about every batch: the keys' 64-bit fingerprints, RES_* results and value sizes,
    as aligned arrays. A hook with ``accepts_lists = True`` may get a small batch (a lone
    GET) as lists of ints instead; one with ``wants_keys = True`` also gets ``keys=``."""

    def __call__(self, op: int, fingerprints: numpy.ndarray, results: numpy.ndarray, sizes: numpy.ndarray, /) -> None: ...


class KeyedAccessHook(Protocol):
    """An :class:`AccessHook` with ``wants_keys = True``: also told the batch's keys, as
    ``keys=`` (aligned with the fingerprints)."""

    def __call__(
        self, op: int, fingerprints: numpy.ndarray, results: numpy.ndarray, sizes: numpy.ndarray, /, keys: Sequence[bytes] | None = None
    ) -> None: ...


def _wants_keys(hook: AccessHook) -> TypeGuard[KeyedAccessHook]:
    """Whether ``hook`` asks for the keys of each batch (``wants_keys = True``)."""
    return bool(getattr(hook, "wants_keys", False))


def _capacity_for(keys: int, max_load_factor: float) -> int:
    """The power-of-two slot count whose load limit holds ``keys``."""
    capacity = 1
    while capacity * max_load_factor < keys:
        capacity *= 2
    return capacity


def null_access_hook(op: int, fingerprints: numpy.ndarray, results: numpy.ndarray, sizes: numpy.ndarray) -> None:
    """The default access hook: does nothing."""


# What the compiled one-request path (Entries.lone) compares a cache's hook and policy with.
_native.serving_setup(null_access_hook, ClockPolicy, time.monotonic)


class Origin(Protocol):
    """A backing store the cache reads through on a miss."""

    name: str

    def load_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    sets: int = 0
    deletes: int = 0
    evictions: int = 0
    expirations: int = 0
    origin_loads: int = 0
    origin_errors: int = 0
    # Prefetched entries: inserted by the prefetcher, then either read by a demand GET
    # (used) or removed/overwritten before any read (wasted).
    prefetch_inserted: int = 0
    prefetch_used: int = 0
    prefetch_wasted: int = 0
    keys: int = 0
    value_bytes: int = 0
    charged_bytes: int = 0
    device_bytes: int = 0
    host_bytes: int = 0
    max_memory_bytes: int = 0
    max_keys: int = 0


# The CacheStats fields that only grow (the rest describe the cache as it is now).
COUNTER_FIELDS = (
    "hits", "misses", "sets", "deletes", "evictions", "expirations", "origin_loads", "origin_errors",
    "prefetch_inserted", "prefetch_used", "prefetch_wasted",
)  # fmt: skip


class Cache:
    """A bounded key-value cache with TTL and eviction on an array backend."""

    def __init__(
        self,
        xp: Any,
        *,
        max_keys: int,
        max_memory_bytes: int,
        max_key_bytes: int = 512,
        max_value_bytes: int = 1 << 20,
        eviction: str = "clock",
        slab_growth_factor: float = 1.25,
        max_load_factor: float = 0.75,
        clock: Callable[[], float] = time.monotonic,
        access_hook: AccessHook | None = None,
        origin: Origin | None = None,
        read_through: bool = False,
        fingerprinter: Fingerprinter | None = None,
        small_batch: int | None = None,
        databases: int = 1,
        native: bool = True,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        if not 1 <= databases <= MAX_DATABASES:
            raise ValueError(f"databases must be 1..{MAX_DATABASES}, got {databases}")
        # Numbered keyspaces sharing one table, one memory budget and one eviction policy:
        # a key's fingerprint depends on its database, and each entry records it.
        self.databases = int(databases)
        self._views: dict[int, Database] = {}
        self.xp = xp
        self.max_keys = int(max_keys)
        self.max_memory_bytes = int(max_memory_bytes)
        self.max_value_bytes = int(max_value_bytes)
        # The longest value ever written (a high-water mark, never lowered): below it, the
        # RESP server knows an MGET's reply fits its read budget without looking.
        self.largest_value_bytes = 0
        self.clock = clock
        self.access_hook = access_hook or null_access_hook
        # Called with the keys of every read, after it was served (the prefetcher's queue).
        # Told about every read batch after it was served: the keys and, per key, whether
        # it was a hit (before any read-through); the prefetcher learns from it.
        self.prefetch_observer: Callable[[Sequence[bytes], Sequence[bool]], None] | None = None
        self.origin = origin
        self.read_through = read_through
        # Told, under the cache's lock, of every key a client's write changed: written,
        # deleted, given or stripped of a TTL, expired or evicted, with the keys'
        # fingerprints (hi, lo), or (None, None) when everything was flushed. Loads from the
        # origin (read-through, prefetch) are not changes: the value is the origin's either
        # way. The RESP server's WATCH sets it.
        self.modified: Callable[[numpy.ndarray | None, numpy.ndarray | None], None] | None = None
        self.fp = fingerprinter or Fingerprinter(max_key_bytes=max_key_bytes)
        if self.fp.max_key_bytes != max_key_bytes:
            raise ValueError("the fingerprinter's max_key_bytes differs from the cache's")
        self.eviction_name = eviction
        # The table starts small and doubles as keys arrive (Cache._reserve), up to the
        # capacity that holds max_keys: an idle cache does not hold max_keys' worth of table.
        self._table_capacity = _capacity_for(self.max_keys, max_load_factor)
        self._initial_capacity = _capacity_for(min(self.max_keys, INITIAL_TABLE_KEYS), max_load_factor)
        # ``native=False`` keeps the compiled table and reads out of it (the tests' oracle).
        self.native = bool(native)
        self._max_load_factor = float(max_load_factor)
        # On host memory the compiled cache keys its entries by a CompactTable (8 bytes a
        # slot, confirmed against e_hi/e_lo), made with the entry arrays in _alloc_entries;
        # on a GPU, and with native=False (the tests' oracle), by a HashTable.
        self._compact = self.native and xp is numpy
        self.table: HashTable | CompactTable
        if not self._compact:
            self.table = HashTable(xp, self._initial_capacity, max_load_factor=max_load_factor, native=self.native)
        self.store = ValueStore(xp, max_value_bytes=max_value_bytes, growth_factor=slab_growth_factor)
        # Key names live in slabs of their own on the host (KEYS, SCAN, RANDOMKEY, RENAME
        # name keys back from entries): a 16-byte key costs a 16-byte chunk and its entry's
        # handle and length, less than a bytes object in a list (bench/RESULTS.md).
        self.key_store = ValueStore(numpy, max_value_bytes=max(max_key_bytes, 16), growth_factor=slab_growth_factor)
        self.policy = make_policy(eviction, self.max_keys)
        # Batches up to this many keys take the scalar host path (same results).
        limit = SMALL_BATCH if small_batch is None else int(small_batch)
        self.small_batch = limit if self._compact or self.table.host_scalar else 0
        self._lock = threading.RLock()
        self.stats = CacheStats(max_memory_bytes=self.max_memory_bytes, max_keys=self.max_keys)
        # What the origin was asked, by whom (a demand read through, the prefetcher).
        self.origin_meters = {caller: OriginMeter() for caller in ORIGIN_CALLERS}
        self._alloc_entries()

    def _alloc_entries(self) -> None:
        # The per-entry arrays are zero-filled on allocation, so the kernel maps their pages
        # only as entries are first handed out (from 0 up, _fresh): they cost memory in
        # proportion to the keys the cache has held, not to max_keys. e_handle is read only
        # for live entries.
        n = self.max_keys
        self.e_handle = numpy.zeros(n, dtype=numpy.int64)
        self.e_len = numpy.zeros(n, dtype=numpy.int64)
        self.e_expire = numpy.zeros(n, dtype=numpy.int64)  # absolute clock ms; 0 = none
        self.e_hi = numpy.zeros(n, dtype=numpy.uint64)
        self.e_lo = numpy.zeros(n, dtype=numpy.uint64)
        if self._compact:  # keyed by these arrays: a new table with them (start, FLUSHALL)
            self.table = CompactTable(self.e_hi, self.e_lo, self._initial_capacity, max_load_factor=self._max_load_factor)
        self.e_live = numpy.zeros(n, dtype=bool)
        self.e_prefetched = numpy.zeros(n, dtype=bool)
        self.e_atime = numpy.zeros(n, dtype=numpy.int64)  # clock ms of the last read or write
        self.e_db = numpy.zeros(n, dtype=numpy.uint16)
        self.e_type = numpy.zeros(n, dtype=numpy.uint8)
        self.typed_keys = 0  # entries that are not strings: 0 keeps the string reads' fast path
        self.db_keys = numpy.zeros(self.databases, dtype=numpy.int64)
        # The key of each entry: fingerprints find entries, these name them back (KEYS,
        # SCAN, RANDOMKEY, RENAME). On the host, counted in host_bytes.
        self.e_khandle = numpy.zeros(n, dtype=numpy.int64)  # the key's handle in key_store
        self.e_klen = numpy.zeros(n, dtype=numpy.uint32)  # the key's length
        # String reads of host entries run compiled (native/reads.c) over these arrays.
        self._entries: Any = None
        if self._compact:
            self._entries = _native.Entries(self.e_handle, self.e_len, self.e_expire, self.e_atime, self.e_prefetched, self.e_type)
            self._entries.bind(self.fp.hasher(0), self.fp.max_key_bytes, self.store, self._lock, self.stats)
        self.key_store.clear()
        self.key_bytes = 0
        # Entries whose string encoding is not the one Redis gives a value written by SET
        # (OBJECT ENCODING): "raw" after APPEND or SETRANGE, "embstr" for INCRBYFLOAT's
        # result. Absent: derived from the value. Few entries, so a dict.
        self.encodings: dict[int, bytes] = {}
        self._free: list[int] = []  # entries removed, handed out again last-removed first
        self._fresh = 0  # entries [0, _fresh) have been handed out at least once
        self.live_keys = 0

    def _note_encoding(self, eids: list[int], encoding: bytes | None) -> None:
        if encoding is None:
            for eid in eids:
                self.encodings.pop(eid, None)
        else:
            for eid in eids:
                self.encodings[eid] = encoding

    def encoding_override(self, key: bytes, db: int = 0) -> bytes | None:
        """The string encoding a write set for ``key`` (see ``mset(encoding=)``), or None:
        the one Redis derives from the value."""
        with self._lock:
            if not self.encodings:
                return None
            eid = self._find_one(key, self.now_ms(), db)
            return self.encodings.get(eid) if eid >= 0 else None

    def _entry_arrays(self) -> tuple[numpy.ndarray, ...]:
        return (self.e_handle, self.e_len, self.e_expire, self.e_hi, self.e_lo, self.e_live, self.e_prefetched, self.e_atime, self.e_db, self.e_type, self.e_khandle, self.e_klen)

    def _names(self, eids: numpy.ndarray) -> list[bytes]:
        """The key names of live entries, in order."""
        get, e_khandle, e_klen = self.key_store.get, self.e_khandle, self.e_klen
        return [get(e_khandle.item(e), e_klen.item(e)) for e in eids.tolist()]

    def _take_entries(self, n: int) -> numpy.ndarray:
        """``n`` unused entry IDs: removed ones first, then ones never used."""
        free = self._free
        reused = min(n, len(free))
        taken = [free.pop() for _ in range(reused)]
        if n > reused:
            start, stop = self._fresh, self._fresh + n - reused
            if stop > self.max_keys:
                free.extend(reversed(taken))
                raise RuntimeError(f"entry IDs exhausted: {stop} > max_keys {self.max_keys}")
            taken.extend(range(start, stop))
            self._fresh = stop
        return numpy.asarray(taken, dtype=numpy.int64)

    def _reserve(self, new_keys: int) -> None:
        """Grow the table (doubling, up to the capacity for max_keys) so that ``new_keys``
        more keys fit under its load limit."""
        table = self.table
        need = len(table) + new_keys
        if need <= table.max_items or table.capacity >= self._table_capacity:
            return
        capacity = table.capacity
        while int(capacity * table.max_load_factor) < need and capacity < self._table_capacity:
            capacity *= 2
        table.rehash(min(capacity, self._table_capacity))
        _native.trim_heap()  # the replaced arrays would otherwise stay resident (bench/RESULTS.md)

    # ------------------------------------------------------------------ helpers
    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _find(self, hi: numpy.ndarray, lo: numpy.ndarray, now: int) -> numpy.ndarray:
        """Entry IDs for fingerprints (-1 absent); expired entries are removed here."""
        slots = to_host(self.table.lookup(hi, lo)).astype(numpy.int64)
        eids = numpy.full(len(slots), -1, dtype=numpy.int64)
        found = slots >= 0
        if found.any():
            eids[found] = to_host(self.table.get_handles(slots[found]))
            exp = self.e_expire[eids[found]]
            dead_mask = (exp != TTL_NONE) & (exp <= now)
            if dead_mask.any():
                dead = numpy.unique(eids[found][dead_mask])
                self._remove(dead, reason=RES_EXPIRED)
                positions = numpy.flatnonzero(found)[dead_mask]
                eids[positions] = -1
        return eids

    @property
    def access_hook(self) -> AccessHook:
        """Told about every batch (see :class:`AccessHook`); replaceable while serving."""
        return self._access_hook

    @access_hook.setter
    def access_hook(self, hook: AccessHook) -> None:
        # What the hook accepts is read once here, not on every read it is told about.
        self._keyed_hook: KeyedAccessHook | None = hook if _wants_keys(hook) else None
        self._hook_lists = bool(getattr(hook, "accepts_lists", False)) and self._keyed_hook is None
        # An access log ring the compiled paths write events into themselves (AccessLog.hook).
        self._hook_ring = getattr(hook, "ring", None)
        self._access_hook = hook

    def _report(
        self, op: int, lo: numpy.ndarray, results: numpy.ndarray, sizes: numpy.ndarray, keys: Sequence[bytes] | None = None
    ) -> None:
        """Tell the access hook; the keys themselves only to a hook that asks (``wants_keys``)."""
        hook = self._access_hook
        if hook is null_access_hook:
            return
        keyed = self._keyed_hook
        if keys is not None and keyed is not None:
            keyed(op, lo, results, sizes, keys=keys)
        else:
            hook(op, lo, results, sizes)

    def _fps_small(self, keys: Sequence[bytes], db: int = 0) -> list[tuple[int, int]]:
        fingerprint = self.fp.fingerprint
        lengths = list(map(len, keys))
        if min(lengths) < 1 or max(lengths) > self.fp.max_key_bytes:
            if len(keys) == 1:
                fingerprint(keys[0])  # raises the error for one key
            self.fp.fingerprints(keys)  # raises the batch's error, naming the bad key's index
        if db:
            return [fingerprint(k, db) for k in keys]
        return [fingerprint(k) for k in keys]

    def _find_small(self, fps: list[tuple[int, int]], now: int) -> list[int]:
        """:meth:`_find` by scalar probes, for small batches on host memory."""
        table, expire = self.table, self.e_expire
        out: list[int] = []
        dead: list[int] = []
        for hi, lo in fps:
            slot = table.lookup_one(hi, lo)
            if slot < 0:
                out.append(-1)
                continue
            eid = table.handle_one(slot)
            exp = expire.item(eid)
            if exp != TTL_NONE and exp <= now:
                dead.append(eid)
                out.append(-1)
            else:
                out.append(eid)
        if dead:
            self._remove(numpy.unique(numpy.asarray(dead, dtype=numpy.int64)), reason=RES_EXPIRED)
        return out

    def _remove(self, eids: numpy.ndarray, reason: int) -> None:
        """Remove live entries (table, value, policy) and count why."""
        eids = eids[self.e_live[eids]]
        if len(eids) == 0:
            return
        if len(eids) <= self.small_batch:
            for eid in eids.tolist():
                self.table.delete_one(self.e_hi.item(eid), self.e_lo.item(eid))
        else:
            self.table.delete(self.xp.asarray(self.e_hi[eids]), self.xp.asarray(self.e_lo[eids]))
        e_khandle, e_klen, key_store = self.e_khandle, self.e_klen, self.key_store
        if self.encodings:
            self._note_encoding(eids.tolist(), None)
        for eid in eids.tolist():
            self.store.free(int(self.e_handle[eid]), int(self.e_len[eid]))
            length = e_klen.item(eid)
            key_store.free(e_khandle.item(eid), length)
            self.key_bytes -= length
        if self.modified is not None:
            self.modified(self.e_hi[eids].copy(), self.e_lo[eids].copy())
        sizes = self.e_len[eids].copy()
        self.stats.prefetch_wasted += int(self.e_prefetched[eids].sum())
        self.e_live[eids] = False
        self.live_keys -= len(eids)
        if self.typed_keys:
            self.typed_keys -= int(numpy.count_nonzero(self.e_type[eids]))
            self.e_type[eids] = TYPE_STRING
        if len(eids) == 1:
            self.db_keys[self.e_db.item(eids[0])] -= 1
        else:
            numpy.subtract.at(self.db_keys, self.e_db[eids].astype(numpy.int64), 1)
        if self.databases > 1:
            self.e_db[eids] = 0
        self.e_handle[eids] = -1
        self.e_expire[eids] = TTL_NONE
        self.e_prefetched[eids] = False
        self._free.extend(eids.tolist())
        self.policy.on_remove(eids, evicted=reason == RES_EVICTED)
        if reason == RES_EXPIRED:
            self.stats.expirations += len(eids)
        elif reason == RES_EVICTED:
            self.stats.evictions += len(eids)
        if reason in (RES_EXPIRED, RES_EVICTED):
            op = OP_EXPIRE if reason == RES_EXPIRED else OP_SET
            self._report(op, self.e_lo[eids].copy(), numpy.full(len(eids), reason, dtype=numpy.uint8), sizes)
        if self.table.tombstones > self.table.capacity * TOMBSTONE_REBUILD_RATIO:
            self.table.rehash(self.table.capacity)

    def _make_room(self, new_keys: int, extra_bytes: int, protect: set[int]) -> None:
        """Evict until ``new_keys`` more keys and ``extra_bytes`` more bytes fit."""
        if extra_bytes > self.max_memory_bytes:
            raise OutOfMemoryError("OOM command not allowed: the value is larger than cache.max_memory_bytes")
        while True:
            over_keys = self.live_keys + new_keys - self.max_keys
            over_bytes = self.store.chunk_bytes + extra_bytes - self.max_memory_bytes
            if over_keys <= 0 and over_bytes <= 0:
                return
            want = max(over_keys, 1)
            if over_bytes > 0:
                avg = max(1, self.store.chunk_bytes // max(1, self.live_keys))
                want = max(want, -(-over_bytes // avg))
            victims = self.policy.victims(want + len(protect))
            # Each victim once: an entry removed twice would be freed twice.
            victims = numpy.asarray([v for v in dict.fromkeys(victims.tolist()) if v not in protect and self.e_live[v]], dtype=numpy.int64)
            if len(victims) == 0:
                raise OutOfMemoryError("OOM command not allowed: nothing left to evict within cache.max_memory_bytes")
            self._remove(victims[:want] if over_bytes <= 0 else victims, reason=RES_EVICTED)

    # ------------------------------------------------------------------ reads
    def mget(self, keys: Sequence[bytes], db: int = 0) -> list[bytes | None]:
        """Values for ``keys`` (None for missing), in order; the prefetch observer (if
        any) is told about them afterwards (database 0's reads only: it prefetches there)."""
        observer = self.prefetch_observer if db == 0 else None
        out, hits = self._mget(keys, observer is not None, db=db)
        if observer is not None and keys:
            observer(keys, hits)
        return out

    # Split reads, for a server that must not wait for the origin on its event loop:
    # ``lookup`` serves what is cached (counted as ``mget`` counts it), ``fill_from_origin``
    # (in a worker thread) loads the misses, ``notify_reads`` tells the prefetcher.
    def lookup(self, keys: Sequence[bytes], max_bytes: int = 0, db: int = 0) -> tuple[list[bytes | None], list[bool]]:
        """Cached values (None for a miss) and which keys were hits (an empty list when no
        prefetch observer would be told: nothing else reads them); no origin is asked.

        ``max_bytes`` > 0: only the first keys whose values add up to at most that many
        bytes are read (always at least one), so a server can bound what one batch copies
        out; fewer values than keys come back then, and only those keys count as read."""
        return self._mget(keys, db == 0 and self.prefetch_observer is not None, read_through=False, max_bytes=max_bytes, db=db)

    def needs_origin(self, values: Sequence[bytes | None]) -> bool:
        """Whether a lookup's misses would be read through from the origin."""
        return self.read_through and self.origin is not None and None in values

    def fill_from_origin(self, keys: Sequence[bytes], values: list[bytes | None], db: int = 0) -> None:
        """Read the misses of a lookup through from the origin (in place); may raise."""
        if self.needs_origin(values):
            self._read_through(keys, values, db)

    def notify_reads(self, keys: Sequence[bytes], hits: Sequence[bool], db: int = 0) -> None:
        """Tell the prefetch observer about a served read batch (as ``mget`` does)."""
        observer = self.prefetch_observer
        if observer is not None and keys and db == 0:
            observer(keys, hits)

    def _mget(
        self, keys: Sequence[bytes], want_hits: bool = False, read_through: bool = True, max_bytes: int = 0, db: int = 0
    ) -> tuple[list[bytes | None], list[bool]]:
        """Values and, with ``want_hits``, which keys were hits (else an empty list); with
        ``max_bytes``, possibly for a prefix of ``keys`` only (see :meth:`lookup`)."""
        if not keys:
            return [], []
        if self._entries is not None:
            native = self._read_native(keys, max_bytes, db, want_hits)
            if native is not None:
                out, hit_flags = native
                if read_through and self.read_through and self.origin is not None and None in out:
                    self._read_through(keys[: len(out)], out, db)
                return out, hit_flags
        if len(keys) <= self.small_batch:
            out = self._mget_small(keys, max_bytes, db)
            small_hits = [v is not None for v in out] if want_hits else []
            if read_through and self.read_through and self.origin is not None and None in out:
                self._read_through(keys[: len(out)], out, db)
            return out, small_hits
        hi, lo = self.fp.fingerprints(keys, db)
        with self._lock:
            now = self.now_ms()
            eids = self._find(hi, lo, now)
            hit = eids >= 0
            if max_bytes > 0:
                total = numpy.cumsum(numpy.where(hit, self.e_len[numpy.maximum(eids, 0)], 0))
                if total[-1] > max_bytes:
                    n = max(1, int(numpy.searchsorted(total, max_bytes, side="right")))
                    keys, hi, lo, eids, hit = keys[:n], hi[:n], lo[:n], eids[:n], hit[:n]
            out = [None] * len(keys)
            typed = self.typed_keys
            for i in numpy.flatnonzero(hit).tolist():
                eid = int(eids[i])
                if typed and self.e_type[eid]:
                    out[i] = WRONG_TYPE
                    continue
                out[i] = self.store.get(int(self.e_handle[eid]), int(self.e_len[eid]))
            results = numpy.where(hit, RES_HIT, RES_MISS).astype(numpy.uint8)
            if hit.any():
                hit_ids = eids[hit]
                prefetched = self.e_prefetched[hit_ids]
                results[numpy.flatnonzero(hit)[prefetched]] = RES_PREFETCH_HIT
                self.stats.prefetch_used += int(numpy.unique(hit_ids[prefetched]).shape[0])
                self.e_prefetched[hit_ids] = False
                self.policy.on_access(hit_ids)
                self.e_atime[hit_ids] = now
            n_hit = int(hit.sum())
            self.stats.hits += n_hit
            self.stats.misses += len(keys) - n_hit
            sizes = numpy.where(hit, self.e_len[numpy.maximum(eids, 0)], 0)
            self._report(OP_GET, lo, results, sizes, keys)
        if read_through and self.read_through and self.origin is not None and n_hit < len(keys):
            self._read_through(keys, out, db)
        return out, (hit.tolist() if want_hits else [])

    def _read_native(self, keys: Sequence[bytes], max_bytes: int, db: int, want_hits: bool) -> tuple[list[bytes | None], list[bool]] | None:
        """:meth:`_mget`'s cached part in one compiled call (native/reads.c), with the
        same results, counters and events as the Python paths; None when the batch needs
        those (a key of a bad length, an expired entry to remove): nothing was changed."""
        key_list = keys if type(keys) is list else list(keys)
        policy = self.policy
        ref = policy.ref if type(policy) is ClockPolicy else None
        store = self.store
        with self._lock:
            now = self.now_ms()
            got = self._entries.read(
                self.fp.hasher(db), self.table.view, key_list, self.fp.max_key_bytes, now, max_bytes,
                self.typed_keys > 0, WRONG_TYPE, store.page_lists, store.chunk_sizes, ref, self._hook_ring, OP_GET,
            )  # fmt: skip
            if got is None:
                return None
            out, hits, used, lo, results, sizes, hit_eids = got
            self._count_compiled_reads(len(out), hits, used, hit_eids, ref)
            if self._access_hook is not null_access_hook and self._hook_ring is None:
                if self._hook_lists and len(out) <= HOOK_LIST_EVENTS:  # lists: cheaper than arrays for a few events
                    self._access_hook(OP_GET, memoryview(lo).cast("Q").tolist(), list(results), memoryview(sizes).cast("q").tolist())  # type: ignore[arg-type]
                    return out, ([r != RES_MISS for r in results] if want_hits else [])
                self._report(
                    OP_GET,
                    numpy.frombuffer(lo, dtype=numpy.uint64),
                    numpy.frombuffer(results, dtype=numpy.uint8),
                    numpy.frombuffer(sizes, dtype=numpy.int64),
                    key_list[: len(out)],
                )
        return out, ([r != RES_MISS for r in results] if want_hits else [])

    def serve_lone(self, key: bytes, value: bytes | None, null: bytes, other: bytes) -> bytes | bool | None:
        """One client request in one compiled call (Entries.lone), with the lock held: GET
        ``key`` (``value`` None: its RESP reply, ``null`` for a miss, ``other`` for a key
        that is not a string) or a plain SET over an existing string key keeping its size
        class (True). Counters and access-log events as :meth:`read_replies` and
        :meth:`overwrite_strings` give them. None, with nothing done, where those (or the
        general paths) must serve it: a prefetch observer to tell, WATCHed keys, an origin
        to read through, a hook without a ring, a policy other than CLOCK, a key to insert."""
        entries = self._entries
        if entries is None:
            return None
        return entries.lone(self, key, value, null, other, OP_GET if value is None else OP_SET, RES_STORED)  # type: ignore[no-any-return]

    def _count_compiled_reads(self, read: int, hits: int, used: int, hit_eids: bytes, ref: Any) -> None:
        """Counters and policy after a compiled read of ``read`` keys (the lock held): the
        compiled call set the CLOCK bits itself when ``ref`` was given."""
        if hits:
            if used:
                self.stats.prefetch_used += used
            if ref is None:
                self.policy.on_access(numpy.frombuffer(hit_eids, dtype=numpy.int64))
        self.stats.hits += hits
        self.stats.misses += read - hits

    def read_replies(self, keys: list[bytes], null: bytes, other: bytes, header: bool, db: int = 0) -> tuple[bytes, list[bool]] | None:
        """A server's batch of string reads with their RESP replies in one compiled call:
        the replies of a run of GETs (or, with ``header``, one MGET's array), a miss as
        ``null`` and a key that is not a string as ``other``, and which keys were hits (an
        empty list when no prefetch observer would be told). Reads, counters and access-log
        events are those of :meth:`lookup`. None, with nothing read, where that needs the
        general path: no compiled entries, misses that the origin would fill, an access
        hook that takes no ring, or a key the compiled read leaves to Python."""
        if self._entries is None or (self.read_through and self.origin is not None):
            return None
        if self._hook_ring is None and self._access_hook is not null_access_hook:
            return None
        policy = self.policy
        ref = policy.ref if type(policy) is ClockPolicy else None
        store = self.store
        with self._lock:
            got = self._entries.read_reply(
                self.fp.hasher(db), self.table.view, keys, self.fp.max_key_bytes, self.now_ms(), self.typed_keys > 0,
                null, other, header, store.page_lists, store.chunk_sizes, ref, self._hook_ring, OP_GET,
            )  # fmt: skip
            if got is None:
                return None
            reply, hits, used, results, hit_eids = got
            self._count_compiled_reads(len(keys), hits, used, hit_eids, ref)
        if db or self.prefetch_observer is None:
            return reply, []
        return reply, [r != RES_MISS for r in results]

    def _mget_small(self, keys: Sequence[bytes], max_bytes: int = 0, db: int = 0) -> list[bytes | None]:
        fps = self._fps_small(keys, db)
        with self._lock:
            now = self.now_ms()
            eids = self._find_small(fps, now)
            if max_bytes > 0:
                total = 0
                for n, eid in enumerate(eids):
                    total += self.e_len.item(eid) if eid >= 0 else 0
                    if total > max_bytes and n:
                        keys, fps, eids = keys[:n], fps[:n], eids[:n]
                        break
            e_handle, e_len, e_pre, store = self.e_handle, self.e_len, self.e_prefetched, self.store
            typed, e_type = self.typed_keys, self.e_type
            e_atime = self.e_atime
            out: list[bytes | None] = []
            results: list[int] = []
            hits: list[int] = []
            used: set[int] = set()  # prefetched entries read for the first time
            # Scalar reads and stores throughout: for a few keys, NumPy's fancy indexing
            # costs more than the Python loop (measured in bench/RESULTS.md).
            for eid in eids:
                if eid < 0:
                    out.append(None)
                    results.append(RES_MISS)
                    continue
                out.append(WRONG_TYPE if typed and e_type.item(eid) else store.get(e_handle.item(eid), e_len.item(eid)))
                if e_pre.item(eid):
                    results.append(RES_PREFETCH_HIT)
                    used.add(eid)
                else:
                    results.append(RES_HIT)
                e_atime[eid] = now
                hits.append(eid)
            if hits:
                if used:
                    self.stats.prefetch_used += len(used)
                    for eid in used:
                        e_pre[eid] = False
                self.policy.on_access(numpy.asarray(hits, dtype=numpy.int64))
            self.stats.hits += len(hits)
            self.stats.misses += len(keys) - len(hits)
            hook = self._access_hook
            if hook is not null_access_hook:
                fp_lo = [lo for _hi, lo in fps]
                sizes = [e_len.item(e) if e >= 0 else 0 for e in eids]
                if self._hook_lists:
                    hook(OP_GET, fp_lo, results, sizes)  # type: ignore[arg-type]
                else:
                    self._report(
                        OP_GET,
                        numpy.asarray(fp_lo, dtype=numpy.uint64),
                        numpy.asarray(results, dtype=numpy.uint8),
                        numpy.asarray(sizes, dtype=numpy.int64),
                        keys,
                    )
        return out

    def get(self, key: bytes, db: int = 0) -> bytes | None:
        return self.mget([key], db)[0]

    def _find_keys(self, keys: Sequence[bytes], now: int, db: int = 0) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        """``(eids, hi, lo)`` for ``keys``, by the small or the batched path."""
        if len(keys) <= self.small_batch:
            fps = self._fps_small(keys, db)
            eids = numpy.asarray(self._find_small(fps, now), dtype=numpy.int64)
            pairs = numpy.asarray(fps, dtype=numpy.uint64).reshape(len(keys), 2)
            return eids, numpy.ascontiguousarray(pairs[:, 0]), numpy.ascontiguousarray(pairs[:, 1])
        hi, lo = self.fp.fingerprints(keys, db)
        return self._find(hi, lo, now), hi, lo

    def _find_one(self, key: bytes, now: int, db: int = 0) -> int:
        if self.small_batch:
            return self._find_small(self._fps_small([key], db), now)[0]
        hi, lo = self.fp.fingerprints([key], db)
        return int(self._find(hi, lo, now)[0])

    def _read_through(self, keys: Sequence[bytes], out: list[bytes | None], db: int = 0) -> None:
        missing = [i for i, v in enumerate(out) if v is None]
        wanted = list(dict.fromkeys(keys[i] for i in missing))
        assert self.origin is not None
        meter = self.origin_meters["demand"]
        started = time.perf_counter()
        try:
            loaded = self.origin.load_many(wanted)
        except Exception:
            meter.failed(len(wanted), time.perf_counter() - started)
            with self._lock:
                self.stats.origin_errors += 1
            raise
        meter.observe(len(wanted), loaded, time.perf_counter() - started)
        found = {k: v for k, v in zip(wanted, loaded) if v is not None and len(v) <= self.max_value_bytes}
        too_large = sum(1 for v in loaded if v is not None and len(v) > self.max_value_bytes)
        if too_large:
            # An origin object larger than cache.max_value_bytes is a miss, not a failed batch.
            with self._lock:
                self.stats.origin_errors += too_large
        if not found:
            return
        with self._lock:
            self.stats.origin_loads += len(found)
        self.mset(list(found.items()), loaded=True, db=db)
        for i in missing:
            value = found.get(keys[i])
            if value is not None:
                out[i] = value

    def contains_many(self, keys: Sequence[bytes], db: int = 0) -> list[bool]:
        """Whether each key is cached, without counting a read or touching the policy
        (the prefetcher asks before loading)."""
        if not keys:
            return []
        with self._lock:
            if len(keys) <= self.small_batch:
                return [eid >= 0 for eid in self._find_small(self._fps_small(keys, db), self.now_ms())]
            eids, _hi, _lo = self._find_keys(keys, self.now_ms(), db)
            return cast(list[bool], (eids >= 0).tolist())

    def exists(self, keys: Sequence[bytes], db: int = 0) -> int:
        """How many of ``keys`` exist (a key named twice counts twice, as in Redis)."""
        if not keys:
            return 0
        with self._lock:
            eids, _hi, _lo = self._find_keys(keys, self.now_ms(), db)
            return int((eids >= 0).sum())

    def ttl_ms(self, key: bytes, db: int = 0) -> int:
        """Remaining TTL in ms; -1 when the key has none; -2 when it does not exist."""
        with self._lock:
            now = self.now_ms()
            eid = self._find_one(key, now, db)
            if eid < 0:
                return -2
            exp = int(self.e_expire[eid])
            return -1 if exp == TTL_NONE else max(0, exp - now)

    # ------------------------------------------------------------------ writes
    def check_batch(self, keys: Sequence[bytes], values: Sequence[bytes] = ()) -> None:
        """Raise what a write of ``keys`` and ``values`` would raise for their sizes, without
        writing (a command applied in slices checks first, so that it fails whole)."""
        self.fp.check_lengths(keys)
        self._check_values(values)

    def _check_values(self, values: Sequence[bytes]) -> None:
        largest = len(values[0]) if len(values) == 1 else max(map(len, values), default=0)
        if largest > self.max_value_bytes:
            raise ValueTooLargeError(f"value of {largest} bytes exceeds cache.max_value_bytes ({self.max_value_bytes})")
        if largest > self.largest_value_bytes:
            self.largest_value_bytes = largest

    def mset(
        self,
        items: Sequence[tuple[bytes, bytes]],
        *,
        ttl_ms: int | None = None,
        keep_ttl: bool = False,
        prefetched: bool = False,
        loaded: bool = False,
        db: int = 0,
        kind: int = TYPE_STRING,
        encoding: bytes | None = None,
    ) -> None:
        """Store every (key, value); duplicates in the batch: the last one wins.

        ``prefetched`` (the prefetcher's inserts) only adds keys that are absent: a
        prefetch never replaces a value a client wrote or read. ``loaded``: the values come
        from the origin (read-through), which :attr:`modified` is not told about."""
        if not items:
            return
        last = dict(items)
        keys = list(last)
        values = list(last.values())
        self._check_values(values)
        if len(keys) > self.max_keys:
            # More distinct keys than the cache holds: applied as that many SETs in a row
            # would be, max_keys at a time (the last ones stay); in one batch no room could
            # be made for them all.
            pairs = list(last.items())
            with self._lock:
                for start in range(0, len(pairs), self.max_keys):
                    self.mset(pairs[start : start + self.max_keys], ttl_ms=ttl_ms, keep_ttl=keep_ttl, prefetched=prefetched, loaded=loaded, db=db, kind=kind, encoding=encoding)
            return
        if (
            self._entries is not None and not prefetched and kind == TYPE_STRING and encoding is None
            and self.modified is None and self._overwrite_native(keys, values, ttl_ms, keep_ttl, db)
        ):  # fmt: skip
            return
        if len(keys) <= self.small_batch:
            self._mset_small(keys, values, ttl_ms, keep_ttl, prefetched, loaded, db, kind, encoding)
            return
        with self._lock:
            now = self.now_ms()
            eids, hi, lo = self._find_keys(keys, now, db)
            exists = eids >= 0
            if prefetched and exists.any():
                keep = numpy.flatnonzero(~exists)
                keys = [keys[i] for i in keep.tolist()]
                values = [values[i] for i in keep.tolist()]
                eids, hi, lo, exists = eids[keep], hi[keep], lo[keep], exists[keep]
                if not keys:
                    return
            new_idx = numpy.flatnonzero(~exists)
            old_idx = numpy.flatnonzero(exists)
            chunk_sizes = self.store.chunk_sizes
            charge = int(chunk_sizes[numpy.searchsorted(chunk_sizes, numpy.fromiter(map(len, values), dtype=numpy.int64, count=len(values)))].sum())
            refund = int(chunk_sizes[numpy.searchsorted(chunk_sizes, self.e_len[eids[old_idx]])].sum()) if len(old_idx) else 0
            protect = set(eids[old_idx].tolist())
            self._make_room(len(new_idx), charge - refund, protect)
            # Overwrites.
            e_atime, e_type = self.e_atime, self.e_type
            for i in old_idx.tolist():
                eid = int(eids[i])
                e_atime[eid] = now
                if e_type.item(eid) != kind:  # SET over a hash makes it a string, HSET the reverse
                    self.typed_keys += (kind != TYPE_STRING) - (e_type.item(eid) != TYPE_STRING)
                    e_type[eid] = kind
                if self.e_prefetched[eid]:
                    self.stats.prefetch_wasted += 1  # overwritten before anyone read it
                self.e_handle[eid] = self.store.replace(int(self.e_handle[eid]), int(self.e_len[eid]), values[i])
                self.e_len[eid] = len(values[i])
                self.e_prefetched[eid] = prefetched
                if not keep_ttl:
                    self.e_expire[eid] = TTL_NONE if ttl_ms is None else now + ttl_ms
            if len(old_idx):
                self.policy.on_access(eids[old_idx])
            # New keys.
            if len(new_idx):
                n_hi, n_lo = hi[new_idx], lo[new_idx]
                self._reserve(len(new_idx))
                new_eids = self._take_entries(len(new_idx))
                self.e_hi[new_eids] = n_hi  # before the insert: a CompactTable reads them
                self.e_lo[new_eids] = n_lo
                try:
                    if len(new_idx) == 1 and self.small_batch:
                        self.table.insert_one(n_hi.item(0), n_lo.item(0), new_eids.item(0))
                    else:
                        self.table.insert_handles(self.xp.asarray(n_hi), self.xp.asarray(n_lo), self.xp.asarray(new_eids))
                except BaseException:
                    self._free.extend(reversed(new_eids.tolist()))  # not lost: the next write can use them
                    raise
                new_list = new_idx.tolist()
                new_values = [values[i] for i in new_list]
                new_keys = [keys[i] for i in new_list]
                self.e_handle[new_eids] = self.store.put_many(new_values)
                self.e_len[new_eids] = numpy.fromiter(map(len, new_values), dtype=numpy.int64, count=len(new_values))
                e_atime[new_eids] = now
                self.e_khandle[new_eids] = self.key_store.put_many(new_keys)
                key_lengths = numpy.fromiter(map(len, new_keys), dtype=numpy.int64, count=len(new_keys))
                self.e_klen[new_eids] = key_lengths
                self.key_bytes += int(key_lengths.sum())
                self.e_live[new_eids] = True
                if db:
                    self.e_db[new_eids] = db  # _remove left database 0 in a freed entry
                self.db_keys[db] += len(new_eids)
                if kind != TYPE_STRING:
                    self.e_type[new_eids] = kind
                    self.typed_keys += len(new_eids)
                self.live_keys += len(new_eids)
                self.e_prefetched[new_eids] = prefetched
                self.e_expire[new_eids] = TTL_NONE if ttl_ms is None else now + ttl_ms
                self.policy.on_insert(new_eids, n_lo)
            if encoding is not None or self.encodings:
                self._note_encoding(eids[old_idx].tolist() + (new_eids.tolist() if len(new_idx) else []), encoding)
            if prefetched:
                self.stats.prefetch_inserted += len(keys)
            else:
                self.stats.sets += len(keys)
                if self.modified is not None and not loaded:
                    self.modified(hi, lo)
            if self._access_hook is not null_access_hook:
                op = OP_PREFETCH if prefetched else OP_SET
                sizes = numpy.asarray([len(v) for v in values], dtype=numpy.int64)
                self._report(op, lo, numpy.full(len(keys), RES_STORED, dtype=numpy.uint8), sizes, keys)

    def overwrite_strings(self, keys: list[bytes], values: list[bytes], db: int = 0) -> bool:
        """A server's run of plain SETs (no options) over distinct keys, as :meth:`mset`
        would store them, when every key exists, holds a string and keeps its value's size
        class: one compiled call. False, with nothing changed, where :meth:`mset` is needed."""
        if self._entries is None or self.modified is not None:
            return False
        largest = len(values[0]) if len(values) == 1 else max(map(len, values))
        if largest > self.max_value_bytes:
            return False
        if not self._overwrite_native(keys, values, None, False, db):
            return False
        if largest > self.largest_value_bytes:
            self.largest_value_bytes = largest
        return True

    def _overwrite_native(self, keys: list[bytes], values: list[bytes], ttl_ms: int | None, keep_ttl: bool, db: int) -> bool:
        """:meth:`mset` of distinct existing string keys whose values keep their size class
        (a client rewriting its keys) in one compiled call (native/reads.c), with the same
        results, counters and events as the Python path; False when the batch needs that
        path (a new, expired or non-string key, a value changing size class, a cache over
        its limits that must evict first): nothing was changed then."""
        policy = self.policy
        ref = policy.ref if type(policy) is ClockPolicy else None
        store = self.store
        with self._lock:
            if self.live_keys > self.max_keys or store.chunk_bytes > self.max_memory_bytes:
                return False
            now = self.now_ms()
            got = self._entries.overwrite(
                self.fp.hasher(db), self.table.view, keys, values, self.fp.max_key_bytes, now,
                TTL_NONE if ttl_ms is None else now + ttl_ms, keep_ttl, store.page_lists, store.chunk_sizes, ref,
                self._hook_ring, OP_SET, RES_STORED,
            )  # fmt: skip
            if got is None:
                return False
            used, wasted, lo, eids = got
            store.used_bytes += used
            if wasted:
                self.stats.prefetch_wasted += wasted
            if ref is None:
                policy.on_access(numpy.frombuffer(eids, dtype=numpy.int64))
            if self.encodings:
                self._note_encoding(memoryview(eids).cast("q").tolist(), None)
            self.stats.sets += len(keys)
            if self._access_hook is not null_access_hook and self._hook_ring is None:
                if self._hook_lists and len(keys) <= HOOK_LIST_EVENTS:
                    self._access_hook(OP_SET, memoryview(lo).cast("Q").tolist(), [RES_STORED] * len(keys), [len(v) for v in values])  # type: ignore[arg-type]
                    return True
                self._report(
                    OP_SET,
                    numpy.frombuffer(lo, dtype=numpy.uint64),
                    numpy.full(len(keys), RES_STORED, dtype=numpy.uint8),
                    numpy.asarray([len(v) for v in values], dtype=numpy.int64),
                    keys,
                )
        return True

    def _mset_small(
        self,
        keys: list[bytes],
        values: list[bytes],
        ttl_ms: int | None,
        keep_ttl: bool,
        prefetched: bool,
        loaded: bool,
        db: int,
        kind: int,
        encoding: bytes | None,
    ) -> None:
        """:meth:`mset` of a few distinct keys on host memory: the same steps in the same
        order, by scalar probes, reads and stores. For a lone SET, NumPy calls on arrays of
        one element (fancy indexing, flatnonzero, one-element stores) cost more than the
        write itself (measured in bench/RESULTS.md)."""
        fps = self._fps_small(keys, db)
        with self._lock:
            now = self.now_ms()
            eids = self._find_small(fps, now)
            if prefetched and max(eids) >= 0:
                keep = [i for i, eid in enumerate(eids) if eid < 0]
                if not keep:
                    return
                keys, values = [keys[i] for i in keep], [values[i] for i in keep]
                fps, eids = [fps[i] for i in keep], [eids[i] for i in keep]
            store = self.store
            chunk_size = store.chunk_size
            e_len, e_handle, e_atime, e_type, e_pre, e_expire = self.e_len, self.e_handle, self.e_atime, self.e_type, self.e_prefetched, self.e_expire
            old = [i for i, eid in enumerate(eids) if eid >= 0]
            new = [i for i, eid in enumerate(eids) if eid < 0]
            charge = sum(chunk_size(len(v)) for v in values)
            refund = sum(chunk_size(e_len.item(eids[i])) for i in old)
            self._make_room(len(new), charge - refund, {eids[i] for i in old})
            expire = TTL_NONE if ttl_ms is None else now + ttl_ms
            # Overwrites.
            for i in old:
                eid = eids[i]
                e_atime[eid] = now
                current = e_type.item(eid)
                if current != kind:  # SET over a hash makes it a string, HSET the reverse
                    self.typed_keys += (kind != TYPE_STRING) - (current != TYPE_STRING)
                    e_type[eid] = kind
                if e_pre.item(eid):
                    self.stats.prefetch_wasted += 1  # overwritten before anyone read it
                    e_pre[eid] = False
                value = values[i]
                e_handle[eid] = store.replace(e_handle.item(eid), e_len.item(eid), value)
                e_len[eid] = len(value)
                if not keep_ttl:
                    e_expire[eid] = expire
            if old:
                self.policy.on_access(numpy.asarray([eids[i] for i in old], dtype=numpy.int64))
            # New keys.
            if new:
                self._reserve(len(new))
                new_eids = self._take_entries(len(new))
                ids = new_eids.tolist()
                e_hi, e_lo = self.e_hi, self.e_lo
                for eid, i in zip(ids, new):  # before the insert: a CompactTable reads them
                    e_hi[eid], e_lo[eid] = fps[i]
                try:
                    if len(new) == 1:
                        self.table.insert_one(fps[new[0]][0], fps[new[0]][1], ids[0])
                    else:
                        n_hi = numpy.asarray([fps[i][0] for i in new], dtype=numpy.uint64)
                        n_lo = numpy.asarray([fps[i][1] for i in new], dtype=numpy.uint64)
                        self.table.insert_handles(self.xp.asarray(n_hi), self.xp.asarray(n_lo), self.xp.asarray(new_eids))
                except BaseException:
                    self._free.extend(reversed(ids))  # not lost: the next write can use them
                    raise
                e_khandle, e_klen, key_store = self.e_khandle, self.e_klen, self.key_store
                e_live, e_db = self.e_live, self.e_db
                for eid, i in zip(ids, new):
                    value, key = values[i], keys[i]
                    e_handle[eid] = store.put(value)
                    e_len[eid] = len(value)
                    e_atime[eid] = now
                    e_khandle[eid] = key_store.put(key)
                    e_klen[eid] = len(key)
                    self.key_bytes += len(key)
                    e_live[eid] = True
                    if db:
                        e_db[eid] = db  # _remove left database 0 in a freed entry
                    if kind != TYPE_STRING:
                        e_type[eid] = kind
                    if prefetched:
                        e_pre[eid] = True
                    e_expire[eid] = expire
                self.db_keys[db] += len(ids)
                if kind != TYPE_STRING:
                    self.typed_keys += len(ids)
                self.live_keys += len(ids)
                self.policy.on_insert(new_eids, numpy.asarray([fps[i][1] for i in new], dtype=numpy.uint64))
            if encoding is not None or self.encodings:
                self._note_encoding([eids[i] for i in old] + (ids if new else []), encoding)
            if prefetched:
                self.stats.prefetch_inserted += len(keys)
            else:
                self.stats.sets += len(keys)
                if self.modified is not None and not loaded:
                    pairs = numpy.asarray(fps, dtype=numpy.uint64).reshape(len(keys), 2)
                    self.modified(numpy.ascontiguousarray(pairs[:, 0]), numpy.ascontiguousarray(pairs[:, 1]))
            hook = self._access_hook
            if hook is not null_access_hook:
                op = OP_PREFETCH if prefetched else OP_SET
                lo = [fp[1] for fp in fps]
                sizes = [len(v) for v in values]
                if self._hook_lists:
                    hook(op, lo, [RES_STORED] * len(keys), sizes)  # type: ignore[arg-type]
                else:
                    self._report(
                        op,
                        numpy.asarray(lo, dtype=numpy.uint64),
                        numpy.full(len(keys), RES_STORED, dtype=numpy.uint8),
                        numpy.asarray(sizes, dtype=numpy.int64),
                        keys,
                    )

    def set(
        self,
        key: bytes,
        value: bytes,
        *,
        ttl_ms: int | None = None,
        nx: bool = False,
        xx: bool = False,
        keep_ttl: bool = False,
        get: bool = False,
        db: int = 0,
    ) -> tuple[bool, bytes | None]:
        """Redis SET: returns (stored, previous value if ``get``)."""
        with self._lock:
            old = self._peek(key, db) if (get or nx or xx) else None
            if get and old is WRONG_TYPE:
                raise WrongTypeError()
            present = old is not None if (nx or xx) else False
            if (nx and present) or (xx and not present):
                return False, old if get else None
            self.mset([(key, value)], ttl_ms=ttl_ms, keep_ttl=keep_ttl, db=db)
            return True, old if get else None

    def _peek(self, key: bytes, db: int = 0) -> bytes | None:
        """Value without counting a hit or miss or touching the policy (WRONG_TYPE for a key
        that is not a string)."""
        eid = self._find_one(key, self.now_ms(), db)
        if eid < 0:
            return None
        if self.typed_keys and self.e_type[eid]:
            # The sentinel is declared Any so that it fits wherever a value goes (see WRONG_TYPE).
            return WRONG_TYPE  # type: ignore[no-any-return]
        return self.store.get(int(self.e_handle[eid]), int(self.e_len[eid]))

    def peek_typed(self, key: bytes, db: int = 0) -> tuple[int, bytes] | None:
        """(type, stored bytes) of ``key`` without counting a read; None if absent."""
        with self._lock:
            eid = self._find_one(key, self.now_ms(), db)
            if eid < 0:
                return None
            return int(self.e_type[eid]), self.store.get(int(self.e_handle[eid]), int(self.e_len[eid]))

    def type_of(self, key: bytes, db: int = 0) -> int | None:
        """TYPE_STRING or TYPE_HASH, None if absent; counts no read."""
        with self._lock:
            eid = self._find_one(key, self.now_ms(), db)
            return None if eid < 0 else int(self.e_type[eid])

    def delete(self, keys: Sequence[bytes], db: int = 0) -> int:
        """Delete ``keys``; return how many existed."""
        if not keys:
            return 0
        unique = list(dict.fromkeys(keys))
        with self._lock:
            eids, _hi, lo = self._find_keys(unique, self.now_ms(), db)
            present = eids[eids >= 0]
            sizes = numpy.where(eids >= 0, self.e_len[numpy.maximum(eids, 0)], 0)
            self._remove(present, reason=RES_DELETED)
            self.stats.deletes += len(present)
            results = numpy.where(eids >= 0, RES_DELETED, RES_MISS).astype(numpy.uint8)
            self._report(OP_DEL, lo, results, sizes, unique)
            return len(present)

    def peek(self, key: bytes, db: int = 0) -> bytes | None:
        """The value of ``key`` without counting a hit or miss or touching the policy."""
        with self._lock:
            return self._peek(key, db)

    def atomic(self) -> AbstractContextManager[bool]:
        """The cache's lock, for a caller whose read and write must not interleave with the
        other writers (the prefetcher and read-through fills write from their own threads):
        RESP's APPEND, SETRANGE, INCRBYFLOAT... read with :meth:`peek` and write with
        :meth:`mset` inside ``with cache.atomic():``. Re-entrant, so the cache's own methods
        work inside it; hold it only for the command, as every cache call waits on it."""
        return self._lock

    def touch(self, keys: Sequence[bytes], db: int = 0) -> int:
        """How many of ``keys`` exist (a key named twice counts twice, as Redis's TOUCH
        counts); each one found counts as an access for the eviction policy, without its
        value being copied out or a hit being counted."""
        if not keys:
            return 0
        with self._lock:
            now = self.now_ms()
            eids, _hi, _lo = self._find_keys(keys, now, db)
            found = eids[eids >= 0]
            if len(found):
                self.policy.on_access(found)
                self.e_atime[found] = now  # OBJECT IDLETIME starts again, as in Redis
            return len(found)

    def expire(self, key: bytes, ttl_ms: int, when: str | None = None, db: int = 0) -> bool:
        """Set a TTL (ms). A TTL <= 0 deletes the key, as in Redis. False if absent.

        ``when`` is Redis 7's condition: ``nx`` (only if the key has no TTL), ``xx`` (only
        if it has one), ``gt``/``lt`` (only if the new expiry is later/earlier; no TTL
        counts as infinite). False when the condition does not hold.
        """
        if when not in (None, "nx", "xx", "gt", "lt"):
            raise ValueError(f"when must be nx, xx, gt, lt or None, got {when!r}")
        with self._lock:
            now = self.now_ms()
            eid = self._find_one(key, now, db)
            if eid < 0:
                return False
            current = int(self.e_expire[eid])
            new = now + ttl_ms
            if (
                (when == "nx" and current != TTL_NONE)
                or (when == "xx" and current == TTL_NONE)
                or (when == "gt" and (current == TTL_NONE or new <= current))
                or (when == "lt" and current != TTL_NONE and new >= current)
            ):
                return False
            if ttl_ms <= 0:
                self._remove(numpy.asarray([eid]), reason=RES_EXPIRED)
                return True
            self.e_expire[eid] = now + ttl_ms
            self._touched(eid)
            return True

    def _touched(self, eid: int) -> None:
        """Tell :attr:`modified` that the key of entry ``eid`` changed (its TTL)."""
        if self.modified is not None:
            self.modified(self.e_hi[eid : eid + 1].copy(), self.e_lo[eid : eid + 1].copy())

    def persist(self, key: bytes, db: int = 0) -> bool:
        with self._lock:
            eid = self._find_one(key, self.now_ms(), db)
            if eid < 0 or self.e_expire[eid] == TTL_NONE:
                return False
            self.e_expire[eid] = TTL_NONE
            self._touched(eid)
            return True

    def incrby(self, key: bytes, delta: int, db: int = 0) -> int:
        """Add ``delta`` to an integer value (missing counts as 0); keeps the TTL."""
        with self._lock:
            old = self._peek(key, db)
            if old is WRONG_TYPE:
                raise WrongTypeError()
            if old is None:
                current = 0
            else:
                text = old.decode("ascii", "replace")
                valid = text.lstrip("-").isdigit() and len(old) <= 20 and (text == "0" or not text.lstrip("-").startswith("0"))
                if not valid:
                    raise NotAnIntegerError("value is not an integer or out of range")
                current = int(text)
                if not INT64_MIN <= current <= INT64_MAX:
                    raise NotAnIntegerError("value is not an integer or out of range")
            result = current + delta
            if not INT64_MIN <= result <= INT64_MAX:
                raise NotAnIntegerError("increment or decrement would overflow")
            self.mset([(key, str(result).encode())], keep_ttl=True, db=db)
            return result

    def flush(self, db: int | None = None) -> None:
        """Remove every key (FLUSHALL), or every key of database ``db`` (FLUSHDB)."""
        with self._lock:
            if db is not None and self.databases > 1:
                self._remove(self._live_in(db), reason=RES_DELETED)
                return
            if self.modified is not None:
                self.modified(None, None)
            self.table.clear()
            if self.table.capacity > self._initial_capacity:
                self.table.rehash(self._initial_capacity)  # FLUSHALL gives the table's memory back
            _native.trim_heap()
            self.store.clear()
            self.policy.clear()
            self._alloc_entries()

    # ------------------------------------------------------------------ the keyspace
    def _unexpired(self, eids: numpy.ndarray, now: int) -> numpy.ndarray:
        """Which of these live entries have not reached their expiry."""
        expire = self.e_expire[eids]
        return cast(numpy.ndarray, (expire == TTL_NONE) | (expire > now))

    def _live_in(self, db: int) -> numpy.ndarray:
        """The live entries of database ``db``."""
        used = self._fresh
        live = self.e_live[:used] if self.databases == 1 else self.e_live[:used] & (self.e_db[:used] == db)
        return numpy.flatnonzero(live)

    def key_names(self, db: int = 0) -> list[bytes]:
        """Every key present (not expired), in entry order; O(keys), as Redis's KEYS."""
        with self._lock:
            eids = self._live_in(db)
            eids = eids[self._unexpired(eids, self.now_ms())]
            return self._names(eids)

    def scan(self, cursor: int, count: int, db: int = 0, kind: int | None = None) -> tuple[int, list[bytes]]:
        """Up to ``count`` keys from entry ``cursor`` on, and the cursor to go on from (0: done).

        The cursor is an entry ID, and a key keeps its entry from its write to its removal,
        whatever the table does meanwhile (growth, rehash, evictions of other keys): a key
        present for a whole iteration is returned exactly once, one added or removed during
        it may or may not be (Redis's SCAN guarantee). Expired keys met are removed."""
        with self._lock:
            now = self.now_ms()
            end = self._fresh
            position = max(0, cursor)
            found: list[int] = []
            while position < end and len(found) < count:
                stop = min(end, position + SCAN_WINDOW)
                window = self.e_live[position:stop]
                if self.databases > 1:
                    window = window & (self.e_db[position:stop] == db)
                live = numpy.flatnonzero(window) + position
                need = count - len(found)
                if len(live) > need:
                    found.extend(live[:need].tolist())
                    position = int(live[need - 1]) + 1
                    break
                found.extend(live.tolist())
                position = stop
            chosen = numpy.asarray(found, dtype=numpy.int64)
            keep = self._unexpired(chosen, now)
            if not keep.all():
                self._remove(chosen[~keep], reason=RES_EXPIRED)
            chosen = chosen[keep]
            if kind is not None:
                chosen = chosen[self.e_type[chosen] == kind]
            names = self._names(chosen)
            return (0 if position >= end else position), names

    def random_key(self, rng: random.Random, db: int = 0) -> bytes | None:
        with self._lock:
            eids = self._live_in(db)
            eids = eids[self._unexpired(eids, self.now_ms())]
            if not len(eids):
                return None
            return self._names(eids[rng.randrange(len(eids)) :][:1])[0]

    def idle_ms(self, key: bytes, db: int = 0) -> int | None:
        """Milliseconds since ``key`` was last read or written (OBJECT IDLETIME); None if absent."""
        with self._lock:
            now = self.now_ms()
            eid = self._find_one(key, now, db)
            return None if eid < 0 else max(0, now - int(self.e_atime[eid]))

    def memory_usage(self, key: bytes, db: int = 0) -> int | None:
        """Bytes ``key`` costs (MEMORY USAGE): its value's chunk, its name on the host and its
        entry's metadata; None if absent."""
        with self._lock:
            eid = self._find_one(key, self.now_ms(), db)
            if eid < 0:
                return None
            per_entry = sum(a.itemsize for a in self._entry_arrays())
            return self.store.chunk_size(int(self.e_len[eid])) + self.key_store.chunk_size(len(key)) + per_entry

    # ------------------------------------------------------------------ maintenance
    def sweep_expired(self, max_keys: int) -> int:
        """Remove up to ``max_keys`` expired keys; return how many were removed."""
        with self._lock:
            now = self.now_ms()
            used = self._fresh
            expire = self.e_expire[:used]
            dead = numpy.flatnonzero(self.e_live[:used] & (expire != TTL_NONE) & (expire <= now))[:max_keys]
            self._remove(dead, reason=RES_EXPIRED)
            return len(dead)

    def dbsize(self, db: int | None = None) -> int:
        """Keys held (expired ones not yet removed included, as Redis's DBSIZE counts), in
        all databases or in ``db``."""
        with self._lock:
            return self.live_keys if db is None else int(self.db_keys[db])

    def keyspace(self) -> list[tuple[int, int, int]]:
        """(database, keys, keys with a TTL) of every database holding keys (INFO keyspace)."""
        with self._lock:
            used = self._fresh
            live = self.e_live[:used]
            dbs = self.e_db[:used][live].astype(numpy.int64)
            keys = numpy.bincount(dbs, minlength=self.databases)
            expires = numpy.bincount(dbs[self.e_expire[:used][live] != TTL_NONE], minlength=self.databases)
            return [(db, int(keys[db]), int(expires[db])) for db in numpy.flatnonzero(keys).tolist()]

    def fingerprints(self, keys: Sequence[bytes], db: int = 0) -> tuple[numpy.ndarray, numpy.ndarray]:
        """The keys' fingerprints in database ``db`` (what WATCH watches)."""
        return self.fp.fingerprints(keys, db)

    def swap_databases(self, first: int, second: int) -> None:
        """SWAPDB: every key of ``first`` moves to ``second`` and back, with its value, TTL
        and eviction state: each entry gets the fingerprint of its key in the other database
        (O(keys of both)). Watchers of keys in either are told."""
        with self._lock:
            if first == second:
                return
            used = self._fresh
            e_db = self.e_db[:used]
            moved = self.e_live[:used] & ((e_db == first) | (e_db == second))
            eids = numpy.flatnonzero(moved)
            if not len(eids):
                return
            if self.modified is not None:
                self.modified(self.e_hi[eids].copy(), self.e_lo[eids].copy())
            self.table.delete(self.xp.asarray(self.e_hi[eids]), self.xp.asarray(self.e_lo[eids]))
            target = numpy.where(self.e_db[eids] == first, second, first).astype(numpy.uint16)
            hi = numpy.empty(len(eids), dtype=numpy.uint64)
            lo = numpy.empty(len(eids), dtype=numpy.uint64)
            for db in (first, second):
                rows = numpy.flatnonzero(target == db)
                if len(rows):
                    names = self._names(eids[rows])
                    hi[rows], lo[rows] = self.fp.fingerprints(names, db)
            self.e_hi[eids], self.e_lo[eids], self.e_db[eids] = hi, lo, target  # before the insert (CompactTable)
            self.table.insert_handles(self.xp.asarray(hi), self.xp.asarray(lo), self.xp.asarray(eids))
            self.db_keys[first], self.db_keys[second] = self.db_keys[second], self.db_keys[first]
            if self.modified is not None:
                self.modified(hi, lo)

    def database(self, db: int) -> Cache | Database:
        """Database ``db`` of this cache: an object with the cache's methods that act on it."""
        if db == 0:
            return self
        view = self._views.get(db)
        if view is None:
            view = self._views[db] = Database(self, db)
        return view

    def snapshot(self) -> CacheStats:
        """A copy of the statistics with the memory figures filled in."""
        with self._lock:
            s = CacheStats(**self.stats.__dict__)
            s.keys = self.live_keys
            s.value_bytes = self.store.used_bytes
            s.charged_bytes = self.store.chunk_bytes
            s.device_bytes = int(self.table.nbytes) + self.store.allocated_bytes
            # The entries handed out so far (the pages of the arrays in use) and the pages
            # of the key names.
            s.host_bytes = self._fresh * sum(a.itemsize for a in self._entry_arrays()) + self.key_store.allocated_bytes
            return s

    def carry_counters(self, previous: Cache) -> None:
        """Start this cache's counters where ``previous``'s stand (a rebuild replaces a
        cache): hits, misses and the rest stay monotonic for whoever scrapes them."""
        with previous._lock:
            carried = {name: getattr(previous.stats, name) for name in COUNTER_FIELDS}
        with self._lock:
            for name, value in carried.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)
        for caller, meter in self.origin_meters.items():
            meter.carry(previous.origin_meters[caller])

    def self_test(self) -> tuple[bool, str]:
        """A real round trip through the device table (readiness)."""
        with self._lock:
            return self.table.self_test_probe(16)


# The Cache methods that act on one database (a keyword argument ``db``).
DATABASE_METHODS = frozenset(
    (
        "mget", "lookup", "fill_from_origin", "notify_reads", "get", "contains_many", "exists", "ttl_ms", "mset",
        "set", "peek", "delete", "touch", "expire", "persist", "incrby", "key_names", "scan", "random_key",
        "idle_ms", "memory_usage", "fingerprints", "flush", "dbsize", "peek_typed", "type_of", "encoding_override",
    )
)  # fmt: skip


class Database:
    """Database ``db`` of a :class:`Cache`: the cache's per-database methods with ``db`` given,
    everything else (limits, lock, statistics) the cache's own. Database 0 is the cache itself."""

    def __init__(self, cache: Cache, db: int) -> None:
        self._cache = cache
        self.db = db

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._cache, name)
        if name in DATABASE_METHODS:
            return functools.partial(attr, db=self.db)
        return attr
