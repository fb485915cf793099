# SPDX-License-Identifier: Apache-2.0
"""The agent's exception tree: every exception the agent layer defines derives from
:class:`AgentError` (and keeps its standard base, so ``except ValueError`` and the like
still catch it). The export layer has a tree of its own under
:class:`agent.sinks.ExportError` (drawn in :mod:`agent.sinks`).

::

    AgentError
    ├── ConfigError(ValueError)               invalid config; carries every problem found
    ├── PluginLoadError(ImportError)          a plugin could not be imported or registered
    ├── AuthError                             missing, malformed or unknown bearer token
    ├── SecurityError(ValueError)             a path escaped its root, a bad tenant ID
    ├── StartupError                          a component could not start (port in use, no GPU)
    ├── ConfigYamlError(MarkedYAMLError)      agent.config: YAML refused (a bound, a tag, an alias loop)
    ├── FileReadRefused(OSError)              agent.config: not a regular file, or over its size cap
    ├── KeyFormatError(ValueError)            agent.mlops.dataset: key material that is not an AES-256 key
    ├── SegmentError                          agent.mlops.dataset: a segment failed verification
    │   ├── SegmentFormatError                    not a segment format this reader knows
    │   │   └── SegmentTruncatedError             shorter (or longer) than its header says
    │   ├── SegmentTamperedError                  authentication failed, or a renamed file
    │   └── UnknownKeyError                       no key given has the segment's key id
    ├── TraceError                            agent.mlops.traces: a trace that cannot be read
    ├── TrainingError(ValueError)             agent.mlops.training: a training request that cannot run
    │   ├── TrainingTimeout                       past its time budget, nothing registered
    │   └── NoData                                agent.mlops.retrain: nothing usable to train on
    ├── RegistryError                         agent.mlops.registry: unknown version, corrupt artefact, bad archive
    ├── HistoryError(OSError)                 agent.history: the history database cannot be opened or written
    └── RolloutError(ValueError)              agent.mlops.rollout: rollout settings that cannot work

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
