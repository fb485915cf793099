# SPDX-License-Identifier: Apache-2.0
"""Replacement policies over dense entry IDs: CLOCK (approximate LRU), exact LRU and S3-FIFO.

The cache gives every live key an entry ID in ``[0, capacity)``. Policies see only
those IDs, in batches: ``on_insert`` for new keys, ``on_access`` for hits and
overwrites, ``on_remove`` when a key leaves for any reason, and ``victims(n)`` to pick
up to ``n`` IDs to evict (the cache removes them and then calls ``on_remove``).
Per-entry state lives in small NumPy arrays on the host; this bookkeeping is a few
bytes per key and never touches the device.

S3-FIFO follows Yang et al., SOSP'23: a small FIFO (10 % of entries) filters one-hit
wonders, a main FIFO with 2-bit frequency reinsertion holds the rest, and a ghost FIFO
of recently evicted fingerprints sends returning keys straight to main.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from typing import Any, Protocol

import numpy

POLICIES = ("clock", "lru", "s3fifo")
S3FIFO_SMALL_RATIO = 0.10
S3FIFO_MAX_FREQ = 3
CLOCK_SCAN_FACTOR = 4


class EvictionPolicy(Protocol):
    name: str

    def on_insert(self, ids: numpy.ndarray, fingerprints: numpy.ndarray) -> None: ...

    def on_access(self, ids: numpy.ndarray) -> None: ...

    def on_remove(self, ids: numpy.ndarray, evicted: bool) -> None: ...

    def victims(self, n: int) -> numpy.ndarray: ...

    def clear(self) -> None: ...


class ClockPolicy:
    """CLOCK: one reference bit per entry; the hand clears bits until it finds a zero."""

    name = "clock"

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.clear()

    def clear(self) -> None:
        self.ref = numpy.zeros(self.capacity, dtype=numpy.uint8)
        self.live = numpy.zeros(self.capacity, dtype=bool)
        self.hand = 0

    def on_insert(self, ids: numpy.ndarray, fingerprints: numpy.ndarray) -> None:
        self.live[ids] = True
        self.ref[ids] = 0

    def on_access(self, ids: numpy.ndarray) -> None:
        self.ref[ids] = 1

    def on_remove(self, ids: numpy.ndarray, evicted: bool) -> None:
        self.live[ids] = False
        self.ref[ids] = 0

    def victims(self, n: int) -> numpy.ndarray:
        if n <= 0 or not self.live.any():
            return numpy.empty(0, dtype=numpy.int64)
        chosen: list[numpy.ndarray] = []
        found = 0
        window = max(n * CLOCK_SCAN_FACTOR, 64)
        # Two full sweeps always suffice: the first clears every reference bit.
        budget = 2 * self.capacity + window
        while found < n and budget > 0:
            idx = (self.hand + numpy.arange(min(window, self.capacity), dtype=numpy.int64)) % self.capacity
            live = self.live[idx]
            cold = live & (self.ref[idx] == 0)
            if found:  # a sweep that wrapped around meets the entries it chose before: once each
                cold &= ~numpy.isin(idx, numpy.concatenate(chosen))
            cold_pos = numpy.flatnonzero(cold)
            if len(cold_pos) >= n - found:
                take = cold_pos[: n - found]
                stop = int(take[-1]) + 1
                passed = idx[:stop]
                self.ref[passed[self.live[passed]]] = 0
                chosen.append(idx[take])
                found += len(take)
                self.hand = int((self.hand + stop) % self.capacity)
                break
            chosen.append(idx[cold_pos])
            found += len(cold_pos)
            self.ref[idx[live]] = 0
            self.hand = int((self.hand + len(idx)) % self.capacity)
            budget -= len(idx)
        victims = numpy.concatenate(chosen) if chosen else numpy.empty(0, dtype=numpy.int64)
        return victims[:n]


class LRUPolicy:
    """Exact LRU: an ordered dict of entry IDs, least recently used first (O(1) per event)."""

    name = "lru"

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.clear()

    def clear(self) -> None:
        self.order: OrderedDict[int, None] = OrderedDict()

    def on_insert(self, ids: numpy.ndarray, fingerprints: numpy.ndarray) -> None:
        order = self.order
        for i in ids.tolist():
            order[i] = None
            order.move_to_end(i)

    def on_access(self, ids: numpy.ndarray) -> None:
        order = self.order
        for i in ids.tolist():
            if i in order:
                order.move_to_end(i)

    def on_remove(self, ids: numpy.ndarray, evicted: bool) -> None:
        order = self.order
        for i in ids.tolist():
            order.pop(i, None)

    def victims(self, n: int) -> numpy.ndarray:
        return numpy.fromiter(itertools.islice(self.order, max(0, n)), dtype=numpy.int64)


class S3FifoPolicy:
    """S3-FIFO with a ghost queue of fingerprints."""

    name = "s3fifo"

    def __init__(self, capacity: int, small_ratio: float = S3FIFO_SMALL_RATIO) -> None:
        self.capacity = int(capacity)
        self.small_target = max(1, int(self.capacity * small_ratio))
        self.clear()

    def clear(self) -> None:
        self.freq = numpy.zeros(self.capacity, dtype=numpy.uint8)
        self.gen = numpy.zeros(self.capacity, dtype=numpy.uint32)
        self.where = numpy.zeros(self.capacity, dtype=numpy.uint8)  # 0 none, 1 small, 2 main
        self.fp = numpy.zeros(self.capacity, dtype=numpy.uint64)
        self.small: deque[tuple[int, int]] = deque()
        self.main: deque[tuple[int, int]] = deque()
        self.small_len = 0
        self.main_len = 0
        self.ghost: deque[int] = deque()
        self.ghost_set: dict[int, int] = {}

    def _ghost_add(self, fp: int) -> None:
        self.ghost.append(fp)
        self.ghost_set[fp] = self.ghost_set.get(fp, 0) + 1
        while len(self.ghost) > self.capacity - self.small_target:
            old = self.ghost.popleft()
            count = self.ghost_set[old] - 1
            if count:
                self.ghost_set[old] = count
            else:
                del self.ghost_set[old]

    def on_insert(self, ids: numpy.ndarray, fingerprints: numpy.ndarray) -> None:
        for eid, fp in zip(ids.tolist(), fingerprints.tolist()):
            self.gen[eid] += 1
            self.freq[eid] = 0
            self.fp[eid] = fp
            if fp in self.ghost_set:
                self.where[eid] = 2
                self.main.append((eid, int(self.gen[eid])))
                self.main_len += 1
            else:
                self.where[eid] = 1
                self.small.append((eid, int(self.gen[eid])))
                self.small_len += 1

    def on_access(self, ids: numpy.ndarray) -> None:
        freq = self.freq[ids]
        self.freq[ids] = numpy.minimum(freq + 1, S3FIFO_MAX_FREQ)

    def on_remove(self, ids: numpy.ndarray, evicted: bool) -> None:
        for eid in ids.tolist():
            where = self.where[eid]
            if where == 1:
                self.small_len -= 1
            elif where == 2:
                self.main_len -= 1
            self.where[eid] = 0
            self.gen[eid] += 1  # queue entries for the old generation become stale

    def _live(self, item: tuple[int, int]) -> bool:
        eid, gen = item
        return self.where[eid] != 0 and int(self.gen[eid]) == gen

    def victims(self, n: int) -> numpy.ndarray:
        out: list[int] = []
        picked: set[int] = set()
        guard = 4 * (self.small_len + self.main_len) + 8 * n + 16
        while len(out) < n and (self.small or self.main) and guard > 0:
            guard -= 1
            if self.small and (self.small_len >= self.small_target or not self.main):
                item = self.small.popleft()
                if not self._live(item) or item[0] in picked:
                    continue
                eid = item[0]
                if self.freq[eid] > 1:
                    self.small_len -= 1
                    self.main_len += 1
                    self.where[eid] = 2
                    self.freq[eid] = 0
                    self.main.append(item)
                    continue
                self._ghost_add(int(self.fp[eid]))
                out.append(eid)
                picked.add(eid)
            else:
                item = self.main.popleft()
                if not self._live(item) or item[0] in picked:
                    continue
                eid = item[0]
                if self.freq[eid] > 0:
                    self.freq[eid] -= 1
                    self.main.append(item)
                    continue
                out.append(eid)
                picked.add(eid)
        return numpy.asarray(out, dtype=numpy.int64)


def make_policy(name: str, capacity: int) -> Any:
    if name == "clock":
        return ClockPolicy(capacity)
    if name == "s3fifo":
        return S3FifoPolicy(capacity)
    if name == "lru":
        return LRUPolicy(capacity)
    raise ValueError(f"unknown eviction policy {name!r}; expected one of {', '.join(POLICIES)}")
