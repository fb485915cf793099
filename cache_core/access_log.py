# SPDX-License-Identifier: Apache-2.0
"""The access log: a bounded ring of access events, appended a whole batch at a time.

Every cache operation reports one call per batch to its access hook
(:class:`~cache_core.cache.AccessHook`); :attr:`AccessLog.hook` is such a hook. Events
are rows of the NumPy structured type :data:`EVENT_DTYPE`; the ring keeps them column by
column (one array per field, capacity a power of two, so a position is
``sequence & mask``) and :meth:`AccessLog.read` returns structured rows. A batch is written
with one or two slice assignments per column (two when it wraps), so the cost per event is
memory traffic, not Python work.

Concurrency: producers (the RESP loop, the executor, prefetch loads) and consumers (the
production data collector, drift features) may run in different threads. One short lock
covers reserving the range *and* copying the batch in, and readers copy out under the
same lock, so a reader never sees a half-written batch. The lock is held for a vectorised
copy only, never for I/O. The lock, the head and the row writes of small batches are in
cache_core/native/ring.c, so a lone GET logs its event in one compiled call.

Bounded, never silent: when producers outrun a reader by more than the capacity, the
oldest events are overwritten; :meth:`read` tells each reader how many it lost, so a
consumer can count them as dropped (every event is either read or counted).

Privacy: the log stores the key's 64-bit keyed fingerprint (from
:class:`~cache_core.keys.Fingerprinter`), not the key; raw keys are kept (in a parallel
ring) only when built with ``store_raw_keys=True``, and only its hook asks the cache for
them (``hook.wants_keys``). Sampling is by key: a key is
either always or never logged (a fixed share of the fingerprint space), so the sampled
stream keeps each sampled key's whole reuse pattern, which the drift features and the
prefetch models need; a per-event coin flip would cut reuse distances apart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy

from cache_core import _native

EVENT_DTYPE = numpy.dtype(
    [
        ("ts_ns", "<i8"),  # time.time_ns() of the batch
        ("fp", "<u8"),  # 64-bit keyed fingerprint of the key (never the key)
        ("op", "u1"),  # cache_core.cache.OP_*
        ("result", "u1"),  # cache_core.cache.RES_*
        ("tenant", "<u2"),  # tenant index (0: the default tenant)
        ("size", "<u4"),  # value bytes (0 for a miss)
    ]
)
# Its field names, in order (NumPy types ``names`` as optional: a dtype without fields has none).
_FIELDS: tuple[str, ...] = EVENT_DTYPE.names or ()
# Sampling compares the top bits of a mixed fingerprint with rate * 2**SAMPLE_BITS.
SAMPLE_BITS = 32
_SAMPLE_MIX = numpy.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads any fingerprint bit pattern
MAX_SIZE = numpy.iinfo(numpy.uint32).max
# Batches up to this many events are written row by row by the compiled writer (see
# AccessLog._append_scalar): below it, a row at a time costs less than the ten or so NumPy
# calls a vectorised batch of any size takes (bench/RESULTS.md).
SCALAR_APPEND_MAX = 32


@dataclass
class ReadResult:
    """What one :meth:`AccessLog.read` returned."""

    events: numpy.ndarray  # EVENT_DTYPE rows, oldest first
    next_sequence: int  # pass it to the next read
    lost: int  # events overwritten before this reader got to them
    keys: list[bytes | None] | None = None  # the raw key of each event, only with store_raw_keys


class AccessLog:
    """A ring of :data:`EVENT_DTYPE` events with per-reader cursors."""

    def __init__(
        self, capacity: int, *, sample_rate: float = 1.0, store_raw_keys: bool = False, clock_ns: Any = time.time_ns
    ) -> None:
        capacity = int(capacity)
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two >= 1, got {capacity}")
        if not 0.0 <= float(sample_rate) <= 1.0:
            raise ValueError(f"sample_rate must be within [0, 1], got {sample_rate}")
        self.capacity = capacity
        self.mask = capacity - 1
        self.sample_rate = float(sample_rate)
        self._threshold = numpy.uint64(min(int(self.sample_rate * (1 << SAMPLE_BITS)), 1 << SAMPLE_BITS))
        self._clock_ns = clock_ns
        # One array per EVENT_DTYPE field: a batch is then six contiguous copies, cheaper
        # than writing the fields of a structured array, strided (bench/bench_access_log.py,
        # bench/RESULTS.md). Readers get structured rows.
        self._columns = {name: numpy.zeros(capacity, dtype=EVENT_DTYPE[name]) for name in _FIELDS}
        # The compiled ring state (cache_core/native/ring.c): the columns' buffers, the head,
        # the count of events offered and the lock that covers writes and reads.
        self._ring = _native.EventColumns(*(self._columns[name] for name in _FIELDS))
        # Raw keys only when asked for: a parallel ring of bytes objects (None where the
        # cache had no key to give, as for evictions, which it knows by fingerprint only).
        self.store_raw_keys = bool(store_raw_keys)
        self._keys: numpy.ndarray | None = numpy.full(capacity, None, dtype=object) if store_raw_keys else None

        # A few events with every key logged and the real clock: one compiled call (clock,
        # lock, rows, head) from the hook; this runs once per lone GET or SET.
        log = self._ring.log
        one_call = not store_raw_keys and self.sample_rate >= 1.0 and clock_ns is time.time_ns

        def hook(op: int, fps: numpy.ndarray, results: numpy.ndarray, sizes: numpy.ndarray, keys: Sequence[bytes | None] | None = None) -> None:
            if one_call and 0 < len(fps) <= SCALAR_APPEND_MAX:
                log(op, fps, results, sizes)
            else:
                self.append(op, fps, results, sizes, keys=keys)

        hook.wants_keys = self.store_raw_keys  # type: ignore[attr-defined]
        # The cache may pass a few events as lists of ints rather than arrays (cheaper to
        # build for one GET than three one-element arrays); append takes either.
        hook.accepts_lists = True  # type: ignore[attr-defined]
        # Where every event is logged as it comes (no sampling, no raw keys, the real
        # clock), the cache's compiled reads and writes log straight into the ring.
        hook.ring = self._ring if one_call else None  # type: ignore[attr-defined]
        self.hook = hook
        self.sampled_out = 0  # events not logged because of sampling

    @property
    def head(self) -> int:
        """Sequence number the next event will get (= events ever logged)."""
        return cast(int, self._ring.head)

    @property
    def offered(self) -> int:
        """Events reported by the cache, before sampling."""
        return cast(int, self._ring.offered)

    def _keep(self, fps: numpy.ndarray) -> numpy.ndarray | None:
        """Mask of fingerprints that are sampled in; None when every key is."""
        if self.sample_rate >= 1.0:
            return None
        mixed = numpy.multiply(fps, _SAMPLE_MIX) >> numpy.uint64(64 - SAMPLE_BITS)
        return cast(numpy.ndarray, mixed < self._threshold)

    def append(
        self,
        op: int,
        fps: numpy.ndarray,
        results: numpy.ndarray,
        sizes: numpy.ndarray,
        tenant: int = 0,
        keys: Sequence[bytes | None] | None = None,
    ) -> int:
        """Log one batch; return how many of its events were kept after sampling.

        ``keys`` (aligned with ``fps``) is kept only when the log stores raw keys.
        """
        n = len(fps)
        if n == 0:
            return 0
        if n <= SCALAR_APPEND_MAX and self._keys is None and self.sample_rate >= 1.0:
            return self._append_scalar(op, fps, results, sizes, tenant, n)
        fps = numpy.asarray(fps, dtype=numpy.uint64)
        results = numpy.asarray(results, dtype=numpy.uint8)
        sizes = numpy.minimum(numpy.asarray(sizes, dtype=numpy.int64), MAX_SIZE)
        key_array: numpy.ndarray | None = None
        if self._keys is not None:
            key_array = numpy.full(n, None, dtype=object)
            if keys is not None:
                key_array[:] = list(keys)
        keep = self._keep(fps)
        if keep is not None:
            fps, results, sizes = fps[keep], results[keep], sizes[keep]
            key_array = key_array[keep] if key_array is not None else None
        k = int(fps.shape[0])
        now = int(self._clock_ns())
        ring = self._ring
        with ring:
            ring.offered += n
            self.sampled_out += n - k
            if k == 0:
                return 0
            if k > self.capacity:
                # Only the newest `capacity` events can be held; the rest are overwritten at once.
                skip = k - self.capacity
                fps, results, sizes = fps[skip:], results[skip:], sizes[skip:]
                key_array = key_array[skip:] if key_array is not None else None
                ring.head += skip
                k = self.capacity
            start = ring.head & self.mask
            first = min(k, self.capacity - start)
            for lo, hi, dst in ((0, first, start), (first, k, 0)):
                if hi <= lo:
                    continue
                where = slice(dst, dst + hi - lo)
                columns = self._columns
                columns["ts_ns"][where] = now
                columns["fp"][where] = fps[lo:hi]
                columns["op"][where] = op
                columns["result"][where] = results[lo:hi]
                columns["tenant"][where] = tenant
                columns["size"][where] = sizes[lo:hi]
                if self._keys is not None and key_array is not None:
                    self._keys[dst : dst + hi - lo] = key_array[lo:hi]
            ring.head += k
        return k

    def _append_scalar(self, op: int, fps: Any, results: Any, sizes: Any, tenant: int, n: int) -> int:
        """A few events, row by row in one compiled call (cache_core/native/ring.c):
        cheaper than a dozen NumPy calls on arrays of one."""
        now = int(self._clock_ns())
        ring = self._ring
        with ring:
            head = ring.head
            ring.rows(head, now, op, fps, results, sizes, tenant)
            ring.head = head + n
            ring.offered += n
        return n

    def read(self, since: int, max_events: int | None = None) -> ReadResult:
        """Events with sequence ``>= since`` (oldest first), at most ``max_events``.

        If some of them were already overwritten, ``lost`` says how many and the read
        starts at the oldest event still held.
        """
        with self._ring:
            head = self._ring.head
            oldest = max(0, head - self.capacity)
            since = max(0, int(since))
            lost = max(0, oldest - since)
            start = max(since, oldest)
            count = head - start
            if max_events is not None:
                count = min(count, int(max_events))
            if count <= 0:
                return ReadResult(numpy.empty(0, dtype=EVENT_DTYPE), max(start, since), lost)
            pos = start & self.mask
            first = min(count, self.capacity - pos)
            keys: list[bytes | None] | None = None
            events = numpy.empty(count, dtype=EVENT_DTYPE)
            for name, column in self._columns.items():
                events[name][:first] = column[pos : pos + first]
                events[name][first:] = column[: count - first]
            if self._keys is not None:
                keys = self._keys[pos : pos + first].tolist() + self._keys[: count - first].tolist()
            return ReadResult(events, start + count, lost, keys)
