# SPDX-License-Identifier: Apache-2.0
"""The per-tenant model registry: immutable numbered versions, aliases, an audit log.

Why it looks like this: a prefetch model that reaches production must be traceable (which
data, which metrics, who promoted it and why), must never be half-written, and must be
refused when its bytes changed on disk — a flipped bit in a successor table is a silent
hit-ratio loss, not a crash. So:

* every version is a directory ``<root>/<tenant>/v<N>/`` holding the model artefacts
  (``model.npz`` and, for the mixture, its ``model.<expert>.npz`` siblings), the
  vocabulary (``vocab.npz``) and ``meta.json`` with the sha256 of every artefact. It is
  built in a staging directory next to it (``meta.json`` written last, everything
  fsync'd) and renamed into place, so a reader sees a whole version or none;
* versions are numbered 1, 2, ... per tenant and never reused or rewritten;
* ``aliases.json`` names the ``champion`` and the ``challenger`` (replaced atomically);
  every alias move is appended, fsync'd, to ``audit.jsonl`` (time, alias, from, to,
  reason, actor) — the audit log is also what :meth:`ModelRegistry.rollback` walks;
* version allocation and alias moves hold an exclusive ``flock`` on
  ``<root>/<tenant>/.lock``: two processes registering at once get distinct versions and
  no alias move is lost;
* tenant IDs are validated (:func:`agent.security.validate_tenant_id`) before any path is
  built from them, and every path is confined to the registry root. Files are 0600,
  directories 0700: the vocabulary holds raw keys.

:func:`backup_create` / :func:`backup_restore` move a whole registry as a tar.gz with a
manifest of checksums; restore goes only into an empty directory and refuses members
that are links, devices, absolute paths or contain ``..``.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import getpass
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy

from agent.errors import AgentError, SecurityError
from agent.security import confine, private_dir, validate_tenant_id
from cache_core.files import atomic_file, atomic_write, fsync_dir
from cache_core.models import MODELS, Vocabulary, make_model

MODEL_FILE = "model.npz"
VOCAB_FILE = "vocab.npz"
META_FILE = "meta.json"
ALIASES_FILE = "aliases.json"
AUDIT_FILE = "audit.jsonl"
LOCK_FILE = ".lock"
STAGING_PREFIX = ".staging-"
MANIFEST_FILE = "MANIFEST.json"
ALIASES = ("champion", "challenger")
META_FORMAT = 1
BACKUP_FORMAT = 1
FILE_MODE = 0o600
DIR_MODE = 0o700
HASH_CHUNK_BYTES = 1 << 20
VERSION_DIR_RE = re.compile(r"^v([1-9][0-9]{0,17})$")
# An artefact is one plain file name: no separators, no hidden or special names.
ARTEFACT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Width of the length prefix of each key in the training-data hash.
KEY_LENGTH_BYTES = 8


class RegistryError(AgentError):
    """A registry operation that cannot be done: unknown version, corrupted artefact, bad archive."""


# ----------------------------------------------------------------------------- small helpers
def _now() -> str:
    return time.strftime(TIME_FORMAT, time.gmtime())


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def keys_digest(keys: Iterable[bytes]) -> str:
    """sha256 over the keys, each preceded by its length (8 bytes, little-endian).

    The length prefix makes the digest unambiguous (``[b"ab", b"c"]`` and
    ``[b"a", b"bc"]`` differ), so it identifies the exact training window.
    """
    digest = hashlib.sha256()
    for key in keys:
        digest.update(len(key).to_bytes(KEY_LENGTH_BYTES, "little"))
        digest.update(key)
    return digest.hexdigest()


def _make_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def _write_json(path: Path, value: Any) -> None:
    atomic_write(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{what} {path} is unreadable ({exc.__class__.__name__}: {exc}); restore it from a backup") from exc


def _copy_private(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` (atomically, 0600, fsync'd); a link at ``target`` is refused."""
    with open(source, "rb") as src, atomic_file(target, FILE_MODE, DIR_MODE) as out:
        shutil.copyfileobj(src, out, HASH_CHUNK_BYTES)


