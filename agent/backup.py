# SPDX-License-Identifier: Apache-2.0
"""Backup and restore of the whole agent state, as one tar.gz with a manifest of checksums.

What a backup holds (archive member names; every part is absent when the agent has none):

=========================  ====================================================================
``MANIFEST.json``          format, versions (agent, Python, SQLite), where each part came from,
                           the sha256 and size of every other member
``config/agent.yaml``      the config file, byte for byte (absent on the embedded default)
``tokens.json``            ``agent.auth.token_store`` (hashed tokens)
``registry.tar.gz``        ``mlops.registry_dir``, written by the registry's own backup
                           (:func:`agent.mlops.registry.backup_create`: aliases and audit log
                           read under the tenant lock)
``history.sqlite3``        ``console.history_path``, copied with SQLite's online backup API:
                           one consistent snapshot while the agent keeps writing
``spool/<sink>/...``       ``agent.sinks.spool_dir``: payloads queued for the exporters
``dead-letters/<sink>/..`` ``agent.sinks.dead_letter_dir``
``files/<n>-<name>``       every file the config names in a ``${file:/path}`` reference (the
                           access log's ``encryption_key``, passwords, API keys) and the TLS
                           certificates and keys (``agent.http.tls``, ``cache.resp.tls``)
=========================  ====================================================================

A restore goes only into an empty (or absent) directory. Every member is checked before
anything is written: regular files only (no link, device or directory entry), no absolute
name, no ``..``, no name twice, nothing the manifest does not list and nothing it lists
missing. Files are written 0600 under directories 0700 and checked against the manifest's
sha256; on any failure the target is left empty (or absent) again. The target then holds the
same names (the registry unpacked into ``models/``) and ``agent.yaml``: the config with every
one of those paths pointing into the target, so that ``predis-agent run --config
<target>/agent.yaml`` serves from the restored files. Listen addresses, ``agent.pid_file``,
``agent.log.file.path`` and ``collectors.access_log.export_dir`` are kept as they were. The
agent's local token (``agent.auth.local_token_file``) is not backed up: the restored config puts
it at ``<target>/local-token`` (unless it was off), where the restored agent writes a new one.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent import __version__
from agent.config import _REF_RE, load_yaml
from agent.errors import AgentError
from agent.mlops import registry as model_registry
from cache_core.files import atomic_file, fsync_dir

FORMAT = "predis-agent-state"
FORMAT_VERSION = 1
MANIFEST_FILE = "MANIFEST.json"
CONFIG_MEMBER = "config/agent.yaml"
TOKENS_MEMBER = "tokens.json"
REGISTRY_MEMBER = "registry.tar.gz"
HISTORY_MEMBER = "history.sqlite3"
# Where the restored config puts the agent's local token (agent.auth.local_token_file): not
# backed up (a new one is written at every start), but kept apart from the original agent's.
LOCAL_TOKEN_NAME = "local-token"
SPOOL_DIR = "spool"
DEAD_LETTER_DIR = "dead-letters"
FILES_DIR = "files"
RESTORED_CONFIG = "agent.yaml"
RESTORED_REGISTRY = "models"
FILE_MODE = 0o600
DIR_MODE = 0o700
COPY_CHUNK_BYTES = 1 << 20
# spool/<sink>/quarantine/<file> is the deepest a spool or dead-letter tree goes.
MAX_TREE_PARTS = 4
# A name part of a member: what sink names and the agent's own file names are made of.
SAFE_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+=-]{0,254}")
# The part of a file's own name kept in its member name under files/.
FILE_NAME_KEEP_CHARS = 100
UNSAFE_NAME_CHARS_RE = re.compile(r"[^A-Za-z0-9_.-]")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# What reading a damaged or truncated tar.gz raises.
UNREADABLE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)

# Plain path settings whose files a backup carries (secret references are found anywhere).
FILE_SETTINGS = (
    "agent.http.tls.cert_file",
    "agent.http.tls.key_file",
    "cache.resp.tls.cert_file",
    "cache.resp.tls.key_file",
)
# Directory settings copied as trees: (setting, member directory).
TREE_SETTINGS = (("agent.sinks.spool_dir", SPOOL_DIR), ("agent.sinks.dead_letter_dir", DEAD_LETTER_DIR))


class BackupError(AgentError):
    """A backup cannot be made, or an archive is refused (nothing restored)."""


@dataclass
class StateSources:
    """Where a running agent keeps its state, from its effective config."""

    config_path: Path | None
    config_text: str
    token_store: Path
    registry_dir: Path
    history_path: Path | None
    trees: dict[str, Path | None]
    file_settings: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config_path: str | None, config_text: str, get: Callable[[str], Any], registry_dir: str | None = None) -> StateSources:
        def path_of(setting: str) -> Path | None:
            value = get(setting)
            return _absolute(value) if value else None

        token_store = path_of("agent.auth.token_store")
        registry = _absolute(registry_dir) if registry_dir else path_of("mlops.registry_dir")
        if token_store is None or registry is None:
            raise BackupError("agent.auth.token_store and mlops.registry_dir must be set")
        files = {setting: path for setting in FILE_SETTINGS if (path := path_of(setting)) is not None}
        return cls(
            config_path=_absolute(config_path) if config_path else None,
            config_text=config_text,
            token_store=token_store,
            registry_dir=registry,
            history_path=path_of("console.history_path"),
            trees={setting: path_of(setting) for setting, _ in TREE_SETTINGS},
            file_settings=files,
        )


def _absolute(value: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(value))))


def _now() -> str:
    return time.strftime(TIME_FORMAT, time.gmtime())


def _file_references(config_text: str) -> list[str]:
    """The paths of every ``${file:...}`` reference in the config, in order, each once."""
    raw = load_yaml(config_text) if config_text.strip() else None
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            for match in _REF_RE.finditer(value):
                if match.group(1) == "file" and match.group(2) not in found:
                    found.append(match.group(2))

    walk(raw)
    return found


def _read_regular(path: Path, *, follow: bool) -> bytes | None:
    """A regular file's bytes; None when it does not exist. ``follow``: a symlink to a
    regular file is read (key files may be links); otherwise a symlink is refused."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackupError(f"{path}: {exc.strerror or exc} (a symlink is refused)") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise BackupError(f"{path} is not a regular file")
        return handle.read()


