# SPDX-License-Identifier: Apache-2.0
"""Anomalies in per-round signals: a robust z-score against a rolling median.

Each signal keeps the last ``window`` values. A new value scores
``(value - median) / scale`` with ``scale`` the MAD (times 1.4826, the normal
consistency factor), floored so that no change smaller than ``min_absolute_change``, nor
than ``min_relative_change`` of the median, can reach the threshold: a series that never
varied (MAD 0) alarms only on a change that large, never on the first wobble. A value beyond ``threshold`` in the signal's bad direction for
``consecutive`` rounds raises the anomaly; as many rounds back inside clear it. Values
keep entering the window, so a lasting new level becomes the baseline after about half a
window (the alarm is for a change, not for a level).

Counter resets and restarts: signals are built from per-round increases
(:func:`counter_step`), and a counter that went down (a restart of what counts) yields no
value that round rather than a spike. An agent restart starts every window afresh, with
``warmup`` rounds before anything can alarm.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy

MAD_TO_SIGMA = 1.4826
# A scale below this is taken as this (a signal in seconds or ratios never varies less).
MIN_SCALE = 1e-12
UP, DOWN, BOTH = "up", "down", "both"


def counter_step(previous: float | None, current: float) -> float | None:
    """What a counter grew by since ``previous``; None for the first point and after a reset."""
    if previous is None or current < previous or not math.isfinite(current):
        return None
    return current - previous


@dataclass(frozen=True)
class DetectorSettings:
    window: int = 60
    warmup: int = 10
    threshold: float = 6.0
    consecutive: int = 3
    min_absolute_change: float = 0.0
    min_relative_change: float = 0.1


class RobustDetector:
    """One signal's rolling baseline and alarm state."""

    def __init__(self, direction: str, settings: DetectorSettings) -> None:
        self.direction = direction
        self.settings = settings
        self.values: deque[float] = deque(maxlen=settings.window)
        self.active = False
        self.score = 0.0
        self.last: float | None = None
        self.baseline: float | None = None
        self._run = 0  # consecutive rounds on the other side of the current state

    def observe(self, value: float | None) -> str | None:
        """Score ``value`` (None: no measurement this round); "raised", "cleared" or None."""
        if value is None or not math.isfinite(value):
            return None
        s = self.settings
        self.last = value
        outside = False
        if len(self.values) >= s.warmup:
            data = numpy.fromiter(self.values, dtype=numpy.float64)
            median = float(numpy.median(data))
            mad = float(numpy.median(numpy.abs(data - median)))
            # The floors are the smallest change that may alarm: divided by the threshold,
            # a change that large scores exactly the threshold.
            floor = max(s.min_absolute_change, s.min_relative_change * abs(median)) / s.threshold
            scale = max(MAD_TO_SIGMA * mad, floor, MIN_SCALE)
            self.baseline = median
            self.score = (value - median) / scale
            if self.direction == UP:
                outside = self.score > s.threshold
            elif self.direction == DOWN:
                outside = self.score < -s.threshold
            else:
                outside = abs(self.score) > s.threshold
        self.values.append(value)
        if outside != self.active:
            self._run += 1
            if self._run >= s.consecutive:
                self.active, self._run = outside, 0
                return "raised" if outside else "cleared"
        else:
            self._run = 0
        return None


class FlapDetector:
    """Breaker transitions: an anomaly while at least ``min_transitions`` happened within
    the last ``window`` rounds (a breaker that opens once and closes again is not flapping)."""

    def __init__(self, window: int, min_transitions: int) -> None:
        self.counts: deque[int] = deque(maxlen=window)
        self.min_transitions = min_transitions
        self.active = False
        self.score = 0.0
        self.last: float | None = None
        self.baseline: float | None = None

    def observe(self, transitions: int) -> str | None:
        self.counts.append(transitions)
        self.last = float(transitions)
        total = sum(self.counts)
        self.score = float(total)
        now = total >= self.min_transitions
        if now != self.active:
            self.active = now
            return "raised" if now else "cleared"
        return None


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of per-round bucket counts ``(upper bound, cumulative)`` (linear
    within a bucket, like PromQL's; the last finite bound past it); None without observations."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if not math.isfinite(bound):
                return lower_bound
            width = cumulative - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width > 0 else 1.0)
        lower_bound, lower_count = bound, cumulative
    return lower_bound
