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
request never waits for the model or the origin. Batches queued behind each other are
joined into one step (up to ``max_batch_keys``): under load the model learns on its
batched array paths and predicts from the newest keys. The worker's share of a core is
bounded (``max_cpu_share``): after a step that took ``t`` seconds of its thread's CPU
time it rests ``t × (1 − share) / share`` (at most ``max_pause_seconds``, and never
while the queue is half full), so the request
path keeps the rest of the interpreter, and the reads that queue up meanwhile make the
next step's batch larger and cheaper per key. Optionally (``min_batch_keys``,
``max_model_seconds_per_read``) the worker also gathers: it waits, within the same bound,
for more reads before a step, a fixed number or as many as pay for the model time its
steps cost beyond a budget per read (see :meth:`Prefetcher._gather`). It backs off when
its model foresees almost none of the reads (:meth:`Prefetcher._judge`): it then gathers
by a small budget per read whatever the queue, so that a model with nothing to foresee
costs little. Model cost is counted in thread CPU time
(``inference_seconds``), not wall time, which would also count the time the worker waits
for the interpreter while the server runs. Replay uses ``sync=True``: each step runs
inline, deterministic, without rests. ``hint(keys)`` (``PREDIS.HINT``) queues keys a client says it will
read, loaded like confident candidates.

A canary (:meth:`Prefetcher.start_rollout`, driven by :mod:`agent.mlops.rollout`) adds a
challenger model: both models see every access, and each one's candidates are loaded only
for keys of its own arm (by key hash); the served reads' hits are counted per arm. When
the rollout promotes the challenger it becomes the model; when it rolls back the
challenger is dropped. ``learn_online=False`` serves a model as trained (its statistics do
not change; a full vocabulary then stops taking new keys instead of starting over).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy

from cache_core.model_host import CHALLENGER, SERVING, ModelError, ModelHostError, ModelProcess, describe, propose, restart_if_full
from cache_core.models import place_model
from cache_core.models.base import Vocabulary

log = logging.getLogger(__name__)

# What a debt's float rounding may add to the reads owed (10 us - 2 us is 8.000000000000001 us).
_ROUNDING = 1e-9
# Keys remembered for foresight at most (a bound, not a tuning knob: a step names at most
# depth x predict_last keys, and they expire after backoff_horizon_reads reads).
MAX_FORESIGHT = 1 << 16


def test_inference(model: Any, vocab: Vocabulary, depth: int) -> tuple[bool, str]:
    """Run one prediction and check that what comes back is a well-formed answer.

    Every model is tested before it serves (readiness reports the outcome).
    """
    ident = 0 if len(vocab) else -1
    try:
        cand, conf = model.predict(numpy.asarray([ident], dtype=numpy.int64), depth)
    except Exception as exc:
        return False, f"test inference raised {exc.__class__.__name__}: {exc}"
    cand, conf = numpy.asarray(cand), numpy.asarray(conf)
    if cand.shape != (1, depth) or conf.shape != (1, depth):
        return False, f"test inference returned shapes {cand.shape} and {conf.shape}, expected (1, {depth})"
    valid = cand >= 0
    if bool((cand[valid] >= vocab.capacity).any()):
        return False, "test inference named key IDs outside the vocabulary"
    scores = conf[valid]
    if scores.size and not (numpy.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()):
        return False, "test inference returned confidences outside [0, 1]"
    return True, f"model {getattr(model, 'name', '?')} loaded; a test inference returned {int(valid.sum())} candidate(s)"


@dataclass(frozen=True)
class PrefetchSettings:
    """The ``cache.prefetch`` section (defaults = the schema's, except the two bandwidth
    bounds: unbounded here, so that replay and other offline uses, which run on no real
    clock's budget, measure the model rather than a rate limit; and ``model_process``:
    code that builds a prefetcher itself runs its models in the calling process unless it
    asks for a process of their own, as the agent's configuration does by default)."""

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
    queue_max_batches: int = 16384
    max_batch_keys: int = 8192
    max_cpu_share: float = 0.2
    max_pause_seconds: float = 0.05
    min_batch_keys: int = 1
    max_model_seconds_per_read: float = 0.0
    model_cpu_floor_share: float = 0.05
    model_process: bool = False
    model_process_timeout_seconds: float = 10.0
    backoff_below_accuracy: float = 0.05
    backoff_horizon_reads: int = 64
    backoff_window_reads: int = 4096
    backoff_model_seconds_per_read: float = 1e-6
    backoff_max_pause_seconds: float = 0.5


