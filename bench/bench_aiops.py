# SPDX-License-Identifier: Apache-2.0
"""Benchmark: the AIOps step (agent/aiops) on synthetic collection rounds.

Run from the repository root::

    python bench/bench_aiops.py            # human-readable tables
    python bench/bench_aiops.py --markdown # a section for bench/RESULTS.md

Three measurements, all through :class:`agent.aiops.service.AiopsService.observe` with the
default ``aiops`` config (the same code path as a running agent's rounds):

* **False alarms on stationary series.** ``ROUNDS`` rounds per seed of a cache whose
  behaviour does not change: reads Poisson(``READS``) with hit probability 0.8, origin
  loads with error probability 0.01, latencies log-normal, commands Poisson, breaker
  closed, GPU and memory use flat with noise; the counters restart from 0 every
  ``RESET_EVERY`` rounds (an agent or cache restart) and a zero-variance run (every
  counter growing by exactly the same amount each round) is included. Every anomaly
  raised and every ETA below its horizon is a false alarm.
* **Detection delay.** After ``BASELINE_ROUNDS`` stationary rounds one condition is
  injected and the rounds until its event are counted.
* **CPU per round.** ``time.thread_time`` of the whole step (forecasts, detectors,
  remediation engine with the five built-in actions in dry-run) on a batch shaped like a
  running agent's (cache, process and sink metrics, a latency histogram per command), and
  in a real agent (``tests.agentproc.AgentProcess``, rounds of 0.2 s, one redis-py client
  reading and writing): ``components.aiops.step_cpu_seconds`` over its rounds.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.aiops.actions import builtin_actions
from agent.aiops.audit import AuditLog
from agent.aiops.service import ANOMALY_SIGNALS, RESOURCES, AiopsService
from agent.config import load_config
from agent.telemetry import Metric, Telemetry
from tests.agentproc import AgentProcess
from tests.polling import wait_for

ROUND_SECONDS = 10.0  # agent.collect.interval_seconds default
ROUNDS = 20_000
SEEDS = (1, 2, 3)
RESET_EVERY = 5_000
BASELINE_ROUNDS = 200
MAX_DELAY_ROUNDS = 400
READS = 5_000.0
HIT_P = 0.8
LOADS = 1_000.0
ERROR_P = 0.01
COMMANDS = 8_000.0
LATENCY_MEDIAN_S = 0.0002
LATENCY_SIGMA = 0.5
BOUNDS = tuple(10.0 ** (e / 4) * 1e-6 for e in range(0, 28))  # 1 us .. ~5 s
COMMAND_NAMES = ("get", "set", "mget", "del", "exists", "expire", "ttl", "incr", "hget", "hset")
GPU_TOTAL = 80e9
GPU_USED = 40e9
MEMORY_LIMIT = 256e6
MEMORY_USED = 128e6
QUEUE_MAX = 64e6
OUTAGE_BUDGET = 3600.0
PADDING_SAMPLES = 400  # process, sink and other families a real batch carries
CPU_ROUNDS = 2_000
AGENT_ROUNDS = 100
AGENT_DEADLINE_SECONDS = 120.0
AGENT_KEYS = 1_000
AGENT_BATCH = 100


class Counters:
    """Cumulative counters of a synthetic cache (restartable)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.hits = self.misses = self.loads = self.errors = self.commands = 0.0
        self.latency = {name: numpy.zeros(len(BOUNDS) + 1) for name in COMMAND_NAMES}


