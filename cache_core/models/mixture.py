# SPDX-License-Identifier: Apache-2.0
"""The learned prefetch model: experts with more context, mixed by their measured precision.

Experts: the stride detector, the order-1 successor model and the order-2 successor model
(the previous two keys as context, which separates paths that share a key). Each expert
proposes candidates with its own confidence; what is learned online is how far to trust
each one: every proposal is remembered for ``horizon`` accesses and an expert's precision
is the share of its proposals that were accessed within that horizon (a Beta(1, 1) prior,
halved every ``decay_every`` accesses so the weights follow the workload). A candidate's
score combines the experts that propose it as a noisy-OR of ``precision × confidence``:
agreeing experts raise it, an expert that has been wrong lately barely counts.

On a workload with no structure every expert's precision falls, scores fall with it and
the prefetcher's threshold lets little through: the model backs off instead of polluting
the cache. Scores are calibrated probabilities ("how likely is this key to be read soon"),
which is what the prefetcher's threshold compares against.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy

from cache_core.models.base import (
    Vocabulary,
    empty_prediction,
    load_arrays,
    save_arrays,
)
from cache_core.models.markov import DEFAULT_SLOTS, ContextMarkov, MarkovModel
from cache_core.models.stride import StrideModel

DEFAULT_HORIZON = 64
DEFAULT_PRECISION_DECAY_EVERY = 1 << 12
PRIOR_HITS = 1.0
PRIOR_MISSES = 1.0
# Proposals remembered per expert for crediting (a bound, not a tuning knob).
MAX_PENDING = 1 << 16


class MixtureModel:
    name = "model"

    def __init__(
        self,
        vocab: Vocabulary,
        capacity: int,
        *,
        slots: int = DEFAULT_SLOTS,
        horizon: int = DEFAULT_HORIZON,
        decay_every: int = DEFAULT_PRECISION_DECAY_EVERY,
    ) -> None:
        self.experts = [StrideModel(vocab), MarkovModel(capacity, slots), ContextMarkov(capacity, slots)]
        self.horizon = int(horizon)
        self.decay_every = int(decay_every)
        e = len(self.experts)
        self.hits = numpy.zeros(e, dtype=numpy.float64)
        self.proposals = numpy.zeros(e, dtype=numpy.float64)
        self._pending: list[dict[int, int]] = [{} for _ in range(e)]
        self._expiry: list[deque[tuple[int, int]]] = [deque() for _ in range(e)]
        self.step = 0

    @property
    def precision(self) -> numpy.ndarray:
        """Each expert's measured precision (posterior mean)."""
        return (self.hits + PRIOR_HITS) / (self.proposals + PRIOR_HITS + PRIOR_MISSES)

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
            # Proposals past their horizon were not used: forget them (bounded memory too).
            while expiry and (expiry[0][0] < self.step or len(pending) > MAX_PENDING):
                until, ident = expiry.popleft()
                if pending.get(ident) == until:
                    del pending[ident]
        for expert in self.experts:
            expert.observe(ids)

    def predict(self, ids: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        n = ids.shape[0]
        out_c, out_s = empty_prediction(n, k)
        if n == 0:
            return out_c, out_s
        weights = self.precision
        per_expert = [expert.predict(ids, k) for expert in self.experts]
        until = self.step + self.horizon
        for e, (cand, conf) in enumerate(per_expert):
            proposed = cand[(cand >= 0) & (conf > 0)]
            if proposed.shape[0]:
                pending, expiry = self._pending[e], self._expiry[e]
                for ident in proposed.tolist():
                    if ident not in pending:
                        self.proposals[e] += 1
                    pending[ident] = until
                    expiry.append((until, ident))
        for row in range(n):
            miss_prob: dict[int, float] = {}
            for e, (cand, conf) in enumerate(per_expert):
                for ident, c in zip(cand[row].tolist(), conf[row].tolist()):
                    if ident >= 0 and c > 0:
                        miss_prob[ident] = miss_prob.get(ident, 1.0) * (1.0 - float(weights[e]) * c)
            if not miss_prob:
                continue
            best = sorted(miss_prob.items(), key=lambda item: item[1])[:k]
            for j, (ident, miss) in enumerate(best):
                out_c[row, j] = ident
                out_s[row, j] = 1.0 - miss
        return out_c, out_s

    def predict_one(self, ident: int, k: int) -> list[tuple[int, float]]:
        """:meth:`predict` for the newest key alone, on Python scalars."""
        weights = [(h + PRIOR_HITS) / (n + PRIOR_HITS + PRIOR_MISSES) for h, n in zip(self.hits.tolist(), self.proposals.tolist())]
        until = self.step + self.horizon
        miss_prob: dict[int, float] = {}
        for e, expert in enumerate(self.experts):
            proposals = expert.predict_one(ident, k)
            if not proposals:
                continue
            pending, expiry = self._pending[e], self._expiry[e]
            w = weights[e]
            for cand, c in proposals:
                if cand not in pending:
                    self.proposals[e] += 1
                pending[cand] = until
                expiry.append((until, cand))
                miss_prob[cand] = miss_prob.get(cand, 1.0) * (1.0 - w * c)
        best = sorted(miss_prob.items(), key=lambda item: item[1])[:k]
        return [(cand, 1.0 - miss) for cand, miss in best]

    def save(self, path: str | Path) -> None:
        base = Path(path)
        for expert in self.experts:
            expert.save(base.with_name(f"{base.stem}.{expert.name}.npz"))
        save_arrays(base, hits=self.hits, proposals=self.proposals, step=numpy.int64(self.step))

    def load(self, path: str | Path) -> None:
        base = Path(path)
        for expert in self.experts:
            expert.load(base.with_name(f"{base.stem}.{expert.name}.npz"))
        data = load_arrays(base)
        self.hits[...] = data["hits"]
        self.proposals[...] = data["proposals"]
        self.step = int(data["step"])

    @property
    def nbytes(self) -> int:
        return int(sum(expert.nbytes for expert in self.experts) + self.hits.nbytes + self.proposals.nbytes)
