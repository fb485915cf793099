# SPDX-License-Identifier: Apache-2.0
"""Who may use a console route, and the headers every console answer carries.

The HTTP server (:class:`agent.http.HttpServer`) hands every request under ``/dashboard``
and ``/api/v1/`` to the :class:`ConsoleGate`:

* **Authentication**: a bearer token (as everywhere) or the session cookie a login gave.
  The session's API token is looked up again on every request, so revoking the token ends
  its sessions at once. The login form is the only anonymous console route. A refused
  page is sent to the login form (``303``); a refused static file or API call gets ``401``.
* **CSRF**: a POST that a browser says is cross-site (``Sec-Fetch-Site``, or an ``Origin``
  other than the agent's own) is refused; a POST on a session must carry the session's CSRF
  token (form field ``csrf`` or header ``X-CSRF-Token``); the login form carries the value of
  a pre-session cookie (double submit), so a login cannot be forged either.
* **Headers**: a Content-Security-Policy without inline scripts, no framing, no sniffing,
  no referrer, and nothing stored by caches.

Neither tokens nor session ids are logged.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agent.components import BaseComponent, Changes
from agent.config import Config
from agent.console.sessions import LoginLimiter, Session, SessionStore, same_secret
from agent.errors import AuthError
from agent.http import error_response
from agent.security import TokenRecord, TokenStore, scope_allows

CONSOLE_ROOT = "/dashboard"
LOGIN_PATH = "/dashboard/login"
LOGOUT_PATH = "/dashboard/logout"
STATIC_PREFIX = "/dashboard/static/"
API_PREFIX = "/api/v1/"
HOME_PATH = "/dashboard/overview"

SESSION_COOKIE = "predis_session"
LOGIN_CSRF_COOKIE = "predis_login_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
# How long a login form stays usable (its pre-session CSRF cookie's lifetime).
LOGIN_FORM_SECONDS = 3600

# The least token scope that opens the console (agent.security.SCOPES): reading, not admin.
CONSOLE_SCOPE = "read"

# Where the gate leaves what it found, for the handlers.
REQUEST_SESSION = "predis.console.session"

OPAQUE_ORIGIN = "null"
SAME_SITE_FETCH = frozenset({"same-origin", "none"})
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_page(path: str) -> bool:
    """A console HTML page (refused with a redirect to the login form, not a 401)."""
    return (path == CONSOLE_ROOT or path.startswith(CONSOLE_ROOT + "/")) and not path.startswith(STATIC_PREFIX)


class ConsoleGate:
    """Sessions, the login limiter, and the checks :class:`agent.http.HttpServer` calls."""

    def __init__(self, sessions: SessionStore) -> None:
        self.sessions = sessions
        self.logins = LoginLimiter()

    # -- called by the HTTP server ---------------------------------------------------------
    @staticmethod
    def covers(path: str) -> bool:
        return path == CONSOLE_ROOT or path.startswith(CONSOLE_ROOT + "/") or path.startswith(API_PREFIX)

    def authenticate(self, request: web.Request, tokens: TokenStore) -> None:
        """Let the request through (leaving its session on it) or raise :class:`AuthError`."""
        if request.path == LOGIN_PATH:
            return
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("missing bearer token")
            require_console_scope(tokens.verify(token.strip()))
            return
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if session is None:
            raise AuthError("no console session: log in at /dashboard/login")
        record = current_record(tokens, session.token_id)
        if record is None or not scope_allows(record.scope, CONSOLE_SCOPE):
            self.sessions.delete(session)
            raise AuthError("the token this session was opened with is no longer valid")
        request[REQUEST_SESSION] = session

    def refused(self, request: web.Request, exc: AuthError) -> web.Response:
        if is_page(request.path):
            response = web.Response(status=303, headers={"Location": LOGIN_PATH})
            if request.cookies.get(SESSION_COOKIE):
                clear_session_cookie(request, response)
            return response
        return error_response(401, str(exc), **{"WWW-Authenticate": 'Bearer realm="predis-agent"'})

    async def check_post(self, request: web.Request) -> web.Response | None:
        """None when a POST may go on; else the 403 that refuses it."""
        if cross_site(request):
            return error_response(403, "cross-site request refused")
        if request.path == LOGIN_PATH:
            expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        else:
            session: Session | None = request.get(REQUEST_SESSION)
            if session is None:  # a bearer token: not something a browser sends on its own
                return None
            expected = session.csrf
        presented = request.headers.get(CSRF_HEADER)
        if presented is None:
            form = await request.post()
            field = form.get(CSRF_FIELD)
            presented = field if isinstance(field, str) else ""
        if not expected or not same_secret(presented, expected):
            return error_response(403, "missing or wrong CSRF token: reload the page and try again")
        return None

    @staticmethod
    def secure(response: web.StreamResponse) -> None:
        """Add the console's security headers (an answer already sent is left as it went)."""
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)


def current_record(tokens: TokenStore, token_id: str) -> TokenRecord | None:
    """The token ``token_id`` as the store holds it now (the agent's local token included),
    or None once it is revoked."""
    local = [tokens.local] if tokens.local is not None else []
    return next((record for record in [*tokens.records(), *local] if record.id == token_id), None)


def require_console_scope(record: TokenRecord) -> TokenRecord:
    """``record`` when its scope opens the console, else :class:`AuthError`."""
    if not scope_allows(record.scope, CONSOLE_SCOPE):
        raise AuthError(f"a token of scope {record.scope} does not open the console (it needs {CONSOLE_SCOPE} or more)")
    return record


def cross_site(request: web.Request) -> bool:
    """Whether the browser says this request comes from another site.

    ``Origin: null`` is not taken as an answer: under ``Referrer-Policy: no-referrer`` a
    browser sends it on the console's own form posts; ``Sec-Fetch-Site`` then tells.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in SAME_SITE_FETCH:
        return True
    origin = request.headers.get("Origin")
    return origin not in (None, OPAQUE_ORIGIN) and origin != f"{request.scheme}://{request.host}"


def set_session_cookie(request: web.Request, response: web.StreamResponse, session: Session) -> None:
    response.set_cookie(SESSION_COOKIE, session.id, path="/", httponly=True, samesite="Strict", secure=request.secure or None)


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.set_cookie(
        SESSION_COOKIE, "", max_age=0, path="/", httponly=True, samesite="Strict", secure=request.secure or None
    )


class ConsoleComponent(BaseComponent):
    """The console's sessions: their lifetimes and bound retuned in place on a reload."""

    name = "console"
    sections = ("console",)

    def __init__(self, gate: ConsoleGate) -> None:
        self.gate = gate

    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]:
        section = new.section("console")
        self.gate.sessions.configure(section["session_ttl_seconds"], section["session_max_seconds"], section["max_sessions"])
        return []

    def status(self) -> dict[str, Any]:
        return {"sessions": len(self.gate.sessions)}
