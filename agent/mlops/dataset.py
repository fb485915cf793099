# SPDX-License-Identifier: Apache-2.0
"""Access-log segment files: their format, how they are written, and how they are verified.

The production data collector (``plugins/collectors/access_log.py``) writes segments;
training and ``predis-agent data read`` read them. Encoding and decoding live side by
side here so the writer and the reader cannot drift apart, and so that the MLOps code
(DESIGN §2: datasets come from exported access logs) needs nothing from a plugin.

Format, version 1. One file per segment, named ``seg-<created_ns>-<first_seq>.pdal``
(both zero-padded to 20 digits, so names sort by creation time)::

    header, 76 bytes, little-endian; all of it is AES-GCM associated data
      magic       4s   b"PDAL"
      version     H    1
      flags       H    bit 0: the payload has a raw-key column
      key_id      8s   first 8 bytes of SHA-256(key): the reader picks its key by it
      stream_id   8s   random per ring drained: sequence numbers restart per stream
      nonce       12s  random 96-bit AES-GCM nonce
      first_seq   Q    ring sequence number of the first event
      last_seq    Q    ring sequence number of the last event (first_seq + count - 1)
      count       Q    events in the payload
      created_ns  q    time.time_ns() when the segment was written
      body_len    Q    bytes after the header (ciphertext and its 16-byte tag)
    body = AES-256-GCM(key, nonce).encrypt(payload, associated_data=header)
    payload = an Arrow IPC stream of one record batch, buffers zstd-compressed:
      ts_ns int64, fp uint64, op uint8, result uint8, tenant uint16, size uint32
      and, only when raw keys are stored, key binary (null where the cache had none)

Why it is safe to trust what comes out: the tag covers the header and the payload, so
flipping any byte, truncating or extending the file, or swapping headers between files
fails verification; the file name must match the authenticated header, so renaming a
segment (to reorder or hide it) is caught too. A segment that fails is reported with its
file name and none of its data is returned. Without raw keys nothing in a file, even
decrypted, is a key; encrypted, not even a fingerprint is visible.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import errno
import functools
import hashlib
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.errors import AgentError
from cache_core import cache as cache_ops
from cache_core.access_log import EVENT_DTYPE
from cache_core.files import temp_name_re

MAGIC = b"PDAL"
FORMAT_VERSION = 1
FLAG_RAW_KEYS = 1
KEY_BYTES = 32  # AES-256
KEY_ID_BYTES = 8
STREAM_ID_BYTES = 8
NONCE_BYTES = 12  # 96 bits, the size GCM is specified for
TAG_BYTES = 16
HEADER = struct.Struct("<4sHH8s8s12sQQQqQ")
HEADER_BYTES = HEADER.size
COMPRESSION = "zstd"
SEGMENT_PREFIX = "seg-"
SEGMENT_SUFFIX = ".pdal"
NAME_DIGITS = 20
SEGMENT_NAME_RE = re.compile(r"^seg-(\d{20})-(\d{20})\.pdal$")
# Temp files of an unfinished atomic write of a segment (cache_core.files): never read,
# removed when the exporter starts.
TEMP_NAME_RE = temp_name_re(r"seg-\d{20}-\d{20}\.pdal")
HEX_KEY_CHARS = 2 * KEY_BYTES
NS_PER_SECOND = 1_000_000_000
KEY_FORMATS = "32 raw bytes, 64 hex characters or the base64 of 32 bytes"
# A key file is read up to this size: enough for any key format plus whitespace.
MAX_KEY_FILE_BYTES = 4 * KEY_BYTES + 1

# The Arrow columns of a segment: (name, pyarrow type constructor's name).
EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ts_ns", "int64"),
    ("fp", "uint64"),
    ("op", "uint8"),
    ("result", "uint8"),
    ("tenant", "uint16"),
    ("size", "uint32"),
)
KEY_COLUMN = "key"


class _Arrow:
    """pyarrow, imported when a segment is first written or read: an agent that never
    exports its access log does not pay pyarrow's ~25 MiB of resident memory."""

    def __init__(self) -> None:
        import pyarrow
        import pyarrow.ipc

        self.pa = pyarrow
        self.ipc = pyarrow.ipc
        self.types = [(name, getattr(pyarrow, kind)()) for name, kind in EVENT_COLUMNS]
        self.schema = pyarrow.schema(self.types)
        self.schema_with_keys = pyarrow.schema([*self.types, (KEY_COLUMN, pyarrow.binary())])


@functools.cache
def _arrow() -> _Arrow:
    return _Arrow()


