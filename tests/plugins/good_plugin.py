# SPDX-License-Identifier: Apache-2.0
"""A well-behaved plugin: a schema fragment, a collector hook and a route hook."""

from __future__ import annotations

from typing import Any

from agent import hookimpl


@hookimpl
def predis_agent_config_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {"tag": {"type": "string", "default": "t0"}},
    }


@hookimpl
def predis_agent_register_collectors(agent: Any, config: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"plugin": "good", "config": config}]


@hookimpl
def predis_agent_register_routes(agent: Any) -> str:
    return "good-route"  # not a list: collect() must wrap it
