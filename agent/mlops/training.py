# SPDX-License-Identifier: Apache-2.0
"""Training a prefetch model from a trace and deciding whether it beats the champion.

Why this shape: the only figure that matters for a prefetch model is the hit ratio it
buys, so a candidate is judged the way production would judge it — by replaying requests
it has never seen through the real cache and prefetcher code. The trace is split in
time: the model learns online (``observe`` only, in order, as it would while serving) from
the first part, and the candidate and the current champion are both replayed over the
held-out tail, each from a cold cache of the same size (for the LRU policy,
:class:`cache_core.replay.LruSimulator`, which counts what the real cache counts). A candidate is registered only
when it beats the champion by at least ``mlops.promote_margin`` (and strictly); the first
model of a tenant has nothing to beat and becomes the champion.

:func:`evaluate` is :func:`cache_core.replay.replay` for a model that is already trained
(``replay`` always starts a fresh one). It replays a copy, so the model handed in — the
one that gets registered — keeps the state it had at the end of its training window.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError
from agent.mlops.registry import ModelRegistry, RegistryError, keys_digest, save_model
from agent.security import validate_tenant_id
from cache_core.models import MODELS, Vocabulary, make_model, set_learning
from cache_core.prefetch import Prefetcher, PrefetchSettings
from cache_core.replay import (
    BASELINE_SETTINGS,
    DEFAULT_VALUE_BYTES,
    MODEL_SETTINGS,
    LruSimulator,
    MemoryOrigin,
    replay_cache,
    replay_figures,
)

# Defaults of the schema's ``mlops`` section (config_schema/agent.schema.json).
DEFAULT_HOLDOUT_SHARE = 0.2
DEFAULT_HOLDOUT_MAX_REQUESTS = 10_000
DEFAULT_PROMOTE_MARGIN = 0.005
DEFAULT_EVAL_CACHE_SHARE = 0.01
# The evaluation cache never has fewer entries than this, whatever the share says.
MIN_EVAL_CACHE_ENTRIES = 16
# Fewest requests on each side of the split for a comparison to mean anything.
MIN_SPLIT_REQUESTS = 1
# Vocabulary room: twice the trace's distinct keys (the stride model names unseen keys)
# plus a floor, as replay sizes it.
VOCABULARY_HEADROOM = 2
MIN_VOCABULARY = 1024
# Keys handed to ``observe`` at once while training.
TRAIN_BATCH = 4096


# Requests replayed between two looks at the deadline.
DEADLINE_CHECK_EVERY = 4096


class TrainingError(AgentError, ValueError):
    """A training request that cannot be carried out (too few requests, bad settings)."""


class TrainingTimeout(TrainingError):
    """Training or evaluation ran past its time budget (nothing was registered)."""


def _check_deadline(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TrainingTimeout(f"time budget exhausted while {what}")


@dataclass
class TrainingResult:
    """A trained candidate and the figures it was judged by."""

    model: Any
    vocab: Vocabulary
    kind: str
    train_keys: int
    holdout_keys: int
    data_hash: str
    cache_entries: int
    metrics: dict[str, Any] = field(default_factory=dict)


def _settings_for(model: Any) -> PrefetchSettings:
    return MODEL_SETTINGS if getattr(model, "name", "") == "model" else BASELINE_SETTINGS


def evaluate(
    model: Any,
    vocab: Vocabulary,
    keys: Sequence[bytes],
    cache_entries: int,
    *,
    policy: str = "lru",
    value_bytes: int = DEFAULT_VALUE_BYTES,
    settings: PrefetchSettings | None = None,
    deadline: float | None = None,
    learn_online: bool = True,
) -> dict[str, Any]:
    """Replay ``keys`` with an already-trained model (a copy of it) and return the figures.

    ``model`` may be None: the cache alone, without prefetching (the baseline).
    ``deadline`` (``time.monotonic()``): raise :class:`TrainingTimeout` past it.
    ``learn_online`` False replays the model frozen, as ``cache.prefetch.learn_online:
    false`` serves it.
    """
    if cache_entries < 1:
        raise TrainingError("cache_entries must be at least 1")
    origin = MemoryOrigin(value_bytes)
    cache: Any
    if policy == "lru":
        # The simulator counts exactly what the real LRU cache counts (tested read for
        # read), several times faster: evaluation is most of a retrain's time.
        cache = LruSimulator(cache_entries, value_bytes)
    else:
        cache = replay_cache(cache_entries, policy, origin, value_bytes)
    prefetcher = None
    if model is not None:
        replayed, replayed_vocab = copy.deepcopy((model, vocab))
        set_learning(replayed, learn_online)
        prefetcher = Prefetcher(cache, origin, replayed, replayed_vocab, settings or _settings_for(model), sync=True, learn_online=learn_online)
    get, observe = cache.get, (prefetcher.observe if prefetcher else None)
    for index, key in enumerate(keys):
        if index % DEADLINE_CHECK_EVERY == 0:
            _check_deadline(deadline, "evaluating by replay")
        get(key)
        if observe is not None:
            observe((key,))
    return replay_figures(cache.stats, len(keys))


def eval_cache_entries(keys: Sequence[bytes], share: float = DEFAULT_EVAL_CACHE_SHARE) -> int:
    """Evaluation cache size: ``share`` of the trace's distinct keys, at least the floor."""
    return max(MIN_EVAL_CACHE_ENTRIES, math.ceil(share * len(set(keys))))


