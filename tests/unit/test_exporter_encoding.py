# SPDX-License-Identifier: Apache-2.0
"""Encoding of the push exporters (Datadog, New Relic, CloudWatch) and what they share.

Pure unit tests: exporters are built directly, batches of :class:`agent.telemetry.Metric`
go through ``encode``, and the payloads are checked against the vendors' documented
limits and against the input. Nothing is sent (``send`` is never called), nothing sleeps.
Expected values are derived from the input and the vendor limits, never copied from a run.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import math
import time
import types
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from agent.docgen import metric_registry
from agent.runtime import Event
from agent.sinks import (
    DeltaTracker,
    ExportAuthError,
    ExportError,
    InvalidPayloadError,
    Payload,
    PayloadTooLargeError,
    TransientExportError,
    http_error,
    parse_retry_after,
)
from agent.telemetry import Metric
from plugins.exporters import cloudwatch, datadog, newrelic
from plugins.exporters.base import (
    EncodeReport,
    chunk,
    dotted_name,
    json_size,
    to_points,
)
from plugins.exporters.cloudwatch import CloudWatchExporter
from plugins.exporters.datadog import DatadogExporter
from plugins.exporters.newrelic import NewRelicExporter

T0 = 1_700_000_000.0
STEP = 10.0
# Every metric the agent and the built-in plugins declare (imports them: their units apply).
METRIC_REGISTRY = metric_registry()


# ----------------------------------------------------------------------------- helpers
def make_agent(ready: bool = True, components: dict[str, Any] | None = None) -> Any:
    return types.SimpleNamespace(readiness={"ready": ready, "components": components or {}})


def dd_exporter(agent: Any = None, **overrides: Any) -> DatadogExporter:
    section: dict[str, Any] = {
        "api_host": "http://127.0.0.1:1/datadog",
        "api_key": None,
        "tags": ["env:test"],
        "host": "h1",
        "compress": True,
        "events": True,
        "service_check": False,
    }
    section.update(overrides)
    return DatadogExporter(make_agent() if agent is None else agent, section)


def nr_exporter(**overrides: Any) -> NewRelicExporter:
    section: dict[str, Any] = {
        "region": "us",
        "host": None,
        "event_host": None,
        "port": 443,
        "api_key": None,
        "ca_file": None,
        "attributes": {"service": "predis"},
        "events": True,
    }
    section.update(overrides)
    return NewRelicExporter(make_agent(), section)


def cw_exporter(**overrides: Any) -> CloudWatchExporter:
    section: dict[str, Any] = {
        "namespace": "Predis",
        "region": "us-east-1",
        "endpoint_url": None,
        "profile": None,
        "role_arn": None,
        "storage_resolution": 60,
        "dimensions": {"Host": "h1"},
        "alarms": [],
    }
    section.update(overrides)
    return CloudWatchExporter(make_agent(), section, attempt_timeout=5.0)


def compact(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def gauge(name: str, value: float, labels: dict[str, str] | None = None, ts: float = T0) -> Metric:
    return Metric(name, value, "gauge", dict(labels or {}), "", timestamp=ts)


def counter(name: str, value: float, labels: dict[str, str] | None = None, ts: float = T0) -> Metric:
    return Metric(name, value, "counter", dict(labels or {}), "", timestamp=ts)


def histogram(
    name: str,
    bounds: Sequence[float],
    observations: Sequence[float],
    total: float,
    labels: dict[str, str] | None = None,
    ts: float = T0,
    include_inf: bool = False,
) -> Metric:
    """A cumulative histogram from per-bucket observation counts.

    ``observations`` has one entry per finite bound plus one for the ``+Inf`` bucket.
    """
    assert len(observations) == len(bounds) + 1
    buckets: list[tuple[float, float]] = []
    running = 0.0
    for bound, n in zip(bounds, observations[:-1]):
        running += n
        buckets.append((float(bound), running))
    count = running + observations[-1]
    if include_inf:
        buckets.append((math.inf, count))
    return Metric(name, total, "histogram", dict(labels or {}), "", timestamp=ts, buckets=tuple(buckets), count=count)


def added(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x + y for x, y in zip(a, b)]


def numbers_in(value: Any) -> Iterator[float]:
    """Every int/float leaf of a JSON-like value."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from numbers_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from numbers_in(v)


def assert_report_matches(report: EncodeReport, payloads: list[Payload]) -> None:
    assert report.payloads == len(payloads)
    assert report.points == sum(p.points for p in payloads)
    assert report.bytes == sum(p.nbytes for p in payloads)


BOUNDS = (0.1, 0.5, 1.0, 5.0)
BASE_OBS = [1.0, 1.0, 1.0, 0.0, 0.0]


# ============================================================================= base
def test_delta_tracker_first_sample_is_a_baseline_then_delta_and_interval() -> None:
    tracker = DeltaTracker()
    assert tracker.delta("k", 10.0, T0) is None
    assert tracker.delta("k", 15.0, T0 + 30.0) == (5.0, 30.0)
    # Each key has its own baseline.
    assert tracker.delta("other", 15.0, T0 + 30.0) is None
    assert tracker.delta("k", 15.0, T0 + 45.0) == (0.0, 15.0)


def test_delta_tracker_counter_reset_gives_the_new_value() -> None:
    tracker = DeltaTracker()
    tracker.delta("k", 100.0, T0)
    # A lower value means the process restarted: everything counted since is the delta.
    assert tracker.delta("k", 7.0, T0 + STEP) == (7.0, STEP)
    assert tracker.delta("k", 9.0, T0 + 2 * STEP) == (2.0, STEP)


def test_delta_tracker_forgets_missing_series() -> None:
    tracker = DeltaTracker()
    tracker.delta("a", 1.0, T0)
    tracker.delta("b", 1.0, T0)
    tracker.forget_missing(["a"])
    assert tracker.delta("a", 3.0, T0 + STEP) == (2.0, STEP)
    assert tracker.delta("b", 3.0, T0 + STEP) is None


