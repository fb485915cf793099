# SPDX-License-Identifier: Apache-2.0
"""agent.config: defaults, problems with path and line, overrides, secret references,
redaction and scrubbing, plugin sections, and change detection."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import (
    REDACTED,
    Config,
    Secret,
    SecretScrubFilter,
    apply_overrides,
    build_schema,
    changed_paths,
    load_config,
    scrub,
    section_changed,
)
from agent.errors import ConfigError, ConfigProblem
from agent.plugins import PluginHost
from config_schema import load_schema

LISTEN_PATTERN = "^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$"


def rejected(text: str, **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(None, text=text, **kw)
    return info.value


def by_path(error: ConfigError) -> dict[str, ConfigProblem]:
    return {p.path: p for p in error.problems}


def schema_leaves(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(dotted path, default) of every leaf property with a default in the schema."""
    for name, sub in schema.get("properties", {}).items():
        path = (*prefix, name)
        if sub.get("type") == "object" and "properties" in sub:
            yield from schema_leaves(sub, path)
        elif "default" in sub:
            yield ".".join(path), sub["default"]


# ----------------------------------------------------------------------------- defaults


def test_empty_file_gets_every_schema_default(tmp_path: Path) -> None:
    cfg_file = tmp_path / "agent.yaml"
    cfg_file.write_text("")
    cfg = load_config(str(cfg_file))
    leaves = dict(schema_leaves(load_schema()))
    assert len(leaves) > 20  # the walk really covered the schema
    for path, default in leaves.items():
        assert cfg.get(path, default=KeyError) == default, path
    assert cfg.source == str(cfg_file)
    assert cfg.get("plugins") == {}


def test_comment_only_file_and_embedded_default_are_the_same_config() -> None:
    assert load_config(None, text="# nothing here\n").data == load_config(None).data


def test_given_values_win_over_defaults_and_siblings_are_still_filled() -> None:
    cfg = load_config(None, text="agent:\n  log:\n    level: debug\n")
    assert cfg.get("agent.log.level") == "debug"
    assert cfg.get("agent.log.format") == "text"
    assert cfg.get("agent.log.file.backup_count") == 10


def test_config_get_and_section_helpers() -> None:
    cfg = load_config(None)
    assert cfg.get("agent.no.such.key", "fallback") == "fallback"
    assert cfg.get("agent.http.listen.deeper") is None  # a leaf cannot be descended into
    assert cfg.section("agent.http.listen") == {}  # not a mapping → empty section
    assert cfg.section("agent.collect")["interval_seconds"] == 10


# ----------------------------------------------------------------------------- problems


def test_unknown_key_deep_in_the_tree_has_full_path_and_line() -> None:
    text = "agent:\n  log:\n    level: info\n    file:\n      backup_count: 3\n      pathh: /tmp/x\n"
    error = rejected(text)
    assert len(error.problems) == 1
    problem = error.problems[0]
    assert problem.path == "agent.log.file.pathh"
    assert problem.line == 6
    assert "unknown key" in problem.message
    assert "backup_count, max_bytes, path" in problem.message


def test_unknown_top_level_key_and_unknown_key_under_tls_both_reported() -> None:
    error = rejected("agnt: {}\nagent:\n  http:\n    tls:\n      certfile: x\n")
    problems = by_path(error)
    assert set(problems) == {"agnt", "agent.http.tls.certfile"}
    assert problems["agnt"].line == 1
    assert problems["agent.http.tls.certfile"].line == 5
    assert "agent, aiops, cache, collectors, console, drift, exporters, mlops, plugins" in problems["agnt"].message


