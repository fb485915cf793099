# SPDX-License-Identifier: Apache-2.0
"""Prefetch models: stride and counting-Markov baselines, the learned mixture, and the mixture
with the key-free template expert whose rates the fleet learns together (``federated``)."""

from __future__ import annotations

from typing import Any

import numpy

from cache_core.models.base import DEFAULT_VOCABULARY_SIZE, PrefetchModel, Vocabulary
from cache_core.models.markov import ContextMarkov, MarkovModel, SuccessorTable
from cache_core.models.mixture import MixtureModel
from cache_core.models.stride import StrideModel
from cache_core.models.template import TemplateScorer

MODELS = ("stride", "markov", "model", "federated")

__all__ = ["DEFAULT_VOCABULARY_SIZE", "MODELS", "ContextMarkov", "MarkovModel", "MixtureModel", "PrefetchModel", "StrideModel", "Vocabulary", "make_model", "model_array_module", "place_model", "set_learning"]


def make_model(name: str, vocab: Vocabulary, capacity: int | None = None, xp: Any = numpy) -> Any:
    """The model called ``name`` over ``vocab`` (its tables sized like the vocabulary, on
    the array module ``xp``)."""
    size = capacity or vocab.capacity
    if name == "stride":
        return StrideModel(vocab)
    if name == "markov":
        return MarkovModel(size, xp=xp)
    if name == "model":
        return MixtureModel(vocab, size, xp=xp)
    if name == "federated":
        return MixtureModel(vocab, size, xp=xp, template=TemplateScorer())
    raise ValueError(f"unknown prefetch model {name!r}; expected one of {', '.join(MODELS)}")


def place_model(model: Any, xp: Any) -> Any:
    """Move ``model``'s learned tables to the array module ``xp`` (the cache's: CuPy when it
    runs on the GPU); a model with nothing to move (stride) stays as it is. Returns it."""
    place = getattr(model, "place", None)
    if place is not None:
        place(xp)
    return model


def model_array_module(model: Any) -> Any:
    """The array module ``model``'s successor tables live on (NumPy if it has none)."""
    tables = successor_tables(model)
    return tables[0].xp if tables else numpy


def successor_tables(model: Any) -> list[SuccessorTable]:
    """The successor tables ``model`` holds: its own, or its experts' (a stride model has none)."""
    tables = []
    for part in [model, *getattr(model, "experts", [])]:
        table = getattr(part, "table", None)
        if isinstance(table, SuccessorTable):
            tables.append(table)
    return tables


def set_learning(model: Any, enabled: bool) -> None:
    """Let ``model``'s successor tables learn (``enabled``) or serve as trained.

    Only the tables are frozen: context tracking (the previous keys, the stride detector's
    runs) and the mixture's precision bookkeeping stay live either way, so a frozen model
    still predicts from where the stream is.
    """
    for table in successor_tables(model):
        table.frozen = not enabled
