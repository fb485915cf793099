# SPDX-License-Identifier: Apache-2.0
"""AIOps building blocks: the ETA forecaster, the anomaly detectors, the audit log and the
remediation engine's opt-in, dry-run, rate limit and revert."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy
import pytest

from agent.aiops.anomaly import BOTH, DOWN, UP, DetectorSettings, FlapDetector, RobustDetector, counter_step, histogram_quantile
from agent.aiops.audit import AuditLog
from agent.aiops.forecast import EtaForecaster, theil_sen_slope
from agent.aiops.remediation import RemediationEngine, RemediationSettings, RemediationUnavailable

SEED = 20261207


# ----------------------------------------------------------------------------- forecasts
def test_theil_sen_ignores_a_spike() -> None:
    times = numpy.arange(20, dtype=float)
    values = 100 - 2 * times
    values[7] = 10_000  # one wild point
    assert theil_sen_slope(times, values) == pytest.approx(-2.0)


def test_eta_of_a_shrinking_headroom() -> None:
    f = EtaForecaster(window=30, min_points=5)
    for t in range(10):
        f.observe(float(t), 1000.0 - 10.0 * t)
    assert f.eta() == pytest.approx(910.0 / 10.0)


@pytest.mark.parametrize(
    "series",
    [
        [100.0] * 10,  # flat: never runs out
        [float(v) for v in range(10)],  # growing headroom
        [100.0, 99.0],  # too short
        [100.0, math.nan, math.inf, 100.0, 100.0, 100.0],  # non-finite points are dropped
    ],
)
def test_no_eta_unless_it_shrinks(series: list[float]) -> None:
    f = EtaForecaster(window=30, min_points=3)
    for t, v in enumerate(series):
        f.observe(float(t), v)
    assert f.eta() is None


def test_eta_is_zero_once_exhausted_and_never_negative() -> None:
    f = EtaForecaster(window=30, min_points=3)
    for t, v in enumerate([30.0, 20.0, 10.0, 0.0, -10.0]):
        f.observe(float(t), v)
    assert f.eta() == 0.0


def test_eta_with_equal_timestamps_is_absent() -> None:
    f = EtaForecaster(window=30, min_points=3)
    for v in (30.0, 20.0, 10.0):
        f.observe(5.0, v)
    assert f.eta() is None


# ----------------------------------------------------------------------------- anomalies
def test_counter_step_skips_resets() -> None:
    assert counter_step(None, 5) is None
    assert counter_step(5, 8) == 3
    assert counter_step(8, 2) is None


def test_zero_variance_series_alarms_only_on_a_real_change() -> None:
    d = RobustDetector(DOWN, DetectorSettings(warmup=5, consecutive=2, min_absolute_change=0.05, threshold=6))
    changes = [d.observe(0.8) for _ in range(50)]
    assert changes == [None] * 50 and not d.active
    d.observe(0.79)  # a wobble far below the floor
    assert not d.active
    assert d.observe(0.3) is None
    assert d.observe(0.3) == "raised" and d.active
    results = [d.observe(0.8) for _ in range(2)]
    assert results[-1] == "cleared" and not d.active


def test_direction_is_respected() -> None:
    up = RobustDetector(UP, DetectorSettings(warmup=5, consecutive=1, min_relative_change=0.1))
    for _ in range(10):
        up.observe(100.0)
    assert up.observe(10.0) is None and not up.active
    assert up.observe(1000.0) == "raised"
    both = RobustDetector(BOTH, DetectorSettings(warmup=5, consecutive=1, min_relative_change=0.1))
    for _ in range(10):
        both.observe(100.0)
    assert both.observe(10.0) == "raised"


def test_missing_values_do_not_count() -> None:
    d = RobustDetector(UP, DetectorSettings(warmup=3, consecutive=1))
    for _ in range(10):
        assert d.observe(None) is None
    assert len(d.values) == 0


def test_false_alarm_rate_on_stationary_noise_is_low() -> None:
    rng = numpy.random.default_rng(SEED)
    d = RobustDetector(BOTH, DetectorSettings(min_relative_change=0.0))
    raised = sum(d.observe(float(v)) == "raised" for v in rng.normal(100.0, 5.0, 20_000))
    assert raised <= 2


def test_flapping_needs_several_transitions() -> None:
    f = FlapDetector(window=5, min_transitions=3)
    assert [f.observe(n) for n in (1, 0, 0, 0, 0)] == [None] * 5
    assert f.observe(1) is None
    assert f.observe(1) is None
    assert f.observe(1) == "raised"
    assert [f.observe(0) for _ in range(3)][-1] == "cleared"


def test_histogram_quantile() -> None:
    buckets = [(0.001, 50.0), (0.01, 90.0), (0.1, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.001)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.01 + 0.09 * 0.9)
    assert histogram_quantile(0.5, [(0.001, 0.0)]) is None
    assert histogram_quantile(0.99, [(0.001, 1.0), (math.inf, 100.0)]) == 0.001


# ----------------------------------------------------------------------------- audit log
def test_audit_log_appends_private_lines(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit.jsonl"
    audit = AuditLog(str(path))
    audit.append({"action": "a", "n": 1})
    audit.append({"action": "b", "n": 2})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [1, 2]
    assert [r["n"] for r in audit.public()["recent"]] == [1, 2]


def test_audit_log_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "audit.jsonl"
    os.symlink(target, link)
    with pytest.raises(OSError):
        AuditLog(str(link)).check()


# ----------------------------------------------------------------------------- engine
class Knob:
    """A real reversible action on a value this test owns."""

    name = "knob"
    triggers = ("anomaly:x",)
    reversible = True

    def __init__(self) -> None:
        self.value = 10

    def describe(self) -> str:
        return f"halve knob {self.value} -> {self.value // 2}"

    def apply(self, evidence: dict[str, Any]) -> str:
        self.value //= 2
        return f"knob now {self.value}"

    def revert(self) -> str:
        self.value *= 2
        return f"knob back to {self.value}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_engine(tmp_path: Path, opt_in: tuple[str, ...], live: tuple[str, ...], interval: float = 100.0) -> tuple[RemediationEngine, list[tuple[str, dict[str, Any]]], Clock]:
    events: list[tuple[str, dict[str, Any]]] = []
    clock = Clock()
    engine = RemediationEngine(lambda kind, data: events.append((kind, data)), lambda action, outcome: None, clock)
    engine.configure(RemediationSettings(opt_in, live, interval, 2), AuditLog(str(tmp_path / "audit.jsonl")))
    return engine, events, clock


def outcomes(tmp_path: Path) -> list[str]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line)["outcome"] for line in path.read_text().splitlines()] if path.exists() else []


def test_an_action_not_opted_in_never_runs(tmp_path: Path) -> None:
    knob = Knob()
    engine, events, _ = make_engine(tmp_path, (), ())
    engine.register([("test", knob)])
    engine.step({"anomaly:x": {"score": 9}})
    assert knob.value == 10 and events == [] and outcomes(tmp_path) == []


def test_dry_run_by_default_records_what_it_would_do(tmp_path: Path) -> None:
    knob = Knob()
    engine, events, _ = make_engine(tmp_path, ("knob",), ())
    engine.register([("test", knob)])
    engine.step({"anomaly:x": {"score": 9}})
    engine.step({"anomaly:x": {"score": 9}})  # the same episode: no second record
    assert knob.value == 10
    assert outcomes(tmp_path) == ["dry_run"]
    kind, record = events[0]
    assert kind == "aiops_action" and record["detail"] == "would: halve knob 10 -> 5" and record["evidence"] == {"score": 9}


def test_live_action_applies_is_rate_limited_and_reverts(tmp_path: Path) -> None:
    knob = Knob()
    engine, _events, clock = make_engine(tmp_path, ("knob",), ("knob",), interval=100.0)
    engine.register([("test", knob)])
    engine.step({"anomaly:x": {}})
    assert knob.value == 5
    engine.step({})
    assert knob.value == 5  # one clear round is not enough
    engine.step({})
    assert knob.value == 10
    clock.now += 10
    engine.step({"anomaly:x": {}})  # a new episode within min_interval_seconds
    assert knob.value == 10
    clock.now += 100
    engine.step({})
    engine.step({"anomaly:x": {}})
    assert knob.value == 5
    assert outcomes(tmp_path) == ["applied", "reverted", "rate_limited", "applied"]
    engine.revert_all("stop")
    assert knob.value == 10 and outcomes(tmp_path)[-1] == "reverted"


def test_an_unavailable_action_is_recorded(tmp_path: Path) -> None:
    class Never(Knob):
        name = "never"

        def apply(self, evidence: dict[str, Any]) -> str:
            raise RemediationUnavailable("nothing to act on")

    engine, _events, _ = make_engine(tmp_path, ("never",), ("never",))
    engine.register([("test", Never()), ("other", object())])
    engine.step({"anomaly:x": {}})
    assert outcomes(tmp_path) == ["unavailable"]
    assert engine.public()["actions"]["never"]["applied"] is False
    assert list(engine.actions) == ["never"]


# ----------------------------------------------------------------------------- config
def test_config_rules_refuse_a_live_action_not_opted_in_and_impossible_windows() -> None:
    from agent.config import load_config
    from agent.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        load_config(None, overrides=("aiops.remediation.live=[rollback_model]", "aiops.forecast.min_rounds=50", "aiops.anomaly.warmup_rounds=100"))
    text = str(raised.value)
    assert "aiops-live-opted-in" in text and "aiops-windows" in text and "aiops.anomaly.warmup_rounds" in text
    section = load_config(None, overrides=("aiops.remediation.opt_in=[rollback_model]", "aiops.remediation.live=[rollback_model]")).section("aiops")
    assert section["remediation"]["live"] == ["rollback_model"]
    assert load_config(None).section("aiops")["remediation"]["opt_in"] == []


# ----------------------------------------------------------------------------- built-in actions
def prefetching_agent() -> Any:
    from types import SimpleNamespace

    from cache_core.cache import Cache
    from cache_core.models import StrideModel, Vocabulary
    from cache_core.prefetch import Prefetcher, PrefetchSettings
    from cache_core.replay import MemoryOrigin

    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20, eviction="lru")
    vocab = Vocabulary(256)
    settings = PrefetchSettings(max_keys_per_second=1000.0, max_bytes_per_second=1 << 20, queue_max_batches=64)
    prefetcher = Prefetcher(cache, MemoryOrigin(8), StrideModel(vocab), vocab, settings, sync=True)
    return SimpleNamespace(cache_service=SimpleNamespace(prefetcher=prefetcher))


def test_lower_prefetch_bandwidth_retunes_the_running_prefetcher_and_puts_it_back() -> None:
    from agent.aiops.actions import LowerPrefetchBandwidth, ShrinkPrefetchQueue

    agent = prefetching_agent()
    prefetcher = agent.cache_service.prefetcher
    lower = LowerPrefetchBandwidth(agent, 0.5, ("anomaly:origin_error_rate",))
    assert lower.describe() == "retune the prefetcher: max_keys_per_second 1000.0 -> 500.0, max_bytes_per_second 1048576 -> 524288"
    assert prefetcher.settings.max_keys_per_second == 1000.0  # describing changes nothing
    lower.apply({})
    assert (prefetcher.settings.max_keys_per_second, prefetcher.settings.max_bytes_per_second) == (500.0, 524288)
    shrink = ShrinkPrefetchQueue(agent, 0.25, ("eta:memory_budget",))
    shrink.apply({})
    assert prefetcher.settings.queue_max_batches == 16
    assert lower.revert() == "left as is: the prefetcher was rebuilt or retuned by a reload since"  # shrink retuned it since
    assert shrink.revert() == "prefetcher settings put back: queue_max_batches 64"
    assert prefetcher.settings.queue_max_batches == 64 and prefetcher.settings.max_keys_per_second == 500.0


def test_prefetch_actions_are_unavailable_without_a_prefetcher_or_a_budget() -> None:
    from types import SimpleNamespace

    from agent.aiops.actions import LowerPrefetchBandwidth

    with pytest.raises(RemediationUnavailable, match="no prefetcher runs"):
        LowerPrefetchBandwidth(SimpleNamespace(cache_service=SimpleNamespace(prefetcher=None)), 0.5, ()).describe()
    agent = prefetching_agent()
    agent.cache_service.prefetcher.retune(dataclasses_replace(agent.cache_service.prefetcher.settings, max_keys_per_second=0.0))
    with pytest.raises(RemediationUnavailable, match="unbounded"):
        LowerPrefetchBandwidth(agent, 0.5, ()).apply({})


def dataclasses_replace(settings: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(settings, **changes)


# ----------------------------------------------------------------------------- the service
def make_service(tmp_path: Path) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    from agent.aiops.service import AiopsService
    from agent.config import load_config
    from agent.telemetry import Telemetry

    events: list[tuple[str, dict[str, Any]]] = []
    service = AiopsService(lambda kind, data: events.append((kind, data)), Telemetry("test"), dict)
    service.configure(load_config(None).section("aiops"), AuditLog(None))
    return service, events


def exposition(service: Any) -> str:
    service.telemetry.end_round()  # as the agent does after each round
    return str(service.telemetry.exposition()[0].decode())


def test_the_memory_eta_is_published_then_withdrawn_never_nan(tmp_path: Path) -> None:
    from agent.telemetry import Metric

    service, events = make_service(tmp_path)
    limit = 1_000_000.0

    def round_(t: float, used: float) -> None:
        service.observe(t, [Metric("predis_cache_charged_bytes", used), Metric("predis_cache_max_memory_bytes", limit)])

    for t in range(10):
        round_(t * 10.0, 500_000.0)
    assert 'predis_aiops_eta_seconds{resource="memory_budget"}' not in exposition(service)
    for t in range(10, 40):  # +5 kB per 10 s round: 500 B/s, the whole window
        round_(t * 10.0, 500_000.0 + (t - 9) * 5_000.0)
    eta = service.status()["forecasts"]["memory_budget"]["eta_seconds"]
    assert eta == pytest.approx(350_000.0 / 500.0)
    lines = [line for line in exposition(service).splitlines() if line.startswith('predis_aiops_eta_seconds{resource="memory_budget"}')]
    assert len(lines) == 1 and float(lines[0].rsplit(" ", 1)[1]) == pytest.approx(eta, abs=0.1)
    assert [k for k, _ in events] == ["aiops_eta_below_horizon"] and events[0][1]["resource"] == "memory_budget"
    for t in range(40, 80):  # the writes stop
        round_(t * 10.0, 650_000.0)
    assert 'resource="memory_budget"' not in exposition(service)
    assert [k for k, _ in events] == ["aiops_eta_below_horizon", "aiops_eta_recovered"]
    assert "NaN" not in exposition(service) and "Inf" not in exposition(service).replace("+Inf", "")


def test_a_counter_reset_is_no_anomaly(tmp_path: Path) -> None:
    from agent.telemetry import Metric

    service, events = make_service(tmp_path)
    hits = misses = 0.0
    for t in range(100):
        if t == 50:
            hits = misses = 0.0  # the cache restarted
        hits += 900.0
        misses += 100.0
        service.observe(t * 10.0, [Metric("predis_cache_hits_total", hits, "counter"), Metric("predis_cache_misses_total", misses, "counter")])
    assert events == []
    assert service.status()["anomalies"]["hit_ratio"]["value"] == pytest.approx(0.9)
    assert service.status()["rounds"] == 100 and service.status()["step_cpu_seconds"]["total"] > 0


def test_a_reload_of_the_aiops_section_puts_back_what_was_applied(tmp_path: Path) -> None:
    import asyncio
    from types import SimpleNamespace

    from agent.aiops.service import AiopsComponent
    from agent.components import Changes
    from agent.config import load_config

    service, _events = make_service(tmp_path)
    knob = Knob()
    agent = prefetching_agent()
    agent.host = SimpleNamespace(collect=lambda hook, **kw: [("test", knob)] if hook == "predis_agent_register_remediations" else [])
    component = AiopsComponent(service, agent)
    audit = str(tmp_path / "audit.jsonl")
    live = load_config(None, overrides=("aiops.remediation.opt_in=[knob]", "aiops.remediation.live=[knob]", f"aiops.remediation.audit_log={audit}"))
    asyncio.run(component.apply(component.plan(live, Changes((), initial=True), {}), live, Changes((), initial=True)))
    service.engine.step({"anomaly:x": {}})
    assert knob.value == 5
    changed = load_config(None, overrides=("aiops.remediation.opt_in=[knob]", f"aiops.remediation.audit_log={audit}"))
    asyncio.run(component.apply(component.plan(changed, Changes(("aiops.remediation.live",)), {}), changed, Changes(("aiops.remediation.live",))))
    assert knob.value == 10
    assert outcomes(tmp_path) == ["applied", "reverted"]
    assert component.status()["remediation"]["actions"]["knob"]["mode"] == "dry_run"


def test_nothing_acts_that_the_audit_log_could_not_record(tmp_path: Path) -> None:
    knob = Knob()
    engine, _events, _ = make_engine(tmp_path, ("knob",), ("knob",))
    engine.register([("test", knob)])
    (tmp_path / "audit.jsonl").mkdir()  # a directory where the log should be: not writable as a file
    engine.step({"anomaly:x": {}})
    assert knob.value == 10
    assert engine.public()["actions"]["knob"]["last_outcome"] == "unavailable"
    assert "cannot be written" in engine.audit.public()["recent"][-1]["detail"]
