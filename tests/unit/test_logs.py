# SPDX-License-Identifier: Apache-2.0
"""agent.logs: JSON/text formats, rotation by size and count, level changes, scrubbing."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import logs
from agent.config import Secret


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def _section(tmp_path: Path, **overrides: object) -> dict:
    section = {
        "level": "info",
        "format": "json",
        "file": {"path": str(tmp_path / "log" / "agent.log"), "max_bytes": 4096, "backup_count": 2},
    }
    section.update(overrides)
    return section


def test_json_lines_are_parseable_and_carry_level_and_logger(tmp_path: Path) -> None:
    logs.configure(_section(tmp_path))
    logging.getLogger("predis.test").warning("disk %s is %d%% full", "/var", 93)
    line = (tmp_path / "log" / "agent.log").read_text().strip().splitlines()[-1]
    record = json.loads(line)
    assert record["level"] == "warning"
    assert record["logger"] == "predis.test"
    assert record["msg"] == "disk /var is 93% full"
    assert record["ts"].endswith("Z")


def test_level_is_applied_and_changed_on_reconfigure(tmp_path: Path) -> None:
    logs.configure(_section(tmp_path, level="warning"))
    logging.getLogger("predis.test").info("hidden-at-warning")
    logs.configure(_section(tmp_path, level="debug"))
    logging.getLogger("predis.test").debug("shown-at-debug")
    text = (tmp_path / "log" / "agent.log").read_text()
    assert "hidden-at-warning" not in text
    assert "shown-at-debug" in text


def test_reconfigure_does_not_stack_handlers(tmp_path: Path) -> None:
    logs.configure(_section(tmp_path))
    logs.configure(_section(tmp_path))
    logging.getLogger("predis.test").error("once")
    text = (tmp_path / "log" / "agent.log").read_text()
    assert text.count('"once"') == 1


def test_file_rotates_by_size_and_keeps_backup_count(tmp_path: Path) -> None:
    logs.configure(_section(tmp_path))
    log = logging.getLogger("predis.test")
    for i in range(400):
        log.warning("line %04d %s", i, "x" * 40)
    files = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert files == ["agent.log", "agent.log.1", "agent.log.2"]
    for name in files:
        assert (tmp_path / "log" / name).stat().st_size <= 4096 + 200


def test_secret_values_never_reach_the_log(tmp_path: Path) -> None:
    secret = Secret("hunter2-very-secret", "${env:X}")
    logs.configure(_section(tmp_path, format="text"))
    logging.getLogger("predis.test").error("connecting with key %s (raw %s)", secret, secret.reveal())
    text = (tmp_path / "log" / "agent.log").read_text()
    assert "hunter2-very-secret" not in text
    assert "connecting with key ***" in text