@pytest.mark.parametrize(
    ("text", "path", "line", "fragment"),
    [
        ("agent:\n  log:\n    file:\n      max_bytes: 100\n", "agent.log.file.max_bytes", 4, "must be at least 4096, found 100"),
        ("agent:\n  tracing:\n    sample_ratio: 1.5\n", "agent.tracing.sample_ratio", 3, "must be at most 1, found 1.5"),
        ("agent:\n  reload:\n    watch: 'yes'\n", "agent.reload.watch", 3, "expected boolean, found string"),
        ("agent:\n  collect:\n    interval_seconds: [1]\n", "agent.collect.interval_seconds", 3, "expected number, found array"),
        ("agent:\n  log:\n    level: loud\n", "agent.log.level", 3, "expected one of 'debug', 'info', 'warning', 'error', 'critical', found 'loud'"),
        ("cache:\n  backend: gpu\n", "cache.backend", 2, "found 'gpu'"),
        ("agent:\n  http:\n    listen: nope\n", "agent.http.listen", 3, f"'nope' does not match the pattern {LISTEN_PATTERN}"),
        ("agent:\n  auth:\n    anonymous_routes: [livez]\n", "agent.auth.anonymous_routes.0", 3, "does not match the pattern ^/"),
        ("agent:\n  tracing:\n    service_name: ''\n", "agent.tracing.service_name", 3, "must not be empty"),
        ("agent:\n  auth:\n    anonymous_routes: [/a, /a]\n", "agent.auth.anonymous_routes", 3, "items must be unique"),
        ("agent:\n  http: null\n", "agent.http", 2, "expected object, found null"),
    ],
)
def test_each_kind_of_problem_names_its_path_and_line(text: str, path: str, line: int, fragment: str) -> None:
    error = rejected(text)
    assert [p.path for p in error.problems] == [path]
    assert fragment in error.problems[0].message
    assert error.problems[0].line == line
    assert f"{path}: " in str(error) and f"(line {line})" in str(error)


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    text = (
        "agent:\n"
        "  http:\n"
        "    listen: nope\n"  # 3 pattern
        "    max_request_bytes: 10\n"  # 4 minimum
        "  log:\n"
        "    level: loud\n"  # 6 enum
        "    colour: red\n"  # 7 unknown
        "  reload:\n"
        "    watch: maybe\n"  # 9 type
        "cache:\n"
        "  self_test_slots: 0\n"  # 11 minimum
    )
    error = rejected(text)
    got = [(p.path, p.line) for p in error.problems]
    assert got == [
        ("agent.http.listen", 3),
        ("agent.http.max_request_bytes", 4),
        ("agent.log.level", 6),
        ("agent.log.colour", 7),
        ("agent.reload.watch", 9),
        ("cache.self_test_slots", 11),
    ]
    assert str(error).count("\n  ") == 6


def test_duplicate_keys_are_reported_with_their_line_at_any_depth() -> None:
    text = "agent:\n  log:\n    file:\n      path: /a\n      path: /b\ncache: {}\ncache: {}\n"
    error = rejected(text)
    assert [(p.path, p.message, p.line) for p in error.problems] == [
        ("agent.log.file.path", "duplicate key", 5),
        ("cache", "duplicate key", 7),
    ]


def test_yaml_syntax_error_has_a_line() -> None:
    error = rejected("agent:\n  log:\n\tlevel: info\n")
    assert len(error.problems) == 1
    assert error.problems[0].path == ""
    assert error.problems[0].message.startswith("YAML syntax error")
    assert error.problems[0].line == 3
    assert "<root>: YAML syntax error" in str(error)


@pytest.mark.parametrize(("text", "found"), [("- a\n- b\n", "array"), ("42\n", "integer"), ("just text\n", "string")])
def test_top_level_must_be_a_mapping(text: str, found: str) -> None:
    error = rejected(text)
    assert len(error.problems) == 1
    assert error.problems[0].message == f"expected a mapping at the top level, found {found}"


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "absent.yaml"))
    assert "does not exist" in str(info.value)


# ----------------------------------------------------------------------------- --set overrides


