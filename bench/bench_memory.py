# SPDX-License-Identifier: Apache-2.0
"""Benchmark: the agent's memory at rest and per key, against redis-server in the same run
(issue: the cache's hot path; its memory targets).

Run from the repository root (needs redis-server and redis-cli)::

    python bench/bench_memory.py                 # table
    python bench/bench_memory.py --json

* **Idle**: ``python -m agent run`` on the embedded default config (the schema's defaults:
  ``cache.max_keys`` 1,048,576, every default plugin loaded), RSS once it is ready and the
  highest RSS seen while it idles for ``--idle-seconds`` (collectors, exporters and the
  cron run meanwhile). Target: at most 120 MiB.
* **Per key**: ``--keys`` keys of 16 bytes with 16-byte values written over RESP (MSET of
  1,000 pairs per command) into the agent and into a redis-server started beside it. For
  the agent, its RSS growth per key; for redis-server its ``used_memory`` growth per key
  (the figure the target names) and its RSS growth per key. Target: the agent's bytes per
  key at most redis-server's ``used_memory`` per key.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_machine import machine
from bench_resp import ask, start_agent, start_redis, stop, tool

MIB = 1 << 20
IDLE_TARGET_MIB = 120
PAIRS_PER_COMMAND = 1000


def rss(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) * 1024 if match else 0


def used_memory(cli: str, port: int) -> int:
    return int(re.search(r"^used_memory:(\d+)", ask(cli, port, "info", "memory"), re.M).group(1))  # type: ignore[union-attr]


def write_keys(port: int, keys: int) -> None:
    """MSET keys ``k%015d`` (16 bytes) to values ``v%015d`` (16 bytes), 1,000 pairs per
    command, every reply read before the next command is sent."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        reader = s.makefile("rb")
        for start in range(0, keys, PAIRS_PER_COMMAND):
            n = min(PAIRS_PER_COMMAND, keys - start)
            parts = [b"*%d\r\n$4\r\nMSET\r\n" % (1 + 2 * n)]
            for i in range(start, start + n):
                parts.append(b"$16\r\nk%015d\r\n$16\r\nv%015d\r\n" % (i, i))
            s.sendall(b"".join(parts))
            reply = reader.readline()
            if reply != b"+OK\r\n":
                raise RuntimeError(f"MSET answered {reply!r}")


def idle_figures(tmp: Path, seconds: float) -> dict[str, Any]:
    proc, _port, backend = start_agent(tmp)
    try:
        ready = rss(proc.pid)
        peak = ready
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            peak = max(peak, rss(proc.pid))
            time.sleep(0.25)
        return {"backend": backend, "ready_rss": ready, "idle_peak_rss": peak}
    finally:
        stop(proc)


def per_key_figures(tmp: Path, keys: int, cli: str, redis_server: str) -> dict[str, Any]:
    out: dict[str, Any] = {"keys": keys}
    agent_dir = tmp / "agent"
    agent_dir.mkdir()
    agent, port, _backend = start_agent(agent_dir)
    try:
        before = rss(agent.pid)
        started = time.perf_counter()
        write_keys(port, keys)
        out["agent_write_seconds"] = time.perf_counter() - started
        if int(ask(cli, port, "dbsize")) != keys:
            raise RuntimeError("the agent does not hold every key written")
        out["agent_rss_per_key"] = (rss(agent.pid) - before) / keys
    finally:
        stop(agent)
    redis, rport = start_redis(redis_server, cli, tmp)
    try:
        before_used, before_rss = used_memory(cli, rport), rss(redis.pid)
        started = time.perf_counter()
        write_keys(rport, keys)
        out["redis_write_seconds"] = time.perf_counter() - started
        out["redis_used_per_key"] = (used_memory(cli, rport) - before_used) / keys
        out["redis_rss_per_key"] = (rss(redis.pid) - before_rss) / keys
    finally:
        stop(redis)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cli, redis_server = tool("redis-cli"), tool("redis-server")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        idle_dir, keys_dir = Path(tmp) / "idle", Path(tmp) / "keys"
        idle_dir.mkdir()
        keys_dir.mkdir()
        res = {"machine": machine(), **idle_figures(idle_dir, args.idle_seconds), **per_key_figures(keys_dir, args.keys, cli, redis_server)}
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    idle = res["idle_peak_rss"] / MIB
    ratio = res["agent_rss_per_key"] / res["redis_used_per_key"]
    print(f"machine: {res['machine']}")
    print(f"agent RSS on the embedded default config, 0 keys: {res['ready_rss'] / MIB:.1f} MiB when ready, "
          f"{idle:.1f} MiB at most over {args.idle_seconds:.0f} s idle (target <= {IDLE_TARGET_MIB} MiB: {'met' if idle <= IDLE_TARGET_MIB else 'NOT met'})")
    print(f"{res['keys']:,} keys of 16 bytes with 16-byte values: agent {res['agent_rss_per_key']:.1f} B/key RSS "
          f"(written in {res['agent_write_seconds']:.1f} s); redis-server {res['redis_used_per_key']:.1f} B/key used_memory, "
          f"{res['redis_rss_per_key']:.1f} B/key RSS (written in {res['redis_write_seconds']:.1f} s)")
    print(f"agent / redis used_memory per key: {ratio:.2f} (target <= 1: {'met' if ratio <= 1 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