OP_NAMES = {
    cache_ops.OP_GET: "get",
    cache_ops.OP_SET: "set",
    cache_ops.OP_DEL: "del",
    cache_ops.OP_EXPIRE: "expire",
    cache_ops.OP_PREFETCH: "prefetch",
}
RESULT_NAMES = {
    cache_ops.RES_HIT: "hit",
    cache_ops.RES_MISS: "miss",
    cache_ops.RES_PREFETCH_HIT: "prefetch_hit",
    cache_ops.RES_EVICTED: "evicted",
    cache_ops.RES_STORED: "stored",
    cache_ops.RES_DELETED: "deleted",
    cache_ops.RES_EXPIRED: "expired",
}

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


# ---------------------------------------------------------------------------- errors


class KeyFormatError(AgentError, ValueError):
    """Key material that is not an AES-256 key. The message never contains the material."""


class SegmentError(AgentError):
    """A segment failed verification; ``path`` names the file, ``problem`` says why."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SegmentFormatError(SegmentError):
    """Not a segment of a format this reader knows (bad magic, version, layout)."""


class SegmentTruncatedError(SegmentFormatError):
    """The file is shorter (or longer) than its header says."""


class SegmentTamperedError(SegmentError):
    """Authentication failed, or the file name does not match the authenticated header."""


class UnknownKeyError(SegmentError):
    """None of the keys given has the segment's key id."""


# ---------------------------------------------------------------------------- keys


