# SPDX-License-Identifier: Apache-2.0
"""The canary seam: a rollout (driven by :mod:`agent.mlops.rollout`) adds a challenger model.

Both models see every access, and each one's candidates are loaded only for keys of its
own arm (by key hash); the served reads' hits are counted per arm. When the rollout
promotes the challenger it becomes the model; when it rolls back the challenger is
dropped. The prefetcher needs of a rollout only what :class:`Canary` names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from cache_core.prefetch.host import ModelHost
from cache_core.prefetch.settings import PrefetchStats

log = logging.getLogger("cache_core.prefetch")


@runtime_checkable
class Canary(Protocol):
    """What the prefetcher asks of a rollout (:class:`agent.mlops.rollout.Rollout` is one).

    Arm 0 is the serving model's, arm 1 the challenger's. The ``record_*`` calls come from
    the prefetch worker; a rollout decides by them and says so in ``finished`` and
    ``state`` (``"promoted"``: the challenger serves from now on; any other finished state
    drops it).
    """

    state: str

    @property
    def finished(self) -> bool: ...

    def arms_of(self, keys: Sequence[bytes]) -> list[int]: ...

    def record_reads(self, keys: Sequence[bytes], hits: Sequence[bool]) -> object: ...

    def record_prefetches(self, arm: int, count: int) -> None: ...

    def record_inference(self, seconds: float, accesses: int) -> None: ...

    def record_error(self, exc: BaseException) -> object: ...

    def status(self) -> dict[str, Any]: ...


class CanarySeam:
    """The rollout in progress, if any, over ``host``'s serving model and challenger.
    Not thread-safe: the prefetcher calls it under its lock."""

    def __init__(self, host: ModelHost, stats: PrefetchStats) -> None:
        self.host = host
        self.stats = stats
        self.rollout: Canary | None = None

    def start(self, rollout: Canary, model: Any, vocab: Any, version: int | None) -> None:
        """Let ``model`` (the challenger) decide for the keys of ``rollout``'s challenger arm."""
        self.rollout = rollout
        self.host.challenge(model, vocab, version)

    def stop(self) -> None:
        """Drop the challenger (the champion decides for every key again)."""
        self.rollout = None
        self.host.drop_challenger()

    def record_reads(self, keys: list[bytes], hits: list[bool], depth: int) -> None:
        """Count a served read batch (hits known for each key) per arm, and apply what the
        rollout decided by it."""
        rollout = self.rollout
        if rollout is not None and hits and len(hits) == len(keys):
            rollout.record_reads(keys, hits)
            self.settle(depth)

    def settle(self, depth: int) -> None:
        """Apply a finished rollout: the promoted challenger becomes the model (its test
        inference run with ``depth``), or it is dropped."""
        rollout = self.rollout
        if rollout is None or not rollout.finished:
            return
        if rollout.state == "promoted" and self.host.challenger is not None:
            self.host.promote_challenger(depth)
        else:
            self.host.drop_challenger()
        self.rollout = None

    def contest(self, rollout: Canary, chosen: list[bytes], keys: list[bytes], challenge: Callable[[], list[bytes]]) -> tuple[list[bytes], float]:
        """Split a step's prefetches between the arms: the serving model's ``chosen`` for
        the keys of arm 0, and what ``challenge()`` chooses (the challenger's step on
        ``keys``) for those of arm 1. Returns them and the challenger's model CPU time."""
        host = self.host
        chosen = [k for k, arm in zip(chosen, rollout.arms_of(chosen)) if arm == 0]
        rollout.record_prefetches(0, len(chosen))
        started, remote = time.thread_time(), host.remote_seconds
        try:
            challenged = challenge()
        except Exception as exc:
            self.stats.challenger_errors += 1
            log.warning("prefetch: the challenger model failed: %s: %s", exc.__class__.__name__, exc)
            rollout.record_error(exc)
            challenged = []
        seconds = time.thread_time() - started + host.remote_seconds - remote
        rollout.record_inference(seconds, len(keys))
        mine = [k for k, arm in zip(challenged, rollout.arms_of(challenged)) if arm == 1]
        rollout.record_prefetches(1, len(mine))
        return chosen + mine, seconds
