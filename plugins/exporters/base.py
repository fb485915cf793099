# SPDX-License-Identifier: Apache-2.0
"""What the push exporters share: the vendor-neutral point model and size-bounded chunking.

A collected batch holds cumulative counters and histograms (the Prometheus model). Every
push vendor we support wants deltas over the push interval instead, so :func:`to_points`
turns the batch into :class:`Point` s: gauges as they are, counters as deltas (with
counter-reset detection, :class:`agent.sinks.DeltaTracker`), histograms as the delta of
their count, sum and buckets. Non-finite values are skipped and counted, never sent.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.api import SPECS_BY_NAME, DeltaTracker, Metric, Payload

log = logging.getLogger(__name__)


@dataclass
class Point:
    """One series' value over one push interval.

    ``kind`` is ``gauge`` (``value``), ``count`` (``value`` is the delta over ``interval``
    seconds) or ``summary`` (``count``/``sum`` deltas). A summary from a histogram also has
    ``buckets``, per-bucket counts (not cumulative) as ``(upper bound, count)``, and
    ``low``/``high``, bounding the observations by the lowest and highest non-empty
    bucket; a summary from a summary metric has no buckets and no bounds.
    """

    name: str
    kind: str
    labels: dict[str, str]
    timestamp: float
    value: float = 0.0
    interval: float = 0.0
    count: float = 0.0
    sum: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()
    low: float = 0.0
    high: float = 0.0
    unit: str = ""


@dataclass
class EncodeReport:
    """What encoding did besides copying: shown by ``exporters dry-run`` and logged."""

    points: int = 0
    payloads: int = 0
    bytes: int = 0
    skipped_non_finite: int = 0
    baselines: int = 0  # first sample of a counter: sets the baseline, nothing to send yet
    trimmed: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)

    def trim(self, what: str, n: int = 1) -> None:
        self.trimmed[what] = self.trimmed.get(what, 0) + n

    def reject(self, what: str, n: int = 1) -> None:
        self.rejected[what] = self.rejected.get(what, 0) + n

    def public(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "payloads": self.payloads,
            "bytes": self.bytes,
            "skipped_non_finite": self.skipped_non_finite,
            "counter_baselines": self.baselines,
            "trimmed": dict(self.trimmed),
            "rejected": dict(self.rejected),
        }


def _unit_of(name: str) -> str:
    spec = SPECS_BY_NAME.get(name)
    return spec.unit if spec is not None else ""


def to_points(batch: Iterable[Metric], deltas: DeltaTracker, report: EncodeReport) -> list[Point]:
    """The batch as vendor-neutral points (see the module docstring)."""
    points: list[Point] = []
    seen: list[Any] = []
    for m in batch:
        labels = {str(k): str(v) for k, v in m.labels.items()}
        key = (m.name, tuple(sorted(labels.items())))
        unit = _unit_of(m.name)
        if m.kind == "histogram":
            if not (math.isfinite(m.value) and math.isfinite(m.count)):
                seen.append(_histogram_key(key, m))
                report.skipped_non_finite += 1
                continue
            got = _histogram_delta(key, m, deltas)
            seen.append(_histogram_key(key, m))
            if got is None:
                report.baselines += 1
                continue
            points.append(Point(m.name, "summary", labels, m.timestamp, unit=unit, **got))
            continue
        if m.kind == "summary":
            seen.append((key, "summary"))
            if not (math.isfinite(m.value) and math.isfinite(m.count)):
                report.skipped_non_finite += 1
                continue
            stats = deltas.delta_vector((key, "summary"), (float(m.count), float(m.value)), m.timestamp, monotone=[0])
            if stats is None:
                report.baselines += 1
                continue
            (count, total), interval = stats
            points.append(Point(m.name, "summary", labels, m.timestamp, count=max(0.0, count), sum=total, interval=interval, unit=unit))
            continue
        if m.kind == "counter":
            seen.append(key)  # a non-finite sample keeps the series' baseline
        if not math.isfinite(m.value):
            report.skipped_non_finite += 1
            continue
        if m.kind == "counter":
            got_delta = deltas.delta(key, m.value, m.timestamp)
            if got_delta is None:
                report.baselines += 1
                continue
            delta, interval = got_delta
            points.append(Point(m.name, "count", labels, m.timestamp, value=delta, interval=interval, unit=unit))
        else:
            points.append(Point(m.name, "gauge", labels, m.timestamp, value=float(m.value), unit=unit))
    deltas.forget_missing(seen)
    return points


def _cumulative(m: Metric) -> list[tuple[float, float]]:
    """A histogram's ``(bound, cumulative count)`` pairs ending with ``+Inf``."""
    cumulative = [(float(bound), float(c)) for bound, c in m.buckets]
    if not cumulative or math.isfinite(cumulative[-1][0]):
        cumulative.append((math.inf, float(m.count)))
    return cumulative


def _histogram_key(key: Any, m: Metric) -> Any:
    """The delta-tracker key of a histogram's state: its series and its bucket layout."""
    return (key, tuple(b for b, _c in _cumulative(m)))