def parse_key(material: bytes | str) -> bytes:
    """An AES-256 key from 32 raw bytes, 64 hex characters or base64 (surrounding whitespace ignored)."""
    data = material.encode("utf-8") if isinstance(material, str) else bytes(material)
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == HEX_KEY_CHARS:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_BYTES:
        return decoded
    raise KeyFormatError(f"not an AES-256 key: expected {KEY_FORMATS}, found {len(data)} bytes that are none of these")


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read and parse a key file; errors name the file, never its content."""
    try:
        with open(path, "rb") as handle:
            material = handle.read(MAX_KEY_FILE_BYTES)
    except OSError as exc:
        raise KeyFormatError(f"key file {path}: cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    try:
        return parse_key(material)
    except KeyFormatError as exc:
        raise KeyFormatError(f"key file {path}: {exc}") from None


def key_id(key: bytes) -> bytes:
    """The 8-byte id a segment header carries: the first bytes of SHA-256(key)."""
    return hashlib.sha256(key).digest()[:KEY_ID_BYTES]


# ---------------------------------------------------------------------------- header and names


@dataclass(frozen=True)
class SegmentHeader:
    """The authenticated header of one segment (and the file it came from)."""

    version: int
    flags: int
    key_id: bytes
    stream_id: bytes
    nonce: bytes
    first_seq: int
    last_seq: int
    count: int
    created_ns: int
    body_len: int
    path: str = ""

    @property
    def raw_keys(self) -> bool:
        return bool(self.flags & FLAG_RAW_KEYS)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC,
            self.version,
            self.flags,
            self.key_id,
            self.stream_id,
            self.nonce,
            self.first_seq,
            self.last_seq,
            self.count,
            self.created_ns,
            self.body_len,
        )

    def public(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "version": self.version,
            "key_id": self.key_id.hex(),
            "stream_id": self.stream_id.hex(),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "count": self.count,
            "created_ns": self.created_ns,
            "raw_keys": self.raw_keys,
        }


def segment_name(created_ns: int, first_seq: int) -> str:
    return f"{SEGMENT_PREFIX}{created_ns:0{NAME_DIGITS}d}-{first_seq:0{NAME_DIGITS}d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """(created_ns, first_seq) of a segment file name, None for any other name."""
    match = SEGMENT_NAME_RE.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _unpack_header(blob: bytes, path: str) -> SegmentHeader:
    if len(blob) < HEADER_BYTES:
        raise SegmentTruncatedError(path, f"truncated: {len(blob)} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, flags, kid, stream, nonce, first, last, count, created, body_len = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise SegmentFormatError(path, f"not an access-log segment: expected magic {MAGIC!r}, found {magic!r}")
    if version != FORMAT_VERSION:
        raise SegmentFormatError(path, f"unsupported format version {version} (this reader knows {FORMAT_VERSION})")
    return SegmentHeader(version, flags, kid, stream, nonce, first, last, count, created, body_len, path)


# ---------------------------------------------------------------------------- encode


def encode_segment(
    events: numpy.ndarray,
    keys: list[bytes | None] | None,
    *,
    first_seq: int,
    key: bytes,
    stream_id: bytes,
    created_ns: int,
) -> bytes:
    """The bytes of one segment holding ``events`` (EVENT_DTYPE rows); ``keys`` only with raw keys."""
    count = int(events.shape[0])
    if count < 1:
        raise ValueError("a segment holds at least one event")
    if len(key) != KEY_BYTES or len(stream_id) != STREAM_ID_BYTES:
        raise ValueError(f"expected a {KEY_BYTES}-byte key and an {STREAM_ID_BYTES}-byte stream id")
    arrow = _arrow()
    pyarrow = arrow.pa
    columns = [pyarrow.array(numpy.ascontiguousarray(events[name]), type=kind) for name, kind in arrow.types]
    schema = arrow.schema
    flags = 0
    if keys is not None:
        if len(keys) != count:
            raise ValueError(f"expected one key per event ({count}), got {len(keys)}")
        columns.append(pyarrow.array(keys, type=pyarrow.binary()))
        schema = arrow.schema_with_keys
        flags |= FLAG_RAW_KEYS
    batch = pyarrow.record_batch(columns, schema=schema)
    sink = pyarrow.BufferOutputStream()
    options = pyarrow.ipc.IpcWriteOptions(compression=COMPRESSION)
    with pyarrow.ipc.new_stream(sink, schema, options=options) as writer:
        writer.write_batch(batch)
    payload = sink.getvalue().to_pybytes()
    nonce = os.urandom(NONCE_BYTES)
    header = SegmentHeader(
        FORMAT_VERSION,
        flags,
        key_id(key),
        stream_id,
        nonce,
        first_seq,
        first_seq + count - 1,
        count,
        created_ns,
        len(payload) + TAG_BYTES,
    ).pack()
    return header + AESGCM(key).encrypt(nonce, payload, header)


# ---------------------------------------------------------------------------- decode


@dataclass(frozen=True)
class SegmentData:
    """One verified segment: its header, its events (EVENT_DTYPE) and, with raw keys, the keys.

    Unpacks as ``header, events, keys``; ``seqs`` holds each event's ring sequence number
    (they stay right when ``since`` filtered some events out).
    """

    header: SegmentHeader
    events: numpy.ndarray
    keys: list[bytes | None] | None
    seqs: numpy.ndarray

    def __iter__(self) -> Iterator[Any]:
        return iter((self.header, self.events, self.keys))


def _key_map(keys: Iterable[bytes] | Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    if isinstance(keys, Mapping):
        return dict(keys)
    found: dict[bytes, bytes] = {}
    for key in keys:
        if len(key) != KEY_BYTES:
            raise KeyFormatError(f"expected {KEY_BYTES}-byte keys, found one of {len(key)} bytes")
        found[key_id(key)] = key
    return found


def decode_segment(blob: bytes, keys: Iterable[bytes] | Mapping[bytes, bytes], path: str = "<segment>") -> SegmentData:
    """Verify and decrypt one segment's bytes; raises a :class:`SegmentError` naming ``path``."""
    header = _unpack_header(blob, path)
    actual = len(blob) - HEADER_BYTES
    if actual != header.body_len:
        what = "truncated" if actual < header.body_len else "has trailing data"
        raise SegmentTruncatedError(path, f"{what}: the header announces {header.body_len} body bytes, found {actual}")
    key = _key_map(keys).get(header.key_id)
    if key is None:
        raise UnknownKeyError(
            path, f"encrypted with key id {header.key_id.hex()}, which none of the given keys has; pass that key (--key-file)"
        )
    try:
        payload = AESGCM(key).decrypt(header.nonce, blob[HEADER_BYTES:], blob[:HEADER_BYTES])
    except InvalidTag:
        raise SegmentTamperedError(
            path, "authentication failed: the segment or its header was modified, or it was encrypted with another key"
        ) from None
    name = os.path.basename(path)
    parsed = parse_segment_name(name)
    if parsed is not None and parsed != (header.created_ns, header.first_seq):
        raise SegmentTamperedError(path, "the file name does not match its authenticated header (the file was renamed)")
    events, raw_keys = _decode_payload(payload, header, path)
    seqs = numpy.arange(header.first_seq, header.first_seq + header.count, dtype=numpy.uint64)
    return SegmentData(header, events, raw_keys, seqs)


def _decode_payload(payload: bytes, header: SegmentHeader, path: str) -> tuple[numpy.ndarray, list[bytes | None] | None]:
    arrow = _arrow()
    try:
        table = arrow.ipc.open_stream(arrow.pa.py_buffer(payload)).read_all()
    except (arrow.pa.ArrowException, OSError) as exc:
        raise SegmentFormatError(path, f"authenticated payload is not a readable Arrow IPC stream ({exc.__class__.__name__})") from None
    expected = arrow.schema_with_keys if header.raw_keys else arrow.schema
    if not table.schema.equals(expected):
        raise SegmentFormatError(path, f"payload columns {table.schema.names} do not match the header (expected {expected.names})")
    if table.num_rows != header.count or header.last_seq != header.first_seq + header.count - 1:
        raise SegmentFormatError(path, f"payload has {table.num_rows} events, the header announces {header.count}")
    events = numpy.empty(table.num_rows, dtype=EVENT_DTYPE)
    for name, _kind in EVENT_COLUMNS:
        events[name] = table.column(name).to_numpy()
    raw_keys = table.column(KEY_COLUMN).to_pylist() if header.raw_keys else None
    return events, raw_keys


