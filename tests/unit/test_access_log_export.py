# SPDX-License-Identifier: Apache-2.0
"""The production data collector (plugins/collectors/access_log.py) and the segment reader
(agent/mlops/dataset.py): round trips, modes, free-space pauses, write retries, crash
safety, key rotation, retention, ring replacement, metrics and concurrent producers.

Everything is hermetic (tmp_path, injected statvfs, writer and clocks); nothing sleeps to
synchronise: the exporter's ``flush()`` is driven directly, or polled with a deadline.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy
import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.mlops import dataset
from agent.mlops.dataset import (
    EVENT_DTYPE,
    UnknownKeyError,
    key_id,
    list_segments,
    read_segments,
)
from agent.plugins import DEFAULT_PLUGINS, PluginHost
from agent.security import atomic_write
from cache_core.access_log import AccessLog
from cache_core.cache import OP_GET, OP_SET, RES_HIT, RES_STORED
from plugins.collectors.access_log import DROP_REASONS as ACCESS_LOG_DROP_REASONS
from plugins.collectors.access_log import METRICS as ACCESS_LOG_METRICS
from plugins.collectors.access_log import AccessLogCollector, AccessLogExporter
from tests.polling import wait_for

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
GIB = 1 << 30
NS = 1_000_000_000
NAME_RE = re.compile(r"^predis_[a-z][a-z0-9_]*[a-z0-9]$")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Disk:
    """An injectable statvfs: a 100 GiB filesystem with ``free`` bytes available."""

    def __init__(self, free: int = 50 * GIB, total: int = 100 * GIB) -> None:
        self.free = free
        self.total = total
        self.calls = 0

    def __call__(self, path: str) -> Any:
        self.calls += 1
        block = 4096
        return SimpleNamespace(f_bavail=self.free // block, f_frsize=block, f_blocks=self.total // block)


def section(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "enabled": True,
        "ring_capacity": 1024,
        "sample_rate": 1.0,
        "store_raw_keys": False,
        "export_dir": str(tmp_path / "export"),
        "encryption_key": KEY.hex(),
        "flush_interval_seconds": 10.0,
        "segment_max_events": 1000,
        "min_free_bytes": 0,
        "min_free_percent": 0,
        "retention_max_bytes": 1 << 40,
        "retention_max_age_seconds": 7 * 86400,
        "retry_max_seconds": 60,
    }
    base.update(overrides)
    return base


def exporter(ring: AccessLog | None, cfg: dict[str, Any], **kw: Any) -> AccessLogExporter:
    box = {"ring": ring}
    made = AccessLogExporter(lambda: box["ring"], lambda: cfg, **kw)
    made.box = box  # type: ignore[attr-defined]
    return made


def append(ring: AccessLog, start: int, n: int, op: int = OP_GET, keys: bool = False) -> None:
    fps = numpy.arange(start, start + n, dtype=numpy.uint64) * numpy.uint64(0x9E3779B1)
    results = numpy.full(n, RES_HIT if op == OP_GET else RES_STORED, dtype=numpy.uint8)
    sizes = numpy.arange(start, start + n, dtype=numpy.int64) % 1000
    ring.append(op, fps, results, sizes, keys=[b"key:%d" % i for i in range(start, start + n)] if keys else None)


def exported(directory: Path, keys: list[bytes] | None = None) -> tuple[numpy.ndarray, list[Any]]:
    segments = list(read_segments(directory, keys or [KEY]))
    if not segments:
        return numpy.empty(0, dtype=EVENT_DTYPE), []
    return numpy.concatenate([s.events for s in segments]), segments


def balanced(ex: AccessLogExporter) -> dict[str, Any]:
    totals = ex.totals()
    assert totals["logged"] == totals["exported"] + sum(totals["dropped"].values()) + totals["pending"], totals
    return totals


# ----------------------------------------------------------------------------- round trip


def test_segments_round_trip_the_ring_in_order_across_wraps(tmp_path: Path) -> None:
    ring = AccessLog(1024)
    ex = exporter(ring, section(tmp_path, segment_max_events=300))
    mirror = []
    cursor = 0
    for round_ in range(4):
        append(ring, round_ * 700, 700, op=OP_GET if round_ % 2 else OP_SET)
        got = ring.read(cursor)
        mirror.append(got.events)
        cursor = got.next_sequence
        assert ex.flush() == "exporting"
    events, segments = exported(tmp_path / "export")
    expected = numpy.concatenate(mirror)
    assert events.tobytes() == expected.tobytes()
    assert all(s.keys is None and not s.header.raw_keys for s in segments)
    assert all(s.header.count <= 300 for s in segments)
    firsts = [s.header.first_seq for s in segments]
    assert firsts == sorted(firsts) and segments[-1].header.last_seq == 2799
    assert len({s.header.stream_id for s in segments}) == 1
    totals = balanced(ex)
    assert totals == {"logged": 2800, "sampled_out": 0, "exported": 2800, "dropped": dict.fromkeys(ACCESS_LOG_DROP_REASONS, 0), "pending": 0}


def test_raw_keys_are_exported_only_with_store_raw_keys(tmp_path: Path) -> None:
    ring = AccessLog(256, store_raw_keys=True)
    ex = exporter(ring, section(tmp_path, store_raw_keys=True))
    append(ring, 0, 50, keys=True)
    ex.flush()
    _events, segments = exported(tmp_path / "export")
    assert segments[0].header.raw_keys and segments[0].keys == [b"key:%d" % i for i in range(50)]
    records = list(dataset.event_records(segments[0]))
    assert records[3]["key_b64"] == "a2V5OjM=" and records[3]["seq"] == 3 and records[3]["op"] == "get"


def test_directory_and_files_have_private_modes(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "export"
    ring = AccessLog(256)
    ex = exporter(ring, section(tmp_path, export_dir=str(target)))
    append(ring, 0, 10)
    ex.flush()
    for directory in (tmp_path / "deep", tmp_path / "deep" / "er", target):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    names = list_segments(target)
    assert len(names) == 1
    assert stat.S_IMODE((target / names[0]).stat().st_mode) == 0o600


def test_an_existing_directory_with_a_loose_mode_is_tightened(tmp_path: Path) -> None:
    target = tmp_path / "export"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    ex = exporter(AccessLog(256), section(tmp_path))
    ex.flush()
    assert stat.S_IMODE(target.stat().st_mode) == 0o700


def test_without_export_dir_events_stay_in_the_ring_and_overwrites_are_counted(tmp_path: Path) -> None:
    ring = AccessLog(1024)
    ex = exporter(ring, section(tmp_path, export_dir=None))
    append(ring, 0, 1500)
    assert ex.flush() == "ring_only"
    totals = balanced(ex)
    assert totals["dropped"]["not_exported"] == 476 and totals["pending"] == 1024
    assert not (tmp_path / "export").exists()


def test_disabled_without_a_ring(tmp_path: Path) -> None:
    ex = exporter(None, section(tmp_path, enabled=False))
    assert ex.flush() == "disabled"
    assert ex.status()["paused"] is False and not (tmp_path / "export").exists()


@pytest.mark.parametrize("key", [None, "", "too-short", "zz" * 32])
def test_a_missing_or_invalid_key_refuses_export(tmp_path: Path, key: str | None) -> None:
    ring = AccessLog(256)
    ex = exporter(ring, section(tmp_path, encryption_key=key))
    append(ring, 0, 10)
    assert ex.flush() == "refused"
    status = ex.status()
    assert status["paused"] is True and "encryption_key" in status["reason"]
    if key:
        assert key not in json.dumps(status)
    assert balanced(ex)["pending"] == 10
    assert not list(tmp_path.glob("export/seg-*"))


# ----------------------------------------------------------------------------- free space


def test_a_full_disk_pauses_export_and_it_resumes_by_itself(tmp_path: Path) -> None:
    disk = Disk(free=100 << 20)  # 100 MiB of 100 GiB: below both thresholds
    ring = AccessLog(1024)
    statuses: list[dict[str, Any]] = []
    ex = exporter(ring, section(tmp_path, min_free_bytes=GIB, min_free_percent=5), statvfs=disk, on_status=statuses.append)
    append(ring, 0, 500)
    assert ex.flush() == "paused"
    assert list_segments(tmp_path / "export") == []
    status = statuses[-1]
    assert status["state"] == "paused" and status["paused"] is True
    assert "min_free_bytes" in status["reason"] and status["free_bytes"] == 100 << 20
    metrics = {m.name: m.value for m in ex.metrics() if not m.labels}
    assert metrics["predis_access_log_export_paused"] == 1 and metrics["predis_access_log_events_pending"] == 500
    append(ring, 500, 1000)  # the ring (1024) overwrites 476 events while paused
    assert ex.flush() == "paused"
    totals = balanced(ex)
    assert totals["dropped"]["low_disk"] == 476 and totals["pending"] == 1024 and totals["exported"] == 0
    disk.free = 60 * GIB
    assert ex.flush() == "exporting"
    totals = balanced(ex)
    assert totals["exported"] == 1024 and totals["pending"] == 0 and sum(totals["dropped"].values()) == 476
    assert statuses[-1]["paused"] is False and statuses[-1]["reason"] is None
    events, _ = exported(tmp_path / "export")
    assert events["fp"].tolist() == ring.read(476).events["fp"].tolist()


def test_min_free_percent_alone_pauses(tmp_path: Path) -> None:
    disk = Disk(free=4 * GIB)  # 4 % of 100 GiB
    ring = AccessLog(256)
    ex = exporter(ring, section(tmp_path, min_free_bytes=0, min_free_percent=5), statvfs=disk)
    append(ring, 0, 5)
    assert ex.flush() == "paused" and "4.00%" in ex.reason  # type: ignore[operator]
    disk.free = 6 * GIB
    assert ex.flush() == "exporting" and ex.totals()["exported"] == 5


# ----------------------------------------------------------------------------- write failures


class FailingWriter:
    """Raises ``error`` for the first ``failures`` writes, then writes for real."""

    def __init__(self, failures: int, error: int) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self, path: Path, data: bytes) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(self.error, os.strerror(self.error), str(path))
        atomic_write(path, data)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_a_failing_write_is_retried_with_backoff_and_recovers(tmp_path: Path, error: int) -> None:
    clock = Clock()
    writer = FailingWriter(3, error)
    ring = AccessLog(1024)
    ex = exporter(ring, section(tmp_path, retry_max_seconds=1.5), writer=writer, monotonic=clock)
    append(ring, 0, 100)
    delays = []
    assert ex.flush() == "retrying"
    assert errno.errorcode[error] in ex.reason  # type: ignore[operator]
    for _ in range(2):
        before = writer.calls
        assert ex.flush() == "retrying" and writer.calls == before  # still backing off: no attempt
        start = clock.now
        while writer.calls == before:
            clock.now += 0.25
            ex.flush()
        delays.append(clock.now - start)
    assert delays == [0.5, 1.0]  # doubled per failure
    clock.now += 1.5  # capped at retry_max_seconds
    assert ex.flush() == "exporting"
    assert writer.calls == 4 and ex.write_errors == 3
    assert not [p for p in (tmp_path / "export").iterdir() if p.name.startswith(".")]
    totals = balanced(ex)
    assert totals["exported"] == 100 and sum(totals["dropped"].values()) == 0
    assert exported(tmp_path / "export")[0].shape[0] == 100


def test_backoff_is_capped_at_retry_max_seconds(tmp_path: Path) -> None:
    clock = Clock()
    writer = FailingWriter(10, errno.ENOSPC)
    ex = exporter(AccessLog(256), section(tmp_path, retry_max_seconds=2.0), writer=writer, monotonic=clock)
    append(ex.box["ring"], 0, 3)  # type: ignore[attr-defined]
    for _ in range(8):
        ex.flush()
        clock.now += 2.0
    assert "retrying in 2.0s" in ex.reason  # type: ignore[operator]
    assert writer.calls == 8


def test_events_overwritten_while_writes_fail_are_counted_as_write_failed(tmp_path: Path) -> None:
    clock = Clock()
    ring = AccessLog(1024)
    ex = exporter(ring, section(tmp_path), writer=FailingWriter(1, errno.EIO), monotonic=clock)
    append(ring, 0, 1000)
    assert ex.flush() == "retrying"
    append(ring, 1000, 200)
    clock.now += 1
    assert ex.flush() == "exporting"
    totals = balanced(ex)
    assert totals["dropped"]["write_failed"] == 176 and totals["exported"] == 1024


def test_the_final_flush_ignores_the_backoff(tmp_path: Path) -> None:
    clock = Clock()
    ring = AccessLog(256)
    ex = exporter(ring, section(tmp_path), writer=FailingWriter(1, errno.ENOSPC), monotonic=clock)
    append(ring, 0, 7)
    assert ex.flush() == "retrying"
    assert ex.flush(final=True) == "exporting" and ex.totals()["exported"] == 7


# ----------------------------------------------------------------------------- crash safety

CRASH_SCRIPT = """
import os, sys
import numpy
from cache_core.access_log import AccessLog
from plugins.collectors.access_log import AccessLogExporter
ring = AccessLog(256)
ring.append(1, numpy.arange(10, dtype=numpy.uint64), numpy.zeros(10, numpy.uint8), numpy.ones(10, numpy.int64))
cfg = dict(enabled=True, export_dir=sys.argv[1], encryption_key=sys.argv[2], segment_max_events=100,
           min_free_bytes=0, min_free_percent=0, retention_max_bytes=1 << 40, retention_max_age_seconds=1e9,
           retry_max_seconds=1)
