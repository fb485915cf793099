# SPDX-License-Identifier: Apache-2.0
"""``predis-agent exporters dry-run``: the payloads each push exporter would send, no network.

The config is loaded and validated as ``run`` would; the collectors run twice (counters and
histograms are sent as deltas, so the first round only sets their baseline, exactly as in
the running agent); each enabled exporter encodes the second round through its real,
limit-aware encoder. Nothing is sent and no listener is opened: exporters create their
network clients on the first send, never in ``encode``.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from agent.runtime import Agent, Event
from agent.sinks import Payload
from agent.telemetry import Metric

log = logging.getLogger(__name__)


def _collect(agent: Agent, collectors: list[tuple[str, Any]]) -> tuple[list[Metric], dict[str, str]]:
    batch: list[Metric] = []
    errors: dict[str, str] = {}
    for plugin, collector in collectors:
        try:
            batch.extend(m for m in collector.collect() if isinstance(m, Metric))
        except Exception as exc:
            errors[f"{plugin}.{getattr(collector, 'name', '?')}"] = f"{exc.__class__.__name__}: {exc}"
    batch = agent.telemetry.set_batch(batch)
    return batch + agent.telemetry.self_samples(), errors


def _limits(exporter: Any) -> dict[str, int | float]:
    module = sys.modules.get(type(exporter).__module__)
    return {k: v for k, v in vars(module).items() if k.startswith("MAX_") and isinstance(v, (int, float))} if module else {}


def _describe(payload: Payload, include_body: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": payload.kind, "points": payload.points, "bytes": payload.nbytes}
    if include_body:
        out["body"] = payload.body
    return out


def dry_run(config_path: str | None, overrides: tuple[str, ...], *, only: tuple[str, ...] = (), include_body: bool = False) -> dict[str, Any]:
    """Build every enabled (or every ``only``) exporter's payloads for one collection."""
    if only:
        overrides = tuple(overrides) + tuple(f"exporters.{name}.enabled=true" for name in only)
    agent = Agent(config_path, overrides)
    cfg = agent.config
    agent.host.apply_config(cfg.plugin_enabled)
    collectors = agent.host.collect("predis_agent_register_collectors", agent=agent, config=cfg)
    exporters = agent.host.collect("predis_agent_register_exporters", agent=agent, config=cfg)
    if only:
        exporters = [(p, e) for p, e in exporters if getattr(e, "name", p) in only]
    first, errors = _collect(agent, collectors)
    second, more = _collect(agent, collectors)
    errors.update(more)
    probe = Event("dry_run", {"purpose": "shows the shape of agent events"})
    result: dict[str, Any] = {"collected_samples": len(second), "collector_errors": errors, "exporters": {}}
    for plugin, exporter in exporters:
        name = str(getattr(exporter, "name", plugin))
        encode = getattr(exporter, "encode", None)
        if not callable(encode):
            result["exporters"][name] = {"note": "this exporter sends whole batches (no encode step); nothing to check"}
            continue
        encode(first)
        payloads = list(encode(second))
        report = getattr(exporter, "last_report", None)
        entry: dict[str, Any] = report.public() if report is not None else {}
        encode_events = getattr(exporter, "encode_events", None)
        events = list(encode_events([probe])) if callable(encode_events) else []
        sizes = [p.nbytes for p in payloads]
        entry.update(
            {
                "payloads": len(payloads),
                "points": sum(p.points for p in payloads),
                "bytes": sum(sizes),
                "largest_payload_bytes": max(sizes, default=0),
                "split_into_payloads": len([p for p in payloads if p.kind == "metrics"]) > 1,
                "limits": _limits(exporter),
                "payload_list": [_describe(p, include_body) for p in payloads],
                "event_payload_example": _describe(events[0], True) if events else None,
            }
        )
        result["exporters"][name] = entry
        close = getattr(exporter, "close", None)
        if callable(close):
            close()
    if not exporters:
        result["note"] = "no push exporter is enabled (exporters.<name>.enabled); use --exporter NAME to check one anyway"
    return result


class NotFound(LookupError):
    """No collector or exporter of that name (the message lists what there is)."""


def run_once(config_path: str | None, overrides: tuple[str, ...], name: str) -> dict[str, Any]:
    """Run one collector (by its plugin's or its own name) once and return its samples, or,
    for an exporter, what :func:`dry_run` shows of it with the payload bodies: sent nowhere.
    Raises :class:`NotFound` when nothing has that name."""
    agent = Agent(config_path, overrides)
    cfg = agent.config
    agent.host.apply_config(cfg.plugin_enabled)
    collectors = agent.host.collect("predis_agent_register_collectors", agent=agent, config=cfg)
    chosen = [(p, c) for p, c in collectors if name in (p, getattr(c, "name", None))]
    if chosen:
        samples: list[dict[str, Any]] = []
        errors: dict[str, str] = {}
        for plugin, collector in chosen:
            try:
                got = [m for m in collector.collect() if isinstance(m, Metric)]
            except Exception as exc:
                errors[f"{plugin}.{getattr(collector, 'name', '?')}"] = f"{exc.__class__.__name__}: {exc}"
                continue
            samples.extend({"name": m.name, "kind": m.kind, "labels": dict(m.labels), "value": m.value} for m in got)
        return {"collector": name, "samples": samples, "errors": errors}
    exporter_names = sorted((cfg.get("exporters") or {}).keys())
    if name in exporter_names:
        return {"exporter": name, **dry_run(config_path, overrides, only=(name,), include_body=True)}
    known = sorted({p for p, _c in collectors} | {str(getattr(c, "name", p)) for p, c in collectors})
    raise NotFound(f"no collector or exporter named {name!r}; collectors: {', '.join(known)}; exporters: {', '.join(exporter_names)}")


def render_samples(result: dict[str, Any]) -> str:
    """One line per sample, as in the Prometheus text format."""
    lines = []
    for sample in result["samples"]:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample["labels"].items()))
        lines.append(f"{sample['name']}{{{labels}}} {sample['value']!r}" if labels else f"{sample['name']} {sample['value']!r}")
    for where, error in result["errors"].items():
        lines.append(f"collector {where} failed: {error}")
    return "\n".join(lines)


def render_text(result: dict[str, Any]) -> str:
    lines = [f"collected {result['collected_samples']} samples"]
    for where, error in result["collector_errors"].items():
        lines.append(f"  collector {where} failed: {error}")
    if result.get("note"):
        lines.append(result["note"])
    for name, entry in result["exporters"].items():
        if "note" in entry:
            lines.append(f"{name}: {entry['note']}")
            continue
        lines.append(
            f"{name}: {entry['payloads']} payload(s), {entry['points']} point(s), {entry['bytes']} bytes "
            f"(largest {entry['largest_payload_bytes']})"
        )
        if entry.get("counter_baselines"):
            lines.append(f"  {entry['counter_baselines']} counter/histogram series set their baseline on the first round")
        if entry.get("skipped_non_finite"):
            lines.append(f"  {entry['skipped_non_finite']} non-finite value(s) skipped")
        if entry["split_into_payloads"]:
            lines.append("  split into several payloads to stay within the limits")
        for what, n in sorted(entry.get("trimmed", {}).items()):
            lines.append(f"  trimmed: {what} x{n}")
        for what, n in sorted(entry.get("rejected", {}).items()):
            lines.append(f"  rejected: {what} x{n}")
        limits = ", ".join(f"{k}={v}" for k, v in sorted(entry["limits"].items()))
        if limits:
            lines.append(f"  limits: {limits}")
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, sort_keys=True, default=str)
