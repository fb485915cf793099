# SPDX-License-Identifier: Apache-2.0
"""Prefetch models, the prefetcher and trace replay, on the real cache code."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy
import pytest

from cache_core.cache import Cache
from cache_core.eviction import LRUPolicy
from cache_core.models import (
    ContextMarkov,
    MarkovModel,
    MixtureModel,
    StrideModel,
    Vocabulary,
    make_model,
)
from cache_core.prefetch import Canary, Prefetcher, PrefetchSettings
from cache_core.replay import MemoryOrigin, replay
from tests.polling import wait_for


def ids(vocab: Vocabulary, *keys: str) -> numpy.ndarray:
    return vocab.encode_many([k.encode() for k in keys])


# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_maps_both_ways_splits_numbers_and_stops_when_full() -> None:
    v = Vocabulary(4)
    a, b = v.encode(b"blk:0099"), v.encode(b"plain")
    assert v.encode(b"blk:0099") == a and v.decode(a) == b"blk:0099"
    assert v.number_of[a] == 99 and v.width_of[a] == 4 and v.prefix_of[b] == -1
    assert v.decode(v.numbered(int(v.prefix_of[a]), 100, 4)) == b"blk:0100"
    v.encode(b"c")
    assert v.encode(b"d") == -1 and v.full_misses == 1 and len(v) == 4
    v.clear()
    assert len(v) == 0 and v.encode(b"d") == 0


# ----------------------------------------------------------------------------- models


def test_markov_learns_the_most_frequent_successor() -> None:
    v = Vocabulary(64)
    m = MarkovModel(64)
    seq = ids(v, *(["a", "b"] * 10 + ["a", "c"] * 3))
    for i in range(len(seq)):
        m.observe(seq[i : i + 1])
    top = m.predict_one(int(ids(v, "a")[0]), 2)
    assert [v.decode(c) for c, _ in top] == [b"b", b"c"]
    assert top[0][1] == pytest.approx(10 / (13 + 1))  # SHARE_PRIOR
    cand, conf = m.predict(ids(v, "a", "zzz"), 2)
    assert list(cand[0]) == [c for c, _ in top] and numpy.allclose(conf[0], [s for _, s in top])
    assert list(cand[1]) == [-1, -1]


def test_markov_batched_and_scalar_learning_agree() -> None:
    rng = numpy.random.default_rng(3)
    seq = rng.integers(0, 30, 2000).astype(numpy.int64)
    one, batch = MarkovModel(64, slots=32), MarkovModel(64, slots=32)
    for i in range(len(seq)):
        one.observe(seq[i : i + 1])
    batch.observe(seq)
    assert numpy.array_equal(numpy.sort(one.table.count, axis=1), numpy.sort(batch.table.count, axis=1))


def test_order_two_context_separates_paths_that_share_a_key() -> None:
    v = Vocabulary(64)
    m1, m2 = MarkovModel(64), ContextMarkov(256)
    seq = ids(v, *(["x", "b", "c", "y", "b", "d"] * 20))
    for i in range(len(seq)):
        m1.observe(seq[i : i + 1])
        m2.observe(seq[i : i + 1])
        if v.decode(int(seq[i])) == b"b":
            before = v.decode(int(seq[i - 1])) if i else b""
            if i > 30:
                want = b"c" if before == b"x" else b"d"
                assert v.decode(m2.predict_one(int(seq[i]), 1)[0][0]) == want
    assert m1.predict_one(int(ids(v, "b")[0]), 1)[0][1] < 0.5  # order 1 cannot tell


def test_context_hash_is_the_same_on_scalars_and_arrays() -> None:
    m = ContextMarkov(1009)
    a = numpy.array([0, 5, 123456, -1], dtype=numpy.int64)
    b = numpy.array([1, 7, 99, 3], dtype=numpy.int64)
    assert m._ctx(a, b).tolist() == [m._ctx_one(int(x), int(y)) for x, y in zip(a, b)]


def colliding_pairs(model: ContextMarkov, count: int) -> list[tuple[int, int]]:
    """``count`` distinct pairs of IDs that hash to one row of ``model``'s table."""
    by_row: dict[int, list[tuple[int, int]]] = {}
    for a in range(64):
        for b in range(64):
            row = by_row.setdefault(model._ctx_one(a, b), [])
            row.append((a, b))
            if len(row) == count:
                return row
    raise AssertionError("no row with enough pairs")


def test_a_pair_row_answers_only_the_pair_that_owns_it() -> None:
    m = ContextMarkov(13)
    (a, b), (x, y) = colliding_pairs(m, 2)
    first, second = 100, 200
    for _ in range(3):
        m.observe(numpy.array([a, b, first], dtype=numpy.int64))
        m.prev = m.last = -1
    m.prev = a
    assert [c for c, _ in m.predict_one(b, 2)] == [first]
    # (x, y) shares the row: it gets nothing of (a, b)'s successors...
    m.prev = x
    assert m.predict_one(y, 2) == []
    assert m.predict(numpy.array([x, y], dtype=numpy.int64), 2)[0][1].tolist() == [-1, -1]
    # ...and once it learns, it owns the row, which starts over empty.
    m.prev, m.last = x, y
    m.observe_one(second)
    m.prev = x
    assert [c for c, _ in m.predict_one(y, 2)] == [second]
    assert m.table.count[m._ctx_one(x, y)].sum() == 1.0
    m.prev = a
    assert m.predict_one(b, 2) == []


