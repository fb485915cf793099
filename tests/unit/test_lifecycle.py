# SPDX-License-Identifier: Apache-2.0
"""The model lifecycle end to end on real parts: replay accounting, training budgets,
the retraining pipeline and its datasets, canary routing in the prefetcher, the MLOps
service against a real registry, and the registry's audit-only entries.

What must hold: the LRU simulator counts what the real cache counts, read for read; a
frozen model (``learn_online: false``) neither learns while judged or served nor resets
its vocabulary, and evaluation never touches the model handed in; a retrain registers a
candidate only by the documented rule and reports every outcome (``promoted``,
``registered``, ``rejected``, ``no_data``, ``timeout``) in its metrics and events; the
datasets hold demand reads only, newest last, history before them; in a canary each
model's prefetches are loaded only for keys of its own arm, a promotion makes the
challenger the model and a rollback (decided or by a guardrail) leaves the champion; the
service follows the registry and writes every decision to its audit log.

Everything is hermetic (tmp_path, injected clocks, ``Prefetcher(sync=True)``); nothing
sleeps.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy
import pytest

from agent.config import load_config
from agent.mlops.dataset import list_segments
from agent.mlops.registry import ModelRegistry, RegistryError, save_model
from agent.mlops.retrain import (
    RESULTS,
    Dataset,
    RetrainPipeline,
    RetrainSettings,
    dataset_from_ring,
    dataset_from_segments,
)
from agent.mlops.rollout import PROMOTE, ROLLBACK, Rollout, RolloutSettings
from agent.mlops.service import MlopsService
from agent.mlops.training import TrainingTimeout, evaluate, train_from_trace
from cache_core.access_log import EVENT_DTYPE, AccessLog
from cache_core.cache import OP_GET, OP_SET, Cache
from cache_core.models import MarkovModel, Vocabulary, make_model, set_learning, successor_tables
from cache_core.prefetch import Prefetcher, PrefetchSettings
from cache_core.replay import (
    BASELINE_SETTINGS,
    DEFAULT_VALUE_BYTES,
    MEMORY_SLACK_FACTOR,
    MODEL_SETTINGS,
    LruSimulator,
    MemoryOrigin,
)
from tests.unit.test_access_log_export import KEY, append, exporter, section

TENANT = "acme"
MLOPS = {"promote_margin": 0.0, "holdout_share": 0.2, "holdout_max_requests": 10_000, "eval_cache_share": 0.01}
# Settings for canary tests: a fixed threshold (no adaptation) and every candidate issued.
CANARY_PREFETCH = PrefetchSettings(depth=2, predict_last=1, threshold=0.1, adaptive=False)
# Never a wall-clock guardrail in a unit test.
NO_TIME_GUARD = 10.0


# ----------------------------------------------------------------------------- traces
def numbered_chain(n: int, states: int = 2000, seed: int = 1, prefix: bytes = b"key:") -> list[bytes]:
    """A Markov chain over numbered keys: next key +1 or a fixed random successor, sometimes a jump."""
    rng = random.Random(seed)
    successors = [((i + 1) % states, rng.randrange(states)) for i in range(states)]
    current, out = 0, []
    for _ in range(n):
        out.append(b"%s%05d" % (prefix, current))
        current = rng.choice(successors[current]) if rng.random() < 0.85 else rng.randrange(states)
    return out


def zipf_trace(n: int, states: int = 2000, seed: int = 2) -> list[bytes]:
    rng = numpy.random.default_rng(seed)
    return [b"key:%05d" % (int(x) % states) for x in rng.zipf(1.2, n)]


def cycle_trace(prefix: str, states: int, rounds: int, seed: int) -> list[bytes]:
    """A random permutation of ``states`` keys, repeated: a model that knows it predicts every read."""
    names = [f"{prefix}-{i}".encode() for i in range(states)]
    random.Random(seed).shuffle(names)
    return names * rounds


def frozen_markov(pairs: list[tuple[bytes, bytes]]) -> tuple[MarkovModel, Vocabulary]:
    """A markov model that learned ``a -> b`` for each pair (and nothing after), then frozen."""
    vocab = Vocabulary(4096)
    model = MarkovModel(vocab.capacity)
    for a, b in pairs:
        model.observe(vocab.encode_many([a, b]))
        model.last = -1  # no transition from b to the next pair's a
    set_learning(model, False)
    return model, vocab


X = [b"x:%d" % i for i in range(300)]
A = [b"a:%d" % i for i in range(300)]
B = [b"b:%d" % i for i in range(300)]


def champion_and_challenger() -> tuple[tuple[MarkovModel, Vocabulary], tuple[MarkovModel, Vocabulary]]:
    """After x:i the champion predicts only a:i, the challenger only b:i."""
    return frozen_markov(list(zip(X, A))), frozen_markov(list(zip(X, B)))


class RecordingOrigin(MemoryOrigin):
    """A memory origin that remembers every key it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[bytes] = []

    def load_many(self, keys: Any) -> list[bytes | None]:
        self.asked.extend(keys)
        return super().load_many(keys)


def big_cache(origin: Any = None) -> Cache:
    return Cache(numpy, max_keys=8192, max_memory_bytes=8 << 20, eviction="lru", origin=origin, read_through=origin is not None)


