# SPDX-License-Identifier: Apache-2.0
"""Remediation actions and the engine that runs them, never by surprise.

A plugin registers actions with ``predis_agent_register_remediations``; each is an object
with a ``name``, the ``triggers`` it answers (condition names: ``eta:<resource>``,
``anomaly:<signal>``), whether it is ``reversible``, and ``describe()`` (what it would do
now), ``apply(evidence)`` and ``revert()`` (each returns what it did, in words; raising
:class:`RemediationUnavailable` says why it cannot act).

The engine (one per agent) acts only for actions named in ``aiops.remediation.opt_in``;
those not also in ``aiops.remediation.live`` only record what they would have done
(dry-run). When one of an action's conditions begins, the action

* is skipped and recorded ``rate_limited`` when it last acted (or would have) less than
  ``min_interval_seconds`` ago;
* otherwise records ``dry_run`` (with the description) or acts and records ``applied``
  (or ``failed``, or ``unavailable``);

and an applied reversible action is reverted (``reverted``) once every one of its
conditions has been clear for ``revert_after_clear_rounds`` rounds. Every record carries
the evidence that triggered it, goes to the audit log (:mod:`agent.aiops.audit`), is an
``aiops_action`` event and counts in ``predis_aiops_actions_total{action,outcome}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agent.aiops.audit import AuditLog
from agent.errors import AgentError

log = logging.getLogger(__name__)

OUTCOMES = ("dry_run", "applied", "failed", "unavailable", "rate_limited", "reverted", "revert_failed")


class RemediationUnavailable(AgentError):
    """The action cannot act now (the message says why); recorded, not retried this episode."""


@runtime_checkable
class Remediation(Protocol):
    name: str
    triggers: tuple[str, ...]
    reversible: bool

    def describe(self) -> str: ...
    def apply(self, evidence: dict[str, Any]) -> str: ...
    def revert(self) -> str: ...


@dataclass
class RemediationSettings:
    opt_in: tuple[str, ...] = ()
    live: tuple[str, ...] = ()
    min_interval_seconds: float = 600.0
    revert_after_clear_rounds: int = 3

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> RemediationSettings:
        return cls(
            opt_in=tuple(section["opt_in"]),
            live=tuple(section["live"]),
            min_interval_seconds=float(section["min_interval_seconds"]),
            revert_after_clear_rounds=int(section["revert_after_clear_rounds"]),
        )


@dataclass
class ActionState:
    """What the engine knows of one action."""

    triggered_by: str | None = None  # the condition of the running episode
    last_fired: float | None = None  # when it last acted or would have (rate limit)
    applied: bool = False  # applied and not reverted yet
    clear_rounds: int = 0
    last_outcome: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


class RemediationEngine:
    def __init__(
        self,
        emit: Callable[[str, dict[str, Any]], None],
        count: Callable[[str, str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._emit = emit
        self._count = count
        self._clock = clock
        self.settings = RemediationSettings()
        self.audit = AuditLog(None)
        self.actions: dict[str, Any] = {}
        self.owners: dict[str, str] = {}
        self.states: dict[str, ActionState] = {}

    def configure(self, settings: RemediationSettings, audit: AuditLog) -> None:
        self.settings = settings
        self.audit = audit

    def register(self, actions: list[tuple[str, Any]]) -> None:
        """Take the actions plugins registered (plugin, action); a name given twice keeps the first."""
        found: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for plugin, action in actions:
            if not isinstance(action, Remediation):
                log.error("plugin %s: %r is not a remediation (name, triggers, reversible, describe, apply, revert); ignored", plugin, action)
                continue
            if action.name in found:
                log.error("plugin %s: remediation %r is already registered by %s; ignored", plugin, action.name, owners[action.name])
                continue
            found[action.name], owners[action.name] = action, plugin
        self.actions, self.owners = found, owners
        self.states = {name: self.states.get(name, ActionState()) for name in found}

    def mode(self, name: str) -> str:
        if name not in self.settings.opt_in:
            return "off"
        return "live" if name in self.settings.live else "dry_run"

    def step(self, active: dict[str, dict[str, Any]]) -> None:
        """One round: ``active`` maps each condition now present to its evidence."""
        for name, action in list(self.actions.items()):
            state = self.states[name]
            mode = self.mode(name)
            hits = [t for t in action.triggers if t in active]
            if state.applied:
                state.clear_rounds = 0 if hits else state.clear_rounds + 1
                if not hits:
                    state.triggered_by = None
                if state.clear_rounds >= self.settings.revert_after_clear_rounds or mode != "live":
                    self._revert(name, action, state, "conditions cleared" if mode == "live" else f"action now {mode}")
                continue
            if not hits or mode == "off":
                state.triggered_by = None
                continue
            if state.triggered_by is not None:  # the episode it already answered
                continue
            state.triggered_by = hits[0]
            self._fire(name, action, state, mode, hits[0], active[hits[0]])

    def _fire(self, name: str, action: Any, state: ActionState, mode: str, condition: str, evidence: dict[str, Any]) -> None:
        now = self._clock()
        record: dict[str, Any] = {"time": now, "action": name, "plugin": self.owners[name], "mode": mode, "trigger": condition, "evidence": evidence}
        if state.last_fired is not None and now - state.last_fired < self.settings.min_interval_seconds:
            record["outcome"] = "rate_limited"
            record["detail"] = f"acted {now - state.last_fired:.0f}s ago; aiops.remediation.min_interval_seconds is {self.settings.min_interval_seconds:g}"
            self._record(state, record)
            return
        try:
            if mode == "dry_run":
                record["outcome"], record["detail"] = "dry_run", f"would: {action.describe()}"
            else:
                try:
                    self.audit.check()  # nothing acts that could not be recorded
                except OSError as exc:
                    raise RemediationUnavailable(f"the audit log {self.audit.path} cannot be written: {exc.strerror or exc}") from None
                record["detail"] = action.apply(evidence)
                record["outcome"] = "applied"
                state.applied, state.clear_rounds = bool(action.reversible), 0
        except RemediationUnavailable as exc:
            record["outcome"], record["detail"] = "unavailable", str(exc)
        except Exception as exc:
            record["outcome"], record["detail"] = "failed", f"{exc.__class__.__name__}: {exc}"
        state.last_fired = now
        self._record(state, record)

    def _revert(self, name: str, action: Any, state: ActionState, why: str) -> None:
        record: dict[str, Any] = {"time": self._clock(), "action": name, "plugin": self.owners[name], "mode": "live", "trigger": why}
        try:
            record["detail"] = action.revert()
            record["outcome"] = "reverted"
        except Exception as exc:
            record["outcome"], record["detail"] = "revert_failed", f"{exc.__class__.__name__}: {exc}"
        state.applied = False
        state.clear_rounds = 0
        self._record(state, record)

    def revert_all(self, why: str) -> None:
        """Put back every applied action (agent stop)."""
        for name, action in list(self.actions.items()):
            state = self.states[name]
            if state.applied:
                self._revert(name, action, state, why)

    def _record(self, state: ActionState, record: dict[str, Any]) -> None:
        outcome = record["outcome"]
        state.last_outcome = outcome
        state.counts[outcome] = state.counts.get(outcome, 0) + 1
        self._count(record["action"], outcome)
        level = logging.INFO if outcome in ("dry_run", "rate_limited") else logging.WARNING
        log.log(level, "aiops: action %s %s (%s): %s", record["action"], outcome, record["trigger"], record.get("detail", ""))
        try:
            self.audit.append(record)
        except OSError as exc:
            log.error("aiops: audit log %s could not be written: %s", self.audit.path, exc.strerror or exc)
        self._emit("aiops_action", record)

    def public(self) -> dict[str, Any]:
        return {
            "settings": {
                "opt_in": list(self.settings.opt_in),
                "live": list(self.settings.live),
                "min_interval_seconds": self.settings.min_interval_seconds,
                "revert_after_clear_rounds": self.settings.revert_after_clear_rounds,
            },
            "actions": {
                name: {
                    "plugin": self.owners[name],
                    "mode": self.mode(name),
                    "triggers": list(action.triggers),
                    "reversible": bool(action.reversible),
                    "active_trigger": self.states[name].triggered_by,
                    "applied": self.states[name].applied,
                    "last_fired": self.states[name].last_fired,
                    "last_outcome": self.states[name].last_outcome,
                    "counts": dict(self.states[name].counts),
                }
                for name, action in self.actions.items()
            },
            "audit": self.audit.public(),
        }
