# SPDX-License-Identifier: Apache-2.0
"""Benchmark: what the federated (key-free) part of the prefetch model is worth to a cold host.

Run from the repository root (needs ``pip install -e '.[federated]'``)::

    python bench/bench_federated.py            # a table on stdout
    python bench/bench_federated.py --markdown # a section for bench/RESULTS.md

Three hosts run the structured application of ``bench/federated_workload.py`` over their
own entity IDs and learn template transitions (cache_core.models.template) from
``--train`` reads each; their shared rates are averaged by Flower's FedAvg aggregation
(weighted by examples), after clipping and Gaussian noise when a noise level is given. A
fourth host, cold, then replays its first ``--requests`` reads (its own IDs, never seen
by the others) through the real cache and prefetcher, with:

* ``model``: today's mixture (stride and successor experts only);
* ``federated`` kind, from nothing: the mixture with the template expert learning on this
  host alone (the same agent, without the fleet);
* ``federated`` kind with the fleet's rates: the same, starting from the fleet's rates;
* the federated rows again with noise multipliers ``--noise`` (and the ε each host spent
  over ``--rounds`` rounds at δ = 1e-5, from the dp-accounting RDP accountant);
* ``federated`` kind with the fleet's rates **and the fleet's expert weights**: each
  training host also serves its first ``--weights-train`` reads through a mixture with the
  template expert (learning on its own) and shares the mixture's key-free weights (each
  expert's decayed hits and proposals, MixtureModel.expert_weights); the cold host's mixture
  starts from their FedAvg instead of the prior.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_machine import machine
from federated_workload import ROUTES, host_trace
from flwr.server.strategy.aggregate import aggregate

from agent.federated.privacy import PrivacyAccountant, PrivacySettings, privatize
from cache_core.models import MixtureModel, Vocabulary
from cache_core.models.template import TemplateScorer
from cache_core.prefetch import Prefetcher
from cache_core.replay import MODEL_SETTINGS, MemoryOrigin, replay_cache, replay_figures

TRAIN_HOSTS = 3
COLD_HOST = TRAIN_HOSTS
CACHE_SHARE = 0.02
# The first reads of the cold host, reported apart: where a model that starts knowing differs most.
EARLY = 5_000
# Vocabulary room per distinct key read: the template expert names keys before they are read.
VOCABULARY_PER_KEY = 16


def fleet_rates(train: int, seed: int, noise: float, clip_norm: float, rounds: int, n_routes: int) -> tuple[list[numpy.ndarray], float | None]:
    """FedAvg over the training hosts' rates, ``rounds`` rounds (each host learning on), and ε."""
    settings = PrivacySettings(clip_norm=clip_norm if noise > 0 else None, noise_multiplier=noise)
    rng = numpy.random.default_rng(seed + 1000)
    scorers = [TemplateScorer() for _ in range(TRAIN_HOSTS)]
    traces = [host_trace(h, train, seed + h, n_routes) for h in range(TRAIN_HOSTS)]
    global_params = scorers[0].rates()
    global_params = [numpy.zeros_like(p) for p in global_params]
    accountant = PrivacyAccountant(settings)
    per_round = train // rounds
    for r in range(rounds):
        results = []
        for scorer, trace in zip(scorers, traces):
            scorer.observe_keys(trace[r * per_round : (r + 1) * per_round])
            sent, _ = privatize(scorer.rates(), global_params, settings, rng)
            results.append((sent, scorer.examples))
        global_params = aggregate(results)
        accountant.spend_round()
    return global_params, accountant.epsilon()


def fleet_weights(train: int, seed: int, n_routes: int) -> list[numpy.ndarray]:
    """FedAvg (weighted by reads) of the training hosts' mixture weights after ``train`` reads."""
    results = []
    for h in range(TRAIN_HOSTS):
        trace = host_trace(h, train, seed + h, n_routes)
        *_, model = replay_cold(trace, TemplateScorer())
        results.append((model.expert_weights(), len(trace)))
    return aggregate(results)