# ----------------------------------------------------------------------------- 1. simulator
def _replay_counts(cache: Any, origin: MemoryOrigin, keys: list[bytes], mode: str) -> tuple[list[tuple[int, int]], tuple[int, ...]]:
    prefetcher = None
    if mode != "none":
        vocab = Vocabulary(max(1024, 2 * len(set(keys)) + 1024))
        settings = MODEL_SETTINGS if mode == "model" else BASELINE_SETTINGS
        prefetcher = Prefetcher(cache, origin, make_model(mode, vocab), vocab, settings, sync=True)
    per_read = []
    for key in keys:
        cache.get(key)
        if prefetcher is not None:
            prefetcher.observe((key,))
        per_read.append((cache.stats.hits, cache.stats.prefetch_used))
    s = cache.stats
    return per_read, (s.hits, s.misses, s.evictions, s.prefetch_inserted, s.prefetch_used, s.prefetch_wasted)


@pytest.mark.parametrize("trace", ["chain", "zipf"])
@pytest.mark.parametrize("size", [20, 100])
@pytest.mark.parametrize("mode", ["none", "stride", "markov", "model", "federated"])
def test_lru_simulator_counts_what_the_real_lru_cache_counts(trace: str, size: int, mode: str) -> None:
    keys = numbered_chain(2000) if trace == "chain" else zipf_trace(2000)
    origin = MemoryOrigin(DEFAULT_VALUE_BYTES)
    real = Cache(
        numpy,
        max_keys=size,
        max_memory_bytes=max(1 << 16, size * (DEFAULT_VALUE_BYTES + 64) * MEMORY_SLACK_FACTOR),
        max_value_bytes=max(1024, DEFAULT_VALUE_BYTES),
        eviction="lru",
        origin=origin,
        read_through=True,
    )
    real_reads, real_totals = _replay_counts(real, origin, keys, mode)
    sim_reads, sim_totals = _replay_counts(LruSimulator(size, DEFAULT_VALUE_BYTES), MemoryOrigin(DEFAULT_VALUE_BYTES), keys, mode)
    assert sim_totals == real_totals
    assert sim_reads == real_reads  # read for read, not only in total
    hits, _misses, _evictions, inserted, used, wasted = real_totals
    assert hits > 0
    if mode in ("markov", "model") or (mode == "stride" and trace == "chain"):
        assert inserted > 0 and used > 0 and wasted > 0  # the comparison covered prefetch accounting


# ----------------------------------------------------------------------------- 2. training
def test_a_deadline_already_past_raises_training_timeout() -> None:
    keys = numbered_chain(600, states=100)
    vocab = Vocabulary(1024)
    model = make_model("markov", vocab)
    past = time.monotonic() - 1.0
    with pytest.raises(TrainingTimeout, match="evaluating"):
        evaluate(model, vocab, keys, 16, deadline=past)
    with pytest.raises(TrainingTimeout, match="evaluating"):
        evaluate(None, vocab, keys, 16, deadline=past)
    with pytest.raises(TrainingTimeout, match="training"):
        train_from_trace(keys, "markov", deadline=past)
    # No deadline: the same calls complete.
    assert evaluate(model, vocab, keys, 16)["requests"] == len(keys)


def _state(model: Any, vocab: Vocabulary) -> list[Any]:
    tables = successor_tables(model)
    return [*(t.succ.copy() for t in tables), *(t.count.copy() for t in tables), [t.frozen for t in tables], list(vocab.keys), vocab.full_misses]


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(numpy.array_equal(x, y) if isinstance(x, numpy.ndarray) else x == y for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["markov", "model"])
def test_frozen_evaluation_does_not_learn_and_never_modifies_the_model(kind: str) -> None:
    chain_a = cycle_trace("a", 300, 3, seed=1)
    chain_b = cycle_trace("b", 300, 4, seed=2)
    vocab = Vocabulary(4096)
    model = make_model(kind, vocab)
    model.observe(vocab.encode_many(chain_a))
    before = _state(model, vocab)
    learning = evaluate(model, vocab, chain_b, 16, learn_online=True)
    frozen = evaluate(model, vocab, chain_b, 16, learn_online=False)
    known = evaluate(model, vocab, chain_a[:600], 16, learn_online=False)
    assert _same(_state(model, vocab), before), "evaluate changed the model it was handed"
    assert all(not t.frozen for t in successor_tables(model))
    # Learning online, the second and later rounds of chain B are prefetched; frozen, the
    # model knows nothing of B and buys nothing (a 16-entry LRU cache alone hits nothing
    # on a 300-key cycle).
    assert frozen["prefetch_used"] == 0 and frozen["hits"] == 0
    assert learning["prefetch_used"] > 600 and learning["hits"] > 600
    # Frozen is not disabled: what it learned from chain A still predicts chain A.
    assert known["prefetch_used"] > 400


# ----------------------------------------------------------------------------- 3. retrain pipeline
def _dataset(keys: list[bytes], without_key: int = 0) -> Dataset:
    return Dataset(list(keys), "ring", len(keys), 0, without_key, 0, 0, numpy.empty(0, dtype=EVENT_DTYPE))


class Box:
    """What the pipeline's dataset callable returns, swappable between runs."""

    def __init__(self, data: Dataset) -> None:
        self.data = data
        self.asked = 0

    def __call__(self, settings: RetrainSettings) -> Dataset:
        self.asked += 1
        return self.data


