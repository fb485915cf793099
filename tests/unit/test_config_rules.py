# SPDX-License-Identifier: Apache-2.0
"""agent.config_rules: `config validate` accepts exactly what `run` and a reload accept.

Every rule has a config that breaks it below; each is refused by the CLI's validate (exit
2, naming the key and the rule), by the agent as `run` builds it, and by a running agent's
reload, which keeps its config.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.config import Secret, load_config
from agent.config_rules import RULES, check_rules
from agent.errors import ConfigError
from agent.plugins import PluginHost
from agent.runtime import Agent

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "config_schema" / "examples").glob("*.yaml")) + [ROOT / "deploy" / "agent.yaml"]

# rule name -> (a config that breaks it, the key path the problem names)
BROKEN: dict[str, tuple[str, str]] = {
    "listen-address": ("agent:\n  http:\n    listen: '127.0.0.1:99999'\n", "agent.http.listen"),
    "tls-needs-cert-and-key": ("cache:\n  resp:\n    tls: {enabled: true}\n", "cache.resp.tls.enabled"),
    "resp-password-not-empty": ("cache:\n  resp:\n    requirepass: '${env:PREDIS_UT_EMPTY}'\n", "cache.resp.requirepass"),
    "resp-public-needs-password": ("cache:\n  resp:\n    listen: '0.0.0.0:6379'\n", "cache.resp.listen"),
    "read-through-needs-origin": ("cache:\n  read_through: true\n", "cache.read_through"),
    "origin-plugin-enabled": ("cache:\n  origin: files\nplugins:\n  files: {enabled: false}\n", "cache.origin"),
    "prefetch-needs-origin": ("cache:\n  prefetch: {enabled: true}\n", "cache.prefetch.enabled"),
    "prefetch-thresholds-ordered": (
        "cache:\n  origin: files\n  prefetch: {enabled: true, min_threshold: 0.9, max_threshold: 0.2}\nplugins:\n  files: {root: /srv}\n",
        "cache.prefetch.min_threshold",
    ),
    # The built-in origins' rules (predis_agent_config_rules): the plugin registers no origin without them.
    "files.origin-needs-root": ("cache:\n  origin: files\n", "plugins.files.root"),
    "s3.origin-needs-bucket": ("cache:\n  origin: s3\n", "plugins.s3.bucket"),
    "redis_origin.origin-needs-url": ("cache:\n  origin: redis\n", "plugins.redis_origin.url"),
    "redis_origin.origin-needs-url (disabled)": (
        "cache:\n  origin: redis\nplugins:\n  redis_origin: {enabled: false, url: 'redis://127.0.0.1:6379'}\n",
        "cache.origin",
    ),
    "ring-capacity-power-of-two": ("collectors:\n  access_log: {ring_capacity: 3000}\n", "collectors.access_log.ring_capacity"),
    "aiops-live-opted-in": ("aiops:\n  remediation: {live: [rollback_model]}\n", "aiops.remediation.live"),
    "aiops-windows": ("aiops:\n  forecast: {min_rounds: 40, window_rounds: 30}\n", "aiops.forecast.min_rounds"),
    "rollout-steps": ("mlops:\n  rollout: {steps: [0.5, 0.25, 1.0]}\n", "mlops.rollout"),
    "federated-settings": ("mlops:\n  federated: {enabled: true}\n", "mlops.federated.enabled"),
    "federated-settings (noise)": (
        "collectors:\n  access_log: {enabled: true, store_raw_keys: true}\nmlops:\n  federated: {enabled: true, noise_multiplier: 1.0}\n",
        "mlops.federated.noise_multiplier",
    ),
    "federated-settings (tls)": (
        "collectors:\n  access_log: {enabled: true, store_raw_keys: true}\nmlops:\n  federated: {enabled: true, server: '10.0.0.5:9092'}\n",
        "mlops.federated.tls.ca_file",
    ),
}


# Caught by the schema first when the config is loaded (an empty string at a key with
# minLength); the rule still guards a config a plugin or test builds without loading.
SCHEMA_FIRST = {"resp-password-not-empty"}


@pytest.fixture(autouse=True)
def _empty_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDIS_UT_EMPTY", "")


def rule_of(case: str) -> str:
    return case.split(" (")[0]


def test_every_rule_has_a_breaking_config_here() -> None:
    plugin_rules = PluginHost(load_entrypoints=False).config_rules()
    assert sorted({rule_of(case) for case in BROKEN}) == sorted(rule.name for rule in (*RULES, *plugin_rules))


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validate_and_run_refuse_the_same_config_naming_the_rule(case: str, tmp_path: Path) -> None:
    text, path = BROKEN[case]
    name = rule_of(case)
    file = tmp_path / "agent.yaml"
    file.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(cli, ["config", "validate", str(file)])
    assert result.exit_code == 2, result.output
    named = name not in SCHEMA_FIRST
    assert f"{path}: " in result.output and (f"[rule {name}]" in result.output) == named
    with pytest.raises(ConfigError) as refused:
        Agent(str(file))
    assert [(p.path, f"[rule {name}]" in p.message) for p in refused.value.problems] == [(path, named)]


def test_the_empty_password_rule_guards_a_config_built_without_loading() -> None:
    data = load_config(None).data
    data["cache"]["resp"]["requirepass"] = Secret("", "${env:PREDIS_UT_EMPTY}")
    assert [(p.path, "[rule resp-password-not-empty]" in p.message) for p in check_rules(data)] == [("cache.resp.requirepass", True)]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_shipped_configs_pass_every_rule(example: Path) -> None:
    result = CliRunner().invoke(cli, ["config", "validate", str(example)])
    assert result.exit_code == 0, result.output
    assert check_rules(load_config(str(example), **PluginHost(load_entrypoints=False).schema_parts()).data) == []


def test_a_problem_names_the_line_of_its_key(tmp_path: Path) -> None:
    file = tmp_path / "agent.yaml"
    file.write_text("agent:\n  log: {level: info}\ncollectors:\n  access_log:\n    ring_capacity: 3000\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(str(file))
    assert [(p.path, p.line) for p in refused.value.problems] == [("collectors.access_log.ring_capacity", 5)]


def test_a_reload_that_breaks_a_rule_is_rejected_and_the_running_config_kept(tmp_path: Path) -> None:
    file = tmp_path / "agent.yaml"
    good = "agent:\n  http: {listen: '127.0.0.1:0'}\ncache:\n  resp: {listen: '127.0.0.1:0'}\n"
    file.write_text(good, encoding="utf-8")

    async def scenario() -> tuple[bool, list[str], int]:
        agent = Agent(str(file))
        await agent.start()
        try:
            file.write_text(good + "  prefetch: {enabled: true}\n", encoding="utf-8")
            result = await agent.reload("test")
            return result.ok, result.errors, agent.generation
        finally:
            await agent.stop()

    ok, errors, generation = asyncio.run(scenario())
    assert not ok and generation == 1
    assert any("[rule prefetch-needs-origin]" in e and e.startswith("cache.prefetch.enabled") for e in errors)


def test_a_plugins_rules_are_named_after_it_and_a_broken_one_is_isolated(tmp_path: Path) -> None:
    host = PluginHost(load_entrypoints=False, builtins=[("ruled", "tests.plugins.rules_plugin")])
    parts = host.config_parts()
    assert [rule.name for rule in parts["plugin_rules"]] == ["ruled.no-debug", "ruled.explodes"]
    assert host.plugins["ruled"].errors == {"predis_agent_config_rules": 1}  # the non-Rule
    with pytest.raises(ConfigError) as refused:
        load_config(None, text="agent:\n  log: {level: debug}\n", **parts)
    assert [str(p) for p in refused.value.problems] == [
        "agent.log.level: is debug, which this plugin refuses [rule ruled.no-debug] (line 2)"
    ]
    assert host.plugins["ruled"].errors == {"predis_agent_config_rules": 2}  # and the check that raised
    load_config(None, text="agent:\n  log: {level: info}\n", **parts)