def _tree_files(root: Path, prefix: str, skipped: list[str]) -> Iterator[tuple[str, Path]]:
    """(member name, path) of the regular files under ``root``; links are never followed,
    temp files of interrupted writes (dot names) are left out."""
    if root.is_symlink():
        raise BackupError(f"{root} is a symlink; refused")
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).parts
            if name.startswith("."):
                continue
            if not 2 <= len(rel) < MAX_TREE_PARTS or not all(SAFE_PART_RE.fullmatch(part) for part in rel):
                skipped.append(f"{path}: name or depth not kept by a backup")
                continue
            if stat.S_ISREG(os.lstat(path).st_mode):
                yield "/".join((prefix, *rel)), path


class _Writer:
    """Members of one archive, each hashed into the manifest as it is added."""

    def __init__(self, archive: tarfile.TarFile) -> None:
        self.archive = archive
        self.files: dict[str, dict[str, Any]] = {}
        self.mtime = int(time.time())

    def _info(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = FILE_MODE
        info.mtime = self.mtime
        return info

    def add_bytes(self, name: str, data: bytes) -> None:
        self.archive.addfile(self._info(name, len(data)), io.BytesIO(data))
        self.files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    def add_file(self, name: str, path: Path) -> None:
        """A file nobody else writes (a copy made for this backup)."""
        size = path.stat().st_size
        digest = model_registry.sha256_file(path)
        with open(path, "rb") as handle:
            self.archive.addfile(self._info(name, size), handle)
        self.files[name] = {"sha256": digest, "size": size}


def _copy_history(source: Path, copy: Path) -> bool:
    """Copy the SQLite history with the online backup API; False when there is none yet."""
    try:
        info = os.lstat(source)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode):
        raise BackupError(f"console.history_path {source} is a symlink or not a regular file; refused")
    uri = "file:" + urllib.parse.quote(str(source)) + "?mode=rw"
    try:
        src = sqlite3.connect(uri, uri=True)
        try:
            dst = sqlite3.connect(copy)
            try:
                src.backup(dst)
                check = dst.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(f"console.history_path {source}: {exc}") from None
    if check != "ok":
        raise BackupError(f"console.history_path {source}: the copy fails SQLite's quick_check ({check})")
    os.chmod(copy, FILE_MODE)
    return True


