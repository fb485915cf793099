# SPDX-License-Identifier: Apache-2.0
"""Trace replay through the real cache code, with an in-memory origin.

Every request is a demand read (``Cache.get`` with read-through): a hit is a demand hit,
including a hit on a prefetched entry; a miss loads the key from the origin, as in
production. After each request the prefetcher (if any) observes it and may load
predicted keys — prefetches are not requests. The model learns online from the replayed
stream only: it never sees a request before the cache has served it (no look-ahead).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy

from cache_core.cache import Cache, CacheStats
from cache_core.eviction import POLICIES
from cache_core.metering import ORIGIN_CALLERS, OriginMeter
from cache_core.models import MODELS, Vocabulary, make_model
from cache_core.prefetch import Prefetcher, PrefetchSettings

PREFETCH_MODES = ("none", *MODELS)
DEFAULT_VALUE_BYTES = 64
# The baselines issue what they predict (top-2, no threshold), like the reference figures
# of ../shared reference §5.2. The learned model passes its calibrated scores through the
# adaptive threshold, so its depth is a ceiling rather than what it loads: up to three
# candidates, which lets a third through when two experts disagree and both are credible.
BASELINE_SETTINGS = PrefetchSettings(depth=2, predict_last=1, threshold=1e-9, adaptive=False)
MODEL_SETTINGS = PrefetchSettings(depth=3, predict_last=1)
# Memory budget per entry on top of its value (keys are bounded by entries, not bytes).
MEMORY_SLACK_FACTOR = 4
# Floors of a replay cache's memory and value limits, and the bookkeeping charged per entry.
MIN_CACHE_MEMORY_BYTES = 1 << 16
MIN_VALUE_LIMIT_BYTES = 1024
PER_ENTRY_OVERHEAD_BYTES = 64


class MemoryOrigin:
    """Every key exists, with a value of ``value_bytes`` bytes."""

    name = "memory"

    def __init__(self, value_bytes: int = DEFAULT_VALUE_BYTES) -> None:
        self.value = b"v" * int(value_bytes)
        self.loads = 0

    def load_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        self.loads += len(keys)
        return [self.value] * len(keys)


def replay_cache(cache_entries: int, policy: str, origin: Any, value_bytes: int = DEFAULT_VALUE_BYTES) -> Cache:
    """A real cache of ``cache_entries`` entries reading through from ``origin``."""
    return Cache(
        numpy,
        max_keys=cache_entries,
        max_memory_bytes=max(MIN_CACHE_MEMORY_BYTES, cache_entries * (value_bytes + PER_ENTRY_OVERHEAD_BYTES) * MEMORY_SLACK_FACTOR),
        max_value_bytes=max(MIN_VALUE_LIMIT_BYTES, value_bytes),
        eviction=policy,
        origin=origin,
        read_through=True,
    )


def replay_figures(stats: CacheStats, requests: int) -> dict[str, Any]:
    """Hits, hit ratio and prefetch figures of a replay of ``requests`` demand reads."""
    return {
        "requests": requests,
        "hits": stats.hits,
        "hit_ratio": stats.hits / requests if requests else 0.0,
        "prefetches": stats.prefetch_inserted,
        "prefetch_used": stats.prefetch_used,
        "prefetch_precision": stats.prefetch_used / stats.prefetch_inserted if stats.prefetch_inserted else None,
    }


class LruSimulator:
    """The hit/miss and prefetch accounting of ``Cache(eviction="lru")`` with read-through,
    for entries of one size, without storing values: what evaluating a model by replay needs,
    at a fraction of the cost (tests check it against the real cache, read for read).

    It offers what :class:`~cache_core.prefetch.Prefetcher` uses of a cache: ``get``,
    ``contains_many``, ``mset(prefetched=True)``, ``stats``, ``origin_meters``,
    ``max_value_bytes`` and ``prefetch_observer``.
    """

    def __init__(self, max_keys: int, value_bytes: int = DEFAULT_VALUE_BYTES) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = int(max_keys)
        self.max_value_bytes = max(1024, int(value_bytes))
        self.value = b"v" * int(value_bytes)
        self.entries: OrderedDict[bytes, bool] = OrderedDict()  # key -> prefetched and not yet read
        self.stats = CacheStats()
        self.origin_meters = {caller: OriginMeter() for caller in ORIGIN_CALLERS}
        self.prefetch_observer: Callable[[Sequence[bytes], Sequence[bool]], None] | None = None

    def _insert(self, key: bytes, prefetched: bool) -> None:
        entries = self.entries
        while len(entries) >= self.max_keys:
            _victim, unread = entries.popitem(last=False)
            self.stats.evictions += 1
            if unread:
                self.stats.prefetch_wasted += 1
        entries[key] = prefetched

    def get(self, key: bytes) -> bytes | None:
        entries = self.entries
        unread = entries.get(key)
        hit = unread is not None
        if hit:
            self.stats.hits += 1
            entries.move_to_end(key)
            if unread:
                self.stats.prefetch_used += 1
                entries[key] = False
        else:
            self.stats.misses += 1
            self.stats.origin_loads += 1
            self._insert(key, False)
        observer = self.prefetch_observer
        if observer is not None:
            observer((key,), (hit,))
        return self.value

    def contains_many(self, keys: Sequence[bytes]) -> list[bool]:
        entries = self.entries
        return [k in entries for k in keys]

    def mset(self, items: Sequence[tuple[bytes, bytes]], prefetched: bool = False) -> None:
        for key, _value in items:
            if key in self.entries:
                if prefetched:
                    continue
                self.entries.move_to_end(key)
                self.entries[key] = False
                continue
            self._insert(key, prefetched)
            if prefetched:
                self.stats.prefetch_inserted += 1


def replay(
    keys: Sequence[bytes],
    cache_entries: int,
    *,
    policy: str = "lru",
    prefetch: str = "none",
    value_bytes: int = DEFAULT_VALUE_BYTES,
    settings: PrefetchSettings | None = None,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
    xp: Any = None,
) -> dict[str, Any]:
    """Replay ``keys`` (in order) and return the figures ``predis-agent replay --json`` prints.

    ``xp`` is the array module the model learns and predicts on (the cache's by default).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
    if prefetch not in PREFETCH_MODES:
        raise ValueError(f"unknown prefetch mode {prefetch!r}; expected one of {', '.join(PREFETCH_MODES)}")
    if cache_entries < 1:
        raise ValueError("cache_entries must be at least 1")
    origin = MemoryOrigin(value_bytes)
    cache = replay_cache(cache_entries, policy, origin, value_bytes)
    prefetcher: Prefetcher | None = None
    if prefetch != "none":
        distinct = len(set(keys))
        vocab = Vocabulary(max(1024, 2 * distinct + 1024))
        model = make_model(prefetch, vocab)
        chosen = settings or (MODEL_SETTINGS if prefetch in ("model", "federated") else BASELINE_SETTINGS)
        prefetcher = Prefetcher(cache, origin, model, vocab, chosen, sync=True, xp=xp)
    get, observe = cache.get, (prefetcher.observe if prefetcher else None)
    for i, key in enumerate(keys):
        get(key)
        if observe is not None:
            observe((key,))
        if progress is not None and (i + 1) % progress_every == 0:
            progress(i + 1)
    out: dict[str, Any] = {**replay_figures(cache.stats, len(keys)), "policy": policy, "prefetch": prefetch}
    if prefetcher is not None:
        status = prefetcher.status()
        out["inference_seconds_per_access"] = status["inference_seconds_per_access"]
        out["final_threshold"] = status["threshold"]
    return out