def _pipeline(tmp_path: Path, box: Box, learn_online: bool = True, clock: Any = time.monotonic, reads_logged: Any = lambda: 0, **settings: Any) -> tuple[RetrainPipeline, list, list]:
    events: list[tuple[str, dict]] = []
    done: list[tuple[dict, Any]] = []
    pipeline = RetrainPipeline(box, lambda name, data: events.append((name, data)), lambda report, data: done.append((report, data)), clock=clock, reads_logged=reads_logged)
    values = {"enabled": True, "kind": "markov", "min_requests": 100, "min_interval_seconds": 0.0, **settings}
    pipeline.configure(RetrainSettings(**values), ModelRegistry(tmp_path / "registry"), TENANT, MLOPS, learn_online=learn_online)
    return pipeline, events, done


def _rule_holds(report: dict[str, Any]) -> None:
    candidate, champion, margin = report["candidate_hit_ratio"], report["champion_hit_ratio"], report["margin"]
    registered = candidate > champion and candidate - champion >= margin
    assert report["registered"] is registered
    assert report["result"] == ("registered" if registered else "rejected")


def test_retrain_promotes_the_first_model_then_judges_later_ones(tmp_path: Path) -> None:
    trace_a = numbered_chain(3000, states=300, seed=3, prefix=b"a:")
    box = Box(_dataset(trace_a))
    pipeline, events, done = _pipeline(tmp_path, box, learn_online=False)
    registry = pipeline.registry
    assert registry is not None

    first = pipeline.run("drift: test")
    assert first["result"] == "promoted", first
    assert (first["version"], first["alias"]) == (1, "champion")
    assert registry.aliases(TENANT) == {"champion": 1, "challenger": None}
    assert first["data"]["requests"] == len(trace_a) and first["data"]["source"] == "ring"
    assert [name for name, _ in events] == ["retrain_started", "retrain_finished"]
    assert events[0][1]["reason"] == "drift: test" and events[1][1] is first
    assert done[0][0] is first and done[0][1] is box.data

    # The same data again: the champion already knows it; margin 0.
    same = pipeline.run("schedule")
    _rule_holds(same)
    assert same["champion_version"] == 1
    assert registry.versions(TENANT) == ([1, 2] if same["registered"] else [1])

    # Another workload: the champion (served frozen) knows nothing of it, the candidate does.
    box.data = _dataset(numbered_chain(3000, states=300, seed=4, prefix=b"b:"))
    other = pipeline.run("drift: moved")
    _rule_holds(other)
    assert other["result"] == "registered"
    assert registry.aliases(TENANT)["challenger"] == other["version"] and registry.aliases(TENANT)["champion"] == 1
    assert [name for name, _ in events] == ["retrain_started", "retrain_finished"] * 3
    assert pipeline.status()["last"] is other and pipeline.status()["running"] is False


def test_a_drift_retrain_waits_for_settle_requests_more_logged_reads(tmp_path: Path) -> None:
    logged = [1000]
    pipeline, _events, _done = _pipeline(tmp_path, Box(_dataset([])), reads_logged=lambda: logged[0], settle_requests=500)
    assert pipeline.request("drift: moved", {"score": 1.0})
    assert pipeline.due() is None and pipeline.status()["settling_requests"] == 500
    assert pipeline.status()["phase"] == "settling"
    logged[0] = 1499
    # A second drift while settling does not start the count again.
    assert pipeline.request("drift: still moving", {"score": 2.0})
    assert pipeline.due() is None and pipeline.status()["settling_requests"] == 1
    logged[0] = 1500
    assert pipeline.due() == ("drift: still moving", {"score": 2.0})
    assert pipeline.status()["settling_requests"] == 0
    # A request without a drift (schedule, CLI) never waits.
    pipeline.running = False
    assert pipeline.request("schedule") and pipeline.due() == ("schedule", None)


def test_retrain_without_enough_data_or_without_keys_ends_no_data(tmp_path: Path) -> None:
    box = Box(_dataset(numbered_chain(50, states=30)))
    pipeline, events, done = _pipeline(tmp_path, box, min_requests=100)
    few = pipeline.run("schedule")
    assert few["result"] == "no_data"
    assert "50 reads with keys" in few["error"] and "min_requests is 100" in few["error"]
    box.data = _dataset([], without_key=500)
    keyless = pipeline.run("schedule")
    assert keyless["result"] == "no_data"
    assert "500 reads were recorded without their keys" in keyless["error"] and "store_raw_keys" in keyless["error"]
    assert keyless["data"]["without_key"] == 500
    assert pipeline.registry is not None and pipeline.registry.versions(TENANT) == []
    assert [name for name, _ in events] == ["retrain_started", "retrain_finished"] * 2
    assert [report["result"] for report, _ in done] == ["no_data", "no_data"]


def test_retrain_past_its_time_budget_ends_timeout_and_registers_nothing(tmp_path: Path) -> None:
    box = Box(_dataset(numbered_chain(2000, states=200)))
    pipeline, events, _done = _pipeline(tmp_path, box, time_budget_seconds=1e-9)
    report = pipeline.run("schedule")
    assert report["result"] == "timeout", report
    assert "time budget" in report["error"] and "1e-09s" in report["error"]
    assert pipeline.registry is not None and pipeline.registry.versions(TENANT) == []
    assert pipeline.registry.aliases(TENANT) == {"champion": None, "challenger": None}
    assert events[-1] == ("retrain_finished", report)


