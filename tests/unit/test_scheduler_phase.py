# SPDX-License-Identifier: Apache-2.0
"""agent.runtime: the collection schedule keeps its phase across reloads.

The agent runs in-process on an asyncio loop in the main thread (signal handlers need
it), with no plugins, the NumPy backend, a free port on loopback and a token store in
the test's own directory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.plugins import PluginHost
from agent.runtime import Agent
from tests.polling import wait_for_async

INTERVAL = 0.2
DEADLINE = 10.0


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Agent.start reconfigures the root logger; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in ("aiohttp.access", "urllib3", "asyncio")}
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)


def overrides(tmp_path: Path, interval: float = INTERVAL) -> tuple[str, ...]:
    return (
        "agent.http.listen=127.0.0.1:0",
        f"agent.collect.interval_seconds={interval}",
        f"agent.auth.token_store={tmp_path / 't.json'}",
        "agent.reload.watch=false",
        "cache.backend=numpy",
    )


def make_agent(config_path: str | None, tmp_path: Path, interval: float = INTERVAL) -> Agent:
    return Agent(config_path, overrides(tmp_path, interval), host=PluginHost(load_entrypoints=False, builtins=()))


def on_grid(start: float, later: float | None, interval: float) -> int:
    """How many whole intervals lie between two collection times (asserting it is whole)."""
    assert later is not None
    steps = (later - start) / interval
    assert steps == pytest.approx(round(steps), abs=1e-6), f"{later - start:.6f}s is not a multiple of {interval}s"
    return round(steps)


def test_reload_without_changes_keeps_generation_and_phase(tmp_path: Path) -> None:
    async def scenario() -> None:
        agent = make_agent(None, tmp_path)
        await agent.start()
        try:
            assert agent.http.address is not None and agent.http.address.startswith("http://127.0.0.1:")
            await wait_for_async(lambda: agent.collection_runs >= 2)
            anchor = agent.last_collect_monotonic
            assert anchor is not None
            generation = agent.generation
            result = await agent.reload("test")
            assert result.ok is True and result.errors == []
            assert result.changed == []
            assert result.generation == generation == agent.generation == 1
            assert result.trigger == "test"
            assert agent.last_reload is result
            assert agent.last_collect_monotonic is not None and agent.last_collect_monotonic <= anchor + INTERVAL + 1e-9
            runs = agent.collection_runs
            await wait_for_async(lambda: agent.collection_runs >= runs + 2)
            assert on_grid(anchor, agent.last_collect_monotonic, INTERVAL) >= 2
            assert agent.telemetry.registry.get_sample_value("predis_agent_config_generation") == 1
            assert agent.telemetry.registry.get_sample_value("predis_agent_config_last_reload_success") == 1
            assert agent.telemetry.registry.get_sample_value("predis_agent_collection_runs_total") == agent.collection_runs
        finally:
            await agent.stop()

    asyncio.run(scenario())


def test_applied_reload_keeps_the_phase(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("agent:\n  collect:\n    timeout_seconds: 5\n")

    async def scenario() -> None:
        agent = make_agent(str(config), tmp_path)
        await agent.start()
        try:
            await wait_for_async(lambda: agent.collection_runs >= 2)
            anchor = agent.last_collect_monotonic
            assert anchor is not None
            config.write_text("agent:\n  collect:\n    timeout_seconds: 3\n")
            result = await agent.reload("test")
            assert result.ok is True, result.errors
            assert result.changed == ["agent.collect.timeout_seconds"]
            assert result.generation == agent.generation == 2
            runs = agent.collection_runs
            await wait_for_async(lambda: agent.collection_runs >= runs + 2)
            assert on_grid(anchor, agent.last_collect_monotonic, INTERVAL) >= 2
        finally:
            await agent.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(("old_interval", "new_interval"), [(0.2, 0.5), (0.6, 0.2)])
def test_interval_change_takes_effect_from_the_last_collection(tmp_path: Path, old_interval: float, new_interval: float) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"agent:\n  collect:\n    interval_seconds: {old_interval}\n")

    async def scenario() -> None:
        agent = make_agent_from_file(config, tmp_path)
        await agent.start()
        try:
            await wait_for_async(lambda: agent.collection_runs >= 1)
            # Wait until the schedule sleeps towards its next round, planned with the old interval.
            await wait_for_async(
                lambda: agent.last_collect_monotonic is not None
                and agent.next_collect_monotonic == pytest.approx(agent.last_collect_monotonic + old_interval, abs=1e-9)
            )
            config.write_text(f"agent:\n  collect:\n    interval_seconds: {new_interval}\n")
            # reload() does not yield to the loop before the swap, so no round can start in between.
            anchor = agent.last_collect_monotonic
            assert anchor is not None
            result = await agent.reload("test")
            assert result.ok is True and result.changed == ["agent.collect.interval_seconds"]
            assert agent.last_collect_monotonic == anchor
            # Woken by the reload, the schedule re-plans from the last round with the new interval
            # (a shorter interval must not wait for the old, later due time).
            await wait_for_async(lambda: agent.next_collect_monotonic == pytest.approx(anchor + new_interval, abs=1e-9))
            await wait_for_async(lambda: agent.last_collect_monotonic != anchor)
            assert agent.last_collect_monotonic == pytest.approx(anchor + new_interval, abs=1e-9)
        finally:
            await agent.stop()

    asyncio.run(scenario())


def make_agent_from_file(config: Path, tmp_path: Path) -> Agent:
    """An agent whose interval comes from the file (so a reload can change it)."""
    keep = tuple(o for o in overrides(tmp_path) if not o.startswith("agent.collect.interval_seconds="))
    return Agent(str(config), keep, host=PluginHost(load_entrypoints=False, builtins=()))
