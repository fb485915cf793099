# SPDX-License-Identifier: Apache-2.0
"""The confidence threshold a candidate must reach to be prefetched, and its adaptation.

The cache counts what became of prefetched entries: ``prefetch_used`` (a demand read hit
it first) and ``prefetch_wasted`` (removed or overwritten unread). With ``adaptive`` on,
the threshold follows the measured precision (used / inserted over the last
``adapt_every`` prefetches): below ``target_precision`` it rises, above it falls, within
``[min_threshold, max_threshold]`` — on a workload with nothing to predict the prefetcher
backs off instead of polluting the cache.
"""

from __future__ import annotations

from cache_core.prefetch.settings import PrefetchSettings


class Threshold:
    """The threshold in force (``value``), adapted from the cache's prefetch counters."""

    def __init__(self, settings: PrefetchSettings, base: tuple[int, int] = (0, 0)) -> None:
        self.settings = settings
        self.value = settings.threshold
        # (inserted, used) at the last adaptation; at first, the cache's counters as this
        # prefetcher found them (a cache outlives its prefetchers and carries its counters
        # across a rebuild), so only this prefetcher's own prefetches are judged.
        self._base = base

    def adapt(self, inserted: int, used: int) -> None:
        """Move the threshold once ``adapt_every`` prefetches were inserted since the last move."""
        s = self.settings
        base_inserted, base_used = self._base
        if inserted - base_inserted < s.adapt_every:
            return
        precision = (used - base_used) / max(1, inserted - base_inserted)
        if precision < s.target_precision:
            self.value = min(s.max_threshold, self.value * s.threshold_step)
        else:
            self.value = max(s.min_threshold, self.value / s.threshold_step)
        self._base = (inserted, used)

    def retune(self, settings: PrefetchSettings) -> None:
        """Go on under ``settings``: a new ``threshold``, or adaptation turned on or off,
        starts from the configured threshold; otherwise the adapted one is kept, within the
        new ``[min_threshold, max_threshold]`` while it adapts. The precision counted since
        the last move is kept."""
        old, self.settings = self.settings, settings
        if settings.threshold != old.threshold or settings.adaptive != old.adaptive:
            self.value = settings.threshold
        elif settings.adaptive:
            self.value = min(settings.max_threshold, max(settings.min_threshold, self.value))
