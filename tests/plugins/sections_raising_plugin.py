# SPDX-License-Identifier: Apache-2.0
"""A plugin whose sections hook raises: the sections it would declare are unknown."""

from __future__ import annotations

from typing import Any

from agent import hookimpl


@hookimpl
def predis_agent_config_sections() -> dict[str, dict[str, Any]]:
    raise RuntimeError("sections exploded")
