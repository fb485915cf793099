# SPDX-License-Identifier: Apache-2.0
"""Chi-square test of homogeneity for categorical features (hashed key buckets, op mix).

Why homogeneity (a 2×K contingency table, scipy's ``chi2_contingency``) and not
goodness of fit: both windows are samples, the reference is not a known distribution.
Categories whose expected count is below ``chi2_min_expected`` (5, the textbook rule) are
pooled into one, so small windows spread over 64 buckets still give a valid test; with
one category on both sides the windows are identical (statistic 0, p = 1); an empty side
is ``insufficient_data``.
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
    hookimpl,
)

NAME = "chi2"


def pooled_table(ref_counts: numpy.ndarray, cur_counts: numpy.ndarray, min_expected: float) -> numpy.ndarray:
    """The 2×K table with sparse categories pooled (column order kept, pool last)."""
    table = numpy.vstack([numpy.asarray(ref_counts, dtype=numpy.float64), numpy.asarray(cur_counts, dtype=numpy.float64)])
    total = table.sum()
    if total <= 0:
        return table[:, :0]
    expected_min = table.sum(axis=1).min() * table.sum(axis=0) / total
    keep = expected_min >= min_expected
    pooled = table[:, ~keep].sum(axis=1, keepdims=True)
    out = table[:, keep]
    if pooled.sum() > 0:
        out = numpy.hstack([out, pooled])
    return out[:, out.sum(axis=0) > 0]


def chi2_test(ref_counts: numpy.ndarray, cur_counts: numpy.ndarray, min_expected: float) -> tuple[float, float] | None:
    """``(statistic, p)``, or None when a side is empty."""
    table = pooled_table(ref_counts, cur_counts, min_expected)
    if table.shape[1] == 0 or (table.sum(axis=1) == 0).any():
        return None
    if table.shape[1] == 1:
        return 0.0, 1.0  # both windows hold one and the same category
    from scipy import stats  # imported at the first check: ~70 MiB an idle agent does not hold

    res = stats.chi2_contingency(table, correction=False)
    return float(res.statistic), float(res.pvalue)


class Chi2Detector:
    name = NAME

    def check(self, reference: WindowFeatures, current: WindowFeatures, settings: DriftSettings | None = None) -> DriftResult:
        settings = settings or DriftSettings()
        entries: list[DetectorResult] = []
        for feature in sorted(set(reference.categorical) & set(current.categorical)):
            ref_c, cur_c = reference.categorical[feature], current.categorical[feature]
            sizes = (int(ref_c.sum()), int(cur_c.sum()))
            result = chi2_test(ref_c, cur_c, settings.chi2_min_expected) if ref_c.shape == cur_c.shape else None
            if result is None:
                entries.append(DetectorResult(NAME, feature, None, status=STATUS_INSUFFICIENT, samples=sizes))
                continue
            entries.append(DetectorResult(NAME, feature, result[0], p_value=result[1], threshold=settings.chi2_alpha, alpha=settings.chi2_alpha, samples=sizes))
        return combine(entries, settings)


@hookimpl
def predis_agent_register_drift_detectors(agent: Any, config: dict[str, Any]) -> list[Chi2Detector]:
    return [Chi2Detector()]