def test_to_points_skips_and_counts_non_finite_values() -> None:
    batch = [
        gauge("g_nan", math.nan),
        gauge("g_inf", math.inf),
        gauge("g_ninf", -math.inf),
        counter("c_nan", math.nan),
        histogram("h_nan", BOUNDS, BASE_OBS, math.nan),
        Metric("h_inf_count", 1.0, "histogram", {}, "", timestamp=T0, buckets=((1.0, 1.0),), count=math.inf),
        gauge("g_ok", 2.5),
    ]
    report = EncodeReport()
    points = to_points(batch, DeltaTracker(), report)
    assert [(p.name, p.value) for p in points] == [("g_ok", 2.5)]
    assert report.skipped_non_finite == len(batch) - 1
    assert report.baselines == 0


def test_to_points_counter_baseline_then_delta() -> None:
    tracker = DeltaTracker()
    first = EncodeReport()
    points = to_points([counter("c_total", 40.0, {"a": "1"}), gauge("g", 1.0)], tracker, first)
    assert [p.name for p in points] == ["g"]
    assert first.baselines == 1
    second = EncodeReport()
    points = to_points([counter("c_total", 55.0, {"a": "1"}, ts=T0 + STEP), gauge("g", 1.0, ts=T0 + STEP)], tracker, second)
    (count,) = [p for p in points if p.kind == "count"]
    assert (count.value, count.interval, count.labels) == (15.0, STEP, {"a": "1"})
    assert second.baselines == 0


@pytest.mark.parametrize("include_inf", [False, True])
@pytest.mark.parametrize(
    ("increment", "low", "high"),
    [
        # observations in (0.1, 0.5], (1, 5] and +Inf: low is 0.1, +Inf is bounded by 5.0
        ([0.0, 2.0, 0.0, 3.0, 1.0], 0.1, 5.0),
        # only (0.5, 1.0]
        ([0.0, 0.0, 4.0, 0.0, 0.0], 0.5, 1.0),
        # only the first bucket (-inf, 0.1]: low is 0 (observations are not negative)
        ([2.0, 0.0, 0.0, 0.0, 0.0], 0.0, 0.1),
    ],
)
def test_histogram_delta_per_bucket_counts_sums_and_bounds(increment: list[float], low: float, high: float, include_inf: bool) -> None:
    tracker = DeltaTracker()
    name = "predis_agent_collection_duration_seconds"
    report = EncodeReport()
    assert to_points([histogram(name, BOUNDS, BASE_OBS, 1.5, include_inf=include_inf)], tracker, report) == []
    assert report.baselines == 1
    grown = histogram(name, BOUNDS, added(BASE_OBS, increment), 1.5 + 4.25, ts=T0 + STEP, include_inf=include_inf)
    (point,) = to_points([grown], tracker, EncodeReport())
    assert point.kind == "summary"
    assert point.buckets == tuple(zip([*BOUNDS, math.inf], increment))
    assert point.count == sum(increment)
    assert point.sum == pytest.approx(4.25)
    assert point.interval == STEP
    assert (point.low, point.high) == (low, high)
    assert point.unit == "seconds"


def test_chunk_respects_max_items_and_max_bytes() -> None:
    items = [{"k": "x" * (i * 7 % 53)} for i in range(200)]
    max_items, max_bytes, overhead = 7, 200, 13
    runs = chunk(items, max_items=max_items, max_bytes=max_bytes, overhead=overhead)
    assert [item for run, _ in runs for item in run] == items  # nothing lost, order kept
    for run, size in runs:
        assert 1 <= len(run) <= max_items
        assert size == overhead + json_size(run)
        assert size <= max_bytes
    # The byte limit, not only the item limit, made runs here; but not one item per run.
    assert math.ceil(len(items) / max_items) < len(runs) < len(items)


def test_chunk_item_limit_alone() -> None:
    items = list(range(25))
    runs = chunk(items, max_items=10, max_bytes=10**6, overhead=0)
    assert [run for run, _ in runs] == [items[:10], items[10:20], items[20:]]
    (whole,) = chunk(items, max_items=100, max_bytes=10**6, overhead=5)
    assert whole == (items, 5 + json_size(items))


def test_chunk_gives_an_oversize_item_a_run_of_its_own() -> None:
    big = "x" * 500
    runs = chunk(["a", big, "b"], max_items=10, max_bytes=100, overhead=2)
    assert [run for run, _ in runs] == [["a"], [big], ["b"]]
    assert runs[1][1] > 100  # reported as too large: the exporter rejects it


def test_dotted_name_drops_the_counter_suffix() -> None:
    assert dotted_name("predis_cache_hits_total") == "predis.cache.hits"
    assert dotted_name("predis_cache_keys") == "predis.cache.keys"


def test_dotted_name_is_injective_over_the_registry() -> None:
    seen: dict[str, str] = {}
    for spec in METRIC_REGISTRY:
        dotted = dotted_name(spec.name)
        assert dotted not in seen, f"{spec.name} and {seen[dotted]} both export as {dotted}"
        seen[dotted] = spec.name


def test_datadog_names_of_every_registry_metric_are_valid_and_distinct() -> None:
    """Histograms become <name>.count/.sum/.avg: none may clash with another metric's name."""
    exported: dict[str, str] = {}
    for spec in METRIC_REGISTRY:
        base = dotted_name(spec.name)
        names = [f"{base}.{suffix}" for suffix in ("count", "sum", "avg")] if spec.kind == "histogram" else [base]
        for name in names:
            assert len(name) <= datadog.MAX_NAME_LENGTH
            assert datadog._NAME_RE.match(name), name
            assert name not in exported, f"{spec.name} and {exported[name]} both export {name}"
            exported[name] = spec.name


# ============================================================================= http_error
@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_http_error_success_is_none(status: int) -> None:
    assert http_error(status, "fine", "7") is None


