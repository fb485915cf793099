# SPDX-License-Identifier: Apache-2.0
"""Access-window features: exact against brute force, defined on degenerate windows."""

from __future__ import annotations

import math

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.mlops import features as F


def _brute_reuse(keys: list[int]) -> list[float]:
    out: list[float] = []
    last: dict[int, int] = {}
    for i, k in enumerate(keys):
        if k in last:
            out.append(float(len(set(keys[last[k] + 1 : i]))))
        last[k] = i
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=12), max_size=120))
def test_reuse_distance_matches_brute_force(keys: list[int]) -> None:
    got = F.reuse_distances(numpy.array(keys, dtype=numpy.uint64))
    assert got.tolist() == _brute_reuse(keys)


def test_reuse_distance_of_a_loop_is_loop_length_minus_one() -> None:
    keys = numpy.tile(numpy.arange(50, dtype=numpy.uint64), 4)
    d = F.reuse_distances(keys)
    assert d.shape[0] == 150 and set(d.tolist()) == {49.0}
    assert F.inter_reference_gaps(keys).tolist() == [50.0] * 150


def test_reuse_distance_uses_the_most_recent_suffix() -> None:
    keys = numpy.array([1, 1, 2, 3, 2], dtype=numpy.uint64)
    assert F.reuse_distances(keys, max_events=3).tolist() == [1.0]


def test_popularity_shape_of_zipf_has_slope_near_minus_s() -> None:
    rng = numpy.random.default_rng(1)
    ranks = numpy.arange(1, 1001)
    p = ranks**-1.0
    keys = rng.choice(1000, size=200_000, p=p / p.sum()).astype(numpy.uint64)
    shape = F.popularity_shape(keys)
    assert -1.3 < shape.rank_frequency_slope < -0.7
    assert 0.0 < shape.normalised_entropy < 1.0
    uniform = F.popularity_shape(numpy.arange(1000, dtype=numpy.uint64))
    assert uniform.normalised_entropy == pytest.approx(1.0)
    assert uniform.rank_frequency_slope == pytest.approx(0.0)
    assert uniform.top_k_share == pytest.approx(0.01)


def test_hot_set_and_key_buckets() -> None:
    a = numpy.repeat(numpy.arange(20, dtype=numpy.uint64), numpy.arange(20, 0, -1))
    assert F.hot_set(a, 3).tolist() == [0, 1, 2]
    hist = F.key_buckets(numpy.arange(10_000, dtype=numpy.uint64), 64)
    assert hist.shape == (64,) and hist.sum() == 10_000 and hist.min() > 100


def test_sequentiality_features() -> None:
    assert F.immediate_repeat_share(numpy.array([1, 1, 2, 2], dtype=numpy.uint64)) == pytest.approx(2 / 3)


def test_window_features_mix_hits_sizes_and_times() -> None:
    fp = numpy.array([1, 2, 1, 3, 1], dtype=numpy.uint64)
    op = numpy.array([F.OP_GET, F.OP_SET, F.OP_GET, F.OP_GET, F.OP_GET])
    res = numpy.array([F.RES_MISS, 4, F.RES_HIT, F.RES_PREFETCH_HIT, F.RES_HIT])
    size = numpy.array([0, 10, 10, numpy.nan, 30.0])
    ts = numpy.array([0, 5, 5, 20, 21])
    w = F.window_features(fp, op, res, size, ts)
    assert w.scalars["read_share"] == pytest.approx(0.8)
    assert w.scalars["hit_ratio"] == pytest.approx(0.75)
    assert w.scalars["prefetch_hit_share"] == pytest.approx(0.25)
    assert w.hits.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert w.numeric["value_size"].tolist() == [10.0, 10.0, 30.0]
    assert w.numeric["inter_arrival_ns"].tolist() == [5.0, 0.0, 15.0, 1.0]
    assert w.categorical["op_mix"].tolist() == [4, 1, 0]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_empty_and_tiny_windows_are_defined(n: int) -> None:
    w = F.window_features(numpy.zeros(n, dtype=numpy.uint64), numpy.ones(n), numpy.zeros(n), numpy.zeros(n), numpy.zeros(n))
    assert w.events == n
    assert all(math.isfinite(v) for v in w.scalars.values())
    assert all(numpy.isfinite(a).all() for a in w.numeric.values())


def test_prefetch_precision_is_measured_from_the_cache_s_own_events() -> None:
    from cache_core.access_log import AccessLog
    from cache_core.cache import Cache

    ring = AccessLog(1 << 10)
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 20, access_hook=ring.hook)
    cache.mset([(b"p1", b"x"), (b"p2", b"y"), (b"p3", b"z"), (b"p4", b"w")], prefetched=True)
    for key in (b"p1", b"p2", b"p1", b"nope"):
        cache.get(key)
    feats = F.features_from_events(ring.read(0).events)
    assert feats.scalars["prefetch_precision"] == pytest.approx(2 / 4)  # p1 and p2 used, once each
    assert feats.scalars["hit_ratio"] == pytest.approx(3 / 4)
