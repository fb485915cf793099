# SPDX-License-Identifier: Apache-2.0
"""The agent's JSON Schema, shipped as data, and a loader for it."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any

SCHEMA_FILE = "agent.schema.json"


@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    text = resources.files(__name__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def load_schema() -> dict[str, Any]:
    """Return a fresh copy of the base schema (callers may extend it)."""
    return copy.deepcopy(_load())
