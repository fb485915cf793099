# SPDX-License-Identifier: Apache-2.0
"""agent.backup on files alone: what a backup holds, the SQLite copy taken while a writer
holds uncheckpointed WAL pages, the restored config pointing into the target with private
modes, and hostile or damaged archives refused with nothing left behind."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.backup import BackupError, StateSources, create, restore, restore_registry

TOKENS = b'{"version": 1, "tokens": []}\n'
ROWS = 50


def _private(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def state(tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "state"
    key = _private(tmp_path / "keys" / "segment.key", os.urandom(32))
    password = _private(tmp_path / "keys" / "resp password", b"s3cret-password")
    tokens = _private(root / "tokens.json", TOKENS)
    spool = root / "spool"
    _private(spool / "datadog" / "00000000000000000001.json", b'{"kind": "series"}')
    _private(spool / "datadog" / "quarantine" / "00000000000000000000.json", b"not json")
    _private(spool / "datadog" / ".00000000000000000002.json.abcd.tmp", b"half written")
    (spool / "datadog" / "linked.json").symlink_to(key)
    history = root / "history.sqlite3"
    writer = sqlite3.connect(history, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE rounds (id INTEGER PRIMARY KEY, value REAL)")
    writer.executemany("INSERT INTO rounds (value) VALUES (?)", [(float(i),) for i in range(ROWS)])
    config_text = yaml.safe_dump(
        {
            "agent": {"auth": {"token_store": str(tokens)}, "sinks": {"spool_dir": str(spool)}},
            "mlops": {"registry_dir": str(root / "models")},
            "console": {"history_path": str(history)},
            "cache": {"resp": {"requirepass": f"${{file:{password}}}"}},
            "collectors": {"access_log": {"encryption_key": f"${{file:{key}}}", "export_dir": str(root / "segments")}},
            "plugins": {"mine": {"note": f"prefix-${{file:{key}}}-and $${{file:/not/a/reference}}"}},
        }
    )
    config = tmp_path / "agent.yaml"
    config.write_text(config_text)
    settings = {
        "agent.auth.token_store": str(tokens),
        "mlops.registry_dir": str(root / "models"),
        "console.history_path": str(history),
        "agent.sinks.spool_dir": str(spool),
        "agent.sinks.dead_letter_dir": None,
    }
    sources = StateSources.from_config(str(config), config_text, settings.get)
    yield {"sources": sources, "key": key, "password": password, "writer": writer, "history": history, "root": root}
    writer.close()


def test_backup_holds_the_state_and_the_wal_pages_a_writer_has_not_checkpointed(state: dict[str, Any], tmp_path: Path) -> None:
    assert os.path.getsize(str(state["history"]) + "-wal") > 0  # the rows are in the WAL only
    archive = tmp_path / "out" / "state.tar.gz"
    archive.parent.mkdir()
    manifest = create(state["sources"], archive)
    assert _mode(archive) == 0o600
    assert sorted(manifest["files"]) == [
        "config/agent.yaml",
        "files/1-resp_password",
        "files/2-segment.key",
        "history.sqlite3",
        "spool/datadog/00000000000000000001.json",
        "spool/datadog/quarantine/00000000000000000000.json",
        "tokens.json",
    ]
    assert manifest["references"] == {str(state["key"]): "files/2-segment.key", str(state["password"]): "files/1-resp_password"}
    assert any("mlops.registry_dir" in note for note in manifest["skipped"])
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            assert member.isfile() and member.mode == 0o600, member.name
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name != "MANIFEST.json":
                assert hashlib.sha256(data).hexdigest() == manifest["files"][member.name]["sha256"]
            if member.name == "files/2-segment.key":
                assert data == state["key"].read_bytes()

    target = tmp_path / "restored"
    restore(archive, target)
    copy = sqlite3.connect(target / "history.sqlite3")
    try:
        assert copy.execute("SELECT count(*), sum(value) FROM rounds").fetchone() == (ROWS, sum(range(ROWS)))
    finally:
        copy.close()


def test_restored_config_points_into_the_target_with_private_modes(state: dict[str, Any], tmp_path: Path) -> None:
    archive = tmp_path / "state.tar.gz"
    create(state["sources"], archive)
    target = tmp_path / "new" / "home"
    restore(archive, target)
    config = yaml.safe_load((target / "agent.yaml").read_text())
    assert config["agent"]["auth"]["token_store"] == str(target / "tokens.json")
    assert config["agent"]["sinks"]["spool_dir"] == str(target / "spool")
    assert config["console"]["history_path"] == str(target / "history.sqlite3")
    assert config["mlops"]["registry_dir"] == str(target / "models")
    assert config["collectors"]["access_log"]["encryption_key"] == f"${{file:{target / 'files' / '2-segment.key'}}}"
    assert config["cache"]["resp"]["requirepass"] == f"${{file:{target / 'files' / '1-resp_password'}}}"
    assert config["plugins"]["mine"]["note"] == f"prefix-${{file:{target / 'files' / '2-segment.key'}}}-and $${{file:/not/a/reference}}"
    assert config["collectors"]["access_log"]["export_dir"] == str(state["root"] / "segments")
    assert (target / "tokens.json").read_bytes() == TOKENS
    assert (target / "files" / "2-segment.key").read_bytes() == state["key"].read_bytes()
    for path in target.rglob("*"):
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert _mode(target) == 0o700


def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]  # type: ignore[union-attr]


def _write(out: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out


def _with_manifest(members: list[tuple[tarfile.TarInfo, bytes]], change: Callable[[dict[str, Any]], None]) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    for info, data in members:
        if info.name == "MANIFEST.json":
            manifest = json.loads(data)
            change(manifest)
            data = json.dumps(manifest).encode()
        out.append((info, data))
    return out


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, kind: bytes, to: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = to
    return info, b""


def _tamper(name: str) -> Callable[[list[tuple[tarfile.TarInfo, bytes]]], list[tuple[tarfile.TarInfo, bytes]]]:
    return lambda ms: [(i, d + b"!" if i.name == name else d) for i, d in ms]


def _listed(name: str, data: bytes = b"x") -> Callable[[list[tuple[tarfile.TarInfo, bytes]]], list[tuple[tarfile.TarInfo, bytes]]]:
    """Add a member and list it in the manifest, so that only its name or kind is wrong."""

    def change(ms: list[tuple[tarfile.TarInfo, bytes]]) -> list[tuple[tarfile.TarInfo, bytes]]:
        entry = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        return _with_manifest(ms, lambda m: m["files"].__setitem__(name, entry)) + [_file(name, data)]

    return change


HOSTILE: dict[str, tuple[Callable[[list[tuple[tarfile.TarInfo, bytes]]], list[tuple[tarfile.TarInfo, bytes]]], str]] = {
    "symlink": (lambda ms: ms + [_link("tokens.json.bak", tarfile.SYMTYPE, "/etc/passwd")], "link, directory, device"),
    "hard link": (lambda ms: ms + [_link("files/9-x", tarfile.LNKTYPE, "tokens.json")], "link, directory, device"),
    "directory": (lambda ms: ms + [_link("spool/x", tarfile.DIRTYPE, "")], "link, directory, device"),
    "dot-dot": (_listed("spool/../../escape"), "contains '..'"),
    "absolute": (_listed("/tmp/escape"), "absolute"),
    "unknown place": (_listed("etc/cron.d/job"), "not part of an agent state backup"),
    "too deep": (_listed("spool/a/b/c/d"), "not part of an agent state backup"),
    "twice": (lambda ms: ms + [(i, d) for i, d in ms if i.name == "tokens.json"], "appears twice"),
    "not in the manifest": (lambda ms: ms + [_file("files/9-extra")], "not in the manifest files/9-extra"),
    "missing": (lambda ms: [(i, d) for i, d in ms if i.name != "tokens.json"], "missing tokens.json"),
    "changed bytes": (_tamper("history.sqlite3"), "does not match its manifest checksum"),
    "changed config": (_tamper("config/agent.yaml"), "does not match its manifest checksum"),
    "newer format": (lambda ms: _with_manifest(ms, lambda m: m.__setitem__("format_version", 99)), "format version 99"),
    "setting redirected": (
        lambda ms: _with_manifest(ms, lambda m: m["file_settings"].__setitem__("agent.pid_file", "/etc/passwd")),
        "maps config settings to files it does not hold",
    ),
    "reference redirected": (
        lambda ms: _with_manifest(ms, lambda m: m["references"].__setitem__("/x", "tokens.json")),
        "maps config settings to files it does not hold",
    ),
    "no manifest": (lambda ms: [(i, d) for i, d in ms if i.name != "MANIFEST.json"], "no MANIFEST.json"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_or_damaged_archives_restore_nothing(state: dict[str, Any], tmp_path: Path, case: str) -> None:
    good = tmp_path / "good.tar.gz"
    create(state["sources"], good)
    change, message = HOSTILE[case]
    bad = _write(tmp_path / "bad.tar.gz", change(_members(good)))
    absent, empty = tmp_path / "absent" / "deeper", tmp_path / "empty"
    empty.mkdir()
    for target in (absent, empty):
        with pytest.raises(BackupError, match=message.replace("(", r"\(").replace(".", r"\.")):
            restore(bad, target)
    assert not absent.parent.exists() and list(empty.iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_targets_that_are_not_empty_directories_are_refused(state: dict[str, Any], tmp_path: Path) -> None:
    archive = tmp_path / "state.tar.gz"
    create(state["sources"], archive)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    for target, message in ((busy, "not an empty directory"), (archive, "not an empty directory"), (link, "is a symlink")):
        with pytest.raises(BackupError, match=message):
            restore(archive, target)
    assert [p.name for p in busy.iterdir()] == ["keep"] and not (tmp_path / "elsewhere").exists()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(BackupError, match="not a readable tar.gz backup"):
        restore(truncated, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_backup_refuses_a_symlinked_token_store_and_an_archive_inside_the_state(state: dict[str, Any], tmp_path: Path) -> None:
    sources: StateSources = state["sources"]
    with pytest.raises(BackupError, match="must be outside agent.sinks.spool_dir"):
        create(sources, state["root"] / "spool" / "x.tar.gz")
    moved = sources.token_store.with_name("real-tokens.json")
    sources.token_store.rename(moved)
    sources.token_store.symlink_to(moved)
    with pytest.raises(BackupError, match="symlink is refused"):
        create(sources, tmp_path / "state.tar.gz")
    assert not (tmp_path / "state.tar.gz").exists()


def test_registry_restore_of_a_backup_without_a_registry_is_refused(state: dict[str, Any], tmp_path: Path) -> None:
    archive = tmp_path / "state.tar.gz"
    create(state["sources"], archive)
    with pytest.raises(BackupError, match="holds no model registry"):
        restore_registry(archive, tmp_path / "models")
    assert not (tmp_path / "models").exists()
