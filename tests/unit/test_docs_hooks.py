# SPDX-License-Identifier: Apache-2.0
"""docs/plugins.md documents every hook, and its example plugin really loads."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.config import load_config
from agent.plugins import PluginHost

ROOT = Path(__file__).resolve().parents[2]
HOOKSPECS = ROOT / "agent" / "hookspecs.py"
PLUGINS_DOC = ROOT / "docs" / "plugins.md"


def hookspec_names() -> list[str]:
    tree = ast.parse(HOOKSPECS.read_text(encoding="utf-8"))
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
            (isinstance(d, ast.Name) and d.id == "hookspec") or (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "hookspec")
            for d in node.decorator_list
        ):
            names.append(node.name)
    return names


def test_every_hookspec_is_documented() -> None:
    names = hookspec_names()
    assert "predis_agent_config_schema" in names and len(names) >= 10
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    missing = [name for name in names if name not in text]
    assert not missing, f"docs/plugins.md does not document {missing}"


def _example_module() -> str:
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    examples = [b for b in blocks if "predis_agent_register_exporters" in b and "@hookimpl" in b]
    assert len(examples) == 1, "docs/plugins.md should hold exactly one complete example module"
    return examples[0]


def test_example_plugin_loads_and_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREDIS_AGENT_DISABLE_PLUGINS", raising=False)
    (tmp_path / "predis_agent_loadavg.py").write_text(_example_module(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        host = PluginHost(load_entrypoints=False, builtins=[("loadavg", "predis_agent_loadavg")])
        info = host.plugins["loadavg"]
        assert info.state == "loaded", info.error
        fragments, opaque = host.schema_fragments()
        assert opaque == []
        out = tmp_path / "out.jsonl"
        cfg = load_config(None, overrides=[f"plugins.loadavg.output_file={out}"], plugin_fragments=fragments)
        host.apply_config(cfg.plugin_enabled)
        collectors = host.collect("predis_agent_register_collectors", agent=None, config=cfg)
        exporters = host.collect("predis_agent_register_exporters", agent=None, config=cfg)
        assert [p for p, _ in collectors] == ["loadavg"] and [p for p, _ in exporters] == ["loadavg"]
        batch = list(collectors[0][1].collect())
        assert batch and all(m.name == "example_load_average" for m in batch)
        exporters[0][1].send(batch)
        assert len(out.read_text(encoding="utf-8").splitlines()) == len(batch)
        routes = host.collect("predis_agent_register_routes", agent=SimpleNamespace(config=cfg))
        assert [(p, r.method, r.path) for p, r in routes] == [("loadavg", "GET", "/loadavg")]
        response = asyncio.run(routes[0][1].handler(None))
        assert set(json.loads(response.text)) == {"1m", "5m", "15m"}
        assert info.errors == {}
    finally:
        sys.modules.pop("predis_agent_loadavg", None)