@pytest.mark.parametrize("frozen", [False, True])
def test_pair_row_take_overs_in_a_batch_equal_learning_one_access_at_a_time(frozen: bool) -> None:
    rng = numpy.random.default_rng(11)
    seq = rng.integers(0, 12, 3000).astype(numpy.int64)
    one, batch = ContextMarkov(7, decay_every=1 << 30), ContextMarkov(7, decay_every=1 << 30)
    warm = seq[:500]
    one.observe(warm)
    batch.observe(warm)
    one.table.frozen = batch.table.frozen = frozen
    for ident in seq[500:].tolist():
        one.observe_one(ident)
    for chunk in numpy.array_split(seq[500:], 7):
        batch.observe(chunk)
    assert numpy.array_equal(numpy.sort(one.table.count, axis=1), numpy.sort(batch.table.count, axis=1))
    for row in range(7):
        assert set(zip(one.table.succ[row].tolist(), one.table.count[row].tolist())) == set(zip(batch.table.succ[row].tolist(), batch.table.count[row].tolist()))
    assert numpy.array_equal(one.owner, batch.owner) and one.table.seen == batch.table.seen
    # Equal counts may sit in other slots (the space-saving rule picks the first least
    # counted one), so rows are compared as sets, and predictions as what each row names.
    probe = seq[-50:]
    (want, want_conf), (got, got_conf) = one.predict(probe, 4), batch.predict(probe, 4)
    assert [set(zip(w, c)) for w, c in zip(want.tolist(), want_conf.tolist())] == [set(zip(g, c)) for g, c in zip(got.tolist(), got_conf.tolist())]
    assert (want >= 0).any()


def test_an_order_two_file_without_row_owners_loads_and_answers_no_pair_until_relearned(tmp_path: Path) -> None:
    m = ContextMarkov(64)
    seq = numpy.array([1, 2, 3] * 10, dtype=numpy.int64)
    m.observe(seq)
    path = tmp_path / "m2.npz"
    m.save(path)
    again = ContextMarkov(64)
    again.load(path)
    assert numpy.array_equal(again.owner, m.owner)
    again.prev = 1
    assert [c for c, _ in again.predict_one(2, 1)] == [3]
    numpy.savez(path, succ=m.table.succ, count=m.table.count, state=numpy.array([m.prev, m.last], dtype=numpy.int64))
    old = ContextMarkov(64)
    old.load(path)
    old.prev = 1
    assert old.predict_one(2, 1) == []
    old.observe(numpy.array([1, 2, 3], dtype=numpy.int64))
    old.prev = 1
    assert [c for c, _ in old.predict_one(2, 1)] == [3]


def test_stride_names_unseen_keys_along_a_constant_step() -> None:
    v = Vocabulary(64)
    m = StrideModel(v)
    for key in ("blk:0010", "blk:0012", "blk:0014"):
        m.observe(ids(v, key))
    got = m.predict_one(int(ids(v, "blk:0014")[0]), 3)
    assert [v.decode(c) for c, _ in got] == [b"blk:0016", b"blk:0018", b"blk:0020"]
    assert got[0][1] == pytest.approx(1 - 0.5**2)
    cand, _ = m.predict(ids(v, "blk:0014"), 3)
    assert cand[0].tolist() == [c for c, _ in got]
    m.observe(ids(v, "blk:0003"))  # the step changed: no prediction until it repeats
    assert m.predict_one(int(ids(v, "blk:0003")[0]), 2) == []


def test_stride_never_predicts_negative_numbers() -> None:
    v = Vocabulary(64)
    m = StrideModel(v)
    for key in ("k4", "k2", "k0"):
        m.observe(ids(v, key))
    assert m.predict_one(int(ids(v, "k0")[0]), 2) == []


def test_mixture_learns_which_expert_to_trust() -> None:
    v = Vocabulary(4096)
    m = MixtureModel(v, 4096)
    for n in range(400):
        seq = ids(v, f"s:{n}")
        m.observe(seq)
        m.predict_one(int(seq[0]), 2)
    stride, markov1, _ = m.precision.tolist()
    assert stride > 0.9 and markov1 < 0.6


@pytest.mark.parametrize("name", ["stride", "markov", "model", "federated"])
def test_models_save_and_load_their_learned_state(name: str, tmp_path: Path) -> None:
    v = Vocabulary(256)
    a = make_model(name, v)
    seq = ids(v, *(f"k:{i % 7 * 3}" for i in range(200)))
    for i in range(len(seq)):
        a.observe(seq[i : i + 1])
    path = tmp_path / "m.npz"
    a.save(path)
    b = make_model(name, v)
    b.load(path)
    probe = seq[-1:]
    for x, y in zip(a.predict(probe, 2), b.predict(probe, 2)):
        assert numpy.array_equal(x, y)
    assert b.nbytes > 0
    with pytest.raises(ValueError):
        make_model("nope", v)


def test_loading_a_model_of_another_shape_is_refused(tmp_path: Path) -> None:
    MarkovModel(16).save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="shape"):
        MarkovModel(32).load(tmp_path / "m.npz")


# ----------------------------------------------------------------------------- cache accounting


def small_cache(entries: int = 4, **kw: Any) -> Cache:
    return Cache(numpy, max_keys=entries, max_memory_bytes=1 << 20, eviction="lru", **kw)


def test_prefetched_entries_are_counted_used_or_wasted() -> None:
    c = small_cache()
    c.mset([(b"p1", b"x"), (b"p2", b"y")], prefetched=True)
    assert c.stats.prefetch_inserted == 2 and c.stats.sets == 0
    assert c.get(b"p1") == b"x" and c.get(b"p1") == b"x"
    assert c.stats.prefetch_used == 1  # the first demand hit only
    c.set(b"p2", b"client")  # overwritten unread
    assert c.stats.prefetch_wasted == 1
    c.mset([(b"p3", b"z")], prefetched=True)
    c.delete([b"p3"])
    assert c.stats.prefetch_wasted == 2


