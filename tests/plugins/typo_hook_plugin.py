# SPDX-License-Identifier: Apache-2.0
"""A hook implementation whose name is not in the spec (a typo)."""

from __future__ import annotations

from typing import Any

from agent import hookimpl


@hookimpl
def predis_agent_register_colectors(agent: Any, config: dict[str, Any]) -> list[Any]:
    return []
