# SPDX-License-Identifier: Apache-2.0
"""The one way tests wait for something: poll the condition itself until a deadline.

A test never sleeps in place of synchronisation; it names what it waits for and polls it.
The deadline only matters when the condition never holds (the test then fails saying what
it waited for), so it is generous: a loaded 2-core machine must not fail a correct test.
The pause between polls starts at a millisecond and doubles up to ``interval``, so a
condition that holds at once is seen at once and a slow one is not polled in a busy loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

DEFAULT_TIMEOUT = 15.0
DEFAULT_INTERVAL = 0.05
_FIRST_PAUSE = 0.001


def _timed_out(timeout: float, what: str, last_exc: Exception | None) -> AssertionError:
    return AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def _attempt(predicate: Callable[[], Any]) -> tuple[Any, Exception | None]:
    try:
        return predicate(), None
    except Exception as exc:  # the thing polled may not be up yet
        return None, exc


def wait_for(
    predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes.

    An exception from ``predicate`` counts as not yet; the last one is named on timeout.
    """
    deadline = time.monotonic() + timeout
    pause = min(_FIRST_PAUSE, interval)
    last_exc: Exception | None = None
    while True:
        value, exc = _attempt(predicate)
        if value:
            return value
        last_exc = exc or last_exc
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, last_exc)
        time.sleep(pause)
        pause = min(pause * 2, interval)


async def wait_for_async(
    predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL, what: str = "condition"
) -> Any:
    """``wait_for`` on a running event loop: the loop runs between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = min(_FIRST_PAUSE, interval)
    last_exc: Exception | None = None
    while True:
        value, exc = _attempt(predicate)
        if value:
            return value
        last_exc = exc or last_exc
        if loop.time() >= deadline:
            raise _timed_out(timeout, what, last_exc)
        await asyncio.sleep(pause)
        pause = min(pause * 2, interval)
