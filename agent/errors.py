# SPDX-License-Identifier: Apache-2.0
"""The agent's exception tree.

::

    AgentError
    ├── ConfigError(ValueError)          invalid config; carries every problem found
    ├── PluginLoadError(ImportError)     a plugin could not be imported or registered
    ├── AuthError                        missing, malformed or unknown bearer token
    ├── SecurityError(ValueError)        a path escaped its root, a bad tenant ID
    └── StartupError                     a component could not start (port in use, no GPU)

Messages say what was expected, what was found and what to do; they never contain a
secret value.
"""

from __future__ import annotations

from dataclasses import dataclass


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config: where (dotted key path, optional line) and what."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or "<root>"
        suffix = f" (line {self.line})" if self.line else ""
        return f"{where}: {self.message}{suffix}"


class ConfigError(AgentError, ValueError):
    """A config was rejected. ``problems`` lists every problem, not just the first."""

    def __init__(self, problems: list[ConfigProblem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"invalid config{f' {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class PluginLoadError(AgentError, ImportError):
    """A plugin failed to import or register."""


class AuthError(AgentError):
    """A request carried no token, a malformed one, or one not in the token store."""


class SecurityError(AgentError, ValueError):
    """Input that would escape a confinement rule (path root, tenant-ID pattern)."""


class StartupError(AgentError):
    """A component could not be started with the given config."""
