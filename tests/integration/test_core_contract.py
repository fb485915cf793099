# SPDX-License-Identifier: Apache-2.0
"""Plugin isolation, authentication on every route, and secrets that never leak."""

from __future__ import annotations

import json
import os
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.agentproc import AgentProcess, cli, merge
from tests.polling import wait_for

pytestmark = pytest.mark.integration

BAD_PLUGIN = '''
from agent import hookimpl

HOOKS = []


def _boom(hook):
    raise RuntimeError(f"badplugin fails in {hook}")


@hookimpl
def predis_agent_config_schema():
    _boom("config_schema")


@hookimpl
def predis_agent_register_collectors(agent, config):
    _boom("register_collectors")


@hookimpl
def predis_agent_register_exporters(agent, config):
    _boom("register_exporters")


@hookimpl
def predis_agent_register_health_checks(agent, config):
    _boom("register_health_checks")


@hookimpl
def predis_agent_register_drift_detectors(agent, config):
    _boom("register_drift_detectors")


@hookimpl
def predis_agent_register_origins(agent, config):
    _boom("register_origins")


@hookimpl
def predis_agent_register_routes(agent):
    _boom("register_routes")


@hookimpl
def predis_agent_register_commands(cli):
    _boom("register_commands")


@hookimpl
def predis_agent_event(agent, event):
    _boom("event")


@hookimpl
def predis_agent_startup(agent):
    _boom("startup")


@hookimpl
def predis_agent_shutdown(agent):
    _boom("shutdown")
'''

GOOD_PLUGIN = '''
import json

from aiohttp import web

from agent import hookimpl
from agent.http import Route
from agent.telemetry import Metric


class Collector:
    name = "good"

    def collect(self):
        yield Metric("good_collected_total", 7.0, kind="counter", labels={"source": "goodplugin"})


class Exporter:
    name = "good-file"

    def __init__(self, path):
        self.path = path

    def send(self, batch):
        with open(self.path, "a") as handle:
            handle.write(json.dumps(sorted({m.name for m in batch})) + "\\n")


@hookimpl
def predis_agent_config_schema():
    return {"type": "object", "properties": {"path": {"type": "string", "minLength": 1}}, "required": ["path"]}


@hookimpl
def predis_agent_register_collectors(agent, config):
    return [Collector()]


@hookimpl
def predis_agent_register_exporters(agent, config):
    return [Exporter(config["path"])]


@hookimpl
def predis_agent_register_routes(agent):
    async def hello(request):
        return web.json_response({"plugin": "goodplugin"})

    return [Route("GET", "/good", hello)]


@hookimpl
def predis_agent_event(agent, event):
    with open(agent.config.plugin_config("goodplugin")["path"] + ".events", "a") as handle:
        handle.write(event.kind + "\\n")
'''


