# SPDX-License-Identifier: Apache-2.0
"""The metric registry: docs/metrics.md is generated from it and must match it exactly, and
every declared name follows Prometheus' naming rules, so scrapers and vendors see one
consistent vocabulary (DESIGN.md §5). Plugins declare their metrics with
``agent.api.declare_metrics``: a name is declared once."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

import agent.telemetry as telemetry_module
from agent.cli import cli
from agent.docgen import METRICS_GENERATOR_COMMAND, metric_registry, render_metrics_doc
from agent.plugins import DEFAULT_PLUGINS
from agent.telemetry import (
    SPECS_BY_NAME,
    MetricSpec,
    declare_metrics,
    declared_metrics,
    emitter_of,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
REGENERATE = f"run `{METRICS_GENERATOR_COMMAND}`"

NAME_RE = re.compile(r"^(predis|process)_[a-z][a-z0-9_]*[a-z0-9]$")  # process_*: the standard process series
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
KINDS = ("gauge", "counter", "histogram", "summary")
# Base units only (Prometheus naming guide); scaled units are spelled out as suffixes.
BASE_UNITS = ("", "seconds", "bytes", "ratio", "celsius", "watts", "hertz", "bytes_per_second")
SCALED_UNIT_SUFFIXES = (
    "_ms", "_us", "_ns", "_milliseconds", "_microseconds", "_nanoseconds", "_minutes", "_hours",
    "_kb", "_mb", "_gb", "_kib", "_mib", "_gib", "_kilobytes", "_megabytes", "_gigabytes", "_bits", "_percent",
)
# Label names that invite unbounded values (a cache key, a user, a path) are refused.
FORBIDDEN_LABEL_PARTS = ("key", "user", "path", "url", "query", "value", "id")
# Label names Prometheus itself attaches or reserves.
RESERVED_LABELS = ("le", "quantile", "job", "instance")

METRIC_REGISTRY = metric_registry()


def _spec_tuples(module: ModuleType) -> dict[str, tuple[MetricSpec, ...]]:
    return {
        f"{module.__name__}.{name}": value
        for name, value in vars(module).items()
        if isinstance(value, tuple) and value and all(isinstance(item, MetricSpec) for item in value)
    }


def _all_spec_tuples() -> dict[str, tuple[MetricSpec, ...]]:
    """Every module-level tuple of specs in agent/telemetry.py and in the built-in plugins."""
    found = _spec_tuples(telemetry_module)
    for _, module in DEFAULT_PLUGINS:
        found.update(_spec_tuples(importlib.import_module(module)))
    return found


def test_metrics_doc_matches_generator() -> None:
    assert DOC.read_text(encoding="utf-8") == render_metrics_doc(), REGENERATE


def test_cli_prints_the_generated_metrics_doc() -> None:
    result = CliRunner().invoke(cli, ["metrics", "docs"])
    assert result.exit_code == 0, result.output
    assert result.output == render_metrics_doc()


def test_every_spec_tuple_is_in_the_registry_and_the_doc() -> None:
    tuples = _all_spec_tuples()
    assert {
        "agent.telemetry.SELF_METRICS",
        "plugins.collectors.cache.METRICS",
        "plugins.collectors.process.METRICS",
        "plugins.collectors.gpu.METRICS",
        "plugins.collectors.access_log.METRICS",
    } <= set(tuples)
    registered = set(METRIC_REGISTRY)
    text = DOC.read_text(encoding="utf-8")
    for tuple_name, specs in tuples.items():
        missing = [s.name for s in specs if s not in registered]
        assert not missing, f"{tuple_name} not in METRIC_REGISTRY: {missing}"
    undocumented = [s.name for s in METRIC_REGISTRY if f"| `{s.name}` |" not in text]
    assert not undocumented, f"{undocumented}; {REGENERATE}"


def test_names_are_unique_and_every_metric_has_an_emitter() -> None:
    names = [s.name for s in METRIC_REGISTRY]
    assert len(names) == len(set(names))
    for spec in METRIC_REGISTRY:
        assert emitter_of(spec)


def test_a_name_no_emitter_claims_is_an_error() -> None:
    with pytest.raises(LookupError, match="no emitter"):
        emitter_of(MetricSpec("predis_nobody_total", "counter", "x"))


def test_a_plugin_metric_is_emitted_by_its_declaring_module() -> None:
    for _, module in DEFAULT_PLUGINS:
        for spec in declared_metrics(module):
            assert emitter_of(spec) == module.replace(".", "/") + ".py"
    assert emitter_of(SPECS_BY_NAME["predis_cache_hits_total"]) == "plugins/collectors/cache.py"
    assert emitter_of(SPECS_BY_NAME["predis_agent_ready"]) == "agent/runtime.py"


def test_a_declared_name_belongs_to_one_module_and_the_agent_keeps_its_own() -> None:
    spec = MetricSpec("predis_test_declared_total", "counter", "Declared by a test.", max_series=3)
    module = f"{__name__}.declaring"
    try:
        assert declare_metrics(module, [spec]) == (spec,)
        assert SPECS_BY_NAME[spec.name] is spec and emitter_of(spec) == module.replace(".", "/") + ".py"
        with pytest.raises(ValueError, match=f"already declared by {module}"):
            declare_metrics(f"{__name__}.other", [spec])
        with pytest.raises(ValueError, match="one of the agent's own"):
            declare_metrics(module, [MetricSpec("predis_agent_ready", "gauge", "Mine.")])
        with pytest.raises(ValueError, match="declared twice"):
            declare_metrics(module, [spec, spec])
        with pytest.raises(ValueError, match="does not match"):
            declare_metrics(module, [MetricSpec("predis-bad", "gauge", "Bad.")])
        with pytest.raises(ValueError, match="has type 'meter'"):
            declare_metrics(module, [MetricSpec("predis_test_meter", "meter", "Bad.")])
        assert declared_metrics(module) == (spec,), "a refused declaration changes nothing"
        renamed = MetricSpec("predis_test_renamed_total", "counter", "Declared again.")
        assert declare_metrics(module, [renamed]) == (renamed,)
        assert spec.name not in SPECS_BY_NAME, "a module declaring again replaces its own declaration"
    finally:
        declare_metrics(module, [])
    assert declared_metrics(module) == () and "predis_test_renamed_total" not in SPECS_BY_NAME


def test_generated_doc_groups_by_emitter_and_escapes_cells() -> None:
    specs = (
        MetricSpec("predis_cache_hits_total", "counter", "pipe | here", ("command",), max_series=7),
        MetricSpec("predis_agent_ready", "gauge", "Self."),
    )
    text = render_metrics_doc(specs)
    assert text == render_metrics_doc(specs)
    assert text.index("## `plugins/collectors/cache.py`") < text.index("## `agent/runtime.py`")
    assert "| `predis_cache_hits_total` | counter | — | `command` | 7 | pipe \\| here |" in text


@pytest.mark.parametrize("spec", METRIC_REGISTRY, ids=[s.name for s in METRIC_REGISTRY])
def test_spec_follows_prometheus_naming_rules(spec: MetricSpec) -> None:
    assert NAME_RE.fullmatch(spec.name) and "__" not in spec.name, spec.name
    assert spec.kind in KINDS
    if spec.kind == "counter":
        assert spec.name.endswith("_total"), f"{spec.name}: counters end in _total"
    else:
        assert not spec.name.endswith("_total"), f"{spec.name}: only counters end in _total"
    assert spec.unit in BASE_UNITS, f"{spec.name}: unit {spec.unit!r} is not a base unit"
    if spec.unit:
        assert spec.name.endswith(f"_{spec.unit}") or spec.name.endswith(f"_{spec.unit}_total"), spec.name
    stem = spec.name.removesuffix("_total")
    assert not stem.endswith(SCALED_UNIT_SUFFIXES), f"{spec.name}: use base units (_seconds, _bytes)"
    assert not stem.endswith(("_count", "_sum", "_bucket", "_created")), f"{spec.name}: reserved suffix"
    assert spec.help.strip()
    assert spec.max_series >= 1
    for label in spec.labels:
        assert LABEL_RE.fullmatch(label) and not label.startswith("__"), label
        assert label not in RESERVED_LABELS, label
        parts = label.split("_")
        assert not any(part in FORBIDDEN_LABEL_PARTS for part in parts), f"{spec.name}: label {label!r} invites unbounded values"
    assert len(set(spec.labels)) == len(spec.labels)
