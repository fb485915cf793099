# SPDX-License-Identifier: Apache-2.0
"""Foresight and backing off: how much of what the worker chose to prefetch was then read.

The worker backs off when its model foresees almost none of the reads
(:meth:`Foresight.judge`): it then gathers by a small budget per read whatever the queue
(:meth:`cache_core.prefetch.pacing.Pacer.pacing`), so that a model with nothing to
foresee costs little.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from cache_core.prefetch.settings import PrefetchSettings, PrefetchStats

log = logging.getLogger("cache_core.prefetch")

# Keys remembered for foresight at most (a bound, not a tuning knob: a step names at most
# depth x predict_last keys, and they expire after backoff_horizon_reads reads).
MAX_FORESIGHT = 1 << 16


class Foresight:
    """Each key the worker chose to prefetch (``pending``), with the read index after which
    a read of it no longer counts as foreseen (oldest first); the read keys its steps have
    seen (``reads``); this window's ``[reads, named, read in time]``; the last window's
    ``accuracy``; whether the worker backs off (``backed_off``)."""

    def __init__(self, settings: PrefetchSettings, stats: PrefetchStats) -> None:
        self.settings = settings
        self.stats = stats
        self.pending: OrderedDict[bytes, int] = OrderedDict()
        self.reads = 0
        self.window = [0, 0, 0]
        self.accuracy: float | None = None
        self.backed_off = False

    def score_reads(self, keys: list[bytes]) -> None:
        """Count the keys of a read batch that the worker chose to prefetch within the last
        ``backoff_horizon_reads`` reads before: foreseen, whether or not the prefetch came
        in time (so that a worker that backs off, and predicts late, still sees whether
        its model would be right). A key named at read index ``i`` counts up to read index
        ``i + horizon``, so only the batch's first ``horizon`` keys can count."""
        pending, base = self.pending, self.reads
        read = 0
        if pending:
            for position, key in enumerate(keys[: self.settings.backoff_horizon_reads]):
                until = pending.pop(key, None)
                if until is not None and base + position < until:
                    read += 1
        self.reads = base + len(keys)
        while pending:
            key, until = next(iter(pending.items()))
            if until > self.reads:
                break
            pending.popitem(last=False)
        window = self.window
        window[0] += len(keys)
        window[2] += read
        self.stats.foresight_read += read
        if len(pending) > MAX_FORESIGHT:
            for _ in range(len(pending) - MAX_FORESIGHT):
                pending.popitem(last=False)

    def name(self, wanted: list[bytes]) -> None:
        """Remember the keys a step chose (after the reads it learned), for :meth:`score_reads`."""
        pending = self.pending
        until = self.reads + self.settings.backoff_horizon_reads
        named = 0
        for key in wanted:
            if key in pending:
                pending.move_to_end(key)
            else:
                named += 1
            pending[key] = until
        self.window[1] += named
        self.stats.foresight_named += named

    def judge(self, model_name: str) -> None:
        """After ``adapt_every`` named keys or ``backoff_window_reads`` reads, whichever comes
        first: the window's accuracy (foreseen ÷ named; 0 when nothing was named), and below
        ``backoff_below_accuracy`` the worker backs off: it gathers by the back-off budget
        (:meth:`~cache_core.prefetch.pacing.Pacer.pacing`), so that a model that foresees
        nothing costs little per read; it stops backing off at the first window that does
        better. ``model_name`` names the serving model in the log line."""
        s = self.settings
        reads, named, read = self.window
        if named < s.adapt_every and reads < s.backoff_window_reads:
            return
        self.window = [0, 0, 0]
        self.accuracy = read / named if named else 0.0
        backed_off = s.backoff_below_accuracy > 0 and self.accuracy < s.backoff_below_accuracy
        if backed_off != self.backed_off:
            self.backed_off = backed_off
            if backed_off:
                self.stats.backoffs += 1
            log.info(
                "prefetch: %s foresaw %.1f %% of %d keys it named over %d reads; %s",
                model_name,
                100 * self.accuracy,
                named,
                reads,
                "backing off" if backed_off else "no longer backing off",
            )
