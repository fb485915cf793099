# SPDX-License-Identifier: Apache-2.0
"""The console's JSON API on a running agent: /api/v1/roi counts exactly the reads a real
client made, from the stored history, across a restart; with prefetching from an origin it
measures the control share; /api/v1/series and /api/v1/events answer from the same store."""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.agentproc import AgentProcess, merge
from tests.polling import wait_for

pytestmark = pytest.mark.integration

HITS = 37
MISSES = 23


def client_of(agent: AgentProcess) -> redis.Redis:
    address = agent.status()["components"]["cache"]["resp"]["address"]
    return redis.Redis(host="127.0.0.1", port=int(address.rsplit(":", 1)[1]), socket_timeout=10)


def roi(agent: AgentProcess, **params: Any) -> dict[str, Any]:
    response = agent.get("/api/v1/roi", params={"since": 0, **params})
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def stored_totals(path: Path, name: str) -> float:
    """The total of a counter computed straight from the database: within each run of the
    agent the counter starts at zero, so a run's total is its last stored value."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT rounds.run, samples.value FROM samples JOIN rounds ON rounds.id = samples.round "
            "WHERE samples.name = ? ORDER BY rounds.id",
            (name,),
        ).fetchall()
    finally:
        db.close()
    last: dict[str, float] = {}
    for run, value in rows:
        last[run] = value
    return sum(last.values())


def serve_reads(client: redis.Redis, hits: int, misses: int) -> None:
    client.set("present", b"value")
    for _ in range(hits):
        assert client.get("present") == b"value"
    for i in range(misses):
        assert client.get(f"absent:{i}") is None


def test_roi_counts_exactly_the_reads_served_and_keeps_them_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.sqlite3"
    agent = AgentProcess(tmp_path, {"console": {"history_path": str(path)}}).start()
    try:
        fresh = roi(agent)
        assert fresh["status"] == "no_data" and fresh["requests"] is None and fresh["hits"] is None
        assert agent.get("/api/v1/roi").status_code == 200  # the default window
        serve_reads(client_of(agent), HITS, MISSES)
        report = wait_for(lambda: (r := roi(agent))["requests"] == HITS + MISSES and r, what="a round after the reads")
        assert report["status"] == "ok" and report["hits"] == HITS and report["misses"] == MISSES
        assert report["hit_ratio"] == pytest.approx(HITS / (HITS + MISSES))
        # Prefetching is off: every read was without it, measured, not assumed.
        assert report["prefetch"] == "off" and report["hit_ratio_without_prefetch"] == report["hit_ratio"]
        assert report["origin_reads"] is None and report["origin_reads_avoided"] == HITS
        assert report["missing"] == [f"console.costs.{k}" for k in ("currency", "origin_read_cost", "origin_gb_cost", "gpu_hour_cost", "baseline_hit_ratio")]
        assert all(value is None for value in report["costs"].values())
        assert report["hits"] == stored_totals(path, "predis_cache_hits_total")
        assert report["misses"] == stored_totals(path, "predis_cache_misses_total")

        exported = agent.get("/api/v1/roi", params={"since": 0, "format": "csv"})
        assert exported.headers["Content-Type"].startswith("text/csv")
        assert 'filename="predis-roi.csv"' in exported.headers["Content-Disposition"]
        rows = dict(csv.reader(io.StringIO(exported.text)))
        assert rows["hits"] == str(HITS) and rows["requests"] == str(HITS + MISSES)
        as_json = agent.get("/api/v1/roi", params={"since": 0, "format": "json"})
        assert 'filename="predis-roi.json"' in as_json.headers["Content-Disposition"] and as_json.json()["hits"] == HITS

        ratio = agent.get("/api/v1/series", params={"name": "hit_ratio", "since": 0}).json()
        assert ratio["unit"] == "ratio" and ratio["history"] == "on"
        assert {p["labels"]["of"] for p in ratio["points"]} == {"all"}
        assert all(0 <= p["value"] <= 1 for p in ratio["points"])
        hits = agent.get("/api/v1/series", params={"name": "predis_cache_hits_total", "since": 0}).json()
        assert hits["points"][-1]["value"] == HITS

        agent.write_config(merge(agent.config, {"console": {"retention_seconds": 86400}}))
        assert agent.post("/reload").json()["ok"] is True
        wait_for(
            lambda: any(e["kind"] == "config_reloaded" for e in agent.get("/api/v1/events", params={"since": 0}).json()["events"]),
            what="the reload's event in the history",
        )
    finally:
        agent.stop()

    again = AgentProcess(tmp_path, agent.config)
    again.token = agent.token
    again.start()
    try:
        kept = roi(again)
        assert kept["hits"] == HITS and kept["misses"] == MISSES  # the history survived the restart
        serve_reads(client_of(again), 5, 2)
        report = wait_for(lambda: (r := roi(again))["requests"] == HITS + MISSES + 7 and r, what="a round after the new reads")
        assert report["hits"] == HITS + 5 and report["hits"] == stored_totals(path, "predis_cache_hits_total")
    finally:
        again.stop()


def test_bad_parameters_get_a_400_and_no_token_a_401(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path).start()
    try:
        for path, params in (
            ("/api/v1/roi", {"since": "yesterday"}),
            ("/api/v1/roi", {"since": "nan"}),
            ("/api/v1/roi", {"since": "1e30"}),
            ("/api/v1/roi", {"format": "xml"}),
            ("/api/v1/series", {"name": "no_such"}),
            ("/api/v1/series", {"name": "hit_ratio", "since": "-5"}),
            ("/api/v1/events", {"since": "x"}),
        ):
            response = agent.get(path, params=params)
            assert response.status_code == 400, (path, params, response.text)
            assert "error" in response.json()
        for path in ("/api/v1/roi", "/api/v1/series?name=hit_ratio", "/api/v1/events"):
            assert agent.get(path, token="").status_code == 401
            assert agent.get(path, token="pa_wrong").status_code == 401
        # History off (the default): the report says so instead of showing zeros.
        report = roi(agent)
        assert report["status"] == "no_data" and "console.history_path" in report["notes"][0]
        assert agent.get("/api/v1/series", params={"name": "hit_ratio"}).json() == {"name": "hit_ratio", "unit": None, "points": [], "history": "off"}
    finally:
        agent.stop()


def test_with_prefetching_the_control_share_gives_the_ratio_without_it(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    blocks = 2000
    for i in range(blocks):
        (root / f"blk{i:05d}").write_bytes(b"x" * 100)
    config = {
        "agent": {"reload": {"watch": False}},
        "cache": {
            "read_through": True,
            "origin": "files",
            "prefetch": {"enabled": True, "model": "stride", "depth": 4, "adaptive": False, "threshold": 0.1, "model_process": False},
        },
        "plugins": {"files": {"root": str(root)}},
        "console": {
            "history_path": str(tmp_path / "history.sqlite3"),
            "control_share": 0.2,
            "min_control_reads": 50,
            "costs": {"currency": "EUR", "origin_read_cost": 0.0004, "origin_gb_cost": 0.09, "gpu_hour_cost": 2.5},
        },
    }
    agent = AgentProcess(tmp_path, config).start()
    try:
        client = client_of(agent)
        for i in range(blocks):
            assert client.get(f"blk{i:05d}") == b"x" * 100
        report = wait_for(lambda: (r := roi(agent))["requests"] == blocks and r["control"]["enough"] and r, timeout=60, what="the scan in the report")
        assert report["prefetch"] == "on" and report["hits"] + report["misses"] == blocks
        control = report["control"]
        assert control["reads"] >= 50 and control["share"] == 0.2
        # Control keys are never prefetched: in a scan that reads each key once they all miss.
        assert control["hits"] == 0 and report["hit_ratio_without_prefetch"] == 0.0
        lo, hi = report["hit_ratio_without_prefetch_ci"]
        assert lo == pytest.approx(0.0, abs=1e-9) and 0 < hi < 0.1
        assert report["prefetch_uplift"] > 0 and report["prefetch_hits"] > 0
        assert report["origin_reads"] >= report["misses"] and report["prefetch_origin_reads"] > 0
        assert report["origin_latency_seconds_mean"] > 0 and report["origin_bytes_avoided"] is not None
        assert report["missing"] == ["console.costs.baseline_hit_ratio"]
        costs = report["costs"]
        assert costs["currency"] == "EUR" and costs["gpu_cost_per_day"] == pytest.approx(60.0)
        assert costs["origin_read_cost_avoided"] == pytest.approx(report["origin_reads_avoided"] * 0.0004)
        status = agent.status()["components"]["cache"]["prefetch"]
        assert status["loaded"] > 0
        groups = {p["labels"]["of"] for p in agent.get("/api/v1/series", params={"name": "hit_ratio", "since": 0}).json()["points"]}
        assert {"all", "control", "treated"} <= groups
        origin = agent.get("/api/v1/series", params={"name": "origin_reads_per_second", "since": 0}).json()["points"]
        assert {p["labels"]["by"] for p in origin} == {"demand", "prefetch"}
    finally:
        agent.stop()
