# SPDX-License-Identifier: Apache-2.0
"""Canary rollout of a challenger prefetch model: stepped share, tested arms, automatic rollback.

Why it looks like this: a challenger that won an offline replay can still lose in
production (the workload moved on, the held-out slice was unlucky), and a prefetch model
that loses costs hit ratio silently. So the challenger first serves a small share of
prefetch decisions, and the share grows only while the measurements say it is better:

* **Arms by key hash.** A key belongs to the challenger arm when
  ``crc32(key) mod 10000 < share × 10000``; the champion's candidates are loaded only for
  keys of the champion arm and the challenger's only for keys of its own arm. A key never
  changes arm within a step, and the challenger's keys at 10 % stay its keys at 50 %, so a
  key's reads measure exactly one model's prefetching. Both models keep seeing every
  access (their context and, with ``learn_online``, their statistics).
* **Per-block means.** Demand reads of each arm are cut into blocks of
  ``block_requests``; a block's hit ratio is one observation. Reads next to each other are
  not independent (one hot key, one scan), blocks nearly are, so the test is on block
  means: difference ``d`` of the arms' means and its standard error ``se`` from the block
  variances (Welch). After ``min_blocks`` blocks per arm, every new block is a look:

  - ``d − z·se > 0`` (the challenger is better): **advance** to the next share; past the
    last share below 1 it is **promoted** (it then serves every decision);
  - ``d < −margin`` and ``d + z·se < 0`` (worse by more than the margin): **roll back**;
  - ``max_blocks`` per arm without either: **roll back** (no evidence of improvement
    within the budget: the champion stays).

  ``z`` is strict (default 3) because the test is repeated at every block.
* **Guardrails**, checked at every look, roll back at once: the challenger raised an
  error more than ``max_errors`` times, its inference costs more than
  ``max_inference_seconds_per_access``, or its arm loads more than
  ``max_prefetches_per_request`` prefetches per demand read.

Every decision goes to ``on_decision`` (the agent makes it an event, a metric and a line in
the registry's audit log). The arms split keys, not traffic: on a workload dominated by a
handful of keys the two arms differ in their own right, which the margin has to cover.
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError

BUCKETS = 10_000
# A standard error below this is treated as this (identical blocks still need evidence).
MIN_STANDARD_ERROR = 1e-6

ADVANCE = "advance"
PROMOTE = "promote"
ROLLBACK = "rollback"
DECISIONS = (ADVANCE, PROMOTE, ROLLBACK)
ARMS = ("champion", "challenger")


class RolloutError(AgentError, ValueError):
    """Rollout settings that cannot work (checked before a rollout starts)."""


@dataclass(frozen=True)
class RolloutSettings:
    """The ``mlops.rollout`` section (defaults = the schema's)."""

    steps: tuple[float, ...] = (0.1, 0.5, 1.0)
    block_requests: int = 500
    min_blocks: int = 5
    max_blocks: int = 60
    margin: float = 0.01
    z: float = 3.0
    max_errors: int = 0
    max_inference_seconds_per_access: float = 0.001
    max_prefetches_per_request: float = 4.0

    def __post_init__(self) -> None:
        # The config gives a list; the settings are hashable and compare as given.
        object.__setattr__(self, "steps", tuple(float(s) for s in self.steps))

    def check(self) -> None:
        steps = self.steps
        if not steps or steps[-1] != 1.0:
            raise RolloutError(f"mlops.rollout.steps {list(steps)} must end at 1.0 (the challenger serving everything)")
        if len(steps) < 2:
            raise RolloutError("mlops.rollout.steps needs at least one share below 1.0 to compare the arms at")
        if any(not 0 < s for s in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
            raise RolloutError(f"mlops.rollout.steps {list(steps)} must be increasing shares above 0")
        if self.min_blocks < 2 or self.max_blocks < self.min_blocks:
            raise RolloutError("mlops.rollout needs min_blocks >= 2 and max_blocks >= min_blocks")


def bucket_of(key: bytes) -> int:
    """The key's stable bucket in ``[0, BUCKETS)``."""
    return zlib.crc32(key) % BUCKETS


@dataclass
class Decision:
    """One rollout decision, as reported to the agent."""

    action: str
    reason: str
    from_share: float
    to_share: float
    champion_hit_ratio: float | None
    challenger_hit_ratio: float | None
    blocks: tuple[int, int]
    step: int
    at: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "from_share": self.from_share,
            "to_share": self.to_share,
            "champion_hit_ratio": self.champion_hit_ratio,
            "challenger_hit_ratio": self.challenger_hit_ratio,
            "blocks": list(self.blocks),
            "step": self.step,
            "at": self.at,
        }


class _Arm:
    """Reads of one arm within the current step, cut into blocks."""

    def __init__(self) -> None:
        self.block_reads = 0
        self.block_hits = 0
        self.means: list[float] = []
        self.reads = 0
        self.hits = 0
        self.prefetches = 0

    def add(self, reads: int, hits: int, block: int) -> bool:
        """Count reads; True when this closed a block."""
        self.reads += reads
        self.hits += hits
        self.block_reads += reads
        self.block_hits += hits
        if self.block_reads < block:
            return False
        # A block closes at the batch that fills it (it may hold a few reads more).
        self.means.append(self.block_hits / self.block_reads)
        self.block_reads = 0
        self.block_hits = 0
        return True

    @property
    def mean(self) -> float | None:
        return sum(self.means) / len(self.means) if self.means else None

    def variance(self) -> float:
        n = len(self.means)
        if n < 2:
            return 0.0
        m = sum(self.means) / n
        return sum((x - m) ** 2 for x in self.means) / (n - 1)


class Rollout:
    """The canary of one challenger against the serving champion (thread-safe)."""

    def __init__(
        self,
        tenant: str,
        champion_version: int | None,
        challenger_version: int,
        settings: RolloutSettings,
        on_decision: Callable[[Rollout, Decision], None] | None = None,
    ) -> None:
        settings.check()
        self.tenant = tenant
        self.champion_version = champion_version
        self.challenger_version = challenger_version
        self.settings = settings
        self.on_decision = on_decision
        self.step = 0
        self.state = "running"
        self.started_at = time.time()
        self.decisions: list[Decision] = []
        self.errors = 0
        self.inference_seconds = 0.0
        self.inference_accesses = 0
        self._lock = threading.Lock()
        self._arms = (_Arm(), _Arm())
        self._cut = int(round(self.share * BUCKETS))

    # -- routing -----------------------------------------------------------------------
    @property
    def share(self) -> float:
        return self.settings.steps[min(self.step, len(self.settings.steps) - 1)]

    @property
    def finished(self) -> bool:
        return self.state != "running"

    def arm_of(self, key: bytes) -> int:
        """1 when the challenger decides for ``key``, 0 for the champion."""
        return 1 if bucket_of(key) < self._cut else 0

    def arms_of(self, keys: Sequence[bytes]) -> list[int]:
        cut = self._cut
        return [1 if zlib.crc32(k) % BUCKETS < cut else 0 for k in keys]

    # -- measuring (the prefetch worker) -------------------------------------------------------
    def record_reads(self, keys: Sequence[bytes], hits: Sequence[bool]) -> Decision | None:
        """Count a served read batch per arm; returns a decision when one was taken."""
        if self.finished or not hits:
            return None
        arms = self.arms_of(keys)
        reads = [0, 0]
        got = [0, 0]
        for arm, hit in zip(arms, hits):
            reads[arm] += 1
            got[arm] += 1 if hit else 0
        block = self.settings.block_requests
        with self._lock:
            completed = False
            for arm in (0, 1):
                if reads[arm] and self._arms[arm].add(reads[arm], got[arm], block):
                    completed = True
        return self._look() if completed else self._guardrails_only()

    def record_prefetches(self, arm: int, count: int) -> None:
        if count:
            with self._lock:
                self._arms[arm].prefetches += count

    def record_inference(self, seconds: float, accesses: int) -> None:
        with self._lock:
            self.inference_seconds += seconds
            self.inference_accesses += accesses

    def record_error(self, exc: BaseException) -> Decision | None:
        with self._lock:
            self.errors += 1
        return self._guardrails_only(f"{exc.__class__.__name__}: {exc}")

    # -- deciding ------------------------------------------------------------------------------
    def _guardrail(self, last_error: str = "") -> str | None:
        s = self.settings
        if self.errors > s.max_errors:
            detail = f" (last: {last_error})" if last_error else ""
            return f"guardrail: the challenger raised {self.errors} errors, more than max_errors {s.max_errors}{detail}"
        if self.inference_accesses:
            cost = self.inference_seconds / self.inference_accesses
            if cost > s.max_inference_seconds_per_access and self.inference_accesses >= s.block_requests:
                return f"guardrail: challenger inference {cost * 1e6:.1f} µs per access, above {s.max_inference_seconds_per_access * 1e6:.1f} µs"
        challenger = self._arms[1]
        if challenger.reads >= s.block_requests:
            rate = challenger.prefetches / challenger.reads
            if rate > s.max_prefetches_per_request:
                return f"guardrail: the challenger arm loaded {rate:.2f} prefetches per read, above {s.max_prefetches_per_request}"
        return None

    def _guardrails_only(self, last_error: str = "") -> Decision | None:
        with self._lock:
            if self.finished:
                return None
            broken = self._guardrail(last_error)
            if broken is None:
                return None
            decision = self._decide(ROLLBACK, broken)
        self._report(decision)
        return decision

    def _look(self) -> Decision | None:
        s = self.settings
        with self._lock:
            if self.finished:
                return None
            broken = self._guardrail()
            if broken is not None:
                decision = self._decide(ROLLBACK, broken)
            else:
                champion, challenger = self._arms
                n_h, n_c = len(champion.means), len(challenger.means)
                if min(n_h, n_c) < s.min_blocks:
                    return None
                diff = (challenger.mean or 0.0) - (champion.mean or 0.0)
                se = max(MIN_STANDARD_ERROR, math.sqrt(challenger.variance() / n_c + champion.variance() / n_h))
                figures = f"hit ratio {challenger.mean:.4f} vs {champion.mean:.4f} (difference {diff:+.4f}, se {se:.4f}) over {n_c}/{n_h} blocks"
                if diff - s.z * se > 0:
                    last = self.step + 1 >= len(s.steps) - 1
                    decision = self._decide(PROMOTE if last else ADVANCE, f"challenger better at {self.share:.0%}: {figures}")
                elif diff < -s.margin and diff + s.z * se < 0:
                    decision = self._decide(ROLLBACK, f"challenger worse by more than the margin {s.margin} at {self.share:.0%}: {figures}")
                elif min(n_h, n_c) >= s.max_blocks:
                    decision = self._decide(ROLLBACK, f"no evidence the challenger is better within {s.max_blocks} blocks at {self.share:.0%}: {figures}")
                else:
                    return None
        self._report(decision)
        return decision

    def _decide(self, action: str, reason: str) -> Decision:
        """Record ``action`` and move to the next state; the caller holds the lock."""
        champion, challenger = self._arms
        from_share = self.share
        if action == ADVANCE:
            self.step += 1
        elif action == PROMOTE:
            self.step = len(self.settings.steps) - 1
            self.state = "promoted"
        else:
            self.state = "rolled_back"
        to_share = self.share if action != ROLLBACK else 0.0
        decision = Decision(action, reason, from_share, to_share, champion.mean, challenger.mean, (len(champion.means), len(challenger.means)), self.step)
        self.decisions.append(decision)
        if action == ADVANCE:
            # A new share changes which keys each arm holds: measure afresh.
            self._arms = (_Arm(), _Arm())
            self._cut = int(round(self.share * BUCKETS))
        return decision

    def _report(self, decision: Decision) -> None:
        if self.on_decision is not None:
            self.on_decision(self, decision)

    # -- reporting -------------------------------------------------------------------------
    def arm_hit_ratios(self) -> dict[str, float | None]:
        with self._lock:
            return {name: (arm.hits / arm.reads if arm.reads else None) for name, arm in zip(ARMS, self._arms)}

    def status(self) -> dict[str, Any]:
        with self._lock:
            arms = {
                name: {"reads": arm.reads, "hits": arm.hits, "blocks": len(arm.means), "block_mean": arm.mean, "prefetches": arm.prefetches}
                for name, arm in zip(ARMS, self._arms)
            }
            return {
                "tenant": self.tenant,
                "state": self.state,
                "champion_version": self.champion_version,
                "challenger_version": self.challenger_version,
                "share": self.share if self.state != "rolled_back" else 0.0,
                "step": self.step,
                "steps": list(self.settings.steps),
                "arms": arms,
                "errors": self.errors,
                "challenger_inference_seconds_per_access": self.inference_seconds / self.inference_accesses if self.inference_accesses else None,
                "started_at": self.started_at,
                "decisions": [d.public() for d in self.decisions],
            }