@pytest.mark.parametrize(
    ("status", "cls", "kind"),
    [
        (413, PayloadTooLargeError, "too_large"),
        (400, InvalidPayloadError, "invalid"),
        (422, InvalidPayloadError, "invalid"),
        (401, ExportAuthError, "auth"),
        (403, ExportAuthError, "auth"),
        (404, TransientExportError, "transient"),
        (408, TransientExportError, "transient"),
        (429, TransientExportError, "transient"),
        (500, TransientExportError, "transient"),
        (503, TransientExportError, "transient"),
    ],
)
def test_http_error_classification(status: int, cls: type[ExportError], kind: str) -> None:
    error = http_error(status, "the vendor said no", None, where="vendor: ")
    assert type(error) is cls
    assert error.kind == kind
    assert error.status == status
    assert error.answer == "the vendor said no"
    assert str(error).startswith(f"vendor: HTTP {status}")


@pytest.mark.parametrize("status", [429, 503])
def test_http_error_retry_after_seconds(status: int) -> None:
    error = http_error(status, "", "7")
    assert isinstance(error, TransientExportError)
    assert error.retry_after == 7.0


def test_http_error_retry_after_http_date() -> None:
    before = time.time()
    header = email.utils.formatdate(before + 120, usegmt=True)
    error = http_error(503, "", header)
    after = time.time()
    assert isinstance(error, TransientExportError)
    assert error.retry_after is not None
    # The date has whole seconds: up to 1 s lost to truncation, plus the time this took.
    assert 120 - 1 - (after - before) <= error.retry_after <= 120


def test_parse_retry_after_http_date_against_a_given_now() -> None:
    assert parse_retry_after(email.utils.formatdate(T0 + 90, usegmt=True), now=T0) == 90.0
    assert parse_retry_after(email.utils.formatdate(T0 - 90, usegmt=True), now=T0) == 0.0


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "Tuesday-ish", "nan", "inf"])
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_parse_retry_after_negative_is_zero() -> None:
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(" 2.5 ") == 2.5


# ============================================================================= Datadog
def metric_payloads(payloads: list[Payload]) -> list[Payload]:
    return [p for p in payloads if p.kind == "metrics"]


def all_series(payloads: list[Payload]) -> list[dict[str, Any]]:
    return [s for p in metric_payloads(payloads) for s in p.body["series"]]


def test_datadog_series_shapes() -> None:
    exporter = dd_exporter()
    hname = "predis_agent_collection_duration_seconds"
    first = [
        gauge("predis_cache_memory_bytes", 1024.0, {"tier": "device"}),
        counter("predis_cache_hits_total", 100.0),
        histogram(hname, BOUNDS, BASE_OBS, 1.5, {"sink": "dd"}),
    ]
    payloads = exporter.encode(first)
    assert exporter.last_report.baselines == 2
    assert [s["metric"] for s in all_series(payloads)] == ["predis.cache.memory.bytes"]

    increment = [0.0, 2.0, 0.0, 2.0, 0.0]
    second = [
        gauge("predis_cache_memory_bytes", 2048.0, {"tier": "device"}, ts=T0 + STEP),
        counter("predis_cache_hits_total", 125.0, ts=T0 + STEP),
        histogram(hname, BOUNDS, added(BASE_OBS, increment), 1.5 + 6.0, {"sink": "dd"}, ts=T0 + STEP),
    ]
    payloads = exporter.encode(second)
    assert_report_matches(exporter.last_report, payloads)
    series = {s["metric"]: s for s in all_series(payloads)}
    for s in series.values():
        assert s["host"] == "h1"
        assert isinstance(s["tags"], list) and "env:test" in s["tags"]
        assert s["points"][0][0] == int(T0 + STEP)

    g = series["predis.cache.memory.bytes"]
    assert g["type"] == "gauge" and "interval" not in g
    assert g["points"] == [[int(T0 + STEP), 2048.0]]
    assert g["tags"] == ["tier:device", "env:test"]

    c = series["predis.cache.hits"]
    assert (c["type"], c["interval"], c["points"][0][1]) == ("count", int(STEP), 25.0)
    assert c["tags"] == ["env:test"]  # no labels: still tagged, with the global tags

    base = dotted_name(hname)
    assert set(series) == {"predis.cache.memory.bytes", "predis.cache.hits", f"{base}.count", f"{base}.sum", f"{base}.avg"}
    for suffix, value in (("count", sum(increment)), ("sum", 6.0)):
        s = series[f"{base}.{suffix}"]
        assert (s["type"], s["interval"]) == ("count", int(STEP))
        assert s["points"][0][1] == pytest.approx(value)
        assert s["tags"] == ["sink:dd", "env:test"]
    avg = series[f"{base}.avg"]
    assert avg["type"] == "gauge"
    assert avg["points"][0][1] == pytest.approx(6.0 / sum(increment))


def test_datadog_histogram_without_observations_has_no_avg() -> None:
    exporter = dd_exporter()
    hname = "predis_agent_collection_duration_seconds"
    exporter.encode([histogram(hname, BOUNDS, BASE_OBS, 1.5)])
    names = {s["metric"] for s in all_series(exporter.encode([histogram(hname, BOUNDS, BASE_OBS, 1.5, ts=T0 + STEP)]))}
    base = dotted_name(hname)
    assert names == {f"{base}.count", f"{base}.sum"}  # an average of nothing would be 0/0


def test_datadog_payloads_stay_within_the_series_limit() -> None:
    exporter = dd_exporter()
    n = 25_000
    payloads = exporter.encode([gauge("predis_cache_keys", float(i), {"series": str(i)}) for i in range(n)])
    assert len(payloads) >= math.ceil(n / datadog.MAX_SERIES_PER_PAYLOAD)
    for p in payloads:
        assert p.kind == "metrics"
        assert len(p.body["series"]) <= datadog.MAX_SERIES_PER_PAYLOAD
        assert p.points == len(p.body["series"])
        assert compact(p.body) <= datadog.MAX_PAYLOAD_BYTES
        assert p.nbytes >= compact(p.body)
    tags = [s["tags"][0] for s in all_series(payloads)]
    assert sorted(tags) == sorted(f"series:{i}" for i in range(n))
    assert_report_matches(exporter.last_report, payloads)


