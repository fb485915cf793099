# SPDX-License-Identifier: Apache-2.0
"""Benchmark: what prefetching costs the running agent, per access and in throughput.

Run from the repository root (needs redis-server, redis-cli and redis-benchmark)::

    python bench/bench_prefetch_agent.py            # human-readable table
    python bench/bench_prefetch_agent.py --markdown # the section recorded in bench/RESULTS.md

What runs: a redis-server as the origin, holding ``--keyspace`` keys ``key:%012d``; then
the agent as users run it (``python -m agent run``), reading through from that origin
(``cache.origin: redis``), once with prefetching off (the baseline) and once per model
(``stride``, ``markov``, ``model``) with ``cache.prefetch.enabled: true`` and every other
prefetch setting at its default. Each agent gets the same keys loaded first, so every GET
hits and what differs between the runs is the prefetcher's work. On each agent:
``--warmup`` GETs first, not measured (the worker judges its model's foresight over its
first reads and backs off if it foresees nothing), then
``redis-benchmark -t get -n N -c 50 -r KEYSPACE -P 1`` and ``-P 16``. Then, per model,
``--scan`` GETs of one client reading the keys in order on a fresh agent (nothing cached):
what the models can foresee, where a prefetch saves an origin round trip, reported with
the share of its reads that hit a prefetch and the model's share of a core.

Reported per run: GET requests/s and its ratio to the baseline run (the same command with
prefetching off, run alternately with it, ``--repeat`` times, median), and from the
agent's own counters on ``/metrics`` (deltas over the redis-benchmark run):
``predis_cache_prefetch_inference_seconds_total / predis_cache_prefetch_observed_total``
(the amortised inference cost per access, the target of issue 7 is ≤ 2 µs) and
``observed / steps`` (the mean batch the model saw: the worker joins the reads queued
while it was busy). redis-benchmark picks keys at random (``-r``), so the models find no
structure to learn here; their hit-ratio figures are in bench_prefetch.py.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench_machine import machine
from bench_resp import benchmark, load, resp_command, start_agent, start_redis, stop, tool

MODES = ("off", "stride", "markov", "model")
COUNTERS = ("predis_cache_prefetch_observed_total", "predis_cache_prefetch_steps_total", "predis_cache_prefetch_inference_seconds_total", "predis_cache_prefetch_dropped_batches_total")
BACKED_OFF = "predis_cache_prefetch_backed_off"
USED = "predis_cache_prefetch_used_total"
SCAN_TIMEOUT = 30.0
HTTP_READY = re.compile(r"ready: (https?://127\.0\.0\.1:\d+)")
METRICS_TIMEOUT = 30.0
TARGET_SECONDS_PER_ACCESS = 2e-6


def agent_config(origin_port: int, mode: str) -> str:
    prefetch = {"enabled": mode != "off"}
    if mode != "off":
        prefetch["model"] = mode
    config = {
        "agent": {"reload": {"watch": False}, "auth": {"anonymous_routes": ["/livez", "/metrics"]}},
        "cache": {"read_through": True, "origin": "redis", "prefetch": prefetch},
        "plugins": {"redis_origin": {"url": f"redis://127.0.0.1:{origin_port}/0"}},
        "mlops": {"serve_champion": False},
    }
    return json.dumps(config) + "\n"


def http_base(tmp: Path) -> str:
    match = HTTP_READY.search((tmp / "agent.out").read_text(errors="replace"))
    if match is None:
        raise RuntimeError("no HTTP address in the agent's ready line")
    return match.group(1)


def counters(base: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=METRICS_TIMEOUT) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in COUNTERS or name in (BACKED_OFF, USED):
            out[name] = float(value)
    return out


def settled_counters(base: str, interval: float) -> dict[str, float]:
    """The counters once a collection round after the run has published them (two reads agree)."""
    deadline = time.monotonic() + METRICS_TIMEOUT
    last = counters(base)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = counters(base)
        if now == last:
            return now
        last = now
    return last


def run_mode(mode: str, origin_port: int, cli: str, bench: str, opts: argparse.Namespace, root: Path) -> dict[str, dict[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix=f"agent-{mode}-", dir=root))
    extra = (f"agent.collect.interval_seconds={opts.collect_interval}", *opts.set)
    proc, port, _backend = start_agent(tmp, agent_config(origin_port, mode), extra)
    try:
        load(cli, port, opts.keyspace, root)
        base = http_base(tmp)
        if opts.warmup:
            benchmark(bench, port, ["-t", "get", "-n", str(opts.warmup), "-c", str(opts.clients), "-r", str(opts.keyspace), "-P", "1", "--csv"])
        out = {}
        for pipeline in (1, 16):
            before = settled_counters(base, opts.collect_interval) if mode != "off" else {}
            n = opts.n if pipeline == 16 else opts.n_p1
            rps = benchmark(bench, port, ["-t", "get", "-n", str(n), "-c", str(opts.clients), "-r", str(opts.keyspace), "-P", str(pipeline), "--csv"])["GET"]
            row = {"rps": rps}
            if mode != "off":
                after = settled_counters(base, opts.collect_interval)
                delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in COUNTERS}
                observed = delta["predis_cache_prefetch_observed_total"]
                row["observed"] = observed
                row["seconds_per_access"] = delta["predis_cache_prefetch_inference_seconds_total"] / observed if observed else float("nan")
                row["keys_per_step"] = observed / delta["predis_cache_prefetch_steps_total"] if delta["predis_cache_prefetch_steps_total"] else float("nan")
                row["dropped_batches"] = delta["predis_cache_prefetch_dropped_batches_total"]
                row["backed_off"] = after.get(BACKED_OFF, 0.0)
            out[f"-P {pipeline}"] = row
        return out
    finally:
        stop(proc)


def scan(port: int, reads: int, keyspace: int) -> float:
    """One client reading ``key:%012d`` in order, one GET at a time (what a model can
    foresee, unlike redis-benchmark's random keys); returns its GETs per second."""
    with socket.create_connection(("127.0.0.1", port), timeout=SCAN_TIMEOUT) as sock:
        replies = sock.makefile("rb")
        started = time.perf_counter()
        for i in range(reads):
            sock.sendall(resp_command(b"GET", b"key:%012d" % (i % keyspace)))
            head = replies.readline()
            if not head.startswith(b"$"):
                raise RuntimeError(f"GET answered {head!r}")
            if head != b"$-1\r\n":
                replies.read(int(head[1:]) + 2)
        return reads / (time.perf_counter() - started)


def run_scan(mode: str, origin_port: int, opts: argparse.Namespace, root: Path) -> dict[str, float]:
    """A fresh agent (nothing cached: every read not prefetched goes to the origin) and one
    sequential client: GETs/s, model CPU per access and per second, and the share of the
    reads that hit a prefetched entry."""
    tmp = Path(tempfile.mkdtemp(prefix=f"agent-scan-{mode}-", dir=root))
    extra = (f"agent.collect.interval_seconds={opts.collect_interval}", *opts.set)
    proc, port, _backend = start_agent(tmp, agent_config(origin_port, mode), extra)
    try:
        base = http_base(tmp)
        before = settled_counters(base, opts.collect_interval) if mode != "off" else {}
        started = time.perf_counter()
        rps = scan(port, opts.scan, opts.keyspace)
        elapsed = time.perf_counter() - started
        row = {"rps": rps}
        if mode != "off":
            after = settled_counters(base, opts.collect_interval)
            delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in (*COUNTERS, USED)}
            observed = delta["predis_cache_prefetch_observed_total"]
            seconds = delta["predis_cache_prefetch_inference_seconds_total"]
            row.update(
                seconds_per_access=seconds / observed if observed else float("nan"),
                core_share=seconds / elapsed,
                prefetch_hits=delta[USED] / opts.scan,
                backed_off=after.get(BACKED_OFF, 0.0),
            )
        return row
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keyspace", type=int, default=100_000)
    parser.add_argument("--n", type=int, default=200_000, help="GETs per -P 16 run")
    parser.add_argument("--n-p1", type=int, default=30_000, help="GETs per -P 1 run")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--scan", type=int, default=20_000, help="GETs of the one-sequential-client run per model (0: none)")
    parser.add_argument("--warmup", type=int, default=10_000, help="GETs (-P 1) each agent serves before the measured runs: the prefetch worker judges its model's foresight over its first reads (0: none)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--collect-interval", type=float, default=1.0)
    parser.add_argument("--modes", default=",".join(MODES[1:]), help="prefetch models to run against the baseline")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another config override for every agent (repeatable)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    redis_server, cli, bench = tool("redis-server"), tool("redis-cli"), tool("redis-benchmark")
    modes = [m for m in opts.modes.split(",") if m]
    started = time.monotonic()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {m: [] for m in ["off", *modes]}
    scans: dict[str, list[dict[str, float]]] = {m: [] for m in ["off", *modes]}
    with tempfile.TemporaryDirectory(prefix="bench-prefetch-agent-") as name:
        root = Path(name)
        origin, origin_port = start_redis(redis_server, cli, root)
        try:
            load(cli, origin_port, opts.keyspace, root)
            for _ in range(opts.repeat):
                for mode in modes:
                    # The baseline right before each model's run, so both see the same machine.
                    for m in ("off", mode):
                        runs[m].append(run_mode(m, origin_port, cli, bench, opts, root))
                        print(f"  {m}: {runs[m][-1]}", file=sys.stderr, flush=True)
                        if opts.scan:
                            scans[m].append(run_scan(m, origin_port, opts, root))
                            print(f"  {m} scan: {scans[m][-1]}", file=sys.stderr, flush=True)
        finally:
            stop(origin)
    rows = summarise(runs, modes)
    scan_rows = summarise_scans(scans, modes) if opts.scan else []
    if opts.json:
        print(json.dumps({"machine": machine(), "rows": rows, "scan_rows": scan_rows}, indent=2))
        return
    print_table(rows, opts, time.monotonic() - started)
    if scan_rows:
        print_scans(scan_rows, opts)


