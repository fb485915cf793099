# SPDX-License-Identifier: Apache-2.0
"""The prefetcher's models and where their steps run.

:class:`ModelHost` holds the serving model and a canary's challenger and runs their steps
in the model process (:class:`cache_core.model_host.ModelProcess`, ``model_process``) or
in the worker thread. A process that fails twice in a row, or cannot take a model, is
given up: the models run in the worker thread from then on, from the state the
prefetcher last gave the process. A full vocabulary starts over with a fresh model
(counted in ``vocabulary_resets``). ``learn_online=False`` serves a model as trained (its
statistics do not change; a full vocabulary then stops taking new keys instead of
starting over).

Not thread-safe: the prefetcher calls it under its lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cache_core.model_host import (
    CHALLENGER,
    SERVING,
    ModelError,
    ModelHostError,
    ModelProcess,
)
from cache_core.models.base import Vocabulary
from cache_core.models.steps import describe, propose, restart_if_full, test_inference
from cache_core.prefetch.settings import PrefetchSettings, PrefetchStats

log = logging.getLogger("cache_core.prefetch")


class ModelHost:
    """The serving ``model`` (over ``vocab``, registry ``version``, None for a fresh one,
    and what its last test inference said: ``test_result``), a canary's ``challenger``
    (model, vocabulary, version) and the model ``process`` they run in, if any."""

    def __init__(
        self,
        model: Any,
        vocab: Vocabulary,
        version: int | None,
        *,
        xp: Any,
        learn_online: bool,
        process: ModelProcess | None,
        stats: PrefetchStats,
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.version = version
        self.xp = xp
        self.learn_online = learn_online
        self.stats = stats
        self.test_result: tuple[bool, str] = (True, f"model {getattr(model, 'name', '?')} serving (no test inference run)")
        self.challenger: tuple[Any, Vocabulary, int | None] | None = None
        self.process = process
        # Why the process was given up; what it says of each model, for status.
        self.process_error: str | None = None
        self.described: dict[str, dict[str, Any]] = {}
        self.remote_seconds = 0.0  # CPU seconds the models took in the process since last reset
        self._restarts_counted = 0  # the process's restarts already added to the stats

    @property
    def in_process(self) -> bool:
        """Whether the models run in the model process (not in the worker thread)."""
        return self.process is not None

    # -- the model process ---------------------------------------------------------------
    def load_process(self) -> None:
        """Give the process the models (the worker does before its first step)."""
        self.remote(self._load_all)

    def _load_all(self, process: ModelProcess) -> None:
        self.described[SERVING] = process.load(SERVING, self.model, self.vocab, self.learn_online)
        if self.challenger is not None:
            model, vocab, _version = self.challenger
            self.described[CHALLENGER] = process.load(CHALLENGER, model, vocab, self.learn_online)

    def remote(self, call: Callable[[ModelProcess], Any], *, model_errors: bool = False) -> Any:
        """``call(process)``; None when there is no process, or when it failed twice in a row
        (:class:`ModelProcess` replaces a failed child once per request) or could not take a
        model: then the models run in the worker thread from here on, from the state the
        prefetcher last gave the process. With ``model_errors`` a model's own error
        (:class:`ModelError`) is raised instead, as it would be in the thread."""
        process = self.process
        if process is None:
            return None
        try:
            return call(process)
        except ModelError as exc:
            if model_errors:
                raise
            self._give_up(process, exc)
        except ModelHostError as exc:
            self._give_up(process, exc)
        finally:
            self.stats.model_process_restarts += process.restarts - self._restarts_counted
            self._restarts_counted = process.restarts
        return None

    def _give_up(self, process: ModelProcess, exc: Exception) -> None:
        self.process = None
        self.process_error = str(exc)
        self.described.clear()  # what the process said of its models no longer holds
        log.error("prefetch: the model process failed (%s); the models run in the prefetch worker thread from now on", exc)
        process.close()

    def retune(self, settings: PrefetchSettings) -> None:
        """Let the process's steps use ``settings``' depth, window and timeout."""
        if self.process is not None:
            self.process.depth = settings.depth
            self.process.predict_last = settings.predict_last
            self.process.timeout = settings.model_process_timeout_seconds

    def close(self) -> None:
        if self.process is not None:
            self.process.close()

    # -- one step ------------------------------------------------------------------------
    def propose(self, slot: str, keys: list[bytes], settings: PrefetchSettings) -> list[tuple[bytes, float]]:
        """``slot``'s model (SERVING or CHALLENGER) learns ``keys`` and names its candidates
        after the last ones, in the model process or here."""
        answer = self.remote(lambda process: process.propose(slot, keys), model_errors=True)
        if answer is not None:
            proposals, seconds, restarted, info = answer
            self.remote_seconds += seconds
            self.described[slot] = info
            if restarted:
                self._count_restart(slot)
            return list(proposals)
        if slot == SERVING:
            self.model = self._restart_if_full(SERVING, self.model, self.vocab)
            return propose(self.model, self.vocab, keys, settings.depth, settings.predict_last)
        assert self.challenger is not None
        model, vocab, version = self.challenger
        model = self._restart_if_full(CHALLENGER, model, vocab)
        self.challenger = (model, vocab, version)
        return propose(model, vocab, keys, settings.depth, settings.predict_last)

    def _restart_if_full(self, slot: str, model: Any, vocab: Vocabulary) -> Any:
        model, restarted = restart_if_full(model, vocab, self.learn_online, self.xp)
        if restarted:
            self._count_restart(slot)
        return model

    def _count_restart(self, slot: str) -> None:
        self.stats.vocabulary_resets += 1
        log.info("prefetch vocabulary of the %s model full: starting over with a fresh %s model", slot, getattr(self.model, "name", "?"))

    # -- changing models -----------------------------------------------------------------
    def serve(self, model: Any, vocab: Vocabulary, version: int | None, test_result: tuple[bool, str]) -> None:
        """Serve ``model`` from the next step on (it passed ``test_result``)."""
        self.model, self.vocab, self.version = model, vocab, version
        self.test_result = test_result
        self.described.pop(SERVING, None)
        info = self.remote(lambda process: process.load(SERVING, model, vocab, self.learn_online))
        if info is not None:
            self.described[SERVING] = info

    def challenge(self, model: Any, vocab: Vocabulary, version: int | None) -> None:
        """Add ``model`` as the challenger."""
        self.challenger = (model, vocab, version)
        self.described.pop(CHALLENGER, None)
        info = self.remote(lambda process: process.load(CHALLENGER, model, vocab, self.learn_online))
        if info is not None:
            self.described[CHALLENGER] = info

    def drop_challenger(self) -> None:
        self.challenger = None
        self.described.pop(CHALLENGER, None)
        self.remote(lambda process: process.drop(CHALLENGER))

    def promote_challenger(self, depth: int) -> None:
        """The challenger becomes the serving model (its test inference run with ``depth``)."""
        assert self.challenger is not None
        self.model, self.vocab, self.version = self.challenger
        self.described.pop(SERVING, None)
        promoted = self.remote(lambda process: process.promote())
        if promoted is not None:
            self.test_result, self.described[SERVING] = promoted
        else:
            self.test_result = test_inference(self.model, self.vocab, depth)
        self.challenger = None
        self.described.pop(CHALLENGER, None)

    # -- reporting -----------------------------------------------------------------------
    def description(self) -> dict[str, Any]:
        """vocabulary, model_bytes and backend (where the model's tables live: "cupy", the
        GPU, or "numpy", the host) of the serving model, as the model process last said,
        if it has them."""
        return self.described.get(SERVING) or describe(self.model, self.vocab)

    def process_status(self) -> dict[str, Any]:
        process = self.process
        if process is None:
            state = "failed" if self.process_error is not None else "off"
            return {"state": state, "error": self.process_error, "pid": None, "restarts": self.stats.model_process_restarts}
        return {"state": "running" if process.running else "starting", "error": None, "pid": process.pid, "restarts": self.stats.model_process_restarts}