def test_datadog_payloads_stay_within_the_byte_limit() -> None:
    exporter = dd_exporter()
    n = 6_000
    labels = {f"l{j}": "v" * 180 for j in range(4)}
    batch = [gauge("predis_cache_keys", float(i), {**labels, "i": str(i)}) for i in range(n)]
    payloads = exporter.encode(batch)
    series = all_series(payloads)
    assert len(series) == n
    total = sum(compact(s) for s in series)
    assert total > datadog.MAX_PAYLOAD_BYTES  # the input really needs splitting by bytes
    assert len(payloads) >= math.ceil(total / datadog.MAX_PAYLOAD_BYTES)
    for p in payloads:
        assert compact(p.body) <= datadog.MAX_PAYLOAD_BYTES
        assert len(p.body["series"]) < datadog.MAX_SERIES_PER_PAYLOAD


def test_datadog_split_halves_a_payload_preserving_all_series() -> None:
    exporter = dd_exporter()
    (payload,) = exporter.encode([gauge("predis_cache_keys", float(i), {"i": str(i)}) for i in range(11)])
    parts = exporter.split(payload)
    assert parts is not None and len(parts) == 2
    assert [len(p.body["series"]) for p in parts] == [5, 6]
    assert [s for p in parts for s in p.body["series"]] == payload.body["series"]
    for p in parts:
        assert p.kind == "metrics"
        assert p.points == len(p.body["series"])
        assert p.nbytes == compact(p.body)
        assert p.created == payload.created
    (single,) = exporter.encode([gauge("predis_cache_keys", 1.0)])
    assert exporter.split(single) is None  # one series cannot be halved


def test_datadog_tag_values_are_sanitised_and_bounded() -> None:
    exporter = dd_exporter()
    raw = "a b,c|d#e@f\tg\nh"
    payloads = exporter.encode([gauge("predis_cache_keys", 1.0, {"path": raw, "long": "z" * 500})])
    (series,) = all_series(payloads)
    path_tag = next(t for t in series["tags"] if t.startswith("path:"))
    value = path_tag[len("path:") :]
    assert len(value) == len(raw)
    assert not set(value) & set(" ,|#@\t\n")
    assert [c for c in value if c.isalnum()] == [c for c in raw if c.isalnum()]
    long_tag = next(t for t in series["tags"] if t.startswith("long:"))
    assert len(long_tag) == datadog.MAX_TAG_LENGTH
    assert exporter.last_report.trimmed.get("tag_length") == 1


def test_datadog_rejects_names_it_cannot_send() -> None:
    exporter = dd_exporter()
    payloads = exporter.encode([gauge("9starts_with_digit", 1.0), gauge("x" * (datadog.MAX_NAME_LENGTH + 1), 1.0), gauge("ok", 1.0)])
    assert [s["metric"] for s in all_series(payloads)] == ["ok"]
    assert exporter.last_report.rejected == {"invalid_name": 2}


def test_datadog_service_check_follows_readiness() -> None:
    ready = dd_exporter(make_agent(ready=True), service_check=True)
    payloads = ready.encode([])
    (check,) = [p for p in payloads if p.kind == "check"]
    assert check.body["status"] == datadog.CHECK_OK == 0
    assert check.body["check"] == datadog.SERVICE_CHECK
    assert check.body["host_name"] == "h1"
    assert check.body["tags"] == ["env:test"]
    assert ready.split(check) is None

    agent = make_agent(ready=False, components={"cache": {"ok": False}, "gpu": {"ok": True}})
    not_ready = dd_exporter(agent, service_check=True)
    (check,) = [p for p in not_ready.encode([gauge("predis_cache_keys", 1.0)]) if p.kind == "check"]
    assert check.body["status"] == datadog.CHECK_CRITICAL == 2
    assert "cache" in check.body["message"] and "gpu" not in check.body["message"]

    assert not [p for p in dd_exporter(service_check=False).encode([]) if p.kind == "check"]


def test_datadog_events_are_bounded() -> None:
    exporter = dd_exporter()
    events = [
        Event("sink_auth_failed", {"sink": "datadog", "blob": "y" * 10_000, "n": 3}, T0),
        Event("k" * 300, {"nested": {"a": [1, 2]}}, T0 + 1.5),
    ]
    payloads = exporter.encode_events(events)
    assert [p.kind for p in payloads] == ["event", "event"]
    for payload, event in zip(payloads, events):
        body = payload.body
        assert len(body["title"]) <= datadog.MAX_EVENT_TITLE
        assert len(body["text"]) <= datadog.MAX_EVENT_TEXT
        assert body["date_happened"] == int(event.time)
        assert body["host"] == "h1"
        assert f"event:{event.kind}" in body["tags"] and "env:test" in body["tags"]
        assert payload.nbytes == compact(body)
    assert payloads[0].body["alert_type"] == "error"
    assert json.loads(payloads[1].body["text"]) == {"nested": json.dumps({"a": [1, 2]}, separators=(",", ":"))}
    assert dd_exporter(events=False).encode_events(events) == []


# ============================================================================= New Relic
def nr_metrics(payloads: list[Payload]) -> list[dict[str, Any]]:
    return [m for p in payloads for m in p.body["metrics"]]


