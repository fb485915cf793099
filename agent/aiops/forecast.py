# SPDX-License-Identifier: Apache-2.0
"""Time until a resource runs out, from a robust trend of its headroom.

The method is Theil–Sen: the slope is the median of the slopes between every pair of
points of the window, so up to about 29 % of the points may be outliers (a spike, a
restart that refilled the headroom) without moving it. A headroom that does not fall
(slope >= 0), a window too short, or any non-finite input gives no ETA at all: the
forecaster never answers NaN, a negative or an infinite number.
"""

from __future__ import annotations

import math
from collections import deque

import numpy


def theil_sen_slope(times: numpy.ndarray, values: numpy.ndarray) -> float | None:
    """The median pairwise slope of (times, values); None when no two times differ."""
    i, j = numpy.triu_indices(len(times), k=1)
    dt = times[j] - times[i]
    keep = dt > 0
    if not keep.any():
        return None
    return float(numpy.median((values[j] - values[i])[keep] / dt[keep]))


class EtaForecaster:
    """The headroom of one resource over the last ``window`` rounds, and its ETA."""

    def __init__(self, window: int, min_points: int) -> None:
        self.points: deque[tuple[float, float]] = deque(maxlen=window)
        self.min_points = min_points
        self.slope: float | None = None

    def observe(self, time: float, headroom: float) -> None:
        if math.isfinite(time) and math.isfinite(headroom):
            self.points.append((time, headroom))

    def reset(self) -> None:
        self.points.clear()
        self.slope = None

    def eta(self) -> float | None:
        """Seconds until the headroom reaches 0 at the current trend (0 once it has), or None."""
        self.slope = None
        if len(self.points) < self.min_points:
            return None
        data = numpy.asarray(self.points, dtype=numpy.float64)
        times, values = data[:, 0] - data[0, 0], data[:, 1]
        slope = theil_sen_slope(times, values)
        self.slope = slope
        headroom = float(values[-1])
        if headroom <= 0:
            return 0.0
        if slope is None or not math.isfinite(slope) or slope >= 0:
            return None
        eta = headroom / -slope
        return eta if math.isfinite(eta) and eta >= 0 else None
