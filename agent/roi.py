# SPDX-License-Identifier: Apache-2.0
"""What the cache and its prefetching are worth, computed from the history only.

Every figure here is a function of the samples :mod:`agent.history` stored; nothing is
assumed or defaulted. The definitions (docs/console.md gives them with their reasons):

* **Totals over a window** are the increases of the stored counters between consecutive
  rounds of one run of the agent, plus a run's first round (or a series' first round in a
  run) counted from zero: the process's counters start at zero (:func:`increase`).
* **Hit ratio without prefetching** is measured on the control share of keys
  (``console.control_share``), which the prefetcher never loads: control hits over control
  reads, among the served reads the prefetcher saw, with a Wilson interval at
  ``console.confidence_level``. Until ``console.min_control_reads`` control reads exist it is
  not given, and the report says so. With prefetching off, every read is without it.
* **What prefetching added** is the difference between the hit ratios of the other keys
  (treated) and of the control share, times the treated reads (a normal interval for the
  difference of two proportions). Reads of the same key are not independent, so the
  intervals are a guide, not a proof.
* **Origin reads avoided** are the hits less the origin reads the prefetcher made: each hit
  is a read that did not go to the origin, each prefetch is one that did. Prefetching
  moves reads off the request path rather than removing them, so its own balance of origin
  reads (extra hits less its reads) is usually negative; what it buys is origin latency on
  the request path.
* **Origin latency avoided** is the hits times the mean origin time per key read on demand
  (the calls' total duration over the keys they asked for: a lower bound when calls carry
  several keys).
* **Costs** use ``console.costs``; a price that is not configured is listed in ``missing``
  and leaves its figure out, never as zero.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from agent.history import HISTOGRAM_FOLD, HISTORY_SERIES, History, Point

SECONDS_PER_DAY = 86400.0
HOURS_PER_DAY = 24.0
BYTES_PER_GB = 1e9
COST_KEYS = ("currency", "origin_read_cost", "origin_gb_cost", "gpu_hour_cost", "baseline_hit_ratio")
# The quantiles of the latency series.
LATENCY_QUANTILES = (0.5, 0.99)


@dataclass(frozen=True)
class RoiSettings:
    """The ``console`` section's part the report reads (defaults: the schema's)."""

    control_share: float = 0.02
    min_control_reads: int = 1000
    confidence_level: float = 0.95
    costs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, section: dict[str, Any]) -> RoiSettings:
        return cls(
            float(section["control_share"]),
            int(section["min_control_reads"]),
            float(section["confidence_level"]),
            dict(section.get("costs") or {}),
        )

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(0.5 + self.confidence_level / 2)


# --------------------------------------------------------------------------- totals
def _label_key(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def _steps(points: Iterable[Point], rounds: list[tuple[float, str, bool]]) -> list[tuple[Point, float]]:
    """Each point with its increase over the point before it of the same label set (the
    counter's own value when it counts from zero; 0 for a baseline point)."""
    before: dict[float, tuple[str, bool]] = {}
    previous_round: tuple[float, str, bool] | None = None
    for r in rounds:
        before[r[0]] = (previous_round[1], True) if previous_round is not None else ("", False)
        previous_round = r
    last: dict[str, Point] = {}
    out: list[tuple[Point, float]] = []
    for p in points:
        key = _label_key(p.labels)
        prev = last.get(key)
        last[key] = p
        if prev is not None and prev.run == p.run:
            delta = p.value - prev.value
            out.append((p, delta if delta >= 0 else p.value))
        elif p.first:
            out.append((p, p.value))
        else:
            run_before, known = before.get(p.ts, ("", False))
            # The series appeared after a round of the same run that is in the window: it
            # started between the two, from zero. Otherwise the point is a baseline.
            out.append((p, p.value if known and run_before == p.run else 0.0))
    return out


def increase(points: list[Point], rounds: list[tuple[float, str, bool]], where: dict[str, str] | None = None) -> float | None:
    """The total a counter grew by over the stored points (all label sets, or those matching
    ``where``); None when there is no point at all (the series was not measured)."""
    chosen = [p for p in points if where is None or all(p.labels.get(k) == v for k, v in where.items())]
    if not chosen:
        return None
    return sum(step for _p, step in _steps(chosen, rounds))


# --------------------------------------------------------------------------- intervals
def wilson(successes: float, trials: float, z: float) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (None without trials)."""
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(p1: float, n1: float, p2: float, n2: float, z: float) -> tuple[float, float]:
    """A normal interval for ``p1 - p2`` (proportions of ``n1`` and ``n2`` trials)."""
    half = z * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return p1 - p2 - half, p1 - p2 + half


# --------------------------------------------------------------------------- report
class _Window:
    """The stored points of one window, read once per series."""

    def __init__(self, history: History, since: float) -> None:
        self.history = history
        self.since = since
        self.rounds = history.rounds(since)
        self._points: dict[str, list[Point]] = {}

    def points(self, name: str) -> list[Point]:
        if name not in self._points:
            self._points[name] = self.history.series(name, self.since)
        return self._points[name]

    def total(self, name: str, where: dict[str, str] | None = None) -> float | None:
        return increase(self.points(name), self.rounds, where)


def _int(value: float | None) -> int | None:
    return None if value is None else int(round(value))


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def no_data(since: float, settings: RoiSettings, reason: str) -> dict[str, Any]:
    """The report of a window without measurements: every figure null, and why."""
    figures = dict.fromkeys(
        (
            "requests", "hits", "misses", "prefetch_hits", "hit_ratio", "hit_ratio_without_prefetch",
            "hit_ratio_without_prefetch_ci", "prefetch_uplift", "prefetch_uplift_ci", "prefetch_extra_hits",
            "origin_reads", "origin_reads_avoided", "origin_reads_avoided_by_prefetch", "origin_reads_avoided_vs_baseline",
            "origin_bytes_avoided", "origin_latency_seconds_mean", "origin_latency_avoided_seconds",
            "origin_latency_avoided_by_prefetch_seconds", "prefetch_origin_reads", "until", "window_seconds", "rounds",
        )
    )  # fmt: skip
    return {
        "status": "no_data",
        **figures,
        "since": since,
        "prefetch": None,
        "control": {"share": settings.control_share, "reads": None, "hits": None, "enough": False, "needed": settings.min_control_reads},
        "confidence_level": settings.confidence_level,
        "costs": _costs(None, None, None, settings),
        "missing": _missing(settings),
        "notes": [reason],
    }


def _missing(settings: RoiSettings) -> list[str]:
    return [f"console.costs.{key}" for key in COST_KEYS if settings.costs.get(key) is None]


def _costs(reads_avoided: float | None, bytes_avoided: float | None, days: float | None, settings: RoiSettings) -> dict[str, Any]:
    c = settings.costs
    read_cost = None if reads_avoided is None or c.get("origin_read_cost") is None else reads_avoided * float(c["origin_read_cost"])
    gb_cost = None if bytes_avoided is None or c.get("origin_gb_cost") is None else bytes_avoided / BYTES_PER_GB * float(c["origin_gb_cost"])
    parts = [x for x in (read_cost, gb_cost) if x is not None]
    avoided_per_day = sum(parts) / days if parts and days else None
    gpu_per_day = None if c.get("gpu_hour_cost") is None else float(c["gpu_hour_cost"]) * HOURS_PER_DAY
    net = None if avoided_per_day is None or gpu_per_day is None else avoided_per_day - gpu_per_day
    return {
        "currency": c.get("currency"),
        "origin_read_cost_avoided": read_cost,
        "origin_bytes_cost_avoided": gb_cost,
        "avoided_per_day": avoided_per_day,
        "gpu_cost_per_day": gpu_per_day,
        "net_per_day": net,
    }


def report(history: History | None, since: float, settings: RoiSettings) -> dict[str, Any]:
    """The ROI report of the window from ``since`` to the last stored round."""
    if history is None:
        return no_data(since, settings, "history is off: set console.history_path to keep the measurements the report needs")
    w = _Window(history, since)
    if not w.rounds:
        return no_data(since, settings, "no data yet: no collection round is stored in this window")
    hits, misses = w.total("predis_cache_hits_total"), w.total("predis_cache_misses_total")
    requests = None if hits is None or misses is None else hits + misses
    if not requests:
        return no_data(since, settings, "no data yet: no read was served in this window")
    assert hits is not None and misses is not None
    z = settings.z
    notes: list[str] = []
    first, last = w.rounds[0][0], w.rounds[-1][0]
    window = last - first
    prefetch_on = bool(w.points("predis_cache_prefetch_observed_total"))
    hit_ratio = hits / requests

    control_reads = w.total("predis_cache_control_reads_total", {"group": "control"}) or 0.0
    control_hits = w.total("predis_cache_control_hits_total", {"group": "control"}) or 0.0
    treated_reads = w.total("predis_cache_control_reads_total", {"group": "treated"}) or 0.0
    treated_hits = w.total("predis_cache_control_hits_total", {"group": "treated"}) or 0.0
    enough = control_reads >= settings.min_control_reads
    without: float | None = None
    without_ci: tuple[float, float] | None = None
    uplift: float | None = None
    uplift_ci: tuple[float, float] | None = None
    extra_hits: float | None = None
    if not prefetch_on:
        without, without_ci, enough = hit_ratio, wilson(hits, requests, z), True
        uplift, extra_hits = 0.0, 0.0
        notes.append("prefetching was off in this window: every read was served without it")
    elif settings.control_share == 0 and control_reads == 0:
        notes.append("console.control_share is 0: the hit ratio without prefetching is not measured")
    elif not enough:
        notes.append(
            f"not enough control traffic yet: {int(control_reads)} of the {settings.min_control_reads} control reads "
            "(console.min_control_reads) the hit ratio without prefetching needs"
        )
    else:
        without = control_hits / control_reads
        without_ci = wilson(control_hits, control_reads, z)
        if treated_reads > 0:
            treated = treated_hits / treated_reads
            uplift = treated - without
            uplift_ci = difference_interval(treated, treated_reads, without, control_reads, z)
            extra_hits = uplift * requests * treated_reads / (treated_reads + control_reads)

    demand_reads = w.total("predis_cache_origin_reads_total", {"by": "demand"})
    prefetch_reads = w.total("predis_cache_origin_reads_total", {"by": "prefetch"})
    measured_origin = demand_reads is not None or prefetch_reads is not None
    origin_reads = (demand_reads or 0.0) + (prefetch_reads or 0.0) if measured_origin else None
    if not measured_origin:
        notes.append("no origin is configured (cache.origin): origin reads, bytes and latency are not measured")
    reads_avoided = hits - (prefetch_reads or 0.0)
    by_prefetch = None if extra_hits is None else extra_hits - (prefetch_reads or 0.0)
    read_bytes = w.total("predis_cache_origin_read_bytes_total")
    bytes_per_read = _ratio(read_bytes, origin_reads)
    if measured_origin and bytes_per_read is None:
        notes.append("no origin read measured yet: the bytes of a read (and the bytes avoided) are unknown")
    bytes_avoided = None if bytes_per_read is None else reads_avoided * bytes_per_read
    demand_seconds = w.total("predis_cache_origin_read_duration_seconds_sum", {"by": "demand"})
    latency = _ratio(demand_seconds, demand_reads)
    baseline = settings.costs.get("baseline_hit_ratio")
    days = window / SECONDS_PER_DAY if window > 0 else None
    if days is None:
        notes.append("one collection round only: amounts per day need two")
    return {
        "status": "ok",
        "since": first,
        "until": last,
        "window_seconds": window,
        "rounds": len(w.rounds),
        "requests": _int(requests),
        "hits": _int(hits),
        "misses": _int(misses),
        "prefetch_hits": _int(w.total("predis_cache_prefetch_used_total")),
        "hit_ratio": hit_ratio,
        "hit_ratio_without_prefetch": without,
        "hit_ratio_without_prefetch_ci": list(without_ci) if without_ci is not None else None,
        "prefetch": "on" if prefetch_on else "off",
        "prefetch_uplift": uplift,
        "prefetch_uplift_ci": list(uplift_ci) if uplift_ci is not None else None,
        "prefetch_extra_hits": extra_hits,
        "control": {
            "share": settings.control_share,
            "reads": _int(control_reads),
            "hits": _int(control_hits),
            "enough": enough,
            "needed": max(0, settings.min_control_reads - int(control_reads)),
        },
        "confidence_level": settings.confidence_level,
        "origin_reads": _int(origin_reads),
        "prefetch_origin_reads": _int(prefetch_reads),
        "origin_reads_avoided": _int(reads_avoided),
        "origin_reads_avoided_by_prefetch": None if by_prefetch is None else round(by_prefetch, 1),
        "origin_reads_avoided_vs_baseline": None if baseline is None else (hit_ratio - float(baseline)) * requests,
        "origin_bytes_avoided": bytes_avoided,
        "origin_latency_seconds_mean": latency,
        "origin_latency_avoided_seconds": None if latency is None else hits * latency,
        "origin_latency_avoided_by_prefetch_seconds": None if latency is None or extra_hits is None else extra_hits * latency,
        "costs": _costs(reads_avoided, bytes_avoided, days, settings),
        "missing": _missing(settings),
        "notes": notes,
    }


def report_csv(rep: dict[str, Any]) -> str:
    """The report as ``field,value`` rows (nested figures as ``costs.net_per_day``; an
    interval as ``lo;hi``; a missing figure as an empty value)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["field", "value"])

    def emit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key in value:
                emit(f"{prefix}.{key}" if prefix else key, value[key])
        elif isinstance(value, list):
            writer.writerow([prefix, ";".join(str(v) for v in value)])
        else:
            writer.writerow([prefix, "" if value is None else value])

    emit("", rep)
    return out.getvalue()


