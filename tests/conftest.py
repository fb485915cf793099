# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: every test starts without the agent's or systemd's environment."""

from __future__ import annotations

import os

import pytest

_EXACT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY")
_PREFIX = "PREDIS_AGENT_"


@pytest.fixture(autouse=True)
def _clean_agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove variables that change the agent's behaviour, so the host's shell cannot leak in."""
    for name in list(os.environ):
        if name.startswith(_PREFIX) or name in _EXACT:
            monkeypatch.delenv(name, raising=False)
