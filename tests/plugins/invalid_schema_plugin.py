# SPDX-License-Identifier: Apache-2.0
"""A plugin whose schema hook returns a mapping that is not a valid JSON Schema."""

from __future__ import annotations

from typing import Any

from agent import hookimpl


@hookimpl
def predis_agent_config_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {"level": {"type": "nope"}}}
