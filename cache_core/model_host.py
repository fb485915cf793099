# SPDX-License-Identifier: Apache-2.0
"""The prefetch models' work per step, in the worker thread or in a process of their own.

:func:`~cache_core.models.steps.propose` is one step of a model: encode the read keys,
learn them, predict after the last ones. The prefetcher runs it in its worker thread, or
(``model_process``, opt-in) hands it to :class:`ModelProcess`: a child interpreter that
holds the serving model and a canary's challenger and runs their steps.

Why a process: an interpreter runs one thread at a time, and NumPy lets go of that lock
in every array operation over more than a few hundred elements. In a worker thread each
such operation hands the interpreter to the busy request path and waits to get it back:
under pipelined GETs a large step then costs a multiple of its CPU time alone
(bench/RESULTS.md), and the server loses the time the worker holds the lock. In a child
both run at once on their own interpreters; the worker thread only ships the keys (one
pickled list per step) and waits on the socket with the lock released. The price is
latency per step: two hops between processes, longer than a one-key step in the thread
takes, which a fast sequential client outruns (docs/prefetching.md), hence opt-in.

The child talks over a private socket pair (:class:`multiprocessing.connection.Connection`
framing; only the parent holds the other end, so unpickling its messages trusts no one
else). It exits when the socket closes, so it never outlives the agent. A child that
dies, errs in its loop or does not answer within ``timeout`` is replaced by a fresh one
that starts from the models as they were last loaded (what they learned online since is
lost) and counted in ``restarts``.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy

from cache_core.errors import CacheCoreError
from cache_core.models import place_model
from cache_core.models.base import Vocabulary
from cache_core.models.steps import describe, propose, restart_if_full, test_inference

log = logging.getLogger(__name__)

SERVING = "serving"
CHALLENGER = "challenger"


class ModelHostError(CacheCoreError, RuntimeError):
    """The model process is gone, or did not answer in time."""


class ModelError(CacheCoreError, RuntimeError):
    """A model raised in the model process (the process itself is fine)."""


class ModelProcess:
    """A child interpreter that holds the prefetcher's models and runs their steps.

    Not thread-safe: the prefetcher calls it under its own lock.
    """

    def __init__(self, array_module: str, *, depth: int, predict_last: int, timeout: float, python: str = sys.executable) -> None:
        self.array_module = array_module
        self.depth = depth
        self.predict_last = predict_last
        self.timeout = timeout
        self.python = python
        self.restarts = 0
        self.pid: int | None = None
        # What each slot was last loaded with: a replaced child starts from these.
        self._loaded: dict[str, tuple[Any, Vocabulary, bool]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    # -- the child ------------------------------------------------------------------
    def start(self) -> None:
        """Start the child (and load what was loaded into the one before it)."""
        parent, child = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [self.python, "-m", "cache_core.model_host", str(child.fileno()), self.array_module],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
                env=_child_environment(),
            )
        except OSError as exc:
            parent.close()
            raise ModelHostError(f"cannot start the model process: {exc}") from exc
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        self.pid = self._proc.pid
        self._call(("hello",))
        for slot, (model, vocab, learn) in self._loaded.items():
            self._call(("load", slot, model, vocab, learn))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _stop_child(self, *, kill: bool = False) -> None:
        """Close the socket (an idle child's recv ends: it exits); a child that does not
        exit within ``timeout``, or a failed one (``kill``), is killed."""
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if kill:
                proc.kill()
            try:
                proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self._stop_child()

    def _call(self, message: tuple[Any, ...]) -> Any:
        conn = self._conn
        if conn is None:
            raise ModelHostError("the model process is not running")
        try:
            conn.send(message)
        except (EOFError, OSError) as exc:
            raise ModelHostError(f"the model process is gone ({exc.__class__.__name__}: {exc})") from exc
        except Exception as exc:  # what does not pickle: the model cannot go to the process
            raise ModelError(f"cannot send {message[0]!r} to the model process: {exc.__class__.__name__}: {exc}") from exc
        try:
            if not conn.poll(self.timeout):
                raise ModelHostError(f"the model process did not answer {message[0]!r} within {self.timeout:g} s")
            status, payload = conn.recv()
        except (EOFError, OSError) as exc:
            raise ModelHostError(f"the model process is gone ({exc.__class__.__name__}: {exc})") from exc
        if status != "ok":
            raise ModelError(payload)
        return payload

    def request(self, message: tuple[Any, ...]) -> Any:
        """Send one request and return its answer. A model's own error raises
        :class:`ModelError` with the child kept; a child that is gone or does not answer is
        replaced (once) and the request retried on the fresh one; :class:`ModelHostError`
        when that fails too."""
        try:
            if self._conn is None:
                self.start()
            return self._call(message)
        except ModelHostError as exc:
            log.warning("prefetch: %s; starting a fresh model process (what the models learned since they were loaded is lost)", exc)
            self._stop_child(kill=True)
            self.restarts += 1
            try:
                self.start()
                return self._call(message)
            except ModelHostError:
                self._stop_child(kill=True)
                raise

    # -- what the prefetcher asks ---------------------------------------------------
    def load(self, slot: str, model: Any, vocab: Vocabulary, learn_online: bool) -> dict[str, Any]:
        """Let ``model`` over ``vocab`` take ``slot`` (SERVING or CHALLENGER)."""
        self._loaded[slot] = (model, vocab, learn_online)
        if self._conn is None:
            self.start()  # loads every slot, this one included
            return dict(self.request(("info", slot)))
        return dict(self.request(("load", slot, model, vocab, learn_online)))

    def drop(self, slot: str) -> None:
        if self._loaded.pop(slot, None) is not None and self._conn is not None:
            self.request(("drop", slot))

    def promote(self) -> tuple[tuple[bool, str], dict[str, Any]]:
        """The challenger becomes the serving model; returns its test inference and description."""
        challenger = self._loaded.pop(CHALLENGER, None)
        if challenger is not None:
            self._loaded[SERVING] = challenger
        result, info = self.request(("promote", self.depth))
        return (bool(result[0]), str(result[1])), dict(info)

    def propose(self, slot: str, keys: list[bytes]) -> tuple[list[tuple[bytes, float]], float, bool, dict[str, Any]]:
        """One step of ``slot``'s model: (candidates, its CPU seconds in the child, whether
        its vocabulary started over first, its description)."""
        proposals, seconds, restarted, info = self.request(("propose", slot, keys, self.depth, self.predict_last))
        return list(proposals), float(seconds), bool(restarted), dict(info)


def _child_environment() -> dict[str, str]:
    """The agent's environment, with the directory this package was imported from first on
    the child's module path (so that it runs the same code, installed or not)."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    return env


