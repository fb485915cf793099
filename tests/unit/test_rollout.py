# SPDX-License-Identifier: Apache-2.0
"""Canary rollout decisions: arms by key hash, block means, guardrails (agent/mlops/rollout.py)."""

from __future__ import annotations

import random

import pytest

from agent.mlops.rollout import (
    ADVANCE,
    BUCKETS,
    PROMOTE,
    ROLLBACK,
    Rollout,
    RolloutError,
    RolloutSettings,
    bucket_of,
)

KEYS = [f"key:{i}".encode() for i in range(20_000)]
SETTINGS = RolloutSettings(steps=(0.1, 0.5, 1.0), block_requests=200, min_blocks=4, max_blocks=20, margin=0.02, z=3.0)


def feed(rollout: Rollout, champion_rate: float, challenger_rate: float, reads: int, seed: int = 1) -> list[str]:
    """Serve ``reads`` reads whose hit probability depends on the key's arm; return decisions."""
    rng = random.Random(seed)
    taken = []
    for _ in range(reads):
        if rollout.finished:
            break
        key = KEYS[rng.randrange(len(KEYS))]
        rate = challenger_rate if rollout.arm_of(key) else champion_rate
        decision = rollout.record_reads([key], [rng.random() < rate])
        if decision is not None:
            taken.append(decision.action)
    return taken


def make(settings: RolloutSettings = SETTINGS) -> tuple[Rollout, list]:
    seen: list = []
    rollout = Rollout("tenant-a", 1, 2, settings, on_decision=lambda r, d: seen.append(d))
    return rollout, seen


def test_arms_are_stable_and_nested_across_steps() -> None:
    rollout, _ = make()
    first = {k for k in KEYS if rollout.arm_of(k)}
    share = len(first) / len(KEYS)
    assert 0.08 < share < 0.12
    assert all(rollout.arm_of(k) for k in first), "a key changed arm within a step"
    # Advance by hand: the 10 % arm is inside the 50 % arm.
    feed(rollout, 0.2, 0.8, 60_000)
    assert rollout.step >= 1 or rollout.state == "promoted"
    wider = {k for k in KEYS if bucket_of(k) < 0.5 * BUCKETS}
    assert first <= wider


def test_better_challenger_advances_then_is_promoted() -> None:
    rollout, seen = make()
    actions = feed(rollout, 0.30, 0.60, 200_000)
    assert actions == [ADVANCE, PROMOTE]
    assert rollout.state == "promoted"
    assert [d.from_share for d in seen] == [0.1, 0.5]
    assert seen[-1].to_share == 1.0
    assert seen[-1].challenger_hit_ratio > seen[-1].champion_hit_ratio


def test_worse_challenger_is_rolled_back_with_the_figures() -> None:
    rollout, seen = make()
    actions = feed(rollout, 0.60, 0.20, 200_000)
    assert actions == [ROLLBACK]
    assert rollout.state == "rolled_back"
    assert rollout.status()["share"] == 0.0
    assert "worse by more than the margin" in seen[0].reason
    assert seen[0].blocks[0] >= SETTINGS.min_blocks and seen[0].blocks[1] >= SETTINGS.min_blocks


def test_equal_arms_end_in_rollback_at_the_block_budget() -> None:
    rollout, seen = make()
    actions = feed(rollout, 0.5, 0.5, 2_000_000)
    assert actions == [ROLLBACK]
    assert "no evidence" in seen[0].reason
    assert min(seen[0].blocks) >= SETTINGS.max_blocks


def test_slightly_worse_within_the_margin_is_not_rolled_back_as_worse() -> None:
    rollout, seen = make(RolloutSettings(steps=(0.5, 1.0), block_requests=200, min_blocks=4, max_blocks=30, margin=0.2, z=3.0))
    feed(rollout, 0.55, 0.50, 2_000_000)
    assert rollout.state == "rolled_back"
    assert "no evidence" in seen[0].reason


def test_errors_guardrail_rolls_back_at_once() -> None:
    rollout, seen = make(RolloutSettings(max_errors=1))
    assert rollout.record_error(RuntimeError("boom")) is None
    decision = rollout.record_error(RuntimeError("boom again"))
    assert decision is not None and decision.action == ROLLBACK
    assert "raised 2 errors" in decision.reason and "boom again" in decision.reason
    assert seen == [decision]


def test_inference_cost_guardrail() -> None:
    rollout, _ = make(RolloutSettings(block_requests=100, max_inference_seconds_per_access=1e-4))
    rollout.record_inference(seconds=0.5, accesses=1000)  # 500 µs per access
    decision = rollout.record_reads([KEYS[0]], [True])
    assert decision is not None and decision.action == ROLLBACK
    assert "inference" in decision.reason


def test_prefetch_bandwidth_guardrail() -> None:
    rollout, _ = make(RolloutSettings(steps=(0.5, 1.0), block_requests=50, max_prefetches_per_request=2.0))
    challenger_keys = [k for k in KEYS if rollout.arm_of(k)][:100]
    rollout.record_prefetches(1, 1000)
    decision = None
    for key in challenger_keys:
        decision = decision or rollout.record_reads([key], [False])
    assert decision is not None and decision.action == ROLLBACK
    assert "prefetches per read" in decision.reason


def test_no_decision_after_finish() -> None:
    rollout, seen = make(RolloutSettings(max_errors=0))
    rollout.record_error(ValueError("x"))
    assert rollout.finished
    assert rollout.record_error(ValueError("y")) is None
    assert feed(rollout, 0.1, 0.9, 10_000) == []
    assert len(seen) == 1


@pytest.mark.parametrize(
    "steps",
    [(0.1, 0.5), (0.5, 0.1, 1.0), (1.0,), (0.0, 1.0), (0.5, 0.5, 1.0)],
)
def test_bad_steps_are_refused(steps: tuple[float, ...]) -> None:
    with pytest.raises(RolloutError):
        RolloutSettings(steps=tuple(steps)).check()


def test_block_budget_must_cover_min_blocks() -> None:
    with pytest.raises(RolloutError):
        RolloutSettings(min_blocks=10, max_blocks=5).check()