def test_a_prefetch_never_replaces_an_existing_value() -> None:
    c = small_cache()
    c.set(b"k", b"client")
    c.mset([(b"k", b"stale"), (b"n", b"new")], prefetched=True)
    assert c.get(b"k") == b"client" and c.stats.prefetch_inserted == 1


def test_contains_many_counts_nothing() -> None:
    c = small_cache()
    c.set(b"a", b"1")
    assert c.contains_many([b"a", b"b"]) == [True, False]
    assert c.stats.hits == 0 and c.stats.misses == 0


def test_lru_evicts_the_least_recently_used() -> None:
    p = LRUPolicy(8)
    p.on_insert(numpy.array([0, 1, 2]), numpy.zeros(3, dtype=numpy.uint64))
    p.on_access(numpy.array([0]))
    assert p.victims(2).tolist() == [1, 2]
    p.on_remove(numpy.array([1]), evicted=True)
    assert p.victims(1).tolist() == [2]


# ----------------------------------------------------------------------------- prefetcher


class FlakyOrigin(MemoryOrigin):
    def __init__(self) -> None:
        super().__init__(8)
        self.fail = False

    def load_many(self, keys: Any) -> list[bytes | None]:
        if self.fail:
            raise ConnectionError("origin down")
        return super().load_many(keys)


def test_prefetcher_loads_predictions_and_counts_what_happened() -> None:
    c = small_cache(64)
    origin = FlakyOrigin()
    v = Vocabulary(256)
    pf = Prefetcher(c, origin, StrideModel(v), v, PrefetchSettings(depth=2, threshold=0.1, adaptive=False), sync=True)
    for n in range(10):
        key = f"r:{n}".encode()
        c.get(key) or c.set(key, b"demand")
        pf.observe([key])
    status = pf.status()
    assert status["loaded"] >= 8 and c.stats.prefetch_used >= 7
    origin.fail = True
    pf.observe([b"r:10"])
    assert pf.status()["origin_errors"] == 1  # counted, nothing raised


def test_bandwidth_budget_caps_prefetched_keys_per_second() -> None:
    now = [0.0]
    c = small_cache(256)
    v = Vocabulary(1024)
    settings = PrefetchSettings(depth=4, threshold=0.0, adaptive=False, max_keys_per_second=4)
    pf = Prefetcher(c, MemoryOrigin(8), StrideModel(v), v, settings, sync=True, clock=lambda: now[0])
    for n in range(20):
        pf.observe([f"b:{n}".encode()])
    assert pf.stats.issued <= 4 and pf.stats.skipped_bandwidth > 0
    now[0] += 10.0
    before = pf.stats.issued
    pf.observe([b"b:20"])
    assert pf.stats.issued > before


def test_adaptive_threshold_rises_when_predictions_are_not_used() -> None:
    c = small_cache(50)
    v = Vocabulary(1 << 14)
    settings = PrefetchSettings(depth=2, threshold=0.05, adaptive=True, adapt_every=32, target_precision=0.3)
    pf = Prefetcher(c, MemoryOrigin(8), MarkovModel(1 << 14), v, settings, sync=True)
    rng = numpy.random.default_rng(0)
    for x in rng.integers(0, 2000, 6000).tolist():
        key = f"u:{x}".encode()
        c.get(key) or c.set(key, b"v")
        pf.observe([key])
    assert pf.threshold > settings.threshold


def test_a_new_prefetcher_judges_only_its_own_prefetches() -> None:
    """A cache outlives its prefetchers (and carries its counters across a rebuild): the
    prefetches of an earlier one, never read, do not raise a new one's threshold."""
    c = small_cache(50)
    c.stats.prefetch_inserted = 10_000  # an earlier prefetcher's, none of them used
    v = Vocabulary(256)
    settings = PrefetchSettings(depth=2, threshold=0.1, adaptive=True, adapt_every=32, target_precision=0.3)
    pf = Prefetcher(c, MemoryOrigin(8), StrideModel(v), v, settings, sync=True)
    for n in range(3):
        key = f"s:{n}".encode()
        c.get(key) or c.set(key, b"demand")
        pf.observe([key])
    assert c.stats.prefetch_inserted - 10_000 < settings.adapt_every
    assert pf.threshold == settings.threshold


def test_hints_load_what_the_client_names() -> None:
    c = small_cache(16)
    v = Vocabulary(64)
    pf = Prefetcher(c, MemoryOrigin(8), MarkovModel(64), v, sync=True)
    assert pf.hint([b"h1", b"h2", b"h1"]) == 2
    assert c.contains_many([b"h1", b"h2"]) == [True, True] and c.stats.prefetch_inserted == 2


def test_async_prefetcher_works_off_the_calling_thread() -> None:
    c = small_cache(64)
    v = Vocabulary(256)
    pf = Prefetcher(c, MemoryOrigin(8), StrideModel(v), v, PrefetchSettings(threshold=0.1, adaptive=False))
    try:
        for n in range(6):
            pf.observe([f"a:{n}".encode()])
        assert pf.wait_idle(10)
        deadline_ok = c.contains_many([b"a:6"]) == [True]
        assert deadline_ok and pf.status()["observed"] == 6
    finally:
        pf.close()


# ----------------------------------------------------------------------------- replay


def keys_of(values: Any, prefix: str = "k") -> list[bytes]:
    return [f"{prefix}:{x}".encode() for x in values]


def markov_chain(rng: numpy.random.Generator, n: int, states: int, stay: float = 0.9) -> list[int]:
    nxt = rng.permutation(states)
    out, cur = [], 0
    r, jumps = rng.random(n), rng.integers(0, states, n)
    for i in range(n):
        out.append(cur)
        cur = int(nxt[cur]) if r[i] < stay else int(jumps[i])
    return out


