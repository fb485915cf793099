# SPDX-License-Identifier: Apache-2.0
"""What the CLI imports for ``--help``, ``version`` and ``config validate``.

Behaviour, not timing (bench/bench_cli_start.py times them): each path runs the CLI's
``main`` in a fresh interpreter, which then prints the modules it imported.
``config validate`` is run with the built-in plugins blocked (the CLI's and the config
loader's own imports) and with all of them loaded, as an operator runs it (the drift
detectors bring numpy, nothing brings the runtime, the HTTP stack or an SDK).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.plugins import DEFAULT_PLUGINS, DISABLE_ENV_VAR, PluginHost

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config_schema" / "examples" / "agent.yaml"
# Never needed to print help or validate a config.
HEAVY = ("aiohttp", "numpy", "prometheus_client", "opentelemetry", "agent.runtime", "agent.http", "cache_core.cache")
# Needed by config validate, but not by --help or version.
CONFIG_ONLY = ("jsonschema", "yaml", "agent.config")

RUN_MAIN = """
import contextlib, io, json, sys
from agent.cli import main
sys.argv = ["predis-agent", *sys.argv[1:]]
out = io.StringIO()
code = 0
with contextlib.redirect_stdout(out):
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
print(json.dumps({"code": code, "stdout": out.getvalue(), "modules": sorted(sys.modules)}))
"""


# An installed plugin that adds a command.
HELLO_PLUGIN = """
import click
from agent import hookimpl

@hookimpl
def predis_agent_register_commands(cli):
    @cli.command("hello")
    def hello():
        \"\"\"Say hello from an installed plugin.\"\"\"
        click.echo("hello from the plugin")
"""


def run_cli(*args: str, block_builtins: bool = False, site: Path | None = None) -> tuple[int, str, set[str]]:
    env = dict(os.environ)
    if block_builtins:
        env[DISABLE_ENV_VAR] = ",".join(name for name, _ in DEFAULT_PLUGINS)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, "-c", RUN_MAIN, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    return int(result["code"]), result["stdout"], set(result["modules"])


def imported(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(name for name in names if name in modules)


def test_help_imports_no_plugin_no_config_and_nothing_heavy() -> None:
    code, out, modules = run_cli("--help")
    assert code == 0 and "validate" not in out and "config" in out and "version" in out
    assert imported(modules, HEAVY + CONFIG_ONLY) == []
    assert not any(name.startswith("plugins.") for name in modules)


def test_version_imports_nothing_heavy() -> None:
    code, out, modules = run_cli("version")
    assert code == 0 and out.strip()
    assert imported(modules, HEAVY + CONFIG_ONLY) == []


def test_config_validate_loads_the_config_but_not_the_runtime() -> None:
    code, out, modules = run_cli("config", "validate", str(EXAMPLE), block_builtins=True)
    assert code == 0 and out.strip().endswith(": valid")
    assert imported(modules, CONFIG_ONLY) == sorted(CONFIG_ONLY)  # it did validate
    assert imported(modules, HEAVY) == []


# Loading every built-in plugin (for its config section) must not import these.
NOT_FOR_VALIDATE = (
    "aiohttp", "opentelemetry", "agent.runtime", "agent.http", "cache_core.resp.server", "scipy", "boto3",
    "botocore", "pyarrow", "pybreaker", "tenacity", "redis", "cryptography", "datadog", "newrelic_telemetry_sdk",
)  # fmt: skip


def test_config_validate_with_every_plugin_loads_no_runtime_and_no_sdk() -> None:
    code, out, modules = run_cli("config", "validate", str(EXAMPLE))
    assert code == 0 and out.strip().endswith(": valid")
    assert any(name.startswith("plugins.drift.") for name in modules)  # the plugins were loaded
    assert imported(modules, NOT_FOR_VALIDATE) == []


def test_an_installed_plugins_command_is_listed_and_runs(tmp_path: Path) -> None:
    (tmp_path / "hello_plugin.py").write_text(HELLO_PLUGIN)
    info = tmp_path / "predis_hello-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: predis-hello\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[predis_agent]\nhello = hello_plugin\n")
    code, out, _ = run_cli("--help", site=tmp_path)
    assert code == 0 and "Say hello from an installed plugin." in out
    code, out, _ = run_cli("hello", site=tmp_path)
    assert code == 0 and out == "hello from the plugin\n"
    code, _, _ = run_cli("hello")
    assert code == 2  # without the plugin installed there is no such command


def test_no_builtin_plugin_adds_commands() -> None:
    # Why --help need not import the built-in plugins: only installed plugins add commands.
    host = PluginHost(load_entrypoints=False)
    loaded = {name: info.obj for name, info in host.plugins.items() if info.obj is not None}
    assert set(loaded) == {name for name, _ in DEFAULT_PLUGINS}
    assert [name for name, obj in loaded.items() if hasattr(obj, "predis_agent_register_commands")] == []
