# SPDX-License-Identifier: Apache-2.0
"""A hook implementation that asks for an argument the hook spec does not have."""

from __future__ import annotations

from typing import Any

from agent import hookimpl


@hookimpl
def predis_agent_register_collectors(agent: Any, config: dict[str, Any], surprise: Any) -> list[Any]:
    return []