os.replace = lambda *a, **k: os._exit(9)  # the process dies after the fsync, before the rename
AccessLogExporter(lambda: ring, lambda: cfg).flush()
"""


def test_a_crash_between_write_and_rename_leaves_no_partial_segment(tmp_path: Path) -> None:
    target = tmp_path / "export"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(target), KEY.hex()], cwd=root, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 9, proc.stderr
    leftovers = [p.name for p in target.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".seg-"), leftovers
    assert list_segments(target) == [] and list(read_segments(target, [KEY])) == []
    ring = AccessLog(256)
    ex = exporter(ring, section(tmp_path))
    append(ring, 0, 4)
    ex.flush()  # the next start removes the leftover and writes normally
    assert ex.temp_files_removed == 1 and ex.status()["temp_files_removed"] == 1
    names = [p.name for p in target.iterdir()]
    assert len(names) == 1 and names == list_segments(target)


def test_temp_files_are_ignored_by_the_reader(tmp_path: Path) -> None:
    ring = AccessLog(256)
    ex = exporter(ring, section(tmp_path))
    append(ring, 0, 3)
    ex.flush()
    target = tmp_path / "export"
    name = list_segments(target)[0]
    (target / f".{name}.abc123").write_bytes((target / name).read_bytes()[:40])
    (target / "notes.txt").write_text("not a segment")
    assert [s.header.name for s in read_segments(target, [KEY])] == [name]


# ----------------------------------------------------------------------------- keys


def test_key_rotation_old_segments_stay_readable_with_the_old_key(tmp_path: Path) -> None:
    cfg = section(tmp_path)
    ring = AccessLog(256)
    ex = exporter(ring, cfg)
    append(ring, 0, 5)
    ex.flush()
    assert ex.status()["key_id"] == key_id(KEY).hex()
    cfg["encryption_key"] = OTHER_KEY.hex()
    append(ring, 5, 5)
    ex.flush()
    assert ex.status()["key_id"] == key_id(OTHER_KEY).hex()
    segments = list(read_segments(tmp_path / "export", [OTHER_KEY, KEY]))
    assert [s.header.key_id for s in segments] == [key_id(KEY), key_id(OTHER_KEY)]
    assert sum(s.events.shape[0] for s in segments) == 10
    with pytest.raises(UnknownKeyError, match=key_id(KEY).hex()):
        list(read_segments(tmp_path / "export", [OTHER_KEY]))
    errors: list[Exception] = []
    only_new = list(read_segments(tmp_path / "export", [OTHER_KEY], on_error=errors.append))
    assert len(only_new) == 1 and len(errors) == 1 and segments[0].header.name in str(errors[0])


@pytest.mark.parametrize(
    "material",
    [KEY, KEY.hex().encode(), KEY.hex().upper().encode() + b"\n", __import__("base64").b64encode(KEY) + b"\n"],
    ids=["raw", "hex", "hex-upper-newline", "base64"],
)
def test_key_formats(material: bytes) -> None:
    assert dataset.parse_key(material) == KEY


def test_a_key_in_base64_from_the_config_works(tmp_path: Path) -> None:
    import base64

    ring = AccessLog(256)
    ex = exporter(ring, section(tmp_path, encryption_key=base64.b64encode(KEY).decode()))
    append(ring, 0, 2)
    assert ex.flush() == "exporting" and exported(tmp_path / "export")[0].shape[0] == 2


@pytest.mark.parametrize(
    "make",
    ["recipe", "not-utf8", "utf8-ending-in-newline", "hex-file"],
)
def test_a_key_file_made_as_the_docs_say_works_through_a_file_reference(tmp_path: Path, make: str) -> None:
    """docs/access-log.md creates the key with `head -c 32 /dev/urandom > segment.key`; a
    `${file:...}` reference to that file used to be refused (UnicodeDecodeError). Raw keys
    are read as the file's exact bytes, whatever they look like (a trailing newline byte is
    part of the key), hex and base64 files as text."""
    from agent.config import Secret, load_config

    path = tmp_path / "segment.key"
    if make == "recipe":
        with path.open("wb") as out:
            subprocess.run(["head", "-c", "32", "/dev/urandom"], stdout=out, check=True)
    elif make == "not-utf8":
        path.write_bytes(b"\xff\xfe" + KEY[2:])
    elif make == "utf8-ending-in-newline":
        path.write_bytes(b"k" * 31 + b"\n")
    else:
        path.write_text(KEY.hex() + "\n")
    raw = path.read_bytes()
    expected = KEY if make == "hex-file" else raw
    cfg = load_config(None, text=f"collectors:\n  access_log:\n    encryption_key: '${{file:{path}}}'\n")
    # (load_config raises ConfigError listing every problem: before the fix, "cannot be read")
    value = cfg.section("collectors.access_log")["encryption_key"]
    assert isinstance(value, Secret) and value.reveal_bytes() == raw
    assert dataset.parse_key(value.reveal_bytes()) == expected
    ring = AccessLog(256)
    ex = exporter(ring, section(tmp_path, encryption_key=value))
    append(ring, 0, 3)
    assert ex.flush() == "exporting"
    assert ex.status()["key_id"] == dataset.key_id(expected).hex()


# ----------------------------------------------------------------------------- retention


def test_retention_by_bytes_deletes_the_oldest_and_keeps_the_newest(tmp_path: Path) -> None:
    ring = AccessLog(4096)
    cfg = section(tmp_path)
    ex = exporter(ring, cfg)
    for i in range(5):
        append(ring, i * 500, 500)
        ex.flush()
    target = tmp_path / "export"
    names = list_segments(target)
    sizes = [(target / n).stat().st_size for n in names]
    assert len(names) == 5
    cfg["retention_max_bytes"] = sizes[-1] + sizes[-2] + 1
    ex.flush()
    assert list_segments(target) == names[-2:]
    cfg["retention_max_bytes"] = 1  # smaller than one segment: the newest is still kept
    ex.flush()
    assert list_segments(target) == names[-1:]
    assert ex.segments_deleted == {"bytes": 4, "age": 0}
    metrics = {(m.name, tuple(m.labels.items())): m.value for m in ex.metrics()}
    assert metrics[("predis_access_log_segments_deleted_total", (("reason", "bytes"),))] == 4


def test_retention_by_age(tmp_path: Path) -> None:
    now = {"ns": 1_700_000_000 * NS}
    ring = AccessLog(256)
    cfg = section(tmp_path, retention_max_age_seconds=3600)
    ex = exporter(ring, cfg, clock_ns=lambda: now["ns"])
    append(ring, 0, 5)
    ex.flush()
    now["ns"] += 1800 * NS
    append(ring, 5, 5)
    ex.flush()
    assert len(list_segments(tmp_path / "export")) == 2
    now["ns"] += 1801 * NS  # the first is now 3601 s old
    ex.flush()
    left = list(read_segments(tmp_path / "export", [KEY]))
    assert [s.header.first_seq for s in left] == [5] and ex.segments_deleted["age"] == 1


# ----------------------------------------------------------------------------- rings replaced


def test_a_replaced_ring_is_drained_before_the_new_one(tmp_path: Path) -> None:
    first = AccessLog(256)
    ex = exporter(first, section(tmp_path, min_free_bytes=GIB), statvfs=Disk(free=0))
    append(first, 0, 30)
    assert ex.flush() == "paused"
    second = AccessLog(512)
    ex.box["ring"] = second  # type: ignore[attr-defined]
    append(second, 1000, 20)
    ex.flush()
    assert ex.totals()["pending"] == 50
    ex._statvfs = Disk()
    assert ex.flush() == "exporting"
    segments = list(read_segments(tmp_path / "export", [KEY]))
    assert [s.events.shape[0] for s in segments] == [30, 20]
    assert segments[0].header.stream_id != segments[1].header.stream_id
    assert segments[1].header.first_seq == 0  # sequences restart per stream
    totals = balanced(ex)
    assert totals["logged"] == 50 and totals["exported"] == 50
    # The access log is disabled: the last ring is drained, then nothing is left.
    ex.box["ring"] = None  # type: ignore[attr-defined]
    append(second, 2000, 3)
    ex.flush()
    assert balanced(ex)["exported"] == 53
    assert ex.flush() == "disabled"


# ----------------------------------------------------------------------------- metrics and plugin


@pytest.mark.parametrize("spec", ACCESS_LOG_METRICS, ids=[s.name for s in ACCESS_LOG_METRICS])
def test_metric_names_follow_the_registry_conventions(spec: Any) -> None:
    assert NAME_RE.fullmatch(spec.name) and spec.help.strip()
    assert spec.name.endswith("_total") == (spec.kind == "counter")
    if spec.unit:
        assert spec.name.endswith(f"_{spec.unit}") or spec.name.endswith(f"_{spec.unit}_total")


def test_the_collector_reports_every_declared_metric(tmp_path: Path) -> None:
    ring = AccessLog(1024, sample_rate=0.5)
    ex = exporter(ring, section(tmp_path))
    fps = numpy.arange(2000, dtype=numpy.uint64) * numpy.uint64(0x9E3779B97F4A7C15)
    ring.append(OP_GET, fps, numpy.zeros(2000, numpy.uint8), numpy.ones(2000, numpy.int64))
    ex.flush()
    samples = AccessLogCollector(ex).collect()
    assert {m.name for m in samples} == {s.name for s in ACCESS_LOG_METRICS}
    kinds = {s.name: s.kind for s in ACCESS_LOG_METRICS}
    assert all(m.kind == kinds[m.name] for m in samples)
    values = {m.name: m for m in samples if not m.labels}
    assert values["predis_access_log_events_total"].value + values["predis_access_log_events_sampled_out_total"].value == 2000
    assert values["predis_access_log_events_exported_total"].value == ring.head
    assert values["predis_access_log_segments_written_total"].value == 1
    assert values["predis_access_log_written_bytes_total"].value == sum(p.stat().st_size for p in (tmp_path / "export").iterdir())
    histogram = values["predis_access_log_export_duration_seconds"]
    assert histogram.count == 1 and histogram.buckets[-1][1] == 1
    dropped = {m.labels["reason"] for m in samples if m.name == "predis_access_log_events_dropped_total"}
    assert dropped == set(ACCESS_LOG_DROP_REASONS)


def test_export_lag_is_the_age_of_the_oldest_waiting_event(tmp_path: Path) -> None:
    now = {"ns": 5_000 * NS}
    ring = AccessLog(256, clock_ns=lambda: now["ns"])
    ex = exporter(ring, section(tmp_path, min_free_bytes=GIB), statvfs=Disk(free=0), clock_ns=lambda: now["ns"])
    append(ring, 0, 4)
    now["ns"] += 3 * NS
    ex.flush()
    assert ex.lag_seconds() == 3.0


def test_the_plugin_is_built_in_and_loads() -> None:
    assert ("access_log", "plugins.collectors.access_log") in DEFAULT_PLUGINS
    host = PluginHost(load_entrypoints=False, builtins=(("access_log", "plugins.collectors.access_log"),))
    assert host.plugins["access_log"].state == "loaded", host.plugins["access_log"].error


def test_the_worker_thread_exports_by_itself_and_flushes_on_stop(tmp_path: Path) -> None:
    ring = AccessLog(1024)
    ex = exporter(ring, section(tmp_path, flush_interval_seconds=0.1, segment_max_events=100))
    ex.start()
    try:
        append(ring, 0, 250)
        wait_for(lambda: ex.totals()["exported"] == 250, timeout=10, what="the worker to export")
        append(ring, 250, 5)
    finally:
        ex.stop(timeout=10)
    assert ex.totals()["exported"] == 255 and ex._thread is None


# ----------------------------------------------------------------------------- stress


def test_concurrent_producers_every_event_is_exported_or_counted(tmp_path: Path) -> None:
    producers, batches = 4, 2000
    ring = AccessLog(4096, sample_rate=0.75)
    ex = exporter(ring, section(tmp_path, flush_interval_seconds=0.1, segment_max_events=1024))
    ex.start()
    start = threading.Barrier(producers + 1)
    done = threading.Event()
    # Producers pause halfway until a flush beside them exported something: on a fast
    # machine they could otherwise finish before the first flush (imports, key set-up) did.
    exported_midway = threading.Event()

    def drain() -> None:  # flushes back to back, beside the worker thread, while producers run
        start.wait()
        while not done.is_set():
            ex.flush()
            if ex.totals()["exported"]:
                exported_midway.set()

    def produce(index: int) -> None:
        rng = numpy.random.default_rng(index)
        start.wait()
        for step in range(batches):
            if step == batches // 2:
                assert exported_midway.wait(timeout=60), "no flush exported anything while the producers ran"
            n = int(rng.integers(1, 64))
            fps = rng.integers(0, 2**63, size=n, dtype=numpy.int64).astype(numpy.uint64)
            ring.append(OP_GET, fps, numpy.zeros(n, numpy.uint8), numpy.full(n, index, numpy.int64))

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(producers)]
    drainer = threading.Thread(target=drain)
    for thread in [*threads, drainer]:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    done.set()
    drainer.join(timeout=60)
    ex.stop(timeout=30)
    totals = balanced(ex)
    after_sampling = ring.offered - ring.sampled_out
    assert totals["pending"] == 0 and totals["logged"] == ring.head == after_sampling
    assert totals["exported"] + sum(totals["dropped"].values()) == after_sampling
    assert {k for k, v in totals["dropped"].items() if v} <= {"overwritten"}
    segments = list(read_segments(tmp_path / "export", [KEY]))
    assert len(segments) > 1 and totals["exported"] > ring.capacity  # export really ran beside the producers
    assert sum(s.events.shape[0] for s in segments) == totals["exported"]
    covered = sorted((s.header.first_seq, s.header.last_seq) for s in segments)
    gaps = covered[0][0] + sum(b[0] - a[1] - 1 for a, b in itertools.pairwise(covered)) + (ring.head - 1 - covered[-1][1])
    assert all(b[0] > a[1] for a, b in itertools.pairwise(covered))  # no event exported twice
    assert gaps == sum(totals["dropped"].values())


# ----------------------------------------------------------------------------- CLI


def write_key(path: Path, key: bytes = KEY) -> Path:
    path.write_text(key.hex() + "\n")
    return path


def make_segments(tmp_path: Path, count: int = 2, keys: bool = False) -> Path:
    ring = AccessLog(256, store_raw_keys=keys)
    ex = exporter(ring, section(tmp_path, store_raw_keys=keys))
    for i in range(count):
        append(ring, i * 3, 3, op=OP_SET if i % 2 == 0 else OP_GET, keys=keys)
        ex.flush()
    return tmp_path / "export"


def test_data_read_prints_json_lines(tmp_path: Path) -> None:
    target = make_segments(tmp_path)
    result = CliRunner().invoke(cli, ["data", "read", str(target), "--key-file", str(write_key(tmp_path / "k")), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seq"] for r in rows] == list(range(6))
    assert [r["op"] for r in rows] == ["set"] * 3 + ["get"] * 3
    assert "2 segment(s) verified, 6 event(s); 0 segment(s) failed" in result.stderr


def test_data_read_prints_a_table_with_keys(tmp_path: Path) -> None:
    target = make_segments(tmp_path, count=1, keys=True)
    result = CliRunner().invoke(cli, ["data", "read", str(target), "--key-file", str(write_key(tmp_path / "k"))])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["time", "seq", "op", "result", "tenant", "size", "fp", "key"]
    assert lines[1].split("\t")[-1] == "key:0" and len(lines) == 4


def test_data_read_since_filters_by_time(tmp_path: Path) -> None:
    target = make_segments(tmp_path)
    key_file = str(write_key(tmp_path / "k"))
    future = CliRunner().invoke(cli, ["data", "read", str(target), "--key-file", key_file, "--since", "2999-01-01T00:00:00Z"])
    assert future.exit_code == 0 and future.stdout == ""
    past = CliRunner().invoke(cli, ["data", "read", str(target), "--key-file", key_file, "--since", "0", "--json"])
    assert past.exit_code == 0 and len(past.stdout.splitlines()) == 6
    bad = CliRunner().invoke(cli, ["data", "read", str(target), "--key-file", key_file, "--since", "yesterday"])
    assert bad.exit_code == 2 and "ISO 8601" in bad.stderr


def test_parse_since() -> None:
    assert dataset.parse_since("1700000000.5") == 1700000000.5
    assert dataset.parse_since("2023-11-14T22:13:20Z") == 1700000000.0
    assert dataset.parse_since("2023-11-14T22:13:20") == 1700000000.0  # naive: UTC
    assert dataset.parse_since("2023-11-15T00:13:20+02:00") == 1700000000.0


def test_read_segments_since_keeps_the_sequence_numbers(tmp_path: Path) -> None:
    now = {"ns": 1_700_000_000 * NS}
    ring = AccessLog(256, clock_ns=lambda: now["ns"])
    ex = exporter(ring, section(tmp_path), clock_ns=lambda: now["ns"] + NS)
    append(ring, 0, 2)
    now["ns"] += 10 * NS
    append(ring, 2, 2)
    ex.flush()
    (segment,) = read_segments(tmp_path / "export", [KEY], since=1_700_000_005)
    _header, events, keys = segment
    assert events.shape[0] == 2 and segment.seqs.tolist() == [2, 3] and keys is None
    assert [r["seq"] for r in dataset.event_records(segment)] == [2, 3]


def run_parallel(funcs: list[Callable[[], object]]) -> None:
    threads = [threading.Thread(target=f) for f in funcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_flush_from_two_threads_never_exports_twice(tmp_path: Path) -> None:
    ring = AccessLog(4096)
    ex = exporter(ring, section(tmp_path, segment_max_events=50))
    append(ring, 0, 1000)
    run_parallel([ex.flush, ex.flush, ex.flush])
    events, _ = exported(tmp_path / "export")
    assert events.shape[0] == 1000 and len(set(events["fp"].tolist())) == 1000


# ----------------------------------------------------------------------------- held by AIOps
def test_a_hold_keeps_events_in_the_ring_and_counts_overwrites_as_held(tmp_path: Path) -> None:
    ring = AccessLog(16)
    ex = exporter(ring, section(tmp_path))
    ex.hold("held by aiops action pause_access_log_export (eta:spool)")
    append(ring, 0, 10)
    assert ex.flush() == "held"
    assert ex.status()["paused"] is True and ex.status()["reason"].startswith("held by aiops")
    assert exported(tmp_path / "export")[0].size == 0
    append(ring, 10, 20)  # 30 events into 16 slots: 14 overwritten while held
    ex.flush()
    totals = balanced(ex)
    assert totals["dropped"]["held"] == 14 and totals["pending"] == 16
    ex.release()
    assert ex.flush() == "exporting"
    assert exported(tmp_path / "export")[0].size == 16
    assert balanced(ex)["pending"] == 0