def train_from_trace(
    keys: Sequence[bytes],
    kind: str = "model",
    holdout: float = DEFAULT_HOLDOUT_SHARE,
    *,
    holdout_max: int = DEFAULT_HOLDOUT_MAX_REQUESTS,
    champion: tuple[Any, Vocabulary] | None = None,
    cache_entries: int | None = None,
    eval_cache_share: float = DEFAULT_EVAL_CACHE_SHARE,
    deadline: float | None = None,
    progress: Callable[[str], None] | None = None,
    learn_online: bool = True,
) -> TrainingResult:
    """Train a fresh ``kind`` model on the head of ``keys``; judge it (and ``champion``) on the tail.

    ``deadline`` (``time.monotonic()``) bounds the whole run (:class:`TrainingTimeout`);
    ``progress`` is told each phase as it starts; ``learn_online`` as for :func:`evaluate`.
    """
    report = progress or (lambda phase: None)
    if kind not in MODELS:
        raise TrainingError(f"unknown model kind {kind!r}; expected one of {', '.join(MODELS)}")
    if not 0 < holdout < 1:
        raise TrainingError(f"holdout share {holdout} must be between 0 and 1 (exclusive)")
    # The held-out slice is the trace's last ``holdout`` share, at most ``holdout_max``
    # requests (a larger slice adds replay time, not evidence); the rest trains.
    split = max(int(len(keys) * (1 - holdout)), len(keys) - holdout_max)
    if split < MIN_SPLIT_REQUESTS or len(keys) - split < MIN_SPLIT_REQUESTS:
        raise TrainingError(f"a trace of {len(keys)} requests cannot be split into a training window and a held-out share of {holdout}")
    train, tail = keys[:split], keys[split:]
    entries = cache_entries or eval_cache_entries(keys, eval_cache_share)
    vocab = Vocabulary(max(MIN_VOCABULARY, VOCABULARY_HEADROOM * len(set(keys)) + MIN_VOCABULARY))
    model = make_model(kind, vocab)
    report("training")
    for start in range(0, len(train), TRAIN_BATCH):
        _check_deadline(deadline, "training")
        model.observe(vocab.encode_many(train[start : start + TRAIN_BATCH]))
    report("evaluating the candidate")
    candidate = evaluate(model, vocab, tail, entries, deadline=deadline, learn_online=learn_online)
    report("evaluating the baseline")
    baseline = evaluate(None, vocab, tail, entries, deadline=deadline)
    metrics: dict[str, Any] = {
        "candidate_hit_ratio": candidate["hit_ratio"],
        "candidate_prefetch_precision": candidate["prefetch_precision"],
        "baseline_hit_ratio": baseline["hit_ratio"],
        "champion_hit_ratio": None,
        "eval_requests": len(tail),
        "eval_cache_entries": entries,
    }
    if champion is not None:
        report("evaluating the champion")
        metrics["champion_hit_ratio"] = evaluate(champion[0], champion[1], tail, entries, deadline=deadline, learn_online=learn_online)["hit_ratio"]
    return TrainingResult(model, vocab, kind, len(train), len(tail), keys_digest(train), entries, metrics)


