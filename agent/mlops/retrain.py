# SPDX-License-Identifier: Apache-2.0
"""The retraining pipeline of the running agent: data, candidate, comparison, registration.

When the drift policy says a drift is worth a retrain (``drift_detected`` with a
degradation, or with nothing measured: :func:`agent.mlops.drift_policy.should_retrain`),
or on schedule (``mlops.retrain.interval_seconds``), one run:

1. builds a dataset of demand reads (GET events) with their raw keys — from the exported
   access-log segments when ``collectors.access_log.export_dir`` is set (the newest
   ``recent_requests`` reads, preceded by up to ``history_requests`` reads from a random
   sample of older segments, all in time order), else from the in-memory access-log ring.
   A model names the keys it prefetches, so this needs ``store_raw_keys: true``; without
   raw keys the run ends ``no_data`` and says so;
2. trains a candidate and compares it with the tenant's champion on the held-out latest
   slice by replay, and registers it only if it is better by ``mlops.promote_margin``
   (:func:`agent.mlops.training.train_and_register`): the first model of a tenant becomes
   the champion, a later one the challenger, which a canary rollout then judges live;
3. reports: ``predis_mlops_retrain_total{result}``,
   ``predis_mlops_retrain_duration_seconds``, the candidate, champion and baseline hit
   ratios, ``retrain_started`` / ``retrain_finished`` events, and its phase in ``/status``.

It runs in a worker thread under ``time_budget_seconds`` (checked between batches: a run
past its budget ends ``timeout`` and registers nothing). One run at a time; requests that
arrive during a run, or within ``min_interval_seconds`` of the last one, are coalesced.
Results: ``promoted`` (first model, now champion), ``registered`` (challenger),
``rejected`` (not better than the champion), ``no_data``, ``timeout``, ``error``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy

from agent.mlops.dataset import SegmentError, list_segments, read_segments
from agent.mlops.features import WindowFeatures, features_from_events
from agent.mlops.registry import ModelRegistry
from agent.mlops.training import TrainingError, TrainingTimeout, train_and_register
from agent.telemetry import MLOPS_METRICS, Metric, sample
from cache_core.cache import OP_GET

log = logging.getLogger(__name__)

RESULTS = ("promoted", "registered", "rejected", "no_data", "timeout", "error")
_SPECS = {spec.name: spec for spec in MLOPS_METRICS}
ACTOR = "predis-agent retrain"


@dataclass(frozen=True)
class RetrainSettings:
    """The ``mlops.retrain`` section (defaults = the schema's)."""

    enabled: bool = False
    kind: str = "model"
    on_drift: bool = True
    interval_seconds: float = 0.0  # 0: only on drift
    min_interval_seconds: float = 300.0
    time_budget_seconds: float = 60.0
    recent_requests: int = 200_000
    history_requests: int = 100_000
    min_requests: int = 10_000
    settle_requests: int = 0


@dataclass
class Dataset:
    """Demand reads to train on, oldest first, and where they came from."""

    keys: list[bytes]
    source: str
    recent: int
    history: int
    without_key: int
    segments_read: int
    segments_failed: int
    recent_events: numpy.ndarray

    def features(self) -> WindowFeatures:
        """The recent window's drift features (the next drift reference)."""
        return features_from_events(self.recent_events)

    def public(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "requests": len(self.keys),
            "recent": self.recent,
            "history": self.history,
            "without_key": self.without_key,
            "segments_read": self.segments_read,
            "segments_failed": self.segments_failed,
        }


class NoData(TrainingError):
    """Nothing usable to train on (the reason is the message)."""


def _reads(events: numpy.ndarray, keys: list[bytes | None] | None) -> tuple[numpy.ndarray, list[bytes], int]:
    """The GET events, their keys, and how many GETs had no key; keyless events are dropped."""
    if keys is None:
        gets = int((events["op"] == OP_GET).sum())
        return events[:0], [], gets
    mask = events["op"] == OP_GET
    rows = numpy.flatnonzero(mask).tolist()
    kept_rows = [i for i in rows if keys[i] is not None]
    return events[kept_rows], [keys[i] for i in kept_rows], len(rows) - len(kept_rows)  # type: ignore[misc]


def dataset_from_segments(
    directory: str,
    segment_keys: Iterable[bytes],
    recent_requests: int,
    history_requests: int,
    rng: random.Random | None = None,
) -> Dataset:
    """Newest ``recent_requests`` reads plus up to ``history_requests`` sampled older ones."""
    chooser = rng or random.Random()
    keys = list(segment_keys)
    names = list_segments(directory)
    failed: list[str] = []

    def note(exc: SegmentError) -> None:
        failed.append(str(exc))
        log.warning("retrain: skipping a segment that failed verification: %s", exc)

    recent_parts: list[tuple[numpy.ndarray, list[bytes]]] = []
    recent = 0
    without = 0
    read = 0
    used = 0
    for name in reversed(names):
        if recent >= recent_requests:
            break
        used += 1
        for data in read_segments(directory, keys, on_error=note, names=[name]):
            read += 1
            events, got, missing = _reads(data.events, data.keys)
            without += missing
            recent_parts.append((events, got))
            recent += len(got)
    recent_parts.reverse()
    older = names[: len(names) - used]
    history_parts: list[list[bytes]] = []
    history = 0
    if history_requests > 0 and older:
        order = list(range(len(older)))
        chooser.shuffle(order)
        chosen: list[int] = []
        for index in order:
            if history >= history_requests:
                break
            for data in read_segments(directory, keys, on_error=note, names=[older[index]]):
                read += 1
                _events, got, missing = _reads(data.events, data.keys)
                without += missing
                room = history_requests - history
                history_parts.append(got[:room])
                history += len(history_parts[-1])
                chosen.append(index)
        # Back in time order: the sample was drawn at random, the model learns in order.
        history_parts = [part for _, part in sorted(zip(chosen, history_parts), key=lambda item: item[0])]
    flat_recent = [k for _events, got in recent_parts for k in got]
    if len(flat_recent) > recent_requests:
        flat_recent = flat_recent[-recent_requests:]
    events = numpy.concatenate([e for e, _ in recent_parts]) if recent_parts else numpy.empty(0)
    if events.shape[0] > recent_requests:
        events = events[-recent_requests:]
    history_keys = [k for part in history_parts for k in part]
    return Dataset(history_keys + flat_recent, "segments", len(flat_recent), len(history_keys), without, read, len(failed), events)


def dataset_from_ring(ring: Any, recent_requests: int) -> Dataset:
    """The newest ``recent_requests`` reads still in the access-log ring."""
    got = ring.read(max(0, ring.head - ring.capacity))
    events, keys, without = _reads(got.events, got.keys)
    if len(keys) > recent_requests:
        events, keys = events[-recent_requests:], keys[-recent_requests:]
    return Dataset(keys, "ring", len(keys), 0, without, 0, 0, events)


class RetrainPipeline:
    """Runs retrains (one at a time) and keeps their metrics and status; thread-safe."""

    def __init__(
        self,
        dataset: Callable[[RetrainSettings], Dataset],
        on_event: Callable[[str, dict[str, Any]], None],
        on_done: Callable[[dict[str, Any], Dataset | None], None],
        clock: Callable[[], float] = time.monotonic,
        reads_logged: Callable[[], int] = lambda: 0,
    ) -> None:
        self._dataset = dataset
        # Reads the access log has taken so far (settle_requests counts from a drift on).
        self._reads_logged = reads_logged
        self._on_event = on_event
        self._on_done = on_done
        self._clock = clock
        self.settings = RetrainSettings()
        self.registry: ModelRegistry | None = None
        self.tenant = "default"
        self.margin = 0.0
        self.holdout = 0.2
        self.holdout_max = 10_000
        self.eval_cache_share = 0.01
        self.learn_online = True
        self._lock = threading.Lock()
        self._pending: tuple[str, dict[str, Any] | None] | None = None
        self._pending_since = 0  # reads logged when the pending request came
        self.running = False
        self.phase = "idle"
        self.last_started: float | None = None
        self.last_result: dict[str, Any] | None = None
        self.results: Counter[str] = Counter({r: 0 for r in RESULTS})
        self.duration_count = 0
        self.duration_sum = 0.0
        self.hit_ratios: dict[str, float] = {}

    def configure(self, settings: RetrainSettings, registry: ModelRegistry, tenant: str, mlops: dict[str, Any], learn_online: bool = True) -> None:
        with self._lock:
            self.learn_online = bool(learn_online)
            self.settings = settings
            self.registry = registry
            self.tenant = tenant
            self.margin = float(mlops["promote_margin"])
            self.holdout = float(mlops["holdout_share"])
            self.holdout_max = int(mlops["holdout_max_requests"])
            self.eval_cache_share = float(mlops["eval_cache_share"])

    # -- when --------------------------------------------------------------------------------
    def request(self, reason: str, drift: dict[str, Any] | None = None) -> bool:
        """Ask for a run; False when retraining is off (a pending request is replaced)."""
        with self._lock:
            if not self.settings.enabled:
                return False
            if self._pending is None or self._pending[1] is None:
                # The settling count starts at the first drift of a pending request.
                self._pending_since = self._reads_logged()
            self._pending = (reason, drift)
            return True

    def due(self) -> tuple[str, dict[str, Any] | None] | None:
        """The request to run now, if any (taken), honouring ``min_interval_seconds``."""
        with self._lock:
            s = self.settings
            if not s.enabled or self.running:
                return None
            now = self._clock()
            since = None if self.last_started is None else now - self.last_started
            if self._pending is None and s.interval_seconds > 0 and (since is None or since >= s.interval_seconds):
                self._pending = ("schedule", None)
            if self._pending is None:
                return None
            if since is not None and since < s.min_interval_seconds:
                return None
            if self._pending[1] is not None and self.settling() > 0:
                # After a drift, train on the new regime rather than the moment it began.
                self.phase = "settling"
                return None
            pending, self._pending = self._pending, None
            self.running = True
            self.last_started = now
            self.phase = "starting"
            return pending

    def settling(self) -> int:
        """Reads still to be logged before a pending drift retrain may start (0: none)."""
        if self._pending is None or self._pending[1] is None:
            return 0
        return max(0, self.settings.settle_requests - (self._reads_logged() - self._pending_since))

    # -- one run (a worker thread) -----------------------------------------------------------
    def run(self, reason: str, drift: dict[str, Any] | None = None) -> dict[str, Any]:
        """One whole run; returns its report (also kept as ``last_result``)."""
        with self._lock:
            s, registry, tenant = self.settings, self.registry, self.tenant
            self.running = True
            self.phase = "reading data"
        started = time.monotonic()
        deadline = started + s.time_budget_seconds
        self._on_event("retrain_started", {"tenant": tenant, "reason": reason, "kind": s.kind})
        report: dict[str, Any] = {"tenant": tenant, "reason": reason, "kind": s.kind}
        dataset: Dataset | None = None
        try:
            if registry is None:
                raise NoData("no model registry configured")
            dataset = self._dataset(s)
            report["data"] = dataset.public()
            if len(dataset.keys) < s.min_requests:
                raise NoData(self._no_data_reason(dataset, s))
            trained = train_and_register(
                registry,
                tenant,
                dataset.keys,
                kind=s.kind,
                holdout=self.holdout,
                holdout_max=self.holdout_max,
                margin=self.margin,
                eval_cache_share=self.eval_cache_share,
                trace_name=f"access log ({dataset.source}, {len(dataset.keys)} reads; {reason})",
                drift=drift,
                actor=ACTOR,
                deadline=deadline,
                progress=self._set_phase,
                learn_online=self.learn_online,
            )
            report.update(trained)
            if not trained["registered"]:
                report["result"] = "rejected"
            else:
                report["result"] = "promoted" if trained["alias"] == "champion" else "registered"
        except NoData as exc:
            report.update(result="no_data", error=str(exc))
        except TrainingTimeout as exc:
            report.update(result="timeout", error=f"{exc} ({s.time_budget_seconds}s)")
        except Exception as exc:
            log.exception("retrain failed")
            report.update(result="error", error=f"{exc.__class__.__name__}: {exc}")
        duration = time.monotonic() - started
        report["duration_seconds"] = round(duration, 4)
        with self._lock:
            self.results[report["result"]] += 1
            self.duration_count += 1
            self.duration_sum += duration
            for name in ("candidate_hit_ratio", "champion_hit_ratio", "baseline_hit_ratio"):
                if isinstance(report.get(name), float):
                    self.hit_ratios[name] = report[name]
            self.last_result = report
            self.running = False
            self.phase = "idle"
        level = logging.INFO if report["result"] in ("promoted", "registered", "rejected") else logging.WARNING
        log.log(level, "retrain (%s) for tenant %s: %s%s", reason, tenant, report["result"], f": {report['error']}" if "error" in report else "")
        self._on_event("retrain_finished", report)
        try:
            self._on_done(report, dataset)
        except Exception:
            log.exception("retrain: the completion handler failed")
        return report

    def _set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase

    @staticmethod
    def _no_data_reason(dataset: Dataset, s: RetrainSettings) -> str:
        if dataset.without_key and not dataset.keys:
            return (
                f"{dataset.without_key} reads were recorded without their keys: a model names the keys it "
                "prefetches, so retraining needs collectors.access_log.store_raw_keys: true"
            )
        failed = f" ({dataset.segments_failed} segments failed verification: see the log)" if dataset.segments_failed else ""
        return f"{len(dataset.keys)} reads with keys in the {dataset.source}{failed}; mlops.retrain.min_requests is {s.min_requests}"

    # -- reporting --------------------------------------------------------------------------
    def samples(self) -> list[Metric]:
        with self._lock:
            out = [sample(_SPECS["predis_mlops_retrain_total"], float(n), {"result": r}) for r, n in sorted(self.results.items())]
            if self.duration_count:
                out.append(sample(_SPECS["predis_mlops_retrain_duration_seconds"], self.duration_sum, {}, count=float(self.duration_count)))
            for name, value in sorted(self.hit_ratios.items()):
                out.append(sample(_SPECS[f"predis_mlops_{name}"], value, {}))
        return out

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enabled": self.settings.enabled,
                "kind": self.settings.kind,
                "running": self.running,
                "phase": self.phase,
                "pending": self._pending[0] if self._pending else None,
                "settling_requests": self.settling(),
                "results": dict(self.results),
                "last": self.last_result,
            }
