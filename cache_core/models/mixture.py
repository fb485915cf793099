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

Batches are learned and predicted with array operations (the open proposals are an array
indexed by key ID, the noisy-OR is merged for all rows at once); short batches and
:meth:`MixtureModel.predict_one` stay on Python scalars. Both give the same state and the
same scores as the per-key loops they replace.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import numpy

from cache_core.models.base import (
    PrefetchModel,
    Vocabulary,
    empty_prediction,
    float32,
    load_arrays,
    save_arrays,
)
from cache_core.models.markov import DEFAULT_SLOTS, ContextMarkov, MarkovModel
from cache_core.models.stride import StrideModel
from cache_core.models.template import TemplateExpert, TemplateScorer

DEFAULT_HORIZON = 64
DEFAULT_PRECISION_DECAY_EVERY = 1 << 12
PRIOR_HITS = 1.0
PRIOR_MISSES = 1.0
# Proposals remembered per expert for crediting (a bound, not a tuning knob).
MAX_PENDING = 1 << 16
# Batches up to this many accesses are credited, proposed and merged on Python scalars: the
# array calls' fixed cost would dominate so short a batch.
SCALAR_BATCH = 8
# Key IDs the proposal bookkeeping has room for at first (it doubles as needed).
INITIAL_ROOM = 1024
# ``until`` of a key with no open proposal.
NOT_PENDING = -1
# Below this, adding 1.0 to a float is exact unless the sum reaches the next power of two.
_EXACT_LIMIT = float(1 << 53)


def add_ones(x: float, count: int) -> float:
    """``x`` after ``count`` times ``x += 1.0``, rounded as that loop rounds, in O(log) steps.

    Within one binade (between two powers of two) below 2^53 the spacing of floats is at
    most 1, so adding ones is exact until the sum reaches the next power of two: each such
    stretch is one exact addition, and only the step that crosses the power of two rounds,
    exactly as it does in the loop.
    """
    while count > 0:
        if not 1.0 <= x < _EXACT_LIMIT:
            x += 1.0
            count -= 1
            continue
        room = math.ldexp(1.0, math.frexp(x)[1]) - x
        exact = min(count, math.ceil(room) - 1)
        x += exact
        count -= exact
        if count:
            x += 1.0
            count -= 1
    return x


def first_occurrences(ids: numpy.ndarray) -> numpy.ndarray:
    """Mask of the positions where each value of ``ids`` appears first."""
    order = numpy.argsort(ids, kind="stable")
    ordered = ids[order]
    mask = numpy.zeros(ids.shape[0], dtype=bool)
    mask[order[numpy.concatenate([[True], ordered[1:] != ordered[:-1]])]] = True
    return mask


class Expert(PrefetchModel, Protocol):
    """What the mixture asks of an expert: a prefetch model with scalar paths for one key."""

    def observe_one(self, ident: int) -> None: ...

    def predict_one(self, ident: int, k: int) -> list[tuple[int, float]]: ...


