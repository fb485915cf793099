# SPDX-License-Identifier: Apache-2.0
"""Counting Markov successor model: for each key, its most frequent next keys (top-k).

The baseline any learned prefetcher must beat (on a real block trace it lifts an LRU
cache from 16 % to 38 % hits at 1 % cache size, ../shared reference §5.2). State is two
arrays indexed by the context ID: ``succ[ctx, slot]`` (a successor key ID) and
``count[ctx, slot]``, :data:`DEFAULT_SLOTS` slots per context kept by the space-saving
rule (a new successor replaces the least counted one and inherits its count plus one, so
a successor that keeps coming back rises even when the slots are full). Counts halve every
``decay_every`` observations, so the model follows a changing workload.

Observation and inference are vectorised array operations: one batch of ``n`` transitions
costs a handful of gathers and scatters, whatever ``n``.

The context is the previous key (order 1) by default; :class:`ContextMarkov` uses the
previous two keys, hashed into a bounded table of pair contexts (order 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy

from cache_core.models.base import empty_prediction, load_arrays, save_arrays

DEFAULT_SLOTS = 4
DEFAULT_DECAY_EVERY = 1 << 16
# Batches up to this many accesses are learned on Python scalars: the array calls'
# fixed cost (a few microseconds each) would dominate a batch of one.
SCALAR_BATCH = 8
# Pseudo-count added to a context's total: a successor seen once after a key seen once is
# a guess (share 1/2), not a certainty (share 1).
SHARE_PRIOR = 1.0
_MULT = 0x9E3779B97F4A7C15
_SALT = 0x632BE59BD9B4E019
_MASK64 = (1 << 64) - 1


class SuccessorTable:
    """``context ID -> top successors`` with space-saving counts."""

    def __init__(self, contexts: int, slots: int = DEFAULT_SLOTS, decay_every: int = DEFAULT_DECAY_EVERY) -> None:
        self.contexts = int(contexts)
        self.slots = int(slots)
        self.decay_every = int(decay_every)
        self.succ = numpy.full((self.contexts, self.slots), -1, dtype=numpy.int64)
        self.count = numpy.zeros((self.contexts, self.slots), dtype=numpy.float32)
        self.seen = 0

    def update(self, ctx: numpy.ndarray, nxt: numpy.ndarray) -> None:
        ok = (ctx >= 0) & (ctx < self.contexts) & (nxt >= 0)
        ctx, nxt = ctx[ok], nxt[ok]
        if ctx.shape[0] == 0:
            return
        rows = self.succ[ctx]
        match = rows == nxt[:, None]
        has = match.any(axis=1)
        r, c = numpy.nonzero(match)
        numpy.add.at(self.count, (ctx[r], c), 1.0)
        # New successors: unique (ctx, next) pairs with their multiplicity, then placed
        # one per context per round (two new successors of one context cannot share a slot).
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

    def update_one(self, a: int, b: int) -> None:
        """One transition, on Python scalars: a batch of one costs no array call overhead."""
        if a < 0 or a >= self.contexts or b < 0:
            return
        succ, count = self.succ[a], self.count[a]
        row = succ.tolist()
        if b in row:
            count[row.index(b)] += 1.0
        else:
            counts = count.tolist()
            slot = counts.index(min(counts))
            succ[slot] = b
            count[slot] = counts[slot] + 1.0
        self.seen += 1
        if self.seen >= self.decay_every:
            self.count *= 0.5
            self.seen = 0

    def top_one(self, a: int, k: int) -> list[tuple[int, float]]:
        """The ``k`` most counted successors of one context, with their shares."""
        if a < 0 or a >= self.contexts:
            return []
        row, counts = self.succ[a].tolist(), self.count[a].tolist()
        total = sum(counts)
        if total <= 0:
            return []
        best = sorted(((c, succ) for succ, c in zip(row, counts) if succ >= 0 and c > 0), reverse=True)[:k]
        return [(succ, c / (total + SHARE_PRIOR)) for c, succ in best]

    def top(self, ctx: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        n = ctx.shape[0]
        cand, conf = empty_prediction(n, k)
        ok = (ctx >= 0) & (ctx < self.contexts)
        if not ok.any():
            return cand, conf
        rows = self.succ[ctx[ok]]
        counts = self.count[ctx[ok]]
        kk = min(k, self.slots)
        order = numpy.argsort(-counts, axis=1, kind="stable")[:, :kk]
        top_succ = numpy.take_along_axis(rows, order, axis=1)
        top_count = numpy.take_along_axis(counts, order, axis=1)
        total = counts.sum(axis=1, keepdims=True)
        share = numpy.where(total > 0, top_count / (total + SHARE_PRIOR), 0.0)
        share = numpy.where(top_succ >= 0, share, 0.0)
        cand[ok, :kk] = numpy.where(top_succ >= 0, top_succ, -1)
        conf[ok, :kk] = share.astype(numpy.float32)
        return cand, conf

    @property
    def nbytes(self) -> int:
        return int(self.succ.nbytes + self.count.nbytes)


class MarkovModel:
    """Order-1 counting successor model (the ``markov`` prefetch mode)."""

    name = "markov"

    def __init__(self, capacity: int, slots: int = DEFAULT_SLOTS, decay_every: int = DEFAULT_DECAY_EVERY) -> None:
        self.table = SuccessorTable(capacity, slots, decay_every)
        self.last = -1

    def observe(self, ids: numpy.ndarray) -> None:
        if ids.shape[0] == 0:
            return
        if ids.shape[0] <= SCALAR_BATCH:
            last = self.last
            for ident in ids.tolist():
                self.table.update_one(last, ident)
                last = ident
            self.last = last
            return
        prev = numpy.concatenate([[self.last], ids[:-1]]).astype(numpy.int64)
        self.table.update(prev, ids)
        self.last = int(ids[-1])

    def predict(self, ids: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        return self.table.top(ids, k)

    def predict_one(self, ident: int, k: int) -> list[tuple[int, float]]:
        return self.table.top_one(ident, k)

    def save(self, path: str | Path) -> None:
        save_arrays(path, succ=self.table.succ, count=self.table.count, last=numpy.int64(self.last))

    def load(self, path: str | Path) -> None:
        data = load_arrays(path)
        if data["succ"].shape != self.table.succ.shape:
            raise ValueError(f"{path}: successor table of shape {data['succ'].shape}, expected {self.table.succ.shape}")
        self.table.succ[...] = data["succ"]
        self.table.count[...] = data["count"]
        self.last = int(data["last"])

    @property
    def nbytes(self) -> int:
        return self.table.nbytes


class ContextMarkov:
    """Order-2 successor model: the context is the pair (previous key, current key)."""

    name = "markov2"

    def __init__(self, contexts: int, slots: int = DEFAULT_SLOTS, decay_every: int = DEFAULT_DECAY_EVERY) -> None:
        self.table = SuccessorTable(contexts, slots, decay_every)
        self.prev = -1
        self.last = -1
        # Pair contexts are hashed (multiplicative hash into the table): collisions only
        # mix two contexts' statistics, they never break anything.
        self._mult = numpy.uint64(_MULT)

    def _ctx(self, a: numpy.ndarray, b: numpy.ndarray) -> numpy.ndarray:
        with numpy.errstate(over="ignore"):
            mixed = (a.astype(numpy.uint64) * self._mult) ^ (b.astype(numpy.uint64) + numpy.uint64(_SALT))
            ctx = ((mixed * self._mult) >> numpy.uint64(17)) % numpy.uint64(self.table.contexts)
        return numpy.where((a >= 0) & (b >= 0), ctx.astype(numpy.int64), -1)

    def _ctx_one(self, a: int, b: int) -> int:
        """:meth:`_ctx` on Python ints (the same hash, modulo 2^64)."""
        if a < 0 or b < 0:
            return -1
        mixed = ((a * _MULT) & _MASK64) ^ ((b + _SALT) & _MASK64)
        return (((mixed * _MULT) & _MASK64) >> 17) % self.table.contexts

    def observe(self, ids: numpy.ndarray) -> None:
        if ids.shape[0] == 0:
            return
        if ids.shape[0] <= SCALAR_BATCH:
            prev, last = self.prev, self.last
            for ident in ids.tolist():
                self.table.update_one(self._ctx_one(prev, last), ident)
                prev, last = last, ident
            self.prev, self.last = prev, last
            return
        seq = numpy.concatenate([[self.prev, self.last], ids]).astype(numpy.int64)
        ctx = self._ctx(seq[:-2], seq[1:-1])
        self.table.update(ctx, seq[2:])
        self.prev, self.last = int(seq[-2]), int(seq[-1])

    def predict(self, ids: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        # Called after observe(ids): the context of ids[i] is (ids[i-1], ids[i]).
        seq = numpy.concatenate([[self.prev], ids]) if ids.shape[0] == 1 else numpy.concatenate([[-1], ids])
        ctx = self._ctx(seq[:-1].astype(numpy.int64), seq[1:].astype(numpy.int64))
        return self.table.top(ctx, k)

    def predict_one(self, ident: int, k: int) -> list[tuple[int, float]]:
        # Called after observe(): the context of the newest key is (prev, last).
        return self.table.top_one(self._ctx_one(self.prev, ident), k)

    def save(self, path: str | Path) -> None:
        save_arrays(path, succ=self.table.succ, count=self.table.count, state=numpy.array([self.prev, self.last], dtype=numpy.int64))

    def load(self, path: str | Path) -> None:
        data = load_arrays(path)
        if data["succ"].shape != self.table.succ.shape:
            raise ValueError(f"{path}: context table of shape {data['succ'].shape}, expected {self.table.succ.shape}")
        self.table.succ[...] = data["succ"]
        self.table.count[...] = data["count"]
        self.prev, self.last = (int(x) for x in data["state"])

    @property
    def nbytes(self) -> int:
        return self.table.nbytes
