# SPDX-License-Identifier: Apache-2.0
"""A plugin with config rules: one that holds, one whose check raises, and a non-Rule."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from agent.api import Rule, hookimpl


def _needs_level(data: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    if data["agent"]["log"]["level"] == "debug":
        yield "agent.log.level", "is debug, which this plugin refuses"


def _explodes(data: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    raise RuntimeError("rule exploded")


@hookimpl
def predis_agent_config_rules() -> list[Any]:
    return [Rule("no-debug", "agent.log.level is not debug", _needs_level), Rule("explodes", "raises", _explodes), "not a rule"]
