# SPDX-License-Identifier: Apache-2.0
"""Counting Markov successor model: for each key, its most frequent next keys (top-k).

The baseline any learned prefetcher must beat (what it adds to an LRU cache's hits on a
real block trace: bench/RESULTS.md, "Figures moved out of docstrings"). State is two
arrays indexed by the context ID: ``succ[ctx, slot]`` (a successor key ID) and
``count[ctx, slot]``, :data:`DEFAULT_SLOTS` slots per context kept by the space-saving
rule (a new successor replaces the least counted one and inherits its count plus one, so
a successor that keeps coming back rises even when the slots are full). Counts halve every
``decay_every`` observations, so the model follows a changing workload.

Observation and inference are vectorised array operations: one batch of ``n`` transitions
costs a handful of gathers and scatters, whatever ``n`` (new successors take one round
per successor of their busiest context; the last few are placed on scalars).

The tables live on the array module they are given (``xp``): NumPy, or CuPy when the cache
runs on the GPU. On NumPy, short batches and single accesses take Python-scalar paths
(cheaper than the array calls' fixed cost); on a device every batch takes the array paths,
since each element read from Python would be a transfer. Either way a batch arrives as
host IDs and predictions come back as host arrays: the vocabulary, the mixture's
bookkeeping and the prefetcher stay on the host. Both give the same tables and the same
answers (tested on a stand-in device that refuses host arrays and Python-side reads).

The context is the previous key (order 1) by default; :class:`ContextMarkov` uses the
previous two keys, hashed into a bounded table of pair contexts (order 2).
"""

from __future__ import annotations

import importlib
from array import array
from pathlib import Path
from typing import Any, cast

import numpy

from cache_core.backend import to_host
from cache_core.models.base import empty_prediction, load_arrays, save_arrays
from cache_core.models.base import float32 as _f32

DEFAULT_SLOTS = 4
DEFAULT_DECAY_EVERY = 1 << 16
# Batches up to this many accesses are learned on Python scalars: the array calls'
# fixed cost (a few microseconds each) would dominate a batch of one.
SCALAR_BATCH = 8
# Pseudo-count added to a context's total: a successor seen once after a key seen once is
# a guess (share 1/2), not a certainty (share 1).
SHARE_PRIOR = 1.0
# New successors are placed one context at a time on Python scalars once at most this many
# are left, or once they belong to at most SCALAR_CONTEXTS contexts: cheaper then than a
# round of array calls per successor of the busiest context.
SCALAR_PAIRS = 32
SCALAR_CONTEXTS = 16
# Predictions for at most this many rows rank each row on Python scalars: cheaper than the
# column-by-column array passes for so few rows.
SCALAR_ROWS = 8
# A batch that counts one slot up more often than this falls back to numpy.add.at.
MAX_REPEAT_ROUNDS = 8
# NumPy sums rows shorter than this one element after the other (pairwise summation
# starts at 8 elements), so such a row's total can be summed column by column alike.
SEQUENTIAL_SUM = 8
# A (context, successor) pair packs into one int64 key below this (context × span + successor).
_PAIR_LIMIT = 1 << 62
_MULT = 0x9E3779B97F4A7C15
_SALT = 0x632BE59BD9B4E019
_MASK64 = (1 << 64) - 1


def _edges(xp: Any, ordered: Any) -> Any:
    """Positions where a sorted array's runs start, with its length appended (run edges)."""
    m = ordered.shape[0]
    edge = xp.ones(m + 1, dtype=bool)
    edge[1:m] = ordered[1:] != ordered[:-1]
    return xp.flatnonzero(edge)


def _stable_argsort(xp: Any, values: Any) -> Any:
    """``argsort`` keeping equal values in order: NumPy's stable kind; CuPy's argsort is
    always stable, and not every version takes ``kind``."""
    return numpy.argsort(values, kind="stable") if xp is numpy else xp.argsort(values)