def test_overrides_parse_yaml_scalars_and_create_nested_maps() -> None:
    data: dict[str, Any] = {"keep": {"me": 1}}
    problems = apply_overrides(
        data,
        [
            "a.int=42",
            "a.float=2.5",
            "a.yes=true",
            "a.no=false",
            "a.null=null",
            "a.text=hello world",
            "a.quoted='42'",
            "a.list=[1, 2]",
            "a.eq=x=y",
            "a.empty=",
            "a.broken=[unclosed",
            "deep.er.still.deeper=1",
            "keep.other=2",
        ],
    )
    assert problems == []
    assert data["a"] == {
        "int": 42,
        "float": 2.5,
        "yes": True,
        "no": False,
        "null": None,
        "text": "hello world",
        "quoted": "42",
        "list": [1, 2],
        "eq": "x=y",
        "empty": "",
        "broken": "[unclosed",
    }
    assert type(data["a"]["int"]) is int and data["a"]["yes"] is True
    assert data["deep"] == {"er": {"still": {"deeper": 1}}}
    assert data["keep"] == {"me": 1, "other": 2}


def test_numbers_in_exponent_form_are_floats_in_the_file_and_in_overrides() -> None:
    """YAML 1.1 reads ``2e-6`` (no dot) as a string; the config reads it as JSON does."""
    cfg = load_config(None, text="cache:\n  prefetch:\n    max_model_seconds_per_read: 2e-6\n", overrides=["cache.prefetch.model_cpu_floor_share=1E-2"])
    assert cfg.get("cache.prefetch.max_model_seconds_per_read") == pytest.approx(2e-6)
    assert cfg.get("cache.prefetch.model_cpu_floor_share") == pytest.approx(0.01)
    data: dict[str, Any] = {}
    assert apply_overrides(data, ["a.neg=-1.5e+2", "a.word=1e", "a.name=e5", "a.int=1000"]) == []
    assert data["a"] == {"neg": -150.0, "word": "1e", "name": "e5", "int": 1000}
    assert type(data["a"]["int"]) is int


@pytest.mark.parametrize("item", ["noequals", "=value", "a..b=1", ".a=1", "a.=1", "  =1"])
def test_malformed_overrides_are_rejected(item: str) -> None:
    data: dict[str, Any] = {}
    problems = apply_overrides(data, [item])
    assert len(problems) == 1
    assert "--set expects key.path=value" in problems[0].message
    assert data == {}


def test_override_cannot_descend_into_a_scalar() -> None:
    data: dict[str, Any] = {"a": {"b": 1}}
    problems = apply_overrides(data, ["a.b.c=2", "ok=1"])
    assert [(p.path, p.message) for p in problems] == [("a.b", "--set cannot descend into a non-mapping")]
    assert data == {"a": {"b": 1}, "ok": 1}


def test_overrides_beat_the_file_and_are_validated() -> None:
    cfg = load_config(
        None,
        text="agent:\n  log:\n    level: info\n",
        overrides=["agent.log.level=debug", "agent.collect.interval_seconds=3", "agent.reload.watch=false"],
    )
    assert cfg.get("agent.log.level") == "debug"
    assert cfg.get("agent.collect.interval_seconds") == 3
    assert cfg.get("agent.reload.watch") is False
    error = rejected("", overrides=["agent.collect.interval_seconds=0", "agent.bogus=1", "broken"])
    assert {p.path for p in error.problems} == {"agent.collect.interval_seconds", "agent.bogus", "broken"}


def test_overrides_change_the_digest() -> None:
    a = load_config(None, text="", overrides=["agent.log.level=debug"])
    b = load_config(None, text="", overrides=["agent.log.level=info"])
    assert a.text_digest != b.text_digest


# ----------------------------------------------------------------------------- secret references

WRITE_ONLY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "api_key": {"type": "string", "writeOnly": True},
        "header": {"type": "string", "writeOnly": True},
        "site": {"type": "string"},
    },
}