# --------------------------------------------------------------------------- series
@dataclass(frozen=True)
class Derived:
    """A series computed from stored ones: its unit and what it reads."""

    unit: str
    description: str


DERIVED: dict[str, Derived] = {
    "hit_ratio": Derived("ratio", "hits over reads per round, of all reads, of the control share (without prefetching) and of the rest"),
    "ops_per_second": Derived("per_second", "commands served per second"),
    "latency_seconds": Derived("seconds", "command latency quantiles per round (0.5, 0.99), from the histogram's buckets"),
    "memory_bytes": Derived("bytes", "memory of the cache (all tiers) and resident memory of the process"),
    "prefetch_precision": Derived("ratio", "prefetched keys used over those used or wasted, per round"),
    "prefetch_per_second": Derived("per_second", "prefetched keys inserted, used and wasted per second"),
    "prefetch_model_seconds_per_second": Derived("ratio", "CPU seconds the prefetch model spent per second"),
    "origin_reads_per_second": Derived("per_second", "keys asked of the origin per second, by caller"),
    "sink_breaker_state": Derived("state", "each exporter's circuit breaker per round: 0 closed, 1 half-open, 2 open"),
}
# The value of each breaker state in sink_breaker_state (the order a chart's axis shows them).
BREAKER_STATE_CODES = {"closed": 0, "half_open": 1, "open": 2}