def _histogram_delta(key: Any, m: Metric, deltas: DeltaTracker) -> dict[str, Any] | None:
    """Delta of a cumulative histogram since its previous sample, or None for the first.

    Count, sum and buckets are one state, reset together when the count or a bucket fell
    (the process restarted); a histogram whose bucket layout changed starts over."""
    cumulative = _cumulative(m)
    values = (float(m.count), float(m.value), *(c for _b, c in cumulative))
    got = deltas.delta_vector(_histogram_key(key, m), values, m.timestamp, monotone=[0, *range(2, len(values))])
    if got is None:
        return None
    (count, total, *bucket_deltas), interval = got
    per_bucket: list[tuple[float, float]] = []
    previous = 0.0
    for (bound, _c), cum_delta in zip(cumulative, bucket_deltas):
        cum_delta = max(0.0, cum_delta)
        per_bucket.append((bound, max(0.0, cum_delta - previous)))
        previous = max(previous, cum_delta)
    non_empty = [i for i, (_b, c) in enumerate(per_bucket) if c > 0]
    finite_bounds = [b for b, _c in per_bucket if math.isfinite(b)]
    if non_empty:
        first, last = non_empty[0], non_empty[-1]
        low = per_bucket[first - 1][0] if first > 0 else min(0.0, finite_bounds[0] if finite_bounds else 0.0)
        high_bound = per_bucket[last][0]
        high = high_bound if math.isfinite(high_bound) else (finite_bounds[-1] if finite_bounds else 0.0)
    else:
        low = high = 0.0
    return {
        "count": max(0.0, count),
        "sum": total,
        "interval": interval,
        "buckets": tuple(per_bucket),
        "low": low,
        "high": high,
    }


# Label sets remembered per exporter (their vendor form); past it the memo starts over.
LABEL_MEMO_MAX_ENTRIES = 100_000


class LabelMemo:
    """Remembers each label set's vendor form (tags, attributes, dimensions) and what
    converting it trimmed, so a series costs its conversion once, not once per push."""

    def __init__(self, convert: Callable[[Mapping[str, str], EncodeReport], Any]) -> None:
        self._convert = convert
        self._memo: dict[tuple[tuple[str, str], ...], tuple[Any, dict[str, int]]] = {}

    def get(self, labels: Mapping[str, str], report: EncodeReport) -> Any:
        key = tuple(labels.items())
        hit = self._memo.get(key)
        if hit is None:
            scratch = EncodeReport()
            hit = (self._convert(labels, scratch), dict(scratch.trimmed))
            if len(self._memo) >= LABEL_MEMO_MAX_ENTRIES:
                self._memo.clear()
            self._memo[key] = hit
        for what, n in hit[1].items():
            report.trim(what, n)
        return hit[0]


@functools.lru_cache(maxsize=4096)
def dotted_name(name: str) -> str:
    """The vendor name of a metric for dotted-name vendors: ``predis_cache_hits_total`` →
    ``predis.cache.hits`` (the ``_total`` suffix is a Prometheus convention)."""
    spec = SPECS_BY_NAME.get(name)
    base = name[: -len("_total")] if name.endswith("_total") and (spec is None or spec.kind == "counter") else name
    return base.replace("_", ".")


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def chunk(
    items: list[Any],
    *,
    max_items: int,
    max_bytes: int,
    overhead: int,
) -> list[tuple[list[Any], int]]:
    """Split ``items`` into runs of at most ``max_items`` whose encoded size (``overhead``
    plus the JSON list of the run) stays within ``max_bytes``; returns ``(items, bytes)``.

    A run is measured whole (one C-speed ``json.dumps``) and halved until it fits, rather
    than measured item by item: batches usually fit in one or a few requests, and this is
    several times cheaper than sizing 10k items one call each. An item too large on its
    own gets a run of its own (the caller rejects or trims it).
    """
    out: list[tuple[list[Any], int]] = []
    pending = [items[i : i + max_items] for i in range(0, len(items), max_items)]
    pending.reverse()
    while pending:
        run = pending.pop()
        size = overhead + json_size(run)
        if size <= max_bytes or len(run) == 1:
            out.append((run, size))
            continue
        middle = len(run) // 2
        pending.append(run[middle:])
        pending.append(run[:middle])
    return out


def halve(payload: Payload, key: str, rebuild: Callable[[list[Any]], dict[str, Any]], points_of: Callable[[list[Any]], int]) -> list[Payload] | None:
    """Split a payload whose ``body[key]`` is a list into two halves (after a 413)."""
    items = payload.body.get(key) if isinstance(payload.body, Mapping) else None
    if not isinstance(items, list) or len(items) < 2:
        return None
    middle = len(items) // 2
    parts = []
    for half in (items[:middle], items[middle:]):
        body = rebuild(half)
        parts.append(Payload(body=body, points=points_of(half), nbytes=json_size(body), kind=payload.kind, created=payload.created))
    return parts


def event_fields(data: Mapping[str, Any], max_value: int) -> dict[str, str | int | float | bool]:
    """An event's data flattened to scalar attributes (nested values as JSON), bounded."""
    out: dict[str, str | int | float | bool] = {}
    for k, v in data.items():
        if isinstance(v, bool) or (isinstance(v, (int, float)) and math.isfinite(v)):
            out[str(k)] = v
        else:
            text = v if isinstance(v, str) else json.dumps(v, default=str, separators=(",", ":"))
            out[str(k)] = text[:max_value]
    return out


def secret_value(section: Mapping[str, Any], key: str) -> str | None:
    """The plaintext of a writeOnly config value (a Secret), or None when unset."""
    value = section.get(key)
    if value is None:
        return None
    reveal = getattr(value, "reveal", None)
    return reveal() if callable(reveal) else str(value)
