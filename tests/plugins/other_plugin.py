# SPDX-License-Identifier: Apache-2.0
"""A second well-behaved plugin without a schema fragment; returns two collectors."""

from __future__ import annotations

from typing import Any

from agent import hookimpl


@hookimpl
def predis_agent_register_collectors(agent: Any, config: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"plugin": "other", "n": 1, "config": config}, {"plugin": "other", "n": 2, "config": config}]


@hookimpl
def predis_agent_register_routes(agent: Any) -> None:
    return None  # None results are left out
