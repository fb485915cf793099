# SPDX-License-Identifier: Apache-2.0
"""Population stability index over bins cut at the reference's quantiles.

Why it only alarms above ``psi_min_samples`` per side: PSI is biased upwards on small
windows — its mean under no drift is about ``(B-1)(1/n + 1/m)`` for ``B`` bins (0.198 at
n=m=100 with 10 bins, above the 0.1 threshold), so below ~500 samples per side the usual
0.1/0.25 bands mean nothing. Below that it is still reported. Empty bins are filled with
``psi_epsilon`` (1e-4, Evidently's value) on each side so the logarithm stays finite.
For clustered features (reuse distance, gap) the minimum applies to the effective sample
size (distinct re-accessed keys): 500 reuses of 50 keys are not 500 independent values,
and a Markov-chain workload showed PSI ≈ 0.2 between two seeds of the same generator.
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

NAME = "psi"


def psi(ref_counts: numpy.ndarray, cur_counts: numpy.ndarray, epsilon: float) -> float:
    """``Σ (r - c) ln(r / c)`` over bin shares, zero shares replaced by ``epsilon``."""
    r = numpy.asarray(ref_counts, dtype=numpy.float64)
    c = numpy.asarray(cur_counts, dtype=numpy.float64)
    if r.sum() <= 0 or c.sum() <= 0:
        return 0.0
    r = numpy.where(r > 0, r / r.sum(), epsilon)
    c = numpy.where(c > 0, c / c.sum(), epsilon)
    return float(numpy.sum((r - c) * numpy.log(r / c)))


class PSIDetector:
    name = NAME

    def check(self, reference: WindowFeatures, current: WindowFeatures, settings: DriftSettings | None = None) -> DriftResult:
        settings = settings or DriftSettings()
        entries: list[DetectorResult] = []
        for feature in sorted(set(reference.numeric) & set(current.numeric)):
            ref, cur = reference.numeric[feature], current.numeric[feature]
            sizes = (int(ref.size), int(cur.size))
            if min(sizes) == 0:
                entries.append(DetectorResult(NAME, feature, None, status=STATUS_INSUFFICIENT, samples=sizes))
                continue
            value = psi(*quantile_bin_counts(ref, cur, settings.psi_bins), settings.psi_epsilon)
            alarming = min(effective_sizes(reference, current, feature)) >= settings.psi_min_samples
            entries.append(
                DetectorResult(NAME, feature, value, score=value, threshold=settings.psi_threshold, drift=alarming and value >= settings.psi_threshold, alarming=alarming, samples=sizes)
            )
        return combine(entries, settings)


@hookimpl
def predis_agent_register_drift_detectors(agent: Any, config: dict[str, Any]) -> list[PSIDetector]:
    return [PSIDetector()]
