# SPDX-License-Identifier: Apache-2.0
"""Batched model paths against the per-key semantics they replace.

The reference classes below are the models as they were before their batch paths were
vectorised (per-row Python loops, dicts for the mixture's open proposals, ``numpy.unique``
and ``argsort`` in the successor table). Every comparison is exact: the vectorised paths
reproduce the same float roundings in the same order, so learned state and predictions
are equal bit for bit, not merely close.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections import deque
from pathlib import Path
from typing import Any

import numpy
import pytest

from cache_core.models import ContextMarkov, MarkovModel, MixtureModel, StrideModel, Vocabulary, make_model, set_learning
from cache_core.models import markov as markov_module
from cache_core.models import mixture as mixture_module
from cache_core.models.base import empty_prediction, float32, split_numeric
from cache_core.models.markov import SuccessorTable
from cache_core.models.mixture import PRIOR_HITS, PRIOR_MISSES, add_ones

_NUMERIC = re.compile(rb"^(.*?)(\d{1,18})$", re.DOTALL)
BATCHES = (1, 3, 8, 9, 64, 1000)
TRACE_LENGTH = 3000


# ----------------------------------------------------------------------------- traces


def zipf_trace(seed: int, n: int = TRACE_LENGTH) -> list[bytes]:
    rng = numpy.random.default_rng(seed)
    return [b"k:%d" % x for x in (rng.zipf(1.2, n) % 1500).tolist()]


def chain_trace(seed: int, n: int = TRACE_LENGTH, states: int = 400) -> list[bytes]:
    rng = numpy.random.default_rng(seed)
    successor, out, current = rng.permutation(states), [], 0
    for stay, jump in zip(rng.random(n).tolist(), rng.integers(0, states, n).tolist()):
        out.append(b"blk:%06d" % current)
        current = int(successor[current]) if stay < 0.9 else jump
    return out


def scan_trace(seed: int, n: int = TRACE_LENGTH) -> list[bytes]:
    """Sequential and strided scans over a few prefixes, interleaved in runs."""
    rng = numpy.random.default_rng(seed)
    out: list[bytes] = []
    position = {b"blk:": 0, b"tab/7/row": 10**6, b"seg-": 500}
    while len(out) < n:
        prefix = list(position)[int(rng.integers(len(position)))]
        step = int(rng.choice([1, 1, 2, -1, 3]))
        for _ in range(int(rng.integers(5, 60))):
            position[prefix] = max(0, position[prefix] + step)
            out.append(prefix + b"%06d" % position[prefix])
    return out[:n]


def mixed_trace(seed: int, n: int = TRACE_LENGTH) -> list[bytes]:
    """Zipf bursts, scans, plain keys and awkward keys (long digit runs, newlines, empty)."""
    rng = numpy.random.default_rng(seed)
    odd = [b"", b"123", b"007", b"x" + b"9" * 25, b"a\n", b"blk:12\n", b"v1.2", b"\x00\xff7", b"plain"]
    out: list[bytes] = []
    while len(out) < n:
        kind = rng.random()
        if kind < 0.4:
            out += [b"z:%d" % x for x in (rng.zipf(1.3, 50) % 300).tolist()]
        elif kind < 0.8:
            start = int(rng.integers(0, 10**5))
            out += [b"s%d:%07d" % (start % 3, start + j) for j in range(int(rng.integers(10, 80)))]
        else:
            out += [odd[i] for i in rng.integers(0, len(odd), 20).tolist()]
    return out[:n]


TRACES = {"zipf": zipf_trace, "chain": chain_trace, "scan": scan_trace, "mixed": mixed_trace}


# ----------------------------------------------------------------------------- the reference models


class ReferenceVocabulary(Vocabulary):
    """Keys one at a time, split by the regular expression."""

    def encode(self, key: bytes) -> int:
        got = self.ids.get(key)
        if got is not None:
            return got
        if len(self.keys) >= self.capacity:
            self.full_misses += 1
            return -1
        new = len(self.keys)
        self.ids[key] = new
        self.keys.append(key)
        match = _NUMERIC.match(key)
        if match:
            prefix, digits = match.group(1), match.group(2)
            pid = self.prefixes.get(prefix)
            if pid is None:
                pid = len(self.prefix_keys)
                self.prefixes[prefix] = pid
                self.prefix_keys.append(prefix)
            self.prefix_of[new] = pid
            self.number_of[new] = int(digits)
            self.width_of[new] = len(digits) if digits[:1] == b"0" and len(digits) > 1 else 0
        return new

    def encode_many(self, keys: Any) -> numpy.ndarray:
        return numpy.array([self.encode(k) for k in keys], dtype=numpy.int64)


class ReferenceStride(StrideModel):
    """Learning and prediction one key at a time."""

    def observe(self, ids: numpy.ndarray) -> None:
        ids = ids[ids >= 0]
        pids, nums = self.vocab.prefix_of[ids], self.vocab.number_of[ids]
        ok = (pids >= 0) & (pids < self.max_prefixes)
        for p, n in zip(pids[ok].tolist(), nums[ok].tolist()):
            if self.known[p]:
                d = n - int(self.last[p])
                if d != 0 and d == int(self.step[p]):
                    self.run[p] += 1
                else:
                    self.step[p] = d
                    self.run[p] = 1 if d != 0 else 0
            self.known[p] = True
            self.last[p] = n

    def predict(self, ids: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        cand, conf = empty_prediction(ids.shape[0], k)
        valid = ids >= 0
        if not valid.any():
            return cand, conf
        pids = numpy.where(valid, self.vocab.prefix_of[numpy.maximum(ids, 0)], -1)
        ok = (pids >= 0) & (pids < self.max_prefixes)
        ok[ok] &= self.run[pids[ok]] >= self.min_run
        rows = numpy.flatnonzero(ok)
        p = pids[rows]
        base, width = self.vocab.number_of[ids[rows]], self.vocab.width_of[ids[rows]]
        numbers = base[:, None] + self.step[p][:, None] * numpy.arange(1, k + 1)[None, :]
        confidence = (1.0 - 0.5 ** numpy.minimum(self.run[p], 30)).astype(numpy.float32)
        for r, pid, w, nums, c in zip(rows.tolist(), p.tolist(), width.tolist(), numbers.tolist(), confidence.tolist()):
            for j, number in enumerate(nums):
                if number < 0:
                    break
                got = self.vocab.numbered(pid, number, w)
                if got < 0:
                    break
                cand[r, j], conf[r, j] = got, c
        return cand, conf


class ReferenceTable(SuccessorTable):
    """The batched space-saving update and top-k as first written."""

    def update(self, ctx: numpy.ndarray, nxt: numpy.ndarray) -> None:
        if self.frozen:
            return
        ok = (ctx >= 0) & (ctx < self.contexts) & (nxt >= 0)
        ctx, nxt = ctx[ok], nxt[ok]
        if ctx.shape[0] == 0:
            return
        match = self.succ[ctx] == nxt[:, None]
        has = match.any(axis=1)
        r, c = numpy.nonzero(match)
        numpy.add.at(self.count, (ctx[r], c), 1.0)
        pairs = numpy.stack([ctx[~has], nxt[~has]], axis=1)
        if pairs.shape[0]:
            uniq, weight = numpy.unique(pairs, axis=0, return_counts=True)
            while uniq.shape[0]:
                _, first = numpy.unique(uniq[:, 0], return_index=True)
                a, b, w = uniq[first, 0], uniq[first, 1], weight[first].astype(numpy.float32)
                slot = numpy.argmin(self.count[a], axis=1)
                floor = self.count[a, slot]
                self.succ[a, slot] = b
                self.count[a, slot] = floor + w
                keep = numpy.ones(uniq.shape[0], dtype=bool)
                keep[first] = False
                uniq, weight = uniq[keep], weight[keep]
        self.seen += int(ctx.shape[0])
        if self.seen >= self.decay_every:
            self.count *= 0.5
            self.seen = 0

    def top(self, ctx: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        cand, conf = empty_prediction(ctx.shape[0], k)
        ok = (ctx >= 0) & (ctx < self.contexts)
        if not ok.any():
            return cand, conf
        rows, counts = self.succ[ctx[ok]], self.count[ctx[ok]]
        kk = min(k, self.slots)
        order = numpy.argsort(-counts, axis=1, kind="stable")[:, :kk]
        top_succ = numpy.take_along_axis(rows, order, axis=1)
        top_count = numpy.take_along_axis(counts, order, axis=1)
        total = counts.sum(axis=1, keepdims=True)
        share = numpy.where(total > 0, top_count / (total + markov_module.SHARE_PRIOR), 0.0)
        share = numpy.where(top_succ >= 0, share, 0.0)
        cand[ok, :kk] = numpy.where(top_succ >= 0, top_succ, -1)
        conf[ok, :kk] = share.astype(numpy.float32)
        return cand, conf


def reference_table(table: SuccessorTable) -> ReferenceTable:
    return ReferenceTable(table.contexts, table.slots, table.decay_every)


def reference_markov(capacity: int, **kw: Any) -> MarkovModel:
    model = MarkovModel(capacity, **kw)
    model.table = reference_table(model.table)
    return model


def reference_context_markov(contexts: int, **kw: Any) -> ContextMarkov:
    model = ContextMarkov(contexts, **kw)
    model.table = reference_table(model.table)
    return model


class ReferenceMixture(MixtureModel):
    """Open proposals in dicts and deques, scores merged row by row."""

    def __init__(self, vocab: Vocabulary, capacity: int, **kw: Any) -> None:
        super().__init__(vocab, capacity, **kw)
        markov1, markov2 = self.experts[1], self.experts[2]
        self.experts = [ReferenceStride(vocab), reference_markov(capacity, slots=markov1.table.slots), reference_context_markov(capacity, slots=markov2.table.slots)]
        self._pending: list[dict[int, int]] = [{} for _ in self.experts]
        self._expiry: list[deque[tuple[int, int]]] = [deque() for _ in self.experts]

    def observe(self, ids: numpy.ndarray) -> None:
        for ident in ids.tolist():
            self.step += 1
            for e, pending in enumerate(self._pending):
                if pending and pending.pop(ident, None) is not None:
                    self.hits[e] += 1
            if self.step % self.decay_every == 0:
                self.hits *= 0.5
                self.proposals *= 0.5
        for e, expiry in enumerate(self._expiry):
            pending = self._pending[e]
            while expiry and (expiry[0][0] < self.step or len(pending) > mixture_module.MAX_PENDING):
                until, ident = expiry.popleft()
                if pending.get(ident) == until:
                    del pending[ident]
        for expert in self.experts:
            expert.observe(ids)

    def _remember(self, e: int, idents: list[int]) -> None:
        pending, expiry, until = self._pending[e], self._expiry[e], self.step + self.horizon
        for ident in idents:
            if ident not in pending:
                self.proposals[e] += 1
            pending[ident] = until
            expiry.append((until, ident))

    def predict(self, ids: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        out_c, out_s = empty_prediction(ids.shape[0], k)
        weights = self.precision
        per_expert = [expert.predict(ids, k) for expert in self.experts]
        for e, (cand, conf) in enumerate(per_expert):
            self._remember(e, cand[(cand >= 0) & (conf > 0)].tolist())
        for row in range(ids.shape[0]):
            miss_prob: dict[int, float] = {}
            for e, (cand, conf) in enumerate(per_expert):
                for ident, c in zip(cand[row].tolist(), conf[row].tolist()):
                    if ident >= 0 and c > 0:
                        miss_prob[ident] = miss_prob.get(ident, 1.0) * (1.0 - float(weights[e]) * c)
            for j, (ident, miss) in enumerate(sorted(miss_prob.items(), key=lambda item: item[1])[:k]):
                out_c[row, j], out_s[row, j] = ident, 1.0 - miss
        return out_c, out_s

    def predict_one(self, ident: int, k: int) -> list[tuple[int, float]]:
        weights = [(h + PRIOR_HITS) / (n + PRIOR_HITS + PRIOR_MISSES) for h, n in zip(self.hits.tolist(), self.proposals.tolist())]
        miss_prob: dict[int, float] = {}
        for e, expert in enumerate(self.experts):
            proposals = expert.predict_one(ident, k)
            self._remember(e, [cand for cand, _ in proposals])
            for cand, c in proposals:
                miss_prob[cand] = miss_prob.get(cand, 1.0) * (1.0 - weights[e] * c)
        # Scores rounded to float32, as predict stores them (predict_one answers as predict does).
        return [(cand, float32(1.0 - miss)) for cand, miss in sorted(miss_prob.items(), key=lambda item: item[1])[:k]]


# ----------------------------------------------------------------------------- comparisons


def assert_same_vocabulary(want: Vocabulary, got: Vocabulary) -> None:
    assert got.keys == want.keys and got.ids == want.ids
    assert got.prefix_keys == want.prefix_keys and got.full_misses == want.full_misses
    for name in ("prefix_of", "number_of", "width_of"):
        assert numpy.array_equal(getattr(got, name), getattr(want, name)), name


def assert_same_table(want: SuccessorTable, got: SuccessorTable) -> None:
    assert numpy.array_equal(got.succ, want.succ) and numpy.array_equal(got.count, want.count) and got.seen == want.seen


def assert_same_model(want: Any, got: Any) -> None:
    """Equal learned state, bit for bit (the mixture's open proposals included)."""
    if isinstance(want, StrideModel):
        for name in ("last", "step", "run", "known"):
            assert numpy.array_equal(getattr(got, name), getattr(want, name)), name
        return
    if isinstance(want, MarkovModel):
        assert_same_table(want.table, got.table)
        assert got.last == want.last
        return
    if isinstance(want, ContextMarkov):
        assert_same_table(want.table, got.table)
        assert (got.prev, got.last) == (want.prev, want.last)
        return
    assert got.step == want.step
    assert numpy.array_equal(got.hits, want.hits) and numpy.array_equal(got.proposals, want.proposals)
    for w, g in zip(want.experts, got.experts):
        assert_same_model(w, g)
    for pending, book in zip(want._pending, got._books):
        open_ids = numpy.flatnonzero(book.until != mixture_module.NOT_PENDING)
        assert dict(zip(open_ids.tolist(), book.until[open_ids].tolist())) == pending
        assert book.open == len(pending)


def assert_same_prediction(want: tuple[numpy.ndarray, numpy.ndarray], got: tuple[numpy.ndarray, numpy.ndarray]) -> None:
    assert got[0].dtype == want[0].dtype and got[1].dtype == want[1].dtype
    assert numpy.array_equal(got[0], want[0]) and numpy.array_equal(got[1], want[1])


def make_pair(kind: str, capacity: int = 1 << 14, **kw: Any) -> tuple[tuple[Vocabulary, Any], tuple[Vocabulary, Any]]:
    """(reference vocabulary, reference model), (vocabulary, model) of one kind."""
    ref_vocab, vocab = ReferenceVocabulary(capacity), Vocabulary(capacity)
    if kind == "stride":
        return (ref_vocab, ReferenceStride(ref_vocab)), (vocab, StrideModel(vocab))
    if kind == "markov":
        return (ref_vocab, reference_markov(capacity, **kw)), (vocab, MarkovModel(capacity, **kw))
    if kind == "markov2":
        return (ref_vocab, reference_context_markov(capacity, **kw)), (vocab, ContextMarkov(capacity, **kw))
    return (ref_vocab, ReferenceMixture(ref_vocab, capacity, **kw)), (vocab, MixtureModel(vocab, capacity, **kw))


def replay_both(kind: str, keys: list[bytes], batch: int, k: int = 2, capacity: int = 1 << 14, **kw: Any) -> None:
    (ref_vocab, ref), (vocab, model) = make_pair(kind, capacity, **kw)
    for start in range(0, len(keys), batch):
        chunk = keys[start : start + batch]
        want_ids, got_ids = ref_vocab.encode_many(chunk), vocab.encode_many(chunk)
        assert numpy.array_equal(got_ids, want_ids)
        ref.observe(want_ids)
        model.observe(got_ids)
        assert_same_prediction(ref.predict(want_ids, k), model.predict(got_ids, k))
    assert_same_vocabulary(ref_vocab, vocab)
    assert_same_model(ref, model)


# ----------------------------------------------------------------------------- vocabulary


def test_numeric_split_is_the_regular_expression_s() -> None:
    keys = [b"", b"1", b"123", b"007", b"x", b"blk:000123", b"a1b2", b"x" + b"9" * 25, b"9" * 18, b"9" * 19]
    keys += [b"a\n", b"blk:12\n", b"12\n\n", b"\n", b"\x00\xff7", b"v1.2", b"\xd9\xa3", b"tab/7/row000042"]
    for key in keys:
        match = _NUMERIC.match(key)
        assert split_numeric(key) == ((match.group(1), match.group(2)) if match else None), key


@pytest.mark.parametrize("trace", sorted(TRACES))
def test_encode_many_matches_encoding_one_key_at_a_time(trace: str) -> None:
    keys = TRACES[trace](5)
    for batch in (1, 9, 1000):
        ref, vocab = ReferenceVocabulary(1 << 14), Vocabulary(1 << 14)
        for start in range(0, len(keys), batch):
            assert numpy.array_equal(vocab.encode_many(keys[start : start + batch]), ref.encode_many(keys[start : start + batch]))
        assert_same_vocabulary(ref, vocab)


def test_encode_many_counts_misses_like_encode_when_the_vocabulary_fills() -> None:
    keys = mixed_trace(6, 500)
    ref, vocab = ReferenceVocabulary(97), Vocabulary(97)
    for start in range(0, len(keys), 40):
        assert numpy.array_equal(vocab.encode_many(keys[start : start + 40]), ref.encode_many(keys[start : start + 40]))
    assert vocab.full_misses > 0
    assert_same_vocabulary(ref, vocab)


def test_numbered_many_names_keys_as_numbered_does() -> None:
    ref, vocab = ReferenceVocabulary(256), Vocabulary(256)
    for v in (ref, vocab):
        v.encode_many([b"blk:0007", b"k5", b"blk:12"])
    prefixes = numpy.array([0, 1, 0, 0, 1], dtype=numpy.int64)
    numbers = numpy.array([8, 6, 123456, 7, 60], dtype=numpy.int64)
    widths = numpy.array([4, 0, 4, 4, 0], dtype=numpy.int64)
    want = [ref.numbered(p, n, w) for p, n, w in zip(prefixes.tolist(), numbers.tolist(), widths.tolist())]
    assert vocab.numbered_many(prefixes, numbers, widths).tolist() == want
    assert_same_vocabulary(ref, vocab)


# ----------------------------------------------------------------------------- models against the reference


@pytest.mark.parametrize("kind", ["stride", "markov", "markov2", "model"])
@pytest.mark.parametrize("trace", sorted(TRACES))
def test_batched_learning_and_prediction_match_the_reference(kind: str, trace: str) -> None:
    keys = TRACES[trace](11)
    for batch in BATCHES:
        replay_both(kind, keys, batch)


@pytest.mark.parametrize("kind", ["markov", "markov2"])
def test_successor_tables_match_the_reference_when_slots_overflow(kind: str) -> None:
    # Few slots, a hot key with many successors, a short decay: every placement round,
    # repeated counting of one slot, the scalar placement of a few busy contexts and
    # fractional counts after halving all occur.
    rng = numpy.random.default_rng(3)
    hot = rng.integers(0, 40, 4000)
    hot[::2] = 0
    keys = [b"h%d" % x for x in hot.tolist()]
    for batch in (9, 200, 4000):
        replay_both(kind, keys, batch, k=3, slots=3, decay_every=517)


def test_mixture_matches_the_reference_across_decay_steps_and_beyond_the_pending_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = mixed_trace(21, 2500)
    for batch in (1, 9, 333):
        replay_both("model", keys, batch, decay_every=97, horizon=7)
    monkeypatch.setattr(mixture_module, "MAX_PENDING", 5)
    for batch in (1, 4, 9, 300):
        replay_both("model", keys, batch, horizon=40)


def test_mixture_predict_one_matches_the_reference() -> None:
    keys = scan_trace(4, 1500) + chain_trace(4, 1500)
    (ref_vocab, ref), (vocab, model) = make_pair("model")
    for key in keys:
        want_ids, got_ids = ref_vocab.encode_many([key]), vocab.encode_many([key])
        ref.observe(want_ids)
        model.observe(got_ids)
        assert model.predict_one(int(got_ids[0]), 2) == ref.predict_one(int(want_ids[0]), 2)
    assert_same_model(ref, model)


def test_single_keys_then_batches_then_single_keys_again() -> None:
    keys = mixed_trace(8, 3000)
    (ref_vocab, ref), (vocab, model) = make_pair("model")
    start = 0
    for size in [1] * 200 + [500] + [1] * 100 + [3, 700] + [1] * 300 + [9] * 20:
        chunk = keys[start : start + size]
        start += size
        want_ids, got_ids = ref_vocab.encode_many(chunk), vocab.encode_many(chunk)
        ref.observe(want_ids)
        model.observe(got_ids)
        if size == 1:
            assert model.predict_one(int(got_ids[0]), 2) == ref.predict_one(int(want_ids[0]), 2)
        else:
            assert_same_prediction(ref.predict(want_ids, 2), model.predict(got_ids, 2))
    assert_same_model(ref, model)


def test_stride_predictions_fall_back_when_the_vocabulary_may_fill() -> None:
    keys = [b"blk:%04d" % i for i in range(0, 60, 2)]
    ref_vocab, vocab = ReferenceVocabulary(32), Vocabulary(32)
    ref, model = ReferenceStride(ref_vocab), StrideModel(vocab)
    want_ids, got_ids = ref_vocab.encode_many(keys), vocab.encode_many(keys)
    ref.observe(want_ids)
    model.observe(got_ids)
    assert_same_prediction(ref.predict(want_ids, 4), model.predict(got_ids, 4))
    assert_same_vocabulary(ref_vocab, vocab)
    assert vocab.full_misses > 0


def test_stride_batch_learning_equals_learning_one_key_at_a_time() -> None:
    keys = scan_trace(9) + mixed_trace(9)
    vocab = Vocabulary(1 << 14)
    ids = vocab.encode_many(keys)
    one, batch = StrideModel(vocab), StrideModel(vocab)
    for ident in ids.tolist():
        one.observe(numpy.array([ident]))
    for start in range(0, ids.shape[0], 777):
        batch.observe(ids[start : start + 777])
    assert_same_model(one, batch)


# ----------------------------------------------------------------------------- the exact-arithmetic helpers


def test_add_ones_rounds_like_adding_one_at_a_time() -> None:
    rng = numpy.random.default_rng(1)
    starts = [0.0, 0.5, 1.0, 1.0 + 5 * 2.0**-52, 2.0**13 - 2.0**-40, 2.0**52 - 0.5, 2.0**53, 7.75]
    starts += (rng.random(40) * 2.0 ** rng.integers(-3, 40, 40)).tolist()
    for x in starts:
        for count in (0, 1, 2, 3, 7, 100, 5000):
            looped = x
            for _ in range(count):
                looped += 1.0
            assert add_ones(x, count) == looped, (x, count)


def test_counting_up_slots_rounds_like_add_at() -> None:
    rng = numpy.random.default_rng(2)
    for repeats in (1, 3, markov_module.MAX_REPEAT_ROUNDS + 4):
        table = SuccessorTable(64, 4)
        # Counts with long fractions (many halvings) and large ones, where float32 rounds.
        table.count[...] = (rng.random((64, 4)) * 2.0 ** rng.integers(0, 26, (64, 4))).astype(numpy.float32)
        want = table.count.copy()
        slots = rng.integers(0, 256, 300 * repeats) % (256 // repeats)
        numpy.add.at(want.reshape(-1), slots, 1.0)
        table._count_up(slots)
        assert numpy.array_equal(table.count, want)


@pytest.mark.parametrize("slots", [1, 4, 7, 8, 16])
def test_successor_top_matches_the_reference_for_any_slot_count(slots: int) -> None:
    rng = numpy.random.default_rng(slots)
    ref, table = ReferenceTable(50, slots), SuccessorTable(50, slots)
    succ = numpy.where(rng.random((50, slots)) < 0.8, rng.integers(0, 1000, (50, slots)), -1)
    count = (rng.integers(0, 4, (50, slots)) * 2.0 ** rng.integers(-10, 20, (50, slots))).astype(numpy.float32)
    for t in (ref, table):
        t.succ[...], t.count[...] = succ, count
    ctx = numpy.concatenate([numpy.arange(-3, 53), rng.integers(0, 50, 200)])
    for k in (1, 2, slots, slots + 2):
        assert_same_prediction(ref.top(ctx, k), table.top(ctx, k))
        assert_same_prediction(ref.top(ctx[3:50], k), table.top(ctx[3:50], k))
        # A few rows at a time take the scalar ranking (markov_module.SCALAR_ROWS).
        for start in range(0, ctx.shape[0], 5):
            for rows in (1, 3, markov_module.SCALAR_ROWS):
                assert_same_prediction(ref.top(ctx[start : start + rows], k), table.top(ctx[start : start + rows], k))


# ----------------------------------------------------------------------------- state round trips


@pytest.mark.parametrize("kind", ["stride", "markov", "model", "federated"])
def test_batched_models_save_load_and_copy(kind: str, tmp_path: Path) -> None:
    vocab = Vocabulary(1 << 14)
    model = make_model(kind, vocab)
    keys = mixed_trace(3) + scan_trace(3)
    for start in range(0, len(keys), 500):
        ids = vocab.encode_many(keys[start : start + 500])
        model.observe(ids)
        model.predict(ids, 2)
    model.save(tmp_path / "m.npz")
    loaded = make_model(kind, vocab)
    loaded.load(tmp_path / "m.npz")
    probe = vocab.encode_many(keys[-50:])
    assert_same_prediction(model.predict(probe, 2), loaded.predict(probe, 2))
    # Copies (as training and the registry make them) carry on exactly like the original.
    pairs = [(model, vocab), copy.deepcopy((model, vocab)), pickle.loads(pickle.dumps((model, vocab)))]
    more = chain_trace(3, 600) + scan_trace(4, 600)
    results = []
    for m, v in pairs:
        got = []
        for start in range(0, len(more), 100):
            ids = v.encode_many(more[start : start + 100])
            m.observe(ids)
            got.append(m.predict(ids, 2))
            got.append(m.predict(ids[-1:], 2))
        results.append(got)
    for other in results[1:]:
        for want, got in zip(results[0], other):
            assert_same_prediction(want, got)


# ----------------------------------------------------------------------------- learning on and off


def test_a_frozen_markov_model_serves_as_trained_and_learns_again_when_unfrozen() -> None:
    vocab = Vocabulary(64)
    model = MarkovModel(64)
    trained = vocab.encode_many([b"a", b"b"] * 20)
    model.observe(trained)
    a, b, c = (int(vocab.encode(x)) for x in (b"a", b"b", b"c"))
    set_learning(model, False)
    assert model.table.frozen
    before = (model.table.succ.copy(), model.table.count.copy(), model.table.seen)
    for ident in [a, c] * 30:
        model.observe(numpy.array([ident]))
    model.observe(numpy.array([a, c] * 30))
    assert numpy.array_equal(model.table.succ, before[0]) and numpy.array_equal(model.table.count, before[1])
    assert model.table.seen == before[2]
    assert model.last == c  # the context still follows the stream
    assert [cand for cand, _ in model.predict_one(a, 2)] == [b]
    assert c not in model.predict(numpy.array([a]), 4)[0]
    set_learning(model, True)
    assert not model.table.frozen
    model.observe(numpy.array([a, c] * 30))
    assert c in [cand for cand, _ in model.predict_one(a, 2)]


def test_set_learning_freezes_every_successor_table_of_the_mixture_and_leaves_stride_live() -> None:
    vocab = Vocabulary(256)
    model = MixtureModel(vocab, 256)
    model.observe(vocab.encode_many([b"x", b"y", b"z"] * 10))
    set_learning(model, False)
    stride, markov1, markov2 = model.experts
    assert markov1.table.frozen and markov2.table.frozen
    frozen = [(t.succ.copy(), t.count.copy()) for t in (markov1.table, markov2.table)]
    model.observe(vocab.encode_many([b"blk:%04d" % i for i in range(20)]))
    for (succ, count), table in zip(frozen, (markov1.table, markov2.table)):
        assert numpy.array_equal(table.succ, succ) and numpy.array_equal(table.count, count)
    probe = vocab.encode_many([b"blk:0019"])
    assert vocab.decode(int(stride.predict(probe, 1)[0][0, 0])) == b"blk:0020"
    set_learning(model, True)
    assert not markov1.table.frozen and not markov2.table.frozen
    set_learning(StrideModel(vocab), False)  # nothing to freeze: no error
    contextual = ContextMarkov(64)
    set_learning(contextual, False)
    assert contextual.table.frozen


@pytest.mark.parametrize("kind", ["stride", "markov", "markov2", "model"])
def test_predict_one_answers_what_predict_answers_for_that_row(kind: str) -> None:
    """The scalar single-key path and the array path agree: same candidates in the same
    order (ties to the lower slot) and the same float32 scores, less the empty slots."""
    keys = mixed_trace(12, 2500)
    vocab = Vocabulary(1 << 14)
    model = ContextMarkov(4096) if kind == "markov2" else make_model(kind, vocab, 4096)
    for key in keys:
        ident = vocab.encode(key)
        model.observe(numpy.array([ident], dtype=numpy.int64))
        twin = copy.deepcopy((model, vocab))[0]
        cand, conf = twin.predict(numpy.array([ident], dtype=numpy.int64), 3)
        want = [(c, f) for c, f in zip(cand[0].tolist(), conf[0].tolist()) if c >= 0 and f > 0]
        assert model.predict_one(ident, 3) == want
