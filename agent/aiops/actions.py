# SPDX-License-Identifier: Apache-2.0
"""The five built-in remediation actions (see :mod:`agent.aiops.remediation`).

=========================  ===========================================  ==========
action                     default triggers                              reversible
=========================  ===========================================  ==========
lower_prefetch_bandwidth   origin error rate or latency anomaly          yes
shrink_prefetch_queue      GPU memory or memory budget ETA               yes
pause_access_log_export    spool or dead-letter ETA                      yes
rollback_model             hit ratio anomaly                             no
request_retrain            hit ratio anomaly                             no
=========================  ===========================================  ==========

The prefetcher actions retune the running prefetcher in place (``Prefetcher.retune``) and
put back the settings they replaced, provided the same prefetcher still runs with the
settings they set (a reload in between re-applies the config file, which wins). A model
rollback moves the registry's champion alias back (the registry's own audit log records it
too, and the model lifecycle serves it within ``mlops.check_interval_seconds``); undoing it
is an operator's ``predis-agent model promote``. A retrain request queues a run of the
retraining pipeline, which applies its own ``min_interval_seconds``.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from agent.aiops.remediation import RemediationUnavailable

ACTOR = "predis-agent aiops"


class _Retune:
    """Shared by the prefetcher actions: scale some settings by ``factor``, and put them back."""

    name = ""
    triggers: tuple[str, ...] = ()
    reversible = True
    fields: tuple[str, ...] = ()
    minimum = 0.0

    def __init__(self, agent: Any, factor: float, triggers: tuple[str, ...]) -> None:
        self.agent = agent
        self.factor = factor
        self.triggers = triggers
        self._lock = threading.Lock()
        self._saved: tuple[Any, Any, Any] | None = None  # (prefetcher, settings before, settings set)

    def _prefetcher(self) -> Any:
        prefetcher = getattr(self.agent.cache_service, "prefetcher", None)
        if prefetcher is None:
            raise RemediationUnavailable("no prefetcher runs (cache.prefetch.enabled is off)")
        return prefetcher

    def _target(self, settings: Any) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for name in self.fields:
            value = getattr(settings, name)
            if value <= 0:
                raise RemediationUnavailable(f"cache.prefetch.{name} is 0 (unbounded); there is no budget to scale")
            scaled = max(self.minimum, value * self.factor)
            changes[name] = type(value)(scaled)
        return changes

    def describe(self) -> str:
        prefetcher = self._prefetcher()
        changes = self._target(prefetcher.settings)
        return "retune the prefetcher: " + ", ".join(f"{k} {getattr(prefetcher.settings, k)} -> {v}" for k, v in changes.items())

    def apply(self, evidence: dict[str, Any]) -> str:
        with self._lock:
            prefetcher = self._prefetcher()
            before = prefetcher.settings
            changes = self._target(before)
            after = dataclasses.replace(before, **changes)
            if not prefetcher.retune(after):
                raise RemediationUnavailable("the running prefetcher refused the retune")
            self._saved = (prefetcher, before, after)
            return "prefetcher retuned: " + ", ".join(f"{k} {getattr(before, k)} -> {v}" for k, v in changes.items())

    def revert(self) -> str:
        with self._lock:
            saved, self._saved = self._saved, None
            if saved is None:
                return "nothing to put back"
            prefetcher, before, after = saved
            current = getattr(self.agent.cache_service, "prefetcher", None)
            if current is not prefetcher or current.settings != after:
                return "left as is: the prefetcher was rebuilt or retuned by a reload since"
            restore = {k: getattr(before, k) for k in self.fields}
            current.retune(dataclasses.replace(current.settings, **restore))
            return "prefetcher settings put back: " + ", ".join(f"{k} {v}" for k, v in restore.items())


class LowerPrefetchBandwidth(_Retune):
    name = "lower_prefetch_bandwidth"
    fields = ("max_keys_per_second", "max_bytes_per_second")
    minimum = 1.0


class ShrinkPrefetchQueue(_Retune):
    name = "shrink_prefetch_queue"
    fields = ("queue_max_batches",)
    minimum = 1.0


class PauseAccessLogExport:
    name = "pause_access_log_export"
    reversible = True

    def __init__(self, agent: Any, triggers: tuple[str, ...]) -> None:
        self.agent = agent
        self.triggers = triggers

    def _exporter(self) -> Any:
        from plugins.collectors.access_log import exporter_for

        if not self.agent.config.get("collectors.access_log.export_dir"):
            raise RemediationUnavailable("collectors.access_log.export_dir is not set; nothing is exported")
        return exporter_for(self.agent)

    def describe(self) -> str:
        self._exporter()
        return "hold the access-log export (events wait in the ring; the oldest are overwritten when it is full)"

    def apply(self, evidence: dict[str, Any]) -> str:
        self._exporter().hold(f"held by aiops action {self.name} ({', '.join(sorted(evidence))})")
        return "access-log export held"

    def revert(self) -> str:
        self._exporter().release()
        return "access-log export resumed"


class RollbackModel:
    name = "rollback_model"
    reversible = False

    def __init__(self, agent: Any, triggers: tuple[str, ...]) -> None:
        self.agent = agent
        self.triggers = triggers

    def _previous(self) -> tuple[Any, str, int, int]:
        mlops = self.agent.mlops
        registry = mlops.registry
        if registry is None:
            raise RemediationUnavailable("no model registry is configured")
        tenant = mlops.tenant
        stack = registry.champion_history(tenant)
        if len(stack) < 2:
            raise RemediationUnavailable(f"tenant {tenant!r} has no previous champion to roll back to")
        return registry, tenant, stack[-1], stack[-2]

    def describe(self) -> str:
        _registry, tenant, current, previous = self._previous()
        return f"roll tenant {tenant!r} back from champion v{current} to v{previous}"

    def apply(self, evidence: dict[str, Any]) -> str:
        registry, tenant, current, previous = self._previous()
        registry.rollback(tenant, reason=f"aiops: {', '.join(sorted(evidence))}", actor=ACTOR)
        return f"tenant {tenant!r} rolled back from champion v{current} to v{previous} (promote v{current} to undo)"

    def revert(self) -> str:
        raise RemediationUnavailable("a rollback is not reverted automatically")


class RequestRetrain:
    name = "request_retrain"
    reversible = False

    def __init__(self, agent: Any, triggers: tuple[str, ...]) -> None:
        self.agent = agent
        self.triggers = triggers

    def describe(self) -> str:
        if not self.agent.mlops.pipeline.settings.enabled:
            raise RemediationUnavailable("mlops.retrain.enabled is off")
        return "queue a retraining run (mlops.retrain)"

    def apply(self, evidence: dict[str, Any]) -> str:
        if not self.agent.mlops.pipeline.request("aiops"):
            raise RemediationUnavailable("mlops.retrain.enabled is off")
        return "retraining run queued"

    def revert(self) -> str:
        raise RemediationUnavailable("a retrain request is not reverted")


def builtin_actions(agent: Any, section: dict[str, Any]) -> list[Any]:
    """The built-in actions, their triggers and factors from ``aiops.remediation``."""
    triggers = {name: tuple(value) for name, value in section["triggers"].items()}
    return [
        LowerPrefetchBandwidth(agent, float(section["prefetch_bandwidth_factor"]), triggers["lower_prefetch_bandwidth"]),
        ShrinkPrefetchQueue(agent, float(section["prefetch_queue_factor"]), triggers["shrink_prefetch_queue"]),
        PauseAccessLogExport(agent, triggers["pause_access_log_export"]),
        RollbackModel(agent, triggers["rollback_model"]),
        RequestRetrain(agent, triggers["request_retrain"]),
    ]
