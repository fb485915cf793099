# SPDX-License-Identifier: Apache-2.0
"""The event loop the agent runs on (``agent.event_loop``).

Every socket the agent serves (the Redis protocol, HTTP, metrics) is an asyncio protocol,
so the loop under them is replaceable. uvloop (libuv) dispatches a readable socket to its
protocol and a write to the kernel with far less interpreter work than the standard
library's selector loop: on this project's 2-core benchmark an unpipelined Redis request
costs about a quarter less CPU (bench/RESULTS.md), which is most of what separates the
agent from redis-server there. The standard loop stays available (``asyncio``), and is
what ``auto`` falls back to where uvloop is not installed (it has no Windows build).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any

from agent.errors import StartupError

CHOICES = ("auto", "uvloop", "asyncio")


def runner(choice: str) -> tuple[str, Callable[[Coroutine[Any, Any, Any]], Any]]:
    """``(name, run)`` for ``agent.event_loop``: ``run(coro)`` runs it to completion on a
    new loop of that kind, as :func:`asyncio.run` does. StartupError when ``uvloop`` is
    asked for and cannot be imported."""
    if choice not in CHOICES:
        raise StartupError(f"agent.event_loop must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError as exc:
            if choice == "uvloop":
                raise StartupError(f"agent.event_loop is uvloop but uvloop cannot be imported ({exc}); install it or choose auto") from exc
        else:
            return "uvloop", uvloop.run
    return "asyncio", asyncio.run


def running() -> str:
    """The kind of loop running in this thread: ``uvloop`` or ``asyncio``."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