# -- the child's side ---------------------------------------------------------------------
class _Slots:
    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self.models: dict[str, tuple[Any, Vocabulary, bool]] = {}

    def handle(self, message: tuple[Any, ...]) -> Any:
        op = message[0]
        if op == "hello":
            return os.getpid()
        if op == "load":
            _op, slot, model, vocab, learn = message
            place_model(model, self.xp)
            self.models[slot] = (model, vocab, bool(learn))
            return describe(model, vocab)
        if op == "info":
            model, vocab, _learn = self.models[message[1]]
            return describe(model, vocab)
        if op == "drop":
            self.models.pop(message[1], None)
            return None
        if op == "promote":
            if CHALLENGER in self.models:
                self.models[SERVING] = self.models.pop(CHALLENGER)
            model, vocab, _learn = self.models[SERVING]
            return test_inference(model, vocab, int(message[1])), describe(model, vocab)
        if op == "propose":
            _op, slot, keys, depth, predict_last = message
            model, vocab, learn = self.models[slot]
            started = time.thread_time()
            model, restarted = restart_if_full(model, vocab, learn, self.xp)
            if restarted:
                self.models[slot] = (model, vocab, learn)
            proposals = propose(model, vocab, keys, depth, predict_last)
            return proposals, time.thread_time() - started, restarted, describe(model, vocab)
        raise ValueError(f"unknown request {op!r}")


def serve(fd: int, array_module: str) -> None:
    """The child's loop: answer requests on ``fd`` until the parent closes it."""
    conn = Connection(fd)
    slots = _Slots(importlib.import_module(array_module) if array_module != "numpy" else numpy)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("ok", slots.handle(message))
        except Exception as exc:
            reply = ("error", f"{exc.__class__.__name__}: {exc}")
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])
