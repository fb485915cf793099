# SPDX-License-Identifier: Apache-2.0
"""Welch's t-test on batch means: shares of per-access indicators that are autocorrelated.

Why: the share of first accesses in a window (what a scan or a flood of new keys raises)
is a mean of indicators that come in runs; a chi-square on its two counts assumes
independent accesses and, on a Markov-chain workload, alarmed in a third of no-drift
checks. Each window is cut into contiguous blocks (:func:`agent.mlops.features.batch_means`)
and the block means of the two windows are compared with Welch's t-test
(``scipy.stats.ttest_ind(equal_var=False)``), whose variance comes from the blocks
themselves and so includes the autocorrelation. Identical constant blocks give p = 1.
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

NAME = "batch_means"
# Fewer blocks per side than this leave the t-test almost no degrees of freedom.
MIN_BLOCKS = 3


def welch(reference: numpy.ndarray, current: numpy.ndarray) -> tuple[float, float]:
    """``(mean difference, p)``; p = 1 when both sides have no spread and equal means."""
    diff = float(current.mean() - reference.mean())
    if float(reference.var()) == 0.0 and float(current.var()) == 0.0:
        return diff, 1.0 if diff == 0.0 else 0.0
    from scipy import stats  # imported at the first check: ~70 MiB an idle agent does not hold

    res = stats.ttest_ind(reference, current, equal_var=False)
    p = float(res.pvalue)
    return diff, p if numpy.isfinite(p) else 1.0


class BatchMeansDetector:
    name = NAME

    def check(self, reference: WindowFeatures, current: WindowFeatures, settings: DriftSettings | None = None) -> DriftResult:
        settings = settings or DriftSettings()
        entries: list[DetectorResult] = []
        for feature in sorted(set(reference.blocks) & set(current.blocks)):
            ref, cur = reference.blocks[feature], current.blocks[feature]
            sizes = (int(ref.size), int(cur.size))
            if min(sizes) < MIN_BLOCKS:
                entries.append(DetectorResult(NAME, feature, None, status=STATUS_INSUFFICIENT, samples=sizes))
                continue
            diff, p = welch(ref, cur)
            entries.append(DetectorResult(NAME, feature, diff, p_value=p, threshold=settings.ks_alpha, alpha=settings.ks_alpha, samples=sizes))
        return combine(entries, settings)


@hookimpl
def predis_agent_register_drift_detectors(agent: Any, config: dict[str, Any]) -> list[BatchMeansDetector]:
    return [BatchMeansDetector()]