def test_newrelic_metric_shapes() -> None:
    exporter = nr_exporter()
    hname = "predis_agent_collection_duration_seconds"
    exporter.encode([counter("predis_cache_hits_total", 10.0, {"a": "1"}), histogram(hname, BOUNDS, BASE_OBS, 1.5)])
    assert exporter.last_report.baselines == 2
    end = T0 + STEP
    increment = [0.0, 0.0, 4.0, 0.0, 0.0]  # all in (0.5, 1.0]
    payloads = exporter.encode(
        [
            gauge("predis_cache_keys", 42.0, {"b": "2"}, ts=end),
            counter("predis_cache_hits_total", 17.0, {"a": "1"}, ts=end),
            histogram(hname, BOUNDS, added(BASE_OBS, increment), 1.5 + 3.0, ts=end),
        ]
    )
    assert_report_matches(exporter.last_report, payloads)
    metrics = {m["name"]: m for m in nr_metrics(payloads)}
    end_ms = int(end * 1000)
    interval_ms = int(STEP * 1000)

    g = metrics["predis.cache.keys"]
    assert "type" not in g and "interval.ms" not in g
    assert (g["value"], g["timestamp"], g["attributes"]) == (42.0, end_ms, {"b": "2"})

    c = metrics["predis.cache.hits"]
    assert (c["type"], c["value"], c["interval.ms"]) == ("count", 7.0, interval_ms)
    assert c["timestamp"] == end_ms - interval_ms  # the interval's start
    assert c["attributes"] == {"a": "1"}

    s = metrics[dotted_name(hname)]
    assert (s["type"], s["interval.ms"], s["timestamp"]) == ("summary", interval_ms, end_ms - interval_ms)
    assert set(s["value"]) == {"count", "sum", "min", "max"}
    assert s["value"]["count"] == sum(increment)
    assert s["value"]["sum"] == pytest.approx(3.0)
    assert (s["value"]["min"], s["value"]["max"]) == (0.5, 1.0)  # bounds of the only non-empty bucket

    for p in payloads:
        assert p.body["common"] == {"attributes": {"service": "predis"}}


def test_newrelic_empty_summary_is_all_zero() -> None:
    exporter = nr_exporter()
    hname = "predis_agent_collection_duration_seconds"
    exporter.encode([histogram(hname, BOUNDS, BASE_OBS, 1.5)])
    (metric,) = nr_metrics(exporter.encode([histogram(hname, BOUNDS, BASE_OBS, 1.5, ts=T0 + STEP)]))
    assert metric["value"] == {"count": 0, "sum": 0.0, "min": 0.0, "max": 0.0}


def test_newrelic_attributes_are_trimmed_to_the_limits() -> None:
    exporter = nr_exporter()
    extra = 10
    labels = {f"k{i:03d}": str(i) for i in range(newrelic.MAX_ATTRIBUTES + extra)}
    payloads = exporter.encode(
        [
            gauge("predis_cache_keys", 1.0, labels),
            gauge("predis_cache_max_keys", 1.0, {"long": "v" * 5000, "n" * 300: "x"}),
        ]
    )
    metrics = {m["name"]: m for m in nr_metrics(payloads)}
    many = metrics["predis.cache.keys"]["attributes"]
    common = payloads[0].body["common"]["attributes"]
    # The common attributes are added to every metric at ingest: together within the cap.
    assert common and len(many) + len(common) == newrelic.MAX_ATTRIBUTES
    assert all(labels[k] == v for k, v in many.items())
    bounded = metrics["predis.cache.max.keys"]["attributes"]
    assert len(bounded["long"]) == newrelic.MAX_ATTRIBUTE_VALUE
    assert "n" * newrelic.MAX_ATTRIBUTE_NAME in bounded
    assert all(len(k) <= newrelic.MAX_ATTRIBUTE_NAME for k in bounded)
    assert exporter.last_report.trimmed == {"attributes": extra + len(common), "attribute_value": 1, "attribute_name": 1}


def test_newrelic_payloads_stay_within_the_limits() -> None:
    exporter = nr_exporter()
    n = 12_000
    batch = [gauge("predis_cache_keys", float(i), {"i": str(i), "pad": "p" * 100}) for i in range(n)]
    payloads = exporter.encode(batch)
    metrics = nr_metrics(payloads)
    assert sorted(m["attributes"]["i"] for m in metrics) == sorted(str(i) for i in range(n))
    total = sum(compact(m) for m in metrics)
    assert total > newrelic.MAX_PAYLOAD_BYTES
    assert len(payloads) >= max(math.ceil(total / newrelic.MAX_PAYLOAD_BYTES), math.ceil(n / newrelic.MAX_METRICS_PER_PAYLOAD))
    for p in payloads:
        wire = [p.body]  # the SDK sends the block inside a list
        assert compact(wire) <= newrelic.MAX_PAYLOAD_BYTES
        assert p.nbytes >= compact(wire)
        assert len(p.body["metrics"]) <= newrelic.MAX_METRICS_PER_PAYLOAD
        assert p.body["common"] == {"attributes": {"service": "predis"}}
    parts = exporter.split(payloads[0])
    assert parts is not None
    assert [m for part in parts for m in part.body["metrics"]] == payloads[0].body["metrics"]
    assert all(part.body["common"] == payloads[0].body["common"] for part in parts)


def test_newrelic_common_attribute_values_are_bounded() -> None:
    exporter = nr_exporter(attributes={"service": "s" * 5000})
    assert len(exporter.common["attributes"]["service"]) == newrelic.MAX_ATTRIBUTE_VALUE


def test_newrelic_events() -> None:
    exporter = nr_exporter()
    many = {f"a{i}": i for i in range(400)}
    events = [
        Event("config_reloaded", {"generation": 3, "eventType": "Spoofed", "timestamp": 1}, T0 + 0.25),
        Event("model_rolled_back", many, T0 + 2.5),
    ]
    (payload,) = exporter.encode_events(events)
    assert payload.kind == "event"
    items = payload.body["events"]
    assert payload.points == len(items) == len(events)
    for item, event in zip(items, events):
        assert item["eventType"] == newrelic.EVENT_TYPE == "PredisAgentEvent"
        assert item["timestamp"] == int(event.time * 1000)
        assert item["kind"] == event.kind
        assert len(item) <= newrelic.MAX_EVENT_ATTRIBUTES
    assert items[0]["generation"] == 3
    parts = exporter.split(payload)
    assert parts is not None and [i for p in parts for i in p.body["events"]] == items
    assert nr_exporter(events=False).encode_events(events) == []
    assert exporter.encode_events([]) == []


# ============================================================================= CloudWatch
def cw_datums(payloads: list[Payload]) -> list[dict[str, Any]]:
    return [d for p in payloads for d in p.body["MetricData"]]


