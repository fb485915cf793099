# SPDX-License-Identifier: Apache-2.0
"""Security of the exported access log (issue 5): no key or fingerprint readable in a
segment, traversal and symlinks refused in config and at runtime, every tampering
(a flipped byte in body or header, truncation, renaming, a wrong key) detected and
reported by the reader and by ``predis-agent data read`` (exit 2), and the encryption
key never shown in status, errors or logs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy
import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.config import load_config
from agent.errors import ConfigError
from agent.mlops import dataset
from agent.mlops.dataset import (
    HEADER_BYTES,
    SegmentError,
    SegmentFormatError,
    SegmentTamperedError,
    SegmentTruncatedError,
    UnknownKeyError,
    decode_segment,
    key_id,
    list_segments,
    read_segments,
)
from cache_core.access_log import AccessLog
from cache_core.cache import Cache
from plugins.collectors.access_log import AccessLogExporter

KEY = bytes(range(1, 33))
SECRET_KEY_BYTES = b"customer:4711:credit-card-profile"
# Offsets of header fields (agent/mlops/dataset.py HEADER "<4sHH8s8s12sQQQqQ").
OFF_MAGIC, OFF_NONCE, OFF_FIRST, OFF_CREATED, OFF_BODY_LEN = 0, 24, 36, 60, 68


def section(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "enabled": True,
        "store_raw_keys": False,
        "export_dir": str(tmp_path / "export"),
        "encryption_key": KEY.hex(),
        "segment_max_events": 1000,
        "min_free_bytes": 0,
        "min_free_percent": 0,
        "retention_max_bytes": 1 << 40,
        "retention_max_age_seconds": 7 * 86400,
        "retry_max_seconds": 60,
    }
    base.update(overrides)
    return base


def export_from_cache(tmp_path: Path, raw_keys: bool) -> tuple[Path, int]:
    """Real cache traffic on SECRET_KEY_BYTES through the ring into one segment; returns (file, fingerprint)."""
    ring = AccessLog(1024, store_raw_keys=raw_keys)
    cache = Cache(numpy, max_keys=64, max_memory_bytes=1 << 16, access_hook=ring.hook)
    cache.set(SECRET_KEY_BYTES, b"value-of-the-secret-key")
    assert cache.get(SECRET_KEY_BYTES) == b"value-of-the-secret-key"
    cache.get(b"another-key")
    fp = int(cache.fp.fingerprint(SECRET_KEY_BYTES)[1])
    assert int(ring.read(0).events["fp"][0]) == fp
    AccessLogExporter(lambda: ring, lambda: section(tmp_path, store_raw_keys=raw_keys)).flush()
    target = tmp_path / "export"
    (name,) = list_segments(target)
    return target / name, fp


def fingerprint_spellings(fp: int) -> list[bytes]:
    return [struct.pack("<Q", fp), struct.pack(">Q", fp), f"{fp:016x}".encode(), str(fp).encode()]


@pytest.mark.parametrize("raw_keys", [False, True], ids=["fingerprints-only", "raw-keys"])
def test_no_plaintext_key_or_fingerprint_in_a_segment_file(tmp_path: Path, raw_keys: bool) -> None:
    path, fp = export_from_cache(tmp_path, raw_keys)
    blob = path.read_bytes()
    assert SECRET_KEY_BYTES not in blob and b"customer" not in blob
    for spelling in fingerprint_spellings(fp):
        assert spelling not in blob
    (segment,) = read_segments(path.parent, [KEY])
    assert int(segment.events["fp"][0]) == fp  # the data is there, only encrypted
    if raw_keys:
        assert segment.keys is not None and segment.keys[0] == SECRET_KEY_BYTES
    else:
        assert segment.keys is None and not segment.header.raw_keys


def test_without_raw_keys_not_even_the_decrypted_payload_holds_a_key(tmp_path: Path) -> None:
    path, _fp = export_from_cache(tmp_path, raw_keys=False)
    blob = path.read_bytes()
    header = dataset._unpack_header(blob, str(path))
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    payload = AESGCM(KEY).decrypt(header.nonce, blob[HEADER_BYTES:], blob[:HEADER_BYTES])
    assert SECRET_KEY_BYTES not in payload and b"customer" not in payload


# ----------------------------------------------------------------------------- config and runtime confinement


@pytest.mark.parametrize(
    "export_dir",
    ["/var/lib/predis/../../etc", "/tmp/x/..", "/../etc", "relative/dir", "./export", "../export", ""],
)
def test_config_validate_rejects_traversal_and_relative_export_dirs(tmp_path: Path, export_dir: str) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({"collectors": {"access_log": {"enabled": True, "export_dir": export_dir}}}))
    result = CliRunner().invoke(cli, ["config", "validate", str(config)])
    assert result.exit_code == 2, result.output
    assert "collectors.access_log.export_dir" in result.stderr
    with pytest.raises(ConfigError):
        load_config(str(config))


@pytest.mark.parametrize("export_dir", ["/var/lib/predis/access-log", "/srv/a..b/x", None])
def test_config_validate_accepts_plain_absolute_export_dirs(tmp_path: Path, export_dir: str | None) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({"collectors": {"access_log": {"export_dir": export_dir}}}))
    assert load_config(str(config)).get("collectors.access_log.export_dir") == export_dir


def refused(tmp_path: Path, export_dir: str) -> AccessLogExporter:
    ring = AccessLog(1024)
    ring.append(1, numpy.arange(5, dtype=numpy.uint64), numpy.zeros(5, numpy.uint8), numpy.ones(5, numpy.int64))
    ex = AccessLogExporter(lambda: ring, lambda: section(tmp_path, export_dir=export_dir))
    assert ex.flush() == "refused"
    assert ex.status()["paused"] is True and ex.totals()["pending"] == 5  # nothing lost: events wait
    return ex


def test_runtime_refuses_an_export_dir_that_is_a_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    ex = refused(tmp_path, str(tmp_path / "link"))
    assert "symbolic link" in ex.reason and "real directory" in ex.reason  # type: ignore[operator]
    assert list(elsewhere.iterdir()) == []


def test_runtime_refuses_an_export_dir_below_a_symlinked_parent(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "parent").symlink_to(elsewhere)
    ex = refused(tmp_path, str(tmp_path / "parent" / "export"))
    assert "symbolic link" in ex.reason  # type: ignore[operator]
    assert list(elsewhere.iterdir()) == []  # not even created


def test_runtime_refuses_a_dangling_symlink_and_a_file(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    refused(tmp_path, str(tmp_path / "dangling"))
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "file").write_text("x")
    assert "not a directory" in refused(tmp_path, str(tmp_path / "file")).reason  # type: ignore[operator]


@pytest.mark.parametrize("export_dir", ["relative", "/tmp/a/../b", "/tmp/\x00x"])
def test_runtime_refuses_traversal_even_when_the_schema_is_bypassed(tmp_path: Path, export_dir: str) -> None:
    refused(tmp_path, export_dir)


def test_a_symlink_swapped_in_after_start_is_refused_on_the_next_cycle(tmp_path: Path) -> None:
    ring = AccessLog(1024)
    ex = AccessLogExporter(lambda: ring, lambda: section(tmp_path))
    assert ex.flush() == "exporting"
    shutil.rmtree(tmp_path / "export")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "export").symlink_to(tmp_path / "elsewhere")
    ring.append(1, numpy.arange(5, dtype=numpy.uint64), numpy.zeros(5, numpy.uint8), numpy.ones(5, numpy.int64))
    assert ex.flush() == "refused" and list((tmp_path / "elsewhere").iterdir()) == []


def test_segment_named_links_and_directories_are_refused_and_never_followed(tmp_path: Path) -> None:
    path, _fp = export_from_cache(tmp_path, raw_keys=False)
    outside = tmp_path / "outside.bin"
    shutil.copy(path, outside)
    link = path.parent / dataset.segment_name(1, 0)
    link.symlink_to(outside)
    (path.parent / dataset.segment_name(2, 0)).mkdir()
    errors: list[SegmentError] = []
    good = list(read_segments(path.parent, [KEY], on_error=errors.append))
    assert [s.header.name for s in good] == [path.name]
    assert [type(e) for e in errors] == [SegmentFormatError, SegmentFormatError]
    assert any("symbolic link" in str(e) and link.name in str(e) for e in errors)
    # Retention by age removes old names, but never through a link: the outside file stays.
    ring = AccessLog(16)
    AccessLogExporter(lambda: ring, lambda: section(tmp_path, retention_max_age_seconds=60)).flush()
    assert outside.exists()


# ----------------------------------------------------------------------------- tampering


@pytest.fixture
def segments(tmp_path: Path) -> Path:
    ring = AccessLog(1024)
    ex = AccessLogExporter(lambda: ring, lambda: section(tmp_path))
    for start in (0, 10, 20):
        ring.append(1, numpy.arange(start, start + 10, dtype=numpy.uint64), numpy.zeros(10, numpy.uint8), numpy.ones(10, numpy.int64))
        ex.flush()
    target = tmp_path / "export"
    assert len(list_segments(target)) == 3
    return target


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


TAMPERINGS = {
    "ciphertext": (lambda p: flip(p, HEADER_BYTES + 5), SegmentTamperedError, "authentication failed"),
    "tag": (lambda p: flip(p, p.stat().st_size - 1), SegmentTamperedError, "authentication failed"),
    "header-nonce": (lambda p: flip(p, OFF_NONCE), SegmentTamperedError, "authentication failed"),
    "header-first-seq": (lambda p: flip(p, OFF_FIRST), SegmentTamperedError, "authentication failed"),
    "header-created": (lambda p: flip(p, OFF_CREATED), SegmentTamperedError, "authentication failed"),
    "header-magic": (lambda p: flip(p, OFF_MAGIC), SegmentFormatError, "not an access-log segment"),
    "header-length": (lambda p: flip(p, OFF_BODY_LEN), SegmentTruncatedError, "body bytes"),
    "truncated-body": (lambda p: p.write_bytes(p.read_bytes()[:-7]), SegmentTruncatedError, "truncated"),
    "truncated-header": (lambda p: p.write_bytes(p.read_bytes()[:30]), SegmentTruncatedError, "truncated"),
    "empty": (lambda p: p.write_bytes(b""), SegmentTruncatedError, "truncated"),
    "appended": (lambda p: p.write_bytes(p.read_bytes() + b"x"), SegmentTruncatedError, "trailing data"),
}


@pytest.mark.parametrize("how", sorted(TAMPERINGS))
def test_a_tampered_segment_fails_verification_and_yields_nothing(segments: Path, how: str) -> None:
    change, error, text = TAMPERINGS[how]
    victim = segments / list_segments(segments)[1]
    change(victim)
    with pytest.raises(error, match=text) as caught:
        list(read_segments(segments, [KEY]))
    assert caught.value.path == str(victim) and victim.name in str(caught.value)
    errors: list[SegmentError] = []
    good = list(read_segments(segments, [KEY], on_error=errors.append))
    assert [s.header.first_seq for s in good] == [0, 20] and len(errors) == 1


def test_a_renamed_segment_fails_verification(segments: Path) -> None:
    names = list_segments(segments)
    created, _first = dataset.parse_segment_name(names[0])  # type: ignore[misc]
    moved = segments / dataset.segment_name(created, 999)
    os.rename(segments / names[0], moved)
    with pytest.raises(SegmentTamperedError, match="renamed"):
        list(read_segments(segments, [KEY]))


def test_headers_swapped_between_segments_fail_verification(segments: Path) -> None:
    a, b = (segments / n for n in list_segments(segments)[:2])
    blob_a, blob_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(blob_b[:HEADER_BYTES] + blob_a[HEADER_BYTES:])
    with pytest.raises(SegmentError):
        decode_segment(a.read_bytes(), [KEY], str(a))


def test_a_wrong_key_fails(segments: Path) -> None:
    wrong = bytes(32)
    with pytest.raises(UnknownKeyError, match=key_id(KEY).hex()):
        list(read_segments(segments, [wrong]))
    path = segments / list_segments(segments)[0]
    with pytest.raises(SegmentTamperedError, match="another key"):  # a key filed under the right id
        decode_segment(path.read_bytes(), {key_id(KEY): wrong}, str(path))


def test_data_read_exits_2_and_names_the_tampered_segment(segments: Path, tmp_path: Path) -> None:
    victim = segments / list_segments(segments)[2]
    flip(victim, HEADER_BYTES + 3)
    key_file = tmp_path / "key"
    key_file.write_text(KEY.hex())
    result = CliRunner().invoke(cli, ["data", "read", str(segments), "--key-file", str(key_file), "--json"])
    assert result.exit_code == 2
    assert victim.name in result.stderr and "authentication failed" in result.stderr
    seqs = [json.loads(line)["seq"] for line in result.stdout.splitlines()]
    assert seqs == list(range(20))  # the intact segments only


def test_data_read_with_a_wrong_key_exits_2(segments: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(bytes(32).hex())
    result = CliRunner().invoke(cli, ["data", "read", str(segments), "--key-file", str(key_file)])
    assert result.exit_code == 2 and result.stdout == "" and result.stderr.count("key id") == 3


def test_data_read_accepts_old_keys_after_rotation(segments: Path, tmp_path: Path) -> None:
    (tmp_path / "old").write_text(KEY.hex())
    (tmp_path / "new").write_text(bytes(range(50, 82)).hex())
    result = CliRunner().invoke(
        cli, ["data", "read", str(segments), "--key-file", str(tmp_path / "new"), "--key-file", str(tmp_path / "old"), "--json"]
    )
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 30


# ----------------------------------------------------------------------------- the key stays secret


def test_a_bad_key_file_is_refused_without_echoing_its_content(segments: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("hunter2-this-is-not-a-key")
    result = CliRunner().invoke(cli, ["data", "read", str(segments), "--key-file", str(key_file)])
    assert result.exit_code == 2 and "not an AES-256 key" in result.stderr
    assert "hunter2" not in result.output and "hunter2" not in result.stderr


def test_the_key_never_appears_in_status_errors_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = section(tmp_path)
    ring = AccessLog(1024)
    ring.append(1, numpy.arange(5, dtype=numpy.uint64), numpy.zeros(5, numpy.uint8), numpy.ones(5, numpy.int64))
    seen: list[str] = []

    def failing(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device", str(path))

    ex = AccessLogExporter(lambda: ring, lambda: cfg, writer=failing, on_status=lambda s: seen.append(json.dumps(s)))
    ex.flush()
    cfg["encryption_key"] = KEY.hex()[:-2]  # now invalid
    ex.flush()
    cfg["export_dir"] = str(tmp_path / "a" / ".." / "b")
    ex.flush()
    text = "\n".join(seen) + caplog.text + json.dumps(ex.status()) + str(ex.reason)
    for spelling in (KEY.hex(), KEY.hex()[:-2], KEY.hex().upper(), KEY.decode("latin-1")):
        assert spelling not in text
    assert key_id(KEY).hex() in "\n".join(seen)  # only the key id is shown
