# SPDX-License-Identifier: Apache-2.0
"""agent.telemetry: self-metric naming, exposition, collected batches, registry isolation."""

from __future__ import annotations

import math
import platform
import re

import prometheus_client
import pytest
from prometheus_client import generate_latest

from agent.telemetry import SELF_METRICS, Metric, Telemetry
from cache_core import _native

NAME_RE = re.compile(r"^predis_[a-z][a-z0-9_]*[a-z0-9]$")
LABEL_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


def exposition(telemetry: Telemetry) -> str:
    return generate_latest(telemetry.registry).decode("utf-8")


# ----------------------------------------------------------------------------- naming


@pytest.mark.parametrize("spec", SELF_METRICS, ids=[s.name for s in SELF_METRICS])
def test_self_metric_names_follow_prometheus_conventions(spec: object) -> None:
    name = spec.name  # type: ignore[attr-defined]
    kind = spec.kind  # type: ignore[attr-defined]
    assert NAME_RE.fullmatch(name), name
    assert "__" not in name
    assert kind in ("gauge", "counter", "histogram")
    if kind == "counter":
        assert name.endswith("_total")
    else:
        assert not name.endswith("_total")
    if spec.unit:  # type: ignore[attr-defined]
        assert name.endswith(f"_{spec.unit}") or name.endswith(f"_{spec.unit}_total")  # type: ignore[attr-defined]
    for label in spec.labels:  # type: ignore[attr-defined]
        assert LABEL_RE.fullmatch(label) and not label.startswith("__")
    assert spec.help.strip()  # type: ignore[attr-defined]


def test_self_metric_names_are_unique() -> None:
    names = [s.name for s in SELF_METRICS]
    assert len(names) == len(set(names))


