# SPDX-License-Identifier: Apache-2.0
"""Drift statistics against scipy on known inputs, the combination rules, the policy, the CLI.

Property tests (hypothesis) feed empty, constant, tiny and NaN-bearing windows through
every detector: a decision must never carry NaN or inf, and tiny windows must come out as
``insufficient_data`` rather than an alarm.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial import distance

from agent.cli import cli
from agent.config import load_config, settings_of
from agent.mlops import dataset
from agent.mlops.drift import (
    PUBLIC_ENTRY_KEYS,
    STATUS_DRIFT,
    STATUS_INSUFFICIENT,
    STATUS_NO_DRIFT,
    DetectorResult,
    DriftResult,
    DriftSettings,
    combine,
    quantile_bin_counts,
    run_check,
)
from agent.mlops.drift_policy import DriftPolicy, Performance, performance_of, should_retrain
from agent.mlops.features import OP_GET, OP_SET, RES_HIT, RES_MISS, WindowFeatures, window_features
from agent.mlops.traces import TraceError, fingerprint, read_trace
from agent.plugins import PluginHost
from agent.telemetry import DRIFT_METRICS
from config_schema import load_schema
from plugins.drift import adwin, batch_means, chi2, ks, psi
from plugins.drift import distance as dist_mod

DETECTORS = [ks.KSDetector(), psi.PSIDetector(), dist_mod.DistanceDetector(), chi2.Chi2Detector(), adwin.AdwinDetector(), batch_means.BatchMeansDetector()]
RNG_SEED = 20


def rng() -> numpy.random.Generator:
    return numpy.random.default_rng(RNG_SEED)


# ----------------------------------------------------------------------------- statistics vs scipy


def test_ks_matches_scipy_exact_and_asymptotic() -> None:
    r = rng()
    a, b = r.normal(size=300), r.normal(0.3, 1.0, size=400)
    expected = stats.ks_2samp(a, b, method="exact")
    assert ks.ks_test(a, b) == pytest.approx((expected.statistic, expected.pvalue))
    big_a, big_b = r.normal(size=ks.EXACT_MAX + 1), r.normal(size=ks.EXACT_MAX + 1)
    expected = stats.ks_2samp(big_a, big_b, method="asymp")
    assert ks.ks_test(big_a, big_b) == pytest.approx((expected.statistic, expected.pvalue))


def test_ks_known_values_from_the_reference_tables() -> None:
    assert ks.ks_test(numpy.arange(5.0), numpy.arange(5.0)) == (0.0, 1.0)
    # complete separation: n=3 cannot reach 0.05, n=4 can
    assert ks.ks_test(numpy.arange(3.0), numpy.arange(3.0) + 10)[1] == pytest.approx(0.1)
    assert ks.ks_test(numpy.arange(4.0), numpy.arange(4.0) + 10)[1] == pytest.approx(0.0286, abs=1e-4)


def test_ks_effective_sizes_only_make_the_p_value_larger() -> None:
    r = rng()
    a, b = r.normal(size=500), r.normal(0.2, 1.0, size=500)
    d, p = ks.ks_test(a, b)
    d_eff, p_eff = ks.ks_test(a, b, effective=(50, 50))
    assert d_eff == pytest.approx(d)
    asymp = stats.ks_2samp(a, b, method="asymp").pvalue
    assert p_eff == pytest.approx(max(asymp, stats.kstwo.sf(d, 25)))
    assert p_eff > p


def test_wasserstein_is_scipys_divided_by_the_reference_std_with_a_floor() -> None:
    r = rng()
    a, b = r.normal(size=500), r.normal(1.0, 1.0, size=500)
    assert dist_mod.normed_wasserstein(a, b, 0.001) == pytest.approx(stats.wasserstein_distance(a, b) / numpy.std(a))
    const = numpy.full(10, 3.0)
    assert dist_mod.normed_wasserstein(const, const + 1.0, 0.001) == pytest.approx(1000.0)


def test_js_distance_matches_scipy_and_handles_zero_bins() -> None:
    p, q = numpy.array([10, 0, 30, 60]), numpy.array([20, 20, 20, 40])
    assert dist_mod.js_distance(p, q) == pytest.approx(distance.jensenshannon(p / p.sum(), q / q.sum()))
    assert dist_mod.js_distance(p, p) == 0.0
    assert dist_mod.js_distance(numpy.zeros(4), q) == 0.0


def test_psi_by_hand_and_epsilon_fill() -> None:
    r, c = numpy.array([50, 50]), numpy.array([25, 75])
    assert psi.psi(r, c, 1e-4) == pytest.approx((0.5 - 0.25) * math.log(0.5 / 0.25) + (0.5 - 0.75) * math.log(0.5 / 0.75))
    filled = psi.psi(numpy.array([100, 0]), numpy.array([50, 50]), 1e-4)
    assert filled == pytest.approx((1 - 0.5) * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5))
    assert psi.psi(r, r, 1e-4) == 0.0


def test_quantile_bins_come_from_the_reference_and_catch_outside_values() -> None:
    ref = numpy.arange(100.0)
    ref_counts, cur_counts = quantile_bin_counts(ref, numpy.array([-5.0, 500.0, 50.0]), 10)
    assert ref_counts.sum() == 100 and ref_counts.min() >= 9
    assert cur_counts.sum() == 3 and cur_counts[0] == 1 and cur_counts[-1] == 1
    const_ref, const_cur = quantile_bin_counts(numpy.full(50, 2.0), numpy.array([1.0, 2.0, 3.0]), 10)
    assert const_ref.tolist() == [0, 50, 0] and const_cur.tolist() == [1, 1, 1]


def test_chi2_matches_scipy_contingency_and_pools_sparse_categories() -> None:
    ref, cur = numpy.array([30, 40, 50, 60]), numpy.array([35, 30, 70, 45])
    expected = stats.chi2_contingency(numpy.vstack([ref, cur]), correction=False)
    assert chi2.chi2_test(ref, cur, 5.0) == pytest.approx((expected.statistic, expected.pvalue))
    table = chi2.pooled_table(numpy.array([100, 1, 1, 0]), numpy.array([100, 2, 0, 0]), 5.0)
    assert table.tolist() == [[100.0, 2.0], [100.0, 2.0]]
    assert chi2.chi2_test(numpy.array([5, 0]), numpy.array([7, 0]), 5.0) == (0.0, 1.0)
    assert chi2.chi2_test(numpy.array([0, 0]), numpy.array([7, 0]), 5.0) is None


def test_adwin_cuts_a_changed_stream_and_not_a_steady_one() -> None:
    r = rng()
    steady = (r.random(4000) < 0.5).astype(float)
    changed = numpy.concatenate([(r.random(2000) < 0.6), (r.random(2000) < 0.3)]).astype(float)
    assert adwin.adwin_cut(steady, 0.002, 32, 5)[2] < 0
    diff, bound, margin = adwin.adwin_cut(changed, 0.002, 32, 5)
    assert margin > 0 and diff == pytest.approx(0.3, abs=0.05) and bound > 0
    assert adwin.adwin_cut(numpy.ones(4), 0.002, 32, 5) is None


def test_welch_on_batch_means_matches_scipy() -> None:
    a, b = numpy.array([0.1, 0.2, 0.15, 0.12]), numpy.array([0.3, 0.25, 0.35, 0.28])
    assert batch_means.welch(a, b) == pytest.approx((b.mean() - a.mean(), stats.ttest_ind(a, b, equal_var=False).pvalue))
    assert batch_means.welch(numpy.ones(4), numpy.ones(4)) == (0.0, 1.0)


# ----------------------------------------------------------------------------- combination


def entry(p: float, alpha: float = 0.05) -> DetectorResult:
    return DetectorResult("t", f"f{p}", 1.0, p_value=p, alpha=alpha)


def test_bonferroni_divides_alpha_by_the_number_of_tests() -> None:
    result = combine([entry(0.03), entry(0.3)], DriftSettings(correction="bonferroni"))
    assert result.status == STATUS_NO_DRIFT  # 0.03 <= 0.05 alone, but not <= 0.05 / 2
    assert [e.threshold for e in result.detectors] == [0.025, 0.025]
    passed = combine([entry(0.02), entry(0.3)], DriftSettings())
    assert passed.status == STATUS_DRIFT and passed.affected_features == ["f0.02"]


def test_benjamini_hochberg_rejects_up_to_the_largest_passing_rank() -> None:
    ps = [0.001, 0.02, 0.03, 0.5]
    result = combine([entry(p) for p in ps], DriftSettings(correction="bh"))
    # BH at q=0.05, m=4: cutoffs 0.0125, 0.025, 0.0375, 0.05 -> ranks 1..3 rejected
    assert [e.drift for e in sorted(result.detectors, key=lambda e: e.p_value or 0)] == [True, True, True, False]
    bonf = combine([entry(p) for p in ps], DriftSettings(correction="bonferroni"))
    assert sum(e.drift for e in bonf.detectors) == 1


def test_effect_floor_blocks_alarm_but_still_counts_in_the_family() -> None:
    small = DetectorResult("ks", "a", 0.05, p_value=1e-9, alpha=0.05, effect_ok=False)
    other = entry(0.03)
    result = combine([small, other], DriftSettings())
    assert result.status == STATUS_NO_DRIFT
    assert other.threshold == 0.025


def test_nan_statistics_become_insufficient_never_drift() -> None:
    e = DetectorResult("x", "f", float("nan"), p_value=float("nan"), score=float("inf"), drift=True)
    assert (e.statistic, e.p_value, e.score, e.status, e.drift) == (None, None, None, STATUS_INSUFFICIENT, False)
    assert combine([e], DriftSettings()).status == STATUS_INSUFFICIENT


def test_a_raising_detector_is_skipped() -> None:
    class Broken:
        name = "broken"

        def check(self, reference: WindowFeatures, current: WindowFeatures, settings: DriftSettings) -> DriftResult:
            raise RuntimeError("boom")

    r = rng()
    w = window_features(r.integers(0, 50, 500).astype(numpy.uint64))
    result = run_check([Broken(), chi2.Chi2Detector()], w, w)
    assert result.status == STATUS_NO_DRIFT and {e.detector for e in result.detectors} == {"chi2"}


def test_public_json_shape() -> None:
    r = rng()
    w = window_features(r.integers(0, 50, 500).astype(numpy.uint64))
    public = run_check(DETECTORS, w, w).public()
    assert set(public) == {"status", "drift_detected", "detectors"}
    assert all(tuple(d) == PUBLIC_ENTRY_KEYS for d in public["detectors"])
    json.dumps(public, allow_nan=False)


# ----------------------------------------------------------------------------- properties

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def windows(draw: st.DrawFn) -> WindowFeatures:
    n = draw(st.integers(min_value=0, max_value=60))
    keys = draw(st.lists(st.integers(min_value=0, max_value=draw(st.integers(0, 20))), min_size=n, max_size=n))
    sizes = draw(st.lists(floats, min_size=n, max_size=n))
    ts = draw(st.lists(floats, min_size=n, max_size=n))
    ops = draw(st.lists(st.sampled_from([OP_GET, OP_SET]), min_size=n, max_size=n))
    res = draw(st.lists(st.sampled_from([RES_HIT, RES_MISS]), min_size=n, max_size=n))
    return window_features(numpy.array(keys, dtype=numpy.uint64), ops, res, sizes, ts)


def assert_finite(result: DriftResult) -> None:
    assert result.status in (STATUS_DRIFT, STATUS_NO_DRIFT, STATUS_INSUFFICIENT)
    for e in result.detectors:
        for value in (e.statistic, e.p_value, e.score, e.threshold):
            assert value is None or math.isfinite(value)
        assert not (e.drift and e.status == STATUS_INSUFFICIENT)
    json.dumps(result.public(), allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(windows(), windows(), st.integers(min_value=1, max_value=100))
def test_no_input_gives_nan_or_inf_in_a_decision(ref: WindowFeatures, cur: WindowFeatures, min_samples: int) -> None:
    result = run_check(DETECTORS, ref, cur, DriftSettings(min_samples=min_samples))
    assert_finite(result)
    if min(ref.events, cur.events) < min_samples:
        assert result.status == STATUS_INSUFFICIENT and not result.drift_detected


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=3), st.floats(allow_nan=True, allow_infinity=True))
def test_tiny_and_constant_windows_never_alarm(n: int, value: float) -> None:
    w = window_features(numpy.zeros(n, dtype=numpy.uint64), numpy.full(n, OP_GET), numpy.zeros(n), numpy.full(n, value), numpy.full(n, value))
    result = run_check(DETECTORS, w, w, DriftSettings(min_samples=1))
    assert_finite(result)
    assert not result.drift_detected


def test_identical_windows_give_ks_p_one_and_psi_zero() -> None:
    r = rng()
    w = window_features(r.integers(0, 300, 800).astype(numpy.uint64), size=r.lognormal(5, 1, 800))
    result = run_check(DETECTORS, w, w)
    by = {(e.detector, e.feature): e for e in result.detectors}
    assert by[("ks", "value_size")].p_value == 1.0 and by[("psi", "value_size")].score == 0.0
    assert result.status == STATUS_NO_DRIFT


def test_psi_is_reported_but_does_not_alarm_below_its_minimum_window() -> None:
    r = rng()
    ref = window_features(r.integers(0, 10**6, 200).astype(numpy.uint64), size=r.normal(100, 10, 200))
    cur = window_features(r.integers(0, 10**6, 200).astype(numpy.uint64), size=r.normal(130, 10, 200))
    entry_psi = next(e for e in psi.PSIDetector().check(ref, cur).detectors if e.feature == "value_size")
    assert entry_psi.score is not None and entry_psi.score > 0.1
    assert entry_psi.alarming is False and entry_psi.drift is False


# ----------------------------------------------------------------------------- policy


def hits_window(r: numpy.random.Generator, hit_ratio: float, n: int = 2000) -> WindowFeatures:
    return window_features(
        r.integers(0, 500, n).astype(numpy.uint64), numpy.full(n, OP_GET), numpy.where(r.random(n) < hit_ratio, RES_HIT, RES_MISS)
    )


def test_should_retrain_improvement_is_not_a_degradation() -> None:
    drift = DriftResult(STATUS_DRIFT, [DetectorResult("adwin", "hit_stream", 0.2, score=0.1, drift=True)])
    assert should_retrain(drift, Performance(0.4, 0.6)).retrain is False
    assert should_retrain(drift, Performance(0.6, 0.4)).retrain is True
    assert should_retrain(drift, None).retrain is True
    assert should_retrain(DriftResult(STATUS_NO_DRIFT), Performance(0.6, 0.3)).retrain is True
    assert should_retrain(DriftResult(STATUS_NO_DRIFT), Performance(0.6, 0.6)).retrain is False
    assert should_retrain(DriftResult(STATUS_INSUFFICIENT), Performance(0.6, 0.1)).retrain is False


def test_policy_reference_is_adopted_then_replaced_after_retrain() -> None:
    r = rng()
    seen: list[DriftResult] = []

    def broken(result: DriftResult) -> None:
        raise RuntimeError("listener failed")

    policy = DriftPolicy(DETECTORS, DriftSettings(min_samples=100), listeners=[broken, seen.append])
    assert policy.check(hits_window(r, 0.6, 50)).status == STATUS_INSUFFICIENT
    assert policy.reference is None  # too small to become the reference
    assert policy.check(hits_window(r, 0.6)).status == STATUS_INSUFFICIENT
    assert policy.reference is not None and policy.reference.reason == "initial"
    assert policy.check(hits_window(r, 0.6)).status == STATUS_NO_DRIFT
    worse = hits_window(r, 0.3)
    result = policy.check(worse)
    assert result.status == STATUS_DRIFT and "adwin" in result.drifted_detectors
    assert seen == [result]  # the broken listener did not stop the next one
    perf = performance_of(policy.reference.features, worse)
    assert perf is not None and should_retrain(result, perf).retrain is True
    policy.refresh_after_retrain(worse)
    assert policy.reference.reason == "retrain" and policy.reference.generation == 2
    assert policy.check(hits_window(r, 0.3)).status == STATUS_NO_DRIFT
    counts = {m.labels["status"]: m.value for m in policy.metrics.samples() if m.name == "predis_drift_checks_total"}
    assert counts == {"drift": 1.0, "no_drift": 2.0, "insufficient_data": 2.0}
    detected = {m.labels["detector"]: m.value for m in policy.metrics.samples() if m.name == "predis_drift_detected_total"}
    assert detected["adwin"] == 1.0
    names = {m.name for m in policy.metrics.samples()}
    assert names == {s.name for s in DRIFT_METRICS}


def test_settings_defaults_match_the_schema_and_reload_validates() -> None:
    section = load_schema()["properties"]["drift"]["properties"]
    defaults = DriftSettings()
    # The live monitor's own keys (agent/mlops/drift_monitor.py) are not detector settings.
    monitor_keys = {"enabled", "window_events"}
    for name, sub in section.items():
        if name not in monitor_keys:
            assert getattr(defaults, name) == sub["default"], name
    assert settings_of(DriftSettings, load_config(None, text="drift: {ks_alpha: 0.01}").section("drift")).ks_alpha == 0.01
    from agent.errors import ConfigError

    with pytest.raises(ConfigError):
        load_config(None, text="drift: {correction: holm}")
    with pytest.raises(ConfigError):
        load_config(None, text="drift: {psi_threshold: 0}")


def test_builtin_plugins_register_every_detector() -> None:
    host = PluginHost(load_entrypoints=False)
    host.apply_config(lambda name: True)
    found = [d for _, ds in host.call("predis_agent_register_drift_detectors", agent=None, config={}) for d in ds]
    assert sorted(d.name for d in found) == ["adwin", "batch_means", "chi2", "distance", "ks", "psi"]


# ----------------------------------------------------------------------------- traces and CLI


def test_trace_fingerprint_is_fixed_and_keyed() -> None:
    a = fingerprint([b"user:1", b"user:2", b"user:1"])
    assert a.dtype == numpy.uint64 and a[0] == a[2] != a[1]
    assert fingerprint([b"user:1"])[0] == a[0]


def test_read_trace_text_and_csv(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("a\nb\n\na\n")
    assert read_trace(text).fp.shape == (3,)
    table = tmp_path / "t.csv"
    table.write_text("timestamp,key,op,size\n1.5,a,get,10\n2.0,b,SET,20\n2.5,a,1,\n")
    trace = read_trace(table)
    assert trace.op.tolist() == [OP_GET, OP_SET, OP_GET]
    assert trace.ts_ns.tolist() == [1_500_000_000, 2_000_000_000, 2_500_000_000]
    assert trace.size[:2].tolist() == [10.0, 20.0] and math.isnan(trace.size[2])
    bad = tmp_path / "bad.csv"
    bad.write_text("key,op\na,frobnicate\n")
    with pytest.raises(TraceError, match="line 2"):
        read_trace(bad)


def write_trace(path: Path, keys: numpy.ndarray) -> str:
    path.write_text("\n".join(f"k{k}" for k in keys) + "\n")
    return str(path)


def test_cli_drift_check_text_json(tmp_path: Path) -> None:
    r = rng()
    ref = write_trace(tmp_path / "ref.txt", r.zipf(1.3, 3000))
    same = write_trace(tmp_path / "same.txt", r.zipf(1.3, 3000))
    moved = write_trace(tmp_path / "moved.txt", r.zipf(1.3, 3000) + 1000)
    out = CliRunner().invoke(cli, ["drift", "check", "--reference", ref, "--current", same, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["status"] == "no_drift" and data["drift_detected"] is False
    assert all(list(d) == list(PUBLIC_ENTRY_KEYS) for d in data["detectors"])
    out = CliRunner().invoke(cli, ["drift", "check", "--reference", ref, "--current", moved, "--json"])
    assert out.exit_code == 0
    data = json.loads(out.output)
    assert data["status"] == "drift" and data["drift_detected"] is True
    assert any(d["detector"] == "chi2" and d["feature"] == "key_bucket" and d["drift"] for d in data["detectors"])


def test_cli_drift_check_csv_and_text_output(tmp_path: Path) -> None:
    r = rng()
    rows = ["key,op,size"] + [f"k{k},{'get' if r.random() < 0.9 else 'set'},{int(r.integers(1, 1000))}" for k in r.zipf(1.2, 2000)]
    flipped = ["key,op,size"] + [f"k{k},{'set' if r.random() < 0.9 else 'get'},{int(r.integers(1, 1000))}" for k in r.zipf(1.2, 2000)]
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "b.csv").write_text("\n".join(flipped) + "\n")
    out = CliRunner().invoke(cli, ["drift", "check", "--reference", str(tmp_path / "a.csv"), "--current", str(tmp_path / "b.csv")])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("status: drift")
    assert any("op_mix" in line and "DRIFT" in line for line in out.output.splitlines())


def test_cli_drift_check_insufficient_data_is_exit_zero(tmp_path: Path) -> None:
    tiny = write_trace(tmp_path / "tiny.txt", numpy.arange(5))
    out = CliRunner().invoke(cli, ["drift", "check", "--reference", tiny, "--current", tiny, "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["status"] == "insufficient_data"


def test_cli_drift_check_unreadable_input_is_exit_two(tmp_path: Path) -> None:
    good = write_trace(tmp_path / "ok.txt", numpy.arange(200))
    binary = tmp_path / "bin.dat"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    for args in (["--current", str(tmp_path / "missing.txt")], ["--current", str(binary)], ["--current", str(tmp_path)]):
        out = CliRunner().invoke(cli, ["drift", "check", "--reference", good, *args])
        assert out.exit_code == 2
        assert "error:" in out.output


def test_cli_drift_check_segment_directory(tmp_path: Path) -> None:
    key = bytes(range(32))
    (tmp_path / "key").write_bytes(key)
    r = rng()
    directory = tmp_path / "segs"
    directory.mkdir(mode=0o700)
    n = 1500
    for i, offset in enumerate((0, 0)):
        events = numpy.zeros(n, dtype=numpy.dtype([("ts_ns", "<i8"), ("fp", "<u8"), ("op", "u1"), ("result", "u1"), ("tenant", "<u2"), ("size", "<u4")]))
        events["ts_ns"] = numpy.arange(n) + i * n
        events["fp"] = (r.zipf(1.2, n) + offset).astype(numpy.uint64)
        events["op"] = OP_GET
        events["result"] = numpy.where(r.random(n) < 0.5, RES_HIT, RES_MISS)
        events["size"] = 100
        created = 10**18 + i
        blob = dataset.encode_segment(events, None, first_seq=i * n, key=key, stream_id=b"s" * 8, created_ns=created)
        (directory / dataset.segment_name(created, i * n)).write_bytes(blob)
    out = CliRunner().invoke(cli, ["drift", "check", "--reference", str(directory), "--current", str(directory), "--key-file", str(tmp_path / "key"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["status"] == "no_drift"
    out = CliRunner().invoke(cli, ["drift", "check", "--reference", str(directory), "--current", str(directory)])
    assert out.exit_code == 2 and "--key-file" in out.output