def test_replay_counts_requests_and_demand_hits_only() -> None:
    trace = keys_of([1, 2, 1, 2, 3])
    result = replay(trace, 10)
    assert result == {**result, "requests": 5, "hits": 2, "prefetches": 0, "prefetch_precision": None}
    assert result["hit_ratio"] == pytest.approx(0.4)


def test_sequential_scan_reaches_95_percent_with_stride() -> None:
    trace = keys_of(range(5000))
    assert replay(trace, 50, prefetch="none")["hit_ratio"] == 0.0
    assert replay(trace, 50, prefetch="stride")["hit_ratio"] >= 0.95
    assert replay(trace, 50, prefetch="model")["hit_ratio"] >= 0.95


def test_model_matches_markov_on_a_markov_chain_and_backs_off_on_zipf() -> None:
    rng = numpy.random.default_rng(5)
    chain = keys_of(markov_chain(rng, 8000, 1000))
    markov = replay(chain, 50, prefetch="markov")["hit_ratio"]
    model = replay(chain, 50, prefetch="model")["hit_ratio"]
    assert model >= markov - 0.01 and model > replay(chain, 50)["hit_ratio"] + 0.3
    p = numpy.arange(1, 2001, dtype=float) ** -1.0
    zipf = keys_of(rng.choice(2000, size=8000, p=p / p.sum()))
    none = replay(zipf, 100)["hit_ratio"]
    assert replay(zipf, 100, prefetch="model")["hit_ratio"] >= none - 0.005


def test_replay_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="policy"):
        replay([b"a"], 1, policy="fifo")
    with pytest.raises(ValueError, match="prefetch"):
        replay([b"a"], 1, prefetch="magic")