def test_env_reference_substitutes_plain_string_for_ordinary_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UT_BIND", "127.0.0.9")
    cfg = load_config(None, text="agent:\n  http:\n    listen: '${env:UT_BIND}:1234'\n")
    assert cfg.get("agent.http.listen") == "127.0.0.9:1234"
    assert cfg.secret_paths == {("agent", "http", "listen")}
    assert cfg.secret_refs == {("agent", "http", "listen"): "${env:UT_BIND}:1234"}


def test_file_reference_strips_the_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "api.key"
    secret.write_text("file-secret-7f3a\n")
    cfg = load_config(None, text=f"plugins:\n  v:\n    api_key: '${{file:{secret}}}'\n", plugin_fragments={"v": WRITE_ONLY})
    value = cfg.plugin_config("v")["api_key"]
    assert isinstance(value, Secret)
    assert value.reveal() == "file-secret-7f3a"


def test_file_reference_keeps_inner_newlines_and_strips_crlf(tmp_path: Path) -> None:
    secret = tmp_path / "multi"
    secret.write_bytes(b"line1\nline2\r\n")
    cfg = load_config(None, text=f"plugins:\n  v:\n    api_key: '${{file:{secret}}}'\n", plugin_fragments={"v": WRITE_ONLY})
    assert cfg.plugin_config("v")["api_key"].reveal() == "line1\nline2"


def test_cred_reference_reads_from_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vendor.key").write_text("cred-secret-91b2\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = load_config(None, text="plugins:\n  v:\n    api_key: ${cred:vendor.key}\n", plugin_fragments={"v": WRITE_ONLY})
    assert cfg.plugin_config("v")["api_key"].reveal() == "cred-secret-91b2"


def test_embedded_reference_keeps_surrounding_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UT_TOKEN", "tok-embedded-55aa")
    cfg = load_config(
        None,
        text="plugins:\n  v:\n    header: 'Bearer ${env:UT_TOKEN}'\n    site: 'https://${env:UT_TOKEN}.example/x'\n",
        plugin_fragments={"v": WRITE_ONLY},
    )
    header = cfg.plugin_config("v")["header"]
    assert isinstance(header, Secret)
    assert header.reveal() == "Bearer tok-embedded-55aa"
    assert header.ref == "Bearer ${env:UT_TOKEN}"
    assert cfg.plugin_config("v")["site"] == "https://tok-embedded-55aa.example/x"


def test_double_dollar_escapes_to_a_literal_reference() -> None:
    cfg = load_config(None, text="agent:\n  tracing:\n    service_name: 'svc-$${env:NOT_SET_ANYWHERE}'\n")
    assert cfg.get("agent.tracing.service_name") == "svc-${env:NOT_SET_ANYWHERE}"
    assert cfg.secret_paths == set()


def test_escape_and_reference_in_the_same_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UT_MIX", "mixvalue")
    cfg = load_config(None, text="agent:\n  tracing:\n    service_name: '$${x}-${env:UT_MIX}'\n")
    assert cfg.get("agent.tracing.service_name") == "${x}-mixvalue"


def test_reference_inside_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UT_ROUTE", "metrics")
    cfg = load_config(None, text="agent:\n  auth:\n    anonymous_routes: ['/livez', '/${env:UT_ROUTE}']\n")
    assert cfg.get("agent.auth.anonymous_routes") == ["/livez", "/metrics"]
    assert cfg.redacted()["agent"]["auth"]["anonymous_routes"][1] == "*** (/${env:UT_ROUTE})"


