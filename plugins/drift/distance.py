# SPDX-License-Identifier: Apache-2.0
"""Normed Wasserstein distance and Jensen–Shannon distance: the large-window tests.

Why distances: above ``ks_max_samples`` reference values a p-value test flags shifts too
small to matter, so (Evidently's rule) numeric features are judged by the Wasserstein
distance divided by ``max(std(reference), wasserstein_std_floor)`` — a shift measured in
reference standard deviations; a constant reference uses the floor, so any change of the
constant is drift — and by the Jensen–Shannon distance (natural log, scipy's
``jensenshannon``) over reference-quantile bins. Both alarm only above ``ks_max_samples``
reference values (effective size for clustered features, see
:func:`agent.mlops.drift.effective_sizes`) and when the score reaches its threshold (0.1
by default). The JS
distance of categorical features (key buckets, read/write mix) is reported, not alarming:
the chi-square test decides those.
"""

from __future__ import annotations

from typing import Any

import numpy

from agent.api import (
    STATUS_INSUFFICIENT,
    DetectorResult,
    DriftResult,
    DriftSettings,
    WindowFeatures,
    combine,
    effective_sizes,
    hookimpl,
    quantile_bin_counts,
)

WASSERSTEIN = "wasserstein"
JENSEN_SHANNON = "jensen_shannon"


def normed_wasserstein(reference: numpy.ndarray, current: numpy.ndarray, std_floor: float) -> float:
    """Wasserstein-1 distance in units of the reference's standard deviation (floored)."""
    scale = max(float(numpy.std(reference)), std_floor)
    from scipy import stats  # imported at the first check: ~70 MiB an idle agent does not hold

    return float(stats.wasserstein_distance(reference, current) / scale)


def js_distance(ref_counts: numpy.ndarray, cur_counts: numpy.ndarray) -> float:
    """Jensen–Shannon distance of two count vectors (0 when either is all zero)."""
    p = numpy.asarray(ref_counts, dtype=numpy.float64)
    q = numpy.asarray(cur_counts, dtype=numpy.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0
    from scipy.spatial import distance

    value = float(distance.jensenshannon(p / p.sum(), q / q.sum()))
    return value if numpy.isfinite(value) else 0.0


class DistanceDetector:
    name = "distance"

    def check(self, reference: WindowFeatures, current: WindowFeatures, settings: DriftSettings | None = None) -> DriftResult:
        settings = settings or DriftSettings()
        entries: list[DetectorResult] = []
        for feature in sorted(set(reference.numeric) & set(current.numeric)):
            ref, cur = reference.numeric[feature], current.numeric[feature]
            sizes = (int(ref.size), int(cur.size))
            if min(sizes) < settings.ks_min_samples:
                entries.append(DetectorResult(WASSERSTEIN, feature, None, status=STATUS_INSUFFICIENT, samples=sizes))
                entries.append(DetectorResult(JENSEN_SHANNON, feature, None, status=STATUS_INSUFFICIENT, samples=sizes))
                continue
            large = effective_sizes(reference, current, feature)[0] > settings.ks_max_samples
            w = normed_wasserstein(ref, cur, settings.wasserstein_std_floor)
            entries.append(
                DetectorResult(WASSERSTEIN, feature, w, score=w, threshold=settings.wasserstein_threshold, drift=large and w >= settings.wasserstein_threshold, alarming=large, samples=sizes)
            )
            js = js_distance(*quantile_bin_counts(ref, cur, settings.psi_bins))
            entries.append(
                DetectorResult(JENSEN_SHANNON, feature, js, score=js, threshold=settings.js_threshold, drift=large and js >= settings.js_threshold, alarming=large, samples=sizes)
            )
        for feature in sorted(set(reference.categorical) & set(current.categorical)):
            ref_c, cur_c = reference.categorical[feature], current.categorical[feature]
            sizes = (int(ref_c.sum()), int(cur_c.sum()))
            if min(sizes) == 0 or ref_c.shape != cur_c.shape:
                entries.append(DetectorResult(JENSEN_SHANNON, feature, None, status=STATUS_INSUFFICIENT, samples=sizes))
                continue
            js = js_distance(ref_c, cur_c)
            entries.append(DetectorResult(JENSEN_SHANNON, feature, js, score=js, threshold=settings.js_threshold, alarming=False, samples=sizes))
        return combine(entries, settings)


@hookimpl
def predis_agent_register_drift_detectors(agent: Any, config: dict[str, Any]) -> list[DistanceDetector]:
    return [DistanceDetector()]
