# SPDX-License-Identifier: Apache-2.0
"""Prefetcher.retune: new settings applied to a running prefetcher keep what its model
learned; settings that need another model or prefetcher are refused and change nothing."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy

from cache_core.cache import Cache
from cache_core.models import MarkovModel, Vocabulary
from cache_core.prefetch import Prefetcher, PrefetchSettings
from cache_core.replay import MemoryOrigin

CHAIN = [b"chain:%d" % i for i in range(32)]
SETTINGS = PrefetchSettings(depth=2, threshold=0.1, adaptive=False, max_cpu_share=1.0, max_batch_keys=64)


def learned() -> tuple[Prefetcher, Cache, MarkovModel, Vocabulary]:
    """A running prefetcher whose Markov model has learned CHAIN (twice, in order: the
    second time it loaded each next key)."""
    cache = Cache(numpy, max_keys=4096, max_memory_bytes=1 << 22, eviction="lru")
    vocab = Vocabulary(1024)
    model = MarkovModel(vocab.capacity)
    prefetcher = Prefetcher(cache, MemoryOrigin(8), model, vocab, SETTINGS)
    for key in CHAIN + CHAIN:
        prefetcher.observe([key])
        assert prefetcher.wait_idle(timeout=10)
    return prefetcher, cache, model, vocab


def predictions(model: MarkovModel, vocab: Vocabulary) -> list[list[int]]:
    cand, _conf = model.predict(vocab.encode_many(CHAIN[:-1]), 2)
    return numpy.asarray(cand).tolist()


def test_a_retune_keeps_the_learned_model_and_applies_the_new_pacing_and_threshold() -> None:
    prefetcher, cache, model, vocab = learned()
    try:
        before = predictions(model, vocab)
        assert [row[0] for row in before] == [vocab.encode(k) for k in CHAIN[1:]]
        stats = prefetcher.status()
        assert stats["loaded"] > 0 and stats["threshold"] == 0.1
        tuned = replace(SETTINGS, threshold=0.99, max_cpu_share=0.5, max_pause_seconds=0.01, min_batch_keys=3, depth=3, max_keys_per_second=100.0)
        assert prefetcher.retune(tuned)
        # The same model, as it learned, and the counters go on from where they were.
        assert prefetcher.model is model and prefetcher.vocab is vocab and len(vocab) == len(CHAIN)
        assert predictions(model, vocab) == before
        after = prefetcher.status()
        assert after["threshold"] == 0.99 and after["observed"] == stats["observed"] and after["loaded"] == stats["loaded"]
        assert prefetcher.settings is tuned
        assert prefetcher.rest_after(1.0) == 0.01  # half a core, at most 10 ms a rest
        assert prefetcher.gather_target() == 3
        # A confidence of 0.99 is more than a few sightings earn (2/3, then 3/4): the
        # chain, dropped from the cache, is no longer loaded, though the model still names
        # it (and keeps learning it).
        cache.flush()
        skipped = prefetcher.stats.skipped_threshold
        assert prefetcher.retune(replace(tuned, min_batch_keys=1, max_cpu_share=1.0))
        for key in CHAIN[:8]:
            prefetcher.observe([key])
            assert prefetcher.wait_idle(timeout=10)
        assert prefetcher.stats.loaded == stats["loaded"] and prefetcher.stats.skipped_threshold > skipped
        assert prefetcher.stats.observed == stats["observed"] + 8
    finally:
        prefetcher.close()


def test_a_retune_keeps_an_adapted_threshold_within_the_new_bounds() -> None:
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    vocab = Vocabulary(64)
    settings = PrefetchSettings(threshold=0.5, adaptive=True, min_threshold=0.1, max_threshold=0.9)
    prefetcher = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), vocab, settings, sync=True)
    assert prefetcher.retune(replace(settings, max_threshold=0.3, adapt_every=8))
    assert prefetcher.threshold == 0.3  # the same threshold setting: clamped, not reset
    assert prefetcher.retune(replace(settings, max_threshold=0.3, threshold=0.2))
    assert prefetcher.threshold == 0.2  # a new threshold setting starts from it


def test_a_lower_queue_bound_drops_the_oldest_batches_beyond_it() -> None:
    held, entered = threading.Event(), threading.Event()

    def rest(_seconds: float) -> None:
        entered.set()
        assert held.wait(timeout=10)

    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    settings = PrefetchSettings(max_cpu_share=0.01, max_pause_seconds=1.0, queue_max_batches=64, max_batch_keys=1)
    prefetcher = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), settings, rest=rest)
    try:
        prefetcher.observe([b"first"])
        assert entered.wait(timeout=10)  # the worker rests after its first step
        for i in range(10):
            prefetcher.observe([b"q%d" % i])
        assert prefetcher.queued_keys() == 10
        assert prefetcher.retune(replace(settings, queue_max_batches=4))
        assert prefetcher.queued_keys() == 4 and prefetcher.stats.dropped_batches == 6
        held.set()
        assert prefetcher.wait_idle(timeout=10)
        assert prefetcher.stats.observed == 1 + 4
    finally:
        held.set()
        prefetcher.close()


def test_a_retune_that_needs_another_model_or_prefetcher_changes_nothing() -> None:
    prefetcher, _cache, model, _vocab = learned()
    try:
        before = prefetcher.status()
        refused = [
            prefetcher.retune(replace(SETTINGS, model_process=True, threshold=0.9)),
            prefetcher.retune(replace(SETTINGS, threshold=0.9), model="stride"),
            prefetcher.retune(replace(SETTINGS, threshold=0.9), vocabulary_size=2048),
            prefetcher.retune(replace(SETTINGS, threshold=0.9), learn_online=False),
        ]
        assert refused == [False] * 4
        assert prefetcher.settings is SETTINGS and prefetcher.model is model and prefetcher.status() == before
        # What matches the prefetcher as built is no reason to refuse.
        assert prefetcher.retune(replace(SETTINGS, threshold=0.9), model="markov", vocabulary_size=1024, learn_online=True)
        assert prefetcher.threshold == 0.9
    finally:
        prefetcher.close()


def test_replay_takes_a_model_process_setting_it_never_uses() -> None:
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    prefetcher = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), SETTINGS, sync=True)
    assert prefetcher.retune(replace(SETTINGS, model_process=True))
    assert not prefetcher.in_model_process
