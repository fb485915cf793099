# SPDX-License-Identifier: Apache-2.0
"""agent.plugins (isolation, blocking), the token store and path confinement."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import hookimpl
from agent.config import load_config
from agent.errors import AuthError, SecurityError
from agent.plugins import PluginHost
from agent.security import TokenStore, confine, validate_tenant_id

# ----------------------------------------------------------------------------- plugin host


def _module(name: str, **hooks: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook_name, func in hooks.items():
        setattr(mod, hook_name, hookimpl(func))
    sys.modules[name] = mod
    return mod


@pytest.fixture
def modules() -> Iterator[None]:
    def boom(**_: Any) -> None:
        raise RuntimeError("boom")

    _module(
        "unit_bad_plugin",
        predis_agent_register_collectors=lambda agent, config: boom(),
        predis_agent_config_schema=lambda: ["not", "a", "dict"],
    )
    _module(
        "unit_good_plugin",
        predis_agent_register_collectors=lambda agent, config: [("collector", config.get("tag"))],
        predis_agent_config_schema=lambda: {"type": "object", "properties": {"tag": {"type": "string"}}},
    )
    bad_sig = types.ModuleType("unit_badsig_plugin")

    def predis_agent_register_collectors(agent, config, surprise):  # type: ignore[no-untyped-def]
        return []

    bad_sig.predis_agent_register_collectors = hookimpl(predis_agent_register_collectors)  # type: ignore[attr-defined]
    sys.modules["unit_badsig_plugin"] = bad_sig
    yield
    for name in ("unit_bad_plugin", "unit_good_plugin", "unit_badsig_plugin"):
        sys.modules.pop(name, None)


BUILTINS = (
    ("bad", "unit_bad_plugin"),
    ("good", "unit_good_plugin"),
    ("badsig", "unit_badsig_plugin"),
    ("missing", "unit_no_such_module"),
)


def test_host_isolates_failures_and_counts_them(modules: None) -> None:
    host = PluginHost(load_entrypoints=False, builtins=BUILTINS)
    states = {p["name"]: p["state"] for p in host.public()}
    assert states == {"bad": "loaded", "good": "loaded", "badsig": "failed", "missing": "failed"}
    assert "surprise" in host.plugins["badsig"].error
    fragments, opaque = host.schema_fragments()
    assert "bad" in opaque and fragments["good"]["properties"]["tag"] == {"type": "string"}
    cfg = load_config(None, text="plugins:\n  good:\n    tag: t1\n  bad: {}\n", plugin_fragments=fragments, opaque_plugins=opaque)
    host.apply_config(cfg.plugin_enabled)
    seen: list[tuple[str, str]] = []
    host.error_listeners.append(lambda plugin, hook: seen.append((plugin, hook)))
    host.error_listeners.append(lambda plugin, hook: 1 / 0)  # a broken listener changes nothing
    got = host.collect("predis_agent_register_collectors", agent=None, config=cfg)
    assert got == [("good", ("collector", "t1"))]
    assert ("bad", "predis_agent_register_collectors") in seen
    assert host.error_counts()[("bad", "predis_agent_register_collectors")] == 1
    assert host.error_counts()[("missing", "load")] == 1
    assert host.call("predis_agent_register_collectors", only={"bad"}, agent=None, config=cfg) == []


def test_disable_in_config_and_block_by_env(modules: None, monkeypatch: pytest.MonkeyPatch) -> None:
    host = PluginHost(load_entrypoints=False, builtins=BUILTINS[:2])
    host.apply_config(lambda name: name != "good")
    assert host.plugins["good"].state == "disabled" and host.pm.get_plugin("good") is None
    host.apply_config(lambda name: True)
    assert host.plugins["good"].state == "loaded" and host.pm.get_plugin("good") is not None

    monkeypatch.setenv("PREDIS_AGENT_DISABLE_PLUGINS", "bad, never_imported")
    _module("unit_never_imported")  # placeholder so the name exists; blocking must not import anyway
    sys.modules.pop("unit_never_imported")
    host = PluginHost(load_entrypoints=False, builtins=(*BUILTINS[:2], ("never_imported", "unit_explodes_on_import")))
    assert host.plugins["bad"].state == "blocked"
    assert host.plugins["never_imported"].state == "blocked"
    assert "unit_explodes_on_import" not in sys.modules


# ----------------------------------------------------------------------------- security


def test_token_store_hashes_verifies_and_revokes(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "d" / "tokens.json")
    token, record = store.create("ci")
    assert token.startswith(f"pda_{record.id}_") and len(token.split("_", 2)[2]) == 43
    raw = (tmp_path / "d" / "tokens.json").read_bytes()
    assert token.encode() not in raw and token.split("_", 2)[2].encode() not in raw
    assert (tmp_path / "d" / "tokens.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
    other = TokenStore(tmp_path / "d" / "tokens.json")
    assert other.verify(token).id == record.id
    for bad in ("", None, token[:-1] + ("A" if token[-1] != "A" else "B"), token + "x"):
        with pytest.raises(AuthError):
            other.verify(bad)
    assert store.revoke(record.id) and not store.revoke(record.id)
    with pytest.raises(AuthError):
        other.verify(token)
    (tmp_path / "d" / "tokens.json").write_text("{not json")
    with pytest.raises(AuthError):
        other.verify(token)
    assert other.load_error and "unreadable" in other.load_error
    with pytest.raises(SecurityError):
        other.create("x")


def test_path_confinement_and_tenant_ids(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    assert confine(root, "sub/x") == (root / "sub" / "x").resolve()
    for bad in ("../x", "/etc/passwd", "link/escape", "sub/../../x", "a\x00b"):
        with pytest.raises(SecurityError):
            confine(root, bad)
    for good in ("acme", "a1_b-c", "x" * 50):
        assert validate_tenant_id(good) == good
    for bad in ("Ab", "ab", "-abc", "x" * 51, "abc/../x", "ab c", 12):
        with pytest.raises(SecurityError):
            validate_tenant_id(bad)  # type: ignore[arg-type]
