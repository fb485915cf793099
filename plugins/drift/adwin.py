# SPDX-License-Identifier: Apache-2.0
"""ADWIN's cut test on the per-request hit stream (hit or prefetch hit = 1, miss = 0).

Why ADWIN: hit ratio is the quantity a prefetch model exists to raise; a change in it is
the most direct sign that the model no longer fits. ADWIN (Bifet & Gavaldà 2007; river's
defaults: ``delta=0.002``, ``clock=32``, ``min_window_length=5``) declares a change when,
for some split of the window into an older and a newer part, the means differ by more than

    eps = sqrt(2 · m · σ² · ln(2 ln(n) / δ)) + (2/3) · m · ln(2 ln(n) / δ),
    m = 1 / (n0 - L + 1) + 1 / (n1 - L + 1)

(σ² the window variance, L the minimum sub-window). Here the window is the reference hit
stream followed by the current one, checked in one vectorised pass over every
``clock``-th split point with prefix sums. This is ADWIN's test without its exponential
histogram: exact (no bucket merging) and checked once per drift check rather than per
element, which is what a periodic check needs. The statistic is the largest
``|mean_old - mean_new|``, the score that difference minus its bound (positive = cut);
whether hit ratio rose or fell is the policy's question (:func:`direction`,
:func:`agent.mlops.drift_policy.should_retrain`), not this test's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy

from agent.api import (
    STATUS_INSUFFICIENT,
    DetectorResult,
    DriftResult,
    DriftSettings,
    WindowFeatures,
    combine,
    hookimpl,
)

NAME = "adwin"
FEATURE = "hit_stream"


def adwin_cut(stream: numpy.ndarray, delta: float, clock: int, min_window: int) -> tuple[float, float, float] | None:
    """``(largest |Δmean|, its bound, margin = Δ - bound)`` over split points; None when too short."""
    x = numpy.asarray(stream, dtype=numpy.float64)
    x = x[numpy.isfinite(x)]
    n = x.shape[0]
    if n < 2 * min_window or n < 3:
        return None
    splits = numpy.arange(min_window, n - min_window + 1, max(clock, 1), dtype=numpy.int64)
    if splits.size == 0:
        return None
    prefix = numpy.concatenate([[0.0], numpy.cumsum(x)])
    n0 = splits.astype(numpy.float64)
    n1 = n - n0
    mean0 = prefix[splits] / n0
    mean1 = (prefix[n] - prefix[splits]) / n1
    diff = numpy.abs(mean0 - mean1)
    variance = float(numpy.var(x))
    m = 1.0 / (n0 - min_window + 1) + 1.0 / (n1 - min_window + 1)
    log_term = math.log(2.0 * math.log(n) / delta)
    bound = numpy.sqrt(2.0 * m * variance * log_term) + (2.0 / 3.0) * m * log_term
    margin = diff - bound
    best = int(numpy.argmax(margin))
    return float(diff[best]), float(bound[best]), float(margin[best])


class AdwinDetector:
    name = NAME

    def check(self, reference: WindowFeatures, current: WindowFeatures, settings: DriftSettings | None = None) -> DriftResult:
        settings = settings or DriftSettings()
        sizes = (int(reference.hits.size), int(current.hits.size))
        if min(sizes) < settings.adwin_min_window:
            return combine([DetectorResult(NAME, FEATURE, None, status=STATUS_INSUFFICIENT, samples=sizes)], settings)
        cut = adwin_cut(numpy.concatenate([reference.hits, current.hits]), settings.adwin_delta, settings.adwin_clock, settings.adwin_min_window)
        if cut is None:
            return combine([DetectorResult(NAME, FEATURE, None, status=STATUS_INSUFFICIENT, samples=sizes)], settings)
        diff, bound, margin = cut
        entry = DetectorResult(NAME, FEATURE, diff, score=margin, threshold=bound, drift=margin > 0, samples=sizes)
        return combine([entry], settings)


def direction(reference: WindowFeatures, current: WindowFeatures) -> float:
    """Hit-ratio change from reference to current (positive: better); 0 without hits."""
    if reference.hits.size == 0 or current.hits.size == 0:
        return 0.0
    return float(current.hits.mean() - reference.hits.mean())


@hookimpl
def predis_agent_register_drift_detectors(agent: Any, config: dict[str, Any]) -> list[AdwinDetector]:
    return [AdwinDetector()]
