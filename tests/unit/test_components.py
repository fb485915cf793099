# SPDX-License-Identifier: Apache-2.0
"""agent.components driven by the Agent: start-up and reload are one path.

The agent runs in-process on loopback ports; each test drives it through start, a
reload and stop, recording the stages each component went through.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.components import BaseComponent, Changes
from agent.config import Config
from agent.runtime import Agent
from tests.polling import wait_for

BASE = "agent:\n  http: {listen: '127.0.0.1:0'}\ncache:\n  resp: {listen: '127.0.0.1:0'}\n"


class Recorder:
    """Wraps a component's stages, noting (stage, component name) in ``log``."""

    def __init__(self, component: BaseComponent, log: list[tuple[str, str]]) -> None:
        self.component = component
        self.log = log
        for stage in ("plan", "prepare", "apply", "discard", "abandon"):
            setattr(component, stage, self._wrap(stage, getattr(component, stage)))

    def _wrap(self, stage: str, func: Callable[..., Any]) -> Callable[..., Any]:
        name = self.component.name

        if asyncio.iscoroutinefunction(func):

            async def run_async(*args: Any) -> Any:
                self.log.append((stage, name))
                return await func(*args)

            return run_async

        def run(*args: Any) -> Any:
            self.log.append((stage, name))
            return func(*args)

        return run


def run_agent(path: Path, body: Callable[[Agent, list[tuple[str, str]]], Awaitable[Any]]) -> Any:
    async def scenario() -> Any:
        agent = Agent(str(path))
        log: list[tuple[str, str]] = []
        for component in agent.components:
            Recorder(component, log)
        await agent.start()
        try:
            return await body(agent, log)
        finally:
            await agent.stop()

    return asyncio.run(scenario())


def test_start_takes_every_component_through_plan_prepare_apply_in_order(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(BASE, encoding="utf-8")

    async def body(agent: Agent, log: list[tuple[str, str]]) -> tuple[list[str], list[tuple[str, str]]]:
        return [c.name for c in agent.components], list(log)

    names, log = run_agent(path, body)
    stages = [stage for stage, _ in log]
    assert [n for s, n in log if s == "plan"] == names
    assert [n for s, n in log if s == "prepare"] == names
    assert [n for s, n in log if s == "apply"] == names
    # Every dry-build stage comes before the first swap.
    assert max(i for i, s in enumerate(stages) if s in ("plan", "prepare")) < stages.index("apply")


def test_a_reload_goes_through_the_components_its_change_touches_only(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(BASE, encoding="utf-8")

    async def body(agent: Agent, log: list[tuple[str, str]]) -> tuple[bool, list[str]]:
        log.clear()
        path.write_text(BASE + "drift:\n  check_interval_seconds: 7\n", encoding="utf-8")
        result = await agent.reload("test")
        return result.ok, [n for s, n in log if s == "apply"]

    ok, applied = run_agent(path, body)
    # drift, plus the two that follow every change (the cache and the metrics listener).
    assert ok and applied == ["cache", "metrics_listener", "drift"]


def test_a_failed_dry_build_discards_every_plan_and_applies_nothing(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(BASE, encoding="utf-8")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]

    async def body(agent: Agent, log: list[tuple[str, str]]) -> tuple[Any, list[tuple[str, str]], int, str | None]:
        log.clear()
        address = agent.cache_service.address
        # A new RESP port (dry-built: bound) and an API port that is taken (fails to bind).
        path.write_text(
            f"agent:\n  http: {{listen: '127.0.0.1:{port}'}}\ncache:\n  resp: {{listen: '127.0.0.1:0', max_clients: 77}}\n",
            encoding="utf-8",
        )
        result = await agent.reload("test")
        return result, list(log), agent.generation, address == agent.cache_service.address and address

    try:
        result, log, generation, kept = run_agent(path, body)
    finally:
        busy.close()
    assert not result.ok and generation == 1 and kept
    assert any("Address already in use" in e or "cannot listen" in e for e in result.errors)
    assert [s for s, _ in log if s == "apply"] == []
    # The cache's plan (a bound listener) was given back.
    assert ("discard", "cache") in log


def test_an_apply_that_fails_is_reported_and_the_others_abandon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(BASE, encoding="utf-8")

    async def body(agent: Agent, log: list[tuple[str, str]]) -> tuple[Any, int, list[tuple[str, str]]]:
        drift = next(c for c in agent.components if c.name == "drift")

        async def broken(plan: Any, new: Config, changes: Changes) -> list[str]:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(drift, "apply", broken)
        log.clear()
        path.write_text(BASE + "drift:\n  check_interval_seconds: 9\n", encoding="utf-8")
        result = await agent.reload("test")
        return result, agent.generation, list(log)

    result, generation, log = run_agent(path, body)
    assert not result.ok and generation == 1
    assert "applying the new config failed: RuntimeError: disk on fire" in result.errors[0]
    assert ("abandon", "drift") in log


def test_a_new_drift_interval_wakes_the_drift_loop(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    slow = BASE + "collectors:\n  access_log: {enabled: true}\ndrift:\n  check_interval_seconds: 3600\n"
    path.write_text(slow, encoding="utf-8")

    async def body(agent: Agent, log: list[tuple[str, str]]) -> int:
        before = agent.drift.status()["state"]
        assert before == "not checked yet"
        path.write_text(slow.replace("3600", "1"), encoding="utf-8")
        assert (await agent.reload("test")).ok
        loop = asyncio.get_running_loop()
        # The loop's first check adopts the ring, the next ones count.
        await loop.run_in_executor(None, lambda: wait_for(lambda: agent.drift.checks >= 2, timeout=60, what="drift checks"))
        return agent.drift.checks

    assert run_agent(path, body) >= 2


def test_a_changed_exporter_section_rebuilds_the_plugin_that_declared_it() -> None:
    from agent.components import PluginComponent
    from agent.plugins import PluginHost
    from agent.telemetry import Telemetry
    from agent.tracing import Tracing

    host = PluginHost(load_entrypoints=False, builtins=())
    host.section_owners = {"exporters.vendorx": "vendorx_plugin"}
    component = PluginComponent(host, None, Telemetry("test"), Tracing(), lambda kind, data: None, lambda: None)
    changes = Changes(("exporters.vendorx.endpoint", "exporters.datadog.site", "plugins.files.root", "agent.sinks.queue_max_points"))
    assert component.changed_plugins(changes) == {"vendorx_plugin", "datadog", "files"}