def summarise(runs: dict[str, list[dict[str, dict[str, float]]]], modes: list[str]) -> list[dict[str, Any]]:
    """Per model and pipeline depth: medians over the repetitions (ratios pair each run with
    the baseline run just before it)."""
    rows = []
    for mode in modes:
        for test in ("-P 1", "-P 16"):
            mine = [r[test] for r in runs[mode]]
            # runs["off"] holds one baseline per model run, in the order they ran.
            paired = [runs["off"][i * len(modes) + modes.index(mode)][test]["rps"] for i in range(len(mine))]
            rows.append({
                "model": mode,
                "test": f"GET {test}",
                "rps": statistics.median(r["rps"] for r in mine),
                "baseline_rps": statistics.median(paired),
                "ratio": statistics.median(r["rps"] / b for r, b in zip(mine, paired)),
                "us_per_access": statistics.median(r["seconds_per_access"] for r in mine) * 1e6,
                "us_per_access_range": (min(r["seconds_per_access"] for r in mine) * 1e6, max(r["seconds_per_access"] for r in mine) * 1e6),
                "keys_per_step": statistics.median(r["keys_per_step"] for r in mine),
                "dropped_batches": sum(r["dropped_batches"] for r in mine),
                "backed_off": sum(r["backed_off"] for r in mine),
            })  # fmt: skip
    return rows


