# SPDX-License-Identifier: Apache-2.0
"""Vectorised features of one window of cache accesses, the input of the drift detectors.

Why these features: a prefetch model learns *which* keys come back and *when*; a workload
change shows up as a change in reuse distances (how many distinct keys pass between two
accesses to a key), in the popularity shape (Zipf exponent), in *which* keys are hot
(hashed key buckets, hot-set overlap), in the read/write mix and in value sizes. Comparing
these distributions between a reference window and the current one is what the detectors in
``plugins/drift/`` do; this module only measures.

Everything is NumPy over whole arrays, never a Python loop per access:

* **Reuse distance** (LRU stack distance) of access ``i`` to a key last seen at ``p``: the
  number of distinct keys accessed in ``(p, i)``. It equals ``(i - p - 1) - #{j < i :
  prev[j] > p}`` (a ``j`` in the gap whose own previous access is also in the gap is a
  repeat, and every such ``j`` lies in the gap because ``prev[j] < j``). The count is an
  offline dominance count, done by divide and conquer over index blocks: at each of the
  ``log2 n`` levels, every right half-block counts, with one ``searchsorted`` over the
  sorted left halves, how many ``prev`` values exceed its own. Exact, ``O(n log² n)``
  NumPy work; windows above :data:`REUSE_SAMPLE_MAX` accesses use their most recent
  :data:`REUSE_SAMPLE_MAX` accesses (a suffix, not a random sample, because a random
  subset of accesses would cut reuse chains apart).
* **Inter-reference gap**: ``i - p`` in accesses (no distinct-key correction).
* **Sequentiality**: fingerprints carry no order, so a stride cannot be seen; the feature
  on fingerprints is the share of *immediate repeats* (``fp[i] == fp[i - 1]``).

Empty or tiny windows never raise and never give NaN: scalars fall back to 0.0 (defined
in each function) and distributions are simply empty arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy

from cache_core.cache import OP_DEL, OP_GET, OP_PREFETCH, OP_SET, RES_HIT, RES_MISS, RES_PREFETCH_HIT

# Most recent accesses used for reuse distances (see module docstring).
REUSE_SAMPLE_MAX = 200_000
# Key fingerprints are spread over this many buckets for the chi-square on the working set.
KEY_BUCKETS = 64
# Size of the hot set (most frequent keys) compared between windows.
HOT_SET_SIZE = 100
# "top-k share": share of accesses that go to the TOP_K most frequent keys.
TOP_K = 10
# Contiguous blocks a window is cut into for batch means.
BATCH_BLOCKS = 10
# Fibonacci hashing constant: the bucket is the top bits of fp * this (mod 2**64).
_BUCKET_MIX = numpy.uint64(0x9E3779B97F4A7C15)
READ_OPS = (OP_GET,)
WRITE_OPS = (OP_SET, OP_DEL)
LOOKUP_RESULTS = (RES_HIT, RES_MISS, RES_PREFETCH_HIT)
HIT_RESULTS = (RES_HIT, RES_PREFETCH_HIT)


def _u64(values: object) -> numpy.ndarray:
    arr = numpy.asarray(values)
    if arr.size == 0:
        return numpy.zeros(0, dtype=numpy.uint64)
    return arr.astype(numpy.uint64, copy=False).ravel()


def _finite(values: object | None) -> numpy.ndarray:
    """``values`` as float64 with NaN/inf dropped; empty when None."""
    if values is None:
        return numpy.zeros(0, dtype=numpy.float64)
    arr = numpy.asarray(values, dtype=numpy.float64).ravel()
    return arr[numpy.isfinite(arr)]


def previous_occurrence(fp: numpy.ndarray) -> numpy.ndarray:
    """For each access, the index of the previous access to the same key, or -1."""
    fp = _u64(fp)
    n = fp.shape[0]
    prev = numpy.full(n, -1, dtype=numpy.int64)
    if n < 2:
        return prev
    order = numpy.argsort(fp, kind="stable")
    sorted_fp = fp[order]
    same = sorted_fp[1:] == sorted_fp[:-1]
    prev[order[1:][same]] = order[:-1][same]
    return prev


def _count_prev_greater(prev: numpy.ndarray) -> numpy.ndarray:
    """``out[i] = #{j < i : prev[j] > prev[i]}`` by vectorised divide and conquer."""
    n = prev.shape[0]
    counts = numpy.zeros(n, dtype=numpy.int64)
    if n < 2:
        return counts
    idx = numpy.arange(n, dtype=numpy.int64)
    vals = prev.astype(numpy.int64) + 1  # 0..n
    span = numpy.int64(n + 2)  # keys of different blocks never interleave
    half = 1
    while half < n:
        block = idx // (2 * half)
        left = (idx % (2 * half)) < half
        keys = numpy.sort(block[left] * span + vals[left])
        right = ~left
        qb = block[right]
        upper = numpy.searchsorted(keys, (qb + 1) * span, side="left")
        at_most = numpy.searchsorted(keys, qb * span + vals[right], side="right")
        counts[right] += upper - at_most
        half *= 2
    return counts


