# SPDX-License-Identifier: Apache-2.0
"""The cardinality guard (a family past its cap folds new label sets and counts them) and
the exposition cache (rendered once per collection round, whatever the scrape rate)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from agent.telemetry import (
    DEFAULT_MAX_SERIES,
    SPECS_BY_NAME,
    CardinalityGuard,
    Metric,
    MetricSpec,
    Telemetry,
    sample,
)
from plugins.exporters import prometheus as prometheus_exporter

CAP = 3
SPEC = MetricSpec("predis_test_requests_total", "counter", "Test requests.", ("route",), max_series=CAP)
FOLDED = "predis_agent_metric_series_folded_total"
OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _batch(*routes: str, value: float = 1.0) -> list[Metric]:
    return [sample(SPEC, value, {"route": r}) for r in routes]


def _routes(batch: list[Metric]) -> list[str]:
    return [m.labels["route"] for m in batch]


# ----------------------------------------------------------------------------- guard


def test_default_cap_is_named_and_overridable_per_spec() -> None:
    assert DEFAULT_MAX_SERIES == 1000
    assert MetricSpec("predis_x", "gauge", "x").max_series == DEFAULT_MAX_SERIES
    guard = CardinalityGuard({SPEC.name: SPEC}, default_cap=5)
    assert guard.cap(SPEC.name) == CAP
    assert guard.cap("third_party_metric") == 5


def test_label_sets_past_the_cap_are_folded_and_counted() -> None:
    guard = CardinalityGuard({SPEC.name: SPEC})
    kept, folded = guard.apply(_batch("a", "b", "c", "d", "e") + [Metric("other", 1.0)])
    assert _routes([m for m in kept if m.name == SPEC.name]) == ["a", "b", "c"]
    assert any(m.name == "other" for m in kept)
    assert folded == {SPEC.name: 2}


def test_sets_admitted_last_round_keep_their_place_over_new_ones() -> None:
    guard = CardinalityGuard({SPEC.name: SPEC})
    guard.apply(_batch("a", "b", "c"))
    kept, folded = guard.apply(_batch("x", "c", "b", "a"))
    assert _routes(kept) == ["c", "b", "a"]
    assert folded == {SPEC.name: 1}


def test_a_family_whose_old_sets_went_away_admits_new_ones() -> None:
    guard = CardinalityGuard({SPEC.name: SPEC})
    guard.apply(_batch("a", "b", "c"))
    kept, folded = guard.apply(_batch("x", "y"))
    assert _routes(kept) == ["x", "y"] and folded == {}


def test_the_same_label_set_twice_counts_once_against_the_cap() -> None:
    guard = CardinalityGuard({SPEC.name: SPEC})
    kept, folded = guard.apply(_batch("a", "a", "b", "c"))
    assert _routes(kept) == ["a", "a", "b", "c"] and folded == {}


def test_telemetry_exports_only_kept_samples_and_counts_folds_per_family() -> None:
    telemetry = Telemetry("t")
    telemetry.guard = CardinalityGuard({**SPECS_BY_NAME, SPEC.name: SPEC})
    kept = telemetry.set_batch(_batch("a", "b", "c", "d"))
    assert _routes(kept) == ["a", "b", "c"]
    get = telemetry.registry.get_sample_value
    assert get(SPEC.name, {"route": "c"}) == 1.0
    assert get(SPEC.name, {"route": "d"}) is None
    assert get(FOLDED, {"family": SPEC.name}) == 1.0
    telemetry.set_batch(_batch("a", "b", "c", "d", "e"))
    assert get(FOLDED, {"family": SPEC.name}) == 3.0


# ----------------------------------------------------------------------------- exposition cache


def test_two_scrapes_in_one_round_render_once_per_format() -> None:
    telemetry = Telemetry("t")
    telemetry.set_batch([Metric("predis_test_gauge", 1.0)])
    first, text_type = telemetry.exposition("")
    second, _ = telemetry.exposition("text/plain")
    assert first is second and telemetry.renders == 1
    assert text_type.startswith("text/plain; version=0.0.4")
    om_first, om_type = telemetry.exposition(OPENMETRICS_ACCEPT)
    om_second, _ = telemetry.exposition(OPENMETRICS_ACCEPT)
    assert om_type.startswith("application/openmetrics-text") and om_first is om_second and om_first.endswith(b"# EOF\n")
    assert telemetry.renders == 2


def test_a_new_round_renders_again_and_shows_the_new_values() -> None:
    telemetry = Telemetry("t")
    telemetry.set_batch([Metric("predis_test_gauge", 1.0)])
    assert b"predis_test_gauge 1.0" in telemetry.exposition()[0]
    telemetry["predis_agent_ready"].set(1)
    assert b"predis_agent_ready 0.0" in telemetry.exposition()[0]
    telemetry.set_batch([Metric("predis_test_gauge", 2.0)])
    body = telemetry.exposition()[0]
    assert b"predis_test_gauge 2.0" in body and b"predis_agent_ready 1.0" in body
    assert telemetry.renders == 2
    telemetry.end_round()
    telemetry.exposition()
    assert telemetry.renders == 3


def _route_handler(telemetry: Telemetry) -> Any:
    fake_agent = SimpleNamespace(telemetry=telemetry, config=SimpleNamespace(section=lambda path: {"enabled": True, "path": "/metrics"}))
    (route,) = prometheus_exporter.predis_agent_register_routes(fake_agent)
    assert (route.method, route.path) == ("GET", "/metrics")
    return route.handler


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [("", "text/plain; version=0.0.4"), (OPENMETRICS_ACCEPT, "application/openmetrics-text")],
)
def test_the_route_negotiates_and_serves_cached_bytes(accept: str, content_type: str) -> None:
    telemetry = Telemetry("t")
    telemetry.set_batch([Metric("predis_test_gauge", 1.0)])
    handler = _route_handler(telemetry)

    async def scrape_twice() -> list[Any]:
        return [await handler(make_mocked_request("GET", "/metrics", headers={"Accept": accept})) for _ in range(2)]

    first, second = asyncio.run(scrape_twice())
    assert first.headers["Content-Type"].startswith(content_type)
    assert first.body == second.body and b"predis_test_gauge" in first.body
    assert telemetry.renders == 1
