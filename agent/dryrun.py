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
