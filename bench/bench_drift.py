# SPDX-License-Identifier: Apache-2.0
"""Benchmark: the cost of one drift check, 10k vs 10k and 100k vs 100k accesses.

Run from the repository root::

    python bench/bench_drift.py            # human-readable table
    python bench/bench_drift.py --markdown # a section for bench/RESULTS.md

Why these rows: the targets (../shared/reference/mlops_and_gpu_cache.md §7.3) are KS+PSI on
10k vs 10k in <= 5 ms and 100k vs 100k in <= 60 ms on two cores, against scipy's own
``ks_2samp`` on the same data as the yardstick. Rows:

* ``scipy ks_2samp``: scipy alone on the value-size samples (method ``auto``);
* ``KS+PSI (one feature)``: this project's KS and PSI detectors on that one feature;
* ``all detectors``: every built-in detector on precomputed window features;
* ``features (both windows)``: measuring the two windows (reuse distances included);
* ``full check``: features plus all detectors, what a periodic check costs.

Each row is the best of several repetitions (the machine is shared; the best run is the
least disturbed one). Workload: Zipf(1.0) over 100k keys, 10 % writes, 60 % hits.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy
from scipy import stats

from agent.mlops.drift import DriftSettings, run_check
from agent.mlops.features import OP_GET, OP_SET, RES_HIT, RES_MISS, WindowFeatures, window_features
from plugins.drift.adwin import AdwinDetector
from plugins.drift.batch_means import BatchMeansDetector
from plugins.drift.chi2 import Chi2Detector
from plugins.drift.distance import DistanceDetector
from plugins.drift.ks import KSDetector
from plugins.drift.psi import PSIDetector

SIZES = (10_000, 100_000)
REPEATS = 7
KEYS = 100_000
ZIPF_S = 1.0
SEED = 3
TARGETS_MS = {10_000: 5.0, 100_000: 60.0}
ALL = [KSDetector(), PSIDetector(), DistanceDetector(), Chi2Detector(), AdwinDetector(), BatchMeansDetector()]


def best_ms(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000.0


def arrays(rng: numpy.random.Generator, n: int) -> tuple[numpy.ndarray, ...]:
    p = numpy.arange(1, KEYS + 1, dtype=numpy.float64) ** -ZIPF_S
    fp = rng.choice(KEYS, size=n, p=p / p.sum()).astype(numpy.uint64) * numpy.uint64(0x9E3779B97F4A7C15)
    op = numpy.where(rng.random(n) < 0.1, OP_SET, OP_GET)
    res = numpy.where(rng.random(n) < 0.6, RES_HIT, RES_MISS)
    size = rng.lognormal(6.0, 1.0, n)
    return fp, op, res, size


def one_feature(w: WindowFeatures) -> WindowFeatures:
    out = WindowFeatures(events=w.events)
    out.numeric["value_size"] = w.numeric["value_size"]
    return out


def run() -> list[tuple[int, str, float]]:
    rng = numpy.random.default_rng(SEED)
    rows: list[tuple[int, str, float]] = []
    settings = DriftSettings()
    for n in SIZES:
        a, b = arrays(rng, n), arrays(rng, n)
        fa, fb = window_features(*a), window_features(*b)
        sa, sb = one_feature(fa), one_feature(fb)
        rows.append((n, "scipy ks_2samp", best_ms(lambda: stats.ks_2samp(a[3], b[3]))))
        rows.append((n, "KS+PSI (one feature)", best_ms(lambda: run_check([KSDetector(), PSIDetector()], sa, sb, settings))))
        rows.append((n, "all detectors", best_ms(lambda: run_check(ALL, fa, fb, settings))))
        rows.append((n, "features (both windows)", best_ms(lambda: (window_features(*a), window_features(*b)))))
        rows.append((n, "full check", best_ms(lambda: run_check(ALL, window_features(*a), window_features(*b), settings))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown section for bench/RESULTS.md")
    args = parser.parse_args()
    rows = run()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {numpy.__version__}"
    if args.markdown:
        print("## Drift check (bench/bench_drift.py)\n")
        print(f"Machine: {machine}. Best of {REPEATS}.\n")
        print("| windows | what | ms | target |")
        print("|---|---|---|---|")
        for n, what, ms in rows:
            target = f"<= {TARGETS_MS[n]:g} ms" if what == "KS+PSI (one feature)" else ""
            print(f"| {n:,} vs {n:,} | {what} | {ms:.2f} | {target} |")
        return
    print(machine)
    for n, what, ms in rows:
        print(f"{n:>7} vs {n:<7} {what:<26} {ms:9.2f} ms")


if __name__ == "__main__":
    main()