@pytest.mark.integration  # runs python -m agent
def test_replay_cli_prints_the_documented_json(tmp_path: Path) -> None:
    trace = tmp_path / "t.txt"
    trace.write_text("\n".join(f"s:{i}" for i in range(300)) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "agent", "replay", str(trace), "--cache-entries", "20", "--prefetch", "stride", "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    result = json.loads(out.stdout)
    assert set(result) == {"requests", "hits", "hit_ratio", "prefetches", "prefetch_used", "prefetch_precision", "policy", "prefetch"}
    assert result["requests"] == 300 and result["hit_ratio"] > 0.95 and result["prefetch"] == "stride"
    bad = subprocess.run([sys.executable, "-m", "agent", "replay", str(tmp_path / "none"), "--cache-entries", "2"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot read" in bad.stderr


class _GatedOrigin(MemoryOrigin):
    """Holds its first load until the test opens the gate (the worker is then busy)."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.gate = threading.Event()
        self.entered = threading.Event()

    def load_many(self, keys: Any) -> list[bytes | None]:
        self.entered.set()
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        return super().load_many(keys)


def test_a_worker_behind_joins_the_queued_batches_into_one_step() -> None:
    origin = _GatedOrigin()
    cache = Cache(numpy, max_keys=1024, max_memory_bytes=1 << 22, origin=origin, read_through=False)
    vocab = Vocabulary(1024)
    model = MarkovModel(vocab.capacity)
    settings = PrefetchSettings(depth=1, predict_last=1, threshold=0.0, adaptive=False, max_batch_keys=64)
    prefetcher = Prefetcher(cache, origin, model, vocab, settings)
    try:
        # A hint keeps the worker at the origin...
        prefetcher.hint([b"hinted"])
        assert origin.entered.wait(timeout=10)
        # Behind it: 20 single reads of a chain c0 -> c1 -> ... -> c19, queued one by one.
        chain = [b"c%d" % i for i in range(20)]
        for key in chain:
            prefetcher.observe([key], [False])
        origin.gate.set()
        assert prefetcher.wait_idle(timeout=10)
    finally:
        prefetcher.close()
    st = prefetcher.stats
    assert st.observed == len(chain)
    assert st.coalesced_batches == len(chain) - 1  # one step for the whole backlog
    # Joined, the reads were still learned in order: every chain transition is known.
    assert_learned_in_order(model, vocab, chain)


def assert_learned_in_order(model: MarkovModel, vocab: Vocabulary, chain: list[bytes]) -> None:
    """``model`` predicts each key of ``chain`` from the one before."""
    for first, second in zip(chain, chain[1:]):
        got = model.predict_one(vocab.encode(first), 1)
        assert got and vocab.decode(got[0][0]) == second


def test_the_rest_after_a_step_keeps_the_worker_within_its_cpu_share() -> None:
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    vocab = Vocabulary(64)
    rest = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), vocab, PrefetchSettings(max_cpu_share=0.2, max_pause_seconds=0.05), sync=True).rest_after
    assert rest(0.001) == pytest.approx(0.004)  # busy 1 ms, idle 4 ms: 20 % of the time
    assert rest(1.0) == 0.05  # never longer than max_pause_seconds
    assert rest(0.0) == 0.0
    unbounded = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), vocab, PrefetchSettings(max_cpu_share=1.0), sync=True)
    assert unbounded.rest_after(1.0) == 0.0


class _Rests:
    """Stands in for the worker's rest: records what it was asked and holds the worker
    until the test lets it go."""

    def __init__(self) -> None:
        import threading

        self.asked: list[float] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.entered.set()
        assert self.gate.wait(timeout=10)


def resting_after_first_read(first: bytes, **settings: Any) -> tuple[Prefetcher, MarkovModel, Vocabulary, _Rests]:
    """A running prefetcher (Markov model, every candidate loaded) that has stepped on
    ``first`` and is now held in its rest by the returned :class:`_Rests`."""
    cache = Cache(numpy, max_keys=1024, max_memory_bytes=1 << 22)
    vocab = Vocabulary(1024)
    model = MarkovModel(vocab.capacity)
    rests = _Rests()
    chosen = PrefetchSettings(depth=1, predict_last=1, threshold=0.0, adaptive=False, **settings)
    prefetcher = Prefetcher(cache, MemoryOrigin(), model, vocab, chosen, rest=rests)
    prefetcher.observe([first], [False])
    assert rests.entered.wait(timeout=10)
    return prefetcher, model, vocab, rests


def test_reads_that_arrive_while_the_worker_rests_are_learned_as_one_batch() -> None:
    chain = [b"c%d" % i for i in range(20)]
    prefetcher, model, vocab, rests = resting_after_first_read(chain[0], max_cpu_share=0.05, max_pause_seconds=1.0)
    try:
        # The first step took some CPU time, so the worker rests 19x as long (capped).
        assert 0 < rests.asked[0] <= 1.0
        for key in chain[1:]:
            prefetcher.observe([key], [False])
        rests.gate.set()
        assert prefetcher.wait_idle(timeout=10)
    finally:
        prefetcher.close()
    st = prefetcher.stats
    assert st.observed == 20 and st.steps == 2 and st.coalesced_batches == 18
    assert st.rest_seconds == pytest.approx(sum(rests.asked))
    assert_learned_in_order(model, vocab, chain)


def test_a_worker_with_the_whole_core_never_rests() -> None:
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    rests = _Rests()
    rests.gate.set()
    prefetcher = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), PrefetchSettings(max_cpu_share=1.0), rest=rests)
    try:
        for i in range(5):
            prefetcher.observe([b"k%d" % i])
        assert prefetcher.wait_idle(timeout=10)
    finally:
        prefetcher.close()
    assert rests.asked == [] and prefetcher.stats.rest_seconds == 0.0 and prefetcher.stats.observed == 5


class _LongRests(Prefetcher):
    """Asks for a rest far longer than the test waits: only the queue can end it."""

    def rest_after(self, cpu_seconds: float) -> float:
        return 60.0


def test_a_queue_half_full_ends_the_rest_so_no_batch_is_dropped() -> None:
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    settings = PrefetchSettings(queue_max_batches=8, max_pause_seconds=60.0)
    prefetcher = _LongRests(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), settings)
    try:
        prefetcher.observe([b"first"])
        # The worker took the first batch and is resting for a minute...
        wait_for(lambda: prefetcher.stats.rest_seconds > 0)
        for i in range(4):  # ...until the fourth queued batch fills half the queue.
            prefetcher.observe([b"k%d" % i])
        wait_for(lambda: prefetcher.stats.observed == 5, timeout=20)
    finally:
        prefetcher.close()
    assert prefetcher.stats.dropped_batches == 0


def test_prefetch_settings_defaults_are_the_schema_defaults() -> None:
    """Code that builds PrefetchSettings() without a config (replay, tests, embedders) gets
    what the agent gets from an empty config file, but for the bandwidth bounds and the
    model process."""
    from dataclasses import fields

    from agent.config import load_config

    config = load_config(None, text="")
    section = config.get("cache.prefetch")
    unbounded = {"max_keys_per_second", "max_bytes_per_second"}  # offline use: no rate limit
    for field in fields(PrefetchSettings):
        if field.name in ("model_process", "control_share"):
            continue
        want = 0.0 if field.name in unbounded else section[field.name]
        assert getattr(PrefetchSettings(), field.name) == want, field.name
    assert all(section[name] > 0 for name in unbounded)
    # The agent runs its models in a process of their own; code that builds a Prefetcher
    # itself runs them in the calling process unless it asks.
    assert section["model_process"] is True and PrefetchSettings().model_process is False
    # The agent keeps a control share of keys unprefetched (console.control_share); offline
    # use prefetches every key unless it asks.
    assert config.get("console.control_share") > 0 and PrefetchSettings().control_share == 0


def test_reads_that_queue_up_during_a_rest_are_gathered_into_one_batch() -> None:
    """Reads came faster than the worker steps: after its rest it waits for min_batch_keys
    of them and learns them in one step, instead of stepping on each small batch."""
    chain = [b"g%d" % i for i in range(7)]
    prefetcher, model, vocab, rests = resting_after_first_read(chain[0], max_cpu_share=0.5, max_pause_seconds=30.0, min_batch_keys=6)
    try:
        prefetcher.observe([chain[1]], [False])
        prefetcher.observe([chain[2]], [False])
        rests.gate.set()  # the rest ends with 2 reads queued: fewer than 6, so it gathers
        wait_for(lambda: prefetcher.gathering)
        for key in chain[3:]:
            prefetcher.observe([key], [False])
        wait_for(lambda: prefetcher.stats.observed == 7)
    finally:
        prefetcher.close()
    st = prefetcher.stats
    assert st.steps == 2 and st.coalesced_batches == 5 and st.gather_seconds > 0
    assert prefetcher.queued_keys() == 0 and prefetcher.status()["queued_keys"] == 0
    assert prefetcher.status()["gather_seconds"] == pytest.approx(st.gather_seconds, abs=1e-6)
    assert_learned_in_order(model, vocab, chain)


def test_a_worker_that_finds_nothing_queued_after_its_rest_does_not_gather() -> None:
    """At a low read rate every read is learned and predicted from at once."""
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    settings = PrefetchSettings(max_pause_seconds=30.0, min_batch_keys=1000)
    prefetcher = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), settings)
    try:
        for i in range(3):
            prefetcher.observe([b"slow%d" % i])
            wait_for(lambda i=i: prefetcher.stats.observed == i + 1)
    finally:
        prefetcher.close()
    assert prefetcher.stats.steps == 3 and prefetcher.stats.gather_seconds == 0.0


@pytest.mark.parametrize("ender", ["hint", "half_full", "close"])
def test_a_gather_ends_on_a_hint_a_half_full_queue_or_close(ender: str) -> None:
    """Nothing waits the whole max_pause_seconds (an hour here, far beyond any wait of the
    test) when it must not: a client waits on its hint, a half-full queue would start
    dropping reads, close() must return."""
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    settings = PrefetchSettings(max_cpu_share=0.5, max_pause_seconds=3600.0, min_batch_keys=1000, queue_max_batches=8)
    rests = _Rests()
    prefetcher = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), settings, rest=rests)
    try:
        prefetcher.observe([b"first"])
        assert rests.entered.wait(timeout=10)
        prefetcher.observe([b"queued"])
        rests.gate.set()
        wait_for(lambda: prefetcher.gathering)
        assert prefetcher.status()["queued_keys"] == 1
        if ender == "hint":
            prefetcher.hint([b"soon"])
            wait_for(lambda: prefetcher.queued_keys() == 0 and prefetcher.stats.observed == 2)
        elif ender == "half_full":
            for i in range(3):  # 4 batches queued: half of 8
                prefetcher.observe([b"k%d" % i])
            wait_for(lambda: prefetcher.stats.observed == 5)
        else:
            closer = threading.Thread(target=prefetcher.close)
            closer.start()
            wait_for(lambda: not closer.is_alive(), timeout=60, what="close() to end the gather")
    finally:
        prefetcher.close()
    assert prefetcher.stats.dropped_batches == 0


def test_the_model_time_a_step_spends_beyond_its_reads_budget_is_owed_in_reads() -> None:
    """gather_target: the reads it takes, at max_model_seconds_per_read each, to pay for what
    the steps before spent beyond their own reads' budget (within min/max_batch_keys)."""
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    settings = PrefetchSettings(max_model_seconds_per_read=2e-6, model_cpu_floor_share=0.0, max_batch_keys=100)
    prefetcher = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), settings, sync=True)
    assert prefetcher.gather_target() == 1
    prefetcher.pacer.charge(10e-6, 1)  # 8 us over a read's 2 us: four reads owed
    assert prefetcher.gather_target() == 4
    prefetcher.pacer.charge(1e-6, 10)  # well within budget: the debt is paid, none carried over
    assert prefetcher.pacer.debt == 0.0 and prefetcher.gather_target() == 1
    prefetcher.pacer.charge(1.0, 1)  # never more than one step's worth of keys
    assert prefetcher.gather_target() == 100
    unbudgeted = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), PrefetchSettings(max_model_seconds_per_read=0.0, min_batch_keys=3), sync=True)
    unbudgeted.pacer.charge(1.0, 1)
    assert unbudgeted.pacer.debt == 0.0 and unbudgeted.gather_target() == 3


