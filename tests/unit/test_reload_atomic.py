# SPDX-License-Identifier: Apache-2.0
"""agent.runtime: every failed reload is rejected the same way and applies nothing, and a
sink that a reload turns off is closed without holding the event loop.

The agent runs in-process (as in test_scheduler_phase) with no plugins and the NumPy
backend; failures are injected where the issue found them escaping as HTTP 500s.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import Agent
from tests.unit.test_scheduler_phase import _restore_logging, make_agent  # noqa: F401 - an autouse fixture, imported to apply here


def sample(agent: Agent, name: str) -> float | None:
    value: float | None = agent.telemetry.registry.get_sample_value(name)
    return value


def run(tmp_path: Path, scenario: Callable[[Agent, Path], Awaitable[None]]) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("drift:\n  check_interval_seconds: 300\n")

    async def main() -> None:
        agent = make_agent(str(config), tmp_path)
        await agent.start()
        try:
            await scenario(agent, config)
        finally:
            await agent.stop()

    asyncio.run(main())


def assert_rejected(agent: Agent, result: Any, generation: int, failures_before: float, fragment: str) -> None:
    assert result.ok is False and any(fragment in e for e in result.errors), result.errors
    assert result.generation == generation and agent.generation == generation
    assert agent.last_reload is result
    assert sample(agent, "predis_agent_config_last_reload_success") == 0.0
    assert sample(agent, "predis_agent_config_reload_failures_total") == failures_before + 1


def test_an_unexpected_error_while_loading_is_a_rejected_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(agent: Agent, config: Path) -> None:
        old = agent.config
        before = sample(agent, "predis_agent_config_reload_failures_total") or 0.0
        config.write_text("drift:\n  check_interval_seconds: 600\n")

        def out_of_memory(text: str | None = None) -> Any:
            raise MemoryError

        monkeypatch.setattr(agent, "load_config", out_of_memory)
        result = await agent.reload("file-watch")
        assert_rejected(agent, result, 1, before, "MemoryError")
        assert agent.config is old
        # The watch knows this file now: it is not retried until it changes again.
        assert agent._watch_digest == agent._file_digest()

    run(tmp_path, scenario)


def test_a_swap_that_raises_puts_the_previous_config_and_generation_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(agent: Agent, config: Path) -> None:
        old = agent.config
        before = sample(agent, "predis_agent_config_reload_failures_total") or 0.0
        config.write_text("drift:\n  check_interval_seconds: 600\n")

        def broken(section: dict[str, Any]) -> None:
            raise RuntimeError("drift detectors could not be rebuilt")

        monkeypatch.setattr(agent.drift, "configure", broken)
        result = await agent.reload("api")
        assert_rejected(agent, result, 1, before, "applying the new config failed: RuntimeError")
        assert agent.config is old and agent.config.get("drift.check_interval_seconds") == 300
        monkeypatch.undo()
        # The next good reload takes the next generation: the failed one used none.
        result = await agent.reload("api")
        assert result.ok and result.generation == 2, result.errors
        assert sample(agent, "predis_agent_config_last_reload_success") == 1.0

    run(tmp_path, scenario)


def test_a_log_file_that_cannot_be_opened_is_refused_before_the_swap(tmp_path: Path) -> None:
    async def scenario(agent: Agent, config: Path) -> None:
        before = sample(agent, "predis_agent_config_reload_failures_total") or 0.0
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        config.write_text(f"agent:\n  log:\n    file:\n      path: {blocker / 'agent.log'}\n")
        result = await agent.reload("file-watch")
        assert_rejected(agent, result, 1, before, "cannot be opened for appending")
        assert agent.config.get("agent.log.file.path") is None

    run(tmp_path, scenario)


class BlockingSink:
    """Stands in for a ResilientSink whose endpoint is down: close() waits until released."""

    name = "blocking"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.closing = threading.Event()
        self.closed = threading.Event()

    def close(self, timeout: float) -> None:
        self.closing.set()
        self.release.wait()
        self.closed.set()


def test_a_retired_sink_is_closed_off_the_loop_and_waited_for_before_sinks_are_rebuilt(tmp_path: Path) -> None:
    async def scenario(agent: Agent, config: Path) -> None:
        sink = BlockingSink()
        agent.plugins.retired_sinks.append(sink)  # type: ignore[arg-type]
        agent.plugins.close_retired_sinks(600.0)
        loop = asyncio.get_running_loop()
        # The close runs in its own thread: the loop goes on (it could not, were close() on it).
        assert await loop.run_in_executor(None, sink.closing.wait, 30.0)
        assert not sink.closed.is_set()
        settle = asyncio.ensure_future(agent.plugins.settle_sink_closes())
        await asyncio.sleep(0)
        assert not settle.done()
        sink.release.set()
        await asyncio.wait_for(settle, 30.0)
        assert sink.closed.is_set() and agent.plugins.closing == []

    run(tmp_path, scenario)