def test_retrain_metrics_count_every_result_and_the_duration(tmp_path: Path) -> None:
    box = Box(_dataset(numbered_chain(2000, states=200, seed=5)))
    pipeline, _events, _done = _pipeline(tmp_path, box)
    assert {m.labels["result"]: m.value for m in pipeline.samples() if m.name == "predis_mlops_retrain_total"} == dict.fromkeys(RESULTS, 0.0)
    assert not [m for m in pipeline.samples() if m.name == "predis_mlops_retrain_duration_seconds"]
    pipeline.run("schedule")  # promoted
    pipeline.run("schedule")  # same data: rejected or registered
    second = pipeline.last_result
    assert second is not None
    box.data = _dataset([])
    pipeline.run("schedule")  # no_data
    samples = pipeline.samples()
    totals = {m.labels["result"]: m.value for m in samples if m.name == "predis_mlops_retrain_total"}
    expected = dict.fromkeys(RESULTS, 0.0)
    expected["promoted"] = 1.0
    expected[second["result"]] += 1.0
    expected["no_data"] += 1.0
    assert totals == expected
    assert all(m.kind == "counter" for m in samples if m.name == "predis_mlops_retrain_total")
    (duration,) = [m for m in samples if m.name == "predis_mlops_retrain_duration_seconds"]
    assert duration.kind == "summary" and duration.count == 3.0 and duration.value >= 0.0
    ratios = {m.name: m.value for m in samples if m.name.endswith("_hit_ratio")}
    assert ratios["predis_mlops_candidate_hit_ratio"] == second["candidate_hit_ratio"]
    assert ratios["predis_mlops_champion_hit_ratio"] == second["champion_hit_ratio"]
    assert ratios["predis_mlops_baseline_hit_ratio"] == second["baseline_hit_ratio"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_retrain_requests_are_refused_when_off_and_coalesced_within_the_interval(tmp_path: Path) -> None:
    clock = Clock()
    box = Box(_dataset([]))  # every run ends no_data at once
    off, _events, _done = _pipeline(tmp_path, box, clock=clock, enabled=False)
    assert off.request("drift: x") is False
    assert off.due() is None and off.status()["pending"] is None

    pipeline, _events, _done = _pipeline(tmp_path, box, clock=clock, min_interval_seconds=300.0)
    assert pipeline.due() is None  # nothing asked, no schedule
    assert pipeline.request("drift: one", {"status": "drift"}) is True
    assert pipeline.due() == ("drift: one", {"status": "drift"})
    assert pipeline.running and pipeline.due() is None  # one run at a time
    pipeline.run("drift: one")
    assert not pipeline.running
    clock.now += 10
    assert pipeline.request("drift: two") and pipeline.request("drift: three")
    assert pipeline.due() is None  # within min_interval_seconds of the last start
    assert pipeline.status()["pending"] == "drift: three"  # the later request replaced the earlier
    clock.now += 289
    assert pipeline.due() is None
    clock.now += 1
    assert pipeline.due() == ("drift: three", None)
    pipeline.run("drift: three")
    clock.now += 1000
    assert pipeline.due() is None  # both requests were served by the runs


def test_retrain_interval_schedules_runs(tmp_path: Path) -> None:
    clock = Clock()
    box = Box(_dataset([]))
    pipeline, _events, _done = _pipeline(tmp_path, box, clock=clock, interval_seconds=100.0, min_interval_seconds=0.0)
    assert pipeline.due() == ("schedule", None)  # never ran: due at once
    report = pipeline.run("schedule")
    assert report["reason"] == "schedule"
    clock.now += 99
    assert pipeline.due() is None
    clock.now += 1
    assert pipeline.due() == ("schedule", None)
    pipeline.run("schedule")
    # A drift request before the schedule comes due runs under its own reason.
    clock.now += 10
    pipeline.request("drift: y")
    assert pipeline.due() == ("drift: y", None)


# ----------------------------------------------------------------------------- 4. ring dataset
def _logged_cache(log: AccessLog) -> Cache:
    cache = Cache(numpy, max_keys=32, max_memory_bytes=1 << 20, eviction="lru")
    cache.access_hook = log.hook
    return cache


def _workload(cache: Cache) -> list[bytes]:
    """Reads, writes, deletes and evictions; returns the keys read, in order."""
    reads: list[bytes] = []
    cache.set(b"a", b"1")
    cache.get(b"a")
    reads.append(b"a")
    cache.get(b"missing")
    reads.append(b"missing")
    cache.mset([(b"k:%d" % i, b"v") for i in range(20)])
    cache.mset([(b"k:%d" % i, b"v") for i in range(20, 40)])  # evicts 9 (max_keys 32)
    batch = [b"k:%d" % i for i in range(20, 40)] + [b"a"]  # > SMALL_BATCH: the batched path
    cache.mget(batch)
    reads.extend(batch)
    cache.delete([b"k:30"])
    for i in (30, 31, 5):
        cache.get(b"k:%d" % i)
        reads.append(b"k:%d" % i)
    cache.set(b"z", b"2")
    return reads


def test_ring_dataset_keeps_the_reads_in_order_with_their_keys() -> None:
    log = AccessLog(1024, store_raw_keys=True)
    reads = _workload(_logged_cache(log))
    got = log.read(0)
    assert set(got.events["op"].tolist()) > {OP_GET, OP_SET}  # the ring holds more than reads
    data = dataset_from_ring(log, 10_000)
    assert data.keys == reads
    assert (data.source, data.recent, data.history, data.without_key) == ("ring", len(reads), 0, 0)
    assert data.recent_events.shape[0] == len(reads) and bool((data.recent_events["op"] == OP_GET).all())
    newest = dataset_from_ring(log, 5)
    assert newest.keys == reads[-5:] and newest.recent == 5 and newest.recent_events.shape[0] == 5
    assert newest.recent_events.tobytes() == data.recent_events[-5:].tobytes()
    assert newest.public()["requests"] == 5


def test_ring_dataset_holds_only_what_the_ring_still_has() -> None:
    log = AccessLog(16, store_raw_keys=True)
    cache = _logged_cache(log)
    keys = [b"r:%d" % i for i in range(40)]
    for key in keys:
        cache.get(key)
    assert dataset_from_ring(log, 1000).keys == keys[-16:]


def test_ring_dataset_without_raw_keys_counts_the_reads_it_cannot_use() -> None:
    log = AccessLog(1024, store_raw_keys=False)
    reads = _workload(_logged_cache(log))
    data = dataset_from_ring(log, 10_000)
    assert data.keys == [] and data.recent == 0
    assert data.without_key == len(reads)
    assert "store_raw_keys" in RetrainPipeline._no_data_reason(data, RetrainSettings())


# ----------------------------------------------------------------------------- 5. segment dataset
SEGMENTS = 5
PER_SEGMENT = 100


def _segment_reads(index: int) -> list[bytes]:
    """The GET keys of segment ``index``: 60 reads, 20 writes, 20 reads."""
    base = index * PER_SEGMENT
    return [b"key:%d" % i for i in [*range(base, base + 60), *range(base + 80, base + 100)]]


def _write_segments(tmp_path: Path) -> Path:
    ring = AccessLog(1024, store_raw_keys=True)
    ex = exporter(ring, section(tmp_path, store_raw_keys=True, segment_max_events=PER_SEGMENT))
    for index in range(SEGMENTS):
        base = index * PER_SEGMENT
        append(ring, base, 60, op=OP_GET, keys=True)
        append(ring, base + 60, 20, op=OP_SET, keys=True)
        append(ring, base + 80, 20, op=OP_GET, keys=True)
        assert ex.flush() == "exporting"
    directory = tmp_path / "export"
    assert len(list_segments(directory)) == SEGMENTS
    return directory


def test_segment_dataset_puts_sampled_history_before_the_newest_reads(tmp_path: Path) -> None:
    directory = _write_segments(tmp_path)
    all_reads = [k for i in range(SEGMENTS) for k in _segment_reads(i)]
    for seed in range(8):
        data = dataset_from_segments(str(directory), [KEY], recent_requests=150, history_requests=120, rng=random.Random(seed))
        assert (data.source, data.recent, data.history, data.without_key, data.segments_failed) == ("segments", 150, 120, 0, 0)
        assert data.keys[120:] == all_reads[-150:]  # the newest reads, last and in order
        assert data.recent_events.shape[0] == 150 and bool((data.recent_events["op"] == OP_GET).all())
        history = data.keys[:120]
        numbers = [int(k.split(b":")[1]) for k in history]
        older = {k for i in range(SEGMENTS - 2) for k in _segment_reads(i)}  # the two newest hold the recent reads
        assert set(history) <= older
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # in time order
        assert data.segments_read == 2 + 2  # two recent segments, two sampled older ones


def test_segment_dataset_skips_a_tampered_segment_and_counts_it(tmp_path: Path) -> None:
    directory = _write_segments(tmp_path)
    first = directory / list_segments(directory)[0]
    blob = bytearray(first.read_bytes())
    blob[-1] ^= 0x01
    first.write_bytes(bytes(blob))
    data = dataset_from_segments(str(directory), [KEY], recent_requests=150, history_requests=10_000, rng=random.Random(0))
    assert data.segments_failed == 1 and data.segments_read == SEGMENTS - 1
    expected_history = [k for i in (1, 2) for k in _segment_reads(i)]
    assert data.keys[: data.history] == expected_history
    assert data.keys[data.history :] == [k for i in (3, 4) for k in _segment_reads(i)][-150:]
    assert not set(_segment_reads(0)) & set(data.keys)
    assert data.public()["segments_failed"] == 1


# ----------------------------------------------------------------------------- 6. canary routing
def _canary(settings: RolloutSettings, challenger: tuple[Any, Vocabulary] | None = None) -> tuple[Prefetcher, Rollout, RecordingOrigin, list, tuple]:
    (champ, champ_vocab), (chall, chall_vocab) = champion_and_challenger()
    if challenger is not None:
        chall, chall_vocab = challenger
    origin = RecordingOrigin()
    cache = big_cache()
    prefetcher = Prefetcher(cache, origin, champ, champ_vocab, CANARY_PREFETCH, sync=True, learn_online=False, version=1)
    decisions: list = []
    rollout = Rollout(TENANT, 1, 2, settings, on_decision=lambda r, d: decisions.append(d))
    prefetcher.start_rollout(rollout, chall, chall_vocab, 2)
    return prefetcher, rollout, origin, decisions, (champ, chall)


def _settings(**overrides: Any) -> RolloutSettings:
    values: dict[str, Any] = {
        "steps": (0.5, 1.0),
        "block_requests": 10,
        "min_blocks": 2,
        "max_blocks": 50,
        "margin": 0.0,
        "max_inference_seconds_per_access": NO_TIME_GUARD,
        **overrides,
    }
    return RolloutSettings(**values)


def _drive(prefetcher: Prefetcher, hit_arm: int, limit: int = 5000) -> None:
    """Serve reads whose hits come only from arm ``hit_arm`` until the rollout ends."""
    for i in range(limit):
        rollout = prefetcher.rollout
        if rollout is None:
            return
        key = b"drive:%d" % i
        prefetcher.observe([key], [rollout.arm_of(key) == hit_arm])
    raise AssertionError("the rollout did not finish")


def test_each_model_prefetches_only_for_the_keys_of_its_arm() -> None:
    prefetcher, rollout, origin, decisions, _models = _canary(_settings())
    for key in X:
        prefetcher.cache.get(key)
        prefetcher.observe([key])  # no hits: nothing to judge, only routing
    loaded = set(origin.asked)
    champion_keys = {k for k in loaded if k.startswith(b"a:")}
    challenger_keys = {k for k in loaded if k.startswith(b"b:")}
    assert loaded == champion_keys | challenger_keys
    assert all(rollout.arm_of(k) == 0 for k in champion_keys)
    assert all(rollout.arm_of(k) == 1 for k in challenger_keys)
    # Exactly each model's predictions that fall in its arm, nothing dropped.
    assert champion_keys == {a for a in A if rollout.arm_of(a) == 0}
    assert challenger_keys == {b for b in B if rollout.arm_of(b) == 1}
    assert 50 < len(champion_keys) < 250 and 50 < len(challenger_keys) < 250
    assert prefetcher.cache.stats.prefetch_inserted == len(loaded)
    arms = rollout.status()["arms"]
    assert (arms["champion"]["prefetches"], arms["challenger"]["prefetches"]) == (len(champion_keys), len(challenger_keys))
    assert decisions == [] and prefetcher.rollout is rollout and prefetcher.stats.challenger_errors == 0


def test_a_promoted_challenger_becomes_the_model() -> None:
    prefetcher, rollout, origin, decisions, (_champ, chall) = _canary(_settings())
    unserved = [i for i in range(len(X)) if rollout.arm_of(B[i]) == 0]  # b:i the challenger could not load yet
    _drive(prefetcher, hit_arm=1)
    assert [d.action for d in decisions] == [PROMOTE]
    assert rollout.state == "promoted"
    assert prefetcher.model is chall and prefetcher.version == 2 and prefetcher.rollout is None
    assert prefetcher.test_result[0] is True
    # The challenger now decides for every key.
    i = unserved[0]
    prefetcher.observe([X[i]])
    assert origin.asked[-1] == B[i]


def test_a_rolled_back_challenger_leaves_the_champion() -> None:
    prefetcher, rollout, origin, decisions, (champ, _chall) = _canary(_settings())
    _drive(prefetcher, hit_arm=0)
    assert [d.action for d in decisions] == [ROLLBACK]
    assert rollout.state == "rolled_back"
    assert prefetcher.model is champ and prefetcher.version == 1 and prefetcher.rollout is None
    # The champion decides for every key again, its former challenger arm included.
    i = next(i for i in range(len(X)) if rollout.arm_of(A[i]) == 1)
    prefetcher.observe([X[i]])
    assert origin.asked[-1] == A[i]


class BrokenModel:
    """A challenger that learns but cannot predict."""

    name = "broken"

    def observe(self, ids: Any) -> None:
        pass

    def predict(self, ids: Any, k: int) -> Any:
        raise RuntimeError("boom")


def test_a_failing_challenger_is_rolled_back_by_the_errors_guardrail() -> None:
    prefetcher, rollout, origin, decisions, (champ, _chall) = _canary(_settings(max_errors=0), challenger=(BrokenModel(), Vocabulary(64)))
    i = next(i for i in range(len(X)) if rollout.arm_of(A[i]) == 0)
    prefetcher.cache.get(X[i])
    prefetcher.observe([X[i]])
    assert prefetcher.stats.challenger_errors == 1
    assert [d.action for d in decisions] == [ROLLBACK]
    assert "guardrail" in decisions[0].reason and "RuntimeError: boom" in decisions[0].reason
    assert rollout.errors == 1 and rollout.state == "rolled_back"
    assert prefetcher.rollout is None and prefetcher.model is champ and prefetcher.version == 1
    assert origin.asked == [A[i]]  # the champion served that very step
    j = next(j for j in range(len(X)) if rollout.arm_of(A[j]) == 1)
    prefetcher.observe([X[j]])
    assert origin.asked[-1] == A[j] and prefetcher.stats.challenger_errors == 1


# ----------------------------------------------------------------------------- 7. learn_online
@pytest.mark.parametrize("learn_online", [True, False])
def test_a_full_vocabulary_is_cleared_only_when_learning_online(learn_online: bool) -> None:
    # A stride model on keys without digits predicts nothing, so only the reset is seen.
    keys = [("v-" + "".join(chr(97 + int(d)) for d in str(i))).encode() for i in range(30)]
    vocab = Vocabulary(8)
    model = make_model("stride", vocab)
    cache = big_cache(MemoryOrigin())
    prefetcher = Prefetcher(cache, cache.origin, model, vocab, CANARY_PREFETCH, sync=True, learn_online=learn_online)
    for key in keys:
        cache.get(key)
        prefetcher.observe([key])
    assert prefetcher.stats.observed == 30
    if learn_online:
        assert prefetcher.stats.vocabulary_resets >= 3
        assert prefetcher.status()["vocabulary_resets"] == prefetcher.stats.vocabulary_resets
    else:
        assert prefetcher.stats.vocabulary_resets == 0
        assert len(vocab) == vocab.capacity and vocab.keys == keys[:8]
        assert vocab.full_misses == 30 - 8
        assert prefetcher.status()["learn_online"] is False


def test_a_vocabulary_reset_starts_the_model_over() -> None:
    """After a reset the old model's IDs would name other keys (or none): it starts over too."""
    origin = MemoryOrigin()
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20, origin=origin, read_through=True)
    first = MarkovModel(4)
    prefetcher = Prefetcher(cache, origin, first, Vocabulary(4), sync=True)
    loads: list[bytes] = []
    load_many = origin.load_many

    def recording(keys: Any) -> Any:
        loads.extend(keys)
        return load_many(keys)

    origin.load_many = recording  # type: ignore[method-assign]
    keys = [b"k%d" % (i % 6) for i in range(40)]
    for key in keys:
        cache.get(key)
        prefetcher.observe([key])
    assert prefetcher.stats.vocabulary_resets >= 2
    assert prefetcher.stats.origin_errors == 0
    assert prefetcher.model is not first and isinstance(prefetcher.model, MarkovModel)
    # Every prefetch named a key of the stream (no stale ID decoded to a wrong key).
    prefetched = [k for k in loads if k not in keys[:1]]
    assert prefetched and set(prefetched) <= set(keys)