def reuse_distances(fp: object, max_events: int = REUSE_SAMPLE_MAX) -> numpy.ndarray:
    """LRU stack distance of every re-access in (the last ``max_events`` of) the window."""
    keys = _u64(fp)
    if keys.shape[0] > max_events:
        keys = keys[-max_events:]
    prev = previous_occurrence(keys)
    reuse = prev >= 0
    if not reuse.any():
        return numpy.zeros(0, dtype=numpy.float64)
    repeats_inside = _count_prev_greater(prev)
    idx = numpy.arange(keys.shape[0], dtype=numpy.int64)
    dist = (idx - prev - 1) - repeats_inside
    return dist[reuse].astype(numpy.float64)


def inter_reference_gaps(fp: object) -> numpy.ndarray:
    """Accesses between two accesses to the same key (``i - prev[i]``), re-accesses only."""
    keys = _u64(fp)
    prev = previous_occurrence(keys)
    reuse = prev >= 0
    idx = numpy.arange(keys.shape[0], dtype=numpy.int64)
    return (idx - prev)[reuse].astype(numpy.float64)


def key_buckets(fp: object, buckets: int = KEY_BUCKETS) -> numpy.ndarray:
    """Histogram of accesses over ``buckets`` hashed key buckets (a power of two)."""
    keys = _u64(fp)
    bits = max(int(buckets).bit_length() - 1, 0)
    if keys.shape[0] == 0 or bits == 0:
        return numpy.zeros(max(int(buckets), 1), dtype=numpy.int64)
    with numpy.errstate(over="ignore"):
        mixed = keys * _BUCKET_MIX
    bucket = (mixed >> numpy.uint64(64 - bits)).astype(numpy.int64)
    return numpy.bincount(bucket, minlength=1 << bits).astype(numpy.int64)


def batch_means(indicator: numpy.ndarray, blocks: int = BATCH_BLOCKS) -> numpy.ndarray:
    """Means of ``blocks`` contiguous, nearly equal blocks (fewer when the window is shorter).

    Why: consecutive accesses are not independent (runs, scans, loops), so the variance of
    a window's share is estimated from the spread of block means (the batch-means method
    for autocorrelated series), not from ``p(1-p)/n``.
    """
    x = numpy.asarray(indicator, dtype=numpy.float64)
    k = min(blocks, x.shape[0])
    if k == 0:
        return numpy.zeros(0, dtype=numpy.float64)
    return numpy.array([part.mean() for part in numpy.array_split(x, k)], dtype=numpy.float64)


@dataclass(frozen=True)
class PopularityShape:
    """Shape of the key-popularity distribution of a window."""

    rank_frequency_slope: float  # slope of log(count) on log(rank); about -s for Zipf(s)
    normalised_entropy: float  # Shannon entropy / log(distinct keys), in [0, 1]
    top_k_share: float  # share of accesses to the TOP_K most frequent keys
    distinct_keys: int