# ----------------------------------------------------------------------------- vocabulary files
def save_vocabulary(vocab: Vocabulary, path: str | os.PathLike[str]) -> None:
    """Write the vocabulary's keys, in ID order, as one byte blob plus offsets (no pickle).

    Re-encoding the keys in the same order rebuilds the same IDs and prefix tables, so
    the key list is the whole state.
    """
    blob = b"".join(vocab.keys)
    offsets = numpy.zeros(len(vocab.keys) + 1, dtype=numpy.int64)
    if vocab.keys:
        offsets[1:] = numpy.cumsum([len(k) for k in vocab.keys])
    with atomic_file(path, FILE_MODE, DIR_MODE) as handle:
        numpy.savez(
            handle,
            blob=numpy.frombuffer(blob, dtype=numpy.uint8),
            offsets=offsets,
            capacity=numpy.int64(vocab.capacity),
            full_misses=numpy.int64(vocab.full_misses),
        )


def load_vocabulary(path: str | os.PathLike[str]) -> Vocabulary:
    with numpy.load(Path(path), allow_pickle=False) as data:
        blob = data["blob"].tobytes()
        offsets = data["offsets"].tolist()
        capacity = int(data["capacity"])
        full_misses = int(data["full_misses"])
    if len(offsets) - 1 > capacity or offsets[0] != 0 or offsets[-1] != len(blob):
        raise ValueError(f"{path}: offsets do not match the key blob or exceed the capacity {capacity}")
    vocab = Vocabulary(capacity)
    for start, end in itertools.pairwise(offsets):
        vocab.encode(blob[start:end])
    vocab.full_misses = full_misses
    return vocab


def save_model(model: Any, vocab: Vocabulary, directory: str | os.PathLike[str]) -> list[str]:
    """Write ``model`` and ``vocab`` into ``directory``; return the artefact file names."""
    out = Path(directory)
    _make_dir(out)
    model.save(out / MODEL_FILE)
    save_vocabulary(vocab, out / VOCAB_FILE)
    return sorted(p.name for p in out.iterdir() if p.is_file())