class _CostlySteps(Prefetcher):
    """Each read step reports ``cost`` seconds of model CPU time (the real step runs too)."""

    cost = 1e-3

    def _step(self, keys: list[bytes], hits: list[bool] | None = None) -> float:
        super()._step(keys, hits)
        return self.cost


def costly_prefetcher(**settings: Any) -> tuple[_CostlySteps, MarkovModel, Vocabulary, _Rests]:
    """A running prefetcher whose first step (on ``b"b0"``) cost 1 ms of model time, held
    in its rest by the returned :class:`_Rests`."""
    cache = Cache(numpy, max_keys=1024, max_memory_bytes=1 << 22)
    vocab = Vocabulary(1024)
    model = MarkovModel(vocab.capacity)
    rests = _Rests()
    chosen = PrefetchSettings(depth=1, predict_last=1, threshold=0.0, adaptive=False, max_cpu_share=0.5, **settings)
    prefetcher = _CostlySteps(cache, MemoryOrigin(), model, vocab, chosen, rest=rests)
    prefetcher.observe([b"b0"], [False])
    assert rests.entered.wait(timeout=10)
    return prefetcher, model, vocab, rests


def test_under_load_a_step_over_budget_waits_for_the_reads_that_pay_for_it() -> None:
    """1 ms of model time at 100 us per read: the worker, finding reads queued after its
    rest, waits until 10 are queued and learns them as one batch."""
    chain = [b"b%d" % i for i in range(11)]
    prefetcher, model, vocab, rests = costly_prefetcher(max_model_seconds_per_read=1e-4, model_cpu_floor_share=0.0, max_pause_seconds=60.0)
    try:
        assert prefetcher.gather_target() == 9  # (1 ms - 100 us) / 100 us
        prefetcher.observe([chain[1]], [False])
        rests.gate.set()
        wait_for(lambda: prefetcher.gathering)
        for key in chain[2:9]:
            prefetcher.observe([key], [False])
        assert prefetcher.gathering and prefetcher.stats.steps == 1  # 8 of 9 queued: still waiting
        prefetcher.observe([chain[9]], [False])
        wait_for(lambda: prefetcher.stats.observed == 10)
        assert prefetcher.stats.steps == 2
    finally:
        prefetcher.close()
    assert_learned_in_order(model, vocab, chain[:10])


def test_a_budget_wait_that_runs_out_of_time_steps_and_forgives_the_debt() -> None:
    prefetcher, _model, _vocab, rests = costly_prefetcher(max_model_seconds_per_read=1e-4, model_cpu_floor_share=0.0, max_pause_seconds=0.5)
    try:
        prefetcher.observe([b"b1"], [False])
        rests.gate.set()
        wait_for(lambda: prefetcher.stats.observed == 2)
        assert prefetcher.stats.steps == 2 and prefetcher.stats.gather_seconds > 0
        # The second step (2 reads' worth of keys, 1 ms again) was booked after the forgiven
        # first: what is owed now is that step's alone, or nothing if the worker caught up.
        assert prefetcher.pacer.debt in (0.0, pytest.approx(1e-3 - 1e-4))
    finally:
        prefetcher.close()


