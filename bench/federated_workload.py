# SPDX-License-Identifier: Apache-2.0
"""The structured workload of the federated bench and tests: one application, many hosts.

The application has ``ROUTES`` request types; a request of a type reads a fixed chain of
``CHAIN`` key templates (``user:{}:profile``, ``cart:{}:items``...) for one entity ID.
Types are drawn Zipf-distributed (a long tail of rare ones), entity IDs too, and
``SESSIONS`` requests are in flight at once, their reads interleaved. Every host runs the
same application over its own entity IDs (``host`` picks a disjoint range): the same
structure over different key values.
"""

from __future__ import annotations

import numpy

ROUTES = 120
CHAIN = 3
SESSIONS = 4
ROUTE_SKEW = 1.1
ID_SKEW = 0.9
IDS_PER_HOST = 200_000
HOST_ID_STRIDE = 10_000_000
APP_SEED = 7
ENTITIES = ("user", "cart", "order", "product", "session", "account", "invoice", "ticket", "device", "shipment", "review", "coupon")
FIELDS = ("profile", "orders", "prefs", "avatar", "history", "items", "status", "summary", "owner", "lines", "totals", "flags", "notes", "audit", "links", "tags")


def routes(count: int = ROUTES, seed: int = APP_SEED) -> list[list[str]]:
    """The application's ``count`` request types: each a chain of ``CHAIN`` distinct templates."""
    rng = numpy.random.default_rng(seed)
    templates = [f"{e}:{{}}:{f}" for e in ENTITIES for f in FIELDS]
    return [[templates[i] for i in rng.choice(len(templates), size=CHAIN, replace=False)] for _ in range(count)]


def _zipf_ranks(rng: numpy.random.Generator, n: int, size: int, skew: float) -> numpy.ndarray:
    weights = 1.0 / numpy.arange(1, size + 1) ** skew
    return rng.choice(size, size=n, p=weights / weights.sum())


def host_trace(host: int, requests: int, seed: int, n_routes: int = ROUTES) -> list[bytes]:
    """``requests`` reads of host ``host`` (its own entity IDs), interleaved sessions, over
    an application of ``n_routes`` request types."""
    rng = numpy.random.default_rng(seed)
    chains = routes(n_routes)
    n_requests = requests // CHAIN + SESSIONS
    kinds = _zipf_ranks(rng, n_requests, n_routes, ROUTE_SKEW)
    ids = host * HOST_ID_STRIDE + _zipf_ranks(rng, n_requests, IDS_PER_HOST, ID_SKEW)
    pending = [[t.replace("{}", str(i)) for t in chains[k]] for k, i in zip(kinds.tolist(), ids.tolist())]
    active = [pending.pop() for _ in range(SESSIONS)]
    out: list[str] = []
    picks = rng.integers(0, SESSIONS, size=requests)
    for slot in picks.tolist():
        out.append(active[slot].pop(0))
        if not active[slot]:
            active[slot] = pending.pop()
        if len(out) == requests:
            break
    return [key.encode() for key in out]
