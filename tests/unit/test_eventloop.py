# SPDX-License-Identifier: Apache-2.0
"""agent.eventloop: which loop ``agent.event_loop`` gives, and what runs on it."""

from __future__ import annotations

import asyncio
import sys

import pytest

from agent import eventloop
from agent.errors import StartupError


async def _kind() -> str:
    return eventloop.running()


def test_asyncio_runs_on_the_standard_loop() -> None:
    name, run = eventloop.runner("asyncio")
    assert name == "asyncio" and run(_kind()) == "asyncio"


def test_uvloop_and_auto_run_on_uvloop_where_it_is_installed() -> None:
    pytest.importorskip("uvloop", reason="uvloop is a dependency on Linux; this platform has no build of it")
    for choice in ("uvloop", "auto"):
        name, run = eventloop.runner(choice)
        assert name == "uvloop" and run(_kind()) == "uvloop"


def test_without_uvloop_auto_falls_back_and_uvloop_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    name, run = eventloop.runner("auto")
    assert name == "asyncio" and run is asyncio.run
    with pytest.raises(StartupError, match="agent.event_loop is uvloop but uvloop cannot be imported"):
        eventloop.runner("uvloop")


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(StartupError, match="must be one of auto, uvloop, asyncio"):
        eventloop.runner("trio")
