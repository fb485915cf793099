# SPDX-License-Identifier: Apache-2.0
"""The AIOps step of each collection round (see :mod:`agent.aiops`).

:meth:`AiopsService.observe` runs in the collection thread after the round's samples are
gathered; it reads only those samples (plus one ``statvfs`` and one directory count per
spooling or dead-lettering sink), so its cost is a few medians over short windows.

Resources and their headroom (what is left before each runs out):

==============  ===================================================================
gpu_memory      predis_gpu_memory_total_bytes - predis_gpu_memory_used_bytes (the
                fullest GPU)
memory_budget   predis_cache_max_memory_bytes - predis_cache_charged_bytes
spool           per spooling sink, the smaller of agent.sinks.queue_max_bytes - queued
                bytes and the spool filesystem's free bytes above spool_min_free_bytes
dead_letter     per sink with a dead-letter directory, dead_letter_max_files - files
outage_buffer   predis_agent_sink_outage_budget_seconds (seconds of outage left)
==============  ===================================================================

Signals watched for anomalies (per round; ``direction`` is the bad one):
hit_ratio (down), latency_p50 and latency_p99 of the RESP commands (up),
origin_error_rate (up), ops_per_second (either), breaker_transitions (flapping).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from agent.aiops.anomaly import BOTH, DOWN, UP, DetectorSettings, FlapDetector, RobustDetector, counter_step, histogram_quantile
from agent.aiops.audit import AuditLog
from agent.aiops.forecast import EtaForecaster
from agent.aiops.remediation import RemediationEngine, RemediationSettings
from agent.telemetry import Metric

log = logging.getLogger(__name__)

RESOURCES = ("gpu_memory", "memory_budget", "spool", "dead_letter", "outage_buffer")
# The smallest changes that may alarm (both floors apply): a hit ratio or error rate moving by
# 5 points, a latency quantile rising by half and by half a millisecond, the command rate
# moving by half and by 10 commands per second (an idle cache's first client is no anomaly).
RATIO_CHANGE = 0.05
LATENCY_CHANGE_SECONDS = 0.0005
OPS_CHANGE = 10.0
RELATIVE_CHANGE = 0.5
# signal -> (bad direction, floor of a change that counts: absolute, relative to the median)
SIGNALS: dict[str, tuple[str, float, float]] = {
    "hit_ratio": (DOWN, RATIO_CHANGE, 0.0),
    "latency_p50": (UP, LATENCY_CHANGE_SECONDS, RELATIVE_CHANGE),
    "latency_p99": (UP, LATENCY_CHANGE_SECONDS, RELATIVE_CHANGE),
    "origin_error_rate": (UP, RATIO_CHANGE, 0.0),
    "ops_per_second": (BOTH, OPS_CHANGE, RELATIVE_CHANGE),
}
FLAPPING = "breaker_transitions"
MEDIAN, P99 = 0.5, 0.99
ANOMALY_SIGNALS = (*SIGNALS, FLAPPING)


def _values(samples: dict[str, list[Metric]], name: str) -> list[Metric]:
    return samples.get(name, [])


def _total(samples: dict[str, list[Metric]], name: str) -> float | None:
    found = samples.get(name)
    return None if not found else float(sum(m.value for m in found))


class AiopsService:
    def __init__(
        self,
        emit: Callable[[str, dict[str, Any]], None],
        telemetry: Any,
        sinks: Callable[[], dict[str, Any]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._emit = emit
        self.telemetry = telemetry
        self._sinks = sinks
        self._clock = clock
        self._lock = threading.Lock()
        self.section: dict[str, Any] = {}
        self.forecasters: dict[str, EtaForecaster] = {}
        self.etas: dict[str, float | None] = {}
        self.headroom: dict[str, float] = {}
        self.below: set[str] = set()
        self.detectors: dict[str, Any] = {}
        self.events: dict[str, int] = defaultdict(int)
        self._counters: dict[str, float] = {}
        self._buckets: dict[str, list[tuple[float, float]]] = {}
        self._breakers: dict[str, str] = {}
        self._last_time: float | None = None
        self.rounds = 0
        self._failing = False
        self.last_seconds = 0.0
        self.total_seconds = 0.0
        self.engine = RemediationEngine(emit, self._count_action, clock)

    # -- configuration --------------------------------------------------------------------
    def configure(self, section: dict[str, Any], audit: AuditLog) -> None:
        with self._lock:
            old = self.section
            self.section = section
            forecast, anomaly = section["forecast"], section["anomaly"]
            if old.get("forecast") != forecast:
                self.forecasters = {r: EtaForecaster(int(forecast["window_rounds"]), int(forecast["min_rounds"])) for r in RESOURCES}
                self.etas, self.below = {}, set()
            if old.get("anomaly") != anomaly:
                self.detectors = {}
                for name, (direction, absolute, relative) in SIGNALS.items():
                    settings = DetectorSettings(
                        window=int(anomaly["window_rounds"]),
                        warmup=int(anomaly["warmup_rounds"]),
                        threshold=float(anomaly["threshold"]),
                        consecutive=int(anomaly["consecutive_rounds"]),
                        min_absolute_change=absolute,
                        min_relative_change=relative,
                    )
                    self.detectors[name] = RobustDetector(direction, settings)
                self.detectors[FLAPPING] = FlapDetector(int(anomaly["flap_window_rounds"]), int(anomaly["flap_min_transitions"]))
            self.engine.configure(RemediationSettings.from_section(section["remediation"]), audit)
        for resource in RESOURCES:
            self._publish_eta(resource, None)

    @property
    def enabled(self) -> bool:
        return bool(self.section.get("enabled", False))

    # -- one round -------------------------------------------------------------------------
    def observe(self, now: float, batch: list[Metric]) -> None:
        """The AIOps step of one collection round (never raises: a failure is logged)."""
        if not self.enabled:
            return
        started = time.thread_time()
        try:
            with self._lock:
                samples: dict[str, list[Metric]] = defaultdict(list)
                for m in batch:
                    samples[m.name].append(m)
                conditions: dict[str, dict[str, Any]] = {}
                self._forecast(now, samples, conditions)
                self._anomalies(now, samples, conditions)
                self.rounds += 1
            self.engine.step(conditions)
            self._failing = False
        except Exception:
            if not self._failing:  # once per run of failing rounds, not every round
                log.exception("aiops: the round's step failed; the next rounds try again")
            self._failing = True
        spent = time.thread_time() - started
        self.last_seconds = spent
        self.total_seconds += spent
        self.telemetry["predis_aiops_step_cpu_seconds_total"].inc(spent)

    # -- forecasts ---------------------------------------------------------------------------
    def _headrooms(self, samples: dict[str, list[Metric]]) -> dict[str, float]:
        out: dict[str, float] = {}
        totals = {tuple(sorted(m.labels.items())): m.value for m in _values(samples, "predis_gpu_memory_total_bytes")}
        gpu = [totals[key] - m.value for m in _values(samples, "predis_gpu_memory_used_bytes") if (key := tuple(sorted(m.labels.items()))) in totals and totals[key] > 0]
        if gpu:
            out["gpu_memory"] = min(gpu)
        limit, charged = _total(samples, "predis_cache_max_memory_bytes"), _total(samples, "predis_cache_charged_bytes")
        if limit and charged is not None:
            out["memory_budget"] = limit - charged
        queued = {m.labels.get("sink"): m.value for m in _values(samples, "predis_agent_sink_queue_bytes")}
        spool: list[float] = []
        letters: list[float] = []
        for name, sink in list(self._sinks().items()):
            s = sink.settings
            if s.spool_dir and name in queued:
                room = float(s.max_bytes - queued[name])
                try:
                    st = os.statvfs(s.spool_dir)
                    room = min(room, float(st.f_bavail * st.f_frsize - s.spool_min_free_bytes))
                except OSError:
                    pass
                spool.append(room)
            if s.dead_letter_dir and s.dead_letter_max_files > 0:
                try:
                    with os.scandir(os.path.join(s.dead_letter_dir, name)) as entries:
                        files = sum(1 for e in entries if e.name.endswith(".json"))
                except OSError:
                    files = 0
                letters.append(float(s.dead_letter_max_files - files))
        if spool:
            out["spool"] = min(spool)
        if letters:
            out["dead_letter"] = min(letters)
        budgets = [m.value for m in _values(samples, "predis_agent_sink_outage_budget_seconds") if math.isfinite(m.value)]
        if budgets:
            out["outage_buffer"] = min(budgets)
        return out

    def _forecast(self, now: float, samples: dict[str, list[Metric]], conditions: dict[str, dict[str, Any]]) -> None:
        horizons = self.section["forecast"]["horizon_seconds"]
        self.headroom = self._headrooms(samples)
        for resource in RESOURCES:
            forecaster = self.forecasters[resource]
            headroom = self.headroom.get(resource)
            if headroom is None:
                forecaster.reset()
                eta = None
            else:
                forecaster.observe(now, headroom)
                eta = forecaster.eta()
            self.etas[resource] = eta
            self._publish_eta(resource, eta)
            horizon = float(horizons[resource])
            evidence = {"resource": resource, "eta_seconds": eta, "horizon_seconds": horizon, "headroom": headroom, "slope_per_second": forecaster.slope}
            if eta is not None and eta < horizon:
                conditions[f"eta:{resource}"] = evidence
                if resource not in self.below:
                    self.below.add(resource)
                    self.events["aiops_eta_below_horizon"] += 1
                    log.warning("aiops: %s runs out in %.0fs at the current trend (horizon %gs)", resource, eta, horizon)
                    self._emit("aiops_eta_below_horizon", evidence)
            elif resource in self.below:
                self.below.discard(resource)
                self.events["aiops_eta_recovered"] += 1
                self._emit("aiops_eta_recovered", evidence)

    def _publish_eta(self, resource: str, eta: float | None) -> None:
        gauge = self.telemetry["predis_aiops_eta_seconds"]
        if eta is None:
            try:
                gauge.remove(resource)
            except KeyError:
                pass
        else:
            gauge.labels(resource=resource).set(eta)

    # -- anomalies ----------------------------------------------------------------------------
    def _step(self, name: str, value: float | None) -> float | None:
        if value is None:
            self._counters.pop(name, None)
            return None
        previous = self._counters.get(name)
        self._counters[name] = value
        return counter_step(previous, value)

    def _latency(self, samples: dict[str, list[Metric]]) -> tuple[float | None, float | None]:
        merged: dict[float, float] = defaultdict(float)
        for m in _values(samples, "predis_cache_command_duration_seconds"):
            for bound, cumulative in m.buckets:
                merged[bound] += cumulative
            merged[math.inf] += m.count
        current = sorted(merged.items())
        previous = self._buckets.get("latency")
        self._buckets["latency"] = current
        if not previous or [b for b, _ in previous] != [b for b, _ in current]:
            return None, None
        deltas = [(b, c - p) for (b, c), (_, p) in zip(current, previous, strict=True)]
        if any(d < 0 for _, d in deltas):
            return None, None
        return histogram_quantile(MEDIAN, deltas), histogram_quantile(P99, deltas)

    def _signals(self, now: float, samples: dict[str, list[Metric]]) -> dict[str, float | None]:
        dt = None if self._last_time is None else now - self._last_time
        self._last_time = now
        hits = self._step("hits", _total(samples, "predis_cache_hits_total"))
        misses = self._step("misses", _total(samples, "predis_cache_misses_total"))
        loads = self._step("loads", _total(samples, "predis_cache_origin_loads_total"))
        errors = self._step("errors", _total(samples, "predis_cache_origin_errors_total"))
        commands = self._step("commands", _total(samples, "predis_cache_commands_total"))
        minimum = float(self.section["anomaly"]["min_events"])
        reads = None if hits is None or misses is None else hits + misses
        calls = None if loads is None or errors is None else loads + errors
        p50, p99 = self._latency(samples)
        return {
            "hit_ratio": hits / reads if reads is not None and hits is not None and reads >= minimum else None,
            "latency_p50": p50,
            "latency_p99": p99,
            "origin_error_rate": errors / calls if calls is not None and errors is not None and calls >= minimum else None,
            "ops_per_second": commands / dt if commands is not None and dt else None,
        }

    def _anomalies(self, now: float, samples: dict[str, list[Metric]], conditions: dict[str, dict[str, Any]]) -> None:
        values: dict[str, float | None] = dict(self._signals(now, samples))
        transitions = 0
        for m in _values(samples, "predis_agent_sink_breaker_state"):
            sink = m.labels.get("sink", "")
            if m.value == 1:
                state = m.labels.get("state", "")
                if self._breakers.get(sink) not in (None, state):
                    transitions += 1
                self._breakers[sink] = state
        for name, detector in self.detectors.items():
            change = detector.observe(transitions) if name == FLAPPING else detector.observe(values.get(name))
            self.telemetry["predis_aiops_anomaly"].labels(signal=name).set(1 if detector.active else 0)
            self.telemetry["predis_aiops_anomaly_score"].labels(signal=name).set(detector.score if math.isfinite(detector.score) else 0.0)
            evidence = {"signal": name, "value": detector.last, "baseline": detector.baseline, "score": round(detector.score, 3)}
            if detector.active:
                conditions[f"anomaly:{name}"] = evidence
            if change == "raised":
                self.telemetry["predis_aiops_anomalies_total"].labels(signal=name).inc()
                self.events["aiops_anomaly"] += 1
                log.warning("aiops: anomaly in %s: %s (baseline %s, score %.1f)", name, detector.last, detector.baseline, detector.score)
                self._emit("aiops_anomaly", evidence)
            elif change == "cleared":
                self.events["aiops_anomaly_cleared"] += 1
                self._emit("aiops_anomaly_cleared", evidence)

    def _count_action(self, action: str, outcome: str) -> None:
        self.telemetry["predis_aiops_actions_total"].labels(action=action, outcome=outcome).inc()

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enabled": self.enabled,
                "rounds": self.rounds,
                "step_cpu_seconds": {"last": round(self.last_seconds, 6), "total": round(self.total_seconds, 6)},
                "forecasts": {
                    r: {
                        "eta_seconds": None if self.etas.get(r) is None else round(float(self.etas[r] or 0.0), 1),
                        "headroom": self.headroom.get(r),
                        "horizon_seconds": self.section["forecast"]["horizon_seconds"][r] if self.section else None,
                        "below_horizon": r in self.below,
                    }
                    for r in RESOURCES
                },
                "anomalies": {
                    name: {"active": d.active, "value": d.last, "baseline": d.baseline, "score": round(d.score, 3)}
                    for name, d in self.detectors.items()
                },
                "events": dict(self.events),
                "remediation": self.engine.public(),
            }


class AiopsComponent:
    """The ``aiops`` section: forecasts, anomaly detection and remediation (agent.components)."""

    name = "aiops"
    sections: tuple[str, ...] | None = ("aiops",)

    def __init__(self, service: AiopsService, agent: Any) -> None:
        self.service = service
        self.agent = agent

    def renewed(self, new: Any) -> list[str]:
        return []

    def plan(self, new: Any, changes: Any, plans: dict[str, Any]) -> AuditLog:
        section = new.section("aiops")
        remediation = section["remediation"]
        audit = AuditLog(remediation["audit_log"] if remediation["opt_in"] else None)
        try:
            audit.check()
        except OSError as exc:
            raise OSError(f"aiops.remediation.audit_log {audit.path} cannot be opened for appending ({exc.strerror or exc}); fix the path or its directory's permissions") from None
        return audit

    async def prepare(self, plan: Any, new: Any, changes: Any) -> Any:
        return plan

    async def apply(self, plan: AuditLog, new: Any, changes: Any) -> list[str]:
        from agent.aiops.actions import builtin_actions

        section = new.section("aiops")
        if not changes.initial:
            # The actions are built anew from the new section: put back what the old ones
            # applied first, so that nothing stays changed without an action to revert it.
            self.service.engine.revert_all("the aiops section was reloaded")
        self.service.configure(section, plan)
        actions = [("builtin", action) for action in builtin_actions(self.agent, section["remediation"])]
        actions += self.agent.host.collect("predis_agent_register_remediations", agent=self.agent, config=new)
        self.service.engine.register(actions)
        return []

    def discard(self, plan: Any) -> None:
        """An audit log not opened holds nothing."""

    def abandon(self, old: Any, changes: Any) -> None:
        """The service keeps the settings it was configured with."""

    def readiness(self, config: Any) -> list[Any]:
        return []

    def status(self) -> dict[str, Any]:
        return self.service.status()

    async def stop(self, config: Any) -> None:
        self.service.engine.revert_all("agent stopping")
