# SPDX-License-Identifier: Apache-2.0
"""Benchmark: the Cache facade on NumPy against a Python dict, and its memory per key.

Run from the repository root::

    python bench/bench_cache.py            # human-readable tables
    python bench/bench_cache.py --json     # machine-readable results
    python bench/bench_cache.py --markdown # the section recorded in bench/RESULTS.md
    python bench/bench_cache.py --sizes 1,16,1000 --memory-keys 100000  # quick run

Everything runs in one process, on the host (``Cache(numpy, ...)``), and every figure is
the median of several repetitions. Ratios are cache ops/s divided by the ops/s of a
Python dict doing the same thing in the same run, so they are comparable across
machines where absolute figures are not.

1. **Single-key operations** (``--ops`` calls per repetition, one key per call, all
   through the public facade, so fingerprinting, the lock, the value store and the
   eviction policy are included):

   * ``set (existing)``: ``cache.set(k, v)`` on keys already present; dict: ``d[k] = v``.
   * ``get (existing)``: ``cache.get(k)`` on keys present; dict: ``d.get(k)``.
   * ``mset 1 new key``: ``cache.mset([(k, v)])`` of a key not yet present (fresh keys
     every repetition); dict: ``d[k] = v`` of fresh keys.
   * ``incrby``: ``cache.incrby(k, 1)`` on counters already present; dict:
     ``d[k] = b"%d" % (int(d.get(k, b"0")) + 1)`` (the cache stores bytes too).

2. **Batched operations** at batch 1, 16, 1,000 and 1,000,000 keys (``--sizes``):
   ``cache.mset(batch)`` of new keys into an empty cache (the cache is flushed, untimed,
   before each repetition), then ``cache.mget(batch)`` of the same keys (all hits).
   Small batch sizes repeat the call until at least 20,000 keys (100,000 from batch 1,000
   up) have been processed; ops/s counts keys, not calls. Batches of at most 16 keys take
   the cache's scalar host path, larger ones the vectorised table; at batch 1 and 16 the
   calls covering the first 5,000 keys are also timed on a cache built with
   ``small_batch=0`` (vectorised path forced), which is what
   ``cache_core.cache.SMALL_BATCH`` is chosen by. Baseline: a dict loop
   over the same batches (``for k, v in batch: d[k] = v`` and ``[get(k) for k in batch]``).
   ``fingerprint`` is the fingerprinting of the same batches as the cache's path does it
   (:meth:`Fingerprinter.fingerprint` per key on the scalar path,
   :meth:`Fingerprinter.fingerprints` per batch on the vectorised one), reported on its
   own: it is part of every mget/mset and runs on the host whatever the backend.
   The batch-1M row is the one the targets (>= 25M lookups/s, >= 8M inserts/s) apply to;
   it takes about half a minute on a 2-core machine and runs by default (the whole
   script about 95 s; ``--sizes 1,16,1000`` for a quicker run).

3. **Memory per key** at ``--memory-keys`` (1,000,000) keys of 16 bytes
   (``key:%012d``) with 16-byte values (``%016d``), loaded with ``mset`` in batches of
   100,000 into a cache sized like the agent's default (``max_keys = 2**20``):

   * cache: ``snapshot().device_bytes + snapshot().host_bytes`` divided by the keys
     (device: hash table and value-store pages; host: the dense per-entry arrays). The
     arrays are sized for ``max_keys``, not for the keys present. With ``--trace-cache``
     tracemalloc also counts everything the cache allocated (which covers the eviction
     policy and the free-entry list the snapshot leaves out); it slows the load ~10x.
   * dict: a Python ``dict`` of ``bytes -> bytes`` with the same keys and values,
     measured with :mod:`tracemalloc` (keys, values and the dict itself). tracemalloc
     counts the sizes requested, not the allocator's blocks (a 49-byte ``bytes`` object
     takes a 64-byte pymalloc block), so the RSS growth of building the same dict in a
     fresh interpreter (``--rss-probe``, run as a subprocess) is printed next to it; the
     same is done for the cache.
   * redis-server: ``INFO memory`` ``used_memory`` after loading the same keys and values
     with ``redis-cli --pipe`` (one ``SET`` per key, Redis' mass-insertion mode), minus
     ``used_memory`` of the empty server, divided by ``DBSIZE`` (``used_memory_rss`` growth
     is printed next to it). The server is started by
     this script on a free 127.0.0.1 port (``--save '' --appendonly no``, a temporary
     ``--dir``) and stopped by PID at the end; skipped with a note when redis-server or
     redis-cli is missing.

   The fingerprinting rate on the same 1M keys (one :meth:`Fingerprinter.fingerprints`
   call) is printed with the memory figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_machine import machine

from cache_core.cache import Cache
from cache_core.keys import Fingerprinter

TARGET_BATCH = 1_000_000
TARGETS = {"mget": 25e6, "mset": 8e6}  # keys/s at batch 1M
AGENT_MAX_KEYS = 1 << 20  # cache.max_keys default
AGENT_MAX_MEMORY = 256 << 20  # cache.max_memory_bytes default
VALUE = b"v" * 16
FORCED_KEYS = 5_000  # keys timed on the forced-vectorised cache at batch <= SMALL_BATCH


def redis_version() -> str | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip() or None


def median_seconds(fn: Callable[[int], Any], repeat: int, setup: Callable[[int], Any] | None = None) -> float:
    """Median wall time of ``fn(rep)`` over ``repeat`` runs, ``setup(rep)`` untimed before each."""
    times = []
    for rep in range(repeat):
        if setup is not None:
            setup(rep)
        start = time.perf_counter()
        fn(rep)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def new_cache(max_keys: int = AGENT_MAX_KEYS) -> Cache:
    return Cache(numpy, max_keys=max_keys, max_memory_bytes=AGENT_MAX_MEMORY)


# ---------------------------------------------------------------------------- 1. single key
def bench_single(n: int, repeat: int) -> list[dict[str, Any]]:
    keys = [b"key:%012d" % i for i in range(n)]
    counters = [b"ctr:%012d" % i for i in range(n)]
    fresh = [[b"new:%02d:%09d" % (r, i) for i in range(n)] for r in range(repeat)]
    other = b"w" * 16

    cache = new_cache()
    cache.mset([(k, VALUE) for k in keys])
    cache.mset([(k, b"100") for k in counters])
    d: dict[bytes, bytes] = {k: VALUE for k in keys}
    d.update((k, b"100") for k in counters)
    # Warm up both (first-touch page faults, lazily built state).
    for k in keys[:1000]:
        cache.get(k)
        cache.set(k, VALUE)

    def c_set(_rep: int) -> None:
        put = cache.set
        for k in keys:
            put(k, other)

    def d_set(_rep: int) -> None:
        for k in keys:
            d[k] = other

    def c_get(_rep: int) -> None:
        get = cache.get
        for k in keys:
            get(k)

    def d_get(_rep: int) -> None:
        get = d.get
        for k in keys:
            get(k)

    def c_mset1(rep: int) -> None:
        mset = cache.mset
        for k in fresh[rep]:
            mset([(k, VALUE)])

    def d_mset1(rep: int) -> None:
        for k in fresh[rep]:
            d[k] = VALUE

    def c_incr(_rep: int) -> None:
        incrby = cache.incrby
        for k in counters:
            incrby(k, 1)

    def d_incr(_rep: int) -> None:
        get = d.get
        for k in counters:
            d[k] = b"%d" % (int(get(k, b"0")) + 1)

    cases = [
        ("set (existing)", c_set, d_set),
        ("get (existing)", c_get, d_get),
        ("mset 1 new key", c_mset1, d_mset1),
        ("incrby", c_incr, d_incr),
    ]
    rows = []
    for name, c_fn, d_fn in cases:
        t_c = median_seconds(c_fn, repeat)
        t_d = median_seconds(d_fn, repeat)
        rows.append({"op": name, "calls": n, "cache_ops_s": n / t_c, "dict_ops_s": n / t_d, "ratio": t_d / t_c})
    if cache.get(keys[0]) != other or cache.get(counters[0]) != b"%d" % (100 + repeat):
        raise RuntimeError("benchmark sanity check failed: the cache holds unexpected values")
    if cache.get(fresh[-1][-1]) != VALUE:
        raise RuntimeError("benchmark sanity check failed: a new key is missing")
    return rows


# ---------------------------------------------------------------------------- 2. batched
def keys_for(batch: int) -> int:
    return max(batch, 20_000 if batch < 1000 else 100_000)


def cache_times(cache: Cache, item_batches: list[Any], key_batches: list[Any], repeat: int) -> tuple[float, float]:
    """Median seconds of mset over ``item_batches`` (into an empty cache), then mget over ``key_batches``."""

    def flush(_rep: int) -> None:
        cache.flush()
        gc.collect()

    def c_mset(_rep: int) -> None:
        mset = cache.mset
        for b in item_batches:
            mset(b)

    def c_mget(_rep: int) -> None:
        mget = cache.mget
        for b in key_batches:
            mget(b)

    t_set = median_seconds(c_mset, repeat, setup=flush)
    t_get = median_seconds(c_mget, repeat)
    total = sum(len(b) for b in key_batches)
    probe = [k for b in key_batches[:: max(1, len(key_batches) // 50)] for k in b[:: max(1, len(b) // 20)]]
    if cache.dbsize() != total or any(v != VALUE for v in cache.mget(probe)):
        raise RuntimeError("benchmark sanity check failed: mget disagrees with mset")
    cache.flush()
    return t_set, t_get


def bench_batch(batch: int, repeat: int, cache: Cache, fp: Fingerprinter) -> list[dict[str, Any]]:
    total = keys_for(batch)
    keys = [b"key:%012d" % i for i in range(total)]
    items = [(k, VALUE) for k in keys]
    key_batches = [keys[i : i + batch] for i in range(0, total, batch)]
    item_batches = [items[i : i + batch] for i in range(0, total, batch)]

    scalar = batch <= cache.small_batch

    def c_fp(_rep: int) -> None:
        # What the cache's path calls: per-key fingerprint() on the scalar path, else fingerprints().
        if scalar:
            fingerprint = fp.fingerprint
            for b in key_batches:
                [fingerprint(k) for k in b]
        else:
            fingerprints = fp.fingerprints
            for b in key_batches:
                fingerprints(b)

    timed = [("scalar" if scalar else "vectorised", cache_times(cache, item_batches, key_batches, repeat))]
    if scalar:
        # The same batches forced through the vectorised table: what the scalar path saves.
        # Only the first FORCED_KEYS keys: one vectorised call of a key or two costs ~0.3 ms.
        forced = Cache(numpy, max_keys=cache.max_keys, max_memory_bytes=cache.max_memory_bytes, small_batch=0)
        calls = -(-FORCED_KEYS // batch)
        t_set, t_get = cache_times(forced, item_batches[:calls], key_batches[:calls], repeat)
        scale = total / sum(len(b) for b in key_batches[:calls])  # report per key like the other rows
        timed.append(("vectorised (small_batch=0)", (t_set * scale, t_get * scale)))
        del forced
    t_fp = median_seconds(c_fp, max(1, repeat // 2))

    d: dict[bytes, bytes] = {}

    def d_clear(_rep: int) -> None:
        d.clear()
        gc.collect()

    def d_mset(_rep: int) -> None:
        for b in item_batches:
            for k, v in b:
                d[k] = v

    def d_mget(_rep: int) -> None:
        get = d.get
        for b in key_batches:
            [get(k) for k in b]

    dt_set = median_seconds(d_mset, repeat, setup=d_clear)
    dt_get = median_seconds(d_mget, repeat)
    d.clear()

    rows: list[dict[str, Any]] = [
        {"op": "fingerprint", "batch": batch, "keys": total, "path": timed[0][0], "cache_ops_s": total / t_fp, "dict_ops_s": None, "ratio": None}
    ]
    for op, dt, index in (("mset", dt_set, 0), ("mget", dt_get, 1)):
        for path, times in timed:
            t = times[index]
            rows.append({"op": op, "batch": batch, "keys": total, "path": path, "cache_ops_s": total / t, "dict_ops_s": total / dt, "ratio": dt / t})
    return rows


# ---------------------------------------------------------------------------- 3. memory
def memory_items(n: int) -> Any:
    return ((b"key:%012d" % i, b"%016d" % i) for i in range(n))


def cache_memory(n: int, trace: bool) -> dict[str, Any]:
    gc.collect()
    if trace:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cache = new_cache()
    batch: list[tuple[bytes, bytes]] = []
    start = time.perf_counter()
    for item in memory_items(n):
        batch.append(item)
        if len(batch) == 100_000:
            cache.mset(batch)
            batch = []
    if batch:
        cache.mset(batch)
    del batch
    load_s = time.perf_counter() - start
    traced = None
    if trace:
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
    s = cache.snapshot()
    if s.keys != n:
        raise RuntimeError(f"memory benchmark: expected {n} keys in the cache, found {s.keys} (evictions?)")
    return {
        "keys": s.keys,
        "max_keys": cache.max_keys,
        "table_bytes": int(cache.table.nbytes),
        "store_bytes": int(cache.store.allocated_bytes),
        "device_bytes": s.device_bytes,
        "host_bytes": s.host_bytes,
        "bytes_per_key": (s.device_bytes + s.host_bytes) / s.keys,
        "tracemalloc_bytes_per_key": None if traced is None else traced / s.keys,
        "load_keys_s": n / load_s,
    }


def dict_memory(n: int) -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    d = dict(memory_items(n))
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    keys = len(d)
    del d
    return {"keys": keys, "bytes_per_key": traced / keys}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resp_command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def redis_memory(n: int) -> dict[str, Any]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        return {"skipped": "redis-server or redis-cli not installed"}
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        port = free_port()
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = [cli, "-h", "127.0.0.1", "-p", str(port)]

        def ask(*command: str) -> str:
            return subprocess.run([*base, *command], capture_output=True, text=True, timeout=60).stdout

        try:
            deadline = time.monotonic() + 20
            while ask("PING").strip() != "PONG":
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

            def used_memory(field: str = "used_memory") -> int:
                for line in ask("INFO", "memory").splitlines():
                    if line.startswith(field + ":"):
                        return int(line.split(":", 1)[1])
                raise RuntimeError(f"INFO memory has no {field}")

            empty, empty_rss = used_memory(), used_memory("used_memory_rss")
            load = Path(tmp) / "load.resp"
            with load.open("wb") as f:
                f.writelines(resp_command(b"SET", k, v) for k, v in memory_items(n))
            start = time.perf_counter()
            with load.open("rb") as f:
                piped = subprocess.run([*base, "--pipe"], stdin=f, capture_output=True, text=True, timeout=300)
            load_s = time.perf_counter() - start
            if piped.returncode != 0 or "errors: 0" not in piped.stdout:
                raise RuntimeError(f"redis-cli --pipe failed: {piped.stdout.strip()} {piped.stderr.strip()}")
            used, used_rss = used_memory(), used_memory("used_memory_rss")
            keys = int(ask("DBSIZE").strip())
            return {
                "keys": keys,
                "empty_used_memory": empty,
                "used_memory": used,
                "bytes_per_key": (used - empty) / keys,
                "rss_bytes_per_key": (used_rss - empty_rss) / keys,
                "load": "redis-cli --pipe (one SET per key)",
                "load_keys_s": n / load_s,
            }
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rss_bytes() -> int:
    """Resident set size of this process (Linux), in bytes."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_probe_main(kind: str, n: int) -> int:
    """``--rss-probe``: build one structure in this fresh process and print its RSS growth."""
    gc.collect()
    before = rss_bytes()
    if kind == "cache":
        cache = new_cache()
        batch: list[tuple[bytes, bytes]] = []
        for item in memory_items(n):
            batch.append(item)
            if len(batch) == 100_000:
                cache.mset(batch)
                batch = []
        if batch:
            cache.mset(batch)
        del batch
        keys = cache.dbsize()
    else:
        d = dict(memory_items(n))
        keys = len(d)
    gc.collect()
    print(json.dumps({"keys": keys, "rss_bytes": rss_bytes() - before}))
    return 0


