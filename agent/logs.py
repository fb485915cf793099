# SPDX-License-Identifier: Apache-2.0
"""Logging set-up: text or JSON lines to stderr (journald), optional rotating file.

Every handler carries :class:`agent.config.SecretScrubFilter`, so a secret value that
reaches a log message by accident is replaced by ``***``. The level and format are
re-applied on every reload.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from agent.config import SecretScrubFilter, scrub

ROOT_LOGGER = ""
_HANDLER_TAG = "_predis_agent_handler"
# Records logged before configure() (plugins load before the config that names the log
# format can be read): held, then written in the configured format.
EARLY_RECORDS_MAX = 1000
# agent.log.rate_limit_seconds; set by configure() from the schema's default or the config.
_rate_limit_seconds = 10.0


def rate_limit_seconds() -> float:
    """The interval of :class:`RateLimitedLog` (``agent.log.rate_limit_seconds``)."""
    return _rate_limit_seconds


class RateLimitedLog:
    """One kind of repeated event, logged at most once per interval with a count of the rest.

    For events a client or the machine can make happen thousands of times a second (a
    failed ``accept()``, a refused connection, a failed AUTH): the first one is logged,
    the next ones within ``interval`` are only counted, and the first one logged after
    the interval says how many were left out. ``interval`` is
    ``agent.log.rate_limit_seconds`` unless given; ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.events = 0
        self.logged = 0
        self.suppressed = 0
        self._next_at: float | None = None

    def log(self, level: int, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless one was logged less than an interval ago; True if logged."""
        self.events += 1
        now = self.clock()
        if self._next_at is not None and now < self._next_at:
            self.suppressed += 1
            return False
        interval = self.interval if self.interval is not None else _rate_limit_seconds
        if self.suppressed:
            msg = f"{msg} (and {self.suppressed} more like it since the last such line, not logged)"
        self.logger.log(level, msg, *args, exc_info=exc_info)
        self.logged += 1
        self.suppressed = 0
        self._next_at = now + interval
        return True

    def warning(self, msg: str, *args: Any, exc_info: bool = False) -> bool:
        return self.log(logging.WARNING, msg, *args, exc_info=exc_info)

    def error(self, msg: str, *args: Any, exc_info: bool = False) -> bool:
        return self.log(logging.ERROR, msg, *args, exc_info=exc_info)


class RateLimitFilter(logging.Filter):
    """A filter for a logger a client can make repeat itself (aiohttp's protocol errors):
    at most one record per interval passes, and it says how many were dropped before it.

    Records whose exception is one of ``brief`` (a client's malformed request) lose their
    traceback, which says nothing about the agent, and are written as warnings: the
    exception's first line is appended to the message instead.
    """

    def __init__(
        self,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        brief: tuple[type[BaseException], ...] = (),
    ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.brief = brief
        self.passed = 0
        self.dropped = 0
        self._suppressed = 0
        self._next_at: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        if self._next_at is not None and now < self._next_at:
            self._suppressed += 1
            self.dropped += 1
            return False
        message = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and isinstance(exc, self.brief):
            text = str(getattr(exc, "message", "") or exc)
            summary = next((line.strip() for line in text.splitlines() if line.strip()), "")
            message = f"{message}: {exc.__class__.__name__}: {summary}".rstrip(": ")
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        if self._suppressed:
            message = f"{message} (and {self._suppressed} more like it since the last such line, not logged)"
        record.msg, record.args = message, None
        self._suppressed = 0
        self.passed += 1
        self._next_at = now + (self.interval if self.interval is not None else _rate_limit_seconds)
        return True


class _EarlyRecords(logging.Handler):
    """Holds the records logged before the log format is known (at most
    EARLY_RECORDS_MAX; the rest are counted)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < EARLY_RECORDS_MAX:
            self.records.append(record)
        else:
            self.lost += 1


_early: _EarlyRecords | None = None


def hold_early_records() -> None:
    """Hold log records until :func:`configure` writes them in the configured format (JSON
    lines stay JSON from the first line); a process that exits before that writes them as
    text to stderr."""
    global _early
    if _early is not None:
        return
    _early = _EarlyRecords()
    logging.getLogger(ROOT_LOGGER).addHandler(_early)
    atexit.register(_release_early, None)


def _release_early(handlers: list[logging.Handler] | None) -> None:
    """Write the held records through ``handlers`` (None: text on stderr) and stop holding."""
    global _early
    early, _early = _early, None
    if early is None:
        return
    root = logging.getLogger(ROOT_LOGGER)
    root.removeHandler(early)
    if handlers is None:
        fallback = logging.StreamHandler(sys.stderr)
        fallback.setFormatter(TextFormatter())
        fallback.addFilter(SecretScrubFilter())
        handlers = [fallback]
    for record in early.records:
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
    if early.lost:
        lost = logging.LogRecord(root.name, logging.WARNING, __file__, 0, "%d log records from before the log was configured were not kept", (early.lost,), None)
        for handler in handlers:
            handler.handle(lost)


def banner(text: str, log_format: str | None) -> str:
    """The agent's ready line as the log format has it: JSON lines get a JSON object."""
    if log_format != "json":
        return text
    return JsonFormatter().format(logging.LogRecord("agent", logging.INFO, __file__, 0, text, None, None))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(body, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure(section: dict[str, Any]) -> None:
    """(Re)configure the root logger from the ``agent.log`` section."""
    global _rate_limit_seconds
    _rate_limit_seconds = float(section.get("rate_limit_seconds", _rate_limit_seconds))
    root = logging.getLogger(ROOT_LOGGER)
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_TAG, False):
            root.removeHandler(handler)
            handler.close()
    formatter: logging.Formatter = JsonFormatter() if section.get("format") == "json" else TextFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    file_cfg = section.get("file") or {}
    if file_cfg.get("path"):
        path = os.path.expanduser(file_cfg["path"])
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                path, maxBytes=int(file_cfg["max_bytes"]), backupCount=int(file_cfg["backup_count"]), encoding="utf-8"
            )
        )
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(SecretScrubFilter())
        setattr(handler, _HANDLER_TAG, True)
        root.addHandler(handler)
    root.setLevel(section.get("level", "info").upper())
    _release_early(handlers)
    # Third-party libraries are chatty at debug; keep them at warning unless asked.
    for noisy in ("aiohttp.access", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
