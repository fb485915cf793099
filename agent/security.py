# SPDX-License-Identifier: Apache-2.0
"""Tokens, file modes, private directories, path confinement and tenant-ID validation.

Files are written with :func:`atomic_write` (:mod:`cache_core.files`, imported here for
the agent and its plugins).

API tokens are 256-bit random values shown once. The token store keeps only their
SHA-256 digests: a token has full entropy, so a fast hash is as strong as a slow KDF
here, and it lets every request be checked in microseconds. Presented tokens are
compared with ``hmac.compare_digest`` against every stored digest, so timing reveals
neither which entry nor how many bytes matched.

Each token has a **scope** (:data:`SCOPES`, each including the ones before it): ``metrics``
may scrape ``/metrics`` only; ``read`` may also read ``/status``, ``/readyz`` and the
console; ``admin`` may do everything (reload, plugin routes). A token stored before scopes
existed has none recorded and keeps full access (``admin``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AuthError, SecurityError
from cache_core.files import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, atomic_write

log = logging.getLogger(__name__)

TOKEN_PREFIX = "pda_"
TOKEN_BYTES = 32  # 256 bits of entropy
TOKEN_ID_BYTES = 4
TOKEN_RE = re.compile(r"^pda_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{2,49}$")
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")  # hash_token's output: SHA-256 as lowercase hex
FILE_MODE_SECRET = PRIVATE_FILE_MODE
DIR_MODE_SECRET = PRIVATE_DIR_MODE
STORE_VERSION = 1
# Token scopes, least to most: each includes the ones before it.
SCOPES = ("metrics", "read", "admin")
# The scope of a token stored without one (before scopes existed): full access, as it had.
DEFAULT_SCOPE = "admin"


# The id of the agent's local token (agent.auth.local_token_file), never a stored one's (those
# are 8 hex digits).
LOCAL_TOKEN_ID = "local"


def create_local_token(path: str | os.PathLike[str]) -> tuple[TokenRecord, Path]:
    """A fresh admin token for the CLI on this host: written to ``path`` (0600, in a 0700
    directory, atomically; a symlink there is replaced, never followed) and returned as the
    record the agent accepts it by; it lives as long as the agent process."""
    target = Path(os.path.expanduser(str(path)))
    token = f"{TOKEN_PREFIX}{LOCAL_TOKEN_ID}_{secrets.token_urlsafe(TOKEN_BYTES)}"
    atomic_write(target, (token + "\n").encode("ascii"))
    return TokenRecord(LOCAL_TOKEN_ID, "local (this host's CLI)", time.time(), hash_token(token), DEFAULT_SCOPE), target


def remove_local_token(record: TokenRecord, path: Path) -> None:
    """Delete the local token file if it still holds ``record``'s token (a newer agent's is kept)."""
    try:
        held = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return
    if hmac.compare_digest(hash_token(held).encode("ascii"), record.digest.encode("ascii")):
        path.unlink(missing_ok=True)


def scope_allows(scope: str, needed: str) -> bool:
    """Whether a token of ``scope`` may use a route that needs ``needed``."""
    if scope not in SCOPES or needed not in SCOPES:
        return False
    return SCOPES.index(scope) >= SCOPES.index(needed)


def private_dir(raw: str, what: str) -> Path:
    """An absolute directory for the agent's own files, created 0700; clear errors otherwise."""
    path = Path(os.path.expanduser(str(raw)))
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{what} {raw!r} must be an absolute path without '..' components")
    path.mkdir(mode=DIR_MODE_SECRET, parents=True, exist_ok=True)
    if not path.is_dir():
        raise ValueError(f"{what} {raw!r} is not a directory")
    os.chmod(path, DIR_MODE_SECRET)
    return path


def confine(root: str | os.PathLike[str], candidate: str | os.PathLike[str]) -> Path:
    """Resolve ``candidate`` (relative to ``root``) and refuse it if it leaves ``root``."""
    base = Path(root).resolve()
    raw = str(candidate)
    if "\x00" in raw:
        raise SecurityError(f"path {raw!r} contains a NUL byte")
    resolved = (base / raw).resolve()
    if resolved != base and base not in resolved.parents:
        raise SecurityError(f"path {raw!r} resolves outside its root {base}")
    return resolved


def validate_tenant_id(value: str) -> str:
    """Return ``value`` if it is a valid tenant ID, else raise (never rewrite it)."""
    if not isinstance(value, str) or not TENANT_ID_RE.fullmatch(value):
        raise SecurityError(
            f"invalid tenant ID {value!r}: expected 3-50 characters of a-z, 0-9, '_' or '-', starting with a letter or digit"
        )
    return value


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    created: float
    digest: str
    scope: str = DEFAULT_SCOPE

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created": self.created, "scope": self.scope}


# A token store holds a few hundred bytes per token; a larger file is refused unread (it is
# read on the request path whenever it changes).
MAX_TOKEN_STORE_BYTES = 1024 * 1024