def stored_names() -> list[str]:
    """Every raw series the history keeps (histograms by their _sum, _count, _bucket)."""
    names = set(HISTORY_SERIES)
    for name in HISTOGRAM_FOLD:
        names.update((f"{name}_sum", f"{name}_count", f"{name}_bucket"))
    return sorted(names)


def _unit_of(name: str) -> str:
    for suffix, unit in (("_ratio", "ratio"), ("_seconds_total", "seconds"), ("_seconds", "seconds"), ("_bytes", "bytes"), ("_bytes_total", "bytes")):
        if name.endswith(suffix):
            return unit
    return "count"


def _per_round(w: _Window, name: str, group: tuple[str, ...] = (), where: dict[str, str] | None = None) -> dict[str, dict[float, tuple[float, float]]]:
    """Per group of labels (``group`` keys), per round: (increase, seconds since the round
    before of the same run). Rounds that follow no round of their run are left out."""
    out: dict[str, dict[float, tuple[float, float]]] = defaultdict(dict)
    round_before: dict[float, float] = {}
    for (ts0, run0, _f0), (ts1, run1, _f1) in zip(w.rounds, w.rounds[1:]):
        if run0 == run1:
            round_before[ts1] = ts0
    previous_ts: dict[str, float] = {}
    for p, step in _steps((p for p in w.points(name) if where is None or all(p.labels.get(k) == v for k, v in where.items())), w.rounds):
        key = f"{p.run}{_label_key(p.labels)}"
        # Since this label set's point before (it may have skipped rounds), else since the
        # round before (it appeared in this one).
        before = previous_ts.get(key, round_before.get(p.ts))
        previous_ts[key] = p.ts
        if before is None:
            continue
        g = _label_key({k: p.labels.get(k, "") for k in group})
        inc, dt = out[g].get(p.ts, (0.0, p.ts - before))
        out[g][p.ts] = (inc + step, dt)
    return out