# ----------------------------------------------------------------------------- 8. service
def _register(registry: ModelRegistry, directory: Path, model: Any, vocab: Vocabulary) -> int:
    save_model(model, vocab, directory)
    return registry.register(TENANT, directory, {"kind": "markov"}, actor="test")


def _service(tmp_path: Path, *extra: str) -> tuple[MlopsService, list, dict]:
    overrides = [
        f"mlops.registry_dir={tmp_path / 'registry'}",
        f"mlops.tenant={TENANT}",
        "cache.prefetch.learn_online=false",
        "mlops.rollout.steps=[0.25, 0.5, 1.0]",
        "mlops.rollout.block_requests=10",
        "mlops.rollout.min_blocks=2",
        "mlops.rollout.margin=0",
        f"mlops.rollout.max_inference_seconds_per_access={NO_TIME_GUARD}",
        *extra,
    ]
    events: list[tuple[str, dict]] = []
    box: dict[str, Any] = {"prefetcher": None}
    service = MlopsService(lambda name, data: events.append((name, data)), lambda: box["prefetcher"], lambda: None, lambda data: None)
    service.configure(load_config(None, overrides=overrides))
    return service, events, box


def test_service_serves_the_registry_champion(tmp_path: Path) -> None:
    (champ, champ_vocab), _ = champion_and_challenger()
    set_learning(champ, True)  # saved state is what matters; the service decides freezing
    service, _events, _box = _service(tmp_path)
    assert service.champion() is None  # an empty registry: serve a fresh model
    assert service.registry is not None
    _register(service.registry, tmp_path / "v1", champ, champ_vocab)
    served = service.champion()
    assert served is not None
    model, vocab, version = served
    assert version == 1 and model is not champ and vocab.keys == champ_vocab.keys
    assert numpy.array_equal(model.table.succ, champ.table.succ)
    assert model.table.frozen is True  # cache.prefetch.learn_online: false
    learning, _e, _b = _service(tmp_path, "cache.prefetch.learn_online=true")
    assert learning.champion() is not None and learning.champion()[0].table.frozen is False  # type: ignore[index]
    off, _e, _b = _service(tmp_path, "mlops.serve_champion=false")
    assert off.champion() is None


