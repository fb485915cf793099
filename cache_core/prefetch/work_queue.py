# SPDX-License-Identifier: Apache-2.0
"""The worker's queue: what the request path hands the prefetch worker.

In the agent (``sync=False``) ``observe`` only appends to a bounded queue (oldest batches
dropped and counted when the worker falls behind) and a worker thread does the rest, so a
request never waits for the model or the origin. Batches queued behind each other are
joined into one step (up to ``max_batch_keys``, :meth:`WorkQueue.coalesce`): under load
the model learns on its batched array paths and predicts from the newest keys. Replay uses
``sync=True``: each step runs inline, deterministic, without a queue. ``hint(keys)``
(``PREDIS.HINT``) queues keys a client says it will read, loaded like confident
candidates.

The queue also holds the events that wake the worker and end its waits: ``wake`` (a
batch queued), ``rouse`` (ends a rest early: a queue half full, close()) and ``gathered``
(ends a gather: the read keys it waits for queued, a hint, a queue half full, close()).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from cache_core.prefetch.settings import PrefetchSettings, PrefetchStats

Batch = tuple[str, list[bytes], list[bool]]  # ("access" or "hint", keys, hits)


class WorkQueue:
    """The bounded queue of read batches and hints, and the worker's events.

    Read keys queued are counted by counters each written by one side only (no lock on the
    request path): the producer's keys in (and dropped), the worker's keys taken. The agent
    has one producer, the event loop; were there more, the count would only be approximate
    (it decides when a gather ends, nothing is lost by it).
    """

    def __init__(self, settings: PrefetchSettings, stats: PrefetchStats) -> None:
        self.settings = settings
        self.stats = stats
        self.batches: deque[Batch] = deque()
        self.wake = threading.Event()
        self.rouse = threading.Event()
        self.gathered = threading.Event()
        # Read keys a gather waits for (set by the worker while it waits, 0 otherwise).
        self.gather_keys = 0
        self.keys_in = 0
        self.keys_dropped = 0
        self.keys_taken = 0
        # Hints queued and taken (a queued hint ends a gather: a client waits on it).
        self.hints_in = 0
        self.hints_taken = 0
        self.gathering = False  # the worker waits for reads to gather
        self.stopped = False

    # -- the producer (request path) ----------------------------------------------------
    def put(self, kind: str, keys: list[bytes], hits: list[bool]) -> None:
        queue, s = self.batches, self.settings
        queue.append((kind, keys, hits))
        self.keys_in += len(keys)
        if self.half_full():
            # (Each set takes a lock and notifies: only when not set yet.)
            if not self.rouse.is_set():
                self.rouse.set()
            if not self.gathered.is_set():
                self.gathered.set()
        if len(queue) > s.queue_max_batches:
            self.drop_oldest()
        if kind == "hint":
            self.hints_in += 1
            self.gathered.set()
        elif self.gather_keys and not self.gathered.is_set() and self.queued_keys() >= self.gather_keys:
            self.gathered.set()
        # The worker clears the event before it drains the queue, so a set event means this
        # batch will be seen; skipping the set (a lock and a notify) saves the request path
        # a little on every read.
        if not self.wake.is_set():
            self.wake.set()

    def drop_oldest(self) -> None:
        """Drop the oldest batch (counted in ``dropped_batches``)."""
        try:
            gone_kind, gone, _hits = self.batches.popleft()
        except IndexError:
            return
        self.stats.dropped_batches += 1
        self.keys_dropped += len(gone)
        if gone_kind == "hint":
            self.hints_in -= 1

    def trim(self) -> None:
        """Drop the oldest batches beyond ``queue_max_batches`` (after the bound was lowered)."""
        while len(self.batches) > self.settings.queue_max_batches:
            self.drop_oldest()

    # -- the worker ---------------------------------------------------------------------
    def take(self) -> Batch | None:
        """The oldest batch, or None when the queue is empty."""
        try:
            batch = self.batches.popleft()
        except IndexError:
            return None
        self.keys_taken += len(batch[1])
        if batch[0] == "hint":
            self.hints_taken += 1
        return batch

    def coalesce(self, keys: list[bytes], hits: list[bool]) -> tuple[list[bytes], list[bool]]:
        """Join the read batches queued behind this one (up to ``max_batch_keys`` keys).

        A worker that fell behind then learns from all of them in one batched step (the
        array paths: a fraction of the per-key cost) and predicts from the newest keys,
        which is what is worth prefetching by now.
        """
        queue, limit = self.batches, self.settings.max_batch_keys
        if not queue or len(keys) >= limit or queue[0][0] != "access":
            return keys, hits
        # Extended in place (the batches are the worker's own copies): joining n batches
        # costs O(n), not the O(n^2) of concatenating one list after the other.
        keys, hits = list(keys), list(hits)
        aligned = len(hits) == len(keys)
        joined = 0
        while queue and len(keys) < limit and queue[0][0] == "access":
            try:
                _kind, more, more_hits = queue.popleft()
                self.keys_taken += len(more)
            except IndexError:
                break
            keys.extend(more)
            aligned = aligned and len(more_hits) == len(more)
            if aligned:
                hits.extend(more_hits)
            joined += 1
        self.stats.coalesced_batches += joined
        return keys, (hits if aligned else [])

    def queued_keys(self) -> int:
        """Read keys waiting for the worker (hints included)."""
        return self.keys_in - self.keys_dropped - self.keys_taken

    def half_full(self) -> bool:
        return 2 * len(self.batches) >= self.settings.queue_max_batches

    def await_keys(self, need: int, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``need`` read keys queued; False when the time ran out
        first (a hint, a queue half full and close() end the wait too)."""
        self.gathered.clear()
        self.gather_keys = need
        try:
            if self.stopped or self.queued_keys() >= need or self.half_full() or self.hints_in > self.hints_taken:
                return True
            started = time.monotonic()
            self.gathering = True
            try:
                return self.gathered.wait(max(0.0, seconds))
            finally:
                self.gathering = False
                self.stats.gather_seconds += time.monotonic() - started
        finally:
            self.gather_keys = 0

    def rest(self, seconds: float) -> None:
        """Rest ``seconds``, or until a queue half full or close() rouses the worker (a rest
        must not cost batches that the bounded queue would drop)."""
        if not self.half_full():
            self.rouse.clear()
            if not self.stopped:
                self.rouse.wait(seconds)

    def stop(self) -> None:
        """End every wait of the worker's, for good."""
        self.stopped = True
        self.rouse.set()
        self.gathered.set()
        self.wake.set()
