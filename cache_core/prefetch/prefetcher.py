# SPDX-License-Identifier: Apache-2.0
"""The prefetcher: the worker that learns from reads and loads what its model expects next.

:class:`Prefetcher` ties the concerns together: the request path hands it read batches
(:mod:`~cache_core.prefetch.work_queue`), its worker steps the models
(:mod:`~cache_core.prefetch.host`, a canary's through :mod:`~cache_core.prefetch.canary`),
keeps the candidates over the threshold (:mod:`~cache_core.prefetch.threshold`), loads
them within the bandwidth budget (:mod:`~cache_core.prefetch.bandwidth`), watches how
much it foresaw (:mod:`~cache_core.prefetch.foresight`) and paces itself
(:mod:`~cache_core.prefetch.pacing`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy

from cache_core.metering import ControlShare
from cache_core.model_host import CHALLENGER, SERVING, ModelProcess
from cache_core.models import place_model
from cache_core.models.base import Vocabulary
from cache_core.prefetch.bandwidth import Bucket
from cache_core.prefetch.canary import Canary, CanarySeam
from cache_core.prefetch.foresight import Foresight
from cache_core.prefetch.host import ModelHost
from cache_core.prefetch.pacing import Pacer
from cache_core.prefetch.settings import PrefetchSettings, PrefetchStats
from cache_core.prefetch.threshold import Threshold
from cache_core.prefetch.work_queue import WorkQueue

log = logging.getLogger("cache_core.prefetch")


class Prefetcher:
    """Learns from the reads of ``cache`` and loads from ``origin`` what ``model`` (over
    ``vocab``) expects next: in a worker thread, or inline with ``sync`` (replay)."""

    def __init__(
        self,
        cache: Any,
        origin: Any,
        model: Any,
        vocab: Vocabulary,
        settings: PrefetchSettings | None = None,
        *,
        sync: bool = False,
        clock: Callable[[], float] = time.monotonic,
        learn_online: bool = True,
        version: int | None = None,
        rest: Callable[[float], Any] | None = None,
        xp: Any = None,
        counters_from: PrefetchStats | None = None,
    ) -> None:
        self.cache = cache
        self.origin = origin
        self.settings = settings or PrefetchSettings()
        self.sync = sync
        # A prefetcher that replaces another goes on from its counters (they are exported
        # as monotonic ``_total`` series).
        self.stats = PrefetchStats()
        if counters_from is not None:
            self.stats.carry(counters_from)
        s = self.settings
        # Models learn and predict on the cache's array module (CuPy when it runs on the GPU).
        xp = xp if xp is not None else getattr(cache, "xp", numpy)
        # The models' own process (see cache_core.model_host), or None: they run in the
        # worker thread.
        process = None
        if not sync and s.model_process:
            process = ModelProcess(xp.__name__, depth=s.depth, predict_last=s.predict_last, timeout=s.model_process_timeout_seconds)
        # The serving model (its last test inference: the agent runs one before a model
        # serves; replay does not, so that it measures the model untouched).
        self.host = ModelHost(place_model(model, xp), vocab, version, xp=xp, learn_online=bool(learn_online), process=process, stats=self.stats)
        self.canary = CanarySeam(self.host, self.stats)
        self._threshold = Threshold(s, base=(cache.stats.prefetch_inserted, cache.stats.prefetch_used))
        self._clock = clock
        self._keys_bucket = Bucket(s.max_keys_per_second, clock)
        self._bytes_bucket = Bucket(s.max_bytes_per_second, clock)
        self.control = ControlShare(s.control_share)
        self.queue = WorkQueue(s, self.stats)
        self.foresight = Foresight(s, self.stats)
        self.pacer = Pacer(s, self.foresight)
        self._rest = rest or self.queue.rest
        self._busy = False  # the worker took a batch and has not caught up since
        # Held by a worker step and by whatever changes the models or settings.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if not sync:
            self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
            self._thread.start()

    # -- what the agent and the canary read and set ---------------------------------------
    @property
    def xp(self) -> Any:
        return self.host.xp

    @property
    def model(self) -> Any:
        return self.host.model

    @property
    def vocab(self) -> Vocabulary:
        return self.host.vocab

    @property
    def version(self) -> int | None:
        """The registry version serving (None: a fresh model)."""
        return self.host.version

    @property
    def learn_online(self) -> bool:
        return self.host.learn_online

    @property
    def test_result(self) -> tuple[bool, str]:
        """What the last test inference said (:func:`~cache_core.models.steps.test_inference`)."""
        return self.host.test_result

    @test_result.setter
    def test_result(self, result: tuple[bool, str]) -> None:
        self.host.test_result = result

    @property
    def rollout(self) -> Canary | None:
        return self.canary.rollout

    @property
    def threshold(self) -> float:
        """The confidence threshold in force (adapted when ``adaptive``)."""
        return self._threshold.value

    @property
    def backed_off(self) -> bool:
        """Whether the worker backs off (see :mod:`cache_core.prefetch.foresight`)."""
        return self.foresight.backed_off

    @property
    def accuracy(self) -> float | None:
        """The last foresight window's accuracy (None before the first window)."""
        return self.foresight.accuracy

    @property
    def gathering(self) -> bool:
        """Whether the worker waits for reads to gather (see :meth:`Pacer.gather`)."""
        return self.queue.gathering

    @property
    def in_model_process(self) -> bool:
        """Whether the models run in the model process (not in the worker thread)."""
        return self.host.in_process

    # -- producing (request path) -------------------------------------------------
    def observe(self, keys: Sequence[bytes], hits: Sequence[bool] = ()) -> None:
        """A served read batch: the keys and, per key, whether it was a hit (may be empty)."""
        if not keys:
            return
        if self.sync:
            self._step(list(keys), list(hits))
            return
        self.queue.put("access", list(keys), list(hits))

    def hint(self, keys: Sequence[bytes]) -> int:
        """Queue keys a client expects to read; returns how many were accepted."""
        keys = list(dict.fromkeys(keys))[: self.settings.max_batch_keys]
        self.stats.hints += len(keys)
        keys = self._without_control(keys)
        if self.sync:
            self._load(keys)
        else:
            self.queue.put("hint", keys, [])
        return len(keys)

    # -- worker ---------------------------------------------------------------------
    def _run(self) -> None:
        queue, host, pacer = self.queue, self.host, self.pacer
        if host.in_process:
            with self._lock:
                host.load_process()
        while not queue.stopped:
            queue.wake.wait()
            queue.wake.clear()
            while queue.batches and not queue.stopped:
                self._busy = True
                batch = queue.take()
                if batch is None:
                    break
                kind, keys, hits = batch
                if kind == "access":
                    keys, hits = queue.coalesce(keys, hits)
                started = time.thread_time()
                model_seconds = host.remote_seconds = 0.0
                try:
                    if kind == "hint":
                        self._load(keys)
                    else:
                        model_seconds = self._step(keys, hits)
                except Exception as exc:
                    self.stats.origin_errors += 1
                    log.warning("prefetch step failed: %s: %s", exc.__class__.__name__, exc)
                rest = self.rest_after(time.thread_time() - started + host.remote_seconds)
                if kind == "access":
                    pacer.charge(model_seconds, len(keys))
                if rest > 0:
                    self.stats.rest_seconds += rest
                    self._rest(rest)
                if queue.batches:
                    pacer.gather(pacer.pacing()[2] - rest, queue)
                elif self.foresight.backed_off and pacer.debt > 0:
                    self._busy = False  # idle while it waits (wait_idle)
                    pacer.gather(pacer.pacing()[2] - rest, queue)
                else:
                    # Caught up: the reads come slower than the worker steps, so what a
                    # step costs per read is no load on anyone (see Pacer.gather). A worker
                    # that backs off waits for its reads to pay all the same.
                    pacer.debt = 0.0
            self._busy = False

    def rest_after(self, cpu_seconds: float) -> float:
        """How long the worker rests after a step that took ``cpu_seconds`` of CPU time."""
        return self.pacer.rest_after(cpu_seconds)

    def pacing(self) -> tuple[float, float, float]:
        """(model CPU budget per read, floor share, longest wait): see :meth:`Pacer.pacing`."""
        return self.pacer.pacing()

    def gather_target(self) -> int:
        """Read keys the worker waits for before its next step: see :meth:`Pacer.gather_target`."""
        return self.pacer.gather_target()

    def queued_keys(self) -> int:
        """Read keys waiting for the worker (hints included)."""
        return self.queue.queued_keys()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the worker has caught up: nothing queued, no step running."""
        deadline = time.monotonic() + timeout
        while self.queue.batches or self._busy:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def close(self) -> None:
        self.queue.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self.host.close()

    # -- changing settings and models ----------------------------------------------------
    def retune(
        self,
        settings: PrefetchSettings,
        *,
        model: str | None = None,
        vocabulary_size: int | None = None,
        learn_online: bool | None = None,
    ) -> bool:
        """Go on under ``settings`` without losing what the models learned; False (and
        nothing changed) when they need a new prefetcher instead.

        A new prefetcher is needed when ``model_process`` changes in a prefetcher that
        runs a worker (the models run in the process or in the worker thread from the
        start), and when the model kind ``model``, the ``vocabulary_size`` or
        ``learn_online`` are given and differ from what serves. Everything else applies
        from the worker's next step: pacing, gathering and back-off, the threshold (a new
        ``threshold`` or a change of ``adaptive`` starts over from the configured one;
        otherwise the adapted one is kept within the new bounds), ``depth`` and
        ``predict_last``, the bandwidth budget (a changed rate starts a full bucket), the
        queue bound (batches beyond a lower one are dropped and counted), the batch and
        hint limit and the model process's timeout. A step in progress ends under the
        settings it began with. Safe against the worker thread (it takes the lock a step
        holds); call it from the thread that observes (the agent's event loop), which
        counts the batches queued and dropped.
        """
        with self._lock:
            host = self.host
            if not self.sync and settings.model_process != self.settings.model_process:
                return False
            if model is not None and model != getattr(host.model, "name", None):
                return False
            if vocabulary_size is not None and vocabulary_size != host.vocab.capacity:
                return False
            if learn_online is not None and bool(learn_online) != host.learn_online:
                return False
            old, self.settings = self.settings, settings
            self._threshold.retune(settings)
            self.queue.settings = self.foresight.settings = self.pacer.settings = settings
            if settings.max_keys_per_second != old.max_keys_per_second:
                self._keys_bucket = Bucket(settings.max_keys_per_second, self._clock)
            if settings.max_bytes_per_second != old.max_bytes_per_second:
                self._bytes_bucket = Bucket(settings.max_bytes_per_second, self._clock)
            if settings.control_share != old.control_share:
                self.control = ControlShare(settings.control_share)
            host.retune(settings)
            self.queue.trim()
        return True

    def start_rollout(self, rollout: Canary, model: Any, vocab: Vocabulary, version: int | None) -> None:
        """Let ``model`` (the challenger) decide for the keys of ``rollout``'s challenger arm."""
        place_model(model, self.xp)
        with self._lock:
            self.canary.start(rollout, model, vocab, version)

    def swap_model(self, model: Any, vocab: Vocabulary, version: int | None, test_result: tuple[bool, str]) -> None:
        """Serve ``model`` from the next step on (it passed ``test_result``)."""
        place_model(model, self.xp)
        with self._lock:
            self.host.serve(model, vocab, version, test_result)

    def stop_rollout(self) -> None:
        """Drop the challenger (the champion decides for every key again)."""
        with self._lock:
            self.canary.stop()

    # -- one step -------------------------------------------------------------------
    def _without_control(self, keys: list[bytes]) -> list[bytes]:
        """``keys`` less those of the control share (never prefetched; counted)."""
        if not keys or self.control.limit == 0:
            return keys
        kept = [k for k, control in zip(keys, self.control.mask(keys)) if not control]
        self.stats.skipped_control += len(keys) - len(kept)
        return kept

    def _count_reads(self, keys: list[bytes], hits: list[bool]) -> tuple[list[bytes], list[bool]]:
        """Count a served read batch's hits in the control share and in the rest (the
        treated reads); returns the treated keys and hits (the canary's arms split those).
        A batch without its hits counts nowhere."""
        if len(hits) != len(keys) or not keys:
            return keys, hits
        st = self.stats
        if self.control.limit == 0:
            st.treated_reads += len(keys)
            st.treated_hits += sum(hits)
            return keys, hits
        treated_keys: list[bytes] = []
        treated_hits: list[bool] = []
        control_reads = control_hits = 0
        for key, hit, control in zip(keys, hits, self.control.mask(keys)):
            if control:
                control_reads += 1
                control_hits += hit
            else:
                treated_keys.append(key)
                treated_hits.append(hit)
        st.control_reads += control_reads
        st.control_hits += control_hits
        st.treated_reads += len(treated_keys)
        st.treated_hits += sum(treated_hits)
        return treated_keys, treated_hits

    def _chosen(self, proposals: list[tuple[bytes, float]]) -> list[bytes]:
        threshold = self._threshold.value
        chosen = [k for k, score in proposals if score >= threshold]
        self.stats.candidates += len(proposals)
        self.stats.skipped_threshold += len(proposals) - len(chosen)
        return chosen

    def _step(self, keys: list[bytes], hits: list[bool] | None = None) -> float:
        """Learn from and predict after a read batch, load what is chosen; returns the model
        CPU time it took (the serving model's and a challenger's)."""
        s = self.settings
        keys = keys[-s.max_batch_keys :]
        hits = (hits or [])[-s.max_batch_keys :]
        host, canary = self.host, self.canary
        with self._lock:
            treated_keys, treated_hits = self._count_reads(keys, hits)
            canary.record_reads(treated_keys, treated_hits, s.depth)
            rollout = canary.rollout
            host.remote_seconds = 0.0
            if not self.sync:
                self.foresight.score_reads(keys)
            started = time.thread_time()
            self.stats.observed += len(keys)
            self.stats.steps += 1
            chosen = self._chosen(host.propose(SERVING, keys, s))
            model_seconds = time.thread_time() - started + host.remote_seconds
            self.stats.inference_seconds += model_seconds
            if rollout is not None and host.challenger is not None:
                chosen, challenger_seconds = canary.contest(rollout, chosen, keys, lambda: self._chosen(host.propose(CHALLENGER, keys, s)))
                model_seconds += challenger_seconds
                canary.settle(s.depth)
            candidates = self._without_control(list(dict.fromkeys(chosen)))
        present = self.cache.contains_many(candidates) if candidates and (self.origin is not None or not self.sync) else []
        if not self.sync:
            # Foresight counts what a prefetch would load: the candidates not cached (in a
            # large batch, one read early in it may have left the cache since).
            self.foresight.name([k for k, here in zip(candidates, present) if not here])
            self.foresight.judge(getattr(host.model, "name", "?"))
        accessed = set(keys)
        wanted = [(k, here) for k, here in zip(candidates, present) if k not in accessed]
        if wanted:
            self._load([k for k, _here in wanted], [here for _k, here in wanted])
        if s.adaptive:
            self._threshold.adapt(self.cache.stats.prefetch_inserted, self.cache.stats.prefetch_used)
        return model_seconds

    def _load(self, keys: list[bytes], present: list[bool] | None = None) -> None:
        """Load ``keys`` not cached (``present``: whether each is, if the caller probed)."""
        if not keys or self.origin is None:
            return
        if present is None:
            present = self.cache.contains_many(keys)
        fresh = [k for k, here in zip(keys, present) if not here]
        self.stats.skipped_cached += len(keys) - len(fresh)
        room = self._keys_bucket.room()
        if len(fresh) > room:
            self.stats.skipped_bandwidth += len(fresh) - room
            fresh = fresh[:room]
        if not fresh:
            return
        self._keys_bucket.take(len(fresh))
        meter = self.cache.origin_meters["prefetch"]
        started = time.perf_counter()
        try:
            values = self.origin.load_many(fresh)
        except Exception as exc:
            meter.failed(len(fresh), time.perf_counter() - started)
            self.stats.origin_errors += 1
            log.warning("prefetch: origin load failed: %s: %s", exc.__class__.__name__, exc)
            return
        meter.observe(len(fresh), values, time.perf_counter() - started)
        items = []
        for key, value in zip(fresh, values):
            if value is None or len(value) > self.cache.max_value_bytes:
                self.stats.origin_misses += 1
                continue
            if not self._bytes_bucket.take(len(value)):
                self.stats.skipped_bandwidth += 1
                continue
            items.append((key, value))
        self.stats.issued += len(fresh)
        if items:
            try:
                self.cache.mset(items, prefetched=True)
            except Exception as exc:  # out of memory: a prefetch never evicts by force
                self.stats.origin_errors += 1
                log.warning("prefetch: insert failed: %s", exc)
                return
            self.stats.loaded += len(items)

    def status(self) -> dict[str, Any]:
        st = self.stats
        cs = self.cache.stats
        rollout = self.rollout
        foresight = self.foresight
        return {
            "model": getattr(self.model, "name", "?"),
            "version": self.version,
            "learn_online": self.learn_online,
            "rollout": rollout.status() if rollout is not None else None,
            "challenger_errors": st.challenger_errors,
            "threshold": round(self.threshold, 4),
            "observed": st.observed,
            "steps": st.steps,
            "candidates": st.candidates,
            "issued": st.issued,
            "loaded": st.loaded,
            "used": cs.prefetch_used,
            "wasted": cs.prefetch_wasted,
            "precision": round(cs.prefetch_used / cs.prefetch_inserted, 4) if cs.prefetch_inserted else None,
            "skipped": {"threshold": st.skipped_threshold, "cached": st.skipped_cached, "bandwidth": st.skipped_bandwidth},
            "origin_misses": st.origin_misses,
            "origin_errors": st.origin_errors,
            "dropped_batches": st.dropped_batches,
            "coalesced_batches": st.coalesced_batches,
            "rest_seconds": round(st.rest_seconds, 6),
            "gather_seconds": round(st.gather_seconds, 6),
            "queued_keys": self.queued_keys(),
            "hints": st.hints,
            "vocabulary_resets": st.vocabulary_resets,
            **self.host.description(),
            "model_process": self.host.process_status(),
            "backoff": {
                "active": foresight.backed_off,
                "accuracy": None if foresight.accuracy is None else round(foresight.accuracy, 4),
                "named": st.foresight_named,
                "foreseen": st.foresight_read,
                "backoffs": st.backoffs,
            },
            "inference_seconds_per_access": st.inference_seconds / st.observed if st.observed else None,
        }