def test_reference_errors_name_the_path_and_never_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UT_PRESENT", "present-secret-c0ffee")
    text = (
        "agent:\n"
        "  pid_file: '${env:UT_DEFINITELY_UNSET}'\n"
        "  tracing:\n"
        "    service_name: '${file:relative/secret}'\n"
        f"    otlp_endpoint: '${{file:{tmp_path / 'no-such-file'}}}'\n"
        "  log:\n"
        "    file:\n"
        "      path: '${cred:anything}'\n"
        "plugins:\n"
        "  v:\n"
        "    api_key: '${env:UT_PRESENT}'\n"
        "    site: '${env:bad-name}'\n"
    )
    error = rejected(text, plugin_fragments={"v": WRITE_ONLY})
    messages: dict[str, list[str]] = {}
    for problem in error.problems:
        messages.setdefault(problem.path, []).append(problem.message)

    def has(path: str, fragment: str) -> bool:
        return any(fragment in m for m in messages.get(path, []))

    assert has("agent.pid_file", "environment variable UT_DEFINITELY_UNSET is not set")
    assert has("agent.tracing.service_name", "${file:relative/secret} must name an absolute path")
    assert has("agent.tracing.otlp_endpoint", f"secret file {tmp_path / 'no-such-file'} does not exist")
    assert has("agent.log.file.path", "${cred:anything} needs $CREDENTIALS_DIRECTORY")
    assert has("plugins.v.site", "invalid environment variable name")
    assert "plugins.v.api_key" not in messages  # resolved fine
    assert "present-secret-c0ffee" not in str(error)


def test_cred_names_cannot_escape_the_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (tmp_path / "outside").write_text("outside-secret-4242")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    error = rejected("agent:\n  pid_file: '${cred:../outside}'\n")
    assert [p.path for p in error.problems] == ["agent.pid_file"]
    assert "invalid credential name" in error.problems[0].message
    assert "outside-secret-4242" not in str(error)


def test_secret_never_prints_its_value() -> None:
    secret = Secret("s3cr3t-print-test", "${env:PRINT_TEST}")
    assert str(secret) == REDACTED
    assert "s3cr3t-print-test" not in repr(secret)
    assert "${env:PRINT_TEST}" in repr(secret)
    assert format(secret) == REDACTED and format(secret, ">20") == REDACTED
    assert f"{secret}" == REDACTED and f"{secret!s}" == REDACTED
    assert "s3cr3t-print-test" not in f"{secret!r}"
    assert "%s" % secret == REDACTED  # noqa: UP031 - old-style formatting is what logging uses
    assert json.dumps({"k": secret, "l": [secret]}, default=str) == '{"k": "***", "l": ["***"]}'
    assert secret.reveal() == "s3cr3t-print-test"


def test_secret_equality_and_hash_follow_value_and_reference() -> None:
    a = Secret("same-value-x", "${env:A}")
    assert a == Secret("same-value-x", "${env:A}")
    assert hash(a) == hash(Secret("same-value-x", "${env:A}"))
    assert a != Secret("other-value-x", "${env:A}")
    assert a != Secret("same-value-x", "${env:B}")
    assert a != "same-value-x"


@pytest.mark.parametrize(
    ("yaml_value", "path", "expected"),
    [
        ("agent:\n  log:\n    format: ${env:UT_BAD_SECRET}\n", "agent.log.format", "expected one of 'text', 'json', found ***"),
        ("agent:\n  http:\n    listen: ${env:UT_BAD_SECRET}\n", "agent.http.listen", "*** does not match the pattern"),
        ("agent:\n  collect:\n    interval_seconds: ${env:UT_BAD_SECRET}\n", "agent.collect.interval_seconds", "expected number, found string"),
        ("agent:\n  tracing:\n    otlp_endpoint: ${env:UT_BAD_SECRET}\n", "agent.tracing.otlp_endpoint", "*** does not match the pattern ^https?://"),
    ],
)
def test_a_secret_in_an_invalid_value_is_not_shown(
    monkeypatch: pytest.MonkeyPatch, yaml_value: str, path: str, expected: str
) -> None:
    monkeypatch.setenv("UT_BAD_SECRET", "leak-me-not-0451")
    error = rejected(yaml_value)
    assert [p.path for p in error.problems] == [path]
    assert expected in error.problems[0].message
    assert "leak-me-not-0451" not in str(error)