@dataclass
class PrefetchStats:
    observed: int = 0
    steps: int = 0
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
    challenger_errors: int = 0
    coalesced_batches: int = 0
    rest_seconds: float = 0.0
    gather_seconds: float = 0.0
    model_process_restarts: int = 0
    foresight_named: int = 0
    foresight_read: int = 0
    backoffs: int = 0


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
        learn_online: bool = True,
        version: int | None = None,
        rest: Callable[[float], Any] | None = None,
        xp: Any = None,
    ) -> None:
        self.cache = cache
        self.origin = origin
        # Models learn and predict on the cache's array module (CuPy when it runs on the GPU).
        self.xp = xp if xp is not None else getattr(cache, "xp", numpy)
        self.model = place_model(model, self.xp)
        self.vocab = vocab
        self.learn_online = bool(learn_online)
        self.version = version  # the registry version serving (None: a fresh model)
        self.rollout: Any = None
        self._challenger: tuple[Any, Vocabulary, int | None] | None = None
        self.settings = settings or PrefetchSettings()
        # What the last test inference said (:func:`test_inference`; the agent runs one
        # before a model serves; replay does not, so that it measures the model untouched).
        self.test_result: tuple[bool, str] = (True, f"model {getattr(model, 'name', '?')} serving (no test inference run)")
        self.sync = sync
        self.stats = PrefetchStats()
        self.threshold = self.settings.threshold
        self._keys_bucket = _Bucket(self.settings.max_keys_per_second, clock)
        self._bytes_bucket = _Bucket(self.settings.max_bytes_per_second, clock)
        self._adapt_base = (0, 0)  # (inserted, used) at the last adaptation
        self._queue: deque[tuple[str, list[bytes], list[bool]]] = deque()
        self._wake = threading.Event()
        # Ends a rest early: set by close() and by a queue half full (a rest must not
        # cost batches that the bounded queue would drop).
        self._rouse = threading.Event()
        self._rest = rest or self._rest_until_roused
        # Ends a gather (see _gather): ``_gather_keys`` read keys queued (set by the worker
        # while it waits, 0 otherwise), a hint, a queue half full, close().
        self._gathered = threading.Event()
        self._gather_keys = 0
        # Model CPU time spent beyond max_model_seconds_per_read per read, not yet paid for
        # by the reads of later steps (see _gather).
        self._debt = 0.0
        self._charged_at = time.monotonic()
        # Read keys queued, as counters each written by one side only (no lock on the request
        # path): the producer's keys in (and dropped), the worker's keys taken. The agent has
        # one producer, the event loop; were there more, the count would only be approximate
        # (it decides when a gather ends, nothing is lost by it).
        self._keys_in = 0
        self._keys_dropped = 0
        self._keys_taken = 0
        # Hints queued and taken (a queued hint ends a gather: a client waits on it).
        self._hints_in = 0
        self._hints_taken = 0
        self.gathering = False  # the worker waits for reads to gather (see _gather)
        self._stop = False
        self._busy = False  # the worker took a batch and has not caught up since
        self._lock = threading.Lock()
        # The models' own process (see cache_core.model_host), or None: they run in the
        # worker thread. What it says of each model, and why it was given up, for status.
        self._host: ModelProcess | None = None
        self._host_error: str | None = None
        self._described: dict[str, dict[str, Any]] = {}
        self._step_remote = 0.0  # CPU seconds the last step's models took in the model process
        # Foresight (see _score_reads): each key the worker chose to prefetch, with the read
        # index after which a read of it no longer counts as foreseen (oldest first); the
        # read keys its steps have seen; this window's (reads, named, read in time); the
        # last window's accuracy; whether the worker backs off.
        self._foresight: OrderedDict[bytes, int] = OrderedDict()
        self._reads = 0
        self._window = [0, 0, 0]
        self.accuracy: float | None = None
        self.backed_off = False
        if not sync and self.settings.model_process:
            self._host = ModelProcess(
                self.xp.__name__,
                depth=self.settings.depth,
                predict_last=self.settings.predict_last,
                timeout=self.settings.model_process_timeout_seconds,
            )
        self._thread: threading.Thread | None = None
        if not sync:
            self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
            self._thread.start()

    # -- producing (request path) -------------------------------------------------
    def observe(self, keys: Sequence[bytes], hits: Sequence[bool] = ()) -> None:
        """A served read batch: the keys and, per key, whether it was a hit (may be empty)."""
        if not keys:
            return
        if self.sync:
            self._step(list(keys), list(hits))
            return
        self._enqueue("access", list(keys), list(hits))

    def hint(self, keys: Sequence[bytes]) -> int:
        """Queue keys a client expects to read; returns how many were accepted."""
        keys = list(dict.fromkeys(keys))[: self.settings.max_batch_keys]
        self.stats.hints += len(keys)
        if self.sync:
            self._load(keys)
        else:
            self._enqueue("hint", keys, [])
        return len(keys)

    def _enqueue(self, kind: str, keys: list[bytes], hits: list[bool]) -> None:
        queue, s = self._queue, self.settings
        queue.append((kind, keys, hits))
        self._keys_in += len(keys)
        if 2 * len(queue) >= s.queue_max_batches:
            # (Each set takes a lock and notifies: only when not set yet.)
            if not self._rouse.is_set():
                self._rouse.set()
            if not self._gathered.is_set():
                self._gathered.set()
        if len(queue) > s.queue_max_batches:
            try:
                gone_kind, gone, _hits = queue.popleft()
                self.stats.dropped_batches += 1
                self._keys_dropped += len(gone)
                if gone_kind == "hint":
                    self._hints_in -= 1
            except IndexError:
                pass
        if kind == "hint":
            self._hints_in += 1
            self._gathered.set()
        elif self._gather_keys and not self._gathered.is_set() and self.queued_keys() >= self._gather_keys:
            self._gathered.set()
        # The worker clears the event before it drains the queue, so a set event means this
        # batch will be seen; skipping the set (a lock and a notify) saves the request path
        # a little on every read.
        if not self._wake.is_set():
            self._wake.set()

    # -- worker ---------------------------------------------------------------------
    def _run(self) -> None:
        if self._host is not None:
            with self._lock:
                self._remote(self._load_host)
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            while self._queue and not self._stop:
                self._busy = True
                try:
                    kind, keys, hits = self._queue.popleft()
                except IndexError:
                    break
                self._keys_taken += len(keys)
                if kind == "hint":
                    self._hints_taken += 1
                if kind == "access":
                    keys, hits = self._coalesce(keys, hits)
                started = time.thread_time()
                model_seconds = self._step_remote = 0.0
                try:
                    if kind == "hint":
                        self._load(keys)
                    else:
                        model_seconds = self._step(keys, hits)
                except Exception as exc:
                    self.stats.origin_errors += 1
                    log.warning("prefetch step failed: %s: %s", exc.__class__.__name__, exc)
                rest = self.rest_after(time.thread_time() - started + self._step_remote)
                if kind == "access":
                    self._charge(model_seconds, len(keys))
                if rest > 0:
                    self.stats.rest_seconds += rest
                    self._rest(rest)
                if self._queue:
                    self._gather(self.pacing()[2] - rest)
                elif self.backed_off and self._debt > 0:
                    self._busy = False  # idle while it waits (wait_idle)
                    self._gather(self.pacing()[2] - rest)
                else:
                    # Caught up: the reads come slower than the worker steps, so what a
                    # step costs per read is no load on anyone (see _gather). A worker
                    # that backs off waits for its reads to pay all the same.
                    self._debt = 0.0
            self._busy = False

    def _coalesce(self, keys: list[bytes], hits: list[bool]) -> tuple[list[bytes], list[bool]]:
        """Join the read batches queued behind this one (up to ``max_batch_keys`` keys).

        A worker that fell behind then learns from all of them in one batched step (the
        array paths: a fraction of the per-key cost) and predicts from the newest keys,
        which is what is worth prefetching by now.
        """
        queue, limit = self._queue, self.settings.max_batch_keys
        if not queue or len(keys) >= limit or queue[0][0] != "access":
            return keys, hits
        # Extended in place (the batches are the worker's own copies): joining n batches
        # costs O(n), not the O(n^2) of concatenating one list after the other.
        keys, hits = list(keys), list(hits)
        aligned = len(hits) == len(keys)
        joined = 0
        while queue and len(keys) < limit and queue[0][0] == "access":
            try:
                _kind, more, more_hits = queue.popleft()
                self._keys_taken += len(more)
            except IndexError:
                break
            keys.extend(more)
            aligned = aligned and len(more_hits) == len(more)
            if aligned:
                hits.extend(more_hits)
            joined += 1
        self.stats.coalesced_batches += joined
        return keys, (hits if aligned else [])

    def rest_after(self, cpu_seconds: float) -> float:
        """How long the worker rests after a step that took ``cpu_seconds`` of CPU time."""
        share = self.settings.max_cpu_share
        if share >= 1 or cpu_seconds <= 0:
            return 0.0
        return min(self.settings.max_pause_seconds, cpu_seconds * (1 - share) / share)

    def pacing(self) -> tuple[float, float, float]:
        """(model CPU budget per read, floor share, longest wait) the worker gathers by:
        ``max_model_seconds_per_read``, ``model_cpu_floor_share`` and ``max_pause_seconds``;
        while it backs off (see :meth:`_judge`) ``backoff_model_seconds_per_read`` (or the
        budget, if that is lower), no floor and ``backoff_max_pause_seconds``."""
        s = self.settings
        if not self.backed_off:
            return s.max_model_seconds_per_read, s.model_cpu_floor_share, s.max_pause_seconds
        budget = s.backoff_model_seconds_per_read
        if s.max_model_seconds_per_read > 0:
            budget = min(budget, s.max_model_seconds_per_read) if budget > 0 else s.max_model_seconds_per_read
        return budget, 0.0, max(s.max_pause_seconds, s.backoff_max_pause_seconds)

    def _charge(self, model_seconds: float, reads: int) -> None:
        """Book a step's model CPU time against what it earned: the budget per read for
        each of its ``reads`` and the floor share of the time since the last step."""
        budget, floor, _pause = self.pacing()
        now = time.monotonic()
        earned = budget * reads + floor * (now - self._charged_at)
        self._charged_at = now
        if budget > 0:
            self._debt = max(0.0, self._debt + model_seconds - earned)

    def _owed(self) -> float:
        """The debt less what the floor share has earned since it was booked."""
        return max(0.0, self._debt - self.pacing()[1] * (time.monotonic() - self._charged_at))

    def gather_target(self) -> int:
        """Read keys the worker waits for before its next step (1: none): ``min_batch_keys``,
        or as many reads as it takes to pay, at the budget per read (:meth:`pacing`) each,
        for the model time the steps before spent beyond what they earned (see :meth:`_charge`)."""
        s = self.settings
        need = s.min_batch_keys
        budget = self.pacing()[0]
        owed = self._owed() if budget > 0 else 0.0
        if owed > 0:
            need = max(need, math.ceil(owed / budget - _ROUNDING))
        return max(1, min(need, s.max_batch_keys))

    def queued_keys(self) -> int:
        """Read keys waiting for the worker (hints included)."""
        return self._keys_in - self._keys_dropped - self._keys_taken

    def _gather(self, limit: float) -> None:
        """Reads queued up while the worker rested: it is being asked faster than it steps.
        Wait (at most ``limit`` seconds: the rest and this wait together stay within
        ``max_pause_seconds``) until :meth:`gather_target` reads are queued, so that the
        next step learns them as one batch, where a key costs a fraction of what it costs
        in a small one, and so that under load the model's CPU time per read stays within
        ``max_model_seconds_per_read``. The part of the wait that pays a debt also ends
        once ``model_cpu_floor_share`` of the time waited pays it (a moderate read rate
        keeps timely predictions); ``min_batch_keys`` is waited for in any case. A worker
        that finds nothing queued after its rest does not wait (and owes nothing): at a
        low read rate every read is still learned and predicted from at once. A queued
        hint, a queue half full and close() end the wait; a wait that runs out of time
        forgives what is owed (the bound on how late a prediction comes wins over the
        budget)."""
        s = self.settings
        need = self.gather_target()
        if need <= 1:
            return
        if limit <= 0:
            self._debt = 0.0
            return
        started = time.monotonic()
        deadline = started + limit
        floor = self.pacing()[1]
        paid_at = started + self._owed() / floor if floor > 0 and need > s.min_batch_keys else math.inf
        while True:
            now = time.monotonic()
            if now >= paid_at:
                need = s.min_batch_keys
            if need <= 1 or self._await_keys(need, min(deadline, paid_at) - now):
                return
            if time.monotonic() >= deadline:
                self._debt = 0.0
                return

    def _await_keys(self, need: int, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``need`` read keys queued; False when the time ran out
        first (a hint, a queue half full and close() end the wait too)."""
        self._gathered.clear()
        self._gather_keys = need
        try:
            if self._stop or self.queued_keys() >= need or 2 * len(self._queue) >= self.settings.queue_max_batches or self._hints_in > self._hints_taken:
                return True
            started = time.monotonic()
            self.gathering = True
            try:
                return self._gathered.wait(max(0.0, seconds))
            finally:
                self.gathering = False
                self.stats.gather_seconds += time.monotonic() - started
        finally:
            self._gather_keys = 0

    def _rest_until_roused(self, seconds: float) -> None:
        if 2 * len(self._queue) < self.settings.queue_max_batches:
            self._rouse.clear()
            if not self._stop:
                self._rouse.wait(seconds)

    def close(self) -> None:
        self._stop = True
        self._rouse.set()
        self._gathered.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self._host is not None:
                self._host.close()

    # -- the model process -------------------------------------------------------------
    def _load_host(self, host: ModelProcess) -> None:
        self._described[SERVING] = host.load(SERVING, self.model, self.vocab, self.learn_online)
        if self._challenger is not None:
            model, vocab, _version = self._challenger
            self._described[CHALLENGER] = host.load(CHALLENGER, model, vocab, self.learn_online)

    def _remote(self, call: Callable[[ModelProcess], Any], *, model_errors: bool = False) -> Any:
        """``call(host)`` with the model process; None when there is none, or when it failed
        twice in a row (:class:`ModelProcess` replaces a failed child once per request) or
        could not take a model: then the models run in the worker thread from here on, from
        the state the prefetcher last gave the process. With ``model_errors`` a model's own
        error (:class:`ModelError`) is raised instead, as it would be in the thread. Lock held."""
        host = self._host
        if host is None:
            return None
        try:
            return call(host)
        except ModelError as exc:
            if model_errors:
                raise
            self._give_up_host(host, exc)
        except ModelHostError as exc:
            self._give_up_host(host, exc)
        finally:
            self.stats.model_process_restarts = host.restarts
        return None

    def _give_up_host(self, host: ModelProcess, exc: Exception) -> None:
        self._host = None
        self._host_error = str(exc)
        self._described.clear()  # what the process said of its models no longer holds
        log.error("prefetch: the model process failed (%s); the models run in the prefetch worker thread from now on", exc)
        host.close()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the worker has caught up: nothing queued, no step running."""
        deadline = time.monotonic() + timeout
        while self._queue or self._busy:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    # -- canary ---------------------------------------------------------------------------
    def start_rollout(self, rollout: Any, model: Any, vocab: Vocabulary, version: int | None) -> None:
        """Let ``model`` (the challenger) decide for the keys of ``rollout``'s challenger arm."""
        place_model(model, self.xp)
        with self._lock:
            self.rollout = rollout
            self._challenger = (model, vocab, version)
            self._described.pop(CHALLENGER, None)
            info = self._remote(lambda host: host.load(CHALLENGER, model, vocab, self.learn_online))
            if info is not None:
                self._described[CHALLENGER] = info

    def swap_model(self, model: Any, vocab: Vocabulary, version: int | None, test_result: tuple[bool, str]) -> None:
        """Serve ``model`` from the next step on (it passed ``test_result``)."""
        place_model(model, self.xp)
        with self._lock:
            self.model, self.vocab, self.version = model, vocab, version
            self.test_result = test_result
            self._described.pop(SERVING, None)
            info = self._remote(lambda host: host.load(SERVING, model, vocab, self.learn_online))
            if info is not None:
                self._described[SERVING] = info

    def stop_rollout(self) -> None:
        """Drop the challenger (the champion decides for every key again)."""
        with self._lock:
            self.rollout = None
            self._challenger = None
            self._described.pop(CHALLENGER, None)
            self._remote(lambda host: host.drop(CHALLENGER))

    def _settle(self) -> None:
        """Apply a finished rollout: the promoted challenger becomes the model. Lock held."""
        rollout = self.rollout
        if rollout is None or not rollout.finished:
            return
        if rollout.state == "promoted" and self._challenger is not None:
            self.model, self.vocab, self.version = self._challenger
            self._described.pop(SERVING, None)
            promoted = self._remote(lambda host: host.promote())
            if promoted is not None:
                self.test_result, self._described[SERVING] = promoted
            else:
                self.test_result = test_inference(self.model, self.vocab, self.settings.depth)
        else:
            self._remote(lambda host: host.drop(CHALLENGER))
        self.rollout = None
        self._challenger = None
        self._described.pop(CHALLENGER, None)

    # -- one step -------------------------------------------------------------------
    def _propose(self, slot: str, keys: list[bytes]) -> list[tuple[bytes, float]]:
        """``slot``'s model (SERVING or CHALLENGER) learns ``keys`` and names its candidates
        after the last ones, in the model process or here. Lock held."""
        s = self.settings
        answer = self._remote(lambda host: host.propose(slot, keys), model_errors=True)
        if answer is not None:
            proposals, seconds, restarted, info = answer
            self._step_remote += seconds
            self._described[slot] = info
            if restarted:
                self._count_restart(slot)
            return proposals
        if slot == SERVING:
            self.model = self._restart_if_full(SERVING, self.model, self.vocab)
            return propose(self.model, self.vocab, keys, s.depth, s.predict_last)
        assert self._challenger is not None
        model, vocab, version = self._challenger
        model = self._restart_if_full(CHALLENGER, model, vocab)
        self._challenger = (model, vocab, version)
        return propose(model, vocab, keys, s.depth, s.predict_last)

    def _restart_if_full(self, slot: str, model: Any, vocab: Vocabulary) -> Any:
        model, restarted = restart_if_full(model, vocab, self.learn_online, self.xp)
        if restarted:
            self._count_restart(slot)
        return model

    def _count_restart(self, slot: str) -> None:
        self.stats.vocabulary_resets += 1
        log.info("prefetch vocabulary of the %s model full: starting over with a fresh %s model", slot, getattr(self.model, "name", "?"))

    def _chosen(self, proposals: list[tuple[bytes, float]]) -> list[bytes]:
        threshold = self.threshold
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
        with self._lock:
            rollout = self.rollout
            if rollout is not None and hits and len(hits) == len(keys):
                rollout.record_reads(keys, hits)
                self._settle()
                rollout = self.rollout
            self._step_remote = 0.0
            if not self.sync:
                self._score_reads(keys)
            started = time.thread_time()
            self.stats.observed += len(keys)
            self.stats.steps += 1
            chosen = self._chosen(self._propose(SERVING, keys))
            model_seconds = time.thread_time() - started + self._step_remote
            self.stats.inference_seconds += model_seconds
            if rollout is not None and self._challenger is not None:
                chosen = [k for k, arm in zip(chosen, rollout.arms_of(chosen)) if arm == 0]
                rollout.record_prefetches(0, len(chosen))
                started, remote = time.thread_time(), self._step_remote
                try:
                    challenged = self._chosen(self._propose(CHALLENGER, keys))
                except Exception as exc:
                    self.stats.challenger_errors += 1
                    log.warning("prefetch: the challenger model failed: %s: %s", exc.__class__.__name__, exc)
                    rollout.record_error(exc)
                    challenged = []
                challenger_seconds = time.thread_time() - started + self._step_remote - remote
                model_seconds += challenger_seconds
                rollout.record_inference(challenger_seconds, len(keys))
                mine = [k for k, arm in zip(challenged, rollout.arms_of(challenged)) if arm == 1]
                rollout.record_prefetches(1, len(mine))
                chosen += mine
                self._settle()
            candidates = list(dict.fromkeys(chosen))
        present = self.cache.contains_many(candidates) if candidates and (self.origin is not None or not self.sync) else []
        if not self.sync:
            # Foresight counts what a prefetch would load: the candidates not cached (in a
            # large batch, one read early in it may have left the cache since).
            self._name([k for k, here in zip(candidates, present) if not here])
            self._judge()
        accessed = set(keys)
        wanted = [(k, here) for k, here in zip(candidates, present) if k not in accessed]
        if wanted:
            self._load([k for k, _here in wanted], [here for _k, here in wanted])
        if s.adaptive:
            self._adapt()
        return model_seconds

    # -- foresight and backing off ------------------------------------------------
    def _score_reads(self, keys: list[bytes]) -> None:
        """Count the keys of a read batch that the worker chose to prefetch within the last
        ``backoff_horizon_reads`` reads before: foreseen, whether or not the prefetch came
        in time (so that a worker that backs off, and predicts late, still sees whether
        its model would be right). A key named at read index ``i`` counts up to read index
        ``i + horizon``, so only the batch's first ``horizon`` keys can count."""
        pending, base = self._foresight, self._reads
        read = 0
        if pending:
            for position, key in enumerate(keys[: self.settings.backoff_horizon_reads]):
                until = pending.pop(key, None)
                if until is not None and base + position < until:
                    read += 1
        self._reads = base + len(keys)
        while pending:
            key, until = next(iter(pending.items()))
            if until > self._reads:
                break
            pending.popitem(last=False)
        window = self._window
        window[0] += len(keys)
        window[2] += read
        self.stats.foresight_read += read
        if len(pending) > MAX_FORESIGHT:
            for _ in range(len(pending) - MAX_FORESIGHT):
                pending.popitem(last=False)

    def _name(self, wanted: list[bytes]) -> None:
        """Remember the keys a step chose (after the reads it learned), for :meth:`_score_reads`."""
        pending = self._foresight
        until = self._reads + self.settings.backoff_horizon_reads
        named = 0
        for key in wanted:
            if key in pending:
                pending.move_to_end(key)
            else:
                named += 1
            pending[key] = until
        self._window[1] += named
        self.stats.foresight_named += named

    def _judge(self) -> None:
        """After ``adapt_every`` named keys or ``backoff_window_reads`` reads, whichever comes
        first: the window's accuracy (foreseen ÷ named; 0 when nothing was named), and below
        ``backoff_below_accuracy`` the worker backs off: it gathers by the back-off budget
        (:meth:`pacing`), so that a model that foresees nothing costs little per read; it
        stops backing off at the first window that does better."""
        s = self.settings
        reads, named, read = self._window
        if named < s.adapt_every and reads < s.backoff_window_reads:
            return
        self._window = [0, 0, 0]
        self.accuracy = read / named if named else 0.0
        backed_off = s.backoff_below_accuracy > 0 and self.accuracy < s.backoff_below_accuracy
        if backed_off != self.backed_off:
            self.backed_off = backed_off
            if backed_off:
                self.stats.backoffs += 1
            log.info(
                "prefetch: %s foresaw %.1f %% of %d keys it named over %d reads; %s",
                getattr(self.model, "name", "?"),
                100 * self.accuracy,
                named,
                reads,
                "backing off" if backed_off else "no longer backing off",
            )

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

    @property
    def in_model_process(self) -> bool:
        """Whether the models run in the model process (not in the worker thread)."""
        return self._host is not None

    def _host_status(self) -> dict[str, Any]:
        host = self._host
        if host is None:
            state = "failed" if self._host_error is not None else "off"
            return {"state": state, "error": self._host_error, "pid": None, "restarts": self.stats.model_process_restarts}
        return {"state": "running" if host.running else "starting", "error": None, "pid": host.pid, "restarts": self.stats.model_process_restarts}

    def status(self) -> dict[str, Any]:
        st = self.stats
        cs = self.cache.stats
        rollout = self.rollout
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
            # vocabulary, model_bytes and backend (where the model's tables live: "cupy",
            # the GPU, or "numpy", the host), as the model process last said, if it has them.
            **(self._described.get(SERVING) or describe(self.model, self.vocab)),
            "model_process": self._host_status(),
            "backoff": {
                "active": self.backed_off,
                "accuracy": None if self.accuracy is None else round(self.accuracy, 4),
                "named": st.foresight_named,
                "foreseen": st.foresight_read,
                "backoffs": st.backoffs,
            },
            "inference_seconds_per_access": st.inference_seconds / st.observed if st.observed else None,
        }

