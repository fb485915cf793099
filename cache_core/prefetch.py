# SPDX-License-Identifier: Apache-2.0
"""The prefetcher: after accesses, load what the model expects next, off the request path.

Flow per observed batch of accessed keys:

1. the keys get vocabulary IDs and the model learns from them (online, in order);
2. the model predicts up to ``depth`` candidates (with confidences) after each of the
   batch's last ``predict_last`` keys;
3. candidates below the threshold, already cached, or over the bandwidth budget are
   skipped (each counted);
4. the rest are loaded from the origin in one ``load_many`` and inserted marked as
   prefetched (``Cache.mset(prefetched=True)``: never over an existing value).

The cache counts what became of prefetched entries: ``prefetch_used`` (a demand read hit
it first) and ``prefetch_wasted`` (removed or overwritten unread). With ``adaptive`` on,
the threshold follows the measured precision (used / inserted over the last
``adapt_every`` prefetches): below ``target_precision`` it rises, above it falls, within
``[min_threshold, max_threshold]`` — on a workload with nothing to predict the prefetcher
backs off instead of polluting the cache.

In the agent (``sync=False``) ``observe`` only appends to a bounded queue (oldest batches
dropped and counted when the worker falls behind) and a worker thread does the rest, so a
request never waits for the model or the origin. Replay uses ``sync=True``: each step runs
inline, deterministic. ``hint(keys)`` (``PREDIS.HINT``) queues keys a client says it will
read, loaded like confident candidates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cache_core.models.base import Vocabulary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefetchSettings:
    """The ``cache.prefetch`` section (defaults = the schema's)."""

    depth: int = 2
    predict_last: int = 4
    threshold: float = 0.2
    adaptive: bool = True
    min_threshold: float = 0.05
    max_threshold: float = 0.95
    target_precision: float = 0.3
    adapt_every: int = 256
    threshold_step: float = 1.25
    max_keys_per_second: float = 0.0  # 0: unbounded
    max_bytes_per_second: float = 0.0
    queue_max_batches: int = 1024
    max_batch_keys: int = 1024


@dataclass
class PrefetchStats:
    observed: int = 0
    candidates: int = 0
    issued: int = 0
    loaded: int = 0
    skipped_threshold: int = 0
    skipped_cached: int = 0
    skipped_bandwidth: int = 0
    origin_misses: int = 0
    origin_errors: int = 0
    dropped_batches: int = 0
    hints: int = 0
    vocabulary_resets: int = 0
    inference_seconds: float = 0.0


class _Bucket:
    """Token bucket; rate 0 means unbounded."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = float(rate)
        self.clock = clock
        self.tokens = self.rate
        self.stamp = clock()

    def take(self, n: float) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def room(self) -> int:
        if self.rate <= 0:
            return 1 << 62
        self.take(0)
        return int(self.tokens)


class Prefetcher:
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
    ) -> None:
        self.cache = cache
        self.origin = origin
        self.model = model
        self.vocab = vocab
        self.settings = settings or PrefetchSettings()
        self.sync = sync
        self.stats = PrefetchStats()
        self.threshold = self.settings.threshold
        self._keys_bucket = _Bucket(self.settings.max_keys_per_second, clock)
        self._bytes_bucket = _Bucket(self.settings.max_bytes_per_second, clock)
        self._adapt_base = (0, 0)  # (inserted, used) at the last adaptation
        self._queue: deque[tuple[str, list[bytes]]] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if not sync:
            self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
            self._thread.start()

    # -- producing (request path) -------------------------------------------------
    def observe(self, keys: Sequence[bytes]) -> None:
        if not keys:
            return
        if self.sync:
            self._step(list(keys))
            return
        self._enqueue("access", list(keys[-self.settings.max_batch_keys :]))

    def hint(self, keys: Sequence[bytes]) -> int:
        """Queue keys a client expects to read; returns how many were accepted."""
        keys = list(dict.fromkeys(keys))[: self.settings.max_batch_keys]
        self.stats.hints += len(keys)
        if self.sync:
            self._load(keys)
        else:
            self._enqueue("hint", keys)
        return len(keys)

    def _enqueue(self, kind: str, keys: list[bytes]) -> None:
        queue = self._queue
        queue.append((kind, keys))
        if len(queue) > self.settings.queue_max_batches:
            try:
                queue.popleft()
                self.stats.dropped_batches += 1
            except IndexError:
                pass
        self._wake.set()

    # -- worker ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            while self._queue and not self._stop:
                try:
                    kind, keys = self._queue.popleft()
                except IndexError:
                    break
                try:
                    if kind == "hint":
                        self._load(keys)
                    else:
                        self._step(keys)
                except Exception as exc:
                    self.stats.origin_errors += 1
                    log.warning("prefetch step failed: %s: %s", exc.__class__.__name__, exc)

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._queue:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    # -- one step -------------------------------------------------------------------
    def _step(self, keys: list[bytes]) -> None:
        s = self.settings
        started = time.perf_counter()
        with self._lock:
            if len(self.vocab) >= self.vocab.capacity:
                self.vocab.clear()
                self.stats.vocabulary_resets += 1
                log.info("prefetch vocabulary full (%d keys): starting over", self.vocab.capacity)
            ids = self.vocab.encode_many(keys)
            self.stats.observed += len(keys)
            self.model.observe(ids)
            tail = ids[-s.predict_last :]
            one = getattr(self.model, "predict_one", None)
            if tail.shape[0] == 1 and callable(one):
                proposals = one(int(tail[0]), s.depth)
            else:
                cand, conf = self.model.predict(tail, s.depth)
                ok = cand >= 0
                proposals = list(zip(cand[ok].tolist(), conf[ok].tolist()))
            self.stats.inference_seconds += time.perf_counter() - started
            self.stats.candidates += len(proposals)
            threshold = self.threshold
            chosen = [c for c, score in proposals if score >= threshold]
            self.stats.skipped_threshold += len(proposals) - len(chosen)
            accessed = set(keys)
            decode = self.vocab.decode
            wanted = [k for k in dict.fromkeys(decode(c) for c in chosen) if k not in accessed]
        if wanted:
            self._load(wanted)
        if s.adaptive:
            self._adapt()

    def _load(self, keys: list[bytes]) -> None:
        if not keys or self.origin is None:
            return
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
        try:
            values = self.origin.load_many(fresh)
        except Exception as exc:
            self.stats.origin_errors += 1
            log.warning("prefetch: origin load failed: %s: %s", exc.__class__.__name__, exc)
            return
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

    def _adapt(self) -> None:
        s = self.settings
        inserted, used = self.cache.stats.prefetch_inserted, self.cache.stats.prefetch_used
        base_inserted, base_used = self._adapt_base
        if inserted - base_inserted < s.adapt_every:
            return
        precision = (used - base_used) / max(1, inserted - base_inserted)
        if precision < s.target_precision:
            self.threshold = min(s.max_threshold, self.threshold * s.threshold_step)
        else:
            self.threshold = max(s.min_threshold, self.threshold / s.threshold_step)
        self._adapt_base = (inserted, used)

    def status(self) -> dict[str, Any]:
        st = self.stats
        cs = self.cache.stats
        return {
            "model": getattr(self.model, "name", "?"),
            "threshold": round(self.threshold, 4),
            "observed": st.observed,
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
            "hints": st.hints,
            "vocabulary": len(self.vocab),
            "vocabulary_resets": st.vocabulary_resets,
            "model_bytes": int(getattr(self.model, "nbytes", 0)),
            "inference_seconds_per_access": st.inference_seconds / st.observed if st.observed else None,
        }