def popularity_shape(fp: object, top_k: int = TOP_K) -> PopularityShape:
    """Rank-frequency slope (least squares on log-log), normalised entropy, top-k share.

    Defined values for degenerate windows: no access → all 0; one distinct key → slope 0,
    entropy 0, top-k share 1.
    """
    keys = _u64(fp)
    n = keys.shape[0]
    if n == 0:
        return PopularityShape(0.0, 0.0, 0.0, 0)
    _, counts = numpy.unique(keys, return_counts=True)
    counts = numpy.sort(counts)[::-1].astype(numpy.float64)
    distinct = counts.shape[0]
    top = float(counts[:top_k].sum() / n)
    if distinct < 2:
        return PopularityShape(0.0, 0.0, top, distinct)
    p = counts / n
    entropy = float(-(p * numpy.log(p)).sum() / numpy.log(distinct))
    log_rank = numpy.log(numpy.arange(1, distinct + 1, dtype=numpy.float64))
    log_count = numpy.log(counts)
    centred = log_rank - log_rank.mean()
    slope = float((centred * (log_count - log_count.mean())).sum() / (centred * centred).sum())
    return PopularityShape(slope, min(max(entropy, 0.0), 1.0), top, distinct)


def hot_set(fp: object, size: int = HOT_SET_SIZE) -> numpy.ndarray:
    """The ``size`` most frequently accessed fingerprints (ties broken by fingerprint)."""
    keys = _u64(fp)
    if keys.shape[0] == 0:
        return numpy.zeros(0, dtype=numpy.uint64)
    uniq, counts = numpy.unique(keys, return_counts=True)
    order = numpy.lexsort((uniq, -counts))
    return uniq[order[:size]]


def immediate_repeat_share(fp: object) -> float:
    """Share of accesses to the same key as the access just before (0 below two accesses)."""
    keys = _u64(fp)
    if keys.shape[0] < 2:
        return 0.0
    return float(numpy.count_nonzero(keys[1:] == keys[:-1]) / (keys.shape[0] - 1))


@dataclass
class WindowFeatures:
    """Everything the detectors compare, measured on one window.

    ``numeric``: samples of continuous distributions (finite values only).
    ``categorical``: counts per category, same length on every window.
    ``scalars``: one number per window (shown, and used by the policy).
    ``blocks``: per-block means of a per-access indicator (:func:`batch_means`).
    ``effective``: effective sample size of a numeric feature whose values cluster (reuse
    features: the number of distinct re-accessed keys, since all reuses of one key share
    its popularity); p-value tests use it instead of the raw count.
    """

    events: int
    effective: dict[str, int] = field(default_factory=dict)
    numeric: dict[str, numpy.ndarray] = field(default_factory=dict)
    categorical: dict[str, numpy.ndarray] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    hot: numpy.ndarray = field(default_factory=lambda: numpy.zeros(0, dtype=numpy.uint64))
    hits: numpy.ndarray = field(default_factory=lambda: numpy.zeros(0, dtype=numpy.float64))
    blocks: dict[str, numpy.ndarray] = field(default_factory=dict)


def _share(mask: numpy.ndarray, of: numpy.ndarray) -> float:
    total = int(numpy.count_nonzero(of))
    return float(numpy.count_nonzero(mask & of) / total) if total else 0.0