def _member_for_file(index: int, path: str) -> str:
    name = UNSAFE_NAME_CHARS_RE.sub("_", os.path.basename(path))[:FILE_NAME_KEEP_CHARS].lstrip(".") or "file"
    return f"{FILES_DIR}/{index}-{name}"


def _add_named_files(writer: _Writer, sources: StateSources, skipped: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Add the files the config names (``${file:...}`` references, TLS files) under files/;
    return {referenced path: member} and {setting: member}. A file named twice is stored once."""
    references: dict[str, str] = {}
    file_settings: dict[str, str] = {}
    members_by_path: dict[str, str] = {}
    wanted: list[tuple[str, str | None]] = [(ref, None) for ref in _file_references(sources.config_text)]
    wanted += [(str(path), setting) for setting, path in sources.file_settings.items()]
    for path_text, file_setting in wanted:
        member = members_by_path.get(path_text)
        if member is None:
            data = _read_regular(Path(path_text), follow=True)
            if data is None:
                skipped.append(f"{file_setting or '${file:' + path_text + '}'}: {path_text} does not exist")
                continue
            member = _member_for_file(len(members_by_path) + 1, path_text)
            writer.add_bytes(member, data)
            members_by_path[path_text] = member
        if file_setting is None:
            references[path_text] = member
        else:
            file_settings[file_setting] = member
    return references, file_settings


def create(sources: StateSources, out_file: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the whole state to ``out_file`` (tar.gz, 0600); return its manifest.

    Safe while the agent runs: the history is copied with SQLite's backup API, the registry
    under its tenant locks, spool files are whole (they are renamed into place) and one that
    is delivered meanwhile is left out. Parts the agent does not have are left out and named
    in the manifest's ``skipped``.
    """
    target = _absolute(out_file)
    for setting, root in [("mlops.registry_dir", sources.registry_dir), *((s, p) for s, p in sources.trees.items() if p)]:
        if root is not None and (target == root or root in target.parents):
            raise BackupError(f"backup file {target} must be outside {setting} {root}")
    skipped: list[str] = []
    parts: dict[str, Any] = {}
    sources_out: dict[str, str | None] = {}
    with tempfile.TemporaryDirectory(prefix="predis-backup-") as scratch, atomic_file(target, FILE_MODE, dir_mode=None) as handle:
        with tarfile.open(fileobj=handle, mode="w:gz") as archive:
            writer = _Writer(archive)
            if sources.config_path is not None:
                writer.add_bytes(CONFIG_MEMBER, sources.config_text.encode("utf-8"))
                parts["config"] = CONFIG_MEMBER
            sources_out["config"] = str(sources.config_path) if sources.config_path else None

            tokens = _read_regular(sources.token_store, follow=False)
            if tokens is not None:
                writer.add_bytes(TOKENS_MEMBER, tokens)
                parts["token_store"] = TOKENS_MEMBER
            else:
                skipped.append(f"agent.auth.token_store {sources.token_store}: no token store")
            sources_out["token_store"] = str(sources.token_store)

            if sources.registry_dir.is_dir():
                nested = Path(scratch) / REGISTRY_MEMBER
                registry_manifest = model_registry.backup_create(sources.registry_dir, nested)
                writer.add_file(REGISTRY_MEMBER, nested)
                parts["registry"] = REGISTRY_MEMBER
                parts["registry_files"] = len(registry_manifest["files"])
            else:
                skipped.append(f"mlops.registry_dir {sources.registry_dir}: no registry")
            sources_out["registry_dir"] = str(sources.registry_dir)

            if sources.history_path is not None:
                copy = Path(scratch) / HISTORY_MEMBER
                if _copy_history(sources.history_path, copy):
                    writer.add_file(HISTORY_MEMBER, copy)
                    parts["history"] = HISTORY_MEMBER
                else:
                    skipped.append(f"console.history_path {sources.history_path}: no history yet")
            sources_out["history_path"] = str(sources.history_path) if sources.history_path else None

            for setting, member_dir in TREE_SETTINGS:
                tree = sources.trees.get(setting)
                sources_out[setting] = str(tree) if tree else None
                if tree is None:
                    continue
                count = 0
                for name, path in _tree_files(tree, member_dir, skipped):
                    data = _read_regular(path, follow=False)
                    if data is None:
                        continue  # delivered (and removed) since the directory was listed
                    writer.add_bytes(name, data)
                    count += 1
                parts[setting] = {"dir": member_dir, "files": count}

            references, file_settings = _add_named_files(writer, sources, skipped)

            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "created_at": _now(),
                "versions": {"agent": __version__, "python": platform.python_version(), "sqlite": sqlite3.sqlite_version},
                "sources": sources_out,
                "parts": parts,
                "references": references,
                "file_settings": file_settings,
                "skipped": skipped,
                "files": dict(sorted(writer.files.items())),
            }
            writer.add_bytes(MANIFEST_FILE, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


# ----------------------------------------------------------------------------- restore
def _check_name(member: tarfile.TarInfo) -> str:
    name = member.name
    if not member.isfile():
        raise BackupError(f"backup member {name!r} is a link, directory, device or other special file; refused")
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise BackupError(f"backup member {name!r} has an absolute or unusual path; refused")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BackupError(f"backup member {name!r} contains '..', '.' or an empty part; refused")
    if name in (MANIFEST_FILE, CONFIG_MEMBER, TOKENS_MEMBER, REGISTRY_MEMBER, HISTORY_MEMBER):
        return name
    if parts[0] in (SPOOL_DIR, DEAD_LETTER_DIR) and 2 < len(parts) <= MAX_TREE_PARTS and all(SAFE_PART_RE.fullmatch(p) for p in parts[1:]):
        return name
    if parts[0] == FILES_DIR and len(parts) == 2 and SAFE_PART_RE.fullmatch(parts[1]):
        return name
    raise BackupError(f"backup member {name!r} is not part of an agent state backup; refused")


@dataclass
class _Opened:
    archive: tarfile.TarFile
    members: dict[str, tarfile.TarInfo]
    manifest: dict[str, Any]
    expected: dict[str, dict[str, Any]]


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    if handle is None:
        raise BackupError(f"backup member {member.name!r} has no data")
    with handle:
        return handle.read()


def _manifest_of(archive: tarfile.TarFile, source: Path) -> Any:
    """The parsed ``MANIFEST.json`` of an archive (None when it has none as a plain file)."""
    try:
        member = archive.getmember(MANIFEST_FILE)
    except KeyError:
        return None
    if not member.isfile():
        return None
    try:
        return json.loads(_read_member(archive, member))
    except ValueError as exc:
        raise BackupError(f"{source}: {MANIFEST_FILE} is unreadable ({exc})") from None


def _is_state_manifest(manifest: Any) -> bool:
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _open(archive: tarfile.TarFile, source: Path) -> _Opened:
    """Check the manifest and every member; nothing is written."""
    manifest = _manifest_of(archive, source)
    if manifest is None:
        raise BackupError(f"{source}: no {MANIFEST_FILE}; not an agent state backup")
    if not _is_state_manifest(manifest):
        raise BackupError(f"{source}: not an agent state backup (a registry-only backup restores with --registry DIR)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(f"{source}: backup format version {manifest.get('format_version')!r}; this agent reads version {FORMAT_VERSION}")
    expected = manifest.get("files")
    if not isinstance(expected, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in expected.values()):
        raise BackupError(f"{source}: {MANIFEST_FILE} has no valid 'files'")
    references, file_settings = manifest.get("references", {}), manifest.get("file_settings", {})
    if not (isinstance(references, dict) and isinstance(file_settings, dict)) or not (
        all(isinstance(k, str) and v in expected and v.startswith(FILES_DIR + "/") for k, v in references.items())
        and all(k in FILE_SETTINGS and v in expected and v.startswith(FILES_DIR + "/") for k, v in file_settings.items())
    ):
        raise BackupError(f"{source}: {MANIFEST_FILE} maps config settings to files it does not hold; refused")
    members: dict[str, tarfile.TarInfo] = {}
    for member in archive.getmembers():
        name = _check_name(member)
        if name in members:
            raise BackupError(f"backup member {name!r} appears twice; refused")
        members[name] = member
    present = set(members) - {MANIFEST_FILE}
    missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
    if missing or extra:
        raise BackupError(
            "backup does not match its manifest: "
            + "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "", f"not in the manifest {', '.join(extra)}" if extra else "") if part)
        )
    return _Opened(archive, members, manifest, expected)


def _extract(opened: _Opened, name: str, target: Path) -> None:
    """Write one member to ``target`` (0600, parents 0700) and check it against the manifest."""
    data = opened.archive.extractfile(opened.members[name])
    if data is None:
        raise BackupError(f"backup member {name!r} has no data")
    digest = hashlib.sha256()
    _make_dirs(target.parent)
    with data, atomic_file(target, FILE_MODE, dir_mode=None) as out:
        for chunk in iter(lambda: data.read(COPY_CHUNK_BYTES), b""):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != opened.expected[name]["sha256"]:
        raise BackupError(f"backup member {name!r} does not match its manifest checksum; refused")


def _make_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents 0700; return those created, outermost first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE)
        os.chmod(directory, DIR_MODE)
    return missing[::-1]


def _check_target(base: Path) -> None:
    """Refuse a target that is not an empty (or absent) directory."""
    if base.is_symlink():
        raise BackupError(f"restore target {base} is a symlink; restore only into an empty directory")
    if base.exists() and (not base.is_dir() or any(base.iterdir())):
        raise BackupError(f"restore target {base} is not an empty directory; restore only into an empty one")


def _open_archive(source: Path) -> tarfile.TarFile:
    if not source.is_file():
        raise BackupError(f"backup file {source} does not exist or is not a file")
    try:
        return tarfile.open(source, mode="r:gz")
    except UNREADABLE as exc:
        raise BackupError(f"{source}: not a readable tar.gz backup ({exc.__class__.__name__}: {exc})") from None


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


def _rewrite_references(value: Any, moved: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _rewrite_references(v, moved) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_references(v, moved) for v in value]
    if isinstance(value, str) and "${" in value:
        def swap(match: re.Match[str]) -> str:
            if match.group(1) == "file" and match.group(2) in moved:
                return "${file:" + moved[match.group(2)] + "}"
            return match.group(0)

        return _REF_RE.sub(swap, value)
    return value


def restored_config(manifest: Mapping[str, Any], config_text: str, base: Path) -> str:
    """The backed-up config with every state path pointing into ``base``."""
    loaded = load_yaml(config_text) if config_text.strip() else None
    raw: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    sources = manifest.get("sources", {})
    raw = _rewrite_references(raw, {path: str(base / member) for path, member in manifest.get("references", {}).items()})
    _set(raw, "agent.auth.token_store", str(base / TOKENS_MEMBER))
    auth = raw.get("agent", {}).get("auth", {}) if isinstance(raw.get("agent"), dict) else {}
    if not (isinstance(auth, dict) and "local_token_file" in auth and auth["local_token_file"] is None):
        _set(raw, "agent.auth.local_token_file", str(base / LOCAL_TOKEN_NAME))
    _set(raw, "mlops.registry_dir", str(base / RESTORED_REGISTRY))
    if sources.get("history_path"):
        _set(raw, "console.history_path", str(base / HISTORY_MEMBER))
    for setting, member_dir in TREE_SETTINGS:
        if sources.get(setting):
            _set(raw, setting, str(base / member_dir))
    for setting, member in manifest.get("file_settings", {}).items():
        _set(raw, setting, str(base / member))
    header = (
        f"# Restored by predis-agent {__version__} from a backup made {manifest.get('created_at')} of "
        f"{sources.get('config') or 'the embedded default config'}; state paths point into {base}.\n"
    )
    return header + yaml.safe_dump(raw, sort_keys=False)


def restore(archive_path: str | os.PathLike[str], target: str | os.PathLike[str]) -> dict[str, Any]:
    """Restore a :func:`create` archive into ``target`` (empty or absent); return the manifest."""
    base = _absolute(target)
    source = Path(archive_path)
    _check_target(base)
    created: list[Path] = []
    with _open_archive(source) as archive:
        try:
            opened = _open(archive, source)
            config_text = ""
            if CONFIG_MEMBER in opened.members:
                data = _read_member(archive, opened.members[CONFIG_MEMBER])
                if hashlib.sha256(data).hexdigest() != opened.expected[CONFIG_MEMBER]["sha256"]:
                    raise BackupError(f"backup member {CONFIG_MEMBER!r} does not match its manifest checksum; refused")
                config_text = data.decode("utf-8")
            created = _make_dirs(base)
            os.chmod(base, DIR_MODE)
            with tempfile.TemporaryDirectory(prefix="predis-restore-") as scratch:
                for name in sorted(opened.expected):
                    if name == CONFIG_MEMBER:
                        continue
                    if name == REGISTRY_MEMBER:
                        nested = Path(scratch) / REGISTRY_MEMBER
                        _extract(opened, name, nested)
                        model_registry.backup_restore(nested, base / RESTORED_REGISTRY)
                        continue
                    _extract(opened, name, base / name)
            with atomic_file(base / RESTORED_CONFIG, FILE_MODE, dir_mode=None) as out:
                out.write(restored_config(opened.manifest, config_text, base).encode("utf-8"))
            fsync_dir(base)
        except UNREADABLE as exc:
            _empty(base, created)
            raise BackupError(f"{source}: not a readable tar.gz backup ({exc.__class__.__name__}: {exc})") from None
        except BaseException:
            _empty(base, created)
            raise
    return opened.manifest


def restore_registry(archive_path: str | os.PathLike[str], registry_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Restore only the model registry, from a whole-state backup or a registry-only one
    (the format of ``backup create --registry-only``); return the registry's manifest."""
    source = Path(archive_path)
    with _open_archive(source) as archive:
        try:
            head = _manifest_of(archive, source)
        except (BackupError, *UNREADABLE):
            head = None  # the registry's own restore says what is wrong with the archive
        if not _is_state_manifest(head):
            return model_registry.backup_restore(source, registry_dir)
        try:
            opened = _open(archive, source)
            if REGISTRY_MEMBER not in opened.members:
                raise BackupError(f"{source}: this backup holds no model registry")
            with tempfile.TemporaryDirectory(prefix="predis-restore-") as scratch:
                nested = Path(scratch) / REGISTRY_MEMBER
                _extract(opened, REGISTRY_MEMBER, nested)
                return model_registry.backup_restore(nested, registry_dir)
        except UNREADABLE as exc:
            raise BackupError(f"{source}: not a readable tar.gz backup ({exc.__class__.__name__}: {exc})") from None


def _empty(base: Path, created: list[Path]) -> None:
    """Remove what a failed restore wrote under ``base``, and the directories it created."""
    if base.is_dir() and not base.is_symlink():
        for entry in base.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()
