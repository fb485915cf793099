# SPDX-License-Identifier: Apache-2.0
"""agent.history: the on-disk series of the agent's measurements, and its component."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from agent.history import HISTORY_SERIES, History, HistoryError
from agent.runtime import Agent
from agent.telemetry import Metric
from tests.polling import wait_for_async


def metrics(hits: float, misses: float, clients: float = 1.0) -> list[Metric]:
    return [
        Metric("predis_cache_hits_total", hits, "counter"),
        Metric("predis_cache_misses_total", misses, "counter"),
        Metric("predis_cache_connected_clients", clients, "gauge"),
        Metric("predis_cache_commands_total", hits + misses, "counter", {"command": "get"}),
        Metric("predis_cache_command_duration_seconds", 0.5, "histogram", {"command": "get"}, count=3),
        Metric("predis_agent_ready", 1.0, "gauge"),  # not a recorded series
    ]


def test_a_round_is_stored_and_read_back_by_series(tmp_path: Path) -> None:
    history = History(tmp_path / "h" / "history.sqlite3", retention_seconds=3600, max_bytes=1 << 30)
    try:
        assert history.span() is None
        # Four counters and gauges, the histogram as _sum, _count and one +Inf bucket; the
        # unlisted gauge is left out.
        assert history.record(100.0, metrics(5, 2)) == 7
        history.record(110.0, metrics(9, 3))
        assert [(p.ts, p.value) for p in history.series("predis_cache_hits_total")] == [(100.0, 5.0), (110.0, 9.0)]
        assert [p.value for p in history.series("predis_cache_misses_total", since=105.0)] == [3.0]
        assert [p.labels for p in history.series("predis_cache_commands_total")] == [{"command": "get"}] * 2
        assert history.series("predis_cache_command_duration_seconds") == []
        # The histogram's command label is summed away.
        assert [(p.labels, p.value) for p in history.series("predis_cache_command_duration_seconds_sum")] == [({}, 0.5)] * 2
        assert [(p.labels, p.value) for p in history.series("predis_cache_command_duration_seconds_bucket")] == [({"le": "+Inf"}, 3.0)] * 2
        assert history.span() == (100.0, 110.0)
    finally:
        history.close()


def test_the_history_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.sqlite3"
    first = History(path, 3600, 1 << 30)
    first.record(1.0, metrics(1, 1))
    first.close()
    again = History(path, 3600, 1 << 30)
    try:
        again.record(2.0, metrics(2, 1))
        assert [p.value for p in again.series("predis_cache_hits_total")] == [1.0, 2.0]
    finally:
        again.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_symlinked_or_corrupt_file_is_refused_with_its_path(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    link = tmp_path / "history.sqlite3"
    link.symlink_to(target)
    with pytest.raises(HistoryError, match="symlink"):
        History(link, 3600, 1 << 30)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database, " * 200)
    with pytest.raises(HistoryError, match=f"{garbage}.*move the file away"):
        History(garbage, 3600, 1 << 30)


def test_rounds_older_than_the_retention_are_deleted(tmp_path: Path) -> None:
    history = History(tmp_path / "history.sqlite3", retention_seconds=100, max_bytes=1 << 30)
    try:
        for ts in range(0, 1000, 10):
            history.record(float(ts), metrics(ts, 0))
        history.retune(100, 1 << 30)  # the bounds are checked on the next round
        history.record(1000.0, metrics(1000, 0))
        times = [p.ts for p in history.series("predis_cache_hits_total")]
        assert times[0] >= 900.0 and times[-1] == 1000.0
        assert history.dropped_rounds == 0  # the retention is not the budget
    finally:
        history.close()


def test_the_disk_budget_drops_the_oldest_rounds_and_counts_them(tmp_path: Path) -> None:
    budget = 1 << 20
    history = History(tmp_path / "history.sqlite3", retention_seconds=10**9, max_bytes=budget)
    wide = [Metric("predis_cache_commands_total", float(i), "counter", {"command": f"cmd{i:04d}" * 4}) for i in range(200)]
    try:
        for ts in range(400):
            history.record(float(ts), wide)
        history.retune(10**9, budget)
        history.record(400.0, wide)
        assert history.size_bytes() <= budget
        assert history.dropped_rounds > 0
        kept = sorted({p.ts for p in history.series("predis_cache_commands_total")})
        assert kept[-1] == 400.0 and kept[0] > 0.0  # the newest kept, the oldest gone
    finally:
        history.close()
    assert os.path.getsize(tmp_path / "history.sqlite3") <= 2 * budget  # pages given back to the file system


def test_only_counters_and_gauges_of_the_listed_series_are_recorded() -> None:
    assert "predis_cache_hits_total" in HISTORY_SERIES and "predis_cache_prefetch_used_total" in HISTORY_SERIES
    assert not any(name.endswith("_seconds") and "duration" in name for name in HISTORY_SERIES)


def test_the_agent_records_each_round_keeps_it_across_a_restart_and_retunes_on_reload(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    db = tmp_path / "state" / "history.sqlite3"
    base = (
        "agent:\n  http: {listen: '127.0.0.1:0'}\n"
        "cache:\n  resp: {listen: '127.0.0.1:0'}\n"
        f"console:\n  history_path: '{db}'\n"
    )
    path.write_text(base, encoding="utf-8")

    async def run(reload_text: str | None) -> tuple[list[tuple[float, float]], object, object, dict[str, object]]:
        agent = Agent(str(path))
        await agent.start()
        try:
            # The agent's first collection round starts at once: let it end, so that the
            # round below is the only one running.
            await wait_for_async(lambda: agent.collection_runs >= 1, what="the first collection round")
            cache = agent.cache_service.cache
            assert cache is not None
            cache.mset([(b"k", b"v")])
            cache.mget([b"k", b"k", b"missing"])
            await asyncio.get_running_loop().run_in_executor(None, agent.collect_once)
            before = agent.history.history
            if reload_text is not None:
                path.write_text(reload_text, encoding="utf-8")
                assert (await agent.reload("test")).ok
            assert agent.history.history is not None
            hits = [(p.ts, p.value) for p in agent.history.history.series("predis_cache_hits_total")]
            return hits, before, agent.history.history, agent.status()["components"]["history"]
        finally:
            await agent.stop()

    # (the agent's own collection loop may add rounds of its own: counted from what is stored)
    first, before, after, status = asyncio.run(run(base + "  retention_seconds: 3600\n"))
    assert first and first[-1][1] == 2.0  # the round collect_once stored: two hits
    assert after is before  # a new retention keeps the open database
    assert status["enabled"] is True and status["path"] == str(db) and status["dropped_rounds"] == 0
    second, _, _, _ = asyncio.run(run(None))
    assert second[: len(first)] == first and len(second) > len(first)  # the first agent's rounds are still there
    assert second[-1][1] == 2.0  # a fresh cache, its own two hits