def window_features(
    fp: object,
    op: object | None = None,
    result: object | None = None,
    size: object | None = None,
    ts_ns: object | None = None,
    *,
    buckets: int = KEY_BUCKETS,
    hot_size: int = HOT_SET_SIZE,
    reuse_max: int = REUSE_SAMPLE_MAX,
) -> WindowFeatures:
    """Measure one window. Optional columns must be as long as ``fp`` (else ignored)."""
    keys = _u64(fp)
    n = keys.shape[0]

    def column(values: object | None) -> numpy.ndarray | None:
        if values is None:
            return None
        arr = numpy.asarray(values).ravel()
        return arr if arr.shape[0] == n else None

    op_arr, res_arr, size_arr, ts_arr = column(op), column(result), column(size), column(ts_ns)
    feats = WindowFeatures(events=n)
    feats.numeric["reuse_distance"] = reuse_distances(keys, reuse_max)
    feats.numeric["inter_reference_gap"] = inter_reference_gaps(keys)
    prev = previous_occurrence(keys)
    reused_keys = int(numpy.unique(keys[prev >= 0]).shape[0])
    # Share of first accesses (cold in this window): scans and new keys raise it. Kept as
    # per-block means because the indicator is autocorrelated (see batch_means).
    feats.blocks["first_access_share"] = batch_means((prev < 0).astype(numpy.float64))
    feats.effective["reuse_distance"] = feats.effective["inter_reference_gap"] = reused_keys
    feats.categorical["key_bucket"] = key_buckets(keys, buckets)
    shape = popularity_shape(keys)
    feats.scalars.update(
        rank_frequency_slope=shape.rank_frequency_slope,
        normalised_entropy=shape.normalised_entropy,
        top_k_share=shape.top_k_share,
        distinct_key_ratio=float(shape.distinct_keys / n) if n else 0.0,
        immediate_repeat_share=immediate_repeat_share(keys),
    )
    feats.hot = hot_set(keys, hot_size)
    if op_arr is not None:
        ops = op_arr.astype(numpy.int64, copy=False)
        # Fixed categories (read, write, other) so both windows have the same length.
        reads = numpy.isin(ops, READ_OPS)
        writes = numpy.isin(ops, WRITE_OPS)
        feats.categorical["op_mix"] = numpy.array(
            [numpy.count_nonzero(reads), numpy.count_nonzero(writes), n - numpy.count_nonzero(reads | writes)], dtype=numpy.int64
        )
        feats.scalars["read_share"] = float(numpy.count_nonzero(reads) / n) if n else 0.0
    if res_arr is not None:
        res = res_arr.astype(numpy.int64, copy=False)
        lookups = numpy.isin(res, LOOKUP_RESULTS)
        if op_arr is not None:
            lookups &= numpy.isin(op_arr.astype(numpy.int64, copy=False), READ_OPS)
        hit = numpy.isin(res, HIT_RESULTS)
        feats.hits = hit[lookups].astype(numpy.float64)
        feats.scalars["hit_ratio"] = _share(hit, lookups)
        feats.scalars["prefetch_hit_share"] = _share(res == RES_PREFETCH_HIT, lookups)
        if op_arr is not None:
            # Prefetch precision of the window: first hits on prefetched entries per
            # prefetched insert (the cache logs each prefetch as an OP_PREFETCH event).
            inserted = int(numpy.count_nonzero(op_arr.astype(numpy.int64, copy=False) == OP_PREFETCH))
            if inserted:
                used = int(numpy.count_nonzero((res == RES_PREFETCH_HIT) & lookups))
                feats.scalars["prefetch_precision"] = min(1.0, used / inserted)
    if size_arr is not None:
        sizes = _finite(size_arr)
        feats.numeric["value_size"] = sizes[sizes > 0]
    if ts_arr is not None and n >= 2:
        ts = _finite(ts_arr)
        gaps = numpy.diff(numpy.sort(ts)) if ts.shape[0] >= 2 else numpy.zeros(0)
        feats.numeric["inter_arrival_ns"] = gaps
    return feats


def features_from_events(events: numpy.ndarray, **kwargs: int) -> WindowFeatures:
    """:func:`window_features` of a structured array of ``cache_core.access_log.EVENT_DTYPE``."""
    names = events.dtype.names or ()
    return window_features(
        events["fp"],
        events["op"] if "op" in names else None,
        events["result"] if "result" in names else None,
        events["size"] if "size" in names else None,
        events["ts_ns"] if "ts_ns" in names else None,
        **kwargs,
    )
