# SPDX-License-Identifier: Apache-2.0
"""agent.config against hostile input: secret files that are not regular files or are
too large, YAML bombs, tags, recursion and depth, non-finite numbers and empty passwords.
Each is refused with a ConfigError that says what was found, never hangs or grows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cache_service import CacheService
from agent.config import (
    MAX_CONFIG_BYTES,
    MAX_SECRET_FILE_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    Config,
    Secret,
    load_config,
    load_yaml,
    read_config_text,
)
from agent.errors import ConfigError, StartupError
from agent.plugins import PluginHost
from cache_core.backend import Backend


def rejected(text: str, **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(None, text=text, **kw)
    return info.value


def messages(error: ConfigError) -> str:
    return "\n".join(str(p) for p in error.problems)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    yield path


# ----------------------------------------------------------------------------- secret files


def test_a_fifo_secret_is_refused_without_waiting_for_a_writer(fifo: Path) -> None:
    # Without O_NONBLOCK the open would wait forever for a writer; the test would hit
    # pytest's timeout instead of reaching the assertion.
    error = rejected(f"exporters:\n  datadog:\n    api_key: '${{file:{fifo}}}'\n")
    assert "FIFO" in messages(error) and "expected a regular file" in messages(error)
    assert error.problems[0].path == "exporters.datadog.api_key"


def test_a_device_secret_is_refused_before_reading_it() -> None:
    error = rejected("exporters:\n  datadog:\n    api_key: '${file:/dev/zero}'\n")
    assert "/dev/zero is a character device; expected a regular file" in messages(error)


def test_a_directory_secret_is_refused(tmp_path: Path) -> None:
    error = rejected(f"exporters:\n  datadog:\n    api_key: '${{file:{tmp_path}}}'\n")
    assert "is a directory; expected a regular file" in messages(error)


def test_a_secret_file_over_the_cap_is_refused_and_one_at_the_cap_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"k" * (MAX_SECRET_FILE_BYTES + 1))
    builtins = PluginHost(load_entrypoints=False).schema_parts()  # exporters.datadog is the datadog plugin's section
    error = rejected(f"exporters:\n  datadog:\n    api_key: '${{file:{big}}}'\n", **builtins)
    assert f"larger than the {MAX_SECRET_FILE_BYTES} bytes accepted" in messages(error)
    exact = tmp_path / "exact"
    exact.write_bytes(b"k" * MAX_SECRET_FILE_BYTES)
    cfg = load_config(None, text=f"exporters:\n  datadog:\n    api_key: '${{file:{exact}}}'\n", **builtins)
    key = cfg.get("exporters.datadog.api_key")
    assert isinstance(key, Secret) and len(key.reveal()) == MAX_SECRET_FILE_BYTES


def test_a_cred_reference_to_a_fifo_is_refused(tmp_path: Path, fifo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(fifo.parent))
    error = rejected(f"exporters:\n  datadog:\n    api_key: '${{cred:{fifo.name}}}'\n")
    assert "FIFO" in messages(error)


def test_a_symlink_to_a_regular_file_is_still_read(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_text("abcd1234\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    cfg = load_config(None, text=f"exporters:\n  datadog:\n    api_key: '${{file:{link}}}'\n", **PluginHost(load_entrypoints=False).schema_parts())
    assert cfg.get("exporters.datadog.api_key").reveal() == "abcd1234"


# ----------------------------------------------------------------------------- the config file


def test_a_config_file_that_is_a_fifo_or_a_device_is_refused(fifo: Path) -> None:
    for path in (str(fifo), "/dev/zero"):
        with pytest.raises(ConfigError, match="expected a regular file"):
            read_config_text(path)


def test_a_config_file_over_the_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match=f"larger than the {MAX_CONFIG_BYTES} bytes accepted"):
        load_config(str(path))


def test_config_text_over_the_cap_is_refused_before_parsing() -> None:
    error = rejected("#" * (MAX_CONFIG_BYTES + 1))
    assert f"more than the {MAX_CONFIG_BYTES} accepted" in messages(error)


# ----------------------------------------------------------------------------- YAML bounds


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    lines = ['a0: &a0 ["lol"' + ', "lol"' * (width - 1) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append(f"agent: {{x: *a{levels - 1}}}")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_while_it_is_composed() -> None:
    error = rejected(alias_bomb())
    assert f"expands to more than {MAX_YAML_NODES} values" in messages(error)
    # The refusal comes at the level whose expansion first passes the bound, not at the end.
    assert error.problems[0].line is not None and error.problems[0].line < 9


def test_aliases_within_the_bound_still_work() -> None:
    text = "x-common: &common {level: debug}\nagent:\n  log: *common\n"
    error = rejected(text)
    # x-common is an unknown key, but the alias itself was read and expanded.
    assert [p.path for p in error.problems] == ["x-common"]
    assert load_yaml(text)["agent"]["log"] == {"level": "debug"}


def test_a_recursive_alias_is_refused() -> None:
    for text in ("agent: &a\n  x: *a\n", "agent: &a [1, *a]\n"):
        error = rejected(text)
        assert "recursive alias *a" in messages(error)


def test_nesting_deeper_than_the_bound_is_refused() -> None:
    error = rejected("agent: " + "[" * 5000 + "]" * 5000 + "\n")
    assert f"nested deeper than {MAX_YAML_DEPTH} levels" in messages(error)


def test_an_alias_that_makes_the_expanded_tree_too_deep_is_refused() -> None:
    half = MAX_YAML_DEPTH // 2 + 2
    text = "a: &deep " + "[" * half + "]" * half + "\nagent: " + "[" * half + "*deep" + "]" * half + "\n"
    assert f"nests values deeper than {MAX_YAML_DEPTH}" in messages(rejected(text))


@pytest.mark.parametrize(
    "text",
    [
        "agent: !!python/object/apply:os.system ['true']\n",
        "agent: !!binary aGVsbG8=\n",
        "agent: !custom {}\n",
        "agent:\n  log:\n    level: !!str debug\n",
        "agent: !!set {a: null}\n",
    ],
)
def test_yaml_tags_are_refused_with_a_clear_error(text: str) -> None:
    error = rejected(text)
    assert "YAML tag" in messages(error) and "is not accepted in the agent config" in messages(error)


def test_an_integer_too_long_to_convert_is_a_config_error() -> None:
    error = rejected("agent:\n  collect:\n    interval_seconds: " + "9" * 5000 + "\n")
    assert "YAML refused" in messages(error)


def test_overrides_go_through_the_same_bounds() -> None:
    with pytest.raises(yaml.YAMLError, match="YAML tag"):
        load_yaml("!!python/name:os.system")
    error = rejected("", overrides=["agent.collect.interval_seconds=.nan"])
    assert error.problems[0].path == "agent.collect.interval_seconds"


# ----------------------------------------------------------------------------- finite numbers


@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", ".Inf"])
@pytest.mark.parametrize(
    "key",
    ["agent.collect.interval_seconds", "cache.resp.idle_timeout_seconds", "cache.prefetch.max_cpu_share", "drift.ks_alpha"],
)
def test_non_finite_numbers_are_refused_for_number_keys(key: str, value: str) -> None:
    parts = key.split(".")
    text = "".join(f"{'  ' * i}{part}:\n" for i, part in enumerate(parts[:-1])) + f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}\n"
    error = rejected(text)
    assert [p.path for p in error.problems] == [key], messages(error)
    assert error.problems[0].line == len(parts)
    if value.lower().endswith("nan"):
        assert "must be a finite number, found nan" in error.problems[0].message


def test_a_nan_inside_a_list_names_its_index() -> None:
    text = "mlops:\n  rollout:\n    steps: [0.1, .nan, 1.0]\n"
    error = rejected(text)
    assert [p.path for p in error.problems] == ["mlops.rollout.steps.1"]


def test_a_finite_value_is_still_accepted() -> None:
    cfg = load_config(None, text="agent:\n  collect:\n    interval_seconds: 0.5\n")
    assert cfg.get("agent.collect.interval_seconds") == 0.5


# ----------------------------------------------------------------------------- empty password


def test_an_empty_requirepass_is_refused_by_validation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    error = rejected("cache:\n  resp:\n    requirepass: ''\n")
    assert [p.path for p in error.problems] == ["cache.resp.requirepass"]
    assert "must not be empty" in error.problems[0].message
    monkeypatch.setenv("UT_EMPTY_PW", "")
    error = rejected("cache:\n  resp:\n    requirepass: '${env:UT_EMPTY_PW}'\n")
    assert [p.path for p in error.problems] == ["cache.resp.requirepass"]
    empty = tmp_path / "pw"
    empty.write_text("\n")
    error = rejected(f"cache:\n  resp:\n    requirepass: '${{file:{empty}}}'\n")
    assert [p.path for p in error.problems] == ["cache.resp.requirepass"]


def test_an_empty_password_never_opens_a_non_loopback_listener() -> None:
    # A config built without validation (a plugin, a test) still cannot expose the port.
    cfg = load_config(None, text="cache:\n  resp: {listen: '127.0.0.1:0'}\n")
    resp = dict(cfg.data["cache"]["resp"], listen="0.0.0.0:0", requirepass=Secret("", "${env:X}"))
    data = {**cfg.data, "cache": {**cfg.data["cache"], "resp": resp}}
    with pytest.raises(StartupError, match=r"requirepass: is empty.*\[rule resp-password-not-empty\]"):
        CacheService().plan(Config(data=data), Backend("numpy"), [])


def test_the_documented_limits_are_the_constants() -> None:
    root = Path(__file__).resolve().parents[2]
    security = (root / "docs" / "security.md").read_text(encoding="utf-8")
    section = security[security.index("## Config and reload limits") :]
    section = section[: section.index("\n## ", 1)]
    for name, value in (
        ("MAX_SECRET_FILE_BYTES", MAX_SECRET_FILE_BYTES),
        ("MAX_CONFIG_BYTES", MAX_CONFIG_BYTES),
        ("MAX_YAML_NODES", MAX_YAML_NODES),
        ("MAX_YAML_DEPTH", MAX_YAML_DEPTH),
    ):
        assert f"`{name}`) | {value}" in section, name
    guide = (root / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert f"at most {MAX_SECRET_FILE_BYTES} bytes are read" in guide