class _Proposals:
    """One expert's open proposals: which keys it proposed, until which step they count.

    ``until[ID]`` is the last step a proposal of that key is credited at (``NOT_PENDING``:
    none open) and ``open`` how many keys have one. ``log`` holds every proposal in the
    order made, superseded ones included, as chunks ``(until, IDs)`` (one per predict
    call: a list on the scalar paths, an array on the batch paths); expiring pops its
    front, and an entry removes its key only if the key's proposal is still that one.
    ``until_view`` (a memoryview of ``until``) serves the scalar paths, which
    :class:`MixtureModel` runs inline: an item costs what a dict lookup does.
    """

    def __init__(self) -> None:
        self.until = numpy.full(INITIAL_ROOM, NOT_PENDING, dtype=numpy.int64)
        self.until_view = self.until.data
        self.open = 0
        self.log: deque[tuple[int, Any]] = deque()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "until_view"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.until_view = self.until.data

    def room_for(self, ident: int) -> None:
        """Grow ``until`` (by doubling) to hold ID ``ident``."""
        if ident < self.until.shape[0]:
            return
        grown = numpy.full(max(ident + 1, 2 * self.until.shape[0]), NOT_PENDING, dtype=numpy.int64)
        grown[: self.until.shape[0]] = self.until
        self.until = grown
        self.until_view = grown.data

    def expire(self, step: int) -> None:
        """Forget proposals past their horizon, and the oldest beyond :data:`MAX_PENDING`."""
        log, view = self.log, self.until_view
        while log and (log[0][0] < step or self.open > MAX_PENDING):
            until, idents = log.popleft()
            if until >= step:
                # Over the bound only: pop this chunk's entries one at a time, no more than needed.
                rest = deque(numpy.asarray(idents, dtype=numpy.int64).tolist())
                while rest and self.open > MAX_PENDING:
                    ident = rest.popleft()
                    if view[ident] == until:
                        view[ident] = NOT_PENDING
                        self.open -= 1
                if rest:
                    log.appendleft((until, list(rest)))
                    return
            elif isinstance(idents, numpy.ndarray):
                closed = idents[self.until[idents] == until]
                self.open -= self._distinct(closed)
                self.until[closed] = NOT_PENDING
            else:
                for ident in idents:
                    if view[ident] == until:
                        view[ident] = NOT_PENDING
                        self.open -= 1

    # -- array paths -------------------------------------------------------------------
    def take_many(self, ids: numpy.ndarray) -> numpy.ndarray:
        """Close the open proposals of the accessed ``ids``, in order: the positions that
        closed one (a key's first access in the batch; later ones find it closed)."""
        ok = (ids >= 0) & (ids < self.until.shape[0])
        hit = numpy.zeros(ids.shape[0], dtype=bool)
        hit[ok] = self.until[ids[ok]] != NOT_PENDING
        positions = numpy.flatnonzero(hit)
        if positions.shape[0] == 0:
            return positions
        keys = ids[positions]
        if self._distinct(keys) < positions.shape[0]:
            positions = positions[first_occurrences(keys)]
            keys = ids[positions]
        self.until[keys] = NOT_PENDING
        self.open -= int(positions.shape[0])
        return positions

    def _distinct(self, keys: numpy.ndarray) -> int:
        """How many distinct IDs ``keys`` (all below the ``until`` array's size) holds.

        Without sorting: every position writes its own code into its key's entry, one
        write per key survives, the survivors are counted and the entries restored.
        """
        if keys.shape[0] < 2:
            return int(keys.shape[0])
        saved = self.until[keys]
        codes = -2 - numpy.arange(keys.shape[0], dtype=numpy.int64)
        self.until[keys] = codes
        distinct = int(numpy.count_nonzero(self.until[keys] == codes))
        self.until[keys] = saved
        return distinct

    def propose_many(self, idents: numpy.ndarray, until: int) -> int:
        """Open (or renew) proposals of ``idents`` until ``until``, in order; how many were new."""
        self.room_for(int(idents.max()))
        new = self._distinct(idents[self.until[idents] == NOT_PENDING])
        self.open += new
        self.until[idents] = until
        self.log.append((until, idents))
        return new

    def expire_many(self, step: int) -> None:
        """:meth:`expire`, the chunks past their horizon at the front popped as arrays."""
        log = self.log
        gone = []
        while log and log[0][0] < step:
            gone.append(log.popleft())
        if gone:
            if len(gone) == 1:
                until, idents = gone[0]
                idents = numpy.asarray(idents, dtype=numpy.int64)
                closed = idents[self.until[idents] == until]
            else:
                idents = numpy.concatenate([numpy.asarray(chunk, dtype=numpy.int64) for _, chunk in gone])
                untils = numpy.repeat([until for until, _ in gone], [len(chunk) for _, chunk in gone])
                closed = idents[self.until[idents] == untils]
            if closed.shape[0]:
                self.open -= self._distinct(closed)
                self.until[closed] = NOT_PENDING
        if self.open > MAX_PENDING:
            self.expire(step)


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
        xp: Any = numpy,
        template: TemplateScorer | None = None,
    ) -> None:
        # The successor experts' tables live on ``xp``; the stride detector (which names keys
        # through the host vocabulary) and the precision bookkeeping stay on the host. With
        # ``template``, the key-free template expert (cache_core.models.template) joins them.
        self.experts: list[Expert] = [StrideModel(vocab), MarkovModel(capacity, slots, xp=xp), ContextMarkov(capacity, slots, xp=xp)]
        if template is not None:
            self.experts.append(TemplateExpert(vocab, template))
            self.name = "federated"
        self.horizon = int(horizon)
        self.decay_every = int(decay_every)
        e = len(self.experts)
        self.hits = numpy.zeros(e, dtype=numpy.float64)
        self.proposals = numpy.zeros(e, dtype=numpy.float64)
        self._books = [_Proposals() for _ in range(e)]
        self.step = 0

    @property
    def template(self) -> TemplateScorer | None:
        """The template expert's scorer, when the mixture has one."""
        for expert in self.experts:
            if isinstance(expert, TemplateExpert):
                return expert.scorer
        return None

    def add_template(self, vocab: Vocabulary, scorer: TemplateScorer) -> None:
        """Add the template expert (``scorer`` over ``vocab``) to a mixture without one (it
        becomes a ``federated`` model); the expert starts at the prior precision, as every
        expert of a new mixture does."""
        if self.template is not None:
            raise ValueError("this mixture already has a template expert")
        self.experts.append(TemplateExpert(vocab, scorer))
        self.name = "federated"
        self.hits = numpy.append(self.hits, 0.0)
        self.proposals = numpy.append(self.proposals, 0.0)
        self._books.append(_Proposals())

    def place(self, xp: Any) -> None:
        """Move the successor experts' tables to the array module ``xp``."""
        for expert in self.experts:
            place = getattr(expert, "place", None)
            if place is not None:
                place(xp)

    def expert_weights(self) -> list[numpy.ndarray]:
        """The mixture's key-free weights: each expert's (decayed) hits and proposals."""
        return [self.hits.copy(), self.proposals.copy()]

    def set_expert_weights(self, weights: list[numpy.ndarray]) -> None:
        """Start from ``weights`` (another mixture's :meth:`expert_weights`, or a fleet's mean
        of them, over the same experts) instead of the prior; they decay as this host's own
        counts do."""
        hits, proposals = (numpy.asarray(w, dtype=numpy.float64) for w in weights)
        if hits.shape != self.hits.shape or proposals.shape != self.proposals.shape:
            raise ValueError(f"expert weights have shapes {hits.shape} and {proposals.shape}; this mixture has {len(self.experts)} experts")
        if (hits < 0).any() or (hits > proposals).any():
            raise ValueError("expert weights need 0 <= hits <= proposals")
        self.hits[...] = hits
        self.proposals[...] = proposals

    @property
    def precision(self) -> numpy.ndarray:
        """Each expert's measured precision (posterior mean)."""
        return (self.hits + PRIOR_HITS) / (self.proposals + PRIOR_HITS + PRIOR_MISSES)

    def observe(self, ids: numpy.ndarray) -> None:
        if ids.shape[0] == 1:
            ident = int(ids[0])
            self._credit([ident])
            for expert in self.experts:
                expert.observe_one(ident)
            return
        if ids.shape[0] <= SCALAR_BATCH:
            self._credit(ids.tolist())
        else:
            self._credit_many(ids)
        for expert in self.experts:
            expert.observe(ids)

    def _credit(self, idents: list[int]) -> None:
        """Credit the experts whose open proposals the accesses hit, one access at a time
        (on the books' memoryviews, inline: this runs for every single access)."""
        hits, books, step = self.hits, self._books, self.step
        for ident in idents:
            step += 1
            for e, book in enumerate(books):
                if book.open:
                    view = book.until_view
                    if 0 <= ident < len(view) and view[ident] != NOT_PENDING:
                        view[ident] = NOT_PENDING
                        book.open -= 1
                        hits[e] += 1
            if step % self.decay_every == 0:
                hits *= 0.5
                self.proposals *= 0.5
        self.step = step
        for book in books:
            log = book.log
            if log and (log[0][0] < step or book.open > MAX_PENDING):
                book.expire(step)

    def _credit_many(self, ids: numpy.ndarray) -> None:
        """:meth:`_credit` as array operations: the hits counted between the decay steps."""
        n, start = ids.shape[0], self.step
        taken = [book.take_many(ids) if book.open else numpy.zeros(0, dtype=numpy.int64) for book in self._books]
        # Access i is step start + i + 1; the counts halve right after each multiple of decay_every.
        decays = numpy.arange((-start - 1) % self.decay_every, n, self.decay_every)
        if decays.shape[0]:
            cuts = numpy.append(decays, n - 1)
            counts = [numpy.diff(numpy.searchsorted(positions, cuts, side="right"), prepend=0).tolist() for positions in taken]
        else:
            counts = [[positions.shape[0]] for positions in taken]
        for stretch in range(decays.shape[0] + 1):
            for e, count in enumerate(counts):
                if count[stretch]:
                    self.hits[e] = add_ones(float(self.hits[e]), count[stretch])
            if stretch < decays.shape[0]:
                self.hits *= 0.5
                self.proposals *= 0.5
        self.step = start + n
        for book in self._books:
            book.expire_many(self.step)

    def predict(self, ids: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        n = ids.shape[0]
        if n == 0:
            return empty_prediction(n, k)
        weights = self.precision
        per_expert = [expert.predict(ids, k) for expert in self.experts]
        until = self.step + self.horizon
        for e, (cand, conf) in enumerate(per_expert):
            proposed = cand[(cand >= 0) & (conf > 0)]
            if proposed.shape[0] == 0:
                continue
            book = self._books[e]
            if proposed.shape[0] <= SCALAR_BATCH:
                self._propose(e, proposed.tolist(), until)
            else:
                new = book.propose_many(proposed, until)
                if new:
                    self.proposals[e] = add_ones(float(self.proposals[e]), new)
        if n <= SCALAR_BATCH:
            return self._merge_rows(per_expert, weights, k)
        return self._merge(per_expert, weights, k)

    @staticmethod
    def _merge_rows(per_expert: list[tuple[numpy.ndarray, numpy.ndarray]], weights: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        """The noisy-OR merge, one row at a time (short batches)."""
        n = per_expert[0][0].shape[0]
        out_c, out_s = empty_prediction(n, k)
        rows = [(w, cand.tolist(), conf.tolist()) for w, (cand, conf) in zip(weights.tolist(), per_expert)]
        for row in range(n):
            miss_prob: dict[int, float] = {}
            for w, cands, confs in rows:
                for ident, c in zip(cands[row], confs[row]):
                    if ident >= 0 and c > 0:
                        miss_prob[ident] = miss_prob.get(ident, 1.0) * (1.0 - w * c)
            if not miss_prob:
                continue
            best = sorted(miss_prob.items(), key=lambda item: item[1])[:k]
            for j, (ident, miss) in enumerate(best):
                out_c[row, j] = ident
                out_s[row, j] = 1.0 - miss
        return out_c, out_s

    @staticmethod
    def _merge(per_expert: list[tuple[numpy.ndarray, numpy.ndarray]], weights: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        """:meth:`_merge_rows` for all rows at once, with the same products and the same order.

        Slots are laid out as the loop visits them (expert by expert, column by column),
        one array row per slot; slots no row uses are left out. Each slot is compared with
        the earlier ones: a key's product starts at its first slot and takes the factors
        ``1 - precision × confidence`` of its later slots left to right, as the loop's dict
        does, and a repeated slot drops out. The best keys are then picked by lowest miss
        probability, ties to the earliest slot, as ``sorted`` over the dict's insertion
        order does.
        """
        n = per_expert[0][0].shape[0]
        out_c, out_s = empty_prediction(n, k)
        cands = numpy.concatenate([cand.T for cand, _ in per_expert])
        confs = numpy.concatenate([conf.T for _, conf in per_expert])
        valid = (cands >= 0) & (confs > 0)
        used = numpy.flatnonzero(valid.any(axis=1))
        m = used.shape[0]
        if m == 0:
            return out_c, out_s
        if m < cands.shape[0]:
            cands, confs, valid = cands[used], confs[used], valid[used]
        factor = 1.0 - numpy.repeat(weights, k)[used, None] * confs
        # An empty slot gets a key of its own (below -1), so it equals no other slot.
        keyed = numpy.where(valid, cands, -2 - numpy.arange(m)[:, None])
        miss = numpy.where(valid, factor, numpy.inf)
        for j in range(1, m):
            same = keyed[:j] == keyed[j]
            repeated = same.any(axis=0)
            if repeated.any():
                miss[:j] = numpy.where(same, miss[:j] * factor[j], miss[:j])
                miss[j, repeated] = numpy.inf
        cols = numpy.arange(n)
        for j in range(min(k, m)):
            best, pick = miss[0], numpy.zeros(n, dtype=numpy.int64)
            for slot in range(1, m):
                numpy.putmask(pick, miss[slot] < best, slot)
                best = numpy.minimum(best, miss[slot])
            found = best < numpy.inf
            out_c[:, j] = numpy.where(found, cands[pick, cols], -1)
            out_s[:, j] = numpy.where(found, 1.0 - best, 0.0)
            if j + 1 < k:
                miss[pick, cols] = numpy.inf
        return out_c, out_s

    def _propose(self, e: int, idents: list[int], until: int) -> None:
        """Expert ``e`` proposes ``idents`` (open or renewed until ``until``), on Python scalars."""
        book = self._books[e]
        view = book.until_view
        top = max(idents)
        if top >= len(view):
            book.room_for(top)
            view = book.until_view
        for ident in idents:
            if view[ident] == NOT_PENDING:
                book.open += 1
                self.proposals[e] += 1
            view[ident] = until
        book.log.append((until, idents))

    def predict_one(self, ident: int, k: int) -> list[tuple[int, float]]:
        """:meth:`predict` for the newest key alone, on Python scalars."""
        weights = [(h + PRIOR_HITS) / (n + PRIOR_HITS + PRIOR_MISSES) for h, n in zip(self.hits.tolist(), self.proposals.tolist())]
        until = self.step + self.horizon
        miss_prob: dict[int, float] = {}
        for e, expert in enumerate(self.experts):
            proposals = expert.predict_one(ident, k)
            if not proposals:
                continue
            self._propose(e, [cand for cand, _ in proposals], until)
            w = weights[e]
            for cand, c in proposals:
                miss_prob[cand] = miss_prob.get(cand, 1.0) * (1.0 - w * c)
        best = sorted(miss_prob.items(), key=lambda item: item[1])[:k]
        # Rounded to float32, as :meth:`predict` stores its scores.
        return [(cand, float32(1.0 - miss)) for cand, miss in best]

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
