# SPDX-License-Identifier: Apache-2.0
"""A plugin that declares an exporter and a collector section of its own."""

from __future__ import annotations

from typing import Any

from agent import hookimpl


@hookimpl
def predis_agent_config_sections() -> dict[str, dict[str, Any]]:
    return {
        "exporters.vendor": {
            "description": "The vendor exporter.",
            "properties": {
                "enabled": {"type": "boolean", "default": False},
                "interval": {"type": "number", "minimum": 1, "maximum": 60, "default": 10},
            },
        },
        "collectors.probe": {"properties": {"targets": {"type": "array", "items": {"type": "string"}, "default": []}}},
    }
