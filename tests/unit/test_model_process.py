# SPDX-License-Identifier: Apache-2.0
"""The prefetch models in their own process (cache.prefetch.model_process): same answers as
in the worker thread, a child that dies is replaced, one that cannot run falls back to the
thread, and none outlives its prefetcher."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy
import pytest

from cache_core.cache import Cache
from cache_core.model_host import ModelError, ModelProcess
from cache_core.models import Vocabulary, make_model
from cache_core.prefetch import Prefetcher, PrefetchSettings
from cache_core.replay import MemoryOrigin
from tests.agentproc import pid_running
from tests.polling import wait_for


class RecordingOrigin(MemoryOrigin):
    def __init__(self) -> None:
        super().__init__(8)
        self.asked: list[bytes] = []

    def load_many(self, keys: Any) -> list[bytes | None]:
        self.asked.extend(keys)
        return super().load_many(keys)


def build(model_process: bool, name: str = "model", **kw: Any) -> tuple[Prefetcher, Cache, RecordingOrigin]:
    cache = Cache(numpy, max_keys=4096, max_memory_bytes=1 << 24, eviction="lru")
    vocab = Vocabulary(4096)
    origin = RecordingOrigin()
    settings = PrefetchSettings(threshold=0.1, adaptive=False, max_cpu_share=1.0, model_process=model_process, **kw)
    return Prefetcher(cache, origin, make_model(name, vocab), vocab, settings), cache, origin


def drive(pf: Prefetcher, keys: list[bytes]) -> None:
    """Observe one read at a time, each after the worker caught up (deterministic steps)."""
    for key in keys:
        pf.observe([key], [False])
        assert pf.wait_idle(20)


def workload() -> list[bytes]:
    loop = [b"loop:%d" % (i * 7 % 31) for i in range(31)]
    return loop * 4 + [b"seq:%04d" % i for i in range(40)]


def test_the_model_process_proposes_what_the_worker_thread_proposes() -> None:
    here, _c1, origin_here = build(False)
    there, _c2, origin_there = build(True)
    try:
        drive(here, workload())
        drive(there, workload())
        assert origin_there.asked == origin_here.asked and len(origin_here.asked) > 50
        status = there.status()
        assert status["model_process"]["state"] == "running" and status["model_process"]["pid"] != os.getpid()
        assert status["vocabulary"] == here.status()["vocabulary"] > 0
        assert status["model_bytes"] == here.status()["model_bytes"] > 0
        assert there.stats.inference_seconds > 0 and there.in_model_process
        assert here.status()["model_process"]["state"] == "off" and not here.in_model_process
    finally:
        here.close()
        there.close()


def test_a_killed_model_process_is_replaced_and_counted() -> None:
    pf, cache, origin = build(True, name="stride")
    try:
        drive(pf, [b"s:%d" % i for i in range(5)])
        pid = pf.status()["model_process"]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_running(pid), interval=0.005, what="the killed model process gone")
        drive(pf, [b"t:%d" % i for i in range(5)])
        status = pf.status()["model_process"]
        assert status["state"] == "running" and status["pid"] != pid and status["restarts"] == 1
        assert pf.stats.model_process_restarts == 1
        assert b"t:5" in origin.asked and cache.contains_many([b"t:5"]) == [True]
    finally:
        pf.close()


def test_a_model_process_that_cannot_start_leaves_the_models_in_the_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ModelProcess, "start", _no_start)
    pf, cache, origin = build(True, name="stride")
    try:
        drive(pf, [b"f:%d" % i for i in range(5)])
        status = pf.status()["model_process"]
        assert status["state"] == "failed" and "no interpreter" in status["error"]
        assert not pf.in_model_process
        assert pf.status()["vocabulary"] == len(pf.vocab) >= 5  # the thread's own model
        assert b"f:5" in origin.asked and cache.contains_many([b"f:5"]) == [True]
    finally:
        pf.close()


def _no_start(self: ModelProcess) -> None:
    from cache_core.model_host import ModelHostError

    raise ModelHostError("cannot start the model process: no interpreter")


def test_the_model_process_exits_with_its_prefetcher() -> None:
    pf, _cache, _origin = build(True, name="stride")
    drive(pf, [b"e:1"])
    pid = pf.status()["model_process"]["pid"]
    assert pid_running(pid)
    pf.close()
    wait_for(lambda: not pid_running(pid), interval=0.005, what="the model process gone")


def test_a_model_error_in_the_process_is_reported_and_the_process_kept() -> None:
    host = ModelProcess("numpy", depth=2, predict_last=4, timeout=10)
    try:
        with pytest.raises(ModelError, match="KeyError"):
            host.request(("propose", "serving", [b"k"], 2, 4))  # nothing loaded in that slot
        assert host.running and host.restarts == 0
        vocab = Vocabulary(1024)
        info = host.load("serving", make_model("markov", vocab), vocab, True)
        assert info["vocabulary"] == 0 and info["backend"] == "numpy"
        for _ in range(3):
            proposals, seconds, restarted, info = host.propose("serving", [b"a", b"b", b"a"])
        assert proposals and proposals[0][0] == b"b" and seconds > 0 and not restarted
        assert info["vocabulary"] == 2
    finally:
        host.close()


def test_a_canary_challenger_runs_in_the_model_process_too() -> None:
    from agent.mlops.rollout import Rollout, RolloutSettings

    pf, _cache, origin = build(True, name="stride")
    vocab = Vocabulary(4096)
    settings = RolloutSettings(steps=(0.5, 1.0), block_requests=10, min_blocks=2, max_blocks=50, margin=0.0, max_inference_seconds_per_access=1.0)
    rollout = Rollout("t", 1, 2, settings, on_decision=lambda r, d: None)
    try:
        pf.start_rollout(rollout, make_model("markov", vocab), vocab, 2)
        keys = [b"c:%d" % (i % 20) for i in range(200)]
        for key in keys:
            pf.observe([key])
        assert pf.wait_idle(20)
        # The challenger learned in the process (its vocabulary there grew; here it did not).
        assert pf.host.described["challenger"]["vocabulary"] == 20 and len(vocab) == 0
        assert pf.status()["model_process"]["state"] == "running"
        pf.stop_rollout()
        assert "challenger" not in pf.host.described
    finally:
        pf.close()
