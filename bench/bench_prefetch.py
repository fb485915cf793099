# SPDX-License-Identifier: Apache-2.0
"""Benchmark: replay hit ratios for the synthetic suite, and the model's inference cost.

Run from the repository root::

    python bench/bench_prefetch.py            # tables on stdout
    python bench/bench_prefetch.py --markdown # a section for bench/RESULTS.md

Workloads (seeded, ``--requests`` each): Zipf 0.8 / 1.0 / 1.2, a sequential scan, a loop
larger than the cache, a Markov chain (each key has one likely successor), a mixture
(Zipf plus scans), and a phase change (one Markov chain, then another). Every workload is
replayed through the real cache code (``cache_core.replay``) at cache sizes of 1 %, 5 %
and 10 % of its distinct keys, for every policy × prefetch combination. Hit ratios count
demand hits, including hits on prefetched entries; prefetches are not requests.

The inference rows measure the model's own work per access (vocabulary, observe,
predict after every access), in thread CPU time, for accesses one at a time (replay,
single GETs) and in batches of 16 to 4,096 (the prefetch worker's joined reads, pipelined
MGETs), against the cache's own GET of the same keys as the baseline.
``--inference-only`` runs just those rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_machine import machine

from cache_core.cache import Cache
from cache_core.models import MarkovModel, MixtureModel, Vocabulary
from cache_core.prefetch import PrefetchSettings
from cache_core.replay import replay

POLICIES = ("clock", "lru", "s3fifo")
PREFETCH = ("none", "stride", "markov", "model")
SIZES = (0.01, 0.05, 0.10)
KEYS = 10_000
STRUCTURED = ("sequential", "loop", "markov", "mixture", "phase_change")
UNSTRUCTURED = ("zipf0.8", "zipf1.0", "zipf1.2")
# Accesses per model call in the inference rows: one at a time, then batches as the
# prefetch worker sees them (joined reads, pipelined MGETs).
INFERENCE_BATCHES = (1, 16, 64, 256, 1000, 4096)
# Keys per joined batch the prefetch worker predicts after (PrefetchSettings.predict_last).
PREDICT_LAST = PrefetchSettings().predict_last


def zipf(rng: numpy.random.Generator, n: int, s: float, keys: int = KEYS, offset: int = 0) -> list[int]:
    p = numpy.arange(1, keys + 1, dtype=numpy.float64) ** -s
    return (rng.choice(keys, size=n, p=p / p.sum()) + offset).tolist()


def chain(rng: numpy.random.Generator, n: int, states: int = KEYS, stay: float = 0.9, offset: int = 0) -> list[int]:
    nxt = rng.permutation(states)
    r, jumps = rng.random(n), rng.integers(0, states, n)
    out, cur = [], 0
    for i in range(n):
        out.append(cur + offset)
        cur = int(nxt[cur]) if r[i] < stay else int(jumps[i])
    return out


def workloads(n: int, seed: int) -> dict[str, list[bytes]]:
    rng = numpy.random.default_rng(seed)
    half = n // 2
    mix: list[int] = []
    while len(mix) < n:
        mix += zipf(rng, 200, 1.0) if rng.random() < 0.5 else list(range(10**6 + len(mix), 10**6 + len(mix) + 200))
    raw = {
        "zipf0.8": zipf(rng, n, 0.8),
        "zipf1.0": zipf(rng, n, 1.0),
        "zipf1.2": zipf(rng, n, 1.2),
        "sequential": list(range(n)),
        "loop": [i % (KEYS // 2) for i in range(n)],
        "markov": chain(rng, n),
        "mixture": mix[:n],
        "phase_change": chain(rng, half) + chain(rng, n - half, offset=KEYS),
    }
    return {name: [f"blk:{x}".encode() for x in values] for name, values in raw.items()}


def run_suite(n: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for name, keys in workloads(n, seed).items():
        distinct = len(set(keys))
        for share in SIZES:
            entries = max(1, int(distinct * share))
            for policy in POLICIES:
                for mode in PREFETCH:
                    r = replay(keys, entries, policy=policy, prefetch=mode)
                    rows.append({"workload": name, "size": share, "entries": entries, **r})
                    print(f"  {name} {share:.0%} {policy} {mode}: {r['hit_ratio']:.3f}", file=sys.stderr, flush=True)
    return rows


def array_module(backend: str) -> Any:
    """NumPy, or CuPy for ``--backend cupy`` (the GPU measurement; needs a GPU)."""
    if backend == "numpy":
        return numpy
    import cupy

    return cupy


def inference_cost(n: int, backend: str = "numpy", tail: int = PREDICT_LAST) -> list[dict[str, Any]]:
    """Per batch size: the model's work per access, predicting after every access of the
    batch (``every``) and after its last ``tail`` accesses, as the prefetch worker does.

    On NumPy the cost is thread CPU time; on CuPy wall time with the device synchronised
    at the end of each pass (the predictions come back to the host on every call anyway).
    """
    xp = array_module(backend)
    clock = time.thread_time if xp is numpy else time.perf_counter
    rng = numpy.random.default_rng(1)
    keys = [f"blk:{x}".encode() for x in chain(rng, n)]
    out = []
    cache = Cache(numpy, max_keys=KEYS * 2, max_memory_bytes=64 << 20)
    for k in keys[:KEYS]:
        cache.set(k, b"v" * 64)
    started = time.thread_time()
    for k in keys:
        cache.get(k)
    get_cost = (time.thread_time() - started) / n
    makers = (("markov", lambda v: MarkovModel(v.capacity, xp=xp)), ("model", lambda v: MixtureModel(v, v.capacity, xp=xp)))
    for label, make in makers:
        for batch in INFERENCE_BATCHES:
            cost = {}
            for pattern in ("every", "tail"):
                vocab = Vocabulary(4 * KEYS)
                model = make(vocab)
                started = clock()
                for i in range(0, n, batch):
                    ids = vocab.encode_many(keys[i : i + batch])
                    model.observe(ids)
                    if batch == 1:
                        model.predict_one(int(ids[0]), 2)
                    else:
                        model.predict(ids if pattern == "every" else ids[-tail:], 2)
                if xp is not numpy:
                    xp.cuda.Device().synchronize()
                cost[pattern] = (clock() - started) / n
            out.append({"model": label, "batch": batch, "seconds_per_access": cost["every"], "tail_seconds_per_access": cost["tail"], "get_seconds": get_cost, "backend": backend})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--inference-only", action="store_true", help="only the inference cost rows")
    parser.add_argument("--backend", choices=("numpy", "cupy"), default="numpy", help="array module of the models in the inference rows (cupy: on a GPU)")
    args = parser.parse_args()
    costs = inference_cost(min(args.requests, 20_000), args.backend)
    if args.inference_only:
        print(f"Machine: {machine()}; backend {args.backend}; {min(args.requests, 20_000)} accesses of a Markov chain over {KEYS} keys.\n")
        print_costs(costs)
        return
    rows = run_suite(args.requests, args.seed)
    print("## Prefetching: replay of the synthetic suite (bench/bench_prefetch.py)\n")
    print(f"Machine: {machine()}; {args.requests} requests per workload, seed {args.seed}, {KEYS} keys per generator.\n")
    print("Hit ratio (%) by workload, cache size (share of distinct keys) and policy; columns: prefetch none / stride / markov / model (precision of model in brackets).\n")
    print("| workload | size | policy | none | stride | markov | model |")
    print("|---|---|---|---|---|---|---|")
    index = {(r["workload"], r["size"], r["policy"], r["prefetch"]): r for r in rows}
    for name in (*UNSTRUCTURED, *STRUCTURED):
        for share in SIZES:
            for policy in POLICIES:
                cells = [index[(name, share, policy, m)] for m in PREFETCH]
                text = [f"{c['hit_ratio'] * 100:.1f}" for c in cells]
                prec = cells[3]["prefetch_precision"]
                text[3] += f" ({prec * 100:.0f} %)" if prec is not None else " (—)"
                print(f"| {name} | {share:.0%} | {policy} | " + " | ".join(text) + " |")
    print()
    struct = [(index[(w, s, p, "model")]["hit_ratio"] - index[(w, s, p, "markov")]["hit_ratio"]) for w in STRUCTURED for s in SIZES for p in POLICIES]
    loss = [(index[(w, s, p, "none")]["hit_ratio"] - index[(w, s, p, "model")]["hit_ratio"]) for w in UNSTRUCTURED for s in SIZES for p in POLICIES]
    print(f"- model − markov on structured workloads: mean {statistics.mean(struct) * 100:+.2f} pp, worst {min(struct) * 100:+.2f} pp (target: ≥ 0 everywhere, ≥ +2 pp on average)")
    print(f"- none − model on workloads without structure (Zipf): worst loss {max(loss) * 100:.2f} pp (target ≤ 0.5 pp)")
    seq = [index[("sequential", s, p, m)]["hit_ratio"] for s in SIZES for p in POLICIES for m in ("stride", "model")]
    print(f"- sequential scan with stride or model: lowest hit ratio {min(seq) * 100:.1f} % (target ≥ 95 %)\n")
    print_costs(costs)


def print_costs(costs: list[dict[str, Any]]) -> None:
    print(f"| inference per access | batch | µs, predicting after every access | µs, predicting after the last {PREDICT_LAST} (the prefetch worker) | cache GET µs (baseline) | ratio (worker) |")
    print("|---|---|---|---|---|---|")
    for c in costs:
        every, tail, get = c["seconds_per_access"] * 1e6, c["tail_seconds_per_access"] * 1e6, c["get_seconds"] * 1e6
        print(f"| {c['model']} | {c['batch']} | {every:.2f} | {tail:.2f} | {get:.2f} | {tail / get:.2f} |")


if __name__ == "__main__":
    main()