class World:
    """One synthetic agent: draws each round's batch; ``inject`` changes one behaviour."""

    def __init__(self, seed: int, zero_variance: bool = False) -> None:
        self.rng = numpy.random.default_rng(seed)
        self.zero = zero_variance
        self.c = Counters()
        self.hit_p, self.error_p, self.latency_scale, self.ops_scale = HIT_P, ERROR_P, 1.0, 1.0
        self.memory_used, self.memory_rate = MEMORY_USED, 0.0
        self.gpu_used, self.gpu_rate = GPU_USED, 0.0
        self.queue, self.queue_rate = 0.0, 0.0
        self.budget, self.budget_rate = OUTAGE_BUDGET, 0.0
        self.flap = False
        self.round = 0

    def _poisson(self, lam: float) -> float:
        return lam if self.zero else float(self.rng.poisson(lam))

    def _binomial(self, n: float, p: float) -> float:
        return n * p if self.zero else float(self.rng.binomial(int(n), p))

    def batch(self) -> list[Metric]:
        self.round += 1
        c = self.c
        reads = self._poisson(READS * self.ops_scale)
        hits = self._binomial(reads, self.hit_p)
        c.hits += hits
        c.misses += reads - hits
        loads = self._poisson(LOADS)
        errors = self._binomial(loads, self.error_p)
        c.loads += loads - errors
        c.errors += errors
        c.commands += self._poisson(COMMANDS * self.ops_scale)
        out: list[Metric] = [
            Metric("predis_cache_hits_total", c.hits, "counter"),
            Metric("predis_cache_misses_total", c.misses, "counter"),
            Metric("predis_cache_origin_loads_total", c.loads, "counter"),
            Metric("predis_cache_origin_errors_total", c.errors, "counter"),
            Metric("predis_cache_commands_total", c.commands, "counter", {"command": "get"}),
        ]
        edges = numpy.asarray(BOUNDS)
        per_command = max(1, int(COMMANDS * self.ops_scale / len(COMMAND_NAMES)))
        for name in COMMAND_NAMES:
            if self.zero:
                counts = numpy.zeros(len(BOUNDS) + 1)
                counts[int(numpy.searchsorted(edges, LATENCY_MEDIAN_S))] = per_command
            else:
                seconds = self.rng.lognormal(math.log(LATENCY_MEDIAN_S * self.latency_scale), LATENCY_SIGMA, per_command)
                counts = numpy.bincount(numpy.searchsorted(edges, seconds), minlength=len(BOUNDS) + 1).astype(float)
            c.latency[name] += counts
            cumulative = numpy.cumsum(c.latency[name])
            out.append(
                Metric(
                    "predis_cache_command_duration_seconds",
                    0.0,
                    "histogram",
                    {"command": name},
                    buckets=tuple(zip(BOUNDS, cumulative[: len(BOUNDS)].tolist(), strict=True)),
                    count=float(cumulative[-1]),
                )
            )
        noise = 0.0 if self.zero else float(self.rng.normal(0, 1e6))
        self.memory_used = min(MEMORY_LIMIT, self.memory_used + self.memory_rate * ROUND_SECONDS)
        self.gpu_used = min(GPU_TOTAL, self.gpu_used + self.gpu_rate * ROUND_SECONDS)
        self.queue = min(QUEUE_MAX, self.queue + self.queue_rate * ROUND_SECONDS)
        self.budget = max(0.0, self.budget - self.budget_rate * ROUND_SECONDS)
        state = ("open" if self.round % 4 < 2 else "closed") if self.flap else "closed"
        out += [
            Metric("predis_cache_charged_bytes", self.memory_used + noise),
            Metric("predis_cache_max_memory_bytes", MEMORY_LIMIT),
            Metric("predis_gpu_memory_used_bytes", self.gpu_used + noise, labels={"gpu": "0"}),
            Metric("predis_gpu_memory_total_bytes", GPU_TOTAL, labels={"gpu": "0"}),
            Metric("predis_agent_sink_queue_bytes", self.queue, labels={"sink": "vendor"}),
            Metric("predis_agent_sink_outage_budget_seconds", self.budget, labels={"sink": "vendor"}),
            *(Metric("predis_agent_sink_breaker_state", 1.0 if s == state else 0.0, labels={"sink": "vendor", "state": s}) for s in ("closed", "half_open", "open")),
            *(Metric(f"predis_process_padding_{i % 40}", float(i), labels={"i": str(i)}) for i in range(PADDING_SAMPLES)),
        ]
        return out


class Agent:
    """What the built-in actions read (no prefetcher, no registry: each answers unavailable)."""

    def __init__(self) -> None:
        self.cache_service = SimpleNamespace(prefetcher=None)
        self.mlops = SimpleNamespace(registry=None, tenant="default", pipeline=SimpleNamespace(settings=SimpleNamespace(enabled=False)))
        self.config = load_config(None)


def make_service(spool: Path, overrides: tuple[str, ...] = ()) -> tuple[AiopsService, list[tuple[str, dict[str, Any]]], list[float]]:
    events: list[tuple[str, dict[str, Any]]] = []
    clock = [0.0]
    sink = SimpleNamespace(settings=SimpleNamespace(max_bytes=int(QUEUE_MAX), spool_dir=str(spool), spool_min_free_bytes=0, dead_letter_dir=None, dead_letter_max_files=0))
    service = AiopsService(lambda kind, data: events.append((kind, data)), Telemetry("bench"), lambda: {"vendor": sink}, clock=lambda: clock[0])
    section = load_config(None, overrides=overrides).section("aiops")
    service.configure(section, AuditLog(None))
    service.engine.register([("builtin", a) for a in builtin_actions(Agent(), section["remediation"])])
    return service, events, clock