def test_cloudwatch_payloads_stay_within_the_datum_limit() -> None:
    exporter = cw_exporter()
    n = 2_500
    payloads = exporter.encode([gauge("predis_cache_keys", float(i), {"i": str(i)}) for i in range(n)])
    assert len(payloads) >= math.ceil(n / cloudwatch.MAX_DATUMS_PER_CALL)
    for p in payloads:
        assert p.body["Namespace"] == "Predis"
        assert len(p.body["MetricData"]) <= cloudwatch.MAX_DATUMS_PER_CALL
        assert compact(p.body) <= cloudwatch.MAX_REQUEST_BYTES
        assert p.nbytes >= compact(p.body)
    seen = sorted(next(d["Value"] for d in datum["Dimensions"] if d["Name"] == "i") for datum in cw_datums(payloads))
    assert seen == sorted(str(i) for i in range(n))
    assert_report_matches(exporter.last_report, payloads)


def test_cloudwatch_payloads_stay_within_the_byte_limit() -> None:
    exporter = cw_exporter()
    n = 200
    labels = {f"d{j:02d}": "v" * 1000 for j in range(cloudwatch.MAX_DIMENSIONS - 2)}
    payloads = exporter.encode([gauge("predis_cache_keys", float(i), {**labels, "i": str(i)}) for i in range(n)])
    datums = cw_datums(payloads)
    assert len(datums) == n
    total = sum(compact(d) for d in datums)
    assert total > cloudwatch.MAX_REQUEST_BYTES
    assert len(payloads) >= math.ceil(total / cloudwatch.MAX_REQUEST_BYTES)
    for p in payloads:
        assert compact(p.body) <= cloudwatch.MAX_REQUEST_BYTES


def test_cloudwatch_trims_dimensions_to_the_limit() -> None:
    exporter = cw_exporter()
    labels = {f"d{j:02d}": str(j) for j in range(40)}
    (payload,) = exporter.encode([gauge("predis_cache_keys", 1.0, labels)])
    (datum,) = payload.body["MetricData"]
    dims = datum["Dimensions"]
    assert len(dims) == cloudwatch.MAX_DIMENSIONS
    assert dims[0] == {"Name": "Host", "Value": "h1"}  # the configured dimensions come first
    assert len({d["Name"] for d in dims}) == len(dims)
    assert exporter.last_report.trimmed == {"dimensions": 1 + len(labels) - cloudwatch.MAX_DIMENSIONS}


def test_cloudwatch_drops_empty_dimension_values() -> None:
    exporter = cw_exporter()
    (payload,) = exporter.encode([gauge("predis_gpu_up", 1.0, {"gpu": "0", "mig": "", "uuid": ""})])
    (datum,) = payload.body["MetricData"]
    assert {d["Name"] for d in datum["Dimensions"]} == {"Host", "gpu"}
    assert all(d["Value"] for d in datum["Dimensions"])
    assert exporter.last_report.trimmed == {"empty_dimension_value": 2}


def test_cloudwatch_packs_a_wide_histogram_into_values_and_counts() -> None:
    exporter = cw_exporter()
    name = "predis_cache_command_duration_seconds"
    bounds = [0.001 * (i + 1) for i in range(400)]
    base = [1.0] * 400 + [1.0]
    increment = [float(i % 4) for i in range(400)] + [2.0]
    exporter.encode([histogram(name, bounds, base, 5.0, {"command": "get"})])
    payloads = exporter.encode([histogram(name, bounds, added(base, increment), 9.0, {"command": "get"}, ts=T0 + STEP)])
    (datum,) = cw_datums(payloads)
    values, counts = datum["Values"], datum["Counts"]
    assert "Value" not in datum
    assert len(values) == len(counts)
    assert 0 < len(values) <= cloudwatch.MAX_VALUES_PER_DATUM
    assert sum(counts) == sum(increment)
    assert all(c > 0 for c in counts)
    assert all(math.isfinite(v) for v in values)
    assert min(values) >= bounds[0] and max(values) <= bounds[-1]
    # PutMetricData lists each value once; bucket bounds increase.
    assert all(a < b for a, b in itertools.pairwise(values))
    assert datum["Unit"] == "Seconds"
    assert datum["Dimensions"] == [{"Name": "Host", "Value": "h1"}, {"Name": "command", "Value": "get"}]


@pytest.mark.parametrize("include_inf", [False, True])
def test_cloudwatch_maps_the_inf_bucket_to_a_finite_value_listed_once(include_inf: bool) -> None:
    exporter = cw_exporter()
    name = "predis_agent_collection_duration_seconds"
    exporter.encode([histogram(name, BOUNDS, BASE_OBS, 1.5, include_inf=include_inf)])
    increment = [0.0, 0.0, 0.0, 2.0, 3.0]  # in (1, 5] and above 5
    payloads = exporter.encode([histogram(name, BOUNDS, added(BASE_OBS, increment), 30.0, ts=T0 + STEP, include_inf=include_inf)])
    (datum,) = cw_datums(payloads)
    assert all(math.isfinite(v) for v in datum["Values"])
    assert max(datum["Values"]) == BOUNDS[-1]
    assert len(set(datum["Values"])) == len(datum["Values"])
    assert sum(datum["Counts"]) == sum(increment)
    assert len(datum["Values"]) == len(datum["Counts"])


def test_cloudwatch_histogram_without_new_observations_sends_nothing() -> None:
    exporter = cw_exporter()
    name = "predis_agent_collection_duration_seconds"
    assert exporter.encode([histogram(name, BOUNDS, BASE_OBS, 1.5)]) == []
    assert exporter.last_report.baselines == 1
    assert exporter.encode([histogram(name, BOUNDS, BASE_OBS, 1.5, ts=T0 + STEP)]) == []
    assert exporter.last_report.points == 0


def test_cloudwatch_counters_are_deltas_in_count_units() -> None:
    exporter = cw_exporter()
    assert exporter.encode([counter("predis_cache_hits_total", 100.0)]) == []
    (datum,) = cw_datums(exporter.encode([counter("predis_cache_hits_total", 130.0, ts=T0 + STEP)]))
    assert (datum["MetricName"], datum["Value"], datum["Unit"]) == ("predis_cache_hits_total", 30.0, "Count")
    assert datum["Timestamp"] == T0 + STEP
    assert datum["StorageResolution"] == 60
    (datum,) = cw_datums(exporter.encode([counter("predis_cache_hits_total", 4.0, ts=T0 + 2 * STEP)]))
    assert datum["Value"] == 4.0  # a reset: counted since the restart