def test_the_floor_share_pays_a_debt_in_time_without_reads() -> None:
    """1 ms of model time owed, 1 % of a core always free: about 0.1 s pays it (not the
    minute of max_pause_seconds), and the reads the wait did not gather are not needed."""
    prefetcher, _model, _vocab, rests = costly_prefetcher(max_model_seconds_per_read=1e-6, model_cpu_floor_share=0.01, max_pause_seconds=60.0)
    try:
        prefetcher.observe([b"b1"], [False])
        assert prefetcher.gather_target() > 2  # reads alone would need ~1,000
        rests.gate.set()
        wait_for(lambda: prefetcher.stats.observed == 2)
        assert prefetcher.stats.steps == 2 and prefetcher.stats.gather_seconds > 0
    finally:
        prefetcher.close()


def second_step_on(prefetcher: Prefetcher, key: bytes) -> None:
    """Reading ``key`` ends the gather: the worker's second step learns the four reads."""
    prefetcher.observe([key], [False])
    wait_for(lambda: prefetcher.stats.observed == 4)
    assert prefetcher.stats.steps == 2


def test_once_the_floor_share_paid_the_debt_min_batch_keys_is_still_waited_for() -> None:
    """The floor ends the budget's part of a gather, not the operator's min_batch_keys."""
    prefetcher, model, vocab, rests = costly_prefetcher(max_model_seconds_per_read=1e-6, model_cpu_floor_share=0.002, min_batch_keys=3, max_pause_seconds=60.0)
    try:
        prefetcher.observe([b"b1"], [False])
        rests.gate.set()
        prefetcher.observe([b"b2"], [False])
        # The budget's wait (~0.5 s at a 0.2 % floor) ended on time; the worker still gathers.
        wait_for(lambda: prefetcher.stats.gather_seconds > 0 and prefetcher.gathering)
        assert prefetcher.stats.steps == 1
        second_step_on(prefetcher, b"b3")
    finally:
        prefetcher.close()
    assert_learned_in_order(model, vocab, [b"b0", b"b1", b"b2", b"b3"])


def test_a_worker_that_catches_up_owes_nothing_and_steps_on_every_read() -> None:
    """At a low read rate each read is learned at once, however much a step costs."""
    prefetcher, _model, _vocab, rests = costly_prefetcher(max_model_seconds_per_read=1e-6, model_cpu_floor_share=0.0, max_pause_seconds=60.0)
    try:
        rests.gate.set()  # nothing queued when the rest ends
        wait_for(lambda: prefetcher.pacer.debt == 0.0)
        for i in range(1, 4):
            prefetcher.observe([b"b%d" % i], [False])
            wait_for(lambda i=i: prefetcher.stats.observed == i + 1)
    finally:
        prefetcher.close()
    assert prefetcher.stats.steps == 4 and prefetcher.stats.gather_seconds == 0.0


def test_lookup_reports_hits_only_when_a_prefetch_observer_listens() -> None:
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    cache.set(b"here", b"v")
    assert cache.lookup([b"here", b"gone"]) == ([b"v", None], [])
    seen: list[tuple[list[bytes], list[bool]]] = []
    cache.prefetch_observer = lambda keys, hits: seen.append((list(keys), list(hits)))
    values, hits = cache.lookup([b"here", b"gone"])
    assert values == [b"v", None] and hits == [True, False]
    cache.notify_reads([b"here", b"gone"], hits)
    assert seen == [([b"here", b"gone"], [True, False])]


# ----------------------------------------------------------------------------- backing off


def test_foresight_counts_the_chosen_keys_read_within_the_horizon_only() -> None:
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    settings = PrefetchSettings(backoff_horizon_reads=4)
    prefetcher = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), settings, sync=True)
    prefetcher.foresight.score_reads([b"r0", b"r1"])  # two reads seen: what is named now counts up to read 6
    prefetcher.foresight.name([b"a", b"b", b"c"])
    prefetcher.foresight.name([b"a"])  # named again: renewed, not named twice
    assert prefetcher.stats.foresight_named == 3
    prefetcher.foresight.score_reads([b"x", b"a", b"y", b"a"])  # reads 2-5: "a" once (the repeat is no second foresight)
    assert prefetcher.stats.foresight_read == 1
    prefetcher.foresight.score_reads([b"b", b"c"])  # reads 6 and 7: past the horizon
    assert prefetcher.stats.foresight_read == 1
    assert not prefetcher.foresight.pending  # the expired names are forgotten
    assert prefetcher.foresight.window == [8, 3, 1]


def test_the_window_judges_accuracy_and_backs_off_below_the_bound() -> None:
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    settings = PrefetchSettings(backoff_below_accuracy=0.25, adapt_every=4, backoff_window_reads=100)
    prefetcher = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), settings, sync=True)
    prefetcher.foresight.window = [10, 3, 0]
    prefetcher.foresight.judge("markov")  # 3 named, 10 reads: the window is not over yet
    assert prefetcher.accuracy is None and not prefetcher.backed_off
    prefetcher.foresight.window = [12, 4, 0]
    prefetcher.foresight.judge("markov")
    assert prefetcher.accuracy == 0.0 and prefetcher.backed_off and prefetcher.stats.backoffs == 1
    assert prefetcher.foresight.window == [0, 0, 0]
    prefetcher.foresight.window = [100, 0, 0]  # a full window of reads with nothing named: still 0
    prefetcher.foresight.judge("markov")
    assert prefetcher.backed_off and prefetcher.stats.backoffs == 1
    prefetcher.foresight.window = [20, 4, 1]  # 25 %: not below the bound
    prefetcher.foresight.judge("markov")
    assert prefetcher.accuracy == 0.25 and not prefetcher.backed_off
    never = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), PrefetchSettings(backoff_below_accuracy=0.0, adapt_every=1), sync=True)
    never.foresight.window = [10, 5, 0]
    never.foresight.judge("markov")
    assert never.accuracy == 0.0 and not never.backed_off