def _run_starts(xp: Any, values: Any) -> Any:
    """Mask of the positions where a run of equal values starts."""
    first = xp.ones(values.shape[0], dtype=bool)
    first[1:] = values[1:] != values[:-1]
    return first


def _any_column(match: numpy.ndarray) -> numpy.ndarray:
    """``match.any(axis=1)`` for a few columns, as one array operation per column."""
    out = match[:, 0].copy()
    for j in range(1, match.shape[1]):
        out |= match[:, j]
    return out


def _least(xp: Any, counts: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Per row, the first least counted slot (``argmin``) and its count, column by column."""
    best = counts[:, 0]
    slot = xp.zeros(counts.shape[0], dtype=xp.int64)
    for j in range(1, counts.shape[1]):
        column = counts[:, j]
        xp.putmask(slot, column < best, j)
        best = xp.minimum(best, column)
    return slot, best


def _most(xp: Any, counts: numpy.ndarray, k: int) -> list[tuple[numpy.ndarray, numpy.ndarray]]:
    """Per row, the ``k`` most counted slots with their counts, most first, ties to the lower
    slot: ``argsort(-counts, kind="stable")[:, :k]``, column by column."""
    work = counts.copy() if k > 1 else counts
    rows = xp.arange(counts.shape[0])
    out = []
    for rank in range(k):
        best = work[:, 0]
        slot = xp.zeros(counts.shape[0], dtype=xp.int64)
        for j in range(1, counts.shape[1]):
            column = work[:, j]
            xp.putmask(slot, column > best, j)
            best = xp.maximum(best, column)
        out.append((slot, best))
        if rank + 1 < k:
            work[rows, slot] = -numpy.inf
    return out


def _row_sum(counts: numpy.ndarray) -> numpy.ndarray:
    """``counts.sum(axis=1)``: column by column where NumPy adds a row's elements in order."""
    if counts.shape[1] >= SEQUENTIAL_SUM:
        return cast(numpy.ndarray, counts.sum(axis=1))
    total = counts[:, 0].copy()
    for j in range(1, counts.shape[1]):
        total += counts[:, j]
    return total


class SuccessorTable:
    """``context ID -> top successors`` with space-saving counts.

    ``frozen`` (off by default) stops learning: :meth:`update` and :meth:`update_one`
    change nothing, not even the decay counter, and the table serves as trained.
    ``xp`` is the array module the two arrays live on (see the module docstring).
    """

    def __init__(self, contexts: int, slots: int = DEFAULT_SLOTS, decay_every: int = DEFAULT_DECAY_EVERY, xp: Any = numpy) -> None:
        self.contexts = int(contexts)
        self.slots = int(slots)
        self.decay_every = int(decay_every)
        self.xp = xp
        self.host = xp is numpy
        self.succ = xp.full((self.contexts, self.slots), -1, dtype=xp.int64)
        self.count = xp.zeros((self.contexts, self.slots), dtype=xp.float32)
        self.seen = 0
        # Frozen: the table serves as trained (updates and decay are skipped).
        self.frozen = False

    def __getstate__(self) -> dict[str, Any]:
        # A module does not pickle or deep-copy: it travels by name (the arrays do travel).
        return {**self.__dict__, "xp": self.xp.__name__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.xp = importlib.import_module(state["xp"])

    def place(self, xp: Any) -> None:
        """Move the arrays to the array module ``xp`` (no copy if they are there already)."""
        if xp is self.xp:
            return
        self.succ = xp.asarray(to_host(self.succ))
        self.count = xp.asarray(to_host(self.count))
        self.xp, self.host = xp, xp is numpy

    def update(self, ctx: numpy.ndarray, nxt: numpy.ndarray) -> None:
        """Learn the transitions ``ctx[i] -> nxt[i]`` (host or device arrays), in order."""
        if self.frozen:
            return
        xp = self.xp
        ctx, nxt = xp.asarray(ctx), xp.asarray(nxt)
        ok = (ctx >= 0) & (ctx < self.contexts) & (nxt >= 0)
        if not ok.all():
            ctx, nxt = ctx[ok], nxt[ok]
        if ctx.shape[0] == 0:
            self._decay_if_due()
            return
        match = self.succ[ctx] == nxt[:, None]
        has = _any_column(match)
        r, c = xp.nonzero(match)
        if r.shape[0]:
            self._count_up(ctx[r] * self.slots + c)
        if not has.all():
            self._place(ctx[~has], nxt[~has])
        self.seen += int(ctx.shape[0])
        self._decay_if_due()

    def _decay_if_due(self) -> None:
        """Halve every count once ``decay_every`` transitions were learned since the last time."""
        if self.seen >= self.decay_every:
            self.count *= 0.5
            self.seen = 0

    def _count_up(self, slots: numpy.ndarray) -> None:
        """``numpy.add.at(count, slots, 1.0)``: one float32 addition of 1 per occurrence, in turn.

        A slot that occurs ``c`` times gets ``c`` successive additions (not one of ``c``,
        which can round differently), in at most :data:`MAX_REPEAT_ROUNDS` array rounds on
        the host (beyond that ``numpy.add.at``) and as many rounds as it takes on a device.
        """
        xp = self.xp
        flat = self.count.reshape(-1)
        ordered = xp.sort(slots)
        edge = _edges(xp, ordered)
        if edge.shape[0] == ordered.shape[0] + 1:
            flat[slots] += 1.0
            return
        repeats = xp.diff(edge)
        most = int(repeats.max())
        if most > MAX_REPEAT_ROUNDS and self.host:
            numpy.add.at(flat, slots, 1.0)
            return
        where = ordered[edge[:-1]]
        values = flat[where]
        for rounds in range(1, most + 1):
            values = xp.where(repeats >= rounds, values + numpy.float32(1.0), values)
        flat[where] = values

    def _place(self, ctx: numpy.ndarray, nxt: numpy.ndarray) -> None:
        """New successors: unique ``(ctx, next)`` pairs with their multiplicity, in sorted order,
        placed one per context per round (two new successors of one context cannot share a
        slot): each into its context's least counted slot, inheriting that count plus its own.
        """
        xp = self.xp
        span = int(nxt.max()) + 1
        if self.contexts * span < _PAIR_LIMIT:
            keys = xp.sort(ctx * span + nxt)
            edge = _edges(xp, keys)
            pairs, weight = keys[edge[:-1]], xp.diff(edge)
            a, b = pairs // span, pairs % span
        else:
            # Sorted by context, then successor (lexsort's last key is the primary one).
            order = xp.lexsort(xp.stack([nxt, ctx]))
            a, b = ctx[order], nxt[order]
            new = xp.ones(a.shape[0] + 1, dtype=bool)
            new[1:-1] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
            edge = xp.flatnonzero(new)
            a, b, weight = a[edge[:-1]], b[edge[:-1]], xp.diff(edge)
        while a.shape[0]:
            first = _run_starts(xp, a)
            if self.host and (a.shape[0] <= SCALAR_PAIRS or int(numpy.count_nonzero(first)) <= SCALAR_CONTEXTS):
                self._place_rows(a, b, weight)
                return
            head, nb, w = a[first], b[first], weight[first].astype(xp.float32)
            slot, floor = _least(xp, self.count[head])
            self.succ[head, slot] = nb
            self.count[head, slot] = floor + w
            a, b, weight = a[~first], b[~first], weight[~first]

    def _place_rows(self, a: numpy.ndarray, b: numpy.ndarray, weight: numpy.ndarray) -> None:
        """:meth:`_place`'s rounds, one context at a time on Python scalars.

        A row's counts sit in an ``array('f')``, so each sum is stored rounded to float32:
        the float64 sum of two float32 values rounded to float32 is their float32 sum.
        """
        starts = numpy.flatnonzero(numpy.concatenate([[True], a[1:] != a[:-1]])).tolist() + [a.shape[0]]
        contexts, successors, weights = a.tolist(), b.tolist(), weight.tolist()
        for lo, hi in zip(starts, starts[1:]):
            ctx = contexts[lo]
            succ, count = self.succ[ctx].tolist(), array("f", self.count[ctx].tolist())
            for nb, w in zip(successors[lo:hi], weights[lo:hi]):
                slot = count.index(min(count))
                succ[slot] = nb
                count[slot] = count[slot] + w
            self.succ[ctx] = succ
            self.count[ctx] = count

    def update_one(self, a: int, b: int) -> None:
        """One transition, on Python scalars: a batch of one costs no array call overhead
        (on a device, a batch of one)."""
        if self.frozen or a < 0 or a >= self.contexts or b < 0:
            return
        if not self.host:
            self.update(numpy.array([a], dtype=numpy.int64), numpy.array([b], dtype=numpy.int64))
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
        """The ``k`` most counted successors of one context, with their shares: :meth:`top`'s
        row for ``a`` on Python scalars (the same order, ties to the lower slot, and the same
        float32 shares), less the slots that name nothing or have no share."""
        if a < 0 or a >= self.contexts:
            return []
        if not self.host:
            cand, conf = self.top(numpy.array([a], dtype=numpy.int64), k)
            return [(c, f) for c, f in zip(cand[0].tolist(), conf[0].tolist()) if c >= 0 and f > 0]
        row, counts = self.succ[a].tolist(), self.count[a].tolist()
        if self.slots >= SEQUENTIAL_SUM:
            total = float(_row_sum(self.count[a : a + 1])[0])
        else:
            # _row_sum's float32 additions, one after the other (each float64 sum of two
            # float32 values, rounded to float32, is their float32 sum).
            total = counts[0]
            for c in counts[1:]:
                total = _f32(total + c)
        if total <= 0:
            return []
        denominator = _f32(total + SHARE_PRIOR)
        out = []
        for slot in sorted(range(self.slots), key=counts.__getitem__, reverse=True)[:k]:
            succ = row[slot]
            if succ >= 0:
                share = _f32(counts[slot] / denominator)
                if share > 0:
                    out.append((succ, share))
        return out

    def top(self, ctx: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        """The ``k`` most counted successors of each context in ``ctx`` (host or device
        IDs) with their shares, as host arrays shaped ``(len(ctx), k)``; ``-1``: none."""
        n = ctx.shape[0]
        if self.host and n <= SCALAR_ROWS:
            return self._top_rows(ctx, k)
        xp = self.xp
        ctx = xp.asarray(ctx)
        cand = xp.full((n, k), -1, dtype=xp.int64)
        conf = xp.zeros((n, k), dtype=xp.float32)
        ok = (ctx >= 0) & (ctx < self.contexts)
        if not ok.any():
            return to_host(cand), to_host(conf)
        every = bool(ok.all())
        rows = None if every else xp.flatnonzero(ok)
        picked = ctx if every else ctx[rows]
        counts = self.count[picked]
        total = _row_sum(counts)
        base = picked * self.slots
        flat_succ = self.succ.reshape(-1)
        counted, denominator = total > 0, total + SHARE_PRIOR
        for j, (slot, top_count) in enumerate(_most(xp, counts, min(k, self.slots))):
            top_succ = flat_succ[base + slot]
            named = top_succ >= 0
            share = xp.where(counted & named, top_count / denominator, 0.0)
            top_succ[~named] = -1
            if every:
                cand[:, j], conf[:, j] = top_succ, share
            else:
                cand[rows, j], conf[rows, j] = top_succ, share
        return to_host(cand), to_host(conf)

    def _top_rows(self, ctx: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        """:meth:`top` of a few rows, ranked on Python scalars (the same results, bit for bit).

        The totals are summed as :meth:`top` sums them (:func:`_row_sum`, float32), the
        slots ranked by count with ties to the lower slot (a stable sort), and each share
        divided in float64: the quotient of two float32 values rounded to float32 is
        their float32 quotient.
        """
        n = ctx.shape[0]
        cand, conf = empty_prediction(n, k)
        rows = [(r, c) for r, c in enumerate(ctx.tolist()) if 0 <= c < self.contexts]
        if not rows:
            return cand, conf
        picked = [c for _, c in rows]
        counts = self.count[picked]
        totals = _row_sum(counts)
        denominators = (totals + numpy.float32(SHARE_PRIOR)).tolist()
        successors = self.succ[picked].tolist()
        kk = min(k, self.slots)
        for (r, _c), row_counts, row_succ, total, denominator in zip(rows, counts.tolist(), successors, totals.tolist(), denominators):
            counted = total > 0
            ranked = sorted(range(self.slots), key=row_counts.__getitem__, reverse=True)
            for j in range(kk):
                slot = ranked[j]
                succ = row_succ[slot]
                if succ >= 0:
                    cand[r, j] = succ
                    if counted:
                        conf[r, j] = row_counts[slot] / denominator
        return cand, conf

    @property
    def nbytes(self) -> int:
        return int(self.succ.nbytes + self.count.nbytes)


class MarkovModel:
    """Order-1 counting successor model (the ``markov`` prefetch mode)."""

    name = "markov"

    def __init__(self, capacity: int, slots: int = DEFAULT_SLOTS, decay_every: int = DEFAULT_DECAY_EVERY, xp: Any = numpy) -> None:
        self.table = SuccessorTable(capacity, slots, decay_every, xp)
        self.last = -1

    def place(self, xp: Any) -> None:
        """Move the learned state to the array module ``xp``."""
        self.table.place(xp)

    def observe(self, ids: numpy.ndarray) -> None:
        if ids.shape[0] == 0:
            return
        if self.table.host and ids.shape[0] <= SCALAR_BATCH:
            last = self.last
            for ident in ids.tolist():
                self.table.update_one(last, ident)
                last = ident
            self.last = last
            return
        prev = numpy.concatenate([[self.last], ids[:-1]]).astype(numpy.int64)
        self.table.update(prev, ids)
        self.last = int(ids[-1])

    def observe_one(self, ident: int) -> None:
        """:meth:`observe` of one access, on Python scalars."""
        self.table.update_one(self.last, ident)
        self.last = ident

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
        xp = self.table.xp
        self.table.succ[...] = xp.asarray(data["succ"])
        self.table.count[...] = xp.asarray(data["count"])
        self.last = int(data["last"])

    @property
    def nbytes(self) -> int:
        return self.table.nbytes


class ContextMarkov:
    """Order-2 successor model: the context is the pair (previous key, current key).

    Pair contexts are hashed into a bounded table, and each row remembers the 64-bit hash
    of the pair that owns it (``owner``): a pair that lands on a row another pair owns
    takes the row over and starts it empty, and a row answers only the pair that owns
    it. Without that check a collision would serve one pair's successors for another's,
    a wrong guess at full confidence (with as many pairs as rows, about a third of the
    rows are shared).
    """

    name = "markov2"

    def __init__(self, contexts: int, slots: int = DEFAULT_SLOTS, decay_every: int = DEFAULT_DECAY_EVERY, xp: Any = numpy) -> None:
        self.table = SuccessorTable(contexts, slots, decay_every, xp)
        # An empty row predicts nothing whoever owns it, so any start value will do.
        self.owner = xp.zeros(self.table.contexts, dtype=xp.int64)
        self.prev = -1
        self.last = -1
        self._mult = numpy.uint64(_MULT)

    def place(self, xp: Any) -> None:
        """Move the learned state (table and owners) to the array module ``xp``."""
        if xp is not self.table.xp:
            self.owner = xp.asarray(to_host(self.owner))
            self.table.place(xp)

    def _keyed(self, a: numpy.ndarray, b: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Row (``-1``: no context) and 64-bit pair hash of each pair ``(a[i], b[i])``, on the
        array module ``a`` and ``b`` are on."""
        xp = self.table.xp
        # Array arithmetic on uint64 wraps modulo 2^64 silently (NumPy warns on scalars only).
        ua, ub = a.astype(xp.int64, copy=False).view(xp.uint64), b.astype(xp.int64, copy=False).view(xp.uint64)
        hashed = ((ua * self._mult) ^ (ub + numpy.uint64(_SALT))) * self._mult
        ctx = (hashed >> numpy.uint64(17)) % numpy.uint64(self.table.contexts)
        return xp.where((a >= 0) & (b >= 0), ctx.view(xp.int64), -1), hashed.view(xp.int64)

    def _ctx(self, a: numpy.ndarray, b: numpy.ndarray) -> numpy.ndarray:
        return self._keyed(a, b)[0]

    def _keyed_one(self, a: int, b: int) -> tuple[int, int]:
        """:meth:`_keyed` on Python ints (the same hash, modulo 2^64; the tag as a signed int64)."""
        if a < 0 or b < 0:
            return -1, 0
        hashed = ((((a * _MULT) & _MASK64) ^ ((b + _SALT) & _MASK64)) * _MULT) & _MASK64
        return (hashed >> 17) % self.table.contexts, hashed - (1 << 64) if hashed >> 63 else hashed

    def _ctx_one(self, a: int, b: int) -> int:
        return self._keyed_one(a, b)[0]

    def _learn_one(self, a: int, b: int, ident: int) -> None:
        """Learn ``(a, b) -> ident``: the pair takes its row over first if another pair owns it."""
        ctx, tag = self._keyed_one(a, b)
        table = self.table
        if ctx < 0 or ident < 0 or table.frozen:
            return
        if self.owner.item(ctx) != tag:
            self.owner[ctx] = tag
            table.succ[ctx] = -1
            table.count[ctx] = 0.0
        table.update_one(ctx, ident)

    def _claim(self, ctx: numpy.ndarray, tag: numpy.ndarray, nxt: numpy.ndarray) -> numpy.ndarray:
        """:meth:`_learn_one`'s take-overs for a batch, as array operations; the rows to learn.

        Per row, the transitions in order: a row changes hands wherever the pair differs
        from the one before (the first against the stored owner). If it changed hands at
        all, it is emptied, its owner is the batch's last pair for it, and only the
        transitions from that last change on are learned; the earlier ones would have been
        wiped by it. They still count towards the decay, as learning them one by one does.
        """
        xp = self.table.xp
        idx = xp.flatnonzero((ctx >= 0) & (nxt >= 0))
        if idx.shape[0] == 0:
            return ctx
        order = idx[_stable_argsort(xp, ctx[idx])]
        rows, tags = ctx[order], tag[order]
        m = rows.shape[0]
        start = _run_starts(xp, rows)
        starts = xp.flatnonzero(start)
        before = xp.empty_like(tags)
        before[1:] = tags[:-1]
        before[starts] = self.owner[rows[starts]]
        changed = tags != before
        if not changed.any():
            return ctx
        position = xp.arange(m)
        # The position of the latest change at or before each position (-1: none yet).
        so_far = xp.cumsum(changed)
        last_change = xp.where(so_far > 0, xp.flatnonzero(changed)[xp.maximum(so_far - 1, 0)], -1)
        ends = xp.empty_like(starts)
        ends[:-1] = starts[1:] - 1
        ends[-1] = m - 1
        group_change = last_change[ends]
        moved = group_change >= starts
        group_of = xp.cumsum(start) - 1
        dropped = moved[group_of] & (position < group_change[group_of])
        heads = rows[starts[moved]]
        self.owner[heads] = tags[ends[moved]]
        self.table.succ[heads] = -1
        self.table.count[heads] = 0.0
        # A row taken over that learns one transition (the rule under random traffic, where
        # nearly every pair is new) gets it in its first slot with a count of one, what
        # the update would place there, without the update's matching and placing rounds.
        last = ends[moved & (group_change == ends)]
        at = order[last]
        taken = int(at.shape[0])
        if taken:
            one = rows[last]
            self.table.succ[one, 0] = nxt[at]
            self.table.count[one, 0] = 1.0
        skipped = int(xp.count_nonzero(dropped)) + taken
        if skipped:
            self.table.seen += skipped
            ctx = ctx.copy()
            ctx[order[dropped]] = -1
            ctx[at] = -1
        return ctx

    def observe(self, ids: numpy.ndarray) -> None:
        if ids.shape[0] == 0:
            return
        if self.table.host and ids.shape[0] <= SCALAR_BATCH:
            prev, last = self.prev, self.last
            for ident in ids.tolist():
                self._learn_one(prev, last, ident)
                prev, last = last, ident
            self.prev, self.last = prev, last
            return
        seq = numpy.concatenate([[self.prev, self.last], ids]).astype(numpy.int64)
        if not self.table.frozen:
            on = self.table.xp.asarray(seq)
            nxt = on[2:]
            ctx, tag = self._keyed(on[:-2], on[1:-1])
            self.table.update(self._claim(ctx, tag, nxt), nxt)
        self.prev, self.last = int(seq[-2]), int(seq[-1])

    def observe_one(self, ident: int) -> None:
        """:meth:`observe` of one access, on Python scalars (on a device, a batch of one)."""
        if not self.table.host:
            self.observe(numpy.array([ident], dtype=numpy.int64))
            return
        self._learn_one(self.prev, self.last, ident)
        self.prev, self.last = self.last, ident

    def predict(self, ids: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        # Called after observe(ids): the context of ids[i] is (ids[i-1], ids[i]).
        xp = self.table.xp
        seq = numpy.concatenate([[self.prev], ids]) if ids.shape[0] == 1 else numpy.concatenate([[-1], ids])
        seq = xp.asarray(seq.astype(numpy.int64, copy=False))
        ctx, tag = self._keyed(seq[:-1], seq[1:])
        owned = xp.where(ctx >= 0, self.owner[xp.maximum(ctx, 0)] == tag, False)
        return self.table.top(xp.where(owned, ctx, -1), k)

    def predict_one(self, ident: int, k: int) -> list[tuple[int, float]]:
        # Called after observe(): the context of the newest key is (prev, last).
        if not self.table.host:
            cand, conf = self.predict(numpy.array([ident], dtype=numpy.int64), k)
            return [(c, f) for c, f in zip(cand[0].tolist(), conf[0].tolist()) if c >= 0 and f > 0]
        ctx, tag = self._keyed_one(self.prev, ident)
        if ctx < 0 or self.owner.item(ctx) != tag:
            return []
        return self.table.top_one(ctx, k)

    def save(self, path: str | Path) -> None:
        save_arrays(path, succ=self.table.succ, count=self.table.count, owner=self.owner, state=numpy.array([self.prev, self.last], dtype=numpy.int64))

    def load(self, path: str | Path) -> None:
        data = load_arrays(path)
        if data["succ"].shape != self.table.succ.shape:
            raise ValueError(f"{path}: context table of shape {data['succ'].shape}, expected {self.table.succ.shape}")
        owner = data.get("owner")
        if owner is not None and owner.shape != self.owner.shape:
            raise ValueError(f"{path}: owner array of shape {owner.shape}, expected {self.owner.shape}")
        xp = self.table.xp
        self.table.succ[...] = xp.asarray(data["succ"])
        self.table.count[...] = xp.asarray(data["count"])
        # A file written before rows had owners: no row answers until its pair is seen again.
        self.owner[...] = 0 if owner is None else xp.asarray(owner)
        self.prev, self.last = (int(x) for x in data["state"])

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes + self.owner.nbytes)
