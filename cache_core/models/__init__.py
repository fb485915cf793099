# SPDX-License-Identifier: Apache-2.0
"""Prefetch models: stride and counting-Markov baselines, and the learned mixture."""

from __future__ import annotations

from typing import Any

from cache_core.models.base import DEFAULT_VOCABULARY_SIZE, PrefetchModel, Vocabulary
from cache_core.models.markov import ContextMarkov, MarkovModel
from cache_core.models.mixture import MixtureModel
from cache_core.models.stride import StrideModel

MODELS = ("stride", "markov", "model")

__all__ = ["DEFAULT_VOCABULARY_SIZE", "MODELS", "ContextMarkov", "MarkovModel", "MixtureModel", "PrefetchModel", "StrideModel", "Vocabulary", "make_model"]


def make_model(name: str, vocab: Vocabulary, capacity: int | None = None) -> Any:
    """The model called ``name`` over ``vocab`` (its tables sized like the vocabulary)."""
    size = capacity or vocab.capacity
    if name == "stride":
        return StrideModel(vocab)
    if name == "markov":
        return MarkovModel(size)
    if name == "model":
        return MixtureModel(vocab, size)
    raise ValueError(f"unknown prefetch model {name!r}; expected one of {', '.join(MODELS)}")
