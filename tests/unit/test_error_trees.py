# SPDX-License-Identifier: Apache-2.0
"""Every exception class the agent defines sits in one of the two layer trees:
agent.errors.AgentError (the agent layer) or agent.sinks.ExportError (the export layer)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import agent
from agent.config import FileReadRefused
from agent.errors import AgentError, ConfigError, PluginLoadError, SecurityError
from agent.mlops.rollout import RolloutError
from agent.sinks import ExportError


def agent_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(agent.__path__, "agent."))


def exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in agent_modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name:
                found[f"{name}.{attr}"] = value
    return found


def test_the_walk_finds_the_exceptions_of_nested_modules() -> None:
    found = exception_classes()
    assert {"agent.errors.ConfigError", "agent.mlops.dataset.SegmentTruncatedError", "agent.sinks.TransientExportError"} <= set(found)


def test_every_exception_class_under_agent_derives_from_a_layer_base() -> None:
    stray = sorted(name for name, cls in exception_classes().items() if not issubclass(cls, (AgentError, ExportError)))
    assert stray == []


def test_the_layer_bases_are_separate_and_the_standard_bases_are_kept() -> None:
    assert not issubclass(ExportError, AgentError) and not issubclass(AgentError, ExportError)
    assert issubclass(ConfigError, ValueError) and issubclass(SecurityError, ValueError)
    assert issubclass(PluginLoadError, ImportError)
    assert issubclass(FileReadRefused, OSError) and issubclass(RolloutError, ValueError)
