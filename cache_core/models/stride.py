# SPDX-License-Identifier: Apache-2.0
"""Stride detector: keys ``<prefix><number>`` read at a constant step predict the next ones.

Per key prefix it keeps the last number, the last step and how many times in a row that
step repeated. Once a step has repeated ``min_run`` times, the next ``k`` keys along it are
predicted (``block:0100`` after ``block:0098``, ``block:0099`` → ``block:0101``...), with a
confidence that grows with the run (``1 - 2^-run``). Unlike a successor model it names keys
never seen before, which is what a sequential scan needs. The state is three arrays
indexed by prefix ID. A batch is learned with array operations (the accesses grouped by
prefix, each group's run read off its sequence of steps) and predicted likewise, with the
same result as learning and predicting the keys one at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy

from cache_core.models.base import (
    Vocabulary,
    empty_prediction,
    float32,
    load_arrays,
    save_arrays,
)

DEFAULT_MIN_RUN = 2
DEFAULT_MAX_PREFIXES = 1 << 16
# Batches up to this many accesses are learned on Python scalars: the array calls' fixed
# cost would dominate so short a batch.
SCALAR_BATCH = 8
# Runs longer than this add no confidence (1 - 2^-run is already 1 in float32).
MAX_CONFIDENCE_RUN = 30


class StrideModel:
    name = "stride"

    def __init__(self, vocab: Vocabulary, min_run: int = DEFAULT_MIN_RUN, max_prefixes: int = DEFAULT_MAX_PREFIXES) -> None:
        self.vocab = vocab
        self.min_run = int(min_run)
        self.max_prefixes = int(max_prefixes)
        self.last = numpy.zeros(self.max_prefixes, dtype=numpy.int64)
        self.step = numpy.zeros(self.max_prefixes, dtype=numpy.int64)
        self.run = numpy.zeros(self.max_prefixes, dtype=numpy.int64)
        self.known = numpy.zeros(self.max_prefixes, dtype=bool)

    def observe(self, ids: numpy.ndarray) -> None:
        if ids.shape[0] <= SCALAR_BATCH:
            for ident in ids.tolist():
                self.observe_one(ident)
            return
        ids = ids[ids >= 0]
        if ids.shape[0] == 0:
            return
        pids = self.vocab.prefix_of[ids]
        nums = self.vocab.number_of[ids]
        ok = (pids >= 0) & (pids < self.max_prefixes)
        if not ok.all():
            pids, nums = pids[ok], nums[ok]
        if pids.shape[0]:
            self._observe_many(pids, nums)

    def _observe_many(self, pids: numpy.ndarray, nums: numpy.ndarray) -> None:
        """:meth:`_observe_one` of each ``(prefix, number)`` in order, as array operations.

        Per prefix, the accesses in order give a sequence of steps (the first against the
        stored last number, if the prefix is known). The stored step becomes the last of
        them; the run is the stored run plus the number of steps if every step repeats the
        one before (the first one the stored step), otherwise it restarts at the last step
        that did not: 1 (0 for a step of 0) plus the steps after it.
        """
        order = numpy.argsort(pids, kind="stable")
        p, v = pids[order], nums[order]
        m = p.shape[0]
        start = numpy.ones(m, dtype=bool)
        start[1:] = p[1:] != p[:-1]
        starts = numpy.flatnonzero(start)
        ends = numpy.empty_like(starts)
        ends[:-1] = starts[1:] - 1
        ends[-1] = m - 1
        group = p[starts]
        known, last, step, run = self.known[group], self.last[group], self.step[group], self.run[group]
        prev = numpy.empty_like(v)
        prev[1:] = v[:-1]
        prev[starts] = last
        d = v - prev
        # has: the access makes a step (all but the first access of a prefix never seen).
        has = numpy.ones(m, dtype=bool)
        has[starts] = known
        before = numpy.empty_like(d)
        before[1:] = d[:-1]
        before[starts] = step
        fresh = starts[~known & (starts < ends)]
        before[fresh + 1] = step[~known & (starts < ends)]
        reset = has & ((d == 0) | (d != before))
        last_reset = numpy.maximum.accumulate(numpy.where(reset, numpy.arange(m), -1))[ends]
        restarted = last_reset >= starts
        steps = ends - starts + known.astype(numpy.int64)
        r = numpy.maximum(last_reset, 0)
        self.run[group] = numpy.where(restarted, (d[r] != 0) + (ends - r), run + steps)
        self.step[group] = numpy.where(steps > 0, d[ends], step)
        self.last[group] = v[ends]
        self.known[group] = True

    def observe_one(self, ident: int) -> None:
        """:meth:`observe` of one access, on Python scalars."""
        if ident < 0:
            return
        p = self.vocab.prefix_of.item(ident)
        if 0 <= p < self.max_prefixes:
            self._observe_one(p, self.vocab.number_of.item(ident))

    def _observe_one(self, p: int, n: int) -> None:
        if self.known.item(p):
            d = n - self.last.item(p)
            if d != 0 and d == self.step.item(p):
                self.run[p] += 1
            else:
                self.step[p] = d
                self.run[p] = 1 if d != 0 else 0
        else:
            self.known[p] = True
        self.last[p] = n

    def predict(self, ids: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        n = ids.shape[0]
        if n <= SCALAR_BATCH:
            return self._predict_rows(ids, k)
        cand, conf = empty_prediction(n, k)
        valid = ids >= 0
        if not valid.any():
            return cand, conf
        pids = numpy.where(valid, self.vocab.prefix_of[numpy.maximum(ids, 0)], -1)
        ok = (pids >= 0) & (pids < self.max_prefixes)
        ok[ok] &= self.run[pids[ok]] >= self.min_run
        if not ok.any():
            return cand, conf
        rows = numpy.flatnonzero(ok)
        p = pids[rows]
        base = self.vocab.number_of[ids[rows]]
        step = self.step[p]
        width = self.vocab.width_of[ids[rows]]
        numbers = base[:, None] + step[:, None] * numpy.arange(1, k + 1)[None, :]
        confidence = (1.0 - 0.5 ** numpy.minimum(self.run[p], MAX_CONFIDENCE_RUN)).astype(numpy.float32)
        # Along a row the numbers move one way: the first negative one ends the row.
        named = numpy.logical_and.accumulate(numbers >= 0, axis=1)
        wanted = int(named.sum())
        if wanted and len(self.vocab) + wanted <= self.vocab.capacity:
            # Every candidate gets an ID (the vocabulary cannot fill up): name them at once,
            # in the order the loop below would.
            at_row, at_col = numpy.nonzero(named)
            cand[rows[at_row], at_col] = self.vocab.numbered_many(p[at_row], numbers[at_row, at_col], width[at_row])
            conf[rows[at_row], at_col] = confidence[at_row]
            return cand, conf
        for r, pid, w, nums, c in zip(rows.tolist(), p.tolist(), width.tolist(), numbers.tolist(), confidence.tolist()):
            for j, number in enumerate(nums):
                if number < 0:
                    break
                got = self.vocab.numbered(pid, number, w)
                if got < 0:
                    break
                cand[r, j] = got
                conf[r, j] = c
        return cand, conf

    def _predict_rows(self, ids: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        """:meth:`predict` of a few keys, one :meth:`predict_one` per row (the same keys are
        named in the same order, so the vocabulary ends up the same too)."""
        cand, conf = empty_prediction(ids.shape[0], k)
        for r, ident in enumerate(ids.tolist()):
            for j, (got, confidence) in enumerate(self.predict_one(ident, k)):
                cand[r, j] = got
                conf[r, j] = confidence
        return cand, conf

    def predict_one(self, ident: int, k: int) -> list[tuple[int, float]]:
        if ident < 0:
            return []
        vocab = self.vocab
        pid = vocab.prefix_of.item(ident)
        if pid < 0 or pid >= self.max_prefixes:
            return []
        run = self.run.item(pid)
        if run < self.min_run:
            return []
        base, step, width = vocab.number_of.item(ident), self.step.item(pid), vocab.width_of.item(ident)
        confidence = float32(1.0 - 0.5 ** min(run, MAX_CONFIDENCE_RUN))
        out = []
        for j in range(1, k + 1):
            number = base + step * j
            if number < 0:
                break
            got = vocab.numbered(pid, number, width)
            if got < 0:
                break
            out.append((got, confidence))
        return out

    def save(self, path: str | Path) -> None:
        save_arrays(path, last=self.last, step=self.step, run=self.run, known=self.known)

    def load(self, path: str | Path) -> None:
        data = load_arrays(path)
        for name in ("last", "step", "run", "known"):
            if data[name].shape != getattr(self, name).shape:
                raise ValueError(f"{path}: {name} of shape {data[name].shape}, expected {getattr(self, name).shape}")
            getattr(self, name)[...] = data[name]

    @property
    def nbytes(self) -> int:
        return int(self.last.nbytes + self.step.nbytes + self.run.nbytes + self.known.nbytes)