def test_cloudwatch_never_sends_non_finite_numbers() -> None:
    exporter = cw_exporter()
    name = "predis_agent_collection_duration_seconds"

    def batch(ts: float, obs: list[float], total: float) -> list[Metric]:
        return [
            gauge("predis_cache_keys", math.nan, {"n": "nan"}, ts=ts),
            gauge("predis_cache_keys", math.inf, {"n": "inf"}, ts=ts),
            gauge("predis_cache_keys", -math.inf, {"n": "-inf"}, ts=ts),
            gauge("predis_cache_keys", 3.0, {"n": "ok"}, ts=ts),
            counter("predis_cache_misses_total", math.nan, ts=ts),
            counter("predis_cache_hits_total", 10.0 + ts - T0, ts=ts),
            histogram(name, BOUNDS, obs, total, ts=ts, include_inf=True),
            histogram(name, BOUNDS, obs, math.nan, {"n": "nan"}, ts=ts),
        ]

    exporter.encode(batch(T0, BASE_OBS, 1.5))
    payloads = exporter.encode(batch(T0 + STEP, added(BASE_OBS, [1.0, 0.0, 0.0, 1.0, 1.0]), 10.0))
    assert exporter.last_report.skipped_non_finite == 5
    datums = cw_datums(payloads)
    assert {d["MetricName"] for d in datums} == {"predis_cache_keys", "predis_cache_hits_total", name}
    for p in payloads:
        json.dumps(p.body, allow_nan=False)  # raises on NaN or infinity
        assert all(math.isfinite(x) and abs(x) <= cloudwatch.MAX_ABS_VALUE for x in numbers_in(p.body))


def test_cloudwatch_units_follow_the_registry() -> None:
    vendor_units = {"seconds": "Seconds", "bytes": "Bytes", "bytes_per_second": "Bytes/Second"}
    specs = {unit: next(s for s in METRIC_REGISTRY if s.kind == "gauge" and s.unit == unit) for unit in vendor_units}
    exporter = cw_exporter()
    batch = [gauge(spec.name, 1.0) for spec in specs.values()] + [gauge("not_in_the_registry", 1.0)]
    units = {d["MetricName"]: d["Unit"] for d in cw_datums(exporter.encode(batch))}
    for unit, spec in specs.items():
        assert spec.name.endswith(f"_{unit}")
        assert units[spec.name] == vendor_units[unit]
    assert units["not_in_the_registry"] == "None"


def test_cloudwatch_split_halves_metric_data() -> None:
    exporter = cw_exporter(namespace="Custom/NS")
    (payload,) = exporter.encode([gauge("predis_cache_keys", float(i), {"i": str(i)}) for i in range(9)])
    parts = exporter.split(payload)
    assert parts is not None and len(parts) == 2
    assert [len(p.body["MetricData"]) for p in parts] == [4, 5]
    assert [d for p in parts for d in p.body["MetricData"]] == payload.body["MetricData"]
    for p in parts:
        assert p.body["Namespace"] == "Custom/NS"
        assert p.points == len(p.body["MetricData"])


def test_cloudwatch_storage_resolution_must_be_1_or_60() -> None:
    assert cw_exporter(storage_resolution=1).storage_resolution == 1
    with pytest.raises(ValueError, match="storage_resolution"):
        cw_exporter(storage_resolution=30)


def test_histogram_reset_restarts_every_component_together() -> None:
    """A count that fell is a restart: count, sum and every bucket are 'since the reset'."""
    exporter = nr_exporter()
    name = "predis_agent_collection_duration_seconds"
    exporter.encode([histogram(name, BOUNDS, BASE_OBS, 1.5)])
    fresh = [1.0, 0.0, 0.0, 0.0, 0.0]  # one observation in the first bucket since the restart
    (metric,) = nr_metrics(exporter.encode([histogram(name, BOUNDS, fresh, 0.05, ts=T0 + STEP)]))
    assert metric["value"] == {"count": 1.0, "sum": 0.05, "min": 0.0, "max": BOUNDS[0]}


def test_a_falling_histogram_sum_alone_is_not_a_reset() -> None:
    """Observations can be negative: a sum that fell while the count grew is a delta."""
    deltas = DeltaTracker()
    assert deltas.delta_vector("h", (10.0, 5.0, 4.0, 10.0), 0.0, monotone=[0, 2, 3]) is None
    got = deltas.delta_vector("h", (12.0, 3.0, 5.0, 12.0), 10.0, monotone=[0, 2, 3])
    assert got == ((2.0, -2.0, 1.0, 2.0), 10.0)
    reset = deltas.delta_vector("h", (1.0, 0.5, 1.0, 1.0), 20.0, monotone=[0, 2, 3])
    assert reset == ((1.0, 0.5, 1.0, 1.0), 10.0)


def test_a_non_finite_counter_sample_keeps_its_baseline() -> None:
    exporter = nr_exporter()
    exporter.encode([counter("predis_cache_hits_total", 10.0, {})])
    exporter.encode([counter("predis_cache_hits_total", math.nan, {}, ts=T0 + STEP)])
    (metric,) = nr_metrics(exporter.encode([counter("predis_cache_hits_total", 15.0, {}, ts=T0 + 2 * STEP)]))
    assert metric["value"] == 5.0


def test_newrelic_events_are_chunked_under_the_payload_limit() -> None:
    exporter = nr_exporter()
    big = [Event("drift_detected", {"text": "x" * 4000, "i": i}) for i in range(600)]
    payloads = exporter.encode_events(big)
    assert len(payloads) > 1
    assert sum(len(p.body["events"]) for p in payloads) == 600
    assert all(json_size(p.body["events"]) <= newrelic.MAX_PAYLOAD_BYTES for p in payloads)


