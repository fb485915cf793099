# SPDX-License-Identifier: Apache-2.0
"""A plugin whose sections hook returns a section schema that is not a valid JSON Schema,
next to a valid one: none of its sections is taken."""

from __future__ import annotations

from typing import Any

from agent import hookimpl


@hookimpl
def predis_agent_config_sections() -> dict[str, dict[str, Any]]:
    return {
        "exporters.fine": {"properties": {"a": {"type": "string"}}},
        "exporters.broken": {"properties": {"level": {"type": "nope"}}},
    }