def beats(candidate_hit_ratio: float, champion_hit_ratio: float | None, margin: float) -> bool:
    """Whether a candidate should be registered: no champion, or better by at least ``margin``."""
    if champion_hit_ratio is None:
        return True
    gain = candidate_hit_ratio - champion_hit_ratio
    return gain > 0 and gain >= margin


def train_and_register(
    registry: ModelRegistry,
    tenant: str,
    keys: Sequence[bytes],
    *,
    kind: str = "model",
    holdout: float = DEFAULT_HOLDOUT_SHARE,
    holdout_max: int = DEFAULT_HOLDOUT_MAX_REQUESTS,
    margin: float = DEFAULT_PROMOTE_MARGIN,
    eval_cache_share: float = DEFAULT_EVAL_CACHE_SHARE,
    trace_name: str = "",
    promote: bool = False,
    drift: dict[str, Any] | None = None,
    actor: str | None = None,
    deadline: float | None = None,
    progress: Callable[[str], None] | None = None,
    learn_online: bool = True,
) -> dict[str, Any]:
    """Train, compare with the tenant's champion and register the candidate if it wins.

    A registered candidate becomes the champion when it is the tenant's first model or
    ``promote`` is set, else the challenger (for a canary rollout to decide). Returns what
    happened, for the CLI to print.
    """
    validate_tenant_id(tenant)
    champion_version = registry.aliases(tenant)["champion"]
    champion = registry.load_model(tenant, champion_version) if champion_version is not None else None
    result = train_from_trace(
        keys, kind, holdout, holdout_max=holdout_max, champion=champion, eval_cache_share=eval_cache_share, deadline=deadline, progress=progress, learn_online=learn_online
    )
    metrics = result.metrics
    register = beats(metrics["candidate_hit_ratio"], metrics["champion_hit_ratio"], margin)
    report: dict[str, Any] = {
        "tenant": tenant,
        "kind": kind,
        "requests": len(keys),
        "train_requests": result.train_keys,
        "eval_requests": result.holdout_keys,
        "eval_cache_entries": result.cache_entries,
        "learn_online": learn_online,
        "candidate_hit_ratio": metrics["candidate_hit_ratio"],
        "champion_hit_ratio": metrics["champion_hit_ratio"],
        "baseline_hit_ratio": metrics["baseline_hit_ratio"],
        "champion_version": champion_version,
        "margin": margin,
        "registered": register,
        "version": None,
        "alias": None,
    }
    if not register:
        return report
    meta = {
        "kind": kind,
        "training": {"requests": result.train_keys, "holdout_requests": result.holdout_keys, "trace": trace_name},
        "data_hash": result.data_hash,
        "metrics": {**metrics, "champion_version": champion_version},
        "drift": drift,
        "parent": champion_version,
    }
    with tempfile.TemporaryDirectory(prefix="predis-train-") as staging:
        files = save_model(result.model, result.vocab, staging)
        version = registry.register(tenant, [f"{staging}/{name}" for name in files], meta, actor=actor)
    report["version"] = version
    if champion_version is None:
        # The registry makes a tenant's first version the champion (under its lock).
        report["alias"] = "champion" if registry.aliases(tenant)["champion"] == version else None
        return report
    gain = metrics["candidate_hit_ratio"] - metrics["champion_hit_ratio"]
    alias = "champion" if promote else "challenger"
    reason = f"trained on {trace_name or 'a trace'}: hit ratio {gain:+.4f} over champion v{champion_version}"
    try:
        registry.promote(tenant, version, alias, reason, actor)
    except RegistryError as exc:
        raise RegistryError(f"registered v{version} but could not make it the {alias}: {exc}") from exc
    report["alias"] = alias
    return report