def false_alarms(spool: Path) -> dict[str, Any]:
    raised = {name: 0 for name in ANOMALY_SIGNALS}
    etas = {name: 0 for name in RESOURCES}
    rounds = 0
    runs = [(seed, False) for seed in SEEDS] + [(0, True)]
    for seed, zero in runs:
        world = World(seed, zero)
        service, events, clock = make_service(spool)
        for r in range(ROUNDS):
            if r and r % RESET_EVERY == 0:
                world.c.reset()
            clock[0] = r * ROUND_SECONDS
            service.observe(clock[0], world.batch())
        rounds += ROUNDS
        for kind, data in events:
            if kind == "aiops_anomaly":
                raised[data["signal"]] += 1
            elif kind == "aiops_eta_below_horizon":
                etas[data["resource"]] += 1
    return {"rounds": rounds, "runs": len(runs), "anomalies": raised, "etas": etas}


# label -> (event:signal or resource, injection, the fewest rounds any detector could take:
# an anomaly needs aiops.anomaly.consecutive_rounds, flapping its flap_min_transitions
# transitions; an ETA event the first round at which the true ETA is below its horizon)
INJECTIONS: dict[str, tuple[str, Callable[[World], None], str]] = {
    "hit ratio 0.8 -> 0.5": ("aiops_anomaly:hit_ratio", lambda w: setattr(w, "hit_p", 0.5), "3"),
    "hit ratio 0.8 -> 0.7": ("aiops_anomaly:hit_ratio", lambda w: setattr(w, "hit_p", 0.7), "3"),
    "latency x3": ("aiops_anomaly:latency_p99", lambda w: setattr(w, "latency_scale", 3.0), "3"),
    "origin errors 1% -> 20%": ("aiops_anomaly:origin_error_rate", lambda w: setattr(w, "error_p", 0.2), "3"),
    "ops/s to 30%": ("aiops_anomaly:ops_per_second", lambda w: setattr(w, "ops_scale", 0.3), "3"),
    "breaker flapping (every 2 rounds)": ("aiops_anomaly:breaker_transitions", lambda w: setattr(w, "flap", True), "6 (4th transition)"),
    "memory budget fills in 30 min": ("aiops_eta_below_horizon:memory_budget", lambda w: setattr(w, "memory_rate", (MEMORY_LIMIT - MEMORY_USED) / 1800), "1"),
    "GPU memory fills in 30 min": ("aiops_eta_below_horizon:gpu_memory", lambda w: setattr(w, "gpu_rate", (GPU_TOTAL - GPU_USED) / 1800), "1"),
    "spool fills in 20 min (vendor outage)": ("aiops_eta_below_horizon:spool", lambda w: setattr(w, "queue_rate", QUEUE_MAX / 1200), "1"),
    "outage buffer (1 h) drains 1 s/s": ("aiops_eta_below_horizon:outage_buffer", lambda w: setattr(w, "budget_rate", 1.0), "301"),
}


def detection(spool: Path) -> list[tuple[str, list[int | None]]]:
    rows = []
    for label, (target, inject, _ideal) in INJECTIONS.items():
        delays: list[int | None] = []
        for seed in SEEDS:
            world = World(seed)
            service, events, clock = make_service(spool)
            r = 0
            for r in range(BASELINE_ROUNDS):
                clock[0] = r * ROUND_SECONDS
                service.observe(clock[0], world.batch())
            events.clear()
            inject(world)
            found = None
            for k in range(1, MAX_DELAY_ROUNDS + 1):
                clock[0] = (r + k) * ROUND_SECONDS
                service.observe(clock[0], world.batch())
                if any(f"{kind}:{data.get('signal', data.get('resource'))}" == target for kind, data in events):
                    found = k
                    break
            delays.append(found)
        rows.append((label, delays))
    return rows


def cpu_cost(spool: Path) -> dict[str, float]:
    world = World(SEEDS[0])
    service, _events, clock = make_service(spool)
    batches = [world.batch() for _ in range(CPU_ROUNDS)]
    times = []
    for r, batch in enumerate(batches):
        clock[0] = r * ROUND_SECONDS
        start = time.thread_time()
        service.observe(clock[0], batch)
        times.append(time.thread_time() - start)
    steady = sorted(times[BASELINE_ROUNDS:])
    return {
        "samples": float(len(batches[0])),
        "mean_us": statistics.fmean(steady) * 1e6,
        "p99_us": steady[int(0.99 * (len(steady) - 1))] * 1e6,
        "share": statistics.fmean(steady) / ROUND_SECONDS,
    }