def rss_per_key(kind: str, n: int) -> float | None:
    """RSS growth per key of building ``kind`` in a fresh interpreter (None off Linux)."""
    if not Path("/proc/self/statm").exists():
        return None
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--rss-probe", kind, "--memory-keys", str(n)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rss probe {kind} failed: {done.stderr.strip()[-500:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["rss_bytes"] / out["keys"]


def fingerprint_seconds(fp: Fingerprinter, n: int) -> float:
    """Median seconds to fingerprint ``n`` keys (the keys are freed on return)."""
    keys = [b"key:%012d" % i for i in range(n)]
    return median_seconds(lambda _rep: fp.fingerprints(keys), 3)


def bench_memory(n: int, with_redis: bool, trace_cache: bool) -> dict[str, Any]:
    fp = Fingerprinter()
    fp_s = fingerprint_seconds(fp, n)
    out = {
        "cache": dict(cache_memory(n, trace_cache), rss_bytes_per_key=rss_per_key("cache", n)),
        "dict": dict(dict_memory(n), rss_bytes_per_key=rss_per_key("dict", n)),
        "redis": redis_memory(n) if with_redis else {"skipped": "--no-redis"},
        "fingerprint_keys_s": n / fp_s,
    }
    return out


# ---------------------------------------------------------------------------- output
def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        target = TARGETS.get(row["op"])
        if target is not None and row["batch"] == TARGET_BATCH and row["path"] == "vectorised":
            verdict = "met" if row["cache_ops_s"] >= target else "NOT met"
            what = "lookups" if row["op"] == "mget" else "inserts"
            lines.append(
                f"target >= {target / 1e6:.0f}M {what}/s ({row['op']}) at batch 1M: {row['cache_ops_s'] / 1e6:.2f}M/s, {verdict}"
            )
    return lines


def rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.1f}k"


def ratio(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.1:
        return f"{value:.4f}x"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def memory_lines(mem: dict[str, Any]) -> list[str]:
    c, d, r = mem["cache"], mem["dict"], mem["redis"]
    per = c["bytes_per_key"]

    def rss(x: dict[str, Any]) -> str:
        v = x.get("rss_bytes_per_key")
        return "" if v is None else f"; RSS growth building it in a fresh process: {v:.1f} B/key"

    lines = [
        f"cache snapshot (device_bytes + host_bytes): {per:.1f} B/key ({c['device_bytes'] / 1e6:.1f} MB device ="
        f" table {c['table_bytes'] / 1e6:.1f} MB + value pages {c['store_bytes'] / 1e6:.1f} MB;"
        f" {c['host_bytes'] / 1e6:.1f} MB host entry arrays; {c['keys']:,} keys, max_keys {c['max_keys']:,})"
        + ("" if c["tracemalloc_bytes_per_key"] is None else f"; tracemalloc of the whole cache: {c['tracemalloc_bytes_per_key']:.1f} B/key")
        + rss(c),
        f"python dict bytes->bytes (tracemalloc, requested sizes): {d['bytes_per_key']:.1f} B/key{rss(d)};"
        f" cache snapshot / dict tracemalloc = {per / d['bytes_per_key']:.2f}",
    ]
    if "skipped" in r:
        lines.append(f"redis-server: skipped ({r['skipped']})")
    else:
        lines.append(
            f"redis-server used_memory (minus empty {r['empty_used_memory'] / 1e6:.2f} MB): {r['bytes_per_key']:.1f} B/key"
            f" over {r['keys']:,} keys loaded by {r['load']} (used_memory_rss growth: {r['rss_bytes_per_key']:.1f} B/key);"
            f" cache snapshot / redis = {per / r['bytes_per_key']:.2f}"
        )
    lines.append(f"fingerprinting (Fingerprinter.fingerprints, 1 batch of {c['keys']:,} keys): {mem['fingerprint_keys_s'] / 1e6:.2f}M keys/s")
    return lines


def text_output(res: dict[str, Any]) -> str:
    info = res["machine"]
    out = [f"{info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, NumPy {info['numpy']}, redis-server {info['redis_server']}", ""]
    out.append(f"{'single-key op':<16} {'calls':>7} {'cache ops/s':>12} {'dict ops/s':>12} {'ratio':>7}")
    for row in res["single"]:
        out.append(f"{row['op']:<16} {row['calls']:>7} {rate(row['cache_ops_s']):>12} {rate(row['dict_ops_s']):>12} {ratio(row['ratio']):>7}")
    out.append("")
    out.append(f"{'batched op':<12} {'batch':>9} {'keys':>9} {'path':>26} {'cache keys/s':>13} {'dict keys/s':>12} {'ratio':>7}")
    for row in res["batched"]:
        out.append(
            f"{row['op']:<12} {row['batch']:>9} {row['keys']:>9} {row['path']:>26} {rate(row['cache_ops_s']):>13}"
            f" {rate(row['dict_ops_s']):>12} {ratio(row['ratio']):>7}"
        )
    out.extend(target_lines(res["batched"]))
    if res["memory"] is not None:
        out.append("")
        out.extend(memory_lines(res["memory"]))
    out.append(f"total {res['seconds']:.1f} s")
    return "\n".join(out)


def markdown(res: dict[str, Any], command: str) -> str:
    info = res["machine"]
    out = [
        "## Cache facade (numpy backend)",
        "",
        f"Machine: {info['nproc']} CPUs (`nproc`), {info['cpu']}; Python {info['python']}, NumPy {info['numpy']};"
        f" redis-server {info['redis_server'] or 'not installed'}.",
        f"Command: `{command}` (whole run {res['seconds']:.0f} s).",
        "",
        "Single-key calls:",
        "",
        "| op | calls | cache ops/s | dict ops/s | cache / dict |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in res["single"]:
        out.append(f"| {row['op']} | {row['calls']:,} | {rate(row['cache_ops_s'])} | {rate(row['dict_ops_s'])} | {ratio(row['ratio'])} |")
    out += [
        "",
        "Batched calls (keys/s; mset of new keys into an empty cache, mget of the same keys, all hits):",
        "",
        "| op | batch | keys | cache path | cache keys/s | dict keys/s | cache / dict |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for row in res["batched"]:
        out.append(
            f"| {row['op']} | {row['batch']:,} | {row['keys']:,} | {row['path']} | {rate(row['cache_ops_s'])}"
            f" | {rate(row['dict_ops_s'])} | {ratio(row['ratio'])} |"
        )
    out.append("")
    out.extend(f"- {line}" for line in target_lines(res["batched"]))
    if res["memory"] is not None:
        n = res["memory"]["cache"]["keys"]
        out += ["", f"Memory at {n:,} keys of 16 bytes with 16-byte values:", ""]
        out.extend(f"- {line}" for line in memory_lines(res["memory"]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1,16,1000,1000000", help="comma-separated batch sizes for mget/mset")
    parser.add_argument("--ops", type=int, default=10_000, help="calls per repetition of the single-key figures")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per figure (median is reported)")
    parser.add_argument("--large-repeat", type=int, default=3, help="repetitions for batches of 100,000 keys and more")
    parser.add_argument("--memory-keys", type=int, default=1_000_000, help="keys for the memory figures (0: skip)")
    parser.add_argument("--no-redis", action="store_true", help="skip the redis-server memory comparison")
    parser.add_argument(
        "--trace-cache", action="store_true", help="also count the cache's allocations with tracemalloc (slow: ~1 min at 1M keys)"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print machine-readable results")
    output.add_argument("--markdown", action="store_true", help="print the bench/RESULTS.md section")
    parser.add_argument("--rss-probe", choices=("cache", "dict"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_probe:
        return rss_probe_main(args.rss_probe, args.memory_keys)
    if args.memory_keys > AGENT_MAX_KEYS:
        parser.error(f"--memory-keys is at most {AGENT_MAX_KEYS} (the cache is sized like the agent's default)")

    start = time.perf_counter()
    single = bench_single(args.ops, args.repeat)
    cache = new_cache()
    fp = Fingerprinter()
    batched: list[dict[str, Any]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        if size > AGENT_MAX_KEYS:
            parser.error(f"batch {size} is larger than the cache's max_keys ({AGENT_MAX_KEYS})")
        batched.extend(bench_batch(size, args.large_repeat if size >= 100_000 else args.repeat, cache, fp))
    del cache
    gc.collect()
    memory = bench_memory(args.memory_keys, not args.no_redis, args.trace_cache) if args.memory_keys > 0 else None
    res = {
        "machine": machine(redis_server=redis_version()),
        "seconds": time.perf_counter() - start,
        "single": single,
        "batched": batched,
        "memory": memory,
        "targets": target_lines(batched),
    }
    if args.json:
        print(json.dumps(res, indent=2))
    elif args.markdown:
        command = " ".join(["python bench/bench_cache.py", *(sys.argv[1:] if argv is None else argv)])
        print(markdown(res, command))
    else:
        print(text_output(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
