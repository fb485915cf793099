# SPDX-License-Identifier: Apache-2.0
"""The prefetcher's bandwidth budget: ``max_keys_per_second`` and ``max_bytes_per_second``
bound what it loads from the origin, one token bucket each; candidates over the budget
are skipped and counted (``skipped_bandwidth``)."""

from __future__ import annotations

from collections.abc import Callable


class Bucket:
    """Token bucket; rate 0 means unbounded."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = float(rate)
        self.clock = clock
        self.tokens = self.rate
        self.stamp = clock()

    def take(self, n: float) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def room(self) -> int:
        if self.rate <= 0:
            return 1 << 62
        self.take(0)
        return int(self.tokens)