def make_distribution(root: Path) -> Path:
    """A pip-installed-looking distribution: modules plus dist-info with entry points."""
    site = root / "site"
    site.mkdir()
    (site / "badplugin_mod.py").write_text(BAD_PLUGIN)
    (site / "goodplugin_mod.py").write_text(GOOD_PLUGIN)
    info = site / "predis_test_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: predis-test-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [predis_agent]
            badplugin = badplugin_mod
            goodplugin = goodplugin_mod
            brokenimport = module_that_does_not_exist
            """
        )
    )
    return site


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    site = make_distribution(tmp_path)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def plugged(tmp_path: Path, plugin_env: dict[str, str]) -> Iterator[AgentProcess]:
    out = tmp_path / "exported.jsonl"
    agent = AgentProcess(tmp_path, {"plugins": {"goodplugin": {"path": str(out)}}}, env=plugin_env)
    agent.start()
    yield agent
    agent.stop()


def test_a_plugin_raising_in_every_hook_does_not_stop_the_others(plugged: AgentProcess, tmp_path: Path) -> None:
    assert plugged.get("/good").json() == {"plugin": "goodplugin"}
    assert plugged.get("/readyz").status_code == 200
    out = tmp_path / "exported.jsonl"
    wait_for(lambda: out.exists() and "good_collected_total" in out.read_text(), what="exporter to receive batches")
    assert plugged.metric('good_collected_total{source="goodplugin"}') == 7.0

    plugins = {p["name"]: p for p in plugged.status()["plugins"]}
    assert plugins["goodplugin"]["state"] == "loaded"
    assert plugins["goodplugin"]["hook_errors"] == {}
    assert plugins["brokenimport"]["state"] == "failed"
    assert "module_that_does_not_exist" in plugins["brokenimport"]["error"]
    bad = plugins["badplugin"]
    for hook in (
        "predis_agent_config_schema",
        "predis_agent_register_collectors",
        "predis_agent_register_exporters",
        "predis_agent_register_health_checks",
        "predis_agent_register_routes",
        "predis_agent_startup",
    ):
        assert bad["hook_errors"].get(hook, 0) >= 1, (hook, bad)
    assert plugged.metric('predis_agent_plugin_errors_total{hook="predis_agent_startup",plugin="badplugin"}') == 1.0
    assert "badplugin fails in startup" in plugged.logs()

    # Events reach the good listener even though the bad one raises first.
    plugged.write_config(merge(plugged.config, {"agent": {"log": {"level": "debug"}}}))
    events = Path(str(out) + ".events")
    wait_for(lambda: events.exists() and "config_reloaded" in events.read_text(), what="event delivery")
    names = [p["name"] for p in plugged.status()["plugins"]]
    assert "badplugin" in names and names == sorted(names)
    assert next(p for p in plugged.status()["plugins"] if p["name"] == "badplugin")["hook_errors"]["predis_agent_event"] >= 1

    # Shutdown hook of the bad plugin raises too; the agent still exits cleanly.
    assert plugged.stop() == 0


def test_plugins_can_be_disabled_in_config_and_reenabled(plugged: AgentProcess, tmp_path: Path) -> None:
    assert plugged.get("/good").status_code == 200
    disabled = merge(plugged.config, {"plugins": {"goodplugin": {"enabled": False}}})
    plugged.write_config(disabled)
    wait_for(lambda: plugged.get("/good").status_code == 404, what="route removal")
    states = {p["name"]: p["state"] for p in plugged.status()["plugins"]}
    assert states["goodplugin"] == "disabled"

    second = tmp_path / "second.jsonl"
    plugged.write_config(merge(plugged.config, {"plugins": {"goodplugin": {"enabled": True, "path": str(second)}}}))
    wait_for(lambda: plugged.get("/good").status_code == 200, what="route back")
    wait_for(lambda: second.exists() and "good_collected_total" in second.read_text(), what="exporter with new settings")


def test_exporter_section_change_keeps_the_sink_and_its_queue(plugged: AgentProcess, tmp_path: Path) -> None:
    wait_for(lambda: plugged.status()["sinks"].get("good-file", {}).get("sent_payloads", 0) >= 2, what="sends")
    sent_before = plugged.status()["sinks"]["good-file"]["sent_payloads"]
    moved = tmp_path / "moved.jsonl"
    plugged.write_config(merge(plugged.config, {"plugins": {"goodplugin": {"path": str(moved)}}}))
    wait_for(lambda: moved.exists() and moved.read_text(), what="delivery to the new path")
    sink = plugged.status()["sinks"]["good-file"]
    # Same sink object: its counters continued instead of starting from zero.
    assert sink["sent_payloads"] > sent_before
    assert sink["dropped_points"] == {}


def test_blocked_plugin_is_never_loaded(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    env = {**os.environ, **plugin_env, "PREDIS_AGENT_DISABLE_PLUGINS": "badplugin,brokenimport"}
    proc = cli("plugins", "list", "--json", "--config", str(tmp_path / "none.yaml"), env=env, check=False)
    # The config file does not exist: plugins list still works and says so.
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["badplugin"]["state"] == "blocked"
    assert rows["brokenimport"]["state"] == "blocked"
    assert rows["goodplugin"]["state"] == "loaded"
    assert rows["prometheus"]["source"] == "builtin"


def test_every_route_but_livez_refuses_missing_or_wrong_tokens(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path)
    agent.start()
    try:
        routes = re.search(r"\(([^)]*)\)", (tmp_path / "stdout.log").read_text()).group(1).split(", ")  # type: ignore[union-attr]
        assert {"/livez", "/readyz", "/status", "/metrics", "/reload"} <= set(routes)
        wrong = agent.token[:-4] + ("AAAA" if not agent.token.endswith("AAAA") else "BBBB")
        for path in [*routes, "/nope", "/../etc/passwd"]:
            method = requests.post if path == "/reload" else requests.get
            for headers in ({}, {"Authorization": "Bearer " + wrong}, {"Authorization": "Basic " + agent.token}, {"Authorization": "Bearer"}):
                resp = method(agent.base_url + path, headers=headers, allow_redirects=False, timeout=10)
                if path == "/livez":
                    assert resp.status_code == 200
                elif path == "/dashboard":  # a console page: sent to the login form (tests/integration/test_console_security.py)
                    assert resp.status_code == 303 and resp.headers["Location"] == "/dashboard/login", (headers, resp.status_code)
                else:
                    assert resp.status_code == 401, (path, headers, resp.status_code)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        # /metrics is rendered once per collection round: the last refusals show up in the next one.
        wait_for(
            lambda: (agent.metric("predis_agent_http_auth_failures_total") or 0) >= 4 * (len(routes) + 1),
            what="every refused request counted in /metrics",
        )

        # A token created while the agent runs is accepted without restart; a revoked one is refused.
        second = agent.create_token("second")
        assert agent.get("/status", token=second).status_code == 200
        ids = {r["name"]: r["id"] for r in json.loads(cli("token", "list", "--json", "--config", str(agent.config_path)).stdout)}
        cli("token", "revoke", ids["second"], "--config", str(agent.config_path))
        assert agent.get("/status", token=second).status_code == 401
        assert agent.get("/status").status_code == 200
        assert oct(agent.token_store.stat().st_mode & 0o777) == "0o600"
        assert agent.token not in agent.token_store.read_text()
    finally:
        agent.stop()


def test_secrets_never_appear_in_logs_show_status_or_errors(tmp_path: Path) -> None:
    file_secret = "file-secret-7f3a9c21e0"
    env_secret = "env-secret-55b1d0aa93"
    secret_file = tmp_path / "otlp-token"
    secret_file.write_text(file_secret + "\n")
    secret_file.chmod(0o600)
    config = {
        "agent": {
            "log": {"level": "debug"},
            "tracing": {"service_name": "predis-${file:" + str(secret_file) + "}"},
            "pid_file": str(tmp_path / "p-${env:PA_SECRET}.pid"),
        },
        "exporters": {"prometheus": {"path": "/metrics"}},
    }
    env = {"PA_SECRET": env_secret}
    agent = AgentProcess(tmp_path, config, env=env)
    agent.start()
    try:
        shown = cli("config", "show", "--config", str(agent.config_path), env=agent.env).stdout
        assert "***" in shown and "${file:" + str(secret_file) + "}" in shown
        status_text = agent.get("/status").text
        # Trigger a reload that fails because of a secret-bearing value.
        bad = merge(agent.config, {"agent": {"log": {"format": "${env:PA_SECRET}"}}})
        agent.write_config(bad)
        last = wait_for(lambda: (s := agent.status()["last_reload"]) and not s["ok"] and s, what="rejection")
        assert any(e.startswith("agent.log.format:") for e in last["errors"])
        validate = cli("config", "validate", str(agent.config_path), env=agent.env, check=False)
        assert validate.returncode == 2
        assert "agent.log.format:" in validate.stderr
        agent.stop()
        everything = "\n".join([shown, status_text, json.dumps(last), validate.stdout, validate.stderr, agent.logs()])
        assert file_secret not in everything
        assert env_secret not in everything
    finally:
        agent.stop()