def test_service_canaries_a_new_challenger_and_follows_the_registry(tmp_path: Path) -> None:
    (champ, champ_vocab), (chall, chall_vocab) = champion_and_challenger()
    service, events, box = _service(tmp_path)
    registry = service.registry
    assert registry is not None
    assert _register(registry, tmp_path / "v1", champ, champ_vocab) == 1
    model, vocab, version = service.champion()  # type: ignore[misc]
    prefetcher = Prefetcher(big_cache(), RecordingOrigin(), model, vocab, CANARY_PREFETCH, sync=True, learn_online=False, version=version)
    box["prefetcher"] = prefetcher
    service.sync()
    assert prefetcher.rollout is None and events == []  # nothing new in the registry

    # A challenger appears: the canary starts.
    assert _register(registry, tmp_path / "v2", chall, chall_vocab) == 2
    registry.promote(TENANT, 2, "challenger", "retrained", "test")
    service.sync()
    rollout = prefetcher.rollout
    assert rollout is not None and (rollout.champion_version, rollout.challenger_version) == (1, 2)
    assert events[-1] == ("rollout_started", {"tenant": TENANT, "champion_version": 1, "challenger_version": 2, "share": 0.25})
    service.sync()  # a running canary is left alone
    assert prefetcher.rollout is rollout and len(events) == 1

    # The challenger wins: a step, then the promotion, each audited.
    audit_before = len(registry.audit(TENANT))
    _drive(prefetcher, hit_arm=1)
    assert [name for name, _ in events[1:]] == ["rollout_advance", "rollout_promote", "model_served"]
    assert events[-1][1] == {"tenant": TENANT, "version": 2, "alias": "champion"}
    assert registry.aliases(TENANT) == {"champion": 2, "challenger": None}
    written = registry.audit(TENANT)[audit_before:]
    assert [(e["action"], e["alias"], e["from"], e["to"]) for e in written] == [
        ("canary_step", "challenger", 2, 2),
        ("promote", "champion", 1, 2),
        ("promote", "challenger", 2, None),
    ]
    assert all(e["actor"] == "predis-agent canary" for e in written)
    assert written[1]["reason"].startswith("canary: challenger better")
    assert prefetcher.version == 2 and numpy.array_equal(prefetcher.model.table.succ, chall.table.succ)
    assert service.decisions["advance"] == 1 and service.decisions["promote"] == 1
    assert service.last_rollout is not None and service.last_rollout["state"] == "promoted"
    count = len(events)
    service.sync()  # the prefetcher already serves the champion
    assert len(events) == count

    # A third version is canaried and loses: rolled back, the challenger alias cleared.
    assert _register(registry, tmp_path / "v3", champ, champ_vocab) == 3
    registry.promote(TENANT, 3, "challenger", "retrained", "test")
    service.sync()
    assert prefetcher.rollout is not None and prefetcher.rollout.challenger_version == 3
    _drive(prefetcher, hit_arm=0)
    assert events[-1][0] == "rollout_rollback" and events[-1][1]["challenger_version"] == 3
    assert registry.aliases(TENANT) == {"champion": 2, "challenger": None}
    last = registry.audit(TENANT)[-1]
    assert (last["action"], last["alias"], last["from"], last["to"]) == ("rollback", "challenger", 3, None)
    assert last["reason"].startswith("canary: ")
    assert prefetcher.version == 2 and prefetcher.rollout is None
    assert service.decisions["rollback"] == 1

    # Another writer moves the champion back to v1: the next sync serves it.
    registry.promote(TENANT, 1, "champion", "operator", "ops")
    service.sync()
    assert events[-1] == ("model_served", {"tenant": TENANT, "version": 1, "alias": "champion"})
    assert prefetcher.version == 1 and prefetcher.rollout is None
    assert prefetcher.test_result[0] is True
    assert numpy.array_equal(prefetcher.model.table.succ, champ.table.succ) and prefetcher.model.table.frozen
    assert service.status()["serving_version"] == 1