@pytest.mark.parametrize(
    "text",
    [
        "agent:\n  log:\n    level: {x: '${env:UT_NESTED_SECRET}'}\n",
        "cache:\n  backend: ['${env:UT_NESTED_SECRET}']\n",
    ],
)
def test_a_secret_nested_in_an_invalid_container_is_not_shown(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("UT_NESTED_SECRET", "nested-leak-8d1e")
    error = rejected(text)
    assert len(error.problems) == 1
    assert "nested-leak-8d1e" not in str(error)
    assert error.problems[0].message.endswith("found ***")


def test_redacted_output_contains_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UT_REDACT_A", "redact-a-secret-11")
    monkeypatch.setenv("UT_REDACT_B", "redact-b-secret-22")
    cfg = load_config(
        None,
        text="agent:\n  pid_file: '/run/${env:UT_REDACT_A}.pid'\nplugins:\n  v:\n    api_key: ${env:UT_REDACT_B}\n",
        plugin_fragments={"v": WRITE_ONLY},
    )
    assert cfg.get("agent.pid_file") == "/run/redact-a-secret-11.pid"  # the running config has the value
    shown = cfg.redacted()
    text = json.dumps(shown, default=str)
    assert "redact-a-secret-11" not in text and "redact-b-secret-22" not in text
    assert shown["agent"]["pid_file"] == "*** (/run/${env:UT_REDACT_A}.pid)"
    assert shown["plugins"]["v"]["api_key"] == "*** (${env:UT_REDACT_B})"
    assert cfg.get("agent.pid_file") == "/run/redact-a-secret-11.pid"  # redacted() copied, did not mutate
    assert [s.reveal() for s in cfg.secrets()] == ["redact-b-secret-22"]


# ----------------------------------------------------------------------------- scrubbing


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def scrubbed_logger() -> Iterator[tuple[logging.Logger, Capture]]:
    logger = logging.getLogger("tests.unit.scrub")
    handler = Capture()
    handler.addFilter(SecretScrubFilter())
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, handler
    logger.removeHandler(handler)
    logger.propagate = True


def test_scrub_replaces_every_known_secret_longest_first() -> None:
    Secret("scrub-short-1", "${env:A}")
    Secret("scrub-short-1-and-longer", "${env:B}")
    assert scrub("x=scrub-short-1 y=scrub-short-1-and-longer") == "x=*** y=***"
    assert scrub("nothing secret here") == "nothing secret here"


def test_very_short_secrets_are_not_scrubbed_from_free_text() -> None:
    Secret("abc", "${env:TINY}")  # shorter than MIN_SCRUB_LENGTH: would mangle every log line
    assert scrub("abcdef abc") == "abcdef abc"


def test_scrub_filter_cleans_messages_and_arguments(scrubbed_logger: tuple[logging.Logger, Capture], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UT_LOG_SECRET", "log-secret-9931")
    cfg = load_config(None, text="plugins:\n  v:\n    api_key: ${env:UT_LOG_SECRET}\n", plugin_fragments={"v": WRITE_ONLY})
    value = cfg.plugin_config("v")["api_key"].reveal()
    logger, handler = scrubbed_logger
    logger.info("connecting with key %s to %s", value, "host")
    logger.warning(f"inline {value} in the message")
    logger.error("no secret here %d", 5)
    messages = [r.getMessage() for r in handler.records]
    assert messages == ["connecting with key *** to host", "inline *** in the message", "no secret here 5"]
    assert all("log-secret-9931" not in str(r.msg) and not r.args for r in handler.records[:2])
    assert handler.records[2].args == (5,)  # untouched when nothing needed scrubbing


# ----------------------------------------------------------------------------- plugin sections

VENDOR: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"port": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5}},
}