def _rates(w: _Window, name: str, group: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Per round, the increase per second, summed over the labels not in ``group``."""
    points: list[dict[str, Any]] = []
    for g, rounds in _per_round(w, name, group).items():
        labels = json.loads(g)
        points.extend({"ts": ts, "labels": labels, "value": inc / dt} for ts, (inc, dt) in rounds.items() if dt > 0)
    return sorted(points, key=lambda p: p["ts"])


def _ratio_points(w: _Window, num: str, den: list[str], where: dict[str, str] | None, labels: dict[str, str]) -> list[dict[str, Any]]:
    """``num``'s increase over the sum of ``den``'s, round by round."""
    top = _per_round(w, num, where=where).get(_label_key({}), {})
    bottom: dict[float, float] = defaultdict(float)
    for name in den:
        for ts, (inc, _dt) in _per_round(w, name, where=where).get(_label_key({}), {}).items():
            bottom[ts] += inc
    return [{"ts": ts, "labels": labels, "value": inc / bottom[ts]} for ts, (inc, _dt) in sorted(top.items()) if bottom.get(ts)]


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(bound, count)`` buckets, linear within a bucket
    (as Prometheus's histogram_quantile); None without observations."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _latency(w: _Window) -> list[dict[str, Any]]:
    per_le = _per_round(w, "predis_cache_command_duration_seconds_bucket", ("le",))
    by_ts: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for g, rounds in per_le.items():
        le = json.loads(g)["le"]
        bound = math.inf if le == "+Inf" else float(le)
        for ts, (inc, _dt) in rounds.items():
            by_ts[ts].append((bound, inc))
    points = []
    for ts in sorted(by_ts):
        for q in LATENCY_QUANTILES:
            value = _quantile(q, by_ts[ts])
            if value is not None:
                points.append({"ts": ts, "labels": {"quantile": str(q)}, "value": value})
    return points


def _memory(w: _Window) -> list[dict[str, Any]]:
    cache: dict[float, float] = defaultdict(float)
    for p in w.points("predis_cache_memory_bytes"):
        cache[p.ts] += p.value
    points = [{"ts": ts, "labels": {"of": "cache"}, "value": v} for ts, v in cache.items()]
    points.extend({"ts": p.ts, "labels": {"of": "process"}, "value": p.value} for p in w.points("process_resident_memory_bytes"))
    return sorted(points, key=lambda p: p["ts"])


def _derived(w: _Window, name: str) -> list[dict[str, Any]]:
    if name == "hit_ratio":
        points = _ratio_points(w, "predis_cache_hits_total", ["predis_cache_hits_total", "predis_cache_misses_total"], None, {"of": "all"})
        for group in ("control", "treated"):
            where = {"group": group}
            points += _ratio_points(w, "predis_cache_control_hits_total", ["predis_cache_control_reads_total"], where, {"of": group})
        return sorted(points, key=lambda p: p["ts"])
    if name == "ops_per_second":
        return _rates(w, "predis_cache_commands_total")
    if name == "latency_seconds":
        return _latency(w)
    if name == "memory_bytes":
        return _memory(w)
    if name == "prefetch_precision":
        return _ratio_points(w, "predis_cache_prefetch_used_total", ["predis_cache_prefetch_used_total", "predis_cache_prefetch_wasted_total"], None, {})
    if name == "prefetch_per_second":
        points = []
        for of in ("inserted", "used", "wasted"):
            points += [{**p, "labels": {"of": of}} for p in _rates(w, f"predis_cache_prefetch_{of}_total")]
        return sorted(points, key=lambda p: p["ts"])
    if name == "prefetch_model_seconds_per_second":
        return _rates(w, "predis_cache_prefetch_inference_seconds_total")
    if name == "sink_breaker_state":
        return [
            {"ts": p.ts, "labels": {"sink": p.labels.get("sink", "")}, "value": BREAKER_STATE_CODES[p.labels["state"]]}
            for p in w.points("predis_agent_sink_breaker_state")
            if p.value == 1 and p.labels.get("state") in BREAKER_STATE_CODES
        ]
    assert name == "origin_reads_per_second"
    return _rates(w, "predis_cache_origin_reads_total", ("by",))


def series(history: History, name: str, since: float) -> dict[str, Any]:
    """One series of the window from ``since``: a stored one by its metric name, or one of
    :data:`DERIVED`. Raises KeyError for an unknown name."""
    w = _Window(history, since)
    if name in DERIVED:
        return {"name": name, "unit": DERIVED[name].unit, "points": _derived(w, name)}
    if name not in stored_names():
        raise KeyError(name)
    points = [{"ts": p.ts, "labels": p.labels, "value": p.value} for p in w.points(name)]
    return {"name": name, "unit": _unit_of(name), "points": points}


def events(history: History, since: float) -> list[dict[str, Any]]:
    """The kept events from ``since`` on, oldest first."""
    return [{"ts": ts, "kind": kind, "detail": detail} for ts, kind, detail in history.events(since)]