def test_backing_off_gathers_by_its_own_budget_without_a_floor() -> None:
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20)
    settings = PrefetchSettings(max_model_seconds_per_read=0.0, model_cpu_floor_share=0.05, max_pause_seconds=0.05, backoff_model_seconds_per_read=1e-6, backoff_max_pause_seconds=0.5, max_batch_keys=10_000)
    prefetcher = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), settings, sync=True)
    assert prefetcher.pacing() == (0.0, 0.05, 0.05)
    prefetcher.pacer.charge(1e-3, 1)
    assert prefetcher.gather_target() == 1  # no budget: nothing owed
    prefetcher.foresight.backed_off = True
    assert prefetcher.pacing() == (1e-6, 0.0, 0.5)
    prefetcher.pacer.charge(1e-3, 1)
    assert prefetcher.gather_target() == 999  # 1 ms less one read's 1 us, at 1 us a read
    budgeted = Prefetcher(cache, MemoryOrigin(), MarkovModel(64), Vocabulary(64), PrefetchSettings(max_model_seconds_per_read=5e-7, max_pause_seconds=2.0), sync=True)
    budgeted.foresight.backed_off = True
    assert budgeted.pacing() == (5e-7, 0.0, 2.0)  # the lower budget and the longer wait win


def test_a_worker_that_backs_off_waits_for_reads_to_pay_even_when_caught_up() -> None:
    """Where a worker in its normal pacing steps on every read once it caught up (see
    above), one that backs off waits until the reads pay for its last step."""
    cache = Cache(numpy, max_keys=1024, max_memory_bytes=1 << 22)
    vocab = Vocabulary(1024)
    model = MarkovModel(vocab.capacity)
    rests = _Rests()
    chosen = PrefetchSettings(depth=1, predict_last=1, threshold=0.0, adaptive=False, max_cpu_share=0.5, backoff_model_seconds_per_read=2.5e-4, backoff_max_pause_seconds=60.0)
    prefetcher = _CostlySteps(cache, MemoryOrigin(), model, vocab, chosen, rest=rests)
    prefetcher.foresight.backed_off = True
    try:
        prefetcher.observe([b"b0"], [False])
        assert rests.entered.wait(timeout=10)
        assert prefetcher.gather_target() == 3  # 1 ms less 0.25 ms earned, at 0.25 ms a read
        rests.gate.set()  # nothing queued when the rest ends: it waits all the same
        wait_for(lambda: prefetcher.gathering)
        assert prefetcher.wait_idle(timeout=10)  # waiting for reads is idle
        for i in (1, 2):
            prefetcher.observe([b"b%d" % i], [False])
        assert prefetcher.gathering and prefetcher.stats.steps == 1
        second_step_on(prefetcher, b"b3")
    finally:
        prefetcher.close()
    assert_learned_in_order(model, vocab, [b"b0", b"b1", b"b2", b"b3"])


def feed_until(prefetcher: Prefetcher, batches: Any, predicate: Any, timeout: float = 30.0) -> bool:
    """Observe read batches from ``batches`` (cycled) until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for keys in batches:
            prefetcher.observe(keys, [False] * len(keys))
            if predicate():
                return True
    return bool(predicate())


def test_a_model_that_foresees_nothing_backs_off_and_one_that_foresees_comes_back() -> None:
    """Random keys: the Markov model's few guesses are never read, the worker backs off.
    Then a loop over 3,000 keys, more than the cache holds: once learned, what it guesses
    after a batch is read next and not cached (a guess already cached is no foresight a
    prefetch could use), and it stops backing off."""
    cache = Cache(numpy, max_keys=1024, max_memory_bytes=1 << 24)
    vocab = Vocabulary(1 << 16)
    model = MarkovModel(vocab.capacity)
    settings = PrefetchSettings(depth=1, predict_last=1, threshold=0.0, adaptive=False, adapt_every=32, backoff_window_reads=512, backoff_max_pause_seconds=0.05)
    prefetcher = Prefetcher(cache, MemoryOrigin(), model, vocab, settings)
    rng = numpy.random.default_rng(3)
    randomly = [[b"k%d" % n] for n in rng.integers(0, 1 << 40, size=4096).tolist()]
    looping = [[b"loop%d" % i] for i in range(3000)]
    try:
        assert feed_until(prefetcher, randomly, lambda: prefetcher.backed_off)
        assert prefetcher.accuracy is not None and prefetcher.accuracy < settings.backoff_below_accuracy
        status = prefetcher.status()["backoff"]
        assert status["active"] is True and status["backoffs"] == 1
        assert feed_until(prefetcher, looping, lambda: not prefetcher.backed_off)
        assert prefetcher.accuracy >= settings.backoff_below_accuracy
        assert prefetcher.status()["backoff"]["foreseen"] > 0
    finally:
        prefetcher.close()


def test_the_mlops_rollout_offers_what_the_canary_seam_asks() -> None:
    from agent.mlops.rollout import Rollout, RolloutSettings

    rollout: Canary = Rollout("t", 1, 2, RolloutSettings())
    assert isinstance(rollout, Canary)
    assert not isinstance(object(), Canary)