class TokenStore:
    """The hashed-token file. Reloads itself when the file changes on disk.

    A store whose mode is looser than 0600 (any group or other bit, or owner execute) is
    refused, not tightened: whoever could write it may have added a digest of their own,
    and chmod would not undo that. No token is accepted until the operator has checked the
    entries and run ``chmod 600``; the change of mode is noticed without a restart.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.expanduser(str(path)))
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int, int] | None = None
        self._records: list[TokenRecord] = []
        self.load_error: str | None = None
        # The running agent's local token (agent.auth.local_token_file), accepted besides the file's.
        self.local: TokenRecord | None = None

    # -- reading -----------------------------------------------------------
    def _file_stamp(self) -> tuple[int, int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)

    def _refresh(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp and (stamp is not None or not self._records):
            return
        records: list[TokenRecord] = []
        error = None
        if stamp is not None and not stat.S_ISREG(stamp[3]):
            error = f"token store {self.path} is not a regular file; no token is accepted"
        elif stamp is not None and stamp[1] > MAX_TOKEN_STORE_BYTES:
            error = f"token store {self.path} is {stamp[1]} bytes, over {MAX_TOKEN_STORE_BYTES}; no token is accepted"
        elif stamp is not None:
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                for item in raw.get("tokens", []):
                    records.append(
                        TokenRecord(
                            str(item["id"]), str(item.get("name", "")), float(item["created"]), str(item["digest"]), str(item.get("scope", DEFAULT_SCOPE))
                        )
                    )
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                error = f"token store {self.path} is unreadable ({exc.__class__.__name__}); no token is accepted"
                records = []
            else:
                bad = [r.id for r in records if not DIGEST_RE.fullmatch(r.digest)]
                unscoped = [r.id for r in records if r.scope not in SCOPES]
                if unscoped and not bad:
                    error = (
                        f"token store {self.path} is corrupt: token(s) {', '.join(repr(i) for i in unscoped)} have a scope "
                        f"other than {', '.join(SCOPES)}; no token is accepted until the file is restored or those entries are removed"
                    )
                    records = []
                elif bad:
                    error = (
                        f"token store {self.path} is corrupt: expected every digest to be 64 lowercase hex characters "
                        f"(SHA-256), found another value for token(s) {', '.join(repr(i) for i in bad)}; "
                        "no token is accepted until the file is restored or those entries are removed"
                    )
                    records = []
            mode = stat.S_IMODE(stamp[3])
            if error is None and mode & ~FILE_MODE_SECRET:
                error = (
                    f"token store {self.path} has mode {mode:04o}, looser than {FILE_MODE_SECRET:04o}: others could read "
                    f"or change it, so no token is accepted; check that every entry in it is yours, then run "
                    f"`chmod 600 {self.path}` as the agent's user"
                )
                records = []
        if error is not None and error != self.load_error:
            log.error("%s", error)
        self._records = records
        self._stamp = stamp
        self.load_error = error

    def records(self) -> list[TokenRecord]:
        with self._lock:
            self._refresh()
            return list(self._records)

    def verify(self, presented: str | None) -> TokenRecord:
        """Return the matching record or raise :class:`AuthError`."""
        if not presented:
            raise AuthError("missing bearer token")
        digest = hash_token(presented).encode("ascii")
        match = None
        local = self.local
        for record in [*self.records(), *([local] if local is not None else [])]:
            # Bytes, not str: compare_digest raises TypeError on non-ASCII str. Digests are
            # validated on load, so encoding cannot fail; "replace" keeps it total anyway.
            if hmac.compare_digest(record.digest.encode("ascii", "replace"), digest):
                match = record
        if match is None:
            raise AuthError("invalid bearer token")
        return match

    # -- writing (CLI) -------------------------------------------------------
    def _write(self, records: list[TokenRecord]) -> None:
        body = {
            "version": STORE_VERSION,
            "tokens": [{**r.public(), "digest": r.digest} for r in records],
        }
        atomic_write(self.path, (json.dumps(body, indent=2) + "\n").encode("utf-8"))

    def create(self, name: str = "", scope: str = DEFAULT_SCOPE) -> tuple[str, TokenRecord]:
        """Create a token of ``scope``; return (plaintext shown once, stored record)."""
        if scope not in SCOPES:
            raise SecurityError(f"unknown token scope {scope!r}; expected one of {', '.join(SCOPES)}")
        with self._lock:
            self._refresh()
            if self.load_error:
                raise SecurityError(self.load_error)
            existing = {r.id for r in self._records}
            token_id = secrets.token_hex(TOKEN_ID_BYTES)
            while token_id in existing:
                token_id = secrets.token_hex(TOKEN_ID_BYTES)
            token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(TOKEN_BYTES)}"
            record = TokenRecord(token_id, name, time.time(), hash_token(token), scope)
            self._write([*self._records, record])
            self._stamp = None
            return token, record

    def revoke(self, token_id: str) -> bool:
        with self._lock:
            self._refresh()
            if self.load_error:
                raise SecurityError(self.load_error)
            kept = [r for r in self._records if r.id != token_id]
            if len(kept) == len(self._records):
                return False
            self._write(kept)
            self._stamp = None
            return True
