# SPDX-License-Identifier: Apache-2.0
"""A plugin that imports fine but raises in its hooks, including the schema hook."""

from __future__ import annotations

from typing import Any

from agent import hookimpl


@hookimpl
def predis_agent_config_schema() -> dict[str, Any]:
    raise ValueError("schema exploded")


@hookimpl
def predis_agent_register_collectors(agent: Any, config: dict[str, Any]) -> list[Any]:
    raise RuntimeError("boom from raising_plugin")
