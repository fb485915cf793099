# SPDX-License-Identifier: Apache-2.0
"""Access traces from files: what ``predis-agent drift check`` (and replay) read.

Three formats, told apart by what the path is:

* a **directory**: access-log segments exported by the production data collector, read
  and verified with :func:`agent.mlops.dataset.read_segments` (segment keys needed);
* a file whose first line is a **CSV header** containing ``key`` (optionally
  ``timestamp`` in epoch seconds, ``op`` as a name — get, set, del, expire, prefetch — or
  its number, and ``size`` in bytes);
* otherwise a **text** file of one key per line (blank lines skipped).

Keys from text and CSV are fingerprinted like the cache fingerprints them, but with a
fixed, public key: BLAKE2b-64 keyed with :data:`TRACE_FINGERPRINT_KEY`, read as a
little-endian uint64. The key is fixed so that two traces (or two runs) map the same key
to the same fingerprint; it is public because a trace file already holds the raw keys, so
there is nothing to hide. Exported segments carry the cache's own secret-keyed
fingerprints instead, so compare segments with segments and files with files: hashed key
buckets of the two kinds do not line up.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy

from agent.errors import AgentError
from agent.mlops.dataset import OP_NAMES, SegmentError, read_segments
from agent.mlops.features import WindowFeatures, window_features

TRACE_FINGERPRINT_KEY = b"predis-agent trace fingerprint v1"
FINGERPRINT_BYTES = 8
KEY_COLUMN = "key"
TIMESTAMP_COLUMN = "timestamp"
OP_COLUMN = "op"
SIZE_COLUMN = "size"
NS_PER_SECOND = 1_000_000_000
OP_CODES = {name: code for code, name in OP_NAMES.items()}
# Bytes read to tell a CSV header from a key.
SNIFF_BYTES = 4096


class TraceError(AgentError):
    """A trace that cannot be read; the message names the file and the problem."""


@dataclass
class Trace:
    """Columns of one trace (optional ones None when the trace has none)."""

    fp: numpy.ndarray
    op: numpy.ndarray | None = None
    result: numpy.ndarray | None = None
    size: numpy.ndarray | None = None
    ts_ns: numpy.ndarray | None = None
    # The raw keys, in order, when the trace has them (text and CSV; exported segments
    # carry fingerprints only unless the ring stored raw keys).
    keys: list[bytes] | None = None

    def features(self) -> WindowFeatures:
        return window_features(self.fp, self.op, self.result, self.size, self.ts_ns)


def fingerprint(keys: Iterable[bytes]) -> numpy.ndarray:
    """The trace fingerprint (see module docstring) of each key."""
    out = [
        int.from_bytes(hashlib.blake2b(key, digest_size=FINGERPRINT_BYTES, key=TRACE_FINGERPRINT_KEY).digest(), "little")
        for key in keys
    ]
    return numpy.array(out, dtype=numpy.uint64)


def _is_csv_header(first_line: str) -> bool:
    """Whether the first line is a CSV header: one of its fields is ``key``."""
    try:
        fields = next(csv.reader([first_line]))
    except (csv.Error, StopIteration):
        return False
    return KEY_COLUMN in [f.strip().lower() for f in fields]


def _read_text(path: Path, text: str) -> Trace:
    keys = [line.strip().encode("utf-8") for line in text.splitlines() if line.strip()]
    return Trace(fingerprint(keys), keys=keys)


def _read_csv(path: Path, text: str) -> Trace:
    reader = csv.DictReader(io.StringIO(text))
    names = {name.strip().lower(): name for name in reader.fieldnames or []}
    keys: list[bytes] = []
    ops: list[int] = []
    sizes: list[float] = []
    stamps: list[int] = []
    for line_no, row in enumerate(reader, start=2):
        key = row.get(names[KEY_COLUMN])
        if key is None or key == "":
            raise TraceError(f"{path}: line {line_no}: empty key")
        keys.append(key.encode("utf-8"))
        try:
            if OP_COLUMN in names:
                raw = (row.get(names[OP_COLUMN]) or "").strip().lower()
                ops.append(OP_CODES[raw] if raw in OP_CODES else int(raw))
            if SIZE_COLUMN in names:
                sizes.append(float(row.get(names[SIZE_COLUMN]) or "nan"))
            if TIMESTAMP_COLUMN in names:
                stamps.append(int(float(row.get(names[TIMESTAMP_COLUMN]) or "") * NS_PER_SECOND))
        except (ValueError, OverflowError) as exc:
            raise TraceError(f"{path}: line {line_no}: expected op as a name ({', '.join(OP_CODES)}) or number, size and timestamp as numbers: {exc}") from exc
    return Trace(
        fingerprint(keys),
        op=numpy.array(ops, dtype=numpy.int64) if OP_COLUMN in names else None,
        size=numpy.array(sizes, dtype=numpy.float64) if SIZE_COLUMN in names else None,
        ts_ns=numpy.array(stamps, dtype=numpy.int64) if TIMESTAMP_COLUMN in names else None,
        keys=keys,
    )


def _read_segments(path: Path, keys: list[bytes]) -> Trace:
    if not keys:
        raise TraceError(f"{path}: a directory of access-log segments needs --key-file")
    parts = []
    try:
        for segment in read_segments(path, keys):
            parts.append(segment.events)
    except SegmentError as exc:
        raise TraceError(f"{path}: segment failed verification: {exc}") from exc
    if not parts:
        return Trace(numpy.zeros(0, dtype=numpy.uint64))
    events = numpy.concatenate(parts)
    return Trace(events["fp"], events["op"], events["result"], events["size"], events["ts_ns"])


def read_trace(path: str | os.PathLike[str], segment_keys: Iterable[bytes] = ()) -> Trace:
    """Read a trace in any of the three formats; :class:`TraceError` when it cannot be."""
    p = Path(path)
    try:
        if p.is_dir():
            return _read_segments(p, list(segment_keys))
        data = p.read_bytes()
    except OSError as exc:
        raise TraceError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TraceError(f"{p}: not UTF-8 text (byte {exc.start}); expected one key per line or a CSV with a 'key' column") from exc
    if "\x00" in text[:SNIFF_BYTES]:
        raise TraceError(f"{p}: binary data; expected one key per line or a CSV with a 'key' column")
    first = text.split("\n", 1)[0].rstrip("\r")
    return _read_csv(p, text) if _is_csv_header(first) else _read_text(p, text)