def test_build_schema_adds_a_validated_section_per_plugin() -> None:
    schema = build_schema({"vendor": VENDOR, "bare": None}, opaque_plugins=["broken"])
    plugins = schema["properties"]["plugins"]
    assert set(plugins["properties"]) == {"vendor", "bare", "broken"}
    assert plugins["additionalProperties"] is False
    vendor = plugins["properties"]["vendor"]
    assert vendor["properties"]["enabled"] == {"type": "boolean", "default": True, "description": "Load this plugin."}
    assert vendor["additionalProperties"] is False
    assert plugins["properties"]["bare"]["properties"].keys() == {"enabled"}
    assert "enabled" not in VENDOR["properties"]  # the plugin's own dict is not modified
    assert "properties" not in load_schema()["properties"]["plugins"]  # nor the base schema


def test_plugin_section_is_filled_with_defaults_and_enabled_true() -> None:
    cfg = load_config(None, text="", plugin_fragments={"vendor": VENDOR, "bare": None})
    assert cfg.plugin_config("vendor") == {"enabled": True, "port": 5}
    assert cfg.plugin_config("bare") == {"enabled": True}
    assert cfg.plugin_enabled("vendor")
    off = load_config(None, text="plugins:\n  vendor:\n    enabled: false\n", plugin_fragments={"vendor": VENDOR})
    assert not off.plugin_enabled("vendor")


def test_plugin_section_rejects_unknown_and_invalid_keys() -> None:
    error = rejected(
        "plugins:\n  vendor:\n    port: 99\n    prot: 1\n    enabled: 'no'\n  bare:\n    x: 1\n",
        plugin_fragments={"vendor": VENDOR, "bare": None},
    )
    problems = by_path(error)
    assert set(problems) == {"plugins.vendor.port", "plugins.vendor.prot", "plugins.vendor.enabled", "plugins.bare.x"}
    assert problems["plugins.vendor.prot"].message == "unknown key (allowed here: enabled, port)"
    assert problems["plugins.vendor.prot"].line == 4
    assert problems["plugins.bare.x"].message == "unknown key (allowed here: enabled)"
    assert problems["plugins.vendor.enabled"].message == "expected boolean, found string"


def test_unknown_plugin_section_lists_the_allowed_names() -> None:
    error = rejected("plugins:\n  ghost: {}\n", plugin_fragments={"vendor": VENDOR, "bare": None})
    assert [(p.path, p.message, p.line) for p in error.problems] == [
        ("plugins.ghost", "unknown key (allowed here: bare, vendor)", 2)
    ]
    none = rejected("plugins:\n  ghost: {}\n")
    assert none.problems[0].message == "unknown key (allowed here: none)"


def test_opaque_plugins_accept_any_section() -> None:
    cfg = load_config(None, text="plugins:\n  broken:\n    anything: [1, {a: b}]\n    enabled: false\n", opaque_plugins=["broken"])
    assert cfg.plugin_config("broken") == {"anything": [1, {"a": "b"}], "enabled": False}
    assert not cfg.plugin_enabled("broken")
    assert load_config(None, text="", opaque_plugins=["broken"]).plugin_config("broken") == {}


# ----------------------------------------------------------------------------- change detection


def test_changed_paths_reports_leaves_added_removed_and_nested() -> None:
    old = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "gone": 1, "same": [1, 2], "t": {"x": 1}}
    new = {"a": {"b": 1, "c": {"d": 20, "e": 3}, "f": 0}, "new": 1, "same": [1, 2], "t": 5}
    assert changed_paths(old, new) == {"a.c.d", "a.f", "gone", "new", "t"}
    assert changed_paths(old, old) == set()
    assert changed_paths({"l": [1, 2]}, {"l": [1, 3]}) == {"l"}


def test_changed_paths_on_real_configs() -> None:
    a = load_config(None, text="")
    b = load_config(None, text="agent:\n  log:\n    level: debug\n", plugin_fragments={"vendor": VENDOR})
    assert changed_paths(a.data, b.data) == {"agent.log.level", "plugins.vendor"}


