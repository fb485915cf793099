# SPDX-License-Identifier: Apache-2.0
"""agent.config: defaults, every problem with path and line, secrets, overrides, diffs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.config import (
    Secret,
    SecretScrubFilter,
    apply_overrides,
    changed_paths,
    load_config,
    scrub,
    section_changed,
)
from agent.errors import ConfigError


def problems(text: str, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(None, text=text, **kw)  # type: ignore[arg-type]
    return [str(p) for p in info.value.problems]


def test_empty_file_gets_every_default() -> None:
    cfg = load_config(None, text="")
    assert cfg.get("agent.http.listen") == "127.0.0.1:9470"
    assert cfg.get("agent.auth.anonymous_routes") == ["/livez"]
    assert cfg.get("agent.log.file.max_bytes") == 1048576000
    assert cfg.get("agent.log.file.backup_count") == 10
    assert cfg.get("cache.backend") == "auto"


def test_all_problems_are_reported_with_path_and_line() -> None:
    text = "agent:\n  http:\n    listen: nope\n  log:\n    level: loud\n  reload:\n    watch_interval_seconds: 0\ncache:\n  backend: gpu\n"
    found = problems(text)
    assert found == [
        "agent.http.listen: 'nope' does not match the pattern ^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$ (line 3)",
        "agent.log.level: expected one of 'debug', 'info', 'warning', 'error', 'critical', found 'loud' (line 5)",
        "agent.reload.watch_interval_seconds: must be at least 0.1, found 0 (line 7)",
        "cache.backend: expected one of 'auto', 'cupy', 'numpy', found 'gpu' (line 9)",
    ]


def test_unknown_deep_key_names_full_path_and_line() -> None:
    found = problems("agent:\n  http:\n    tls:\n      enabled: false\n      cert: x\n")
    assert len(found) == 1
    assert found[0].startswith("agent.http.tls.cert: unknown key (allowed here: cert_file, enabled, key_file, min_version)")
    assert found[0].endswith("(line 5)")


def test_duplicate_keys_and_syntax_errors_and_non_mappings() -> None:
    assert problems("agent:\n  log: {}\n  log: {}\n") == ["agent.log: duplicate key (line 3)"]
    syntax = problems("agent:\n  log: [\n")
    assert syntax[0].startswith("<root>: YAML syntax error") and "(line" in syntax[0]
    assert problems("- a\n- b\n")[0].startswith("<root>: expected a mapping at the top level, found array")


def test_overrides_parse_yaml_scalars_and_are_validated() -> None:
    cfg = load_config(None, text="", overrides=["agent.collect.interval_seconds=2.5", "agent.reload.watch=false"])
    assert cfg.get("agent.collect.interval_seconds") == 2.5
    assert cfg.get("agent.reload.watch") is False
    assert problems("", overrides=["agent.collect.interval_seconds=-1"])[0].startswith("agent.collect.interval_seconds: must be at least")
    data: dict = {"a": 1}
    bad = apply_overrides(data, ["novalue", "a.b=1", "x..y=2"])
    assert [p.path for p in bad] == ["novalue", "a", "x..y"]


def test_env_file_and_cred_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "s"
    secret_file.write_text("from-file-value\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "token").write_text("from-cred-value")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    monkeypatch.setenv("BIND_HOST", "127.0.0.2")
    text = (
        "agent:\n"
        "  http:\n    listen: '${env:BIND_HOST}:9470'\n"
        f"  pid_file: '/run/${{file:{secret_file}}}/${{cred:token}}.pid'\n"
        "  tracing:\n    service_name: 'literal-$${env:NOT_A_REF}'\n"
    )
    cfg = load_config(None, text=text)
    assert cfg.get("agent.http.listen") == "127.0.0.2:9470"
    assert cfg.get("agent.pid_file") == "/run/from-file-value/from-cred-value.pid"
    assert cfg.get("agent.tracing.service_name") == "literal-${env:NOT_A_REF}"
    shown = json.dumps(cfg.redacted())
    assert "from-file-value" not in shown and "from-cred-value" not in shown
    assert "${env:BIND_HOST}:9470" in shown


def test_reference_errors_name_the_path_and_never_the_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAKY", "do-not-print-me-123")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    found = problems(
        "agent:\n"
        "  pid_file: '${env:MISSING_VAR_XYZ}'\n"
        "  log:\n    format: '${env:LEAKY}'\n"
        "  tracing:\n    service_name: '${file:relative/path}'\n"
        f"    otlp_endpoint: '${{file:{tmp_path / 'absent'}}}'\n"
        "cache:\n  backend: '${cred:x}'\n"
    )
    text = "\n".join(found)
    assert "agent.pid_file: environment variable MISSING_VAR_XYZ is not set" in text
    assert "agent.log.format: expected one of 'text', 'json', found ***" in text
    assert "agent.tracing.service_name: ${file:relative/path} must name an absolute path" in text
    assert "does not exist" in text
    assert "cache.backend: ${cred:x} needs $CREDENTIALS_DIRECTORY" in text
    assert "do-not-print-me-123" not in text


def test_write_only_keys_keep_the_secret_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    fragment = {"type": "object", "properties": {"api_key": {"type": "string", "writeOnly": True}, "site": {"type": "string"}}}
    monkeypatch.setenv("UNIT_API_KEY", "k-1234567890")
    cfg = load_config(
        None,
        text="plugins:\n  vendor:\n    api_key: ${env:UNIT_API_KEY}\n    site: ${env:UNIT_API_KEY}\n",
        plugin_fragments={"vendor": fragment},
    )
    key = cfg.plugin_config("vendor")["api_key"]
    assert isinstance(key, Secret) and key.reveal() == "k-1234567890"
    assert str(key) == "***" and f"{key}" == "***" and "k-1234567890" not in repr(key)
    assert json.dumps({"k": key}, default=str) == '{"k": "***"}'
    assert cfg.plugin_config("vendor")["site"] == "k-1234567890"
    assert "k-1234567890" not in json.dumps(cfg.redacted())
    assert cfg.plugin_enabled("vendor") is True


def test_plugin_sections_are_validated_and_unknown_plugins_rejected() -> None:
    fragments = {"vendor": {"type": "object", "properties": {"port": {"type": "integer", "maximum": 10}}}}
    found = problems("plugins:\n  vendor:\n    port: 99\n    extra: 1\n  ghost: {}\n", plugin_fragments=fragments)
    assert "plugins.ghost: unknown key (allowed here: vendor) (line 5)" in found
    assert "plugins.vendor.extra: unknown key (allowed here: enabled, port) (line 4)" in found
    assert "plugins.vendor.port: must be at most 10, found 99 (line 3)" in found
    # A plugin that failed to load: its section is accepted as written.
    cfg = load_config(None, text="plugins:\n  broken:\n    anything: [1, 2]\n", opaque_plugins=["broken"])
    assert cfg.plugin_config("broken") == {"anything": [1, 2]}


def test_changed_paths_and_section_matching() -> None:
    old = {"a": {"b": 1, "c": {"d": 2}}, "x": 1}
    new = {"a": {"b": 1, "c": {"d": 3}, "e": 0}, "y": 1}
    assert changed_paths(old, new) == {"a.c.d", "a.e", "x", "y"}
    assert section_changed({"a.c.d"}, ["a.c"]) and section_changed({"a"}, ["a.c.d"])
    assert not section_changed({"a.cd"}, ["a.c"])
    rotated = changed_paths({"k": Secret("one-secret", "${env:K}")}, {"k": Secret("two-secret", "${env:K}")})
    assert rotated == {"k"}


def test_scrubbing_of_free_text_and_log_records() -> None:
    Secret("a-secret-for-logs", "${env:X}")
    assert scrub("value=a-secret-for-logs;") == "value=***;"
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "key %s", ("a-secret-for-logs",), None)
    SecretScrubFilter().filter(record)
    assert record.getMessage() == "key ***"
