# SPDX-License-Identifier: Apache-2.0
"""File descriptors: raise the soft limit at start, keep a reserve, report failed accepts.

Every connection costs a descriptor, and so does every file the agent opens (config,
spool, access log, origin reads, TLS files). When a listener lets clients take the last
descriptors, everything else fails at once: origin reads, exports, even the other
listeners. So the agent raises its soft ``RLIMIT_NOFILE`` to the hard limit at start
(:func:`raise_nofile_limit`), and every listener refuses new connections while no more
than ``agent.reserved_descriptors`` remain (:func:`within_reserve` per accepted connection;
:func:`has_headroom` is exact but lists ``/proc/self/fd``). The reserve is process-wide
state because the descriptor table is: the runtime sets it at start and on reload
(:func:`set_reserved`).

asyncio's own listeners report a failed ``accept()`` (EMFILE, ENFILE, ...) through the
loop's exception handler, once per attempt, and retry many times a second: a flood of
tracebacks. :func:`install_accept_error_handler` turns those into a counter and one
rate-limited log line.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
from collections.abc import Callable
from typing import Any

from agent.logs import RateLimitedLog

log = logging.getLogger(__name__)

# accept() errors that mean "out of a resource", not "this one client misbehaved".
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The message asyncio gives a failed accept in its exception-handler context.
ASYNCIO_ACCEPT_MESSAGE = "socket.accept() out of system resource"
_FD_DIR = "/proc/self/fd"
_NR_OPEN = "/proc/sys/fs/nr_open"

_reserved = 0


def nofile_limit() -> int:
    """The current soft ``RLIMIT_NOFILE``: the most descriptors this process may hold."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else _kernel_ceiling()


def _kernel_ceiling() -> int:
    """The kernel's per-process ceiling (``fs.nr_open``), for an unlimited hard limit."""
    try:
        with open(_NR_OPEN, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return 1 << 20


def raise_nofile_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now in force.

    An unlimited hard limit is read as the kernel's ``fs.nr_open`` (Linux refuses
    ``RLIM_INFINITY`` for this limit). If the kernel refuses the change, the old limit
    stays and a warning says so: the agent still runs, with fewer connections.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _kernel_ceiling()
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s; keeping %d", soft, target, exc, soft)
    limit = nofile_limit()
    log.info("open-file limit (RLIMIT_NOFILE): %d descriptors, %d kept in reserve", limit, _reserved)
    return limit


def open_descriptors() -> int:
    """Descriptors this process holds now (entries of ``/proc/self/fd``).

    Where ``/proc`` is not mounted, the lowest free descriptor number is used instead (a
    lower bound: the kernel hands out the lowest free number, so all below it are open).
    """
    try:
        return len(os.listdir(_FD_DIR)) - 1  # listdir's own descriptor is counted too
    except OSError:
        pass
    try:
        probe = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return nofile_limit()
    os.close(probe)
    return probe


def available_descriptors() -> int:
    """How many more descriptors this process may open before ``EMFILE``."""
    return max(0, nofile_limit() - open_descriptors())


def set_reserved(count: int) -> None:
    """Set ``agent.reserved_descriptors``: what listeners leave for the agent's own files."""
    global _reserved
    if count < 0:
        raise ValueError(f"reserved descriptors must be >= 0, found {count}")
    _reserved = int(count)


def reserved() -> int:
    """The reserve set by :func:`set_reserved` (0 until the runtime sets it)."""
    return _reserved


def has_headroom(extra: int = 0) -> bool:
    """True while more than the reserve (plus ``extra``) is available: a listener may accept
    one more client. Exact, but it lists ``/proc/self/fd``: for a check per connection use
    :func:`within_reserve`."""
    return available_descriptors() > _reserved + extra


def descriptor_ceiling(extra: int = 0) -> int:
    """The lowest descriptor number a client connection may not have: the open-file limit
    less the reserve (and ``extra``, for a listener that should give up before the others)."""
    return max(0, nofile_limit() - _reserved - extra)


def within_reserve(fd: int, extra: int = 0) -> bool:
    """Whether a just-accepted connection's descriptor ``fd`` leaves the reserve alone.

    The kernel hands out the lowest free number, so a connection numbered at or past
    :func:`descriptor_ceiling` means every number below it is taken: refuse it, and
    client connections never hold the top ``reserved + extra`` numbers, which stay for the
    agent's own files. One ``getrlimit`` call: cheap enough for every accept.
    """
    return fd < descriptor_ceiling(extra)


def setup(reserved_count: int, metrics: Any) -> int:
    """At agent start, on its loop: set the reserve, raise the soft limit (logged) and
    install the failed-accept handler. Returns the open-file limit now in force."""
    set_reserved(reserved_count)
    limit = raise_nofile_limit()
    install_accept_error_handler(asyncio.get_running_loop(), metrics)
    return limit


ErrorHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


def count_accept_error(metrics: Any, exc: OSError) -> None:
    """Count one failed ``accept()`` in ``predis_agent_accept_errors_total``."""
    metrics["predis_agent_accept_errors_total"].labels(errno=errno_label(exc)).inc()


def install_accept_error_handler(loop: asyncio.AbstractEventLoop, metrics: Any) -> RateLimitedLog:
    """Turn asyncio's failed-accept reports into a counter and one rate-limited warning.

    Every other report goes to the handler that was installed before, or to the loop's
    default handler. Returns the rate-limited log (its counts are there to be read).
    """
    previous: ErrorHandler | None = loop.get_exception_handler()
    limited = RateLimitedLog(log)

    def handler(the_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == ASYNCIO_ACCEPT_MESSAGE and isinstance(exc, OSError):
            count_accept_error(metrics, exc)
            limited.warning(
                "accept() failed on %s: %s; the listener retries shortly",
                _sockname(context.get("socket")),
                exc.strerror or exc,
            )
            return
        if previous is not None:
            previous(the_loop, context)
        else:
            the_loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return limited


def errno_label(exc: OSError) -> str:
    """A bounded label for an accept error: the errno's name for resource errors, else ``other``."""
    if exc.errno in RESOURCE_ERRNOS:
        return errno.errorcode[exc.errno]
    return "other"


def _sockname(sock: Any) -> str:
    try:
        name = sock.getsockname()
    except (AttributeError, OSError):
        return "a listener"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name)