def replay_cold(keys: list[bytes], template: TemplateScorer | None, weights: list[numpy.ndarray] | None = None) -> tuple[float, float, float, MixtureModel]:
    """Hit ratio over the first ``EARLY`` reads and over all of ``keys``, the model's
    inference time per access (the prefetcher's own measure), and the model; the mixture
    starts from ``weights`` when given."""
    origin = MemoryOrigin()
    cache = replay_cache(max(16, int(CACHE_SHARE * len(set(keys)))), "lru", origin)
    vocab = Vocabulary(VOCABULARY_PER_KEY * len(set(keys)) + 1024)
    model = MixtureModel(vocab, vocab.capacity, template=template)
    if weights is not None:
        model.set_expert_weights(weights)
    prefetcher = Prefetcher(cache, origin, model, vocab, MODEL_SETTINGS, sync=True)
    early = 0.0
    for i, key in enumerate(keys, 1):
        cache.get(key)
        prefetcher.observe((key,))
        if i == EARLY:
            early = float(replay_figures(cache.stats, i)["hit_ratio"])
    return early, float(replay_figures(cache.stats, len(keys))["hit_ratio"]), float(prefetcher.status()["inference_seconds_per_access"]), model


def run(
    requests: int, train: int, seed: int, noise_levels: list[float], clip_norm: float, rounds: int, n_routes: int, weights_train: int
) -> list[tuple[str, tuple[float, float, float], str]]:
    cold = host_trace(COLD_HOST, requests, seed + COLD_HOST, n_routes)
    rows = [("`model`: mixture, no template expert", replay_cold(cold, None)[:3], "")]
    rows.append(("`federated` kind, from nothing", replay_cold(cold, TemplateScorer())[:3], ""))
    for noise in [0.0, *noise_levels]:
        shared, epsilon = fleet_rates(train, seed, noise, clip_norm, rounds, n_routes)
        scorer = TemplateScorer()
        scorer.set_shared(shared)
        label = "`federated` kind, with the fleet's rates" + (f", noise {noise:g} × clip {clip_norm:g}" if noise else ", no noise")
        rows.append((label, replay_cold(cold, scorer)[:3], "∞ (no noise)" if epsilon is None else f"{epsilon:.3g}"))
    if weights_train > 0:
        shared, _ = fleet_rates(train, seed, 0.0, clip_norm, rounds, n_routes)
        weights = fleet_weights(weights_train, seed, n_routes)
        scorer = TemplateScorer()
        scorer.set_shared(shared)
        rows.append(("`federated` kind, with the fleet's rates and expert weights, no noise", replay_cold(cold, scorer, weights)[:3], "∞ (no noise)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000, help="reads the cold host replays")
    parser.add_argument("--train", type=int, default=60_000, help="reads each training host learns from")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clip", type=float, default=0.05, help="L2 clip norm of a host's update")
    parser.add_argument("--noise", type=float, nargs="*", default=[0.01, 0.1], help="noise multipliers of the DP rows")
    parser.add_argument("--routes", type=int, default=ROUTES, help="request types of the application (more: a longer tail of templates)")
    parser.add_argument("--weights-train", type=int, default=20_000, help="reads each training host serves to learn its mixture's expert weights (0: no such row)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = run(args.requests, args.train, args.seed, args.noise, args.clip, args.rounds, args.routes, args.weights_train)
    early_base, base, _ = rows[1][1]
    if args.markdown:
        print(f"Machine: {machine()}\n")
        print(f"{args.routes} request types; cold host, first {args.requests:,} reads; {TRAIN_HOSTS} hosts × {args.train:,} reads, {args.rounds} rounds; LRU cache of {CACHE_SHARE:.0%} of the distinct keys.\n")
        print(f"| model | hit ratio, first {EARLY:,} | gain | hit ratio, first {args.requests:,} | gain over from nothing | ε per host (δ = 1e-5) | inference µs/access |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, (early, hit, cost), eps in rows:
            print(f"| {label} | {early:.4f} | {early - early_base:+.4f} | {hit:.4f} | {hit - base:+.4f} | {eps} | {cost * 1e6:.0f} |")
    else:
        for label, (early, hit, cost), eps in rows:
            print(f"{label:60s} {early:.4f} {early - early_base:+.4f} {hit:.4f} {hit - base:+.4f} {eps} {cost * 1e6:.0f}µs")


if __name__ == "__main__":
    main()
