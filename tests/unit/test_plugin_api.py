# SPDX-License-Identifier: Apache-2.0
"""agent.api is the plugins' only door into the agent, and loading the plugins stays cheap.

* Every module under plugins/ imports from the project only ``agent.api`` (and the
  ``plugins`` package itself): checked on the source, so a new import is named by file
  and line.
* Every name in ``agent.api.__all__`` resolves, and docs/plugins.md documents it.
* The objects the built-in plugins register satisfy the Protocol of their hook.
* Importing and loading every built-in plugin, as ``config validate`` does, imports none
  of the heavy third-party packages (they are imported where they are used).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent import api
from agent.config import load_config
from agent.plugins import DEFAULT_PLUGINS, PluginHost

ROOT = Path(__file__).resolve().parents[2]
PLUGINS_DIR = ROOT / "plugins"
PLUGINS_DOC = ROOT / "docs" / "plugins.md"

# Imported only inside the functions that use them: none may be loaded by importing plugins.
HEAVY_MODULES = ("boto3", "botocore", "scipy", "pyarrow", "datadog", "newrelic_telemetry_sdk", "pynvml", "cupy")

# Which Protocol the objects of each register hook satisfy.
PROTOCOLS = {
    "predis_agent_register_collectors": api.Collector,
    "predis_agent_register_exporters": api.Exporter,
    "predis_agent_register_origins": api.Origin,
    "predis_agent_register_drift_detectors": api.DriftDetector,
    "predis_agent_register_health_checks": api.HealthCheck,
}


def forbidden_imports(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: imports module`` (file relative to ``root``) for each import of the project
    other than agent.api and the plugins package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            modules = [node.module]
            if node.module == "agent":
                modules = [f"agent.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if (top == "agent" and module != "agent.api") or top == "cache_core":
                found.append(f"{path.relative_to(root)}:{node.lineno}: imports {module}")
    return found


def test_plugins_import_only_agent_api() -> None:
    files = sorted(PLUGINS_DIR.rglob("*.py"))
    assert len(files) >= 20
    problems = [line for path in files for line in forbidden_imports(path)]
    assert not problems, "plugins may import only agent.api from the project:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from agent.api import hookimpl\nimport plugins.exporters.base\n", []),
        ("from agent import hookimpl\n", ["imports agent.hookimpl"]),
        ("from agent import api\n", []),
        ("import agent.sinks\n", ["imports agent.sinks"]),
        ("def f():\n    from agent.runtime import Event\n", ["imports agent.runtime"]),
        ("from cache_core.resp.server import COMMANDS\n", ["imports cache_core.resp.server"]),
    ],
)
def test_the_import_check_names_what_it_refuses(tmp_path: Path, source: str, expected: list[str]) -> None:
    path = tmp_path / "plugin.py"
    path.write_text(source, encoding="utf-8")
    found = forbidden_imports(path, tmp_path)
    assert [line.split(": ", 1)[1] for line in found] == expected
    assert all(line.startswith("plugin.py:") for line in found)


def test_the_documented_example_plugin_imports_only_agent_api(tmp_path: Path) -> None:
    blocks = [b for b in re.findall(r"```python\n(.*?)```", PLUGINS_DOC.read_text(encoding="utf-8"), flags=re.DOTALL) if "@hookimpl" in b]
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        path = tmp_path / f"example_{i}.py"
        path.write_text(block, encoding="utf-8")
        assert not forbidden_imports(path, tmp_path), block


def test_every_exported_name_resolves_and_is_documented() -> None:
    assert len(api.__all__) == len(set(api.__all__))
    doc = PLUGINS_DOC.read_text(encoding="utf-8")
    for name in api.__all__:
        assert getattr(api, name) is not None, name
        assert f"`{name}`" in doc, f"docs/plugins.md does not document agent.api.{name}"
    with pytest.raises(AttributeError, match="no attribute 'not_exported'"):
        api.not_exported  # noqa: B018
    assert set(api.__all__) <= set(dir(api))


def test_lazy_names_are_the_defining_modules_objects() -> None:
    from agent.mlops.drift import DriftSettings
    from agent.telemetry import Metric
    from cache_core.resp.server import COMMANDS

    assert api.Metric is Metric and api.DriftSettings is DriftSettings and api.COMMANDS is COMMANDS


class StubAgent:
    """What the register hooks read of the agent: its config and its status maps."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.component_status: dict[str, Any] = {}
        self.readiness: dict[str, Any] = {"ready": True, "components": {}}
        self.cache_service = SimpleNamespace(cache=None, server=None, access_log=None)


