# SPDX-License-Identifier: Apache-2.0
"""What a prefetch model does in one step, wherever it runs.

The prefetcher's worker thread (:mod:`cache_core.prefetch`) and the model process
(:mod:`cache_core.model_host`) both run these, so they live apart from either: one
step of a model (:func:`propose`), a full vocabulary starting over
(:func:`restart_if_full`), what status reports of a model (:func:`describe`) and the
test inference every model passes before it serves (:func:`test_inference`).
"""

from __future__ import annotations

from typing import Any

import numpy

from cache_core.models import make_model, model_array_module
from cache_core.models.base import Vocabulary


def propose(model: Any, vocab: Vocabulary, keys: list[bytes], depth: int, predict_last: int) -> list[tuple[bytes, float]]:
    """Encode and learn ``keys`` with ``model``; its candidates (as keys) after the last ones."""
    ids = vocab.encode_many(keys)
    model.observe(ids)
    tail = ids[-predict_last:]
    one = getattr(model, "predict_one", None)
    if tail.shape[0] == 1 and callable(one):
        proposals = one(int(tail[0]), depth)
    else:
        cand, conf = model.predict(tail, depth)
        ok = cand >= 0
        proposals = list(zip(cand[ok].tolist(), conf[ok].tolist()))
    decode, known = vocab.decode, len(vocab)
    return [(decode(c), score) for c, score in proposals if 0 <= c < known]


def restart_if_full(model: Any, vocab: Vocabulary, learn_online: bool, xp: Any) -> tuple[Any, bool]:
    """A full vocabulary starts over, and with it the model (its IDs would name other keys).
    Returns the model to go on with and whether it is a fresh one."""
    if len(vocab) < vocab.capacity or not learn_online:
        return model, False
    vocab.clear()
    return make_model(getattr(model, "name", ""), vocab, xp=xp), True


def describe(model: Any, vocab: Vocabulary) -> dict[str, Any]:
    """What the prefetcher's status reports of a model it may not hold itself."""
    return {
        "vocabulary": len(vocab),
        "model_bytes": int(getattr(model, "nbytes", 0)),
        "backend": model_array_module(model).__name__.rsplit(".", 1)[-1],
    }


def test_inference(model: Any, vocab: Vocabulary, depth: int) -> tuple[bool, str]:
    """Run one prediction and check that what comes back is a well-formed answer.

    Every model is tested before it serves (readiness reports the outcome).
    """
    ident = 0 if len(vocab) else -1
    try:
        cand, conf = model.predict(numpy.asarray([ident], dtype=numpy.int64), depth)
    except Exception as exc:
        return False, f"test inference raised {exc.__class__.__name__}: {exc}"
    cand, conf = numpy.asarray(cand), numpy.asarray(conf)
    if cand.shape != (1, depth) or conf.shape != (1, depth):
        return False, f"test inference returned shapes {cand.shape} and {conf.shape}, expected (1, {depth})"
    valid = cand >= 0
    if bool((cand[valid] >= vocab.capacity).any()):
        return False, "test inference named key IDs outside the vocabulary"
    scores = conf[valid]
    if scores.size and not (numpy.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()):
        return False, "test inference returned confidences outside [0, 1]"
    return True, f"model {getattr(model, 'name', '?')} loaded; a test inference returned {int(valid.sum())} candidate(s)"
