# SPDX-License-Identifier: Apache-2.0
"""agent.roi: totals, intervals, the ROI report and the console's series, from stored samples."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import history as history_module
from agent import roi
from agent.history import History, Point
from agent.telemetry import Metric


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[History]:
    # A fresh process as far as the history knows: its first round counts from zero.
    monkeypatch.setattr(history_module, "_process_recorded", False)
    h = History(tmp_path / "history.sqlite3", retention_seconds=10**7, max_bytes=1 << 30)
    try:
        yield h
    finally:
        h.close()


def restart(h: History, monkeypatch: pytest.MonkeyPatch, run: str) -> None:
    """What a new process does: a new run whose first round counts from zero."""
    monkeypatch.setattr(history_module, "_process_recorded", False)
    h.run = run


def counter(name: str, value: float, **labels: str) -> Metric:
    return Metric(name, value, "counter", labels)


def reads(hits: float, misses: float, *extra: Metric) -> list[Metric]:
    return [counter("predis_cache_hits_total", hits), counter("predis_cache_misses_total", misses), *extra]


SETTINGS = roi.RoiSettings(control_share=0.1, min_control_reads=100, confidence_level=0.95, costs={})


# --------------------------------------------------------------------------- increase
def test_increase_counts_a_runs_first_round_from_zero_and_deltas_after_it() -> None:
    rounds = [(1.0, "a", True), (2.0, "a", False), (3.0, "a", False)]
    points = [Point(1.0, {}, 5.0, "a", True), Point(2.0, {}, 9.0, "a"), Point(3.0, {}, 12.0, "a")]
    assert roi.increase(points, rounds) == 12.0
    # A window that starts after the run's first round: its first point is a baseline.
    assert roi.increase(points[1:], rounds[1:]) == 3.0
    assert roi.increase([], rounds) is None


def test_increase_across_a_restart_adds_the_new_runs_counts_from_zero() -> None:
    rounds = [(1.0, "a", True), (2.0, "a", False), (3.0, "b", True), (4.0, "b", False)]
    points = [Point(1.0, {}, 5.0, "a", True), Point(2.0, {}, 9.0, "a"), Point(3.0, {}, 2.0, "b", True), Point(4.0, {}, 7.0, "b")]
    assert roi.increase(points, rounds) == 9.0 + 7.0


def test_a_series_that_appears_within_a_run_counts_from_zero_and_a_drop_is_a_reset() -> None:
    rounds = [(1.0, "a", True), (2.0, "a", False), (3.0, "a", False)]
    # Absent in the first round (say the prefetcher started after it): counted from zero.
    points = [Point(2.0, {}, 4.0, "a"), Point(3.0, {}, 1.0, "a")]
    assert roi.increase(points, rounds) == 4.0 + 1.0
    # A run whose first round fell out of the window (retention): its first kept point is a baseline.
    assert roi.increase([Point(5.0, {}, 50.0, "c"), Point(6.0, {}, 60.0, "c")], [(5.0, "c", False), (6.0, "c", False)]) == 10.0


def test_increase_sums_label_sets_or_takes_the_chosen_ones() -> None:
    rounds = [(1.0, "a", True), (2.0, "a", False)]
    points = [
        Point(1.0, {"by": "demand"}, 1.0, "a", True), Point(1.0, {"by": "prefetch"}, 10.0, "a", True),
        Point(2.0, {"by": "demand"}, 3.0, "a"), Point(2.0, {"by": "prefetch"}, 30.0, "a"),
    ]  # fmt: skip
    assert roi.increase(points, rounds) == 33.0
    assert roi.increase(points, rounds, {"by": "prefetch"}) == 30.0


def test_wilson_interval_contains_the_estimate_and_narrows_with_trials() -> None:
    z = roi.RoiSettings().z
    assert z == pytest.approx(1.959964, abs=1e-5)
    lo, hi = roi.wilson(30, 100, z)  # type: ignore[misc]
    assert lo < 0.3 < hi and (lo, hi) == pytest.approx((0.2189, 0.3958), abs=1e-3)
    lo2, hi2 = roi.wilson(3000, 10000, z)  # type: ignore[misc]
    assert hi2 - lo2 < (hi - lo) / 5
    assert roi.wilson(0, 0, z) is None
    assert roi.wilson(0, 10, z)[0] == pytest.approx(0.0, abs=1e-12)  # type: ignore[index]


# --------------------------------------------------------------------------- report
def test_no_history_or_no_rounds_or_no_reads_is_no_data_never_zero(history: History) -> None:
    for report in (roi.report(None, 0.0, SETTINGS), roi.report(history, 0.0, SETTINGS)):
        assert report["status"] == "no_data"
        assert report["requests"] is None and report["hits"] is None and report["hit_ratio"] is None
    assert "console.history_path" in roi.report(None, 0.0, SETTINGS)["notes"][0]
    history.record(1.0, reads(0, 0))
    history.record(2.0, reads(0, 0))
    report = roi.report(history, 0.0, SETTINGS)
    assert report["status"] == "no_data" and "no read" in report["notes"][0]


def test_the_report_without_prefetching_measures_both_ratios_on_all_reads(history: History) -> None:
    history.record(100.0, reads(30, 10))
    history.record(160.0, reads(70, 30))
    report = roi.report(history, 0.0, SETTINGS)
    assert report["status"] == "ok"
    assert (report["requests"], report["hits"], report["misses"]) == (100, 70, 30)
    assert report["hit_ratio"] == 0.7 and report["prefetch"] == "off"
    assert report["hit_ratio_without_prefetch"] == 0.7
    assert report["hit_ratio_without_prefetch_ci"] == pytest.approx(list(roi.wilson(70, 100, SETTINGS.z)))  # type: ignore[arg-type]
    assert (report["since"], report["until"], report["window_seconds"], report["rounds"]) == (100.0, 160.0, 60.0, 2)
    # No origin: its figures are unmeasured (null), the hits still avoided reads.
    assert report["origin_reads"] is None and report["origin_latency_seconds_mean"] is None
    assert report["origin_reads_avoided"] == 70
    assert report["missing"] == [f"console.costs.{k}" for k in roi.COST_KEYS]
    assert set(report["costs"].values()) == {None}


def prefetch_round(hits: float, misses: float, control: tuple[float, float], treated: tuple[float, float], origin: dict[str, tuple[float, float, float]], used: float) -> list[Metric]:
    """One round of an agent that prefetches from an origin: control and treated (reads,
    hits), per caller (reads, bytes, seconds)."""
    out = reads(hits, misses)
    out += [counter("predis_cache_prefetch_observed_total", control[0] + treated[0]), counter("predis_cache_prefetch_used_total", used)]
    for group, (n, h) in (("control", control), ("treated", treated)):
        out += [counter("predis_cache_control_reads_total", n, group=group), counter("predis_cache_control_hits_total", h, group=group)]
    for by, (n, nbytes, seconds) in origin.items():
        out += [counter("predis_cache_origin_reads_total", n, by=by), counter("predis_cache_origin_read_bytes_total", nbytes, by=by)]
        out.append(Metric("predis_cache_origin_read_duration_seconds", seconds, "histogram", {"by": by}, buckets=((1.0, n),), count=n))
    return out


def test_the_report_with_prefetching_takes_the_counterfactual_from_the_control_share(history: History) -> None:
    history.record(0.0, prefetch_round(0, 0, (0, 0), (0, 0), {"demand": (0, 0, 0.0), "prefetch": (0, 0, 0.0)}, 0))
    history.record(
        86400.0,
        prefetch_round(8000, 2000, (200, 100), (1800, 1440), {"demand": (2000, 2_000_000, 20.0), "prefetch": (1500, 1_500_000, 3.0)}, 1200),
    )
    costs = {"currency": "USD", "origin_read_cost": 0.001, "origin_gb_cost": 90.0, "gpu_hour_cost": 0.5, "baseline_hit_ratio": 0.5}
    settings = roi.RoiSettings(control_share=0.1, min_control_reads=100, confidence_level=0.95, costs=costs)
    report = roi.report(history, 0.0, settings)
    assert report["prefetch"] == "on" and report["prefetch_hits"] == 1200
    assert report["control"] == {"share": 0.1, "reads": 200, "hits": 100, "enough": True, "needed": 0}
    assert report["hit_ratio_without_prefetch"] == 0.5
    assert report["prefetch_uplift"] == pytest.approx(0.8 - 0.5)
    lo, hi = report["prefetch_uplift_ci"]
    assert lo < 0.3 < hi
    # Extra hits: the uplift times the treated share of all 10,000 reads.
    assert report["prefetch_extra_hits"] == pytest.approx(0.3 * 10000 * 0.9)
    assert report["origin_reads"] == 3500 and report["prefetch_origin_reads"] == 1500
    assert report["origin_reads_avoided"] == 8000 - 1500
    assert report["origin_reads_avoided_by_prefetch"] == pytest.approx(2700 - 1500)
    assert report["origin_reads_avoided_vs_baseline"] == pytest.approx((0.8 - 0.5) * 10000)
    assert report["origin_bytes_avoided"] == pytest.approx(6500 * 1000)  # 1,000 bytes per origin read
    assert report["origin_latency_seconds_mean"] == pytest.approx(0.01)  # demand: 20 s over 2,000 keys
    assert report["origin_latency_avoided_seconds"] == pytest.approx(8000 * 0.01)
    assert report["origin_latency_avoided_by_prefetch_seconds"] == pytest.approx(2700 * 0.01)
    c = report["costs"]
    assert c["origin_read_cost_avoided"] == pytest.approx(6.5)
    assert c["origin_bytes_cost_avoided"] == pytest.approx(6.5e6 / 1e9 * 90)
    assert c["avoided_per_day"] == pytest.approx(6.5 + 0.585)  # one day's window
    assert c["gpu_cost_per_day"] == 12.0 and c["net_per_day"] == pytest.approx(6.5 + 0.585 - 12.0)
    assert report["missing"] == [] and c["currency"] == "USD"


def test_until_enough_control_reads_the_ratio_without_prefetching_is_not_given(history: History) -> None:
    history.record(1.0, prefetch_round(80, 20, (40, 10), (60, 50), {}, 5))
    report = roi.report(history, 0.0, SETTINGS)
    assert report["status"] == "ok" and report["requests"] == 100
    assert report["hit_ratio_without_prefetch"] is None and report["hit_ratio_without_prefetch_ci"] is None
    assert report["control"]["enough"] is False and report["control"]["needed"] == 60
    assert any("not enough control traffic" in note for note in report["notes"])
    assert any("one collection round" in note for note in report["notes"])
    assert report["costs"]["avoided_per_day"] is None


def test_a_missing_price_is_named_and_leaves_its_figure_out(history: History) -> None:
    history.record(0.0, prefetch_round(0, 0, (0, 0), (0, 0), {"demand": (0, 0, 0.0)}, 0))
    history.record(43200.0, prefetch_round(90, 10, (0, 0), (0, 0), {"demand": (10, 1000, 0.1)}, 0))
    settings = roi.RoiSettings(0.0, 100, 0.95, {"origin_read_cost": 0.01})
    report = roi.report(history, 0.0, settings)
    assert report["missing"] == ["console.costs.currency", "console.costs.origin_gb_cost", "console.costs.gpu_hour_cost", "console.costs.baseline_hit_ratio"]
    c = report["costs"]
    assert c["origin_read_cost_avoided"] == pytest.approx(0.9) and c["origin_bytes_cost_avoided"] is None
    assert c["avoided_per_day"] == pytest.approx(1.8)  # half a day
    assert c["gpu_cost_per_day"] is None and c["net_per_day"] is None
    assert any("control_share is 0" in note for note in report["notes"])


def test_a_restart_keeps_the_totals(history: History, monkeypatch: pytest.MonkeyPatch) -> None:
    history.record(1.0, reads(5, 5))
    history.record(2.0, reads(8, 6))
    restart(history, monkeypatch, "second-run")
    history.record(3.0, reads(1, 0))
    history.record(4.0, reads(4, 2))
    report = roi.report(history, 0.0, SETTINGS)
    assert (report["hits"], report["misses"]) == (8 + 4, 6 + 2)


def test_the_csv_export_has_every_figure_of_the_report(history: History) -> None:
    history.record(1.0, reads(3, 1))
    report = roi.report(history, 0.0, SETTINGS)
    rows = dict(csv.reader(io.StringIO(roi.report_csv(report))))
    assert rows.pop("field") == "value"
    assert rows["requests"] == "4" and rows["hits"] == "3" and rows["hit_ratio"] == "0.75"
    assert rows["costs.net_per_day"] == "" and rows["control.enough"] == "True"
    assert rows["missing"] == ";".join(report["missing"])
    flat = {k for k, v in report.items() if not isinstance(v, dict)} | {f"{k}.{s}" for k, v in report.items() if isinstance(v, dict) for s in v}
    assert set(rows) == flat


# --------------------------------------------------------------------------- series
def test_derived_series_are_computed_round_by_round(history: History) -> None:
    history.record(10.0, [*reads(0, 0), counter("predis_cache_commands_total", 0, command="get")])
    history.record(20.0, [*reads(6, 4), counter("predis_cache_commands_total", 50, command="get"), counter("predis_cache_commands_total", 30, command="set")])
    history.record(30.0, [*reads(6, 4), counter("predis_cache_commands_total", 60, command="get"), counter("predis_cache_commands_total", 30, command="set")])
    ratio = roi.series(history, "hit_ratio", 0.0)
    assert ratio["unit"] == "ratio"
    # The third round served no read: it has no ratio (never a zero).
    assert [(p["ts"], p["labels"], p["value"]) for p in ratio["points"]] == [(20.0, {"of": "all"}, 0.6)]
    ops = roi.series(history, "ops_per_second", 0.0)["points"]
    assert [(p["ts"], p["value"]) for p in ops] == [(20.0, 8.0), (30.0, 1.0)]
    raw = roi.series(history, "predis_cache_hits_total", 0.0)
    assert [p["value"] for p in raw["points"]] == [0.0, 6.0, 6.0] and raw["unit"] == "count"
    with pytest.raises(KeyError):
        roi.series(history, "no_such_series", 0.0)


def test_latency_quantiles_interpolate_within_the_histograms_buckets(history: History) -> None:
    def latency(counts: tuple[float, float, float]) -> Metric:
        cumulative = ((0.001, counts[0]), (0.01, counts[0] + counts[1]))
        return Metric("predis_cache_command_duration_seconds", 0.0, "histogram", {"command": "get"}, buckets=cumulative, count=sum(counts))

    history.record(1.0, [latency((0, 0, 0))])
    history.record(2.0, [latency((50, 40, 10))])
    points = {p["labels"]["quantile"]: p["value"] for p in roi.series(history, "latency_seconds", 0.0)["points"]}
    assert points["0.5"] == pytest.approx(0.001)  # the 50th of 100 is the first bucket's top
    assert points["0.99"] == pytest.approx(0.01)  # in +Inf: the highest finite bound
    assert roi._quantile(0.75, [(1.0, 50.0), (2.0, 100.0), (math.inf, 100.0)]) == pytest.approx(1.5)


def test_events_are_kept_and_read_back_from_a_time_on(history: History) -> None:
    history.record_event(5.0, "drift_detected", {"features": ["keys"]})
    history.record_event(9.0, "rollout_decision", {"action": "advance"})
    assert roi.events(history, 6.0) == [{"ts": 9.0, "kind": "rollout_decision", "detail": {"action": "advance"}}]
    assert [e["kind"] for e in roi.events(history, 0.0)] == ["drift_detected", "rollout_decision"]