# ----------------------------------------------------------------------------- 9. registry
def test_note_audits_without_moving_an_alias(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    (champ, vocab), _ = champion_and_challenger()
    _register(registry, tmp_path / "v1", champ, vocab)
    _register(registry, tmp_path / "v2", champ, vocab)
    registry.promote(TENANT, 2, "challenger", "r", "t")
    aliases = registry.aliases(TENANT)
    count = len(registry.audit(TENANT))
    entry = registry.note(TENANT, "challenger", 2, "canary_step", "step to 50%", "canary")
    assert (entry["action"], entry["alias"], entry["from"], entry["to"], entry["reason"], entry["actor"]) == (
        "canary_step", "challenger", 2, 2, "step to 50%", "canary",
    )
    assert registry.audit(TENANT)[-1] == entry and len(registry.audit(TENANT)) == count + 1
    assert registry.aliases(TENANT) == aliases
    assert registry.champion_history(TENANT) == [1]
    with pytest.raises(RegistryError, match="unknown alias"):
        registry.note(TENANT, "canary", 2, "canary_step")
    assert len(registry.audit(TENANT)) == count + 1


def test_retire_challenger_clears_only_the_version_it_names(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.retire_challenger(TENANT, 1, "nothing here") is None  # no tenant directory yet
    (champ, vocab), _ = champion_and_challenger()
    for n in (1, 2, 3):
        _register(registry, tmp_path / f"v{n}", champ, vocab)
    registry.promote(TENANT, 2, "challenger", "r", "t")
    count = len(registry.audit(TENANT))
    assert registry.retire_challenger(TENANT, 3, "stale") is None  # the challenger moved on to another version
    assert registry.retire_challenger(TENANT, 1, "the champion") is None
    assert registry.aliases(TENANT) == {"champion": 1, "challenger": 2} and len(registry.audit(TENANT)) == count
    entry = registry.retire_challenger(TENANT, 2, "canary: worse", "canary")
    assert entry is not None
    assert (entry["action"], entry["alias"], entry["from"], entry["to"], entry["actor"]) == ("rollback", "challenger", 2, None, "canary")
    assert registry.aliases(TENANT) == {"champion": 1, "challenger": None}
    assert registry.audit(TENANT)[-1] == entry
    assert registry.retire_challenger(TENANT, 2, "again") is None
    assert len(registry.audit(TENANT)) == count + 1
    assert registry.champion_history(TENANT) == [1]  # a challenger rollback is not a champion rollback


def test_service_reads_its_dataset_from_the_exported_segments_with_the_configured_key(tmp_path: Path) -> None:
    directory = _write_segments(tmp_path)
    key_file = tmp_path / "segment.key"
    key_file.write_text(KEY.hex())
    service, _events, _box = _service(
        tmp_path,
        "collectors.access_log.enabled=true",
        "collectors.access_log.store_raw_keys=true",
        f"collectors.access_log.export_dir={directory}",
        f"collectors.access_log.encryption_key=${{file:{key_file}}}",
    )
    data = service._dataset(RetrainSettings(recent_requests=150, history_requests=0))
    all_reads = [k for i in range(SEGMENTS) for k in _segment_reads(i)]
    assert data.source == "segments" and data.segments_failed == 0
    assert data.keys == all_reads[-150:]
    # The wrong key: every segment fails verification and nothing is trained on.
    key_file.write_text(bytes(32).hex())
    service, _events, _box = _service(
        tmp_path,
        "collectors.access_log.enabled=true",
        "collectors.access_log.store_raw_keys=true",
        f"collectors.access_log.export_dir={directory}",
        f"collectors.access_log.encryption_key=${{file:{key_file}}}",
    )
    refused = service._dataset(RetrainSettings(recent_requests=150, history_requests=0))
    assert refused.keys == [] and refused.segments_failed == SEGMENTS