# ----------------------------------------------------------------------------- the registry
class ModelRegistry:
    """Versions, aliases and audit log of every tenant under one root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        raw = os.path.expanduser(str(root))
        if not raw or "\x00" in raw:
            raise SecurityError(f"registry directory {raw!r} is not a usable path")
        self.root = Path(os.path.abspath(raw))

    # -- paths ------------------------------------------------------------------------------
    def _tenant_dir(self, tenant: str) -> Path:
        validate_tenant_id(tenant)
        return confine(self.root, tenant)

    def _version_dir(self, tenant: str, version: int) -> Path:
        return confine(self._tenant_dir(tenant), f"v{int(version)}")

    def _ensure_tenant(self, tenant: str) -> Path:
        path = self._tenant_dir(tenant)
        private_dir(str(self.root), "registry directory")
        _make_dir(path)
        return path

    @contextlib.contextmanager
    def _locked(self, tenant_dir: Path) -> Iterator[None]:
        fd = os.open(tenant_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- reading ----------------------------------------------------------------------------
    def versions(self, tenant: str) -> list[int]:
        path = self._tenant_dir(tenant)
        if not path.is_dir():
            return []
        found = []
        for entry in path.iterdir():
            match = VERSION_DIR_RE.fullmatch(entry.name)
            if match and entry.is_dir() and not entry.is_symlink():
                found.append(int(match.group(1)))
        return sorted(found)

    def aliases(self, tenant: str) -> dict[str, int | None]:
        path = self._tenant_dir(tenant) / ALIASES_FILE
        try:
            raw = _read_json(path, "alias file")
        except FileNotFoundError:
            raw = {}
        if not isinstance(raw, dict):
            raise RegistryError(f"alias file {path} is not a JSON object; restore it from a backup")
        out: dict[str, int | None] = {}
        for alias in ALIASES:
            value = raw.get(alias)
            out[alias] = value if isinstance(value, int) and not isinstance(value, bool) else None
        return out

    def audit(self, tenant: str) -> list[dict[str, Any]]:
        path = self._tenant_dir(tenant) / AUDIT_FILE
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except ValueError as exc:
                raise RegistryError(f"audit log {path}: line {number} is not JSON ({exc}); restore it from a backup") from exc
        return entries

    def meta(self, tenant: str, version: int) -> dict[str, Any]:
        path = self._version_dir(tenant, version)
        if not path.is_dir():
            known = self.versions(tenant)
            raise RegistryError(
                f"tenant {tenant!r} has no version {version}; "
                + (f"known versions: {', '.join(map(str, known))}" if known else "it has no models yet")
            )
        try:
            meta = _read_json(path / META_FILE, "metadata")
        except FileNotFoundError as exc:
            raise RegistryError(f"version {version} of tenant {tenant!r} has no {META_FILE}; restore it from a backup") from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("artefacts"), dict):
            raise RegistryError(f"{path / META_FILE} is not registry metadata (no 'artefacts' checksums); restore it from a backup")
        return meta

    def check(self, tenant: str, version: int) -> list[str]:
        """Problems with a version's files (empty when every checksum matches)."""
        meta = self.meta(tenant, version)
        base = self._version_dir(tenant, version)
        problems = []
        expected: dict[str, Any] = meta["artefacts"]
        for name, digest in sorted(expected.items()):
            if not ARTEFACT_NAME_RE.fullmatch(str(name)):
                problems.append(f"{name!r}: not a plain artefact file name")
                continue
            path = base / name
            if path.is_symlink() or (path.exists() and not path.is_file()):
                problems.append(f"{name}: not a regular file")
            elif not path.exists():
                problems.append(f"{name}: missing")
            elif sha256_file(path) != digest:
                problems.append(f"{name}: sha256 mismatch (expected {digest})")
        for entry in sorted(base.iterdir()):
            if entry.name != META_FILE and entry.name not in expected:
                problems.append(f"{entry.name}: not listed in {META_FILE}")
        return problems

    def verify(self, tenant: str, version: int) -> dict[str, Any]:
        """The metadata of a version whose artefacts all match; :class:`RegistryError` otherwise."""
        problems = self.check(tenant, version)
        if problems:
            raise RegistryError(
                f"version {version} of tenant {tenant!r} is corrupted and refused: {'; '.join(problems)}; "
                "promote or restore another version"
            )
        return self.meta(tenant, version)

    def resolve(self, tenant: str, ref: int | str) -> int:
        """A version number from ``3``, ``"3"``, ``"v3"``, ``"champion"`` or ``"challenger"``."""
        self._tenant_dir(tenant)
        if isinstance(ref, int) and not isinstance(ref, bool):
            return ref
        text = str(ref).strip()
        if text in ALIASES:
            version = self.aliases(tenant)[text]
            if version is None:
                raise RegistryError(f"tenant {tenant!r} has no {text} yet")
            return version
        match = re.fullmatch(r"v?([0-9]{1,18})", text)
        if not match:
            raise RegistryError(f"{text!r} is neither a version number nor one of the aliases {', '.join(ALIASES)}")
        return int(match.group(1))

    def list(self, tenant: str) -> list[dict[str, Any]]:
        aliases = self.aliases(tenant)
        rows = []
        for version in self.versions(tenant):
            try:
                meta = self.meta(tenant, version)
            except RegistryError as exc:
                meta = {"error": str(exc)}
            rows.append(
                {
                    "version": version,
                    "aliases": [a for a in ALIASES if aliases[a] == version],
                    "created_at": meta.get("created_at"),
                    "kind": meta.get("kind"),
                    "metrics": meta.get("metrics", {}),
                    **({"error": meta["error"]} if "error" in meta else {}),
                }
            )
        return rows

    def show(self, tenant: str, ref: int | str) -> dict[str, Any]:
        """The metadata of a version plus its aliases and the result of checking every checksum."""
        version = self.resolve(tenant, ref)
        meta = dict(self.meta(tenant, version))
        problems = self.check(tenant, version)
        aliases = self.aliases(tenant)
        meta["aliases"] = [a for a in ALIASES if aliases[a] == version]
        meta["verification"] = {"ok": not problems, "problems": problems}
        return meta

    def load_model(self, tenant: str, ref: int | str) -> tuple[Any, Vocabulary]:
        """The model and vocabulary of a version, after every checksum matched."""
        version = self.resolve(tenant, ref)
        meta = self.verify(tenant, version)
        base = self._version_dir(tenant, version)
        kind = meta.get("kind")
        if kind not in MODELS:
            raise RegistryError(f"version {version} of tenant {tenant!r} has model kind {kind!r}; expected one of {', '.join(MODELS)}")
        try:
            vocab = load_vocabulary(base / VOCAB_FILE)
            model = make_model(kind, vocab)
            model.load(base / MODEL_FILE)
        except (OSError, ValueError, KeyError) as exc:
            raise RegistryError(f"version {version} of tenant {tenant!r} cannot be loaded: {exc}") from exc
        return model, vocab

    # -- writing ----------------------------------------------------------------------------
    def register(
        self,
        tenant: str,
        artefacts: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        meta: dict[str, Any],
        *,
        actor: str | None = None,
        first_is_champion: bool = True,
    ) -> int:
        """Store a new version; return its number. The tenant's first version becomes champion
        unless ``first_is_champion`` is false (a version that must win a canary first)."""
        tenant_dir = self._tenant_dir(tenant)
        kind = meta.get("kind")
        if kind not in MODELS:
            raise RegistryError(f"meta 'kind' is {kind!r}; expected one of {', '.join(MODELS)}")
        files = self._artefact_files(artefacts)
        tenant_dir = self._ensure_tenant(tenant)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=tenant_dir))
        try:
            os.chmod(staging, DIR_MODE)
            checksums = {}
            for source in files:
                target = staging / source.name
                _copy_private(source, target)
                checksums[source.name] = sha256_file(target)
            with self._locked(tenant_dir):
                existing = self.versions(tenant)
                version = (existing[-1] if existing else 0) + 1
                aliases = self.aliases(tenant)
                record = {
                    **{k: v for k, v in meta.items() if k not in ("version", "created_at", "artefacts", "format")},
                    "format": META_FORMAT,
                    "version": version,
                    "created_at": _now(),
                    "kind": kind,
                    "parent": meta.get("parent", aliases["champion"]),
                    "artefacts": checksums,
                }
                _write_json(staging / META_FILE, record)
                fsync_dir(staging)
                os.rename(staging, tenant_dir / f"v{version}")
                fsync_dir(tenant_dir)
                if aliases["champion"] is None and first_is_champion:
                    self._move_alias(tenant_dir, aliases, "champion", version, "first model", actor or _default_actor(), "register")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    @staticmethod
    def _artefact_files(artefacts: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> builtins.list[Path]:
        if isinstance(artefacts, (str, os.PathLike)):
            base = Path(artefacts)
            if not base.is_dir():
                raise RegistryError(f"artefact directory {base} does not exist")
            candidates = sorted(base.iterdir())
        else:
            candidates = [Path(p) for p in artefacts]
        files = []
        for path in candidates:
            if path.is_symlink() or not path.is_file():
                raise RegistryError(f"artefact {path} is not a regular file (links and directories are refused)")
            if not ARTEFACT_NAME_RE.fullmatch(path.name) or path.name == META_FILE:
                raise RegistryError(f"artefact {path}: its name must be a plain file name other than {META_FILE}")
            files.append(path)
        names = [p.name for p in files]
        if len(set(names)) != len(names):
            raise RegistryError(f"two artefacts share a file name: {sorted(names)}")
        if not files:
            raise RegistryError("no artefact files to register")
        return files

    def _move_alias(
        self, tenant_dir: Path, aliases: dict[str, int | None], alias: str, version: int | None, reason: str, actor: str, action: str
    ) -> dict[str, Any]:
        """Point ``alias`` at ``version`` and audit it; the caller holds the tenant lock."""
        entry = {"time": _now(), "action": action, "alias": alias, "from": aliases[alias], "to": version, "reason": reason, "actor": actor}
        aliases[alias] = version
        self._append_audit(tenant_dir, entry)
        _write_json(tenant_dir / ALIASES_FILE, aliases)
        return entry

    @staticmethod
    def _append_audit(tenant_dir: Path, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(tenant_dir / AUDIT_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def promote(self, tenant: str, version: int | str, alias: str = "champion", reason: str = "", actor: str | None = None) -> builtins.list[dict[str, Any]]:
        """Point ``alias`` at a verified version; return the audit entries written.

        Making the challenger the champion also clears the challenger alias. Nothing is
        written when the alias already points there.
        """
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; expected one of {', '.join(ALIASES)}")
        number = self.resolve(tenant, version)
        self.verify(tenant, number)
        tenant_dir = self._ensure_tenant(tenant)
        who = actor or _default_actor()
        with self._locked(tenant_dir):
            aliases = self.aliases(tenant)
            if aliases[alias] == number:
                return []
            written = [self._move_alias(tenant_dir, aliases, alias, number, reason, who, "promote")]
            if alias == "champion" and aliases["challenger"] == number:
                written.append(self._move_alias(tenant_dir, aliases, "challenger", None, f"v{number} promoted to champion", who, "promote"))
        return written

    def retire_challenger(self, tenant: str, version: int, reason: str = "", actor: str | None = None) -> dict[str, Any] | None:
        """Clear the challenger alias if it still names ``version`` (a canary rolled it back)."""
        tenant_dir = self._tenant_dir(tenant)
        if not tenant_dir.is_dir():
            return None
        with self._locked(tenant_dir):
            aliases = self.aliases(tenant)
            if aliases["challenger"] != version:
                return None
            return self._move_alias(tenant_dir, aliases, "challenger", None, reason, actor or _default_actor(), "rollback")

    def note(self, tenant: str, alias: str, version: int, action: str, reason: str = "", actor: str | None = None) -> dict[str, Any]:
        """Audit a decision that moves no alias (e.g. a canary step): ``from`` and ``to`` are both ``version``."""
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; expected one of {', '.join(ALIASES)}")
        tenant_dir = self._ensure_tenant(tenant)
        entry = {"time": _now(), "action": action, "alias": alias, "from": version, "to": version, "reason": reason, "actor": actor or _default_actor()}
        with self._locked(tenant_dir):
            self._append_audit(tenant_dir, entry)
        return entry

    def champion_history(self, tenant: str) -> builtins.list[int]:
        """The champion stack from the audit log: a promotion pushes, a rollback pops."""
        stack: list[int] = []
        for entry in self.audit(tenant):
            if entry.get("alias") != "champion":
                continue
            if entry.get("action") == "rollback":
                if stack:
                    stack.pop()
            elif isinstance(entry.get("to"), int):
                stack.append(entry["to"])
        return stack

    def rollback(self, tenant: str, reason: str = "", actor: str | None = None) -> dict[str, Any]:
        """Make the previous champion (per the audit history) the champion again."""
        tenant_dir = self._tenant_dir(tenant)
        if not tenant_dir.is_dir():
            raise RegistryError(f"tenant {tenant!r} has no models yet; nothing to roll back")
        with self._locked(tenant_dir):
            aliases = self.aliases(tenant)
            stack = self.champion_history(tenant)
            if not stack or stack[-1] != aliases["champion"]:
                raise RegistryError(
                    f"the audit log of tenant {tenant!r} does not end at the current champion "
                    f"({aliases['champion']}); promote a version explicitly instead"
                )
            if len(stack) < 2:
                raise RegistryError(f"tenant {tenant!r} has no previous champion to roll back to (champion v{stack[-1]} is the first)")
            target = stack[-2]
            self.verify(tenant, target)
            return self._move_alias(tenant_dir, aliases, "champion", target, reason, actor or _default_actor(), "rollback")


# ----------------------------------------------------------------------------- backup and restore
def _registry_members(root: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, path) of every file a backup holds: versions, aliases and audit logs."""
    for tenant_dir in sorted(root.iterdir()):
        try:
            validate_tenant_id(tenant_dir.name)
        except SecurityError:
            continue
        if not tenant_dir.is_dir() or tenant_dir.is_symlink():
            continue
        for entry in sorted(tenant_dir.iterdir()):
            if entry.name in (ALIASES_FILE, AUDIT_FILE) and entry.is_file() and not entry.is_symlink():
                yield f"{tenant_dir.name}/{entry.name}", entry
            elif VERSION_DIR_RE.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
                for item in sorted(entry.iterdir()):
                    if item.is_file() and not item.is_symlink():
                        yield f"{tenant_dir.name}/{entry.name}/{item.name}", item


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = FILE_MODE
    info.mtime = int(mtime)
    archive.addfile(info, io.BytesIO(data))


def backup_create(root: str | os.PathLike[str], out_file: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the registry under ``root`` to ``out_file`` (tar.gz, 0600); return its manifest.

    Each tenant's aliases and audit log are read under the tenant lock (so they agree);
    version files are immutable once registered and are streamed as they are.
    """
    base = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not base.is_dir():
        raise RegistryError(f"registry directory {base} does not exist")
    target = Path(os.path.abspath(os.path.expanduser(str(out_file))))
    if target == base or base in target.parents:
        raise RegistryError(f"backup file {target} must be outside the registry directory {base}")
    registry = ModelRegistry(base)
    files: dict[str, str] = {}
    with atomic_file(target, FILE_MODE, dir_mode=None) as handle, tarfile.open(fileobj=handle, mode="w:gz") as archive:
        members = list(_registry_members(base))
        snapshots: dict[str, bytes] = {}
        for tenant in sorted({name.split("/", 1)[0] for name, _ in members}):
            with registry._locked(base / tenant):
                for small in (ALIASES_FILE, AUDIT_FILE):
                    path = base / tenant / small
                    if path.is_file():
                        snapshots[f"{tenant}/{small}"] = path.read_bytes()
        for name, path in members:
            if name in snapshots:
                continue
            files[name] = sha256_file(path)
            info = archive.gettarinfo(str(path), arcname=name)
            info.mode, info.uid, info.gid, info.uname, info.gname = FILE_MODE, 0, 0, "", ""
            with open(path, "rb") as src:
                archive.addfile(info, src)
        now = time.time()
        for name, data in sorted(snapshots.items()):
            files[name] = hashlib.sha256(data).hexdigest()
            _add_bytes(archive, name, data, now)
        manifest = {"format": BACKUP_FORMAT, "created_at": _now(), "files": dict(sorted(files.items()))}
        _add_bytes(archive, MANIFEST_FILE, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(), now)
    return manifest


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if not (member.isfile() or member.isdir()):
        raise RegistryError(f"backup member {name!r} is a link, device or other special file; refused")
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise RegistryError(f"backup member {name!r} has an absolute or unusual path; refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in name.split("/") or not parts:
        raise RegistryError(f"backup member {name!r} contains '..' or is empty; refused")
    if parts == [MANIFEST_FILE]:
        return
    validate_tenant_id(parts[0])
    if len(parts) == 1:
        if member.isfile():
            raise RegistryError(f"backup member {name!r}: expected a tenant directory")
    elif len(parts) == 2:
        if not ((parts[1] in (ALIASES_FILE, AUDIT_FILE) and member.isfile()) or (VERSION_DIR_RE.fullmatch(parts[1]) and member.isdir())):
            raise RegistryError(f"backup member {name!r}: expected {ALIASES_FILE}, {AUDIT_FILE} or a version directory v<N>")
    elif len(parts) == 3:
        if not (VERSION_DIR_RE.fullmatch(parts[1]) and member.isfile() and (ARTEFACT_NAME_RE.fullmatch(parts[2]) or parts[2] == META_FILE)):
            raise RegistryError(f"backup member {name!r}: expected a plain file inside a version directory")
    else:
        raise RegistryError(f"backup member {name!r} is nested deeper than a registry holds")


def backup_restore(archive_path: str | os.PathLike[str], root: str | os.PathLike[str]) -> dict[str, Any]:
    """Restore a :func:`backup_create` archive into ``root``, which must be empty or absent.

    Every member is checked before anything is written; after extraction every file is
    checked against the manifest. On any failure ``root`` is left empty (or absent) again.
    """
    base = Path(os.path.abspath(os.path.expanduser(str(root))))
    if base.exists() and (not base.is_dir() or any(base.iterdir())):
        raise RegistryError(f"restore target {base} is not an empty directory; restore only into an empty one")
    source = Path(archive_path)
    if not source.is_file():
        raise RegistryError(f"backup file {source} does not exist or is not a file")
    created = not base.exists()
    try:
        with tarfile.open(source, mode="r:gz") as archive:
            return _restore_members(archive, source, base, created)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        _empty(base, remove=created)
        raise RegistryError(f"{source}: not a readable tar.gz registry backup ({exc.__class__.__name__}: {exc})") from exc


def _restore_members(archive: tarfile.TarFile, source: Path, base: Path, created: bool) -> dict[str, Any]:
    members = archive.getmembers()
    seen: set[str] = set()
    for member in members:
        try:
            _check_member(member)
        except SecurityError as exc:
            raise RegistryError(f"backup member {member.name!r}: {exc}; refused") from exc
        key = member.name.strip("/")
        if member.isfile() and key in seen:
            raise RegistryError(f"backup member {member.name!r} appears twice; refused")
        seen.add(key)
    manifest_member = next((m for m in members if m.name.strip("/") == MANIFEST_FILE), None)
    if manifest_member is None:
        raise RegistryError(f"{source}: no {MANIFEST_FILE}; not a registry backup")
    try:
        manifest = json.loads(_read_member(archive, manifest_member))
        expected: dict[str, str] = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{source}: {MANIFEST_FILE} is unreadable ({exc})") from exc
    try:
        _make_dir(base)
        for member in members:
            name = member.name.strip("/")
            if name == MANIFEST_FILE:
                continue
            target = confine(base, name)
            if member.isdir():
                _make_dir(target)
                continue
            _make_dir(target.parent)
            data = archive.extractfile(member)
            if data is None:
                raise RegistryError(f"backup member {member.name!r} has no data")
            with data, atomic_file(target, FILE_MODE, DIR_MODE) as out:
                shutil.copyfileobj(data, out, HASH_CHUNK_BYTES)
        _verify_restored(base, expected)
    except BaseException:
        _empty(base, remove=created)
        raise
    return manifest


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    if handle is None:
        raise RegistryError(f"backup member {member.name!r} has no data")
    with handle:
        return handle.read()


def _verify_restored(base: Path, expected: dict[str, str]) -> None:
    restored = {name: path for name, path in _registry_members(base)}
    missing = sorted(set(expected) - set(restored))
    extra = sorted(set(restored) - set(expected))
    bad = sorted(name for name, path in restored.items() if name in expected and sha256_file(path) != expected[name])
    if missing or extra or bad:
        raise RegistryError(
            "backup does not match its manifest: "
            + "; ".join(part for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"not in the manifest {', '.join(extra)}" if extra else "",
                f"checksum mismatch {', '.join(bad)}" if bad else "",
            ) if part)
        )
    registry = ModelRegistry(base)
    for tenant in sorted({name.split("/", 1)[0] for name in restored}):
        for version in registry.versions(tenant):
            registry.verify(tenant, version)


def _empty(base: Path, *, remove: bool) -> None:
    if not base.exists():
        return
    for entry in base.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    if remove:
        with contextlib.suppress(OSError):
            base.rmdir()
