# SPDX-License-Identifier: Apache-2.0
"""The agent's model lifecycle: serve the champion, retrain, canary the challenger.

One :class:`MlopsService` per agent ties the registry (:mod:`agent.mlops.registry`), the
retraining pipeline (:mod:`agent.mlops.retrain`) and canary rollouts
(:mod:`agent.mlops.rollout`) to the running prefetcher:

* **Serving.** With ``mlops.serve_champion`` on, the prefetcher is built with the
  tenant's champion from the registry (checksums verified on load) instead of a fresh
  ``cache.prefetch.model``; a champion moved by someone else (``predis-agent model
  promote`` or ``rollback``) is picked up within ``mlops.check_interval_seconds``. Every
  model put into service first passes a test inference (shape, IDs and confidences in
  range), which ``/readyz`` reports as the ``prefetch`` component.
* **Retraining.** Drift that :func:`agent.mlops.drift_policy.should_retrain` deems worth it,
  or the schedule, queues a run; the pipeline runs it in a worker thread. After a run that
  judged the current data (registered or rejected), the drift reference becomes that data's
  window, so the same drift is not reported forever.
* **Canary.** A challenger in the registry (a retrain registered it, or an operator
  promoted one to ``challenger``) is rolled out against the serving champion. Each decision
  is an event (``rollout_advance``, ``rollout_promote``, ``rollout_rollback``), a metric
  (``predis_mlops_rollout_decisions_total``) and an audit-log line; a promotion moves the
  ``champion`` alias, a rollback clears ``challenger``.

Registry I/O runs off the event loop (:meth:`sync` is called from an executor).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy

from agent.config import Config, Secret, settings_of
from agent.errors import AgentError
from agent.mlops.dataset import parse_key
from agent.mlops.drift import DriftResult
from agent.mlops.drift_policy import Performance, RetrainDecision, should_retrain
from agent.mlops.registry import ModelRegistry
from agent.mlops.retrain import Dataset, RetrainPipeline, RetrainSettings, dataset_from_ring, dataset_from_segments
from agent.mlops.rollout import ADVANCE, DECISIONS, PROMOTE, Decision, Rollout, RolloutSettings
from agent.telemetry import MLOPS_METRICS, Metric, sample
from cache_core.models import Vocabulary, place_model, set_learning
from cache_core.prefetch import test_inference

log = logging.getLogger(__name__)

_SPECS = {spec.name: spec for spec in MLOPS_METRICS}
ACTOR = "predis-agent canary"


class MlopsService:
    """Serving, retraining and canary rollouts of one tenant's prefetch models."""

    def __init__(
        self,
        emit: Callable[[str, dict[str, Any]], None],
        prefetcher: Callable[[], Any],
        ring: Callable[[], Any],
        on_retrained: Callable[[Dataset], object],
    ) -> None:
        self._emit = emit
        self._prefetcher = prefetcher
        self._ring = ring
        self._on_retrained = on_retrained
        self._lock = threading.Lock()
        self.section: dict[str, Any] = {}
        self.access_log: dict[str, Any] = {}
        self.registry: ModelRegistry | None = None
        self.tenant = "default"
        self.serve_champion = True
        self.learn_online = True
        self.depth = 1
        self.rollout_settings = RolloutSettings()
        self.pipeline = RetrainPipeline(self._dataset, emit, self._retrained, reads_logged=self._reads_logged)
        self.decisions: Counter[str] = Counter({d: 0 for d in DECISIONS})
        self.load_error: str | None = None
        self.last_rollout: dict[str, Any] | None = None
        self._served: tuple[int, int | None] | None = None  # (id(prefetcher), version) checked

    # -- configuration ------------------------------------------------------------------------
    def configure(self, cfg: Config) -> None:
        section = cfg.section("mlops")
        prefetch = cfg.section("cache.prefetch")
        with self._lock:
            self.section = section
            self.access_log = cfg.section("collectors.access_log")
            self.registry = ModelRegistry(section["registry_dir"])
            self.tenant = section["tenant"]
            self.serve_champion = bool(section["serve_champion"])
            self.learn_online = bool(prefetch.get("learn_online", True))
            self.depth = int(prefetch.get("depth", 1))
            self.rollout_settings = settings_of(RolloutSettings, section["rollout"])
            self.rollout_settings.check()
        self.pipeline.configure(settings_of(RetrainSettings, section["retrain"]), self.registry, self.tenant, section, self.learn_online)

    @property
    def interval(self) -> float:
        return float(self.section.get("check_interval_seconds", 10.0))

    # -- serving ------------------------------------------------------------------------------
    def champion(self) -> tuple[Any, Vocabulary, int] | None:
        """The tenant's champion to build a prefetcher with, or None (serve a fresh model)."""
        registry = self.registry
        if registry is None or not self.serve_champion:
            return None
        try:
            version = registry.aliases(self.tenant)["champion"]
        except (AgentError, OSError) as exc:
            self.load_error = f"registry of tenant {self.tenant!r} unreadable: {exc}"
            log.error("%s; serving a fresh model", self.load_error)
            return None
        if version is None:
            return None
        loaded = self._load(version)
        return None if loaded is None else (*loaded, version)

    def sync(self) -> None:
        """Follow the registry: serve a moved champion, start a canary for a new challenger."""
        prefetcher = self._prefetcher()
        registry = self.registry
        if prefetcher is None or registry is None or not self.serve_champion:
            return
        try:
            aliases = registry.aliases(self.tenant)
        except (AgentError, OSError) as exc:
            self.load_error = f"registry of tenant {self.tenant!r} unreadable: {exc}"
            return
        if prefetcher.rollout is not None:
            return
        champion, challenger = aliases["champion"], aliases["challenger"]
        if champion is not None and champion != prefetcher.version:
            loaded = self._load(champion, prefetcher.xp)
            if loaded is not None:
                model, vocab = loaded
                ok, detail = test_inference(model, vocab, self.depth)
                if not ok:
                    self.load_error = f"champion v{champion} failed its test inference: {detail}"
                    log.error("%s; keeping v%s", self.load_error, prefetcher.version)
                    return
                prefetcher.swap_model(model, vocab, champion, (ok, detail))
                log.info("prefetch: now serving champion v%d of tenant %s", champion, self.tenant)
                self._emit("model_served", {"tenant": self.tenant, "version": champion, "alias": "champion"})
        if challenger is not None and challenger != prefetcher.version:
            self._start_rollout(prefetcher, challenger)

    def _load(self, version: int, xp: Any = numpy) -> tuple[Any, Vocabulary] | None:
        """Version ``version``, its tables moved to the prefetcher's array module ``xp``."""
        assert self.registry is not None
        try:
            model, vocab = self.registry.load_model(self.tenant, version)
        except (AgentError, OSError) as exc:
            self.load_error = f"v{version} of tenant {self.tenant!r} not loaded: {exc}"
            log.error("%s", self.load_error)
            return None
        self.load_error = None
        set_learning(model, self.learn_online)
        return place_model(model, xp), vocab

    def _start_rollout(self, prefetcher: Any, version: int) -> None:
        loaded = self._load(version, prefetcher.xp)
        if loaded is None:
            return
        model, vocab = loaded
        ok, detail = test_inference(model, vocab, self.depth)
        if not ok:
            self._finish_failed_start(version, f"challenger v{version} failed its test inference: {detail}")
            return
        rollout = Rollout(self.tenant, prefetcher.version, version, self.rollout_settings, self._on_decision)
        prefetcher.start_rollout(rollout, model, vocab, version)
        log.info("canary: challenger v%d of tenant %s serves %.0f%% of prefetch decisions", version, self.tenant, 100 * rollout.share)
        self._emit(
            "rollout_started",
            {"tenant": self.tenant, "champion_version": prefetcher.version, "challenger_version": version, "share": rollout.share},
        )

    def _finish_failed_start(self, version: int, reason: str) -> None:
        log.error("canary: %s; rolled back", reason)
        assert self.registry is not None
        self.registry.retire_challenger(self.tenant, version, reason, ACTOR)
        with self._lock:
            self.decisions["rollback"] += 1
        self._emit("rollout_rollback", {"tenant": self.tenant, "challenger_version": version, "reason": reason})

    def _on_decision(self, rollout: Rollout, decision: Decision) -> None:
        """A canary decision (called from the prefetch worker): audit, count, tell."""
        with self._lock:
            self.decisions[decision.action] += 1
            self.last_rollout = rollout.status()
        version = rollout.challenger_version
        registry = self.registry
        try:
            if registry is not None:
                if decision.action == ADVANCE:
                    registry.note(self.tenant, "challenger", version, "canary_step", decision.reason, ACTOR)
                elif decision.action == PROMOTE:
                    registry.promote(self.tenant, version, "champion", f"canary: {decision.reason}", ACTOR)
                else:
                    registry.retire_challenger(self.tenant, version, f"canary: {decision.reason}", ACTOR)
        except (AgentError, OSError) as exc:
            log.error("canary: could not record the %s of v%d in the registry: %s", decision.action, version, exc)
        level = logging.WARNING if decision.action == "rollback" else logging.INFO
        log.log(level, "canary v%d of tenant %s: %s (%s)", version, self.tenant, decision.action, decision.reason)
        self._emit(f"rollout_{decision.action}", {"tenant": self.tenant, "challenger_version": version, **decision.public()})
        if decision.action == PROMOTE:
            self._emit("model_served", {"tenant": self.tenant, "version": version, "alias": "champion"})

    # -- retraining ---------------------------------------------------------------------------
    def on_drift(self, result: DriftResult, performance: Performance | None, settings: Any) -> RetrainDecision:
        """Queue a retrain when the drift policy says the drift is worth one."""
        decision = should_retrain(result, performance, settings)
        if decision.retrain and self.pipeline.settings.on_drift:
            self.pipeline.request(f"drift: {decision.reason}", result.public())
        return decision

    def _reads_logged(self) -> int:
        """Events the access-log ring has taken (0 without one)."""
        ring = self._ring()
        return int(ring.head) if ring is not None else 0

    def _dataset(self, settings: RetrainSettings) -> Dataset:
        access_log = self.access_log
        export_dir = access_log.get("export_dir")
        if export_dir:
            material = access_log.get("encryption_key")
            text = material.reveal_bytes() if isinstance(material, Secret) else material
            keys = [parse_key(text)] if text else []
            return dataset_from_segments(str(export_dir), keys, settings.recent_requests, settings.history_requests)
        ring = self._ring()
        if ring is None:
            return Dataset([], "ring", 0, 0, 0, 0, 0, numpy.empty(0))
        return dataset_from_ring(ring, settings.recent_requests)

    def _retrained(self, report: dict[str, Any], dataset: Dataset | None) -> None:
        if report.get("result") in ("promoted", "registered", "rejected") and dataset is not None and dataset.recent_events.shape[0]:
            self._on_retrained(dataset)

    # -- reporting ------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str] | None:
        """The ``prefetch`` readiness component, or None when prefetching is off."""
        prefetcher = self._prefetcher()
        if prefetcher is None:
            return None
        ok, detail = prefetcher.test_result
        if self.load_error:
            detail = f"{detail}; {self.load_error}"
        return ok, detail

    def samples(self) -> list[Metric]:
        out = self.pipeline.samples()
        prefetcher = self._prefetcher()
        tenant = {"tenant": self.tenant}
        with self._lock:
            out += [sample(_SPECS["predis_mlops_rollout_decisions_total"], float(n), {"decision": d}) for d, n in sorted(self.decisions.items())]
        if prefetcher is not None:
            out.append(sample(_SPECS["predis_mlops_serving_version"], float(prefetcher.version or 0), tenant))
            rollout = prefetcher.rollout
            out.append(sample(_SPECS["predis_mlops_rollout_share_ratio"], float(rollout.share) if rollout is not None else 0.0, tenant))
            if rollout is not None:
                for arm, ratio in rollout.arm_hit_ratios().items():
                    if ratio is not None and math.isfinite(ratio):
                        out.append(sample(_SPECS["predis_mlops_rollout_arm_hit_ratio"], ratio, {**tenant, "arm": arm}))
        return out

    def status(self) -> dict[str, Any]:
        prefetcher = self._prefetcher()
        rollout = prefetcher.rollout if prefetcher is not None else None
        with self._lock:
            decisions = dict(self.decisions)
            last = self.last_rollout
        return {
            "tenant": self.tenant,
            "registry_dir": str(self.registry.root) if self.registry is not None else None,
            "serve_champion": self.serve_champion,
            "serving_version": prefetcher.version if prefetcher is not None else None,
            "load_error": self.load_error,
            "retrain": self.pipeline.status(),
            "rollout": rollout.status() if rollout is not None else None,
            "last_rollout": last,
            "decisions": decisions,
        }
