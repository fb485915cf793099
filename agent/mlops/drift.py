# SPDX-License-Identifier: Apache-2.0
"""Drift results, detector settings, and the one place where per-feature tests are combined.

Why a separate module: the detectors (``plugins/drift/``) each compute statistics; whether a
*check* raises an alarm depends on all of them together (multiple-testing correction,
minimum windows), and the policy (:mod:`agent.mlops.drift_policy`) and the CLI need the same
answer. Keeping the combination here means a plugin cannot get it wrong on its own.

Correction: the default is **Bonferroni** over every p-value test of a check. The alarm is
one yes/no decision per check and the operator cares about the *family-wise* false-alarm
rate (a false alarm triggers a retrain), which Bonferroni bounds by ``alpha`` under any
dependence between features — and the features here are strongly dependent (reuse distance
and inter-reference gap describe the same reuses). Benjamini–Hochberg (``bh``) is available:
it controls the false-discovery rate, equal to the family-wise rate only under the global
null and only under independence or positive dependence, and it has more power when many
features drift at once.

No NaN leaves this module: a statistic that could not be computed is ``None`` and its
entry has status ``insufficient_data`` and ``drift=False``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from agent.mlops.features import WindowFeatures

log = logging.getLogger(__name__)

STATUS_DRIFT = "drift"
STATUS_NO_DRIFT = "no_drift"
STATUS_INSUFFICIENT = "insufficient_data"
STATUSES = (STATUS_DRIFT, STATUS_NO_DRIFT, STATUS_INSUFFICIENT)
CORRECTIONS = ("bonferroni", "bh")
# Keys of one detector entry in ``--json`` output and events, in this order.
PUBLIC_ENTRY_KEYS = ("detector", "feature", "statistic", "p_value", "score", "threshold", "drift")


@dataclass(frozen=True)
class DriftSettings:
    """Thresholds of the detectors: the ``drift`` config section (defaults = the schema's)."""

    check_interval_seconds: float = 300.0
    min_samples: int = 100
    ks_alpha: float = 0.05
    ks_max_samples: int = 1000
    ks_min_samples: int = 4
    ks_min_statistic: float = 0.1
    psi_threshold: float = 0.1
    psi_min_samples: int = 500
    psi_bins: int = 10
    psi_epsilon: float = 1e-4
    wasserstein_threshold: float = 0.1
    wasserstein_std_floor: float = 0.001
    js_threshold: float = 0.1
    chi2_alpha: float = 0.05
    chi2_min_expected: float = 5.0
    correction: str = "bonferroni"
    adwin_delta: float = 0.002
    adwin_clock: int = 32
    adwin_min_window: int = 5
    retrain_min_hit_ratio_drop: float = 0.01


@dataclass
class DetectorResult:
    """One test of one feature."""

    detector: str
    feature: str
    statistic: float | None
    p_value: float | None = None
    score: float | None = None
    threshold: float | None = None
    drift: bool = False
    status: str = STATUS_NO_DRIFT
    # False: reported only (e.g. KS above ks_max_samples, PSI below psi_min_samples).
    alarming: bool = True
    # The test's own significance level before correction (p-value tests only).
    alpha: float | None = None
    # False: the effect is below the detector's floor; the test still counts in the
    # correction's family but cannot alarm.
    effect_ok: bool = True
    samples: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.statistic = finite_or_none(self.statistic)
        self.p_value = finite_or_none(self.p_value)
        self.score = finite_or_none(self.score)
        self.threshold = finite_or_none(self.threshold)
        if self.statistic is None and self.p_value is None and self.score is None:
            self.status = STATUS_INSUFFICIENT
        if self.status == STATUS_INSUFFICIENT:
            self.drift = False
            self.alarming = False

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: data[k] for k in PUBLIC_ENTRY_KEYS}


@dataclass
class DriftResult:
    """The outcome of one check (or one detector's part of it)."""

    status: str
    detectors: list[DetectorResult] = field(default_factory=list)
    correction: str = "bonferroni"

    @property
    def drift_detected(self) -> bool:
        return self.status == STATUS_DRIFT

    @property
    def affected_features(self) -> list[str]:
        return sorted({d.feature for d in self.detectors if d.drift})

    @property
    def drifted_detectors(self) -> list[str]:
        return sorted({d.detector for d in self.detectors if d.drift})

    def public(self) -> dict[str, Any]:
        """The ``drift check --json`` object."""
        return {
            "status": self.status,
            "drift_detected": self.drift_detected,
            "detectors": [d.public() for d in self.detectors],
        }


class DriftDetector(Protocol):
    """What ``predis_agent_register_drift_detectors`` returns."""

    name: str

    def check(self, reference: WindowFeatures, current: WindowFeatures, settings: DriftSettings = ...) -> DriftResult: ...


def finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def correct(entries: list[DetectorResult], method: str) -> None:
    """Set ``drift`` and ``threshold`` of the alarming p-value entries, corrected over all of them."""
    tests = [e for e in entries if e.alarming and e.p_value is not None and e.alpha is not None]
    m = len(tests)
    if m == 0:
        return
    if method == "bh":
        ranked = sorted(tests, key=lambda e: e.p_value or 0.0)
        cutoff_rank = 0
        for rank, entry in enumerate(ranked, start=1):
            if (entry.p_value or 0.0) <= rank * (entry.alpha or 0.0) / m:
                cutoff_rank = rank
        for rank, entry in enumerate(ranked, start=1):
            entry.threshold = max(cutoff_rank, 1) * (entry.alpha or 0.0) / m
            entry.drift = rank <= cutoff_rank and entry.effect_ok
        return
    if method != "bonferroni":
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {method!r}")
    for entry in tests:
        entry.threshold = (entry.alpha or 0.0) / m
        entry.drift = (entry.p_value or 0.0) <= entry.threshold and entry.effect_ok


def combine(entries: Iterable[DetectorResult], settings: DriftSettings, insufficient: bool = False) -> DriftResult:
    """One :class:`DriftResult` from all entries of a check.

    ``insufficient``: a side has fewer than ``min_samples`` events; then nothing alarms.
    """
    items = list(entries)
    for entry in items:
        if entry.p_value is not None and entry.alpha is not None:
            entry.drift = False
        if not entry.alarming:
            entry.drift = False
    if insufficient:
        for entry in items:
            entry.drift = False
            entry.alarming = False
            entry.status = STATUS_INSUFFICIENT
        return DriftResult(STATUS_INSUFFICIENT, items, settings.correction)
    correct(items, settings.correction)
    for entry in items:
        if entry.status != STATUS_INSUFFICIENT:
            entry.status = STATUS_DRIFT if entry.drift else STATUS_NO_DRIFT
    if any(e.drift for e in items):
        status = STATUS_DRIFT
    elif any(e.status != STATUS_INSUFFICIENT for e in items):
        status = STATUS_NO_DRIFT
    else:
        status = STATUS_INSUFFICIENT
    return DriftResult(status, items, settings.correction)


def run_check(
    detectors: Iterable[DriftDetector],
    reference: WindowFeatures,
    current: WindowFeatures,
    settings: DriftSettings | None = None,
) -> DriftResult:
    """Run every detector in isolation (one raising is logged and skipped) and combine."""
    cfg = settings or DriftSettings()
    entries: list[DetectorResult] = []
    for detector in detectors:
        try:
            entries.extend(detector.check(reference, current, cfg).detectors)
        except Exception as exc:
            log.error("drift detector %s raised: %s: %s", getattr(detector, "name", detector), exc.__class__.__name__, exc)
    too_small = min(reference.events, current.events) < cfg.min_samples
    entries.sort(key=lambda e: (e.detector, e.feature))
    return combine(entries, cfg, insufficient=too_small)


def quantile_bin_counts(reference: Any, current: Any, bins: int) -> tuple[Any, Any]:
    """Counts of both samples over bins cut at the reference's quantiles.

    The outer bins are open (``-inf``, ``+inf``), so current values outside the
    reference's range still land in a bin (NannyML's "leftover" mass goes to the edge
    bins here). Repeated quantiles (discrete data) are merged, so a constant reference
    gives one bin for values equal to it and one on each side.
    """
    import numpy

    ref = numpy.asarray(reference, dtype=numpy.float64)
    cur = numpy.asarray(current, dtype=numpy.float64)
    inner = numpy.unique(numpy.quantile(ref, numpy.linspace(0.0, 1.0, bins + 1)[1:-1])) if ref.size else numpy.zeros(0)
    if ref.size and inner.size < 2:
        # Few distinct values: one bin per reference value and the gaps around them.
        values = numpy.unique(ref)
        inner = numpy.unique(numpy.concatenate([values, numpy.nextafter(values, numpy.inf)]))
    size = inner.size + 1
    ref_counts = numpy.bincount(numpy.searchsorted(inner, ref, side="right"), minlength=size)
    cur_counts = numpy.bincount(numpy.searchsorted(inner, cur, side="right"), minlength=size)
    return ref_counts, cur_counts


def effective_sizes(reference: WindowFeatures, current: WindowFeatures, feature: str) -> tuple[int, int]:
    """Sample sizes of a numeric feature that minimum-window rules should use.

    The raw count, or the window's effective size when the feature's values cluster
    (:attr:`WindowFeatures.effective`), whichever is smaller.
    """
    sizes = []
    for window in (reference, current):
        n = int(window.numeric[feature].size) if feature in window.numeric else 0
        sizes.append(min(n, int(window.effective.get(feature, n))))
    return sizes[0], sizes[1]