# ---------------------------------------------------------------------------- directories


def list_segments(directory: str | os.PathLike[str]) -> list[str]:
    """Segment file names in ``directory``, oldest first. Temp files and other names are ignored."""
    names = [name for name in os.listdir(directory) if SEGMENT_NAME_RE.fullmatch(name)]
    return sorted(names)


def _read_file(dir_fd: int, name: str, path: str) -> bytes:
    """The whole file ``name`` under ``dir_fd``: never through a symbolic link, regular files only."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SegmentFormatError(path, "is a symbolic link; segments are never read through links") from None
        raise SegmentFormatError(path, f"cannot be opened ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SegmentFormatError(path, "is not a regular file")
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, max(info.st_size, HEADER_BYTES))
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def to_epoch_ns(since: float | dt.datetime | None) -> int | None:
    """``since`` (epoch seconds or a datetime; naive means UTC) as epoch nanoseconds."""
    if since is None:
        return None
    if isinstance(since, dt.datetime):
        moment = since if since.tzinfo is not None else since.replace(tzinfo=dt.UTC)
        return int(moment.timestamp() * NS_PER_SECOND)
    return int(float(since) * NS_PER_SECOND)


def parse_since(text: str) -> float:
    """Epoch seconds from ``text``: a number (epoch seconds) or an ISO 8601 time (naive means UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected epoch seconds or an ISO 8601 time (2026-01-31T12:00:00Z), found {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def read_segments(
    directory: str | os.PathLike[str],
    keys: Iterable[bytes] | Mapping[bytes, bytes],
    since: float | dt.datetime | None = None,
    on_error: Callable[[SegmentError], None] | None = None,
    names: Iterable[str] | None = None,
) -> Iterator[SegmentData]:
    """Verified segments of ``directory``, oldest first, as ``(header, events, keys)``.

    ``names``: only these segment files (of :func:`list_segments`), in that order.

    ``keys``: every key that may have written a segment (rotation: old and new); each
    segment is decrypted with the one whose id its header names. ``since`` (epoch seconds
    or a datetime) keeps events at or after that time; segments written before it are not
    opened. A segment that fails verification is passed to ``on_error`` and skipped, or,
    without ``on_error``, raised; its data is never yielded.
    """
    key_map = _key_map(keys)
    since_ns = to_epoch_ns(since)
    root = Path(directory)
    dir_fd = os.open(root, _DIR_FLAGS)
    try:
        if names is None:
            chosen = list_segments(root)
        else:
            listed = set(list_segments(root))
            chosen = [name for name in names if name in listed]
        for name in chosen:
            parsed = parse_segment_name(name)
            assert parsed is not None
            if since_ns is not None and parsed[0] < since_ns:
                continue
            path = str(root / name)
            try:
                data = decode_segment(_read_file(dir_fd, name, path), key_map, path)
            except SegmentError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                continue
            if since_ns is not None:
                keep = data.events["ts_ns"] >= since_ns
                if not keep.all():
                    kept_keys = [k for k, m in zip(data.keys, keep) if m] if data.keys is not None else None
                    data = SegmentData(data.header, data.events[keep], kept_keys, data.seqs[keep])
            if data.events.shape[0]:
                yield data
    finally:
        os.close(dir_fd)


def event_records(data: SegmentData) -> Iterator[dict[str, Any]]:
    """One plain dict per event (for JSON lines and tables): names instead of codes.

    A raw key (only in segments written with store_raw_keys) is given as base64 in
    ``key_b64``, since keys are arbitrary bytes.
    """
    header = data.header
    events = data.events
    for index in range(events.shape[0]):
        row = events[index]
        ts_ns = int(row["ts_ns"])
        record: dict[str, Any] = {
            "segment": header.name,
            "stream": header.stream_id.hex(),
            "seq": int(data.seqs[index]),
            "ts_ns": ts_ns,
            "time": dt.datetime.fromtimestamp(ts_ns / NS_PER_SECOND, dt.UTC).isoformat(timespec="microseconds"),
            "op": OP_NAMES.get(int(row["op"]), str(int(row["op"]))),
            "result": RESULT_NAMES.get(int(row["result"]), str(int(row["result"]))),
            "tenant": int(row["tenant"]),
            "size": int(row["size"]),
            "fp": f"{int(row['fp']):016x}",
        }
        if data.keys is not None:
            raw = data.keys[index]
            record["key_b64"] = None if raw is None else base64.b64encode(raw).decode("ascii")
        yield record