def test_builtin_plugins_objects_satisfy_their_protocols(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIN_API_TEST_KEY", "not-a-real-key")
    host = PluginHost(load_entrypoints=False)
    parts = host.schema_parts()
    assert not parts["opaque_plugins"]
    overrides = [
        "exporters.datadog.enabled=true",
        "exporters.datadog.api_key=${env:PLUGIN_API_TEST_KEY}",
        "exporters.newrelic.enabled=true",
        "exporters.newrelic.api_key=${env:PLUGIN_API_TEST_KEY}",
        "exporters.cloudwatch.enabled=true",
        "exporters.cloudwatch.region=eu-west-1",
        f"plugins.files.root={tmp_path}",
        "plugins.s3.bucket=bucket",
        "plugins.redis_origin.url=redis://127.0.0.1:1/0",
    ]
    cfg = load_config(None, overrides=overrides, **parts)
    host.apply_config(cfg.plugin_enabled)
    agent = StubAgent(cfg)
    registered: dict[str, set[str]] = {}
    try:
        for hook, protocol in PROTOCOLS.items():
            for plugin, obj in host.collect(hook, agent=agent, config=cfg):
                assert isinstance(obj, protocol), f"{plugin}: {type(obj).__name__} from {hook} is not an agent.api.{protocol.__name__}"
                registered.setdefault(hook, set()).add(plugin)
                close = getattr(obj, "close", None)
                if callable(close):
                    close()
    finally:
        host.call("predis_agent_shutdown", agent=agent)
    assert not any(info.errors for info in host.plugins.values()), {n: i.last_error for n, i in host.plugins.items() if i.errors}
    assert registered == {
        "predis_agent_register_collectors": {"cache_metrics", "process_metrics", "gpu_metrics", "access_log"},
        "predis_agent_register_exporters": {"datadog", "newrelic", "cloudwatch"},
        "predis_agent_register_origins": {"files", "s3", "redis_origin"},
        "predis_agent_register_drift_detectors": {name for name, _ in DEFAULT_PLUGINS if name.startswith("drift_")},
    }


def test_an_object_missing_a_method_is_not_a_collector() -> None:
    assert not isinstance(SimpleNamespace(name="x"), api.Collector)
    assert isinstance(SimpleNamespace(name="x", collect=list), api.Collector)
    assert not isinstance(SimpleNamespace(name="x", send=print), api.Exporter)


# What `config validate` does with the plugins: import them, merge their schema fragments and sections,
# validate a config and register the enabled ones.
LOAD_ALL = """
import json, sys
from agent.config import load_config
from agent.plugins import PluginHost
host = PluginHost(load_entrypoints=False)
parts = host.schema_parts()
host.apply_config(load_config(None, **parts).plugin_enabled)
print(json.dumps({
    "states": {name: info.state for name, info in host.plugins.items()},
    "opaque": parts["opaque_plugins"],
    "loaded": sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:])),
}))
"""


def test_loading_every_builtin_plugin_imports_no_heavy_package() -> None:
    done = subprocess.run([sys.executable, "-c", LOAD_ALL, *HEAVY_MODULES], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(done.stdout)
    assert set(report["states"].values()) == {"loaded"}, report["states"]
    assert report["opaque"] == []
    assert report["loaded"] == [], f"importing the built-in plugins loaded {report['loaded']}"