def test_cloudwatch_label_named_like_a_configured_dimension_is_dropped() -> None:
    exporter = cw_exporter()
    (datum,) = cw_datums(exporter.encode([gauge("predis_cache_keys", 1.0, {"Host": "other", "tier": "a"})]))
    names = [d["Name"] for d in datum["Dimensions"]]
    assert len(names) == len(set(names)) and {"Name": "Host", "Value": "h1"} in datum["Dimensions"]
    assert exporter.last_report.trimmed == {"duplicate_dimension": 1}


def test_cloudwatch_counters_keep_their_unit() -> None:
    exporter = cw_exporter()
    exporter.encode([counter("process_cpu_seconds_total", 1.0, {})])
    (datum,) = cw_datums(exporter.encode([counter("process_cpu_seconds_total", 3.0, {}, ts=T0 + STEP)]))
    assert datum["Unit"] == "Seconds" and datum["Value"] == 2.0


def summary(name: str, count: float, total: float, ts: float = T0) -> Metric:
    return Metric(name, total, "summary", {}, "", timestamp=ts, count=count)


SUMMARY = "predis_drift_check_duration_seconds"


def test_summaries_are_sent_as_count_and_sum_deltas_everywhere() -> None:
    dd, nr, cw = dd_exporter(), nr_exporter(), cw_exporter()
    for exporter in (dd, nr, cw):
        assert not [p for p in exporter.encode([summary(SUMMARY, 4, 2.0)]) if p.kind == "metrics"]  # the baseline
    later = [summary(SUMMARY, 10, 5.0, ts=T0 + STEP)]
    dd_series = {s["metric"]: s for p in dd.encode(later) if p.kind == "metrics" for s in p.body["series"]}
    assert dd_series["predis.drift.check.duration.seconds.count"]["points"][0][1] == 6
    assert dd_series["predis.drift.check.duration.seconds.sum"]["points"][0][1] == pytest.approx(3.0)
    assert dd_series["predis.drift.check.duration.seconds.avg"]["points"][0][1] == pytest.approx(0.5)
    nr_items = {m["name"]: m for m in nr_metrics(nr.encode(later))}
    assert nr_items["predis.drift.check.duration.seconds.count"]["value"] == 6
    assert nr_items["predis.drift.check.duration.seconds.sum"]["type"] == "count"
    cw_items = {d["MetricName"]: d for d in cw_datums(cw.encode(later))}
    assert cw_items[f"{SUMMARY}_count"]["Value"] == 6 and cw_items[f"{SUMMARY}_count"]["Unit"] == "Count"
    assert cw_items[f"{SUMMARY}_sum"]["Value"] == pytest.approx(3.0) and cw_items[f"{SUMMARY}_sum"]["Unit"] == "Seconds"


def test_summary_reset_is_detected_by_its_count() -> None:
    nr = nr_exporter()
    nr.encode([summary(SUMMARY, 10, 5.0)])
    items = {m["name"]: m for m in nr_metrics(nr.encode([summary(SUMMARY, 2, 0.4, ts=T0 + STEP)]))}
    assert items["predis.drift.check.duration.seconds.count"]["value"] == 2
    assert items["predis.drift.check.duration.seconds.sum"]["value"] == pytest.approx(0.4)


# ----------------------------------------------------------------------------- DogStatsD
def _statsd_exporter(port: int) -> Any:
    from plugins.exporters.dogstatsd import DogStatsdExporter

    section = {"statsd_host": "127.0.0.1", "statsd_port": port, "tags": ["env:test"], "events": True, "service_check": True}
    return DogStatsdExporter(make_agent(), section, "h1")


def test_dogstatsd_lines_reach_a_udp_intake_in_the_documented_format() -> None:
    """DogStatsD mode against a UDP socket standing in for the Datadog Agent's intake (the
    Agent itself cannot run offline): gauges as |g, counter deltas as |c, the readiness as
    a service check (_sc), an event (_e), all with the constant and per-metric tags; and
    only the lines, no client telemetry."""
    import socket

    intake = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    intake.bind(("127.0.0.1", 0))
    intake.settimeout(10)
    exporter = _statsd_exporter(intake.getsockname()[1])
    try:
        exporter.encode([counter("predis_cache_hits_total", 5, {"tenant": "a"})])  # a counter's first sample is its baseline
        payloads = exporter.encode([gauge("predis_cache_keys", 42, {"tenant": "a"}), counter("predis_cache_hits_total", 12, {"tenant": "a"})])
        payloads += exporter.encode_events([Event("drift_detected", {"detector": "ks"}, time=T0)])
        for payload in payloads:
            exporter.send(payload, timeout=1)
        lines: list[str] = []
        while not any(line.startswith("_e{") for line in lines):
            lines += intake.recv(65536).decode().splitlines()
    finally:
        exporter.close()
        intake.close()
    assert "predis.cache.keys:42.0|g|#tenant:a,env:test" in lines
    assert "predis.cache.hits:7|c|#tenant:a,env:test" in lines
    assert any(line.startswith("_sc|predis.agent.ready|0|") for line in lines)
    assert any(line.startswith("_e{") and "predis-agent: drift_detected" in line for line in lines)
    assert not any("datadog.dogstatsd.client" in line for line in lines)


def test_dogstatsd_with_nothing_listening_fails_the_send() -> None:
    """A DogStatsD port with no Agent behind it refuses (ICMP port unreachable): the send
    raises a transient export error, so the sink counts failures and its breaker can open.
    It used to log "Connection refused, dropping the packet" and report success."""
    import socket

    from agent.sinks import TransientExportError

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port now
    exporter = _statsd_exporter(port)
    failures = 0
    try:
        payload = exporter.encode([gauge("predis_cache_keys", 1)])[0]
        for _attempt in range(20):  # the refusal is reported on the send after the one it answers
            try:
                exporter.send(payload, timeout=1)
            except TransientExportError as exc:
                failures += 1
                assert "could not be sent" in str(exc)
                if failures >= 2:
                    break
    finally:
        exporter.close()
    assert failures >= 2
