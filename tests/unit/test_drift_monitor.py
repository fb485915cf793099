# SPDX-License-Identifier: Apache-2.0
"""agent.mlops.drift_monitor: live checks on a real access-log ring with the real detectors."""

from __future__ import annotations

from typing import Any

import numpy
import pytest

from agent.config import load_config
from agent.mlops.drift import STATUS_DRIFT, STATUS_INSUFFICIENT, STATUS_NO_DRIFT, DriftResult
from agent.mlops.drift_monitor import DriftMonitor
from cache_core.access_log import AccessLog
from cache_core.cache import OP_GET
from plugins.drift.adwin import AdwinDetector
from plugins.drift.batch_means import BatchMeansDetector
from plugins.drift.chi2 import Chi2Detector
from plugins.drift.distance import DistanceDetector
from plugins.drift.ks import KSDetector
from plugins.drift.psi import PSIDetector

DETECTORS = [KSDetector(), PSIDetector(), DistanceDetector(), Chi2Detector(), AdwinDetector(), BatchMeansDetector()]
KEYS = 5000
FP_MIX = numpy.uint64(0x9E3779B97F4A7C15)
# The schema's drift section (its defaults) with a faster, smaller window.
SECTION = {**load_config(None).section("drift"), "enabled": True, "window_events": 20_000, "check_interval_seconds": 1, "min_samples": 100}


def zipf_keys(rng: numpy.random.Generator, n: int, s: float = 1.0, offset: int = 0) -> numpy.ndarray:
    p = numpy.arange(1, KEYS + 1, dtype=numpy.float64) ** -s
    p /= p.sum()
    return rng.choice(KEYS, size=n, p=p) + offset


def log_lookups(ring: AccessLog, keys: numpy.ndarray, rng: numpy.random.Generator) -> None:
    fps = keys.astype(numpy.uint64) * FP_MIX
    results = (rng.random(keys.shape[0]) < 0.6).astype(numpy.uint8)
    sizes = numpy.full(keys.shape[0], 128, dtype=numpy.uint32)
    for i in range(0, keys.shape[0], 1000):
        ring.append(OP_GET, fps[i : i + 1000], results[i : i + 1000], sizes[i : i + 1000])


class StepClock:
    """Nanoseconds that advance by one millisecond per read: each appended batch is one
    millisecond after the previous one, however fast or loaded the machine is (the
    inter-arrival feature compares event timestamps, which a wall clock would make depend
    on the machine's speed: the same workload then drifted against itself under load)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000_000_000_000

    def __call__(self) -> int:
        self.now += 1_000_000
        return self.now


class Harness:
    def __init__(self, section: dict[str, Any] | None = None) -> None:
        self.ring: AccessLog | None = AccessLog(1 << 17, clock_ns=StepClock())
        self.drifts: list[DriftResult] = []
        self.monitor = DriftMonitor(lambda: self.ring, lambda: DETECTORS, self.drifts.append)
        self.monitor.configure({**SECTION, **(section or {})})


def test_reference_then_no_drift_then_drift_on_a_hot_set_change() -> None:
    h = Harness()
    rng = numpy.random.default_rng(7)
    assert h.monitor.step() is None  # first sight of the ring: start at its end
    ring = h.ring
    assert ring is not None
    log_lookups(ring, zipf_keys(rng, 10_000), rng)
    first = h.monitor.step()
    assert first is not None and first.status == STATUS_INSUFFICIENT
    assert h.monitor.policy.reference is not None and h.monitor.policy.reference.reason == "initial"
    log_lookups(ring, zipf_keys(rng, 10_000), rng)
    same = h.monitor.step()
    assert same is not None and same.status == STATUS_NO_DRIFT, same.public()
    # Each detector's detection counter exists at 0 before its first detection (an alert on
    # its increase then sees the first one).
    before = {m.labels["detector"]: m.value for m in h.monitor.samples() if m.name == "predis_drift_detected_total"}
    assert before and set(before.values()) == {0.0} and set(before) == {e.detector for e in same.detectors}
    log_lookups(ring, zipf_keys(rng, 10_000, offset=KEYS), rng)  # a brand-new hot set
    shifted = h.monitor.step()
    assert shifted is not None and shifted.status == STATUS_DRIFT
    assert h.drifts == [shifted]
    samples = {(m.name, tuple(sorted(m.labels.items()))): m.value for m in h.monitor.samples()}
    assert samples[("predis_drift_checks_total", (("status", "drift"),))] == 1
    assert samples[("predis_drift_checks_total", (("status", "no_drift"),))] == 1
    duration = next(m for m in h.monitor.samples() if m.name == "predis_drift_check_duration_seconds")
    assert duration.kind == "summary" and duration.count == 3 and duration.value > 0
    status = h.monitor.status()
    assert status["checks"] == 3 and status["state"] == STATUS_DRIFT and status["last_window_events"] == 10_000


def test_window_is_capped_to_the_newest_events() -> None:
    h = Harness({"window_events": 5_000})
    rng = numpy.random.default_rng(1)
    h.monitor.step()
    assert h.ring is not None
    log_lookups(h.ring, zipf_keys(rng, 30_000), rng)
    h.monitor.step()
    assert h.monitor.status()["last_window_events"] == 5_000


def test_no_events_since_the_last_check_is_insufficient_data_not_an_alarm() -> None:
    h = Harness()
    rng = numpy.random.default_rng(2)
    h.monitor.step()
    assert h.ring is not None
    log_lookups(h.ring, zipf_keys(rng, 5_000), rng)
    h.monitor.step()
    empty = h.monitor.step()
    assert empty is not None and empty.status == STATUS_INSUFFICIENT and not empty.drift_detected
    assert h.drifts == []


def test_without_a_ring_or_when_disabled_nothing_is_checked() -> None:
    h = Harness()
    h.ring = None
    assert h.monitor.step() is None
    assert "no access log" in h.monitor.status()["state"]
    h.monitor.configure({**SECTION, "enabled": False})
    assert h.monitor.step() is None and h.monitor.status()["state"] == "drift.enabled is false"


def test_a_replaced_ring_restarts_at_its_end() -> None:
    h = Harness()
    rng = numpy.random.default_rng(3)
    h.monitor.step()
    h.ring = AccessLog(1 << 16)
    log_lookups(h.ring, zipf_keys(rng, 2_000), rng)
    assert h.monitor.step() is None  # the new ring's events before this point are not a window
    log_lookups(h.ring, zipf_keys(rng, 2_000), rng)
    result = h.monitor.step()
    assert result is not None and h.monitor.status()["last_window_events"] == 2_000


def test_a_raising_drift_listener_does_not_stop_the_check(caplog: pytest.LogCaptureFixture) -> None:
    def boom(result: DriftResult) -> None:
        raise RuntimeError("listener failed")

    ring = AccessLog(1 << 16)
    monitor = DriftMonitor(lambda: ring, lambda: DETECTORS, boom)
    monitor.configure(SECTION)
    rng = numpy.random.default_rng(4)
    monitor.step()
    log_lookups(ring, zipf_keys(rng, 5_000), rng)
    monitor.step()
    log_lookups(ring, zipf_keys(rng, 5_000, offset=KEYS), rng)
    result = monitor.step()
    assert result is not None and result.status == STATUS_DRIFT
    assert any("listener failed" in r.getMessage() for r in caplog.records)