def test_exposition_has_every_self_metric_and_no_created_series() -> None:
    telemetry = Telemetry("9.9.9")
    telemetry["predis_agent_collection_runs_total"].inc()
    telemetry["predis_agent_plugin_errors_total"].labels(plugin="p", hook="h").inc()
    telemetry["predis_agent_sink_points_sent_total"].labels(sink="s").inc(2)
    telemetry["predis_agent_collection_duration_seconds"].observe(0.02)
    text = exposition(telemetry)
    assert "_created" not in text
    families = set(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
    for spec in SELF_METRICS:
        # Counter families are written with or without _total depending on the client version.
        assert (spec.name, spec.kind) in families or (spec.name.removesuffix("_total"), spec.kind) in families, spec.name
    build = re.search(r'^predis_agent_build_info\{(.*)\} 1\.0$', text, flags=re.M)
    assert build is not None and 'version="9.9.9"' in build.group(1)
    assert f'python_version="{platform.python_version()}"' in build.group(1) and 'native="' in build.group(1)
    assert "predis_agent_collection_runs_total 1.0" in text
    assert 'predis_agent_plugin_errors_total{hook="h",plugin="p"} 1.0' in text
    assert 'predis_agent_sink_points_sent_total{sink="s"} 2.0' in text
    assert 'predis_agent_collection_duration_seconds_bucket{le="0.05"} 1.0' in text
    assert "predis_agent_collection_duration_seconds_count 1.0" in text


def test_metrics_are_reachable_by_their_full_name() -> None:
    telemetry = Telemetry("t")
    for spec in SELF_METRICS:
        assert telemetry[spec.name] is telemetry.metrics[spec.name]
    telemetry["predis_agent_http_auth_failures_total"].inc(3)
    assert telemetry.registry.get_sample_value("predis_agent_http_auth_failures_total") == 3


# ----------------------------------------------------------------------------- collected batches


def test_set_batch_exposes_metrics_as_families_with_labels() -> None:
    telemetry = Telemetry("t")
    telemetry.set_batch(
        [
            Metric("cache_hit_ratio", 0.75, labels={"tenant": "acme", "tier": "hot"}),
            Metric("cache_hit_ratio", 0.25, labels={"tier": "cold", "tenant": "acme"}),  # label order is irrelevant
            Metric("cache_requests_total", 42, kind="counter", labels={"tenant": "acme"}, help="Requests served."),
            Metric("cache_entries", 7),
        ]
    )
    get = telemetry.registry.get_sample_value
    assert get("cache_hit_ratio", {"tenant": "acme", "tier": "hot"}) == 0.75
    assert get("cache_hit_ratio", {"tenant": "acme", "tier": "cold"}) == 0.25
    assert get("cache_requests_total", {"tenant": "acme"}) == 42
    assert get("cache_entries") == 7
    text = exposition(telemetry)
    assert "# TYPE cache_hit_ratio gauge" in text
    assert re.search(r"^# TYPE cache_requests(_total)? counter$", text, flags=re.M)
    assert re.search(r"^# HELP cache_requests(_total)? Requests served\.$", text, flags=re.M)
    assert "# HELP cache_entries cache_entries" in text  # the name stands in for missing help


def test_set_batch_skips_non_finite_values() -> None:
    telemetry = Telemetry("t")
    telemetry.set_batch(
        [
            Metric("temp", math.nan, labels={"gpu": "0"}),
            Metric("temp", 61.0, labels={"gpu": "1"}),
            Metric("temp", math.inf, labels={"gpu": "2"}),
            Metric("only_bad", -math.inf),
        ]
    )
    get = telemetry.registry.get_sample_value
    assert get("temp", {"gpu": "1"}) == 61.0
    assert get("temp", {"gpu": "0"}) is None and get("temp", {"gpu": "2"}) is None
    text = exposition(telemetry)
    assert "only_bad" not in text
    assert "NaN" not in text and "Inf" not in text.replace('le="+Inf"', "")


def test_set_batch_replaces_the_previous_batch_and_copies_it() -> None:
    telemetry = Telemetry("t")
    batch = [Metric("first_round", 1)]
    telemetry.set_batch(batch)
    batch.append(Metric("added_later", 1))  # the caller's list is not shared
    assert telemetry.registry.get_sample_value("added_later") is None
    telemetry.set_batch([Metric("second_round", 2)])
    assert telemetry.registry.get_sample_value("first_round") is None
    assert telemetry.registry.get_sample_value("second_round") == 2
    telemetry.set_batch([])
    assert "second_round" not in exposition(telemetry)


def test_samples_with_different_label_keys_are_not_mislabelled() -> None:
    telemetry = Telemetry("t")
    telemetry.set_batch([Metric("mixed", 1.0, labels={"disk": "sda"}), Metric("mixed", 2.0, labels={"nic": "eth0"})])
    assert telemetry.registry.get_sample_value("mixed", {"disk": "sda"}) == 1.0
    assert telemetry.registry.get_sample_value("mixed", {"disk": "eth0"}) is None
    assert telemetry.registry.get_sample_value("mixed", {"nic": "eth0"}) == 2.0
    text = exposition(telemetry)
    assert 'mixed{disk="sda"} 1.0' in text and 'mixed{nic="eth0"} 2.0' in text
    assert text.count("# TYPE mixed ") == 1  # still one family


# ----------------------------------------------------------------------------- isolation


def test_two_telemetry_instances_are_independent() -> None:
    a, b = Telemetry("a"), Telemetry("b")
    assert a.registry is not b.registry
    a["predis_agent_collection_runs_total"].inc(5)
    a.set_batch([Metric("only_in_a", 1)])
    assert a.registry.get_sample_value("predis_agent_collection_runs_total") == 5
    assert b.registry.get_sample_value("predis_agent_collection_runs_total") == 0
    assert b.registry.get_sample_value("only_in_a") is None
    labels = {"python_version": platform.python_version(), "native": _native.blake2b_lanes()}
    assert b.registry.get_sample_value("predis_agent_build_info", {"version": "b", **labels}) == 1
    assert b.registry.get_sample_value("predis_agent_build_info", {"version": "a", **labels}) is None
    # Nothing leaks into prometheus_client's process-wide default registry.
    assert prometheus_client.REGISTRY.get_sample_value("predis_agent_collection_runs_total") is None


def test_summaries_are_exposed_as_count_and_sum_and_pushed_as_samples() -> None:
    from agent.telemetry import Metric

    telemetry = Telemetry("t")
    telemetry.set_batch([Metric("predis_drift_check_duration_seconds", 1.25, "summary", {}, "Wall time.", count=5)])
    text = telemetry.exposition("")[0].decode()
    assert "# TYPE predis_drift_check_duration_seconds summary" in text
    assert "predis_drift_check_duration_seconds_count 5.0" in text
    assert "predis_drift_check_duration_seconds_sum 1.25" in text
