# SPDX-License-Identifier: Apache-2.0
"""Console sessions, in memory: what a login with an API token is exchanged for.

A session id is 32 random bytes from :mod:`secrets`; the store is keyed by its SHA-256
digest and the id itself is compared with ``hmac.compare_digest``, so neither the lookup
nor the comparison tells an attacker how much of a guess was right. A session ends after
``console.session_ttl_seconds`` without a request (idle), ``console.session_max_seconds``
after its login (absolute), at logout, and as soon as the token it was opened with is
revoked (the gate checks the token's record on every request). At most
``console.max_sessions`` are kept; a login past it ends the oldest.

Failed logins are limited per client address: past :data:`LOGIN_FAILURES_ALLOWED` within
:data:`LOGIN_FAILURE_WINDOW_SECONDS`, that address is refused until the window has moved on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

SESSION_ID_BYTES = 32
CSRF_TOKEN_BYTES = 32
# Failed logins one client address may make within the window before it is refused.
LOGIN_FAILURES_ALLOWED = 5
LOGIN_FAILURE_WINDOW_SECONDS = 60.0
# Client addresses whose failures are remembered at once (the oldest is forgotten first).
LOGIN_LIMITER_ADDRESSES = 4096


def new_secret(nbytes: int) -> str:
    """A URL-safe random value of ``nbytes`` bytes."""
    return secrets.token_urlsafe(nbytes)


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time equality of two secrets (non-ASCII input is simply unequal)."""
    return hmac.compare_digest(presented.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


@dataclass
class Session:
    """One login: its id (the cookie), its CSRF token, and the API token record it came from."""

    id: str
    csrf: str
    token_id: str
    created: float
    last_seen: float


class SessionStore:
    """Sessions by the digest of their id, oldest first. Thread-safe."""

    def __init__(
        self, ttl_seconds: float, max_seconds: float, max_sessions: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_seconds = float(ttl_seconds)
        self.max_seconds = float(max_seconds)
        self.max_sessions = int(max_sessions)
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def configure(self, ttl_seconds: float, max_seconds: float, max_sessions: int) -> None:
        """New lifetimes and bound, in place; open sessions are judged by them from now on."""
        with self._lock:
            self.ttl_seconds = float(ttl_seconds)
            self.max_seconds = float(max_seconds)
            self.max_sessions = int(max_sessions)
            self._evict_over_bound(0)

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._sessions)

    def create(self, token_id: str) -> Session:
        """A new session for the API token ``token_id``; the oldest ends when the store is full."""
        now = self._clock()
        session = Session(new_secret(SESSION_ID_BYTES), new_secret(CSRF_TOKEN_BYTES), token_id, now, now)
        with self._lock:
            self._expire(now)
            self._evict_over_bound(1)
            self._sessions[_key(session.id)] = session
        return session

    def get(self, presented: str) -> Session | None:
        """The live session whose id is ``presented`` (its idle clock restarts), else None."""
        if not presented:
            return None
        now = self._clock()
        with self._lock:
            key = _key(presented)
            session = self._sessions.get(key)
            if session is None or not same_secret(presented, session.id):
                return None
            if self._expired(session, now):
                del self._sessions[key]
                return None
            session.last_seen = now
            return session

    def delete(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(_key(session.id), None)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_seen > self.ttl_seconds or now - session.created > self.max_seconds

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[key]

    def _evict_over_bound(self, room: int) -> None:
        while self._sessions and len(self._sessions) + room > self.max_sessions:
            self._sessions.popitem(last=False)


class LoginLimiter:
    """Failed logins per client address within a sliding window. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float]:
        failures = self._failures.get(address)
        if failures is None:
            return deque()
        while failures and now - failures[0] > LOGIN_FAILURE_WINDOW_SECONDS:
            failures.popleft()
        if not failures:
            del self._failures[address]
        return failures

    def allowed(self, address: str) -> bool:
        """Whether ``address`` may try to log in now."""
        with self._lock:
            return len(self._recent(address, self._clock())) < LOGIN_FAILURES_ALLOWED

    def failed(self, address: str) -> None:
        """Count one failed login from ``address``."""
        now = self._clock()
        with self._lock:
            failures = self._recent(address, now)
            failures.append(now)
            self._failures[address] = failures
            self._failures.move_to_end(address)
            while len(self._failures) > LOGIN_LIMITER_ADDRESSES:
                self._failures.popitem(last=False)
