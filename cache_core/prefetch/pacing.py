# SPDX-License-Identifier: Apache-2.0
"""Pacing: how much of a core the prefetch worker takes, and when it waits for reads.

The worker's share of a core is bounded (``max_cpu_share``): after a step that took ``t``
seconds of its thread's CPU time it rests ``t × (1 − share) / share`` (at most
``max_pause_seconds``, and never while the queue is half full), so the request path keeps
the rest of the interpreter, and the reads that queue up meanwhile make the next step's
batch larger and cheaper per key. Optionally (``min_batch_keys``,
``max_model_seconds_per_read``) the worker also gathers: it waits, within the same bound,
for more reads before a step, a fixed number or as many as pay for the model time its
steps cost beyond a budget per read (see :meth:`Pacer.gather`). While it backs off
(:mod:`cache_core.prefetch.foresight`) it gathers by the back-off budget instead. Model
cost is counted in thread CPU time (``inference_seconds``), not wall time, which would
also count the time the worker waits for the interpreter while the server runs.
"""

from __future__ import annotations

import math
import time

from cache_core.prefetch.foresight import Foresight
from cache_core.prefetch.settings import PrefetchSettings
from cache_core.prefetch.work_queue import WorkQueue

# What a debt's float rounding may add to the reads owed (10 us - 2 us is 8.000000000000001 us).
_ROUNDING = 1e-9


class Pacer:
    """The worker's rests and gathers. ``debt``: model CPU time spent beyond
    ``max_model_seconds_per_read`` per read, not yet paid for by the reads of later steps."""

    def __init__(self, settings: PrefetchSettings, foresight: Foresight) -> None:
        self.settings = settings
        self.foresight = foresight
        self.debt = 0.0
        self.charged_at = time.monotonic()

    def rest_after(self, cpu_seconds: float) -> float:
        """How long the worker rests after a step that took ``cpu_seconds`` of CPU time."""
        share = self.settings.max_cpu_share
        if share >= 1 or cpu_seconds <= 0:
            return 0.0
        return min(self.settings.max_pause_seconds, cpu_seconds * (1 - share) / share)

    def pacing(self) -> tuple[float, float, float]:
        """(model CPU budget per read, floor share, longest wait) the worker gathers by:
        ``max_model_seconds_per_read``, ``model_cpu_floor_share`` and ``max_pause_seconds``;
        while it backs off (see :meth:`~cache_core.prefetch.foresight.Foresight.judge`)
        ``backoff_model_seconds_per_read`` (or the budget, if that is lower), no floor and
        ``backoff_max_pause_seconds``."""
        s = self.settings
        if not self.foresight.backed_off:
            return s.max_model_seconds_per_read, s.model_cpu_floor_share, s.max_pause_seconds
        budget = s.backoff_model_seconds_per_read
        if s.max_model_seconds_per_read > 0:
            budget = min(budget, s.max_model_seconds_per_read) if budget > 0 else s.max_model_seconds_per_read
        return budget, 0.0, max(s.max_pause_seconds, s.backoff_max_pause_seconds)

    def charge(self, model_seconds: float, reads: int) -> None:
        """Book a step's model CPU time against what it earned: the budget per read for
        each of its ``reads`` and the floor share of the time since the last step."""
        budget, floor, _pause = self.pacing()
        now = time.monotonic()
        earned = budget * reads + floor * (now - self.charged_at)
        self.charged_at = now
        if budget > 0:
            self.debt = max(0.0, self.debt + model_seconds - earned)

    def owed(self) -> float:
        """The debt less what the floor share has earned since it was booked."""
        return max(0.0, self.debt - self.pacing()[1] * (time.monotonic() - self.charged_at))

    def gather_target(self) -> int:
        """Read keys the worker waits for before its next step (1: none): ``min_batch_keys``,
        or as many reads as it takes to pay, at the budget per read (:meth:`pacing`) each,
        for the model time the steps before spent beyond what they earned (see :meth:`charge`)."""
        s = self.settings
        need = s.min_batch_keys
        budget = self.pacing()[0]
        owed = self.owed() if budget > 0 else 0.0
        if owed > 0:
            need = max(need, math.ceil(owed / budget - _ROUNDING))
        return max(1, min(need, s.max_batch_keys))

    def gather(self, limit: float, queue: WorkQueue) -> None:
        """Reads queued up while the worker rested: it is being asked faster than it steps.
        Wait (at most ``limit`` seconds: the rest and this wait together stay within
        ``max_pause_seconds``) until :meth:`gather_target` reads are queued, so that the
        next step learns them as one batch, where a key costs a fraction of what it costs
        in a small one, and so that under load the model's CPU time per read stays within
        ``max_model_seconds_per_read``. The part of the wait that pays a debt also ends
        once ``model_cpu_floor_share`` of the time waited pays it (a moderate read rate
        keeps timely predictions); ``min_batch_keys`` is waited for in any case. A worker
        that finds nothing queued after its rest does not wait (and owes nothing): at a
        low read rate every read is still learned and predicted from at once. A queued
        hint, a queue half full and close() end the wait; a wait that runs out of time
        forgives what is owed (the bound on how late a prediction comes wins over the
        budget)."""
        s = self.settings
        need = self.gather_target()
        if need <= 1:
            return
        if limit <= 0:
            self.debt = 0.0
            return
        started = time.monotonic()
        deadline = started + limit
        floor = self.pacing()[1]
        paid_at = started + self.owed() / floor if floor > 0 and need > s.min_batch_keys else math.inf
        while True:
            now = time.monotonic()
            if now >= paid_at:
                need = s.min_batch_keys
            if need <= 1 or queue.await_keys(need, min(deadline, paid_at) - now):
                return
            if time.monotonic() >= deadline:
                self.debt = 0.0
                return