def agent_cost(tmp: Path) -> dict[str, float]:
    """The AIOps step's CPU per round in a running agent under a little traffic."""
    home = tmp / "agent"
    home.mkdir()
    agent = AgentProcess(home)
    agent.start()
    stop = threading.Event()

    def traffic() -> None:
        address = agent.status()["components"]["cache"]["resp"]["address"]
        client = redis.Redis(host="127.0.0.1", port=int(address.rsplit(":", 1)[1]), protocol=2)
        n = 0
        while not stop.is_set():
            pipe = client.pipeline(transaction=False)
            for i in range(AGENT_BATCH):
                key = f"k:{(n * AGENT_BATCH + i) % AGENT_KEYS}"
                if i % 10 == 0:
                    pipe.set(key, b"v")
                else:
                    pipe.get(key)
            pipe.execute()
            n += 1
        client.close()

    worker = threading.Thread(target=traffic, daemon=True)
    try:
        worker.start()
        begun = agent.status()["components"]["aiops"]
        end = wait_for(lambda: (a := agent.status()["components"]["aiops"])["rounds"] >= begun["rounds"] + AGENT_ROUNDS and a, timeout=AGENT_DEADLINE_SECONDS, what="agent rounds")
    finally:
        stop.set()
        worker.join()
        agent.stop()
    rounds = end["rounds"] - begun["rounds"]
    seconds = end["step_cpu_seconds"]["total"] - begun["step_cpu_seconds"]["total"]
    return {"rounds": float(rounds), "mean_us": seconds / rounds * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    logging.getLogger("agent.aiops").setLevel(logging.ERROR)  # the events are what is counted
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp)
        fa = false_alarms(spool)
        delays = detection(spool)
        cpu = cpu_cost(spool)
        live = agent_cost(spool)
    took = time.monotonic() - started
    per_k = 1000.0 / fa["rounds"]
    if args.markdown:
        print("## AIOps: false alarms, detection delay, CPU per round (bench/bench_aiops.py)\n")
        print(f"Machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; Python {platform.python_version()}, NumPy {numpy.__version__}.")
        print(f"Command: `python bench/bench_aiops.py --markdown` (whole run {took:.0f} s). Default `aiops` config; a round is {ROUND_SECONDS:g} s.\n")
        print(f"False alarms over {fa['rounds']:,} stationary rounds ({fa['runs'] - 1} seeds of noisy series and one zero-variance run, counters reset every {RESET_EVERY:,} rounds):\n")
        print("| signal / resource | false alarms | per 1,000 rounds |\n|---|---:|---:|")
        for name, n in fa["anomalies"].items():
            print(f"| anomaly `{name}` | {n} | {n * per_k:.3f} |")
        for name, n in fa["etas"].items():
            print(f"| ETA `{name}` below horizon | {n} | {n * per_k:.3f} |")
        print(f"\nDetection delay in rounds after the injection (after {BASELINE_ROUNDS} stationary rounds; seeds {', '.join(map(str, SEEDS))}; '-' not within {MAX_DELAY_ROUNDS}):\n")
        print("| injected condition | event | fewest possible | rounds (per seed) |\n|---|---|---:|---|")
        for label, ds in delays:
            print(f"| {label} | `{INJECTIONS[label][0]}` | {INJECTIONS[label][2]} | {', '.join('-' if d is None else str(d) for d in ds)} |")
        print(
            f"\nCPU of the whole AIOps step per round ({int(cpu['samples'])} samples per batch, {len(COMMAND_NAMES)} latency histograms): "
            f"mean {cpu['mean_us']:.0f} us, p99 {cpu['p99_us']:.0f} us, {cpu['share'] * 100:.4f} % of one core at a {ROUND_SECONDS:g} s round. "
            f"In a running agent under traffic: {live['mean_us']:.0f} us per round over {int(live['rounds'])} rounds."
        )
        return
    print(f"false alarms over {fa['rounds']} rounds: {fa['anomalies']} etas: {fa['etas']}")
    for label, ds in delays:
        print(f"{label:40s} {INJECTIONS[label][0]:45s} {ds}")
    print(f"cpu per round: {cpu}; in a running agent: {live}")
    print(f"took {took:.1f}s")


if __name__ == "__main__":
    main()
