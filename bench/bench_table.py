# SPDX-License-Identifier: Apache-2.0
"""Benchmark: the batched hash table on NumPy against a Python dict, in one run.

Run from the repository root::

    python bench/bench_table.py            # human-readable table
    python bench/bench_table.py --json     # machine-readable results
    python bench/bench_table.py --markdown # the section recorded in bench/RESULTS.md

What is measured, per batch size (10k, 100k and 1M keys by default):

* ``fingerprint``: :meth:`Fingerprinter.fingerprints` on the batch's keys, in keys/s. It
  is reported on its own because the table works on precomputed fingerprints, just as
  the dict baseline works on ``bytes`` keys whose hashes CPython caches after first use.
* ``insert``: one batched :meth:`HashTable.insert` of the batch's (new) keys into a table
  of ``capacity >= 4 x batch`` already holding ``batch`` other keys, so the load goes
  from 0.25 to 0.5 during the timed call; then :meth:`HashTable.set_handles` is *not*
  timed. Baseline: ``d[key] = i`` in a loop over the same keys into a dict already holding
  ``batch`` other keys.
* ``lookup hit``: :meth:`HashTable.lookup` of the same batch (all present). Baseline:
  ``[get(key, -1) for key in keys]``.
* ``lookup miss``: lookups of ``batch`` absent keys. Baseline: the same list comprehension
  over absent ``bytes`` keys.

Every figure is the median of several repetitions; table state is rebuilt (untimed)
before each timed insert. Ratios are table ops/s divided by dict ops/s measured in the
same process, so they are comparable across machines where absolute figures are not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_machine import machine

from cache_core.keys import Fingerprinter
from cache_core.table import HashTable

TARGET_BATCH = 1_000_000
TARGETS = {"lookup hit": 25e6, "insert": 8e6}


def median_seconds(fn: Callable[[], Any], repeat: int, setup: Callable[[], Any] | None = None) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs, ``setup`` untimed before each."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_fingerprints(rng: numpy.random.Generator, n: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    return (
        rng.integers(0, 2**64, size=n, dtype=numpy.uint64, endpoint=False),
        rng.integers(0, 2**64, size=n, dtype=numpy.uint64, endpoint=False),
    )


def bench_batch(n: int, repeat: int, rng: numpy.random.Generator) -> list[dict[str, Any]]:
    keys = [b"user:%010d:profile" % i for i in range(n)]
    other = [b"item:%010d:stock" % i for i in range(n)]
    absent = [b"none:%010d:absent" % i for i in range(n)]
    fp = Fingerprinter(secret=b"bench-fixed-secret")

    t_fp = median_seconds(lambda: fp.fingerprints(keys), max(1, repeat // 2))
    hi, lo = fp.fingerprints(keys)
    pre_hi, pre_lo = random_fingerprints(rng, n)
    miss_hi, miss_lo = random_fingerprints(rng, n)

    table = HashTable(numpy, 4 * n, max_load_factor=0.75)

    def refill() -> None:
        table.clear()
        table.insert(pre_hi, pre_lo)

    t_ins = median_seconds(lambda: table.insert(hi, lo), repeat, setup=refill)
    load = table.load_factor
    t_hit = median_seconds(lambda: table.lookup(hi, lo), repeat)
    t_miss = median_seconds(lambda: table.lookup(miss_hi, miss_lo), repeat)
    if not bool((table.lookup(hi, lo) >= 0).all()) or bool((table.lookup(miss_hi, miss_lo) >= 0).any()):
        raise RuntimeError("benchmark sanity check failed: lookups disagree with inserts")

    d: dict[bytes, int] = {}

    def dict_refill() -> None:
        d.clear()
        for i, k in enumerate(other):
            d[k] = i

    def dict_insert() -> None:
        for i, k in enumerate(keys):
            d[k] = i

    def dict_lookup(batch: list[bytes]) -> list[int]:
        get = d.get
        return [get(k, -1) for k in batch]

    d_ins = median_seconds(dict_insert, repeat, setup=dict_refill)
    d_hit = median_seconds(lambda: dict_lookup(keys), repeat)
    d_miss = median_seconds(lambda: dict_lookup(absent), repeat)

    rows: list[dict[str, Any]] = [
        {"op": "fingerprint", "batch": n, "table_ops_s": n / t_fp, "dict_ops_s": None},
        {"op": "insert", "batch": n, "table_ops_s": n / t_ins, "dict_ops_s": n / d_ins, "load_after": load},
        {"op": "lookup hit", "batch": n, "table_ops_s": n / t_hit, "dict_ops_s": n / d_hit},
        {"op": "lookup miss", "batch": n, "table_ops_s": n / t_miss, "dict_ops_s": n / d_miss},
    ]
    for row in rows:
        row["ratio"] = None if row["dict_ops_s"] is None else row["table_ops_s"] / row["dict_ops_s"]
    return rows


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        target = TARGETS.get(row["op"])
        if target is not None and row["batch"] == TARGET_BATCH:
            verdict = "met" if row["table_ops_s"] >= target else "NOT met"
            lines.append(f"target {row['op']} >= {target / 1e6:.0f}M/s at batch 1M: {row['table_ops_s'] / 1e6:.1f}M/s, {verdict}")
    return lines


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:8.2f}M"


def text_table(rows: list[dict[str, Any]]) -> str:
    out = [f"{'op':<12} {'batch':>9} {'table ops/s':>12} {'dict ops/s':>12} {'ratio':>7}"]
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:6.1f}x"
        out.append(f"{row['op']:<12} {row['batch']:>9} {fmt_rate(row['table_ops_s']):>12} {fmt_rate(row['dict_ops_s']):>12} {ratio:>7}")
    return "\n".join(out)


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], seconds: float, command: str) -> str:
    out = [
        "## Hash table (numpy backend)",
        "",
        f"Machine: {info['nproc']} CPUs (`nproc`), {info['cpu']}; Python {info['python']}, NumPy {info['numpy']}.",
        f"Command: `{command}` (whole run {seconds:.0f} s).",
        "",
        "| op | batch | table ops/s | dict ops/s | table / dict |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.1f}x"
        dict_rate = "-" if row["dict_ops_s"] is None else f"{row['dict_ops_s'] / 1e6:.2f}M"
        out.append(f"| {row['op']} | {row['batch']:,} | {row['table_ops_s'] / 1e6:.2f}M | {dict_rate} | {ratio} |")
    out.append("")
    out.extend(f"- {line}" for line in target_lines(rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated batch sizes")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per figure (median is reported)")
    parser.add_argument("--seed", type=int, default=1)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print machine-readable results")
    output.add_argument("--markdown", action="store_true", help="print the bench/RESULTS.md section")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    rng = numpy.random.default_rng(args.seed)
    rows: list[dict[str, Any]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows.extend(bench_batch(n, args.repeat, rng))
    seconds = time.perf_counter() - start
    info = machine()
    if args.json:
        print(json.dumps({"machine": info, "seconds": seconds, "results": rows, "targets": target_lines(rows)}, indent=2))
    elif args.markdown:
        command = " ".join(["python bench/bench_table.py", *(sys.argv[1:] if argv is None else argv)])
        print(markdown(rows, info, seconds, command))
    else:
        print(f"{info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, NumPy {info['numpy']}")
        print(text_table(rows))
        for line in target_lines(rows):
            print(line)
        print(f"total {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
