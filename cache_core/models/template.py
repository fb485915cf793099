# SPDX-License-Identifier: Apache-2.0
"""Key templates and the key-free template-transition scorer (what hosts share when they
learn together, agent.federated).

A key's *template* is the key with its variable parts masked: split at separators
(``:/._-|#@=``), every token that holds a digit becomes ``{}`` and its value one of the
key's *variables* (``user:42:profile`` → ``user:{}:profile`` with ``(42,)``). Hosts serving
the same application see the same templates over different variables; which template
follows which, for the same variables, is what generalises across hosts.

:class:`TemplateScorer` counts those transitions: when a key with template ``B`` and
variables ``v`` is read and the last key read with the same variables had template ``A``
(``A != B``), the pair ``(A, B)`` counts once (an *example*) and so does the source ``A``.
Counts live in two fixed arrays of buckets indexed by a public (unkeyed) BLAKE2b hash of
the template text, the same on every host, so two hosts' arrays line up index by index
and averaging them is meaningful; the template text itself, the variables and the keys
stay on the host. Keys without a variable part are left out: their template would be the
key itself. The shared parameters are the per-example rates ``pair / examples`` and
``source / examples``: their mean weighted by examples (FedAvg) is exactly the rate of
the pooled counts, as if one host had seen all the traffic.

:class:`TemplateExpert` makes the scorer an expert of the mixture: after a read of
``A(v)`` it proposes ``B(v)`` for the templates ``B`` of the same arity known on this host,
with the probability ``P(B | A)`` the counts give (local counts plus the shared rates
weighted as ``prior_examples`` pseudo-examples), when it is at least ``MIN_PROBABILITY``.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from pathlib import Path

import numpy

from cache_core.models.base import Vocabulary, empty_prediction, float32, load_arrays, save_arrays

# Bucket counts of the shared arrays (powers of two; a collision merges two templates' counts).
PAIR_BUCKETS = 1 << 14
SOURCE_BUCKETS = 1 << 12
# Variable tuples remembered with the template last read with them (least recently used out).
RECENT_VARIABLES = 1 << 14
# Weight, in examples, of the shared rates next to the local counts.
DEFAULT_PRIOR_EXAMPLES = 50_000
# Pseudo-count added to a source template's total (Laplace-style: an unseen source predicts little).
SMOOTHING = 1.0
# Transitions counted between two snapshots of the counts that successors are ranked from
# (a new template also takes one). Predictions read the snapshot, so they are a function of
# the saved state: a loaded or copied scorer predicts exactly as the original.
RANK_REFRESH = 256
# Least probability of a successor the expert proposes: the mixture weighs an expert by the
# share of its proposals that are read, so long shots would discount its sure calls too.
MIN_PROBABILITY = 0.25
# Most templates of one arity considered as successors (bounds the work per prediction).
MAX_TEMPLATES = 4096
_SEPARATORS = re.compile(rb"([:/._\-|#@=]+)")
_DIGIT = re.compile(rb"\d")
VARIABLE = b"{}"


def key_template(key: bytes) -> tuple[bytes, tuple[bytes, ...]]:
    """``(template, variables)`` of ``key``: tokens holding a digit masked as ``{}``."""
    parts = _SEPARATORS.split(key)
    variables = []
    for i in range(0, len(parts), 2):
        if _DIGIT.search(parts[i]):
            variables.append(parts[i])
            parts[i] = VARIABLE
    return b"".join(parts), tuple(variables)


def instantiate(template: bytes, variables: tuple[bytes, ...]) -> bytes:
    """The key of ``template`` with its ``{}`` replaced by ``variables``, in order."""
    pieces = template.split(VARIABLE)
    out = [pieces[0]]
    for value, piece in zip(variables, pieces[1:]):
        out += [value, piece]
    return b"".join(out)


def template_hash(text: bytes) -> int:
    """Public 64-bit BLAKE2b of ``text`` (unkeyed: the same on every host)."""
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def pair_bucket(source: bytes, target: bytes) -> int:
    return template_hash(source + b"\x00" + target) % PAIR_BUCKETS


def source_bucket(source: bytes) -> int:
    return template_hash(source) % SOURCE_BUCKETS


class TemplateScorer:
    """Template-transition counts on this host, plus the shared rates (see the module)."""

    def __init__(self, prior_examples: float = DEFAULT_PRIOR_EXAMPLES) -> None:
        self.prior_examples = float(prior_examples)
        self.pair = numpy.zeros(PAIR_BUCKETS, dtype=numpy.float64)
        self.source = numpy.zeros(SOURCE_BUCKETS, dtype=numpy.float64)
        self.examples = 0
        self.shared_pair = numpy.zeros(PAIR_BUCKETS, dtype=numpy.float64)
        self.shared_source = numpy.zeros(SOURCE_BUCKETS, dtype=numpy.float64)
        self._recent: OrderedDict[tuple[bytes, ...], bytes] = OrderedDict()
        self._by_arity: dict[int, list[bytes]] = {}
        self._known: set[bytes] = set()
        self._ranked: dict[bytes, list[tuple[bytes, float]]] = {}
        # Bucket indexes, computed once: a source's own, and its pair with each known template
        # of its arity (in the order of ``_by_arity``; extended as templates are learned).
        self._source_buckets: dict[bytes, int] = {}
        # The last key split (a read is observed, then predicted from: one split serves both).
        self._last_split: tuple[bytes, tuple[bytes, tuple[bytes, ...]]] = (b"", (b"", ()))
        self._pair_buckets: dict[bytes, list[int]] = {}
        self._since_rank = 0
        self._rank_pair = self.pair.copy()
        self._rank_source = self.source.copy()

    # -- learning ---------------------------------------------------------------------
    def observe_key(self, key: bytes) -> None:
        """Learn from one read of ``key``, in order."""
        template, variables = self._split(key)
        if not variables:
            return
        self._learn_template(template, len(variables))
        recent = self._recent
        previous = recent.get(variables)
        recent[variables] = template
        recent.move_to_end(variables)
        if len(recent) > RECENT_VARIABLES:
            recent.popitem(last=False)
        if previous is None or previous == template:
            return
        self.pair[pair_bucket(previous, template)] += 1.0
        self.source[self._source_bucket(previous)] += 1.0
        self.examples += 1
        self._since_rank += 1
        if self._since_rank >= RANK_REFRESH:
            self._snapshot()

    def observe_keys(self, keys: list[bytes]) -> int:
        """:meth:`observe_key` of each key; how many examples (transitions) they added."""
        before = self.examples
        for key in keys:
            self.observe_key(key)
        return self.examples - before

    def _learn_template(self, template: bytes, arity: int) -> None:
        if template in self._known:
            return
        known = self._by_arity.setdefault(arity, [])
        if len(known) >= MAX_TEMPLATES:
            return
        known.append(template)
        self._known.add(template)
        self._snapshot()

    def _snapshot(self) -> None:
        """Rank from the counts as they are now (until the next snapshot)."""
        self._rank_pair[...] = self.pair
        self._rank_source[...] = self.source
        self._since_rank = 0
        self._ranked.clear()

    # -- the shared part ----------------------------------------------------------------
    def rates(self) -> list[numpy.ndarray]:
        """This host's shared parameters: ``[pair / examples, source / examples]``."""
        scale = 1.0 / self.examples if self.examples else 0.0
        return [self.pair * scale, self.source * scale]

    def set_shared(self, parameters: list[numpy.ndarray]) -> None:
        """Take the fleet's rates (an aggregate of :meth:`rates`) as the prior."""
        pair, source = (numpy.asarray(p, dtype=numpy.float64) for p in parameters)
        if pair.shape != (PAIR_BUCKETS,) or source.shape != (SOURCE_BUCKETS,):
            raise ValueError(f"shared template parameters have shapes {pair.shape} and {source.shape}; expected ({PAIR_BUCKETS},) and ({SOURCE_BUCKETS},)")
        if not (numpy.isfinite(pair).all() and numpy.isfinite(source).all()):
            raise ValueError("shared template parameters hold non-finite values")
        # Noise (differential privacy) can push a rate below zero; a count cannot be.
        self.shared_pair = numpy.maximum(pair, 0.0)
        self.shared_source = numpy.maximum(source, 0.0)
        self._ranked.clear()

    # -- prediction ---------------------------------------------------------------------
    def _split(self, key: bytes) -> tuple[bytes, tuple[bytes, ...]]:
        last, split = self._last_split
        if key != last or not key:
            split = key_template(key)
            self._last_split = (key, split)
        return split

    def _source_bucket(self, source: bytes) -> int:
        bucket = self._source_buckets.get(source)
        if bucket is None:
            bucket = self._source_buckets[source] = source_bucket(source)
        return bucket

    def successors(self, source: bytes, arity: int) -> list[tuple[bytes, float]]:
        """The templates of ``arity`` known here that may follow ``source``, best first
        (at least ``MIN_PROBABILITY``), ranked from the last snapshot of the counts."""
        ranked = self._ranked.get(source)
        if ranked is not None:
            return ranked
        targets = self._by_arity.get(arity, [])
        buckets = self._pair_buckets.setdefault(source, [])
        buckets += [pair_bucket(source, t) for t in targets[len(buckets) :]]
        if not buckets:
            ranked = self._ranked[source] = []
            return ranked
        prior, at = self.prior_examples, numpy.asarray(buckets, dtype=numpy.int64)
        home = self._source_bucket(source)
        total = self._rank_source[home] + prior * self.shared_source[home] + SMOOTHING
        probs = numpy.minimum(1.0, (self._rank_pair[at] + prior * self.shared_pair[at]) / total)
        order = numpy.argsort(-probs, kind="stable")
        ranked = [(targets[i], float(probs[i])) for i in order.tolist() if probs[i] >= MIN_PROBABILITY and targets[i] != source]
        self._ranked[source] = ranked
        return ranked

    def predict_key(self, key: bytes, k: int) -> list[tuple[bytes, float]]:
        """Up to ``k`` keys likely read next after ``key``, with their probabilities."""
        template, variables = self._split(key)
        if not variables:
            return []
        return [(instantiate(t, variables), p) for t, p in self.successors(template, len(variables))[:k]]

    # -- state --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """The counts, the shared rates, the snapshot predictions rank from and the templates
        known here (their text, which stays on this host like the vocabulary's keys), as one
        .npz file. Which template each variable tuple was last read with is not saved: a
        loaded scorer counts transitions from its next reads on."""
        known = [(t, arity) for arity, templates in sorted(self._by_arity.items()) for t in templates]
        offsets = numpy.zeros(len(known) + 1, dtype=numpy.int64)
        offsets[1:] = numpy.cumsum([len(t) for t, _ in known], dtype=numpy.int64)
        save_arrays(
            path,
            pair=self.pair,
            source=self.source,
            examples=numpy.int64(self.examples),
            shared_pair=self.shared_pair,
            shared_source=self.shared_source,
            template_blob=numpy.frombuffer(b"".join(t for t, _ in known), dtype=numpy.uint8),
            template_offsets=offsets,
            template_arity=numpy.array([arity for _, arity in known], dtype=numpy.int64),
            rank_pair=self._rank_pair,
            rank_source=self._rank_source,
            since_rank=numpy.int64(self._since_rank),
        )

    def load(self, path: str | Path) -> None:
        data = load_arrays(path)
        self.pair[...] = data["pair"]
        self.source[...] = data["source"]
        self.examples = int(data["examples"])
        self.set_shared([data["shared_pair"], data["shared_source"]])
        blob, offsets = data["template_blob"].tobytes(), data["template_offsets"].tolist()
        self._by_arity, self._known, self._pair_buckets = {}, set(), {}
        for (start, end), arity in zip(zip(offsets, offsets[1:]), data["template_arity"].tolist()):
            self._learn_template(blob[start:end], int(arity))
        self._rank_pair[...] = data["rank_pair"]
        self._rank_source[...] = data["rank_source"]
        self._since_rank = int(data["since_rank"])
        self._ranked.clear()

    @property
    def nbytes(self) -> int:
        return int(self.pair.nbytes + self.source.nbytes + self.shared_pair.nbytes + self.shared_source.nbytes)


class TemplateExpert:
    """:class:`TemplateScorer` as an expert of :class:`~cache_core.models.MixtureModel`."""

    name = "template"

    def __init__(self, vocab: Vocabulary, scorer: TemplateScorer) -> None:
        self.vocab = vocab
        self.scorer = scorer

    def observe_one(self, ident: int) -> None:
        if 0 <= ident < len(self.vocab):
            self.scorer.observe_key(self.vocab.decode(ident))

    def observe(self, ids: numpy.ndarray) -> None:
        for ident in ids.tolist():
            self.observe_one(ident)

    def predict_one(self, ident: int, k: int) -> list[tuple[int, float]]:
        if not 0 <= ident < len(self.vocab):
            return []
        out = []
        for key, p in self.scorer.predict_key(self.vocab.decode(ident), k):
            cand = self.vocab.encode(key)
            if cand >= 0:
                out.append((cand, float32(p)))
        return out

    def predict(self, ids: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        cands, confs = empty_prediction(ids.shape[0], k)
        for row, ident in enumerate(ids.tolist()):
            for j, (cand, p) in enumerate(self.predict_one(ident, k)):
                cands[row, j] = cand
                confs[row, j] = p
        return cands, confs

    def save(self, path: str | Path) -> None:
        self.scorer.save(path)

    def load(self, path: str | Path) -> None:
        self.scorer.load(path)

    @property
    def nbytes(self) -> int:
        return self.scorer.nbytes
