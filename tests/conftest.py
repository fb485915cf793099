# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures and the ``integration`` marker.

Every test starts without the agent's or systemd's environment.

A quick run skips what starts the agent as a process or a real peer:
``python3 -m pytest -m "not integration"``. For that, every test under tests/integration/
and tests/chaos/ is marked ``integration`` here, and a test anywhere else that starts one
(``python -m agent``, the ``predis-agent`` script, redis-server, victoria-metrics,
prometheus) without the marker fails at the spawn, saying to mark it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import pytest

_EXACT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY")
_PREFIX = "PREDIS_AGENT_"

TESTS = Path(__file__).resolve().parent
# Directories whose every test runs the agent as a process or a real peer.
INTEGRATION_DIRS = (TESTS / "integration", TESTS / "chaos")
# Programs that are real peers (or the agent's own console script).
PEER_PROGRAMS = frozenset({"predis-agent", "redis-server", "victoria-metrics", "prometheus", "nutcracker"})

_running: list[pytest.Item] = []


@pytest.fixture(autouse=True)
def _clean_agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove variables that change the agent's behaviour, so the host's shell cannot leak in."""
    for name in list(os.environ):
        if name.startswith(_PREFIX) or name in _EXACT:
            monkeypatch.delenv(name, raising=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.path.is_relative_to(d) for d in INTEGRATION_DIRS):
            item.add_marker(pytest.mark.integration)


def spawns_agent_or_peer(argv: Sequence[str] | str | bytes) -> str | None:
    """What ``argv`` starts when it is the agent or a real peer (else None)."""
    args = os.fsdecode(argv).split() if isinstance(argv, (str, bytes)) else [os.fsdecode(a) for a in argv]
    if not args:
        return None
    program = os.path.basename(args[0])
    if program in PEER_PROGRAMS:
        return program
    for flag, module in zip(args, args[1:]):
        if flag == "-m" and module == "agent":
            return "python -m agent"
    return None


def _refuse_unmarked_spawns(event: str, args: tuple[Any, ...]) -> None:
    if event != "subprocess.Popen" or not _running:
        return
    item = _running[-1]
    started = spawns_agent_or_peer(args[1])
    if started and item.get_closest_marker("integration") is None:
        raise RuntimeError(
            f"{item.nodeid} starts {started} without the integration marker: "
            "mark it @pytest.mark.integration (or move it to tests/integration/)"
        )


sys.addaudithook(_refuse_unmarked_spawns)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()
