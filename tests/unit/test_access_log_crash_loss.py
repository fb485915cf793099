# SPDX-License-Identifier: Apache-2.0
"""What a kill -9 costs the access log (issue 21, "crash loss stated").

Events are acknowledged when they enter the in-memory ring; they are safe once a segment
holding them is on disk. A kill -9 loses the ones in between, and the exporter's two flush
triggers bound them: ``segment_max_events`` waiting, or ``flush_interval_seconds`` passed.
The probe lost 2.6 % of acknowledged events with the defaults; these tests show the loss
is exactly what was waiting, and that lowering either setting lowers it.

The exporter's clock is frozen by hand, so the interval fires only when a test moves it:
no sleeps, no wall-clock thresholds. The kill is a real SIGKILL of a child process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy
import pytest

from agent.mlops.dataset import read_segments
from cache_core.access_log import AccessLog
from cache_core.cache import OP_GET, RES_HIT
from plugins.collectors.access_log import AccessLogExporter
from tests.polling import wait_for

KEY = bytes(range(32))
WAIT = 20.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def section(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "enabled": True,
        "ring_capacity": 1 << 16,
        "sample_rate": 1.0,
        "store_raw_keys": False,
        "export_dir": str(tmp_path / "export"),
        "encryption_key": KEY.hex(),
        "flush_interval_seconds": 10.0,
        "segment_max_events": 100,
        "min_free_bytes": 0,
        "min_free_percent": 0,
        "retention_max_bytes": 1 << 40,
        "retention_max_age_seconds": 7 * 86400,
        "retry_max_seconds": 60,
    }
    base.update(overrides)
    return base


def append(ring: AccessLog, start: int, n: int) -> None:
    fps = numpy.arange(start, start + n, dtype=numpy.uint64) * numpy.uint64(0x9E3779B1)
    ring.append(OP_GET, fps, numpy.full(n, RES_HIT, dtype=numpy.uint8), numpy.zeros(n, dtype=numpy.int64))


def on_disk(directory: Path) -> int:
    return sum(int(s.events.shape[0]) for s in read_segments(directory, [KEY])) if directory.exists() else 0


@pytest.mark.parametrize("segment_max_events", [100, 25])
def test_segment_max_events_bounds_what_waits_without_the_interval(tmp_path: Path, segment_max_events: int) -> None:
    ring = AccessLog(1 << 16)
    clock = Clock()
    ex = AccessLogExporter(lambda: ring, lambda: section(tmp_path, segment_max_events=segment_max_events), monotonic=clock)
    ex.start()
    try:
        logged = 0
        for _ in range(6):
            append(ring, logged, segment_max_events)
            logged += segment_max_events
            # The interval never passes (frozen clock): the size trigger alone writes them.
            wait_for(lambda: ex.totals()["exported"] == logged, timeout=WAIT, interval=0.005, what="the size trigger")
        append(ring, logged, segment_max_events - 1)
        logged += segment_max_events - 1
        # Below the size trigger and before the interval: this is what a kill -9 would lose now.
        assert ex.totals()["pending"] == segment_max_events - 1 < segment_max_events
        clock.now += 10.0  # flush_interval_seconds passes: the interval trigger writes the rest
        wait_for(lambda: ex.totals()["pending"] == 0, timeout=WAIT, interval=0.005, what="the interval trigger")
        assert ex.totals()["exported"] == logged
    finally:
        ex.stop(timeout=WAIT)
    assert on_disk(tmp_path / "export") == logged


CHILD = textwrap.dedent(
    """
    import sys, numpy
    from pathlib import Path
    from cache_core.access_log import AccessLog
    from cache_core.cache import OP_GET, RES_HIT
    from plugins.collectors.access_log import AccessLogExporter
    from tests.polling import wait_for

    export, size, batches, extra = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    section = {
        "enabled": True, "ring_capacity": 1 << 16, "sample_rate": 1.0, "store_raw_keys": False,
        "export_dir": export, "encryption_key": bytes(range(32)).hex(),
        "flush_interval_seconds": 3600.0, "segment_max_events": size,
        "min_free_bytes": 0, "min_free_percent": 0, "retention_max_bytes": 1 << 40,
        "retention_max_age_seconds": 7 * 86400, "retry_max_seconds": 60,
    }
    ring = AccessLog(1 << 16)
    ex = AccessLogExporter(lambda: ring, lambda: section)
    ex.start()

    def append(start, n):
        fps = numpy.arange(start, start + n, dtype=numpy.uint64) + numpy.uint64(1)
        ring.append(OP_GET, fps, numpy.full(n, RES_HIT, dtype=numpy.uint8), numpy.zeros(n, dtype=numpy.int64))

    logged = 0
    for _ in range(batches):
        append(logged, size)
        logged += size
        wait_for(lambda: ex.totals()["exported"] == logged, timeout=20, interval=0.005, what="export")
    append(logged, extra)
    logged += extra
    print(f"acknowledged {logged} pending {ex.totals()['pending']}", flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.parametrize(("segment_max_events", "extra"), [(400, 399), (50, 49)])
def test_a_kill_9_loses_only_what_waited_for_a_flush_trigger(tmp_path: Path, segment_max_events: int, extra: int) -> None:
    export = tmp_path / "export"
    root = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(export), str(segment_max_events), "5", str(extra)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            line = child.stdout.readline().split()
            assert line[:1] == ["acknowledged"], line
            acknowledged, pending = int(line[1]), int(line[3])
            child.send_signal(signal.SIGKILL)
            assert child.wait(WAIT) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(WAIT)
    lost = acknowledged - on_disk(export)
    assert lost == pending == extra
    assert lost < segment_max_events, "a kill -9 loses less than one segment's worth"