def summarise_scans(scans: dict[str, list[dict[str, float]]], modes: list[str]) -> list[dict[str, Any]]:
    """Per model: medians over the repetitions of the one-sequential-client run."""
    rows = []
    for mode in modes:
        mine = scans[mode]
        paired = [scans["off"][i * len(modes) + modes.index(mode)]["rps"] for i in range(len(mine))]
        rows.append({
            "model": mode,
            "rps": statistics.median(r["rps"] for r in mine),
            "baseline_rps": statistics.median(paired),
            "ratio": statistics.median(r["rps"] / b for r, b in zip(mine, paired)),
            "us_per_access": statistics.median(r["seconds_per_access"] for r in mine) * 1e6,
            "core_share": statistics.median(r["core_share"] for r in mine),
            "prefetch_hits": statistics.median(r["prefetch_hits"] for r in mine),
            "backed_off": sum(r["backed_off"] for r in mine),
        })  # fmt: skip
    return rows


def print_scans(rows: list[dict[str, Any]], opts: argparse.Namespace) -> None:
    print(f"\nOne client reading `key:%012d` in order, one GET at a time (`--scan {opts.scan}`), on a fresh agent (nothing cached: a read not prefetched goes to the origin):\n")
    print("| model | GET rps | rps, prefetch off (baseline) | ratio | inference µs per access | model CPU, share of a core | reads that hit a prefetch | backed off at the end (runs) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['rps'] / 1e3:.1f}k | {r['baseline_rps'] / 1e3:.1f}k | {r['ratio']:.2f} | {r['us_per_access']:.2f} | {r['core_share']:.3f} | {100 * r['prefetch_hits']:.1f} % | {r['backed_off']:.0f} of {opts.repeat} |")


def print_table(rows: list[dict[str, Any]], opts: argparse.Namespace, elapsed: float) -> None:
    if opts.markdown:
        print("## Prefetching in the running agent (bench/bench_prefetch_agent.py)\n")
        print(f"Machine: {machine()}. Command: `python bench/bench_prefetch_agent.py --markdown` (whole run {elapsed:.0f} s, {opts.repeat} repetitions).")
        print(f"Origin: redis-server with {opts.keyspace:,} keys; the same keys loaded into each agent, so every GET hits. redis-benchmark `-t get -c {opts.clients} -r {opts.keyspace}`, `-n {opts.warmup} -P 1` unmeasured first, then `-n {opts.n_p1} -P 1` and `-n {opts.n} -P 16`.\n")
    print("| model | test | GET rps | rps, prefetch off (baseline) | ratio | inference µs per access (min-max) | keys per model step | dropped batches | backed off at the end (runs) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lo, hi = r["us_per_access_range"]
        print(f"| {r['model']} | {r['test']} | {r['rps'] / 1e3:.1f}k | {r['baseline_rps'] / 1e3:.1f}k | {r['ratio']:.2f} | {r['us_per_access']:.2f} ({lo:.2f}-{hi:.2f}) | {r['keys_per_step']:.1f} | {r['dropped_batches']:.0f} | {r['backed_off']:.0f} of {opts.repeat} |")
    worst = max(r["us_per_access"] for r in rows)
    verdict = "met" if worst <= TARGET_SECONDS_PER_ACCESS * 1e6 else "NOT met"
    print(f"\n- target ≤ {TARGET_SECONDS_PER_ACCESS * 1e6:.0f} µs amortised per access in the running agent: worst median {worst:.2f} µs, {verdict}")


if __name__ == "__main__":
    main()
