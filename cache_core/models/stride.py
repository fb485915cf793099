# SPDX-License-Identifier: Apache-2.0
"""Stride detector: keys ``<prefix><number>`` read at a constant step predict the next ones.

Per key prefix it keeps the last number, the last step and how many times in a row that
step repeated. Once a step has repeated ``min_run`` times, the next ``k`` keys along it are
predicted (``block:0100`` after ``block:0098``, ``block:0099`` → ``block:0101``...), with a
confidence that grows with the run (``1 - 2^-run``). Unlike a successor model it names keys
never seen before, which is what a sequential scan needs. The state is three arrays
indexed by prefix ID; prediction is vectorised over the batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy

from cache_core.models.base import (
    Vocabulary,
    empty_prediction,
    load_arrays,
    save_arrays,
)

DEFAULT_MIN_RUN = 2
DEFAULT_MAX_PREFIXES = 1 << 16


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
        if ids.shape[0] == 1:
            ident = int(ids[0])
            if ident >= 0:
                p = int(self.vocab.prefix_of[ident])
                if 0 <= p < self.max_prefixes:
                    self._observe_one(p, int(self.vocab.number_of[ident]))
            return
        ids = ids[ids >= 0]
        if ids.shape[0] == 0:
            return
        pids = self.vocab.prefix_of[ids]
        nums = self.vocab.number_of[ids]
        ok = (pids >= 0) & (pids < self.max_prefixes)
        # Sequential per prefix: a batch usually holds one or two prefixes, so a short loop.
        for p, n in zip(pids[ok].tolist(), nums[ok].tolist()):
            self._observe_one(p, n)

    def _observe_one(self, p: int, n: int) -> None:
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
        n = ids.shape[0]
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
        confidence = (1.0 - 0.5 ** numpy.minimum(self.run[p], 30)).astype(numpy.float32)
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

    def predict_one(self, ident: int, k: int) -> list[tuple[int, float]]:
        if ident < 0:
            return []
        vocab = self.vocab
        pid = int(vocab.prefix_of[ident])
        if pid < 0 or pid >= self.max_prefixes:
            return []
        run = int(self.run[pid])
        if run < self.min_run:
            return []
        base, step, width = int(vocab.number_of[ident]), int(self.step[pid]), int(vocab.width_of[ident])
        confidence = 1.0 - 0.5 ** min(run, 30)
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
