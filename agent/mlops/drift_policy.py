# SPDX-License-Identifier: Apache-2.0
"""When to check for drift, against what, and whether a drift is worth a retrain.

Why this is separate from the statistics: the tests answer "do these two windows differ?";
the policy decides which two windows (the reference is the window the current model was
trained on, so it is replaced after every retrain and is never the start-up window kept
forever), how small a window may be before no decision is taken, and whether a difference
should cost a retrain. A drift with a hit ratio that held or rose is reported but does not
retrain: an improvement is not a degradation.

The policy also keeps the drift metrics (``predis_drift_*`` in :mod:`agent.telemetry`) and
calls its listeners on every drift, each in isolation (one raising is logged and the others
still run).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.mlops.drift import STATUS_DRIFT, STATUS_INSUFFICIENT, STATUSES, DriftDetector, DriftResult, DriftSettings, combine, run_check
from agent.mlops.features import WindowFeatures
from agent.telemetry import DRIFT_METRICS, Metric, sample

log = logging.getLogger(__name__)

REASON_INITIAL = "initial"
REASON_RETRAIN = "retrain"
REASON_MANUAL = "manual"
_SPECS = {spec.name: spec for spec in DRIFT_METRICS}


@dataclass(frozen=True)
class Reference:
    """The window checks compare against, and why it is the one."""

    features: WindowFeatures
    reason: str
    set_at: float
    generation: int


@dataclass(frozen=True)
class Performance:
    """Measured hit ratio of the reference and the current window (0..1)."""

    reference_hit_ratio: float
    current_hit_ratio: float

    @property
    def change(self) -> float:
        """Current minus reference: positive is an improvement."""
        return self.current_hit_ratio - self.reference_hit_ratio


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str


def performance_of(reference: WindowFeatures, current: WindowFeatures) -> Performance | None:
    """Hit ratios of both windows, or None when either has no lookups."""
    if reference.hits.size == 0 or current.hits.size == 0:
        return None
    return Performance(float(reference.hits.mean()), float(current.hits.mean()))


def should_retrain(drift: DriftResult, performance: Performance | None, settings: DriftSettings | None = None) -> RetrainDecision:
    """Retrain on a measured degradation, or on drift when nothing was measured.

    * ``insufficient_data``: never (no decision was possible).
    * hit ratio fell by at least ``retrain_min_hit_ratio_drop``: retrain, drift or not
      (the model no longer serves the workload).
    * drift with a hit ratio that held or rose: no retrain (an improvement is not a
      degradation).
    * drift without any hit-ratio measurement: retrain (nothing says the model still fits).
    """
    cfg = settings or DriftSettings()
    if drift.status == STATUS_INSUFFICIENT:
        return RetrainDecision(False, "insufficient data")
    if performance is not None and -performance.change >= cfg.retrain_min_hit_ratio_drop:
        return RetrainDecision(True, f"hit ratio fell by {-performance.change:.4f}")
    if not drift.drift_detected:
        return RetrainDecision(False, "no drift")
    if performance is None:
        return RetrainDecision(True, "drift in " + ", ".join(drift.affected_features) + "; hit ratio not measured")
    return RetrainDecision(False, f"drift without degradation (hit ratio change {performance.change:+.4f})")


class DriftMetrics:
    """Counters and gauges of drift checks, as :class:`agent.telemetry.Metric` samples."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.checks: Counter[str] = Counter({status: 0 for status in STATUSES})
        self.detected: Counter[str] = Counter()
        self.scores: dict[tuple[str, str], float] = {}
        self.duration_count = 0
        self.duration_sum = 0.0

    def observe_duration(self, seconds: float) -> None:
        with self._lock:
            self.duration_count += 1
            self.duration_sum += float(seconds)

    def record(self, result: DriftResult) -> None:
        with self._lock:
            self.checks[result.status] += 1
            for entry in result.detectors:
                # Each detector's series exists from its first check at 0, so that an alert
                # on its increase sees the first detection.
                self.detected[entry.detector] += 0
            for name in result.drifted_detectors:
                self.detected[name] += 1
            for entry in result.detectors:
                value = entry.score if entry.score is not None else entry.statistic
                if value is not None:
                    self.scores[(entry.detector, entry.feature)] = value

    def samples(self) -> list[Metric]:
        with self._lock:
            out = [sample(_SPECS["predis_drift_checks_total"], float(n), {"status": s}) for s, n in sorted(self.checks.items())]
            out += [sample(_SPECS["predis_drift_detected_total"], float(n), {"detector": d}) for d, n in sorted(self.detected.items())]
            out += [sample(_SPECS["predis_drift_score"], v, {"detector": d, "feature": f}) for (d, f), v in sorted(self.scores.items())]
            if self.duration_count:
                spec = _SPECS["predis_drift_check_duration_seconds"]
                out.append(sample(spec, self.duration_sum, {}, count=float(self.duration_count)))
        return out


class DriftPolicy:
    """Reference management and checks; thread-safe (checks may run in a worker)."""

    def __init__(
        self,
        detectors: Iterable[DriftDetector],
        settings: DriftSettings | None = None,
        listeners: Iterable[Callable[[DriftResult], None]] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.detectors = list(detectors)
        self.settings = settings or DriftSettings()
        self.listeners = list(listeners)
        self.metrics = DriftMetrics()
        self._clock = clock
        self._lock = threading.Lock()
        self._reference: Reference | None = None
        self._generation = 0
        self.last_result: DriftResult | None = None

    @property
    def reference(self) -> Reference | None:
        return self._reference

    def update_settings(self, settings: DriftSettings) -> None:
        """New thresholds (config reload, already validated by the schema)."""
        with self._lock:
            self.settings = settings

    def set_reference(self, features: WindowFeatures, reason: str = REASON_MANUAL) -> Reference:
        """Make ``features`` the reference (after a retrain: the window it was trained on)."""
        with self._lock:
            self._generation += 1
            self._reference = Reference(features, reason, self._clock(), self._generation)
            return self._reference

    def refresh_after_retrain(self, training_window: WindowFeatures) -> Reference:
        return self.set_reference(training_window, REASON_RETRAIN)

    def check(self, current: WindowFeatures) -> DriftResult:
        """Compare ``current`` with the reference; record metrics and notify on drift.

        Without a reference, the first window with at least ``min_samples`` events becomes
        it (reason ``initial``) and the check is ``insufficient_data``; later windows are
        compared with it until a retrain replaces it.
        """
        started = time.perf_counter()
        with self._lock:
            settings, reference = self.settings, self._reference
        if reference is None:
            if current.events >= settings.min_samples:
                self.set_reference(current, REASON_INITIAL)
            result = combine([], settings, insufficient=True)
        else:
            result = run_check(self.detectors, reference.features, current, settings)
        self.last_result = result
        self.metrics.record(result)
        self.metrics.observe_duration(time.perf_counter() - started)
        if result.status == STATUS_DRIFT:
            self._notify(result)
        return result

    def _notify(self, result: DriftResult) -> None:
        for listener in self.listeners:
            try:
                listener(result)
            except Exception as exc:
                log.error("drift listener %r raised: %s: %s", listener, exc.__class__.__name__, exc)
