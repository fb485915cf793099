# SPDX-License-Identifier: Apache-2.0
"""agent.plugins: loading, isolation of failures, blocking, enable/disable, schema fragments.

The plugins are real modules under tests/plugins/, loaded through PluginHost's own
built-in mechanism (name → module path).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from agent import hookimpl
from agent.config import load_config
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
