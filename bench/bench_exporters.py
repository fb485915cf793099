# SPDX-License-Identifier: Apache-2.0
"""Benchmark: exporter costs — exposition render, push encoding, sink throughput, hot path.

Run from the repository root::

    python bench/bench_exporters.py            # human-readable table
    python bench/bench_exporters.py --markdown # a section for bench/RESULTS.md

Rows, each against a baseline measured in the same process:

* **render 10k series**: the agent's exposition of a collected batch of 10,000 gauge series
  (``Telemetry.set_batch`` + ``exposition``) against prometheus_client's own
  ``generate_latest`` on a registry holding the same 10,000 labelled gauges; and a cached
  scrape (the second ``exposition`` call of a round) against a fresh render.
* **encode 10k series**: each push exporter's ``encode`` (deltas, limits, chunking) of the
  same batch, against ``json.dumps`` of the batch as plain dicts (the least any JSON
  vendor format costs).
* **sink throughput**: points per second through a ``ResilientSink`` into a Datadog exporter
  posting to a local HTTP receiver on 127.0.0.1, against the same receiver fed the same
  bodies directly with ``requests`` (the sink's queueing, retry and breaker overhead).
* **cache hot path**: ``Cache.mget`` throughput while a push sink encodes and sends 10k
  series once a second, and back to back, in its thread, against the same loop with no
  sink. Export runs off the request path (no work per request), so the difference is
  contention for the interpreter lock and the two cores while an encode runs.

Each figure is the median of several repetitions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_machine import machine
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from agent.sinks import ResilientSink, SinkSettings
from agent.telemetry import Metric, Telemetry
from cache_core.cache import Cache
from plugins.exporters.cloudwatch import CloudWatchExporter
from plugins.exporters.datadog import DatadogExporter
from plugins.exporters.newrelic import NewRelicExporter

SERIES = 10_000


class _Agent:
    readiness = {"ready": True, "components": {}}


class _Sink(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        _Sink.received += 1
        self.send_response(202)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        return


def median(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def batch_of(n: int, value: float = 1.0) -> list[Metric]:
    now = time.time()
    return [Metric("predis_bench_value", value + i, "gauge", {"shard": str(i % 100), "slot": str(i)}, "bench", timestamp=now) for i in range(n)]


def bench_render(repeat: int) -> list[dict[str, Any]]:
    batch = batch_of(SERIES)
    telemetry = Telemetry("bench")

    def ours() -> None:
        telemetry.set_batch(batch)
        telemetry.exposition("")

    registry = CollectorRegistry()
    gauge = Gauge("predis_bench_value", "bench", ["shard", "slot"], registry=registry)
    for m in batch:
        gauge.labels(**m.labels).set(m.value)
    ref = median(lambda: generate_latest(registry), repeat)
    fresh = median(ours, repeat)
    telemetry.set_batch(batch)
    telemetry.exposition("")
    cached = median(lambda: telemetry.exposition(""), repeat * 10)
    return [
        {"row": "render 10k series: agent exposition (collect + render)", "seconds": fresh, "baseline": ref, "baseline_name": "generate_latest"},
        {"row": "scrape within a round (cached bytes)", "seconds": cached, "baseline": fresh, "baseline_name": "fresh render"},
    ]


def bench_encode(repeat: int) -> list[dict[str, Any]]:
    agent = _Agent()
    first, second = batch_of(SERIES, 1.0), batch_of(SERIES, 2.0)
    plain = median(lambda: json.dumps([{"name": m.name, "value": m.value, "labels": dict(m.labels), "ts": m.timestamp} for m in second]), repeat)
    exporters: list[tuple[str, Any]] = [
        ("datadog", DatadogExporter(agent, {"api_host": "http://127.0.0.1:1", "api_key": None, "tags": ["env:bench"], "host": "h", "service_check": False})),
        ("newrelic", NewRelicExporter(agent, {"region": "us", "api_key": None, "attributes": {"service": "predis"}})),
        ("cloudwatch", CloudWatchExporter(agent, {"namespace": "Bench", "dimensions": {"Host": "h"}}, 5.0)),
    ]
    rows = []
    for name, exporter in exporters:
        exporter.encode(first)
        seconds = median(lambda e=exporter: e.encode(second), repeat)
        payloads = exporter.encode(second)
        rows.append(
            {
                "row": f"encode 10k series: {name} ({len(payloads)} payloads)",
                "seconds": seconds,
                "baseline": plain,
                "baseline_name": "json.dumps of the batch",
            }
        )
    return rows


def _serve() -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _settings() -> SinkSettings:
    return SinkSettings(
        max_points=10_000_000,
        max_bytes=1 << 34,
        max_age_seconds=600,
        attempt_timeout_seconds=10,
        retry_initial_seconds=0.01,
        retry_max_seconds=0.1,
        breaker_fail_max=5,
        breaker_reset_timeout_seconds=1,
    )


def bench_sink(rounds: int) -> list[dict[str, Any]]:
    server, url = _serve()
    try:
        exporter = DatadogExporter(_Agent(), {"api_host": url, "api_key": _Key(), "tags": [], "host": "h", "service_check": False, "compress": False})
        batches = [batch_of(SERIES // 10, float(i)) for i in range(rounds + 1)]
        exporter.encode(batches[0])
        bodies = [p for b in batches[1:] for p in exporter.encode(b)]
        session = requests.Session()
        started = time.perf_counter()
        for p in bodies:
            session.post(url + "/api/v1/series", data=json.dumps(p.body, separators=(",", ":")).encode(), headers={"DD-API-KEY": "k"}, timeout=10)
        direct = time.perf_counter() - started
        points = sum(p.points for p in bodies)
        sink = ResilientSink("datadog", DatadogExporter(_Agent(), {"api_host": url, "api_key": _Key(), "tags": [], "host": "h", "service_check": False, "compress": False}), _settings())
        sink.submit(batches[0])
        sink.wait_idle(30)
        started = time.perf_counter()
        for b in batches[1:]:
            sink.submit(b)
        sink.wait_idle(120)
        through = time.perf_counter() - started
        sink.close(1)
        return [
            {
                "row": f"sink throughput: {points} points in {len(bodies)} payloads (encode + queue + send)",
                "seconds": through,
                "baseline": direct,
                "baseline_name": "same bodies posted directly (no encode)",
                "points_per_second": points / through,
            }
        ]
    finally:
        server.shutdown()


class _Key:
    def reveal(self) -> str:
        return "bench-key"


def bench_hot_path(seconds: float) -> list[dict[str, Any]]:
    cache = Cache(numpy, max_keys=1 << 18, max_memory_bytes=256 << 20)
    keys = [f"key:{i}".encode() for i in range(100_000)]
    for i in range(0, len(keys), 1000):
        cache.mset(list(zip(keys[i : i + 1000], [b"v" * 64] * 1000)))
    batches = [keys[i : i + 1000] for i in range(0, len(keys), 1000)]

    def loop(duration: float) -> float:
        done = 0
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            for b in batches[:10]:
                cache.mget(b)
                done += len(b)
        return done / duration

    idle = statistics.median(loop(seconds) for _ in range(3))
    rows = []
    for label, pause in (("every 1 s (10x the default push rate)", 1.0), ("back to back (worst case)", 0.0)):
        server, url = _serve()
        stop = threading.Event()
        exporter = DatadogExporter(_Agent(), {"api_host": url, "api_key": _Key(), "tags": [], "host": "h", "service_check": False})
        sink = ResilientSink("datadog", exporter, _settings())

        def pusher(sink: ResilientSink = sink, stop: threading.Event = stop, pause: float = pause) -> None:
            value = 0.0
            while not stop.is_set():
                value += 1
                sink.submit(batch_of(SERIES, value))
                sink.wait_idle(30)
                stop.wait(pause)

        thread = threading.Thread(target=pusher, daemon=True)
        thread.start()
        busy = statistics.median(loop(seconds) for _ in range(3))
        stop.set()
        thread.join(30)
        sink.close(1)
        server.shutdown()
        rows.append(
            {
                "row": f"cache mget keys/s while a sink pushes 10k series {label}",
                "value": busy,
                "baseline_value": idle,
                "baseline_name": "no sink",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rows = bench_render(args.repeat) + bench_encode(args.repeat) + bench_sink(20) + bench_hot_path(3.0)
    info = machine()
    if args.markdown:
        print("## Exporters (bench/bench_exporters.py)\n")
        print(f"Machine: {info}\n")
        print("| row | ours | baseline | ratio (ours / baseline) |")
        print("|---|---|---|---|")
    for r in rows:
        if "value" in r:
            ratio = r["value"] / r["baseline_value"]
            ours, base = f"{r['value'] / 1e6:.2f} M/s", f"{r['baseline_value'] / 1e6:.2f} M/s ({r['baseline_name']})"
        else:
            ratio = r["seconds"] / r["baseline"]
            ours, base = f"{r['seconds'] * 1e3:.2f} ms", f"{r['baseline'] * 1e3:.2f} ms ({r['baseline_name']})"
            if "points_per_second" in r:
                ours += f" ({r['points_per_second'] / 1e3:.0f}k points/s)"
        if args.markdown:
            print(f"| {r['row']} | {ours} | {base} | {ratio:.2f} |")
        else:
            print(f"{r['row']}\n    ours {ours}   baseline {base}   ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
