# SPDX-License-Identifier: Apache-2.0
"""Periodic drift checks of the live access stream (the running agent's side of drift).

Every ``drift.check_interval_seconds`` the monitor reads the access events recorded since
its previous check from the cache's access-log ring (its own cursor: the segment exporter
and other readers are not affected), keeps at most the newest ``drift.window_events`` of
them as the current window, computes the window's features and hands them to the
:class:`agent.mlops.drift_policy.DriftPolicy`, which compares them with the reference
(the first window with enough events, later the window the current model was trained on).

On drift the agent raises a ``drift_detected`` event: the ``predis_agent_event`` hook of
every plugin (each isolated) and the push exporters that send events. The check runs in a
worker thread, never on the event loop; the metrics ``predis_drift_*`` join the next
collection round. Without an access log (``collectors.access_log.enabled: false``) there is
nothing to check and ``/status`` says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.config import settings_of
from agent.mlops.drift import DriftResult, DriftSettings
from agent.mlops.drift_policy import DriftPolicy, Performance, performance_of
from agent.mlops.features import WindowFeatures, features_from_events
from agent.telemetry import Metric

log = logging.getLogger(__name__)


class DriftMonitor:
    """Reads the ring, checks windows, reports results; one per agent."""

    def __init__(
        self,
        ring_source: Callable[[], Any],
        detectors: Callable[[], list[Any]],
        on_drift: Callable[[DriftResult], None],
    ) -> None:
        self._ring_source = ring_source
        self._detectors = detectors
        self.policy = DriftPolicy([], DriftSettings(), listeners=[on_drift])
        self._lock = threading.Lock()
        self._ring: Any = None
        self._cursor = 0
        self.enabled = True
        self.window_events = 0
        self.checks = 0
        self.lost_events = 0
        self.last_check: float | None = None
        # When the agent's drift loop checks next (Unix time; None until it runs).
        self.next_check: float | None = None
        self.last_window_events = 0
        self.last_features: WindowFeatures | None = None
        self.state = "not checked yet"

    def configure(self, section: dict[str, Any]) -> None:
        """Apply the ``drift`` section (start-up and every reload)."""
        with self._lock:
            self.enabled = bool(section.get("enabled", True))
            self.window_events = int(section["window_events"])
        self.policy.update_settings(settings_of(DriftSettings, section))

    @property
    def interval(self) -> float:
        return float(self.policy.settings.check_interval_seconds)

    def step(self) -> DriftResult | None:
        """One check of the events since the previous one; None when there is nothing to check."""
        with self._lock:
            if not self.enabled:
                self.state = "drift.enabled is false"
                return None
            ring = self._ring_source()
            if ring is None:
                self.state = "no access log (collectors.access_log.enabled is false)"
                self._ring = None
                return None
            if ring is not self._ring:
                # A new ring (start-up, or resized by a reload): start from its current end,
                # so the first window is what happens from now on.
                self._ring = ring
                self._cursor = ring.head
                self.state = "waiting for the first window"
                return None
            head = ring.head
            start = max(self._cursor, head - self.window_events)
            got = ring.read(start, max_events=self.window_events)
            self.lost_events += got.lost
            self._cursor = got.next_sequence
            window = got.events
        self.policy.detectors = list(self._detectors())
        # Kept before the check: a drift listener compares it with the reference.
        self.last_features = features_from_events(window)
        result = self.policy.check(self.last_features)
        with self._lock:
            self.checks += 1
            self.last_check = time.time()
            self.last_window_events = int(window.shape[0])
            self.state = result.status
        return result

    def performance(self) -> Performance | None:
        """Hit ratios of the reference and the latest window (None when not measurable)."""
        reference, current = self.policy.reference, self.last_features
        if reference is None or current is None:
            return None
        return performance_of(reference.features, current)

    def samples(self) -> list[Metric]:
        return self.policy.metrics.samples()

    def status(self) -> dict[str, Any]:
        reference = self.policy.reference
        last = self.policy.last_result
        with self._lock:
            return {
                "enabled": self.enabled,
                "state": self.state,
                "checks": self.checks,
                "interval_seconds": self.interval,
                "window_events": self.window_events,
                "last_window_events": self.last_window_events,
                "last_check": self.last_check,
                "next_check": self.next_check,
                "lost_events": self.lost_events,
                "reference": None
                if reference is None
                else {"reason": reference.reason, "set_at": reference.set_at, "events": reference.features.events, "generation": reference.generation},
                "last_result": None if last is None else {"status": last.status, "affected_features": last.affected_features, "detectors": last.drifted_detectors},
            }
