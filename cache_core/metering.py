# SPDX-License-Identifier: Apache-2.0
"""Measurements the ROI report rests on: origin reads and their latency, and the control share.

* :class:`OriginMeter` counts what one kind of caller (a demand read through the cache, or
  the prefetcher) asked of the origin: keys requested, bytes returned, calls and each call's
  duration in a fixed-bucket histogram. The cache keeps one per caller (``by="demand"`` and
  ``by="prefetch"``), so whoever rebuilds the cache carries them on with its counters.
* :class:`ControlShare` decides which keys belong to the control share: keys never
  prefetched, so that the hit ratio *without* prefetching is measured on the same traffic at
  the same time. A key belongs to it when its BLAKE2b digest (a fixed, public key and
  personalisation, so the set is stable across restarts and independent of the canary arms'
  CRC-32 buckets) falls in the first ``share`` of ``BUCKETS`` buckets.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy

from cache_core._native import Blake2b

# Upper bounds (seconds) of the origin call duration histogram: local files to remote object stores.
ORIGIN_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ORIGIN_CALLERS = ("demand", "prefetch")
BUCKETS = 10_000
# The control share's hash: a public, fixed key (membership is not a secret; choosing keys in
# it only keeps them from being prefetched) and its own personalisation.
CONTROL_HASH_KEY = b"predis-control-share"
CONTROL_HASH_PERSON = b"predis-control"
# Longest key the control hash reads (the cache refuses longer keys long before this).
CONTROL_MAX_KEY_BYTES = 1 << 20


@dataclass
class OriginMeter:
    """Origin reads by one caller: every field only grows."""

    reads: int = 0
    read_bytes: int = 0
    calls: int = 0
    seconds: float = 0.0
    # Cumulative counts per bucket of ORIGIN_LATENCY_BUCKETS (the +Inf bucket is ``calls``).
    buckets: list[int] = field(default_factory=lambda: [0] * len(ORIGIN_LATENCY_BUCKETS))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def observe(self, requested: int, values: Sequence[bytes | None], seconds: float) -> None:
        """One call that asked for ``requested`` keys and returned ``values`` in ``seconds``."""
        got = sum(len(v) for v in values if v is not None)
        with self._lock:
            self.reads += requested
            self.read_bytes += got
            self.calls += 1
            self.seconds += seconds
            for i, bound in enumerate(ORIGIN_LATENCY_BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1

    def failed(self, requested: int, seconds: float) -> None:
        """A call that raised: its keys were still asked for and its time still spent."""
        self.observe(requested, (), seconds)

    def snapshot(self) -> tuple[int, int, int, float, tuple[int, ...]]:
        """``(reads, read_bytes, calls, seconds, buckets)`` read together."""
        with self._lock:
            return self.reads, self.read_bytes, self.calls, self.seconds, tuple(self.buckets)

    def carry(self, previous: OriginMeter) -> None:
        """Add ``previous``'s counts to these (a rebuilt cache goes on from them)."""
        reads, read_bytes, calls, seconds, buckets = previous.snapshot()
        with self._lock:
            self.reads += reads
            self.read_bytes += read_bytes
            self.calls += calls
            self.seconds += seconds
            self.buckets = [a + b for a, b in zip(self.buckets, buckets)]


class ControlShare:
    """Which keys are in the never-prefetched control share (``share`` in [0, 1))."""

    def __init__(self, share: float) -> None:
        if not 0.0 <= share < 1.0:
            raise ValueError(f"the control share must be in [0, 1), got {share}")
        self.share = float(share)
        self.limit = round(self.share * BUCKETS)
        self._hasher = Blake2b(CONTROL_HASH_KEY, CONTROL_HASH_PERSON)

    def mask(self, keys: Sequence[bytes]) -> list[bool]:
        """Per key, whether it is in the control share (one compiled call for the batch)."""
        if not keys or self.limit == 0:
            return [False] * len(keys)
        digests = self._hasher.fingerprints(keys, CONTROL_MAX_KEY_BYTES)
        if isinstance(digests, int):
            raise ValueError(f"key at index {digests} cannot be in the control share (empty or longer than {CONTROL_MAX_KEY_BYTES} bytes)")
        lo = numpy.frombuffer(digests, dtype="<u8").reshape(len(keys), 2)[:, 1]
        return (lo % numpy.uint64(BUCKETS) < numpy.uint64(self.limit)).tolist()  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.mask([key])[0]
