# SPDX-License-Identifier: Apache-2.0
"""docs/configuration.md is generated from the schema and must match the generator exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.docgen import builtin_schema, leaf_keys, render_config_reference, render_configuration_doc

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REGENERATE = "run `predis-agent config docs > docs/configuration.md`"


@pytest.fixture(autouse=True)
def _all_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    # A blocked built-in would change the generated reference.
    monkeypatch.delenv("PREDIS_AGENT_DISABLE_PLUGINS", raising=False)


def test_configuration_doc_matches_generator() -> None:
    expected = render_configuration_doc(builtin_schema())
    assert DOC.read_text(encoding="utf-8") == expected, REGENERATE


def test_cli_prints_the_generated_doc() -> None:
    result = CliRunner().invoke(cli, ["config", "docs"])
    assert result.exit_code == 0, result.output
    assert result.output == render_configuration_doc(builtin_schema())


def test_every_leaf_key_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    keys = leaf_keys(builtin_schema())
    assert "agent.http.listen" in keys and "plugins.prometheus.enabled" in keys
    missing = [key for key in keys if f"`{key}`" not in text]
    assert not missing, f"undocumented keys {missing}; {REGENERATE}"


def test_rendering_is_deterministic_and_escapes_table_cells() -> None:
    schema = {
        "title": "T",
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "description": "Section A.",
                "properties": {
                    "z": {"type": "string", "pattern": "^(x|y)$", "default": "x", "description": "pipe | here"},
                    "m": {"enum": ["p", "q"], "default": "p"},
                    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 5},
                },
            },
            "b": {"type": "array", "items": {"type": "string", "pattern": "^/"}, "uniqueItems": True, "default": []},
        },
    }
    first = render_config_reference(schema)
    assert first == render_config_reference(schema)
    assert first.index("`a.z`") < first.index("`a.m`") < first.index("`a.n`")
    assert "## Top level" in first and "`b`" in first
    assert "`^(x\\|y)$`" in first and "pipe \\| here" in first
    assert 'one of `"p"`, `"q"`' in first
    assert "integer or null" in first and "1 … 5" in first and "(none)" in first
    assert "array of string" in first and "each item: pattern `^/`" in first
    assert leaf_keys(schema) == ["b", "a.z", "a.m", "a.n"]


def test_every_resp_command_has_its_syntax_and_group() -> None:
    from cache_core.resp.server import COMMANDS
    from cache_core.resp.syntax import GROUPS, SYNTAX

    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(set(grouped)), "a command is listed in two groups"
    assert set(SYNTAX) == set(COMMANDS), f"syntax missing for {set(COMMANDS) - set(SYNTAX)}, or left over for {set(SYNTAX) - set(COMMANDS)}"
    assert set(grouped) == set(COMMANDS)
    for name, syntax in SYNTAX.items():
        assert syntax.upper().startswith(name.upper()), f"{name}'s syntax does not start with its name"


def test_redis_protocol_doc_holds_the_generated_command_index() -> None:
    from agent.docgen import command_index_in, render_command_index

    page = (DOC.parent / "redis-protocol.md").read_text(encoding="utf-8")
    assert command_index_in(page) == render_command_index(), "run `predis-agent resp docs` and paste its output between the markers"
    result = CliRunner().invoke(cli, ["resp", "docs"])
    assert result.exit_code == 0, result.output
    assert result.output == render_command_index()


def test_the_plugin_guide_names_every_built_in_plugin() -> None:
    """docs/plugins.md lists the built-ins by name: a plugin added to DEFAULT_PLUGINS (or
    renamed) without the guide fails here."""
    from agent.plugins import DEFAULT_PLUGINS

    row = next(line for line in (DOC.parent / "plugins.md").read_text().splitlines() if line.startswith("| built-in |"))
    assert [name for name, _module in DEFAULT_PLUGINS if f"`{name}`" not in row] == []
