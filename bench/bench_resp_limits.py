# SPDX-License-Identifier: Apache-2.0
"""Benchmark: what one hostile or careless Redis client costs a running agent and its other
clients, with the RESP limits at their defaults (issue: hardening).

Run from the repository root::

    python bench/bench_resp_limits.py            # table
    python bench/bench_resp_limits.py --json

The agent runs as users run it (``python -m agent run``, defaults, a password set through
``${env:...}`` and ``cache.max_keys`` raised to hold 500k keys). Two kinds of figures:

* **Memory**: the agent's peak RSS (``VmHWM``, reset through ``/proc/PID/clear_refs``
  before each scenario) minus its RSS before, as a share of the limit that should bound it:
  a client pipelining 500 ``GET`` of a 1 MiB value and reading nothing (bounded by
  ``output_buffer_bytes``); four unauthenticated clients declaring a million arguments and
  sending 2 MiB bulks (bounded by the pre-AUTH frame limits: about nothing); one client
  sending an endless command (bounded by ``query_buffer_bytes``).
* **Fairness**: another client's PING round trips, back to back on its own connection,
  while a 500k-pair ``MSET``, a 1M-key ``MGET`` and a 1M-key ``DEL`` run, against the same
  round trips with the agent idle just before: p50/p99 and the p99 ratio. The target is a
  p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_machine import machine
from bench_resp import start_agent, stop

MiB = 1 << 20
PASSWORD = "bench-resp-limits-password"
OUTPUT_BUFFER_BYTES = 64 * MiB
QUERY_BUFFER_BYTES = 256 * MiB
# Before AUTH: at most 10 arguments of 16 KiB (preauth_max_multibulk_length, _bulk_bytes).
PREAUTH_FRAME_BYTES = 10 * 16 * 1024
P99_TARGET_SECONDS = 0.1
# Peak RSS may pass what the limits count by the allocator's overhead and the copies of the
# one argument being assembled (at most 3 x max_bulk_bytes): measured 1.03 x the limit.
MEMORY_TARGET_RATIO = 1.05
IDLE_ROUND_TRIPS = 2000


def rss_field(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) * 1024 if match else 0


def reset_peak(pid: int) -> int:
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return rss_field(pid, "VmRSS")


def command(*args: bytes | str) -> bytes:
    parts = [a if isinstance(a, bytes) else a.encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def connect(port: int, rcvbuf: int | None = None, auth: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(60)
    s.connect(("127.0.0.1", port))
    if auth:
        s.sendall(command("AUTH", PASSWORD))
        assert s.recv(5) == b"+OK\r\n"
    return s


def read_exactly(s: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = s.recv(min(1 << 20, n - len(data)))
        if not chunk:
            raise RuntimeError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def drain_until_closed(s: socket.socket) -> None:
    try:
        while s.recv(1 << 20):
            pass
    except (TimeoutError, ConnectionResetError):
        pass


def flood(s: socket.socket, header: bytes, bulk: bytes, count: int) -> None:
    """Send ``header`` then ``count`` bulks (until the server closes), then drain and close."""
    try:
        s.sendall(header)
        for _ in range(count):
            s.sendall(bulk)
    except OSError:
        pass
    drain_until_closed(s)
    s.close()


def info_stat(port: int, field: str) -> int:
    s = connect(port)
    try:
        s.sendall(command("INFO", "stats"))
        header = b""
        while not header.endswith(b"\r\n"):
            header += s.recv(1)
        body = read_exactly(s, int(header[1:-2]) + 2).decode()
    finally:
        s.close()
    match = re.search(rf"^{field}:(\d+)", body, re.M)
    return int(match.group(1)) if match else 0


def memory_scenarios(pid: int, port: int) -> list[dict[str, Any]]:
    out = []
    s = connect(port)
    s.sendall(command("SET", "bench:big", b"x" * MiB))
    assert s.recv(5) == b"+OK\r\n"
    s.close()

    before = reset_peak(pid)
    closes = info_stat(port, "client_output_buffer_limit_disconnections")
    started = time.monotonic()
    s = connect(port, rcvbuf=4096)
    s.sendall(command("GET", "bench:big") * 500)
    while info_stat(port, "client_output_buffer_limit_disconnections") == closes:
        time.sleep(0.1)
    s.close()
    grown = rss_field(pid, "VmHWM") - before
    out.append({"scenario": "500 GET of 1 MiB, never read", "grown": grown, "limit": OUTPUT_BUFFER_BYTES, "seconds": time.monotonic() - started})

    bulk = b"$2097152\r\n" + b"a" * (2 * MiB) + b"\r\n"
    before = reset_peak(pid)
    started = time.monotonic()
    for _ in range(4):
        flood(connect(port, auth=False), b"*1048576\r\n", bulk, 8)
    grown = rss_field(pid, "VmHWM") - before
    out.append({"scenario": "4 unauthenticated *1048576 + 2 MiB bulks", "grown": grown, "limit": 4 * PREAUTH_FRAME_BYTES, "seconds": time.monotonic() - started})

    before = reset_peak(pid)
    started = time.monotonic()
    flood(connect(port), b"*1048576\r\n$4\r\nMSET\r\n", bulk, 2 * QUERY_BUFFER_BYTES // len(bulk))
    grown = rss_field(pid, "VmHWM") - before
    out.append({"scenario": "endless command (2 MiB bulks)", "grown": grown, "limit": QUERY_BUFFER_BYTES, "seconds": time.monotonic() - started})
    return out


class RoundTrips:
    def __init__(self, port: int) -> None:
        self.sock = connect(port)
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        ping = command("PING")
        while not self.stop.is_set():
            started = time.perf_counter()
            self.sock.sendall(ping)
            read_exactly(self.sock, 7)
            self.samples.append(time.perf_counter() - started)

    def __enter__(self) -> RoundTrips:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        self.sock.close()


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def fairness_scenarios(port: int) -> list[dict[str, Any]]:
    idle = RoundTrips(port)
    with idle:
        while len(idle.samples) < IDLE_ROUND_TRIPS:
            time.sleep(0.01)
    idle_p99 = quantile(idle.samples, 0.99)
    keys = [b"bench:k:%07d" % i for i in range(1_000_000)]
    runs = [
        ("MSET of 500k pairs", command("MSET", *[p for k in keys[:500_000] for p in (k, b"vv")]), 5),
        ("MGET of 1M keys", command("MGET", *keys), len(b"*1000000\r\n") + 500_000 * 8 + 500_000 * 5),
        ("DEL of 1M keys", command("DEL", *keys), len(b":500000\r\n")),
    ]
    out = []
    for name, payload, reply in runs:
        s = connect(port)
        with RoundTrips(port) as trips:
            started = time.perf_counter()
            s.sendall(payload)
            read_exactly(s, reply)
            seconds = time.perf_counter() - started
        s.close()
        out.append(
            {
                "scenario": name,
                "seconds": seconds,
                "round_trips": len(trips.samples),
                "p50": statistics.median(trips.samples),
                "p99": quantile(trips.samples, 0.99),
                "idle_p99": idle_p99,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-resp-limits-") as tmp:
        os.environ["BENCH_RESP_LIMITS_PASSWORD"] = PASSWORD
        proc, port, backend = start_agent(
            Path(tmp),
            extra=(
                "cache.resp.requirepass=${env:BENCH_RESP_LIMITS_PASSWORD}",
                "cache.max_keys=600000",
                "cache.max_memory_bytes=536870912",
            ),
        )
        try:
            memory = memory_scenarios(proc.pid, port)
            fairness = fairness_scenarios(port)
        finally:
            stop(proc)
    if opts.json:
        print(json.dumps({"machine": machine(), "backend": backend, "memory": memory, "fairness": fairness}, indent=2))
        return
    print(f"{machine()}, our backend {backend}")
    print(f"{'memory scenario':44} {'RSS grown':>10} {'limit':>10} {'grown/limit':>12} {'seconds':>8}")
    for row in memory:
        print(f"{row['scenario']:44} {row['grown'] / MiB:9.1f}M {row['limit'] / MiB:9.0f}M {row['grown'] / row['limit']:12.3f} {row['seconds']:8.1f}")
    print(f"{'while it runs':24} {'seconds':>8} {'trips':>7} {'p50 ms':>8} {'p99 ms':>8} {'idle p99 ms':>12} {'p99/idle':>9}")
    for row in fairness:
        print(
            f"{row['scenario']:24} {row['seconds']:8.2f} {row['round_trips']:7d} {row['p50'] * 1000:8.2f} {row['p99'] * 1000:8.2f} "
            f"{row['idle_p99'] * 1000:12.2f} {row['p99'] / row['idle_p99']:9.1f}"
        )
    worst = max(row["p99"] for row in fairness)
    print(f"target p99 < {P99_TARGET_SECONDS * 1000:.0f} ms while large commands run: {worst * 1000:.1f} ms, {'met' if worst < P99_TARGET_SECONDS else 'NOT met'}")
    over = [row["scenario"] for row in memory if row["grown"] > row["limit"] * MEMORY_TARGET_RATIO]
    print(
        f"target RSS growth within each limit (x{MEMORY_TARGET_RATIO}, the allocator's overhead): "
        f"{'met' if not over else 'NOT met for ' + ', '.join(over)}"
    )


if __name__ == "__main__":
    sys.exit(main())
