# SPDX-License-Identifier: Apache-2.0
"""A plugin that declares one section it may have and three it may not: outside the
namespaces, one the core schema holds, one another plugin declared first."""

from __future__ import annotations

from typing import Any

from agent import hookimpl


@hookimpl
def predis_agent_config_sections() -> dict[str, dict[str, Any]]:
    section = {"properties": {"level": {"type": "integer", "default": 1}}}
    return {
        "collectors.extra": section,
        "agent.vendor": section,
        "collectors.access_log": section,
        "exporters.vendor": section,
    }
