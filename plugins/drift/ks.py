# SPDX-License-Identifier: Apache-2.0
"""Two-sample Kolmogorov–Smirnov test on every numeric feature (scipy.stats.ks_2samp).

Why KS only for small windows: its p-value becomes tiny for practically meaningless shifts
once windows hold tens of thousands of samples (0.05σ at n=10⁵ gives p≈4e-19), so, as in
Evidently, it alarms only while the reference holds at most ``ks_max_samples`` values;
above that it is reported, and Wasserstein/JS (``plugins.drift.distance``) decide. Below
``ks_min_samples`` per side KS cannot reach p ≤ 0.05 even for complete separation
(n=3 gives p=0.1), so the entry is ``insufficient_data``. The decision compares the
*p-value* with alpha (after the check-wide correction), never the D statistic with
alpha; in addition D must reach ``ks_min_statistic`` (0.1, river's KSWIN rule). Why the
floor: reuse distances and gaps of one window are not independent draws (they all share
that window's realised key popularity), so their KS p-values come out too small — at
n=1000 Zipf windows ``p <= 0.01`` happened in 2.75 % of no-drift checks instead of 1 %;
the floor keeps such dependent-sample noise from alarming while real shifts (D well
above 0.1) still do. For those clustered features the p-value is also computed with the
window's *effective* sample sizes (distinct re-accessed keys, see
:class:`~agent.mlops.features.WindowFeatures`) through the asymptotic KS distribution
(``scipy.stats.kstwo`` at ``round(n·m/(n+m))``, as ``ks_2samp(method="asymp")`` does).
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
)

NAME = "ks"
# scipy's exact distribution is used up to this many values per side ("auto" does the same).
EXACT_MAX = 10_000


def ks_test(
    reference: numpy.ndarray, current: numpy.ndarray, effective: tuple[int, int] | None = None, exact: bool = True
) -> tuple[float, float]:
    """``(D, p)`` of the two-sample KS test; exact below EXACT_MAX per side, else asymptotic.

    ``effective``: sample sizes to use for the p-value instead of the array lengths
    (asymptotic distribution then, since the exact one is defined for the real sizes).
    ``exact=False`` forces the asymptotic p-value (cheaper; used where KS only reports).
    """
    # With effective sizes the p-value is the effective one's (never smaller than the raw
    # sizes' p), so the costly exact distribution of the raw sizes would be thrown away.
    use_exact = exact and effective is None and max(reference.size, current.size) <= EXACT_MAX
    method = "exact" if use_exact else "asymp"
    from scipy import stats  # imported at the first check: ~70 MiB an idle agent does not hold

    res = stats.ks_2samp(reference, current, method=method)
    d, p = float(res.statistic), float(res.pvalue)
    if effective is not None:
        n, m = (max(int(v), 1) for v in effective)
        en = max(round(n * m / (n + m)), 1)
        p = max(p, float(stats.kstwo.sf(d, en)))
    return d, p


class KSDetector:
    name = NAME

    def check(self, reference: WindowFeatures, current: WindowFeatures, settings: DriftSettings | None = None) -> DriftResult:
        settings = settings or DriftSettings()
        entries: list[DetectorResult] = []
        for feature in sorted(set(reference.numeric) & set(current.numeric)):
            ref, cur = reference.numeric[feature], current.numeric[feature]
            sizes = (int(ref.size), int(cur.size))
            if min(sizes) < settings.ks_min_samples:
                entries.append(DetectorResult(NAME, feature, None, status=STATUS_INSUFFICIENT, samples=sizes))
                continue
            effective = None
            if feature in reference.effective and feature in current.effective:
                effective = (reference.effective[feature], current.effective[feature])
            alarming = effective_sizes(reference, current, feature)[0] <= settings.ks_max_samples
            d, p = ks_test(ref, cur, effective, exact=alarming)
            entries.append(
                DetectorResult(
                    NAME,
                    feature,
                    d,
                    p_value=p,
                    threshold=settings.ks_alpha,
                    alpha=settings.ks_alpha,
                    alarming=alarming,
                    effect_ok=d >= settings.ks_min_statistic,
                    samples=sizes,
                )
            )
        return combine(entries, settings)


@hookimpl
def predis_agent_register_drift_detectors(agent: Any, config: dict[str, Any]) -> list[KSDetector]:
    return [KSDetector()]
