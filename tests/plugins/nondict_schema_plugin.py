# SPDX-License-Identifier: Apache-2.0
"""A plugin whose schema hook returns something that is not a mapping."""

from __future__ import annotations

from typing import Any

from agent import hookimpl


@hookimpl
def predis_agent_config_schema() -> Any:
    return ["not", "a", "schema"]