@pytest.mark.parametrize(
    ("changed", "prefixes", "expected"),
    [
        ({"agent.log.level"}, ["agent.log"], True),  # change below the prefix
        ({"agent.log"}, ["agent.log.level"], True),  # the whole section above the prefix changed
        ({"agent.log"}, ["agent.log"], True),
        ({"agent.logx"}, ["agent.log"], False),  # a common string prefix is not a parent
        ({"agent.log"}, ["agent.logx.y"], False),
        ({"agent.http.listen"}, ["agent.log", "agent.http"], True),
        ({"cache.backend"}, ["agent"], False),
        (set(), ["agent"], False),
        ({"agent"}, [], False),
    ],
)
def test_section_changed_matches_prefixes_both_ways(changed: set[str], prefixes: list[str], expected: bool) -> None:
    assert section_changed(changed, prefixes) is expected


def test_a_rotated_secret_counts_as_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "plugins:\n  v:\n    api_key: ${env:UT_ROTATE}\n    site: ${env:UT_ROTATE}\n"
    monkeypatch.setenv("UT_ROTATE", "rotate-old-value")
    old = load_config(None, text=text, plugin_fragments={"v": WRITE_ONLY})
    same = load_config(None, text=text, plugin_fragments={"v": WRITE_ONLY})
    monkeypatch.setenv("UT_ROTATE", "rotate-new-value")
    new = load_config(None, text=text, plugin_fragments={"v": WRITE_ONLY})
    assert old.text_digest == new.text_digest  # the file did not change ...
    assert changed_paths(old.data, same.data) == set()
    assert changed_paths(old.data, new.data) == {"plugins.v.api_key", "plugins.v.site"}  # ... the secret did


def test_config_dataclass_plugin_helpers_on_a_handmade_config() -> None:
    cfg = Config(data={"plugins": {"x": {"enabled": False}, "y": "not-a-map"}})
    assert not cfg.plugin_enabled("x")
    assert cfg.plugin_config("y") == {} and cfg.plugin_enabled("y")
    assert cfg.plugin_enabled("absent")


def test_a_secret_written_literally_is_kept_but_never_printed(tmp_path: Path) -> None:
    """`exporters.datadog.api_key: literalkey...` used to validate and be printed by
    `config show`: a string written literally at a writeOnly key becomes a Secret (used as
    given, redacted everywhere, scrubbed from logs), and validate/show warn by path."""
    from click.testing import CliRunner

    from agent.cli import cli as agent_cli

    literal = "literalkey-0123456789abcdef-ffee"
    path = tmp_path / "agent.yaml"
    path.write_text(f"exporters:\n  datadog:\n    enabled: true\n    api_key: {literal}\n")
    builtins = PluginHost(load_entrypoints=False).schema_parts()  # exporters.datadog is the datadog plugin's section
    cfg = load_config(str(path), **builtins)
    value = cfg.get("exporters.datadog.api_key")
    assert isinstance(value, Secret) and value.reveal() == literal and value.reread() is value
    assert cfg.literal_secrets == ["exporters.datadog.api_key"]
    assert literal not in repr(cfg.redacted()) and literal not in str(value) and scrub(f"x {literal} y") == "x *** y"
    runner = CliRunner()
    for args in (["config", "validate", str(path)], ["config", "show", "--config", str(path)]):
        result = runner.invoke(agent_cli, args)
        assert result.exit_code == 0, result.output
        assert literal not in result.output
        assert "exporters.datadog.api_key holds a secret written into the config file" in result.output
    # A reference is no literal; neither is a key that is not writeOnly.
    (tmp_path / "key").write_text(literal)
    path.write_text(f"exporters:\n  datadog:\n    enabled: true\n    api_key: '${{file:{tmp_path / 'key'}}}'\n")
    assert load_config(str(path), **builtins).literal_secrets == []
