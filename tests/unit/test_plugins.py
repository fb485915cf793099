# SPDX-License-Identifier: Apache-2.0
"""agent.plugins: loading, isolation of failures, blocking, enable/disable, schema fragments.

The plugins are real modules under tests/plugins/, loaded through PluginHost's own
built-in mechanism (name → module path).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import hookimpl
from agent.config import build_schema, load_config
from agent.errors import ConfigError
from agent.plugins import DISABLE_ENV_VAR, PluginHost

P = "tests.plugins."
GOOD = ("good", P + "good_plugin")
OTHER = ("other", P + "other_plugin")
RAISING = ("raising", P + "raising_plugin")
NONDICT = ("nondict", P + "nondict_schema_plugin")
BADSIG = ("badsig", P + "bad_signature_plugin")
TYPO = ("typo", P + "typo_hook_plugin")
IMPORT_ERROR = ("import_error", P + "import_error_plugin")
MISSING = ("missing", P + "no_such_module_anywhere")
INVALID_SCHEMA = ("invalid_schema", P + "invalid_schema_plugin")
SECTIONS = ("sections", P + "sections_plugin")
CLAIM = ("claim", P + "sections_claim_plugin")
SECTIONS_RAISING = ("sections_raising", P + "sections_raising_plugin")
SECTIONS_INVALID = ("sections_invalid", P + "sections_invalid_plugin")
SECTIONS_HOOK = "predis_agent_config_sections"

COLLECTORS = "predis_agent_register_collectors"


@pytest.fixture(autouse=True)
def _forget_imported_plugin_modules() -> Iterator[None]:
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(P):
            del sys.modules[name]


def make_host(*builtins: tuple[str, str]) -> PluginHost:
    return PluginHost(load_entrypoints=False, builtins=builtins)


def enable_all(host: PluginHost) -> None:
    host.apply_config(lambda name: True)


def states(host: PluginHost) -> dict[str, str]:
    return {p["name"]: p["state"] for p in host.public()}


# ----------------------------------------------------------------------------- loading


def test_empty_host_has_no_plugins_and_calls_return_nothing() -> None:
    host = make_host()
    assert host.public() == [] and host.error_counts() == {}
    assert host.call(COLLECTORS, agent=None, config={}) == []


def test_good_plugins_load_and_failures_are_isolated_at_load_time() -> None:
    host = make_host(GOOD, IMPORT_ERROR, BADSIG, TYPO, MISSING, OTHER)
    assert states(host) == {
        "good": "loaded",
        "import_error": "failed",
        "badsig": "failed",
        "typo": "failed",
        "missing": "failed",
        "other": "loaded",
    }
    info = host.plugins
    assert info["import_error"].error == "RuntimeError: import_error_plugin was imported"
    assert info["missing"].error is not None and info["missing"].error.startswith("ModuleNotFoundError")
    assert info["badsig"].error is not None and "surprise" in info["badsig"].error
    assert info["typo"].error is not None and "predis_agent_register_colectors" in info["typo"].error
    assert info["good"].error is None and info["good"].obj is sys.modules[P + "good_plugin"]
    for name in ("import_error", "badsig", "typo", "missing"):
        assert host.error_counts()[(name, "load")] == 1
        assert info[name].obj is None
    public = {p["name"]: p for p in host.public()}
    assert public["good"]["source"] == "builtin" and public["good"]["module"] == P + "good_plugin"
    assert public["badsig"]["hook_errors"] == {"load": 1}
    assert "load" in public["badsig"]["last_hook_error"]


def test_loaded_plugins_are_not_registered_until_config_is_applied() -> None:
    host = make_host(GOOD)
    assert host.pm.get_plugin("good") is None
    assert host.call(COLLECTORS, agent=None, config={}) == []
    enable_all(host)
    assert host.pm.get_plugin("good") is not None
    assert [name for name, _ in host.call(COLLECTORS, agent=None, config={})] == ["good"]


def test_failed_plugins_are_never_registered() -> None:
    host = make_host(BADSIG, IMPORT_ERROR, GOOD)
    enable_all(host)
    assert host.pm.get_plugin("badsig") is None and host.pm.get_plugin("import_error") is None
    assert states(host)["badsig"] == "failed"


# ----------------------------------------------------------------------------- calling


def test_call_runs_every_implementation_even_when_one_raises(caplog: pytest.LogCaptureFixture) -> None:
    host = make_host(GOOD, RAISING, OTHER)
    enable_all(host)
    with caplog.at_level(logging.ERROR, logger="agent.plugins"):
        results = host.call(COLLECTORS, agent=None, config={"k": 1})
    assert sorted(name for name, _ in results) == ["good", "other"]
    assert host.error_counts() == {("raising", COLLECTORS): 1}
    host.call(COLLECTORS, agent=None, config={})
    assert host.error_counts() == {("raising", COLLECTORS): 2}
    public = {p["name"]: p for p in host.public()}
    assert public["raising"]["hook_errors"] == {COLLECTORS: 2}
    assert f"{COLLECTORS}: RuntimeError: boom from raising_plugin" in public["raising"]["last_hook_error"]
    assert public["good"]["hook_errors"] == {} and public["good"]["last_hook_error"] is None
    assert any("raising" in r.getMessage() and "boom from raising_plugin" in r.getMessage() for r in caplog.records)


def test_collect_flattens_lists_wraps_single_results_and_drops_none() -> None:
    host = make_host(GOOD, OTHER)
    enable_all(host)
    collectors = host.collect(COLLECTORS, agent=None, config={})
    assert sorted((name, item.get("n")) for name, item in collectors) == [("good", None), ("other", 1), ("other", 2)]
    assert host.collect("predis_agent_register_routes", agent=None) == [("good", "good-route")]


def test_only_restricts_the_call_to_named_plugins() -> None:
    host = make_host(GOOD, RAISING, OTHER)
    enable_all(host)
    assert [n for n, _ in host.call(COLLECTORS, only={"other"}, agent=None, config={})] == ["other"]
    assert host.call(COLLECTORS, only=set(), agent=None, config={}) == []
    assert host.call(COLLECTORS, only={"nonexistent"}, agent=None, config={}) == []
    assert host.error_counts() == {}  # the raising plugin was never called
    host.call(COLLECTORS, only={"raising"}, agent=None, config={})
    assert host.error_counts() == {("raising", COLLECTORS): 1}


def test_config_keyword_receives_each_plugins_own_section() -> None:
    host = make_host(GOOD, OTHER)
    fragments, opaque = host.schema_fragments()
    cfg = load_config(
        None,
        text="plugins:\n  good:\n    tag: mine\n  other:\n    enabled: true\n",
        plugin_fragments=fragments,
        opaque_plugins=opaque,
    )
    enable_all(host)
    got = {name: item["config"] for name, item in host.collect(COLLECTORS, agent=None, config=cfg)}
    assert got == {"good": {"enabled": True, "tag": "mine"}, "other": {"enabled": True}}
    # A plain mapping (not a Config) is passed through unchanged.
    raw = {"whatever": 1}
    assert all(item["config"] is raw for _, item in host.collect(COLLECTORS, agent=None, config=raw))


def test_missing_hook_argument_is_counted_as_that_plugins_error() -> None:
    host = make_host(GOOD)
    enable_all(host)
    assert host.call(COLLECTORS, agent=None) == []  # no config= passed: the impl cannot be called
    assert host.error_counts() == {("good", COLLECTORS): 1}


def test_class_instance_plugins_are_supported() -> None:
    class Counter:
        def __init__(self) -> None:
            self.calls = 0

        @hookimpl
        def predis_agent_register_collectors(self, agent: Any, config: dict[str, Any]) -> list[str]:
            self.calls += 1
            return [f"call-{self.calls}"]

    instance = Counter()
    host = make_host()
    host._import("counter", "builtin", lambda: instance, "tests.unit.test_plugins.Counter", "1.2")
    enable_all(host)
    assert host.collect(COLLECTORS, agent=None, config={}) == [("counter", "call-1")]
    assert instance.calls == 1
    assert host.public()[0]["version"] == "1.2"


# ----------------------------------------------------------------------------- error listeners


def test_error_listeners_are_told_and_a_broken_listener_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    host = make_host(RAISING, GOOD)
    enable_all(host)
    before: list[tuple[str, str]] = []
    after: list[tuple[str, str]] = []

    def broken(plugin: str, hook: str) -> None:
        raise ZeroDivisionError("listener bug")

    host.error_listeners.extend([lambda p, h: before.append((p, h)), broken, lambda p, h: after.append((p, h))])
    with caplog.at_level(logging.ERROR, logger="agent.plugins"):
        results = host.call(COLLECTORS, agent=None, config={})
    assert [n for n, _ in results] == ["good"]
    assert before == [("raising", COLLECTORS)]
    assert after == [("raising", COLLECTORS)]  # listeners after the broken one still run
    assert any(r.getMessage() == "plugin error listener failed" for r in caplog.records)


def test_report_error_counts_errors_of_returned_objects() -> None:
    host = make_host(GOOD)
    seen: list[tuple[str, str]] = []
    host.error_listeners.append(lambda p, h: seen.append((p, h)))
    host.report_error("good", "collect", TimeoutError("too slow"))
    host.report_error("good", "collect", TimeoutError("too slow"))
    assert host.error_counts() == {("good", "collect"): 2}
    assert seen == [("good", "collect"), ("good", "collect")]
    assert "collect: TimeoutError: too slow" in (host.plugins["good"].last_error or "")
    host.report_error("unknown-plugin", "x", RuntimeError("y"))  # not a crash, still announced
    assert seen[-1] == ("unknown-plugin", "x")


# ----------------------------------------------------------------------------- blocking and disabling


def test_blocked_plugins_are_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_ENV_VAR, " import_error , good,,")
    host = make_host(IMPORT_ERROR, GOOD, OTHER)
    assert states(host) == {"import_error": "blocked", "good": "blocked", "other": "loaded"}
    assert P + "import_error_plugin" not in sys.modules
    assert P + "good_plugin" not in sys.modules
    assert host.plugins["good"].error == f"blocked by {DISABLE_ENV_VAR}"
    assert host.error_counts() == {}  # blocking is not an error
    enable_all(host)
    assert host.pm.get_plugin("good") is None and host.pm.is_blocked("good")
    assert [n for n, _ in host.call(COLLECTORS, agent=None, config={})] == ["other"]


def test_apply_config_moves_plugins_between_loaded_and_disabled() -> None:
    host = make_host(GOOD, OTHER, BADSIG)
    host.apply_config(lambda name: name != "good")
    assert states(host) == {"good": "disabled", "other": "loaded", "badsig": "failed"}
    assert host.pm.get_plugin("good") is None and host.pm.get_plugin("other") is not None
    assert [n for n, _ in host.call(COLLECTORS, agent=None, config={})] == ["other"]

    host.apply_config(lambda name: True)
    assert states(host) == {"good": "loaded", "other": "loaded", "badsig": "failed"}
    assert host.pm.get_plugin("good") is not None
    assert sorted(n for n, _ in host.call(COLLECTORS, agent=None, config={})) == ["good", "other"]

    host.apply_config(lambda name: False)
    assert states(host) == {"good": "disabled", "other": "disabled", "badsig": "failed"}
    assert host.call(COLLECTORS, agent=None, config={}) == []
    host.apply_config(lambda name: False)  # idempotent
    assert host.pm.get_plugins() == set()


def test_apply_config_from_a_loaded_config() -> None:
    host = make_host(GOOD, OTHER)
    fragments, opaque = host.schema_fragments()
    cfg = load_config(None, text="plugins:\n  other:\n    enabled: false\n", plugin_fragments=fragments, opaque_plugins=opaque)
    host.apply_config(cfg.plugin_enabled)
    assert states(host) == {"good": "loaded", "other": "disabled"}


# ----------------------------------------------------------------------------- schema fragments


def test_schema_fragments_cover_enabled_and_disabled_plugins() -> None:
    host = make_host(GOOD, OTHER, RAISING, NONDICT, BADSIG, IMPORT_ERROR)
    host.apply_config(lambda name: name != "good")
    fragments, opaque = host.schema_fragments()
    assert set(fragments) == {"good", "other"}
    assert fragments["good"]["properties"]["tag"] == {"type": "string", "default": "t0"}  # disabled, still there
    assert fragments["other"] is None  # no schema hook: only `enabled` is allowed
    assert sorted(opaque) == ["badsig", "import_error", "nondict", "raising"]
    counts = host.error_counts()
    assert counts[("raising", "predis_agent_config_schema")] == 1
    assert counts[("nondict", "predis_agent_config_schema")] == 1
    assert "expected a dict, got list" in (host.plugins["nondict"].last_error or "")
    assert "ValueError: schema exploded" in (host.plugins["raising"].last_error or "")


def test_fragments_make_sections_validated_and_opaque_sections_free() -> None:
    host = make_host(GOOD, RAISING, BADSIG)
    fragments, opaque = host.schema_fragments()
    with pytest.raises(ConfigError) as info:
        load_config(None, text="plugins:\n  good:\n    tga: x\n", plugin_fragments=fragments, opaque_plugins=opaque)
    assert [p.path for p in info.value.problems] == ["plugins.good.tga"]
    cfg = load_config(
        None,
        text="plugins:\n  raising: {anything: 1}\n  badsig: {other: [1]}\n",
        plugin_fragments=fragments,
        opaque_plugins=opaque,
    )
    assert cfg.plugin_config("raising") == {"anything": 1}
    assert cfg.plugin_config("good") == {"enabled": True, "tag": "t0"}


def test_a_plugin_with_an_invalid_schema_fragment_is_treated_as_opaque() -> None:
    host = make_host(INVALID_SCHEMA, GOOD)
    fragments, opaque = host.schema_fragments()
    cfg = load_config(None, text="plugins:\n  invalid_schema:\n    level: 3\n", plugin_fragments=fragments, opaque_plugins=opaque)
    assert cfg.plugin_config("invalid_schema") == {"level": 3}
    assert "invalid_schema" in opaque
    assert "invalid_schema" not in fragments
    assert "good" in fragments
    assert host.error_counts()[("invalid_schema", "predis_agent_config_schema")] == 1
    shown = {p["name"]: p for p in host.public()}["invalid_schema"]
    assert "SchemaError" in (shown["last_hook_error"] or "")
    assert "$.properties.level.type" in (shown["last_hook_error"] or "")


# ----------------------------------------------------------------------------- declared sections


def problems_of(text: str, host: PluginHost) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(None, text=text, **host.schema_parts())
    return [f"{p.path}: {p.message}" for p in info.value.problems]


def test_a_declared_section_is_validated_and_filled_with_its_defaults() -> None:
    host = make_host(SECTIONS)
    host.apply_config(lambda name: False)  # a disabled plugin's sections are still declared
    parts = host.schema_parts()
    assert sorted(parts["plugin_sections"]) == ["collectors.probe", "exporters.vendor"] and parts["opaque_plugins"] == []
    cfg = load_config(None, text="", **parts)
    assert cfg.section("exporters.vendor") == {"enabled": False, "interval": 10}
    assert cfg.section("collectors.probe") == {"targets": []}
    assert load_config(None, text="exporters:\n  vendor: {enabled: true}\n", **parts).section("exporters.vendor") == {"enabled": True, "interval": 10}
    assert problems_of("exporters:\n  vendor:\n    intreval: 5\n    interval: 99\n", host) == [
        "exporters.vendor.intreval: unknown key (allowed here: enabled, interval)",
        "exporters.vendor.interval: must be at most 60, found 99",
    ]
    # A sub-section nobody declared is an unknown key that lists the declared and the core ones.
    assert problems_of("exporters:\n  nosuch: {}\ncollectors:\n  nosuch: {}\n", host) == [
        "exporters.nosuch: unknown key (allowed here: vendor)",
        "collectors.nosuch: unknown key (allowed here: access_log, probe)",
    ]
    schema = build_schema(**parts)
    assert list(schema["properties"]["collectors"]["properties"]) == ["probe", "access_log"]  # declared ones first
    assert schema["properties"]["exporters"]["properties"]["vendor"]["description"] == "The vendor exporter."


def test_a_section_outside_the_namespaces_or_already_declared_is_refused_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    host = make_host(SECTIONS, CLAIM)
    with caplog.at_level(logging.ERROR, logger="agent.plugins"):
        sections, opaque = host.config_sections()
    assert sorted(sections) == ["collectors.extra", "collectors.probe", "exporters.vendor"]
    assert "interval" in sections["exporters.vendor"]["properties"]  # the first claim holds
    assert opaque == []  # the refusals cost those sections only
    assert host.error_counts() == {("claim", SECTIONS_HOOK): 3}
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [
        "plugin claim: section 'agent.vendor' refused: a plugin declares exporters.<name> or collectors.<name> only",
        "plugin claim: section 'collectors.access_log' refused: it is already declared by the core schema",
        "plugin claim: section 'exporters.vendor' refused: it is already declared by plugin sections",
    ]
    assert host.plugins["claim"].last_error is not None and host.plugins["claim"].last_error.endswith(logged[-1].removeprefix("plugin claim: "))
    cfg = load_config(None, text="collectors:\n  extra: {level: 2}\n", **host.schema_parts())
    assert cfg.section("collectors.extra") == {"level": 2} and cfg.section("exporters.vendor") == {"enabled": False, "interval": 10}
    refused = problems_of("agent:\n  vendor: {}\ncollectors:\n  access_log: {level: 1}\n", host)
    assert [p.split(" (allowed here")[0] for p in refused] == ["agent.vendor: unknown key", "collectors.access_log.level: unknown key"]


def test_build_schema_refuses_a_section_it_cannot_place() -> None:
    for path in ("agent.vendor", "exporters", "collectors.access_log", "exporters.a.b"):
        with pytest.raises(ValueError, match="is not a free exporters.<name> or collectors.<name> path"):
            build_schema(plugin_sections={path: {}})


# Each way a plugin becomes opaque: the plugin next to SECTIONS, and whether it is blocked.
OPAQUE_CASES = {
    "failed to load": (IMPORT_ERROR, False),
    "blocked": (GOOD, True),
    "sections hook raises": (SECTIONS_RAISING, False),
    "invalid section schema": (SECTIONS_INVALID, False),
}


@pytest.mark.parametrize("case", sorted(OPAQUE_CASES))
def test_with_an_opaque_plugin_undeclared_sub_sections_are_accepted_as_written(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin, blocked = OPAQUE_CASES[case]
    if blocked:
        monkeypatch.setenv(DISABLE_ENV_VAR, plugin[0])
    host = make_host(SECTIONS, plugin)
    parts = host.schema_parts()
    assert len(parts["opaque_plugins"]) == 1
    text = "exporters:\n  gone: {anything: [1, {a: b}]}\ncollectors:\n  gone: {}\n"
    cfg = load_config(None, text=text, **parts)
    assert cfg.section("exporters.gone") == {"anything": [1, {"a": "b"}]} and cfg.section("collectors.gone") == {}
    assert cfg.section("exporters.vendor") == {"enabled": False, "interval": 10}  # declared ones are still checked
    assert problems_of("exporters:\n  vendor: {interval: 0}\n  gone: 3\n", host) == [
        "exporters.vendor.interval: must be at least 1, found 0",
        "exporters.gone: expected object, found integer",
    ]


def test_a_failing_sections_hook_is_counted_and_takes_none_of_the_plugins_sections() -> None:
    host = make_host(SECTIONS_RAISING, SECTIONS_INVALID)
    sections, opaque = host.config_sections()
    assert sections == {} and opaque == ["sections_raising", "sections_invalid"]
    assert host.error_counts() == {("sections_raising", SECTIONS_HOOK): 1, ("sections_invalid", SECTIONS_HOOK): 1}
    assert (host.plugins["sections_raising"].last_error or "").endswith(f"{SECTIONS_HOOK}: RuntimeError: sections exploded")
    error = host.plugins["sections_invalid"].last_error or ""
    assert "section 'exporters.broken': SchemaError" in error and "$.properties.level.type" in error


def test_a_blocked_builtin_exporter_keeps_its_section_valid_for_config_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from agent.cli import cli

    path = tmp_path / "agent.yaml"
    path.write_text("exporters:\n  datadog:\n    enabled: true\n    not_a_key: 1\n")
    result = CliRunner().invoke(cli, ["config", "validate", str(path)])
    assert result.exit_code == 2 and "exporters.datadog.not_a_key: unknown key (allowed here: api_host, api_key," in result.output
    monkeypatch.setenv(DISABLE_ENV_VAR, "datadog")
    result = CliRunner().invoke(cli, ["config", "validate", str(path)])
    assert result.exit_code == 0 and result.output.strip().endswith(": valid"), result.output


def test_the_model_commands_take_plugin_sections_as_written(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from agent.cli import cli

    path = tmp_path / "agent.yaml"
    path.write_text(f"mlops:\n  registry_dir: {tmp_path / 'registry'}\nexporters:\n  datadog: {{not_a_key: 1}}\n")
    result = CliRunner().invoke(cli, ["model", "list", "--tenant", "acme", "--config", str(path)])
    assert result.exit_code == 0 and result.output == "tenant acme has no models\n", result.output
